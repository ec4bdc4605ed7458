#!/usr/bin/env bash
# Release check (slow; not run on every push): installs the arm64 .deb into an arm64
# Debian 12 chroot (debootstrap --foreign, second stage and everything after it run
# through qemu-user-static + binfmt_misc), starts the daemon there with the demo config,
# as the package's system user, and checks that it answers on its MQTT port and its web
# page (unclaimed, the setup code private to the service user), and stores
# samples. Needs root. Usage: packaging/install-test-arm64.sh [path/to/kp-gateway_*_arm64.deb]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, chroot, mount)" >&2; exit 1; }
DEB=${1:-$(ls -t target/debian/kp-gateway_*_arm64.deb 2>/dev/null | head -n1 || true)}
[ -n "$DEB" ] && [ -f "$DEB" ] || { echo "build it first: packaging/build-deb.sh arm64" >&2; exit 1; }
ROOTFS=$PWD/target/arm64-rootfs

missing=()
for p in debootstrap qemu-user-static binfmt-support; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "cannot register qemu-aarch64 with binfmt_misc" >&2; exit 1; }

if [ ! -x "$ROOTFS/usr/bin/dpkg" ] || [ ! -e "$ROOTFS/.second-stage-done" ]; then
    rm -rf "$ROOTFS"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=adduser,python3-minimal \
        bookworm "$ROOTFS" http://deb.debian.org/debian
    cp /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/"
    chroot "$ROOTFS" /debootstrap/debootstrap --second-stage
    touch "$ROOTFS/.second-stage-done"
fi

cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true
    umount "$ROOTFS/proc" 2>/dev/null || true
}
trap cleanup EXIT
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"

echo "== install $DEB in the arm64 chroot"
cp "$DEB" "$ROOTFS/tmp/kp-gateway.deb"
chroot "$ROOTFS" dpkg -i /tmp/kp-gateway.deb
chroot "$ROOTFS" id kp-gateway
chroot "$ROOTFS" /usr/bin/kp-gateway --version
chroot "$ROOTFS" /usr/bin/kp-gateway check-config /etc/kp-gateway/gateway.toml

echo "== run the demo as kp-gateway"
rm -rf "$ROOTFS/var/lib/kp-gateway/demo"
LOG=$PWD/target/arm64-demo.log
chroot --userspec=kp-gateway:kp-gateway "$ROOTFS" /usr/bin/kp-gateway --demo \
    --state-dir /var/lib/kp-gateway/demo --status-every 2 >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 120); do
    grep -q "MQTT listening on" "$LOG" && break
    sleep 0.5
done
ADDR=$(grep -o "MQTT listening on [0-9.]*:[0-9]*" "$LOG" | awk '{print $4}')
[ -n "$ADDR" ] || { cat "$LOG"; echo "the daemon did not start" >&2; exit 1; }
echo "daemon listens on $ADDR"
# An MQTT CONNECT without credentials must be answered with CONNACK "not authorized".
python3 - "$ADDR" <<'PY'
import socket, sys
host, port = sys.argv[1].split(":")
body = b"\x00\x04MQTT\x04\x02\x00\x0a\x00\x05probe"
with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(bytes([0x10, len(body)]) + body)
    ack = s.recv(4)
assert ack == b"\x20\x02\x00\x05", ack
print("CONNACK:", ack.hex())
PY
# The web page answers, unclaimed: it sends every visitor to the setup form, and the
# one-time code is in the state directory, readable by the service user only.
WEB=$(grep -o "web page: http://[0-9.]*:[0-9]*" "$LOG" | awk '{print $3}')
[ -n "$WEB" ] || { cat "$LOG"; echo "the web page did not start" >&2; exit 1; }
python3 - "$WEB" <<'PY'
import sys, urllib.request, urllib.error
class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None
try:
    urllib.request.build_opener(Stay).open(sys.argv[1] + "/", timeout=10)
    raise SystemExit("expected a redirect to /setup")
except urllib.error.HTTPError as e:
    assert e.code == 303 and e.headers["location"] == "/setup", (e.code, e.headers)
print("web page: unclaimed, / -> /setup")
PY
test "$(stat -c '%a %U' "$ROOTFS/var/lib/kp-gateway/demo/web/setup-code")" = "600 kp-gateway"
for _ in $(seq 60); do
    grep -q "core has stored [1-9]" "$LOG" && break
    sleep 1
done
grep "core has stored [1-9]" "$LOG" | tail -n1
kill -TERM "$PID"
wait "$PID"
PID=
echo "== clean stop, exit 0"

echo "== upgrade (reinstall) keeps the edited config and the state"
echo "# edited by the install test" >> "$ROOTFS/etc/kp-gateway/gateway.toml"
test -f "$ROOTFS/var/lib/kp-gateway/demo/buffer.sqlite"
chroot "$ROOTFS" dpkg -i --force-confold /tmp/kp-gateway.deb
grep -q "edited by the install test" "$ROOTFS/etc/kp-gateway/gateway.toml"
test -f "$ROOTFS/var/lib/kp-gateway/demo/buffer.sqlite"

echo "== a deleted conffile: reinstalling still configures the package (Debian Policy 10.7.3)"
rm "$ROOTFS/etc/kp-gateway/gateway.toml"
chroot "$ROOTFS" dpkg -i /tmp/kp-gateway.deb
test "$(chroot "$ROOTFS" dpkg-query -W -f '${Status}' kp-gateway)" = "install ok installed"
test ! -e "$ROOTFS/etc/kp-gateway/gateway.toml"

echo "== purge removes the state and the user"
chroot "$ROOTFS" dpkg --purge kp-gateway
test ! -e "$ROOTFS/var/lib/kp-gateway"
! chroot "$ROOTFS" id kp-gateway 2>/dev/null
test ! -e "$ROOTFS/usr/bin/kp-gateway"
echo "== arm64 install test passed"
