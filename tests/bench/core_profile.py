"""Where the embedded core's CPU goes per request at two or more client counts, by thread
and by function, from `perf` (not a test).

For each client count: a fresh core (as `core_vs_broker.py` starts it), the Rust load
tool against it, and over 5 s in the middle of the run a `perf record` of the core's
threads (user and kernel, 1 999 Hz) and a `perf stat` of its network and wake-up system
calls. Samples are turned into µs of CPU per answered request (samples / 1 999 Hz / the
requests answered in the window, taken from the run's mean rate). Prints, per client
count, the µs per request of each thread and the system calls per request; then the
functions whose cost per request grew most from the first client count to the last.

`--pin` puts the core's threads on CPU 0 and the load tool on CPU 1 (the core's own
costs, without the load tool taking CPU time from it). Needs `perf` (Debian
`linux-perf`) and root or `kernel.perf_event_paranoid` ≤ 1. Usage (after
`cargo build --release -p kp-gateway` and `cargo build --release -p platform-core
--example kp_load`):
  tests/.venv/bin/python tests/bench/core_profile.py --clients 100,1000 [--pin] [--bin PATH]
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_vs_broker as cb  # noqa: E402

HZ = 1999
WINDOW_S = 5
CALLS = ["sendto", "recvfrom", "write", "read", "epoll_wait", "futex"]


def profile(clients, seconds, pin, work: Path):
    """(requests/s, {(thread, symbol): samples}, {syscall: count}) of one run."""
    pw_hash = cb.hash_password(cb.PASSWORD)
    data, stat = work / f"perf-{clients}.data", work / f"stat-{clients}.txt"
    with tempfile.TemporaryDirectory(prefix="core-profile-") as d:
        core = cb.Core(Path(d), clients, "full", pw_hash)
        try:
            pid = str(core.proc.pid)
            prefix = []
            if pin:
                subprocess.run(["taskset", "-a", "-p", "-c", "0", pid], stdout=subprocess.DEVNULL, check=True)
                prefix = ["taskset", "-c", "1"]
            load = subprocess.Popen([*prefix, str(cb.LOAD), "--mode", "kp1", "--addr", f"127.0.0.1:{core.port}",
                                     "--clients", str(clients), "--window", "64", "--seconds", str(seconds),
                                     "--user", cb.USER, "--password", cb.PASSWORD],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(seconds * 0.3)
            events = ",".join(f"syscalls:sys_enter_{c}" for c in CALLS)
            st = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(stat), "-e", events, "-p", pid,
                                   "--", "sleep", str(WINDOW_S)])
            subprocess.run(["perf", "record", "-q", "-F", str(HZ), "-o", str(data), "-p", pid,
                            "--", "sleep", str(WINDOW_S)], check=True, capture_output=True)
            st.wait()
            out, _ = load.communicate(timeout=seconds + 120)
        finally:
            core.proc.stop()
    rate = float(re.search(r'"per_second":(\d+)', out).group(1))
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "comm,sym", "-q",
                             "-F", "sample,comm,sym"], capture_output=True, text=True, check=True).stdout
    samples = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*(\d+)\s+(\S+)\s+(.*)$", line)
        if m:
            samples[(m.group(2), m.group(3).strip())] += int(m.group(1))
    calls = {}
    for line in stat.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and "sys_enter_" in parts[2]:
            calls[parts[2].split("sys_enter_")[1]] = int(parts[0]) if parts[0].isdigit() else 0
    return rate, samples, calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--bin", help="kp-gateway binary (default: the release build)")
    a = ap.parse_args()
    if a.bin:
        cb.BIN = a.bin
    print(f"# {os.cpu_count()} cores, {os.uname().release}, {cb.BIN}, pinned: {a.pin}")
    per_request = {}
    with tempfile.TemporaryDirectory(prefix="core-profile-perf-") as work:
        for n in [int(c) for c in a.clients.split(",") if c]:
            rate, samples, calls = profile(n, a.seconds, a.pin, Path(work))
            requests = rate * WINDOW_S
            us = {k: v / HZ / requests * 1e6 for k, v in samples.items()}
            per_request[n] = us
            threads = collections.Counter()
            for (thread, _), v in us.items():
                threads[thread] += v
            print(f"{n} clients: {rate:.0f} req/s, CPU µs per request: "
                  + ", ".join(f"{t} {v:.2f}" for t, v in threads.most_common()) + f", all {sum(us.values()):.2f}")
            print("  system calls per request: "
                  + ", ".join(f"{c} {calls.get(c, 0) / requests:.4f}" for c in CALLS))
    first, last = per_request[min(per_request)], per_request[max(per_request)]
    keys = sorted(set(first) | set(last), key=lambda k: -(last.get(k, 0) - first.get(k, 0)))
    print(f"# µs per request at {min(per_request)} and {max(per_request)} clients, largest growth first")
    for k in keys[:a.top]:
        print(f"{first.get(k, 0):7.3f} {last.get(k, 0):7.3f} {last.get(k, 0) - first.get(k, 0):+7.3f}  {k[0]}  {k[1][:100]}")


if __name__ == "__main__":
    main()
