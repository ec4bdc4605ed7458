#!/usr/bin/env bash
# Modbus polling benchmark (not a test): a pymodbus TCP device on a free loopback port,
# then gateway/examples/modbus_bench.rs against it. Numbers go to BENCHMARKS.md by hand.
# Usage: tests/bench/modbus_bench.sh [seconds per strategy]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x tests/.venv/bin/python ] || { echo "run tests/run.sh once first (it makes tests/.venv)"; exit 1; }
PORT=$(tests/.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SPEC=$(printf '{"transport":"tcp","port":%s,"slaves":{"1":{"hr":[%s]}}}' "$PORT" "$(seq -s, 1 800)")
tests/.venv/bin/python tests/e2e/modbus_device.py "$SPEC" >/tmp/modbus_bench_device.log 2>&1 &
DEV=$!
trap 'kill $DEV 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
cargo run --release -q -p kp-gateway --example modbus_bench -- "127.0.0.1:$PORT" "${1:-10}"
