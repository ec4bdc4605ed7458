"""Side-by-side benchmark of the embedded core and Mosquitto (not a test).

Starts the release `kp-gateway` in core-only mode and a Mosquitto broker (apt), both on
127.0.0.1 with a password file / credential, and drives both with the same Rust load tool
(`platform-core/examples/kp_load.rs`, rumqttc): QoS 1, the same ~40-byte JSON payload,
the same window and duration. The core answers each 2/DCP request on `/status` after the
commit that stores it; Mosquitto relays each message back to its sender through the
sender's own subscription. Each client count gets a fresh core (empty database) and
broker unless `--db shared`. Runs interleave (core, broker, core, broker, …) and the table
gives medians and core/broker ratios: round trips per second, server CPU µs per message
(from /proc/PID/stat), latency p50/p99, server RSS. The core runs with the packaged
unit's allocator settings (`MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2`). `--storm N` adds a connect storm: N
clients with user name and password connecting at once to a fresh server of each kind
(time until all are in, peak RSS, threads), then as many again to a warm server (RSS per
idle connection).

Usage (after `cargo build --release -p kp-gateway -p platform-core --example kp_load`):
  tests/.venv/bin/python tests/bench/core_vs_broker.py [--clients 1,10,100,1000]
      [--seconds 10] [--rounds 3] [--window 64] [--storm 1000] [--synchronous full]
      [--db fresh|shared]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("KP_GATEWAY_BIN", str(ROOT / "target" / "release" / "kp-gateway"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from conftest import BIN, Proc, free_port, hash_password, wait_port  # noqa: E402

LOAD = ROOT / "target" / "release" / "examples" / "kp_load"
USER, PASSWORD = "bench", "bench-password"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Core:
    def __init__(self, tmp: Path, tokens: int, synchronous: str, pw_hash: str, connections: int = 0,
                 mqtt_keys=()):
        self.port = free_port()
        self.state = tmp / "core-state"
        eps = "".join(f'[[core.endpoints]]\ntoken = "t{i}"\napp_version = "bench-v1"\n' for i in range(tokens))
        (tmp / "core.toml").write_text(f"""
[gateway]
state_dir = "{tmp / 'core-state'}"
log_level = "warn"
[core]
synchronous = "{synchronous}"
[core.mqtt]
listen = "127.0.0.1:{self.port}"
max_connections = {max(tokens, connections) + 100}
{"".join(k + chr(10) for k in mqtt_keys)}[[core.applications]]
name = "bench"
versions = ["bench-v1"]
[[core.credentials]]
username = "{USER}"
password_hash = "{pw_hash}"
applications = ["*"]
{eps}""")
        # The packaged unit's allocator settings (debian/kp-gateway.service).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_ARENA_MAX="2")
        self.proc = Proc("core", [str(BIN), "--config", str(tmp / "core.toml")], tmp / "core.log", env=env)
        wait_port(self.port, self.proc)

    def load_args(self, mode):
        return ["--mode", "kp1" if mode == "run" else "storm"]


class Broker:
    def __init__(self, tmp: Path, clients: int):
        self.port = free_port()
        pw = tmp / "mosquitto.passwd"
        pw.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(pw), USER, PASSWORD], check=True)
        conf = tmp / "mosquitto.conf"
        # max_inflight_messages = the load's window, so the broker may have as many QoS 1
        # messages out to a client as the client has out to it.
        conf.write_text(f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous false\n"
                        f"password_file {pw}\npersistence false\nmax_inflight_messages 64\n"
                        f"max_connections {clients + 100}\n")
        self.proc = Proc("mosquitto", ["mosquitto", "-c", str(conf)], tmp / "mosquitto.log")
        wait_port(self.port, self.proc)

    def load_args(self, mode):
        return ["--mode", "echo" if mode == "run" else "storm"]


def run_load(server, mode, clients, seconds, window, pin=False):
    """`pin`: the server's threads on CPU 0 and the load tool on CPU 1 (a diagnostic: each
    gets one core of its own, so neither takes CPU time from the other)."""
    pid = server.proc.pid
    prefix = []
    if pin:
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(pid)], stdout=subprocess.DEVNULL, check=True)
        prefix = ["taskset", "-c", "1"]
    cpu0 = cpu_seconds(pid)
    # The load tool shares the machine's cores with the server: its own CPU time (from
    # the rusage of the child reaped by subprocess.run) shows how much of them it took.
    load0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([*prefix, str(LOAD), *server.load_args(mode), "--addr", f"127.0.0.1:{server.port}",
                          "--clients", str(clients), "--window", str(window), "--seconds", str(seconds),
                          "--user", USER, "--password", PASSWORD],
                         capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load tool failed: {out.stderr}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["server_cpu_s"] = round(cpu_seconds(pid) - cpu0, 2)
    load1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["load_cpu_s"] = round(load1.ru_utime - load0.ru_utime + load1.ru_stime - load0.ru_stime, 2)
    r["server_rss_kib"] = status_kib(pid, "VmRSS")
    r["server_peak_rss_kib"] = status_kib(pid, "VmHWM")
    if mode == "run":
        r["cpu_us_per_message"] = round(r["server_cpu_s"] * 1e6 / max(r["answered"], 1), 1)
        r["load_cpu_us_per_message"] = round(r["load_cpu_s"] * 1e6 / max(r["answered"], 1), 1)
    return r


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,10,100,1000")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--storm", type=int, default=0)
    ap.add_argument("--synchronous", default="full", choices=["full", "normal"])
    # fresh: a new core (empty database) and broker for each client count, so the counts
    # differ in clients only; shared: one of each for the whole run (the database grows
    # from count to count, as in the tables before 2026-12-03 evening).
    ap.add_argument("--db", default="fresh", choices=["fresh", "shared"])
    a = ap.parse_args()
    counts = [int(c) for c in a.clients.split(",") if c]
    most = max(counts + [a.storm])
    pw_hash = hash_password(PASSWORD)
    raw = {"machine": f"{os.cpu_count()} cores, {os.uname().release}", "synchronous": a.synchronous, "db": a.db,
           "mosquitto": subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0],
           "runs": [], "storm": []}
    rows = []
    with tempfile.TemporaryDirectory(prefix="core-vs-broker-") as d:
        tmp = Path(d)
        servers = None
        try:
            for n in counts:
                if servers is None or a.db == "fresh":
                    if servers is not None:
                        for s in servers:
                            s.proc.stop()
                    sub = tmp / f"run-{n}"
                    sub.mkdir()
                    servers = (Core(sub, most, a.synchronous, pw_hash), Broker(sub, most))
                core, broker = servers
                per = {"core": [], "broker": []}
                for _ in range(a.rounds):
                    for name, server in (("core", core), ("broker", broker)):
                        r = run_load(server, "run", n, a.seconds, a.window)
                        r["server"] = name
                        if name == "core":
                            r["db_mib"] = round(sum(f.stat().st_size for f in core.state.rglob("*")
                                                    if f.is_file()) / 2**20, 1)
                        per[name].append(r)
                        raw["runs"].append(r)
                        print(json.dumps(r), file=sys.stderr)
                c, b = per["core"], per["broker"]
                rows.append((n, median(c, "per_second"), median(b, "per_second"),
                             median(c, "cpu_us_per_message"), median(b, "cpu_us_per_message"),
                             median(c, "p50_ms"), median(c, "p99_ms"), median(b, "p50_ms"), median(b, "p99_ms"),
                             sum(r["errors"] for r in c),
                             median(c, "load_cpu_us_per_message"), median(b, "load_cpu_us_per_message")))
        finally:
            for s in servers or ():
                s.proc.stop()
        if a.storm:
            for name in ("core", "broker"):
                sub = tmp / f"storm-{name}"
                sub.mkdir()
                # Room for two waves: the storm, then as many again to measure memory.
                server = (Core(sub, a.storm, a.synchronous, pw_hash, 2 * a.storm) if name == "core"
                          else Broker(sub, 2 * a.storm))
                waves = []
                try:
                    before = status_kib(server.proc.pid, "VmRSS")
                    for _ in range(2):
                        p = subprocess.Popen([str(LOAD), *server.load_args("storm"),
                                              "--addr", f"127.0.0.1:{server.port}", "--clients", str(a.storm),
                                              "--seconds", "120", "--user", USER, "--password", PASSWORD],
                                             stdout=subprocess.PIPE, text=True)
                        waves.append(p)
                        line = json.loads(p.stdout.readline())
                        line["rss_kib"] = status_kib(server.proc.pid, "VmRSS")
                        if len(waves) == 1:
                            # The first wave is the storm: a fresh server, every client at once.
                            storm = dict(line, server=name, rss_before_kib=before,
                                         peak_rss_kib=status_kib(server.proc.pid, "VmHWM"),
                                         threads=int(next(x for x in Path(f"/proc/{server.proc.pid}/status")
                                                          .read_text().splitlines()
                                                          if x.startswith("Threads:")).split()[1]))
                    # The second wave's clients are all idle connections on a warm server.
                    storm["kib_per_idle_connection"] = round((line["rss_kib"] - storm["rss_kib"])
                                                             / max(line["connected"], 1), 2)
                    storm["second_wave_connected"] = line["connected"]
                    raw["storm"].append(storm)
                    print(json.dumps(storm), file=sys.stderr)
                finally:
                    for p in waves:
                        p.kill()
                        p.wait()
                    server.proc.stop()
    print("| clients | core round trips/s | Mosquitto relays/s | ratio | core CPU µs/request "
          "| Mosquitto CPU µs/message | core p50 / p99 ms | Mosquitto p50 / p99 ms | core errors "
          "| load tool CPU µs/message (core / Mosquitto) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, cr, br, cc, bc, c50, c99, b50, b99, errs, lc, lb in rows:
        print(f"| {n} | {cr:,.0f} | {br:,.0f} | **{cr / max(br, 1):.2f}** | {cc} | {bc} | {c50} / {c99} "
              f"| {b50} / {b99} | {errs} | {lc} / {lb} |".replace(",", " "))
    for s in raw["storm"]:
        print(f"storm {s['server']}: {s['connected']}/{s['clients']} in {s['seconds_to_connect']} s, "
              f"peak RSS {s['peak_rss_kib'] / 1024:.1f} MiB, {s['kib_per_idle_connection']} KiB per idle connection")
    print(json.dumps(raw))


if __name__ == "__main__":
    main()
