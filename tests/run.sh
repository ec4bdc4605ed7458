#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine: installs every prerequisite
# it needs (idempotent: only what is missing), builds, and runs
#   1. the Rust unit and property tests (cargo test),
#   2. the end-to-end tests of the real binary against real peers (pytest): paho-mqtt,
#      mosquitto_pub/mosquitto_sub, a Mosquitto broker, MQTT.js (npm `mqtt`) over
#      WebSocket, curl, pymodbus devices over TCP and over socat pseudo-terminals, mbpoll,
#      Debian's chromium driven by npm playwright-core for the web page, and a real
#      nats-server with nats-py + fastavro as an independent Kaa service on NATS.
# Usage: tests/run.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- system packages -------------------------------------------------------------------
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v mbpoll >/dev/null 2>&1 || need+=(mbpoll)
# libfaketime: a clock that is set while the gateway runs (the clock-step test).
command -v faketime >/dev/null 2>&1 || need+=(faketime)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# A real browser for the web page's end-to-end walk (driven by npm playwright-core).
[ -x /usr/bin/chromium ] || need+=(chromium)
# A real NATS server for the scale-out tests (the core on Kaa's NATS subjects).
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
if ! command -v cargo >/dev/null 2>&1; then
    # Debian 12 ships a current Rust as rustc-web/cargo-web; newer releases as rustc/cargo.
    if apt-cache show cargo-web >/dev/null 2>&1; then need+=(cargo-web rustc-web); else need+=(cargo rustc); fi
fi
if [ ${#need[@]} -gt 0 ]; then
    log "installing system packages: ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# --- Python peers (in a venv beside the tests) ----------------------------------------
VENV=tests/.venv
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt; then
    echo "pip install failed" >&2
    exit 1
fi

# --- MQTT.js and playwright-core (pinned by tests/js/package-lock.json) ---------------
if [ ! -d tests/js/node_modules/mqtt ] || [ ! -d tests/js/node_modules/playwright-core ]; then
    log "npm ci (MQTT.js, playwright-core)"
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi

# --- Rust: build and unit/property tests ----------------------------------------------
log "cargo build"
cargo build --workspace --locked --all-targets
log "cargo test (unit and property tests)"
cargo test --workspace --locked

# --- Python test code: no unused names, no undefined ones -------------------------------
log "module graph (imports point one way)"
python3 tests/tools/module_graph.py

log "pyflakes (test and benchmark scripts)"
"$VENV/bin/python" -m pyflakes tests/e2e tests/bench packaging

# --- end-to-end tests against the real binary -----------------------------------------
log "end-to-end tests (pytest)"
export KP_GATEWAY_BIN="$PWD/target/debug/kp-gateway"
export PATH="$PATH:/usr/sbin"  # mosquitto lives there on Debian
"$VENV/bin/python" -m pytest tests/e2e -q -p no:cacheprovider "$@"

# --- the core's end-to-end tests again, on the NATS bus ----------------------------------
# Both buses implement one trait: the same tests run with [core.nats] pointed at a real
# nats-server (one for the run, started and stopped by tests/e2e/nats_shared.py); the
# gateway-and-core tests (standalone site, bridge, Modbus to core) run this way too.
log "end-to-end tests with the core on the NATS bus (KP_TEST_BUS=nats)"
KP_TEST_BUS=nats "$VENV/bin/python" -m pytest tests/e2e/test_core_*.py tests/e2e/test_kpc_*.py \
    tests/e2e/test_kaa_clients.py tests/e2e/test_bridge_to_core.py tests/e2e/test_standalone_site.py \
    tests/e2e/test_modbus_to_core.py -q -p no:cacheprovider "$@"
