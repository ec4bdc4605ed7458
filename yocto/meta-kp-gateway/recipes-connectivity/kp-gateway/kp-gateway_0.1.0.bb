SUMMARY = "Edge gateway: Modbus and serial sensors to Kaa IoT, store-and-forward"
DESCRIPTION = "kp-gateway polls Modbus RTU/TCP devices and serial-line sensors, \
               represents each field device as a Kaa 1/KP endpoint, buffers every \
               sample in SQLite until the platform confirms it, and can run an \
               embedded Kaa-compatible platform core."
# The project has no public home yet: replace both URLs when it is published.
# nooelint: oelint.vars.homepageping - placeholder (and CI has no network)
HOMEPAGE = "https://example.invalid/kp-gateway"
SECTION = "net"
LIC_FILES_CHKSUM = "file://LICENSE;md5=e3fc50a88d0a364313df4b21ef20c29e"
# LICENSE and the crates' license files (added to LIC_FILES_CHKSUM): kp-gateway's own and
# every linked crate's, generated from Cargo.lock by packaging/gen-copyright.py.
require ${BPN}-licenses.inc

PV = "0.1.0+git"

# The source: a pinned commit by default, so parsing never touches the network (a moving
# branch would make BitBake run `git ls-remote` while parsing every build). Point
# KP_GATEWAY_GIT at your clone if needed; follow the branch head only on purpose with
# KP_GATEWAY_SRCREV = "${AUTOREV}" in local.conf.
KP_GATEWAY_GIT ?= "git://example.invalid/kp-gateway.git;protocol=https;branch=main"
# gateway.toml comes from the layer (files/), so a .bbappend with
# FILESEXTRAPATHS:prepend := "${THISDIR}/files:" ships a site's own configuration.
SRC_URI = "${KP_GATEWAY_GIT} file://gateway.toml"
SRCREV = "${KP_GATEWAY_SRCREV}"
KP_GATEWAY_SRCREV ?= "ac641f887a6e4970e7378b443330dc31e76832ad"

S = "${UNPACKDIR}/${BP}"

inherit cargo cargo-update-recipe-crates systemd useradd

require ${BPN}-crates.inc

# A workspace: build only the daemon's package.
CARGO_BUILD_FLAGS += "-p kp-gateway"

SYSTEMD_SERVICE:${PN} = "kp-gateway.service"
SYSTEMD_AUTO_ENABLE = "enable"
# The unit's ExecReload runs /bin/kill (procps; busybox's applet would do as well).
RDEPENDS:${PN} += "procps"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system kp-gateway"
USERADD_PARAM:${PN} = "--system --gid kp-gateway --groups dialout \
                       --home-dir ${localstatedir}/lib/kp-gateway --no-create-home \
                       --shell ${base_sbindir}/nologin kp-gateway"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/debian/kp-gateway.service ${D}${systemd_system_unitdir}/
    install -d ${D}${sysconfdir}/kp-gateway
    install -m 0640 -g kp-gateway ${UNPACKDIR}/gateway.toml ${D}${sysconfdir}/kp-gateway/
    install -d -m 0750 -g kp-gateway ${D}${sysconfdir}/kp-gateway/conf.d
    install -d ${D}${datadir}/kp-gateway
    install -m 0644 ${S}/config/demo.toml ${D}${datadir}/kp-gateway/
    install -d ${D}${mandir}/man8
    install -m 0644 ${S}/debian/kp-gateway.8 ${D}${mandir}/man8/
    install -d ${D}${docdir}/${BPN}
    install -m 0644 ${S}/README.md ${S}/docs/protocol.md ${D}${docdir}/${BPN}/
    install -m 0644 ${S}/config/README.md ${D}${docdir}/${BPN}/config-reference.md
}

CONFFILES:${PN} = "${sysconfdir}/kp-gateway/gateway.toml"

# Upstream TLS without a ca_file trusts the system's store (public Kaa clouds).
RRECOMMENDS:${PN} += "ca-certificates"
