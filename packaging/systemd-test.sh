#!/usr/bin/env bash
# The packaged service under a real systemd as PID 1: debootstraps a Debian 12 (amd64) root
# with systemd, installs the .deb into it, boots it with `systemd-nspawn --boot
# --private-network` (the container sees only its own loopback) and lets
# packaging/systemd-check.py, a unit started after kp-gateway.service, check readiness
# (Type=notify), the watchdog (fed, and enforced on a frozen daemon), a serial PTY opened
# through the unit's device policy (with a control showing the policy is enforced),
# `systemctl reload` applying a conf.d drop-in in the same process, the web page claimed
# and an upstream saved on it, and a clean stop; then an upgrade and a second boot (the
# page's version, the admin and the buffer kept), a deleted conffile reinstalled, purge.
# Needs root. Usage: packaging/systemd-test.sh [path/to/kp-gateway_*_amd64.deb]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, systemd-nspawn)" >&2; exit 1; }
DEB=${1:-$(ls -t target/debian/kp-gateway_*_amd64.deb 2>/dev/null | head -n1 || true)}
[ -n "$DEB" ] && [ -f "$DEB" ] || { echo "build it first: packaging/build-deb.sh amd64" >&2; exit 1; }
ROOTFS=$PWD/target/systemd-rootfs
LOG=$PWD/target/systemd-test.log

missing=()
for p in debootstrap systemd-container; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -e "$ROOTFS/.debootstrap-done" ]; then
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,python3 \
        bookworm "$ROOTFS" http://deb.debian.org/debian >/dev/null
    touch "$ROOTFS/.debootstrap-done"
fi

echo "== install $DEB (fresh) in the container root"
nspawn=(systemd-nspawn -q -D "$ROOTFS" --private-network --register=no --keep-unit)
"${nspawn[@]}" --pipe sh -c 'dpkg --purge kp-gateway >/dev/null 2>&1 || true'
# A fresh start on a reused root: no earlier configuration, journal or result.
rm -rf "$ROOTFS/root/kp-check.result" "$ROOTFS/etc/kp-gateway" "$ROOTFS"/var/log/journal/*
cp "$DEB" "$ROOTFS/var/tmp/kp-gateway.deb"
# As an admin would: apt resolves the package's dependencies (the only step with the
# host's network, to reach the Debian mirror).
systemd-nspawn -q -D "$ROOTFS" --register=no --keep-unit --pipe sh -c \
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /var/tmp/kp-gateway.deb'
"${nspawn[@]}" --pipe dpkg-query -W -f '${Status}\n' procps | grep -qx "install ok installed"
test -L "$ROOTFS/etc/systemd/system/multi-user.target.wants/kp-gateway.service"
test "$("${nspawn[@]}" --pipe stat -c '%a %U:%G' /etc/kp-gateway/conf.d 2>/dev/null)" = "750 root:kp-gateway"

# The test's own pieces: a short watchdog period, and the checker as a unit.
mkdir -p "$ROOTFS/etc/systemd/system/kp-gateway.service.d"
printf '[Service]\nWatchdogSec=6\n' > "$ROOTFS/etc/systemd/system/kp-gateway.service.d/50-test.conf"
install -m 0755 packaging/systemd-check.py "$ROOTFS/usr/local/sbin/kp-check"
cat > "$ROOTFS/etc/systemd/system/kp-check.service" <<'EOF'
[Unit]
Description=kp-gateway package check
After=kp-gateway.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/kp-check
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/kp-check.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/kp-check.service"

boot() {  # boot the container; the checker runs its phase and powers it off
    echo "$1" > "$ROOTFS/etc/kp-check-phase"
    rm -f "$ROOTFS/root/kp-check.result"
    # Unified cgroups, so systemd inside enforces device policies with its BPF programs.
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 timeout 600 "${nspawn[@]}" --system-call-filter=bpf --boot >"$LOG" 2>&1 || true
    grep "kp-check:" "$LOG" || true
    if [ "$(head -n1 "$ROOTFS/root/kp-check.result" 2>/dev/null)" != "PASS" ]; then
        cat "$ROOTFS/root/kp-check.result" 2>/dev/null || tail -n 60 "$LOG"
        echo "the service under systemd failed its $1 checks (console: $LOG)" >&2
        exit 1
    fi
}

echo "== boot it (systemd as PID 1)"
boot first

echo "== upgrade to a newer version (same binary, version 0.1.0-1+test1), then boot again"
up=$(mktemp -d)
dpkg-deb -R "$DEB" "$up/pkg"
sed -i 's/^Version: .*/&+test1/' "$up/pkg/DEBIAN/control"
dpkg-deb --root-owner-group -b "$up/pkg" "$ROOTFS/var/tmp/kp-gateway-up.deb" >/dev/null
rm -rf "$up"
"${nspawn[@]}" --pipe dpkg -i /var/tmp/kp-gateway-up.deb
"${nspawn[@]}" --pipe dpkg-query -W -f '${Version}\n' kp-gateway | grep -q '+test1$'
boot upgraded

echo "== a deleted conffile: reinstalling still configures the package (Debian Policy 10.7.3)"
rm "$ROOTFS/etc/kp-gateway/gateway.toml"
"${nspawn[@]}" --pipe dpkg -i /var/tmp/kp-gateway-up.deb
test "$("${nspawn[@]}" --pipe dpkg-query -W -f '${Status}' kp-gateway)" = "install ok installed"
test ! -e "$ROOTFS/etc/kp-gateway/gateway.toml"

echo "== purge: the state and the user go, the admin's own drop-in stays"
"${nspawn[@]}" --pipe dpkg --purge kp-gateway
test ! -e "$ROOTFS/var/lib/kp-gateway"
! "${nspawn[@]}" --pipe id kp-gateway 2>/dev/null
test -f "$ROOTFS/etc/kp-gateway/conf.d/20-sensor.toml"
echo "== systemd test passed"
