"""A/B of embedded-core builds or settings under the same load (not a test).

Runs each variant in turn, round after round (A, B, A, B, …), each run on a fresh core
(empty database) with the same load as `core_vs_broker.py`: N clients of the Rust load
tool, QoS 1, 2/DCP requests answered on `/status` after the commit that stores them.
Prints each run and the medians of requests/s and core CPU µs per request.

A variant is a `kp-gateway` binary, optionally followed by `[core.mqtt]` keys:
  tests/.venv/bin/python tests/bench/core_ab.py /tmp/old/kp-gateway target/release/kp-gateway
  tests/.venv/bin/python tests/bench/core_ab.py 'target/release/kp-gateway,max_requests_in_flight=2048' \
      target/release/kp-gateway --clients 1000 --rounds 3
`--pin` gives the core and the load tool one CPU each (how much of a change in rate comes
from the two sharing the cores).
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_vs_broker as cb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help="BIN[,mqtt_key=value,...]")
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--pin", action="store_true",
                    help="the core on CPU 0, the load tool on CPU 1 (needs 2 CPUs; a diagnostic)")
    a = ap.parse_args()
    pw_hash = cb.hash_password(cb.PASSWORD)
    results = {}
    for _ in range(a.rounds):
        for variant in a.variants:
            binary, *keys = variant.split(",")
            for n in [int(c) for c in a.clients.split(",") if c]:
                with tempfile.TemporaryDirectory(prefix="core-ab-") as d:
                    cb.BIN = binary
                    core = cb.Core(Path(d), n, "full", pw_hash, mqtt_keys=keys)
                    try:
                        r = cb.run_load(core, "run", n, a.seconds, a.window, pin=a.pin)
                    finally:
                        core.proc.stop()
                results.setdefault((variant, n), []).append(r)
                print(f"{variant} {n} clients: {r['per_second']} req/s, {r['cpu_us_per_message']} µs/req "
                      f"(load tool {r['load_cpu_us_per_message']}), p99 {r['p99_ms']} ms, peak RSS {r['server_peak_rss_kib']} KiB", flush=True)
    for (variant, n), runs in results.items():
        print(f"median {variant} {n} clients: {statistics.median(r['per_second'] for r in runs):.0f} req/s, "
              f"{statistics.median(r['cpu_us_per_message'] for r in runs)} µs/req")


if __name__ == "__main__":
    main()
