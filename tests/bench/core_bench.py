"""Benchmark of the embedded core (not a test): memory per idle connection and the round
trip of a REST command to a live MQTT endpoint and back. Request throughput, side by side
with Mosquitto, is `core_vs_broker.py`. Prints JSON; numbers go to BENCHMARKS.md by hand.

Usage (after tests/run.sh made tests/.venv):
  cargo build --release -p kp-gateway
  tests/.venv/bin/python tests/bench/core_bench.py
"""

import base64
import http.client
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from conftest import Proc, free_port, hash_password, wait_port  # noqa: E402
from kp_client import KpClient  # noqa: E402
from mqtt_raw import RawClient, connect  # noqa: E402

BIN = ROOT / "target" / "release" / "kp-gateway"
CLIENTS, PER_CLIENT = 4, 100


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    tmp = Path(tempfile.mkdtemp(prefix="core-bench-"))
    port, http_port = free_port(), free_port()
    tokens = "\n".join(f'[[core.endpoints]]\ntoken = "t{i}"\napp_version = "bench-v1"\n'
                       for i in range(CLIENTS * PER_CLIENT))
    (tmp / "core.toml").write_text(f"""
[gateway]
state_dir = "{tmp / 'state'}"
log_level = "warn"
[core]
[core.mqtt]
listen = "127.0.0.1:{port}"
max_connections = 5000
allow_anonymous = true
[core.http]
listen = "127.0.0.1:{http_port}"
[core.api]
admin_username = "admin"
admin_password_hash = "{hash_password('admin-pw')}"
[[core.applications]]
name = "bench"
versions = ["bench-v1"]
[[core.credentials]]
username = "bench"
password_hash = "{hash_password('bench-pw')}"
applications = ["*"]
{tokens}
""")
    core = Proc("core", [str(BIN), "--config", str(tmp / "core.toml")], tmp / "core.log")
    wait_port(port, core)
    wait_port(http_port, core)
    out = {"machine": "2 cores (this sandbox), release build, core and load on the same machine"}
    try:
        out["rss_idle_kib"] = rss_kib(core.pid)

        # Idle connections (token-only CONNECT, as KaaIoT's example clients do).
        before = rss_kib(core.pid)
        idle = []
        for i in range(1000):
            c = RawClient(port)
            c.send(connect(f"idle-{i}", keepalive=600))
            assert c.read()[0] == 2
            idle.append(c)
        time.sleep(1)
        out["idle_connections"] = {"count": len(idle), "rss_delta_kib": rss_kib(core.pid) - before,
                                   "per_connection_kib": round((rss_kib(core.pid) - before) / len(idle), 1)}
        for c in idle:
            c.close()

        # REST command → push to a live paho endpoint → result → HTTP answer: with paho's
        # default (Nagle on, as most device clients leave it) and with TCP_NODELAY.
        for key, nodelay in (("command_round_trip_ms", False), ("command_round_trip_nodelay_ms", True)):
            out[key] = command_round_trips(port, http_port, nodelay)
        out["rss_end_kib"] = rss_kib(core.pid)
    finally:
        core.stop()
    print(json.dumps(out, indent=2))


def command_round_trips(port: int, http_port: int, nodelay: bool, n: int = 300) -> dict:
    """`n` REST commands in a row to a live paho endpoint that answers each one."""
    responder = KpClient(port, "bench", "bench-pw", client_id=f"responder-{nodelay}")
    if nodelay:
        responder.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert responder.request("kp1/bench-v1/dcx/t0/json/1", [{"x": 1}]) == ("status", b"")
    stop = threading.Event()

    def answer():
        while not stop.is_set():
            try:
                topic, payload = responder.wait_message("kp1/bench-v1/cex/t0/command/", timeout=0.5)
            except TimeoutError:
                continue
            ids = [c["id"] for c in json.loads(payload)]
            responder.client.publish("kp1/bench-v1/cex/t0/result/ping",
                                     json.dumps([{"id": i, "statusCode": 200} for i in ids]), qos=1)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-pw").decode(),
            "Content-Type": "application/json"}
    ep = None
    conn.request("GET", "/api/v1/endpoints?appVersionName=bench-v1", headers=auth)
    for e in json.loads(conn.getresponse().read()):
        conn.request("GET", f"/api/v1/endpoints/{e['endpointId']}/tokens", headers=auth)
        if any(tk["token"] == "t0" for tk in json.loads(conn.getresponse().read())):
            ep = e["endpointId"]
            break
    lat = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", f"/api/v1/endpoints/{ep}/commands/ping?awaitTimeout=5000", body=b"{}", headers=auth)
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
            lat.append((time.perf_counter() - t0) * 1000)
    finally:
        stop.set()
        t.join()
        responder.close()
        conn.close()
    lat.sort()
    return {"n": len(lat), "p50": round(statistics.median(lat), 2),
            "p99": round(lat[int(len(lat) * 0.99) - 1], 2), "max": round(lat[-1], 2)}


if __name__ == "__main__":
    main()
