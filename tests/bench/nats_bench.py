"""The core on NATS, side by side with the in-process bus (not a test).

Starts a real nats-server (Debian package; loopback, monitoring port for its message
counters) and the release `kp-gateway` in core-only mode, and drives it with the project's
load tool (`platform-core/examples/kp_load.rs`: QoS 1, 2/DCP requests with request IDs,
each answered on `/status` after the commit that stores it). Interleaved rounds of:

- `local`: the core on its in-process bus (no `[core.nats]`);
- `nats-1`: the same core with `[core.nats]`: every stored batch is also published as a
  13/DSTP and a 14/TSTP event (events/s = messages nats-server received, from /varz);
- `nats-2`: two core processes (replicas) on the one NATS, the clients split between them
  (two load tools at once; the figure is their sum).

Then the latency an external extension adds: one client, one request at a time, to a
DCX instance that is `kind = "external"` and served over 4/ESP by a nats-py service in
this script (it answers 200 at once), against the local DCX (synchronous = normal, so no
fsync in the figure).

Usage (after `cargo build --release -p kp-gateway -p platform-core --example kp_load`):
  tests/.venv/bin/python tests/bench/nats_bench.py [--clients 10] [--seconds 10]
      [--rounds 3] [--window 64] [--latency-seconds 10]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("KP_GATEWAY_BIN", str(ROOT / "target" / "release" / "kp-gateway"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from conftest import BIN, Proc, free_port, hash_password, wait_port  # noqa: E402
from kaa_nats import NatsPeer, extension_data, nats_server_bin  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "bench"))
from core_vs_broker import LOAD, PASSWORD, USER, cpu_seconds  # noqa: E402


class Nats:
    def __init__(self, tmp: Path):
        self.port, self.monitor = free_port(), free_port()
        self.proc = Proc("nats", [nats_server_bin(), "-a", "127.0.0.1", "-p", str(self.port),
                                  "-m", str(self.monitor)], tmp / "nats.log")
        wait_port(self.port, self.proc)
        wait_port(self.monitor, self.proc)
        self.url = f"nats://127.0.0.1:{self.port}"

    def in_msgs(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/varz", timeout=10) as r:
            return json.load(r)["in_msgs"]


class Core:
    def __init__(self, tmp: Path, name: str, prefixes, pw_hash: str, nats_url=None, external=False,
                 synchronous="full"):
        self.port = free_port()
        d = tmp / name
        d.mkdir()
        eps = "".join(f'[[core.endpoints]]\ntoken = "{p}{i}"\napp_version = "bench-v1"\n'
                      for p in prefixes for i in range(200))
        nats = ""
        if nats_url:
            nats = f'[core.nats]\nservers = ["{nats_url}"]\nreplica_id = "{name}"\n'
        ext = '[[core.extensions]]\ninstance = "ext-dcx"\nkind = "external"\n' if external else ""
        (d / "core.toml").write_text(f"""
[gateway]
state_dir = "{d / 'state'}"
log_level = "warn"
[core]
synchronous = "{synchronous}"
[core.mqtt]
listen = "127.0.0.1:{self.port}"
max_connections = 1000
{nats}
[[core.applications]]
name = "bench"
versions = ["bench-v1"]
[[core.credentials]]
username = "{USER}"
password_hash = "{pw_hash}"
applications = ["*"]
{ext}{eps}""")
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_ARENA_MAX="2")
        self.proc = Proc(name, [str(BIN), "--config", str(d / "core.toml")], d / "core.log", env=env)
        wait_port(self.port, self.proc)


def load(core: Core, clients: int, seconds: int, window: int, prefix: str, extension="dcx", nodelay=False):
    return subprocess.Popen([str(LOAD), "--mode", "kp1", "--addr", f"127.0.0.1:{core.port}",
                             "--clients", str(clients), "--window", str(window), "--seconds", str(seconds),
                             "--user", USER, "--password", PASSWORD, "--token-prefix", prefix,
                             "--extension", extension, *(["--nodelay"] if nodelay else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(p) -> dict:
    out, err = p.communicate(timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"load tool failed: {err}")
    return json.loads(out.strip().splitlines()[-1])


def run(scenario, cores, nats, clients, seconds, window):
    cpu0 = sum(cpu_seconds(c.proc.pid) for c in cores)
    msgs0 = nats.in_msgs()
    per = max(clients // len(cores), 1)
    procs = [load(c, per, seconds, window, prefix) for c, prefix in zip(cores, "ab")]
    rs = [result(p) for p in procs]
    answered = sum(r["answered"] for r in rs)
    cpu = sum(cpu_seconds(c.proc.pid) for c in cores) - cpu0
    return {
        "scenario": scenario, "clients": per * len(cores),
        "per_second": round(sum(r["per_second"] for r in rs), 1),
        "errors": sum(r["errors"] for r in rs),
        "p50_ms": max(r["p50_ms"] for r in rs), "p99_ms": max(r["p99_ms"] for r in rs),
        "core_cpu_us_per_request": round(cpu * 1e6 / max(answered, 1), 1),
        "nats_msgs_per_second": round((nats.in_msgs() - msgs0) / seconds, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--latency-seconds", type=int, default=10)
    a = ap.parse_args()
    pw_hash = hash_password(PASSWORD)
    version = subprocess.run([nats_server_bin(), "--version"], capture_output=True, text=True).stdout.strip()
    raw = {"machine": f"{os.cpu_count()} cores, {os.uname().release}", "nats_server": version, "runs": []}
    with tempfile.TemporaryDirectory(prefix="nats-bench-") as d:
        tmp = Path(d)
        nats = Nats(tmp)
        local = Core(tmp, "local", "ab", pw_hash)
        one = Core(tmp, "nats-1", "ab", pw_hash, nats.url)
        two = [Core(tmp, "replica-a", "ab", pw_hash, nats.url), Core(tmp, "replica-b", "ab", pw_hash, nats.url)]
        everyone = [local, one, *two]
        per = {"local": [], "nats-1": [], "nats-2": []}
        try:
            for _ in range(a.rounds):
                for scenario, cores in (("local", [local]), ("nats-1", [one]), ("nats-2", two)):
                    r = run(scenario, cores, nats, a.clients, a.seconds, a.window)
                    per[scenario].append(r)
                    raw["runs"].append(r)
                    print(json.dumps(r), file=sys.stderr)
        finally:
            for c in everyone:
                c.proc.stop()

        # The latency an external extension adds (one request at a time).
        peer = NatsPeer(nats.url)
        peer.serve_extension("ext-dcx", lambda req: extension_data(req, 200))
        ext = Core(tmp, "external", "ab", pw_hash, nats.url, external=True, synchronous="normal")
        latency = {}
        try:
            for _ in range(a.rounds):
                for name, extension in (("local dcx", "dcx"), ("external dcx over NATS", "ext-dcx")):
                    # TCP_NODELAY on the client: one request at a time, no Nagle delay.
                    r = result(load(ext, 1, a.latency_seconds, 1, "a", extension, nodelay=True))
                    r["extension"] = name
                    latency.setdefault(name, []).append(r)
                    raw["runs"].append(r)
                    print(json.dumps(r), file=sys.stderr)
        finally:
            ext.proc.stop()
            peer.close()
            nats.proc.stop()

    med = statistics.median
    base = med(r["per_second"] for r in per["local"])
    print(f"machine: {raw['machine']} (2 cores: the core(s), nats-server and the load tool share them)")
    print(f"nats-server: {version}; {a.clients} clients, window {a.window}, {a.seconds} s, "
          f"median of {a.rounds} interleaved rounds\n")
    print("| bus | DCX round trips/s | vs in-process | core CPU µs/request | p50 / p99 ms "
          "| NATS messages in/s (events) | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("local", "in-process"), ("nats-1", "NATS, 1 replica"), ("nats-2", "NATS, 2 replicas")):
        rs = per[name]
        rate = med(r["per_second"] for r in rs)
        print(f"| {label} | {rate:,.0f} | {rate / max(base, 1):.2f} | {med(r['core_cpu_us_per_request'] for r in rs)} "
              f"| {med(r['p50_ms'] for r in rs)} / {med(r['p99_ms'] for r in rs)} "
              f"| {med(r['nats_msgs_per_second'] for r in rs):,.0f} | {sum(r['errors'] for r in rs)} |")
    print("\n| one request at a time | round trips/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for name, rs in latency.items():
        print(f"| {name} | {med(r['per_second'] for r in rs):,.0f} | {med(r['p50_ms'] for r in rs)} "
              f"| {med(r['p99_ms'] for r in rs)} | {sum(r['errors'] for r in rs)} |")
    print("\nraw: " + json.dumps(raw))


if __name__ == "__main__":
    main()
