"""Fault campaign: a bridge (simulated devices → buffer → Mosquitto → a test Kaa server)
under repeated, randomly chosen faults, with the books kept on every sample.

Faults (one per cycle, seeded): kill -9 of the gateway and a restart; an upstream outage
(the broker stopped for 1–3 s); a platform that stops answering for 1–3 s (requests
accepted, no confirmation); a disk-full episode (the state directory is a small tmpfs; the
platform goes silent until the buffer fills the disk, then answers again; root only).

Books: a watcher copies the buffer's waiting samples (token, timestamp) every 100 ms —
every sample the gateway has *taken* (committed) shows up there before it can leave. At
the end the faults stop, the backlog drains, and the report says how many samples were
taken, delivered, delivered more than once, and lost (taken but never delivered: must be
0), with the buffer's own drop counts by reason (samples refused at a full disk were never
taken; they are counted, not lost).

Usage (from the repository root, with the test venv and a debug or release build):
    tests/.venv/bin/python tests/faults/campaign.py --cycles 60 [--seed 7] [--out report.json]
CI runs a short version (tests/e2e/test_fault_campaign.py).
"""

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

import configs  # noqa: E402
from conftest import Gateway, Mosquitto, wait_for  # noqa: E402
from kaa_server import KaaServer  # noqa: E402

AVN = "site-v1"


def read_rows(db: Path, sql: str):
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            return c.execute(sql).fetchall()
    except sqlite3.Error:
        return []  # between a kill and the restart, or mid-checkpoint: try again


def waiting(db: Path):
    return {(t, json.loads(p)["timestamp"]) for t, p in read_rows(db, "SELECT token, payload FROM samples")}


class Books(threading.Thread):
    """Copies the buffer's waiting samples every 100 ms."""

    def __init__(self, db: Path):
        super().__init__(daemon=True)
        self.db = db
        self.taken = set()
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            self.taken |= waiting(self.db)
            time.sleep(0.1)

    def stop(self):
        self.stop_flag.set()
        self.join()
        self.taken |= waiting(self.db)


def settle(done, timeout: float) -> bool:
    """Waits until `done()` or the time-out; the report tells what is missing."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if done():
            return True
        time.sleep(0.2)
    return done()


def stop_or_dump(gw, work: Path) -> int:
    """SIGTERM; a gateway still running after 15 s gets its threads' stacks written to
    `work/hang-<pid>.txt` (gdb) before the SIGKILL."""
    os.kill(gw.proc.pid, signal.SIGTERM)
    try:
        gw.proc.popen.wait(15)
    except subprocess.TimeoutExpired:
        with open(work / f"hang-{gw.proc.pid}.txt", "w") as f:
            subprocess.run(["gdb", "-p", str(gw.proc.pid), "-batch", "-ex", "thread apply all bt"],
                           stdout=f, stderr=subprocess.STDOUT, timeout=120, check=False)
    return gw.stop()


def config(state: Path, port: int, devices: int, poll_ms: int) -> str:
    wave = {"name": "v", "waveform": "sawtooth", "period_secs": 7, "amplitude": 10.0}
    devs = [configs.simulated_device(f"sim{i}", AVN, poll_ms, [wave]) for i in range(devices)]
    up = configs.upstream(port, client_id="campaign", keepalive_secs=5, response_timeout_secs=3,
                          reconnect_max_secs=1)
    return configs.config(state, upstream=up, devices=devs, log_level="info")


def run(cycles: int, seed: int, work: Path, devices: int = 5, poll_ms: int = 10, disk_full: bool = None) -> dict:
    rng = random.Random(seed)
    if disk_full is None:
        disk_full = os.geteuid() == 0
    state = work / "state"
    state.mkdir(parents=True)
    if disk_full:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    broker = Mosquitto(work)
    kaa = KaaServer(broker.port)
    cfg = config(state, broker.port, devices, poll_ms)
    db = state / "buffer.sqlite"
    books = Books(db)
    counts = Counter()
    started = time.monotonic()
    gw = Gateway(work, cfg, name="gw0")
    books.start()
    kinds = ["kill9", "outage", "silence"] + (["disk_full"] if disk_full else [])
    try:
        for n in range(cycles):
            time.sleep(rng.uniform(0.5, 2.0))  # normal running between faults
            kind = rng.choice(kinds)
            counts[kind] += 1
            if kind == "kill9":
                os.kill(gw.proc.pid, signal.SIGKILL)
                gw.proc.popen.wait(10)
                gw.notify.close()
                gw = Gateway(work, cfg, name=f"gw{n + 1}")
            elif kind == "outage":
                broker.stop()
                time.sleep(rng.uniform(1.0, 3.0))
                broker.start()
            elif kind == "silence":
                kaa.mode = "silent"
                time.sleep(rng.uniform(1.0, 3.0))
                kaa.mode = "status"
            else:
                kaa.mode = "silent"
                seen = gw.proc.output().count("disk holding the buffer is full")
                wait_for("the disk to fill",
                         lambda: gw.proc.output().count("disk holding the buffer is full") > seen, timeout=120)
                kaa.mode = "status"
        # Faults over: everything taken must arrive.
        kaa.mode = "status"
        at_end = waiting(db)
        books.taken |= at_end
        settle(lambda: books.taken <= set(kaa.keys()), 180)
        books.stop()
        settle(lambda: books.taken <= set(kaa.keys()), 180)
        # And leave the buffer: what waited when the faults stopped must be gone from it
        # (delivered and deleted; a delete put off by a full disk is retried within 30 s).
        # The devices keep sampling, so newer rows come and go meanwhile.
        settle(lambda: not (at_end & waiting(db)), 120)
        still_waiting = len(at_end & waiting(db))
        drops = dict(read_rows(db, "SELECT reason, sum(count) FROM drops GROUP BY reason"))
        code = stop_or_dump(gw, work)
    finally:
        if books.is_alive():
            books.stop_flag.set()
        gw.stop()
        kaa.close()
        broker.stop()
        if disk_full:
            subprocess.run(["cp", "-a", str(state), str(work / "state-at-end")], check=False)
            subprocess.run(["umount", "-l", str(state)], check=False)
    received = Counter(kaa.keys())
    lost = books.taken - set(received)
    return {
        "seed": seed,
        "cycles": cycles,
        "faults": dict(counts),
        "devices": devices,
        "poll_ms": poll_ms,
        "seconds": round(time.monotonic() - started, 1),
        "taken": len(books.taken),
        "delivered": len(received),
        "duplicates": sum(n - 1 for n in received.values()),
        "lost": len(lost),
        "lost_examples": sorted(lost)[:5],
        "still_waiting": still_waiting,  # of the rows waiting when the faults stopped
        "drops": drops,
        "last_exit_code": code,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--poll-ms", type=int, default=10)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", type=Path, help="work in this (new) directory and keep it: logs, state copy")
    a = ap.parse_args()
    if a.keep:
        report = run(a.cycles, a.seed, a.keep, a.devices, a.poll_ms)
    else:
        with tempfile.TemporaryDirectory(prefix="kp-faults-") as d:
            report = run(a.cycles, a.seed, Path(d), a.devices, a.poll_ms)
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    sys.exit(0 if report["lost"] == 0 and report["last_exit_code"] == 0 else 1)


if __name__ == "__main__":
    main()
