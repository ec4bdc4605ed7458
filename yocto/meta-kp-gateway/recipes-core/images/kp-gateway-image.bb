SUMMARY = "A Raspberry Pi appliance image running kp-gateway"
DESCRIPTION = "systemd, kp-gateway with its web page on port 8088, SSH (dropbear), \
               Wi-Fi firmware and tools, and one admin user whose login the builder \
               provides; the UART is left free for an RS-485 HAT. Build it for MACHINE \
               raspberrypi4-64 or raspberrypi0-2w with meta-raspberrypi."
SECTION = "images"
LICENSE = "MIT"

# CORE_IMAGE_EXTRA_INSTALL (local.conf) is honoured; MACHINE_EXTRA_RRECOMMENDS brings the
# board's Wi-Fi/Bluetooth firmware (packagegroup-core-boot takes only the essential ones).
IMAGE_INSTALL = "packagegroup-core-boot packagegroup-kp-gateway \
                 ${MACHINE_EXTRA_RRECOMMENDS} ${CORE_IMAGE_EXTRA_INSTALL}"
IMAGE_FEATURES += "ssh-server-dropbear"
IMAGE_LINGUAS = ""

inherit core-image extrausers

# The admin login: no default password ships. Set one or both in local.conf:
#   KP_GATEWAY_ADMIN_PASSWORD_HASH = "<openssl passwd -6 output, with every $ as \$>"
#   KP_GATEWAY_ADMIN_SSH_KEY = "ssh-ed25519 AAAA... you@laptop"
# The user may use sudo and read the journal (the web page's setup code is there).
KP_GATEWAY_ADMIN_USER ?= "kpadmin"
KP_GATEWAY_ADMIN_PASSWORD_HASH ?= ""
KP_GATEWAY_ADMIN_SSH_KEY ?= ""
EXTRA_USERS_PARAMS = "groupadd -f -r sudo; groupadd -f -r systemd-journal; \
    useradd -m -s /bin/sh -G sudo,systemd-journal ${KP_GATEWAY_ADMIN_USER}; \
    ${@'usermod -p \'%s\' %s;' % (d.getVar('KP_GATEWAY_ADMIN_PASSWORD_HASH'), d.getVar('KP_GATEWAY_ADMIN_USER')) if d.getVar('KP_GATEWAY_ADMIN_PASSWORD_HASH') else ''}"

ROOTFS_POSTPROCESS_COMMAND += "kp_gateway_admin_key; kp_gateway_free_uart; kp_gateway_sudoers;"

kp_gateway_admin_key() {
    if [ -n "${KP_GATEWAY_ADMIN_SSH_KEY}" ]; then
        install -d -m 0700 ${IMAGE_ROOTFS}/home/${KP_GATEWAY_ADMIN_USER}/.ssh
        echo "${KP_GATEWAY_ADMIN_SSH_KEY}" > ${IMAGE_ROOTFS}/home/${KP_GATEWAY_ADMIN_USER}/.ssh/authorized_keys
        chmod 0600 ${IMAGE_ROOTFS}/home/${KP_GATEWAY_ADMIN_USER}/.ssh/authorized_keys
        chown -R 1000:1000 ${IMAGE_ROOTFS}/home/${KP_GATEWAY_ADMIN_USER}/.ssh
    elif [ -z "${KP_GATEWAY_ADMIN_PASSWORD_HASH}" ]; then
        bbwarn "kp-gateway-image: no admin login: set KP_GATEWAY_ADMIN_PASSWORD_HASH or KP_GATEWAY_ADMIN_SSH_KEY in local.conf"
    fi
}

# No login prompt on the UART an RS-485 HAT uses (the serial getty of SERIAL_CONSOLES).
kp_gateway_free_uart() {
    rm -f ${IMAGE_ROOTFS}${sysconfdir}/systemd/system/getty.target.wants/serial-getty@*.service
}

kp_gateway_sudoers() {
    if [ -d ${IMAGE_ROOTFS}${sysconfdir}/sudoers.d ]; then
        echo "%sudo ALL=(ALL:ALL) ALL" > ${IMAGE_ROOTFS}${sysconfdir}/sudoers.d/10-sudo-group
        chmod 0440 ${IMAGE_ROOTFS}${sysconfdir}/sudoers.d/10-sudo-group
    fi
}
