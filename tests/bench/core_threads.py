"""CPU per request of the embedded core's threads and of the load tool (not a test).

Starts a fresh core (as `core_vs_broker.py` does), runs the Rust load tool against it
with N clients for 14 s, and from the 4th to the 9th second reads each thread's CPU time
(/proc/PID/task/*/stat) and counts the core's system calls (`perf stat`, Debian
`linux-perf`). Prints µs of CPU per request by thread (the tokio workers summed) and
system calls per request. Shows which part of the work grows with the client count.

Usage: tests/.venv/bin/python tests/bench/core_threads.py 1000 [path/to/kp-gateway]
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_vs_broker as cb  # noqa: E402

WINDOW_S = 5


def threads(pid):
    """CPU seconds (user, system) per thread name; tokio's workers summed."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            s = (t / "stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        name = s[s.index("(") + 1:s.rindex(")")]
        f = s.rsplit(")", 1)[1].split()
        key = "tokio-workers" if name.startswith("tokio") else name
        u, st = out.get(key, (0.0, 0.0))
        out[key] = (u + int(f[11]) / cb.TICK, st + int(f[12]) / cb.TICK)
    return out


def main():
    n = int(sys.argv[1])
    if len(sys.argv) > 2:
        cb.BIN = sys.argv[2]
    with tempfile.TemporaryDirectory() as d:
        core = cb.Core(Path(d), n, "full", cb.hash_password(cb.PASSWORD))
        pid = core.proc.pid
        try:
            load = subprocess.Popen([str(cb.LOAD), "--mode", "kp1", "--addr", f"127.0.0.1:{core.port}",
                                     "--clients", str(n), "--window", "64", "--seconds", "14",
                                     "--user", cb.USER, "--password", cb.PASSWORD],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(4)
            a, la = threads(pid), threads(load.pid)
            ps = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,context-switches",
                                 "-p", str(pid), "--", "sleep", str(WINDOW_S)], capture_output=True, text=True)
            b, lb = threads(pid), threads(load.pid)
            out, _ = load.communicate(timeout=120)
        finally:
            core.proc.stop()
    r = json.loads(out.strip().splitlines()[-1])
    req = r["per_second"] * WINDOW_S  # the run's mean rate over the window
    print(f"{n} clients: {r['per_second']} requests/s")
    for k in b:
        if k in a:
            du, ds = ((b[k][i] - a[k][i]) * 1e6 / req for i in (0, 1))
            if du + ds > 0.05:
                print(f"  {k:16s} user {du:5.2f}  system {ds:5.2f} µs/request")
    lu, ls = ((sum(v[i] for v in lb.values()) - sum(v[i] for v in la.values())) * 1e6 / req for i in (0, 1))
    print(f"  {'load tool':16s} user {lu:5.2f}  system {ls:5.2f} µs/request")
    for line in ps.stderr.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].strip().isdigit():
            print(f"  {f[2]}: {int(f[0]) / req:.2f} per request")


if __name__ == "__main__":
    main()
