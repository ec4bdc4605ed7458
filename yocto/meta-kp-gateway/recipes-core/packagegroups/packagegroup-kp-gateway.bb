SUMMARY = "kp-gateway for field gateway images"
DESCRIPTION = "Adds the kp-gateway daemon (and its systemd service) to an image."
SECTION = "net"
LICENSE = "MIT"

inherit packagegroup

RDEPENDS:${PN} = "kp-gateway"
# The system trust store (upstream TLS to public clouds), Wi-Fi configuration, sudo.
RRECOMMENDS:${PN} = "ca-certificates wpa-supplicant iw sudo"
