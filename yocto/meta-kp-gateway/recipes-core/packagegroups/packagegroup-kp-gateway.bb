SUMMARY = "kp-gateway for field gateway images"
DESCRIPTION = "Adds the kp-gateway daemon (and its systemd service) to an image."
SECTION = "net"
LICENSE = "MIT"

inherit packagegroup

RDEPENDS:${PN} = "kp-gateway"
