#!/usr/bin/env bash
# Builds the kp-gateway Debian packages with cargo-deb and checks them.
#
#   packaging/build-deb.sh [amd64|arm64|armhf ...]     (default: amd64)
#
# amd64 is built natively. arm64 and armhf are cross-built on an x86_64 Debian 12 machine
# with Debian's rustc-web/cargo-web (the rustup toolchain stays out of PATH for those):
# arm64 with libstd-rust-web-dev:arm64 and gcc-aarch64-linux-gnu; armhf rebuilds std
# from rust-web-src (-Zbuild-std) with gcc-arm-linux-gnueabihf. The script installs what
# it needs (apt, cargo install cargo-deb) and, for each package, runs lintian (errors
# fail the build) and `systemd-analyze verify` on the unpacked unit.
# Packages land in target/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
ARCHES=("${@:-amd64}")

apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

apt_install lintian systemd dpkg-dev gzip
# Pinned: a new cargo-deb must not change the package behind our back.
CARGO_DEB_VERSION=3.8.0
if ! cargo-deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    cargo install --locked --force cargo-deb --version "$CARGO_DEB_VERSION"
fi

# The man page is architecture-independent.
mkdir -p target/man
gzip -9n -c debian/kp-gateway.8 > target/man/kp-gateway.8.gz

# cargo-deb writes no DEBIAN/md5sums; dpkg --verify and debsums need one. Unpack, add
# it, repack (same contents, owner root:root).
add_md5sums() {
    local deb=$1 dir
    dir=$(mktemp -d)
    dpkg-deb -R "$deb" "$dir"
    # Conffiles are left out, as dh_md5sums does (dpkg tracks them with their own sums).
    (cd "$dir" && find . -type f ! -path './DEBIAN/*' -printf '%P\n' | sort \
        | grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles 2>/dev/null || true) \
        | tr '\n' '\0' | xargs -0 md5sum > DEBIAN/md5sums)
    dpkg-deb --root-owner-group -Zxz -b "$dir" "$deb" >/dev/null
    rm -rf "$dir"
}

check() {
    local deb=$1
    add_md5sums "$deb"
    echo "== lintian $deb"
    # Errors fail; warnings are shown. The unit and maintainer scripts are ours, not debhelper's.
    lintian --fail-on error --suppress-tags-from-file packaging/lintian-suppressed "$deb"
    echo "== systemd-analyze verify (unpacked $deb)"
    local dir; dir=$(mktemp -d)
    dpkg-deb -x "$deb" "$dir"
    # The unit refers to /usr/bin/kp-gateway and man:kp-gateway(8): check them in the package.
    test -x "$dir/usr/bin/kp-gateway"
    test -f "$dir/usr/share/man/man8/kp-gateway.8.gz"
    local unit="$dir/usr/lib/systemd/system/kp-gateway.service"
    test -f "$unit"
    # The unit is checked where it was unpacked, so the absolute ExecStart path is not
    # there (it was checked above); any other line is a finding and fails the build.
    systemd-analyze verify --man=no "$unit" 2>&1 \
        | grep -v "Command /usr/bin/kp-gateway is not executable" | tee "$dir/verify.log" || true
    if [ -s "$dir/verify.log" ]; then
        echo "systemd-analyze verify reported problems" >&2
        exit 1
    fi
    echo "== systemd-analyze security (exposure score of the unit)"
    systemd-analyze security --offline=true "$unit" 2>/dev/null | tail -n 1 || true
    rm -rf "$dir"
}

for arch in "${ARCHES[@]}"; do
    case "$arch" in
        amd64)
            cargo deb -p kp-gateway --locked --output target/debian/
            deb=$(ls -t target/debian/kp-gateway_*_amd64.deb | head -n1)
            ;;
        arm64)
            $SUDO dpkg --add-architecture arm64
            apt_install rustc-web cargo-web gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstd-rust-web-dev:arm64
            PATH=/usr/bin:/bin \
            CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
            CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
                "$HOME/.cargo/bin/cargo-deb" -p kp-gateway --locked --target aarch64-unknown-linux-gnu --output target/debian/
            deb=$(ls -t target/debian/kp-gateway_*_arm64.deb | head -n1)
            ;;
        armhf)
            apt_install rustc-web cargo-web rust-web-src gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
            PATH=/usr/bin:/bin RUSTC_BOOTSTRAP=1 \
            CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
            CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc \
                "$HOME/.cargo/bin/cargo-deb" -p kp-gateway --locked --target armv7-unknown-linux-gnueabihf \
                --output target/debian/ -- -Zbuild-std=std,panic_abort
            deb=$(ls -t target/debian/kp-gateway_*_armhf.deb | head -n1)
            ;;
        *) echo "unknown architecture $arch (amd64, arm64, armhf)" >&2; exit 2 ;;
    esac
    check "$deb"
    echo "built $ROOT/$deb"
done
