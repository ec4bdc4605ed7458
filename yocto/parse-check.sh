#!/usr/bin/env bash
# Release check (not in CI, which cannot reach the Yocto repositories): parses the layer
# for real with BitBake against oe-core, alone and with meta-raspberrypi for
# raspberrypi4-64 and raspberrypi0-2w, with no local.conf lines of the layer's own.
# Passes when every parse reports 0 errors and no WARNING mentions the layer.
#
# Usage: yocto/parse-check.sh BITBAKE_DIR OE_CORE_DIR META_RASPBERRYPI_DIR
# (clones of openembedded/bitbake, openembedded/openembedded-core and
# agherzan/meta-raspberrypi). BitBake refuses root: as root the script runs it as the
# user `kpyocto` (created if missing) on a copy in a scratch directory.
# The host's network is off for BitBake (BB_NO_NETWORK=1): parsing must not need it.
# Needs BitBake's host tools (chrpath, cpio, gawk, ...) and the en_US.UTF-8 locale.
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,12p' "$0"; exit 2; }
LAYER=$(cd "$(dirname "$0")/meta-kp-gateway" && pwd)
WORK=$(mktemp -d /tmp/kp-yocto-parse.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp -r "$1" "$WORK/bitbake"; cp -r "$2" "$WORK/oe-core"; cp -r "$3" "$WORK/meta-raspberrypi"
cp -r "$LAYER" "$WORK/meta-kp-gateway"
rm -rf "$WORK/oe-core/build"   # a build directory of an earlier run would be reused
RUN=()
if [ "$(id -u)" -eq 0 ]; then
    id kpyocto >/dev/null 2>&1 || useradd -m kpyocto
    chown -R kpyocto "$WORK"
    RUN=(su kpyocto -c)
else
    RUN=(bash -c)
fi
parse() {  # $1: machine ("" = oe-core's default), rest: layers
    local machine=$1; shift
    local layers="$WORK/oe-core/meta $*"
    "${RUN[@]}" "set -e; export LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 BB_NO_NETWORK=1 MACHINE=$machine \
        BB_ENV_PASSTHROUGH_ADDITIONS='BB_NO_NETWORK MACHINE'
        [ -n \"\$MACHINE\" ] || unset MACHINE
        cd '$WORK/oe-core' && export BITBAKEDIR='$WORK/bitbake' && . ./oe-init-build-env >/dev/null
        printf 'LCONF_VERSION = \"7\"\nBBPATH = \"\${TOPDIR}\"\nBBFILES ?= \"\"\nBBLAYERS = \"%s\"\n' '$layers' > conf/bblayers.conf
        bitbake -p 2>&1 | tee '$WORK/parse.log' | grep -v '^NOTE' | tail -3"
    grep -q ", 0 errors\." "$WORK/parse.log" || { cat "$WORK/parse.log"; echo "parse failed" >&2; exit 1; }
    if grep "WARNING" "$WORK/parse.log" | grep -q "meta-kp-gateway"; then
        grep "WARNING" "$WORK/parse.log"; echo "warnings from the layer" >&2; exit 1
    fi
}
echo "== oe-core + meta-kp-gateway"
parse "" "$WORK/meta-kp-gateway"
for m in raspberrypi4-64 raspberrypi0-2w; do
    echo "== oe-core + meta-raspberrypi + meta-kp-gateway, MACHINE=$m"
    parse "$m" "$WORK/meta-raspberrypi $WORK/meta-kp-gateway"
done
echo "== the layer parses clean"
