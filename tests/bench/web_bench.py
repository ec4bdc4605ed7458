"""Benchmark of the local web page (not a test): page weight, server time per page and per
live-update request, and the memory the page and its value history add.

A standalone site with D simulated devices × P points polled every second runs twice from
the release binary: with `[web]` and without it (same devices, same warm-up). With the
page, the script claims the gateway over HTTP, then fetches every main page N times.

Usage: python3 tests/bench/web_bench.py [--devices 50] [--points 30] [--warmup 90] [--n 200]
Needs: cargo build --release -p kp-gateway. Prints a Markdown table for BENCHMARKS.md.
"""

import argparse
import http.cookiejar
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/e2e"))
from conftest import free_port  # noqa: E402
BIN = ROOT / "target/release/kp-gateway"
PAGES = ["/", "/devices", "/config", "/config/devices/0", "/config/raw", "/config/versions", "/buffer",
         "/logs", "/console"]
# The environment the packaged unit sets (debian/kp-gateway.service): glibc returns large
# blocks (Argon2's 19 MiB) to the system at once, and keeps few arenas. --glibc-defaults
# measures without it.
UNIT_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}
ENV = {**os.environ, **UNIT_ENV}
LIVE = ["/api/status", "/api/devices", "/api/history?device=dev0&point=p0", "/api/logs?level=info"]


def config(state: Path, devices: int, points: int, mqtt: int, web: int = None) -> str:
    out = [f'[gateway]\nstate_dir = "{state}"\nlog_level = "info"\n',
           f'[core]\n[core.mqtt]\nlisten = "127.0.0.1:{mqtt}"\n[[core.applications]]\nname = "bench"\n'
           f'versions = ["bench-v1"]\n']
    if web:
        out.append(f'[web]\nlisten = "127.0.0.1:{web}"\n')
    for d in range(devices):
        out.append(f'[[devices]]\nname = "dev{d}"\ntoken = "dev{d}"\napp_version = "bench-v1"\n'
                   f'poll_interval_ms = 1000\n[devices.simulated]\nphase_secs = {d}.0\n')
        for p in range(points):
            out.append(f'[[devices.points]]\nname = "p{p}"\nwaveform = "sine"\nperiod_secs = {30 + p}.0\n')
    return "\n".join(out)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(tmp: Path, devices: int, points: int, warmup: float, web: bool):
    state = tmp / ("with-web" if web else "without-web")
    web_port = free_port() if web else None
    cfg = tmp / f"{state.name}.toml"
    cfg.write_text(config(state, devices, points, free_port(), web_port))
    log = open(tmp / f"{state.name}.log", "w")
    proc = subprocess.Popen([str(BIN), "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=ENV)
    time.sleep(warmup)
    return proc, web_port, state


def opener_logged_in(base: str, state: Path):
    jar = http.cookiejar.CookieJar()
    op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    op.open(base + "/setup").read()
    pre = next(c.value for c in jar if c.name == "kpgw_pre")
    code = (state / "web/setup-code").read_text().strip()
    body = urllib.parse.urlencode({"csrf": pre, "code": code, "password": "bench password 1",
                                   "password2": "bench password 1"}).encode()
    op.open(base + "/setup", body).read()
    return op


def timed(op, url: str, n: int):
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        with op.open(url) as r:
            size = len(r.read())
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return size, statistics.median(times), times[int(len(times) * 0.95) - 1]


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--devices", type=int, default=50)
    a.add_argument("--points", type=int, default=30)
    a.add_argument("--warmup", type=float, default=90)
    a.add_argument("--n", type=int, default=200)
    a.add_argument("--glibc-defaults", action="store_true", help="without the unit's MALLOC_* settings")
    args = a.parse_args()
    if args.glibc_defaults:
        for k in UNIT_ENV:
            ENV.pop(k, None)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        plain, _, _ = run(tmp, args.devices, args.points, args.warmup, web=False)
        rss_plain = rss_kib(plain.pid)
        plain.send_signal(signal.SIGTERM)
        plain.wait(60)
        proc, port, state = run(tmp, args.devices, args.points, args.warmup, web=True)
        base = f"http://127.0.0.1:{port}"
        try:
            rss_web_idle = rss_kib(proc.pid)
            op = opener_logged_in(base, state)
            rss_claimed = rss_kib(proc.pid)
            assets = {}
            for name in ["style.css", "app.js", "console.js"]:
                assets[name] = len(op.open(f"{base}/assets/{name}").read())
            malloc = "glibc defaults" if args.glibc_defaults else " ".join(f"{k}={v}" for k, v in UNIT_ENV.items())
            print(f"machine: {os.cpu_count()} cores; {args.devices} devices x {args.points} points, 1 s polls; "
                  f"warm-up {args.warmup:.0f} s; {args.n} sequential requests per URL from one Python client; "
                  f"{malloc}\n")
            print("| page | HTML bytes | with CSS + JS | median ms | p95 ms |")
            print("|---|---|---|---|---|")
            for page in PAGES:
                size, med, p95 = timed(op, base + page, args.n)
                total = size + assets["style.css"] + assets["app.js"] + (assets["console.js"] if page == "/console" else 0)
                print(f"| `{page}` | {size:,} | {total:,} | {med:.2f} | {p95:.2f} |")
            print("\n| live update | bytes | median ms | p95 ms |")
            print("|---|---|---|---|")
            for url in LIVE:
                size, med, p95 = timed(op, base + url, args.n)
                print(f"| `{url}` | {size:,} | {med:.2f} | {p95:.2f} |")
            rss_web = rss_kib(proc.pid)
            print(f"\nRSS without [web]: {rss_plain / 1024:.1f} MiB; with [web], before any visit: "
                  f"{rss_web_idle / 1024:.1f} MiB; after claiming (one Argon2id hash): {rss_claimed / 1024:.1f} MiB; "
                  f"after the requests above: {rss_web / 1024:.1f} MiB "
                  f"(added by the page and its value history: {(rss_web - rss_plain) / 1024:.1f} MiB)")
            metrics = op.open(base + "/metrics").read().decode()
            m = re.search(r"^process_cpu_seconds_total (\S+)", metrics, re.M)
            print(f"process CPU so far: {m.group(1) if m else '?'} s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()
