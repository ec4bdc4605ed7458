SUMMARY = "A minimal systemd image running kp-gateway"
DESCRIPTION = "core-image-minimal plus kp-gateway; build it for MACHINE = \
               raspberrypi4-64 with meta-raspberrypi."
SECTION = "images"
LICENSE = "MIT"

IMAGE_INSTALL = "packagegroup-core-boot packagegroup-kp-gateway"
IMAGE_LINGUAS = ""

inherit core-image
