"""Where the embedded core's CPU goes per request, by thread, and what the load costs TCP
(not a test).

Starts a fresh core (as `core_vs_broker.py` does), runs the Rust load tool against it, and
over a window in the middle of the run reads:
- the CPU time (user and system) of the core's threads, grouped by name (the tokio
  workers, the store thread), and of the load tool, in µs per answered request;
- the TCP segments of the core's connections per request (from `ss -ti`): received and
  sent, with data and without (pure ACKs, window updates).

One run per client count; the machine's noise is ±15 %, so compare runs side by side or
repeat them. Usage (after `cargo build --release -p kp-gateway` and
`cargo build --release -p platform-core --example kp_load`):
  tests/.venv/bin/python tests/bench/core_threads.py --clients 100,1000 [--bin PATH]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_vs_broker as cb  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def thread_ticks(pid):
    """(user, system) clock ticks of each thread name of `pid` (tokio workers as one)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        key = "tokio workers" if name.startswith("tokio") else name
        ticks = out.setdefault(key, [0, 0])
        ticks[0] += int(fields[11])
        ticks[1] += int(fields[12])
    return out


def segments(port):
    """Segments of the core's established connections: out, in, data out, data in."""
    text = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                          capture_output=True, text=True, check=True).stdout

    def total(field):
        return sum(int(x) for x in re.findall(rf"\b{field}:(\d+)", text))
    return {k: total(k) for k in ("segs_out", "segs_in", "data_segs_out", "data_segs_in")}


def measure(clients, seconds, window):
    pw_hash = cb.hash_password(cb.PASSWORD)
    with tempfile.TemporaryDirectory(prefix="core-threads-") as d:
        core = cb.Core(Path(d), clients, "full", pw_hash)
        try:
            pid = core.proc.pid
            load = subprocess.Popen([str(cb.LOAD), "--mode", "kp1", "--addr", f"127.0.0.1:{core.port}",
                                     "--clients", str(clients), "--window", str(window),
                                     "--seconds", str(seconds), "--user", cb.USER, "--password", cb.PASSWORD],
                                    stdout=subprocess.PIPE, text=True)
            # The window: the middle of the run (connected, warmed up, not yet stopping).
            start, span = seconds * 0.3, seconds * 0.5
            time.sleep(start)
            t0, s0, l0 = thread_ticks(pid), segments(core.port), thread_ticks(load.pid)
            time.sleep(span)
            t1, s1, l1 = thread_ticks(pid), segments(core.port), thread_ticks(load.pid)
            out, _ = load.communicate(timeout=seconds + 120)
        finally:
            core.proc.stop()
    r = json.loads(out.strip().splitlines()[-1])
    per_window = r["per_second"] * span

    def us(ticks):
        return round(ticks / HZ * 1e6 / per_window, 2)
    row = {"clients": clients, "per_second": r["per_second"], "threads": {}}
    for name, (u, s) in t1.items():
        u0, k0 = t0.get(name, [0, 0])
        if u - u0 + s - k0 > 0:
            row["threads"][name] = {"user_us": us(u - u0), "sys_us": us(s - k0)}
    lu = sum(v[0] for v in l1.values()) - sum(v[0] for v in l0.values())
    ls = sum(v[1] for v in l1.values()) - sum(v[1] for v in l0.values())
    row["load_tool"] = {"user_us": us(lu), "sys_us": us(ls)}
    row["segments_per_request"] = {k: round((s1[k] - s0[k]) / per_window, 3) for k in s0}
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--bin", help="kp-gateway binary (default: the release build)")
    a = ap.parse_args()
    if a.bin:
        cb.BIN = a.bin
    print(f"# {os.cpu_count()} cores, {os.uname().release}, {cb.BIN}")
    for n in [int(c) for c in a.clients.split(",") if c]:
        print(json.dumps(measure(n, a.seconds, a.window)), flush=True)


if __name__ == "__main__":
    main()
