#!/usr/bin/env bash
# Lints the Yocto layer with oelint-adv (PyPI) and checks the crates list is current.
# Errors and warnings fail; info-level suggestions are printed only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=tests/.venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check oelint-adv==$(cat yocto/oelint-adv.version)
python3 yocto/update-crates.py --check
# The layer ships the packaged default configuration (a bbappend may replace it).
cmp config/gateway.toml yocto/meta-kp-gateway/recipes-connectivity/kp-gateway/files/gateway.toml \
    || { echo "yocto/.../files/gateway.toml differs from config/gateway.toml: copy it" >&2; exit 1; }
# srcurifile: the first SRC_URI item is ${KP_GATEWAY_GIT} (a git:// URL) which oelint-adv
# does not expand, so it takes file://gateway.toml for the first fetcher.
out=$("$VENV/bin/python" -m oelint_adv --quiet --suppress oelint.vars.srcurifile $(find yocto/meta-kp-gateway -name '*.bb') 2>&1 || true)
printf '%s\n' "$out"
if printf '%s\n' "$out" | grep -qE ':(error|warning):'; then
    echo "oelint-adv reported errors or warnings" >&2
    exit 1
fi
echo "yocto layer: lint clean (errors and warnings)"
