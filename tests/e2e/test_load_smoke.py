"""Smoke run of the benchmark load tool (`platform-core/examples/kp_load.rs`): 4 seconds
of each mode against the real core and a real Mosquitto. The benchmark itself
(`tests/bench/core_vs_broker.py`) is not run here; this proves the tool measures what
it says: every `/status` it counts is a sample the core stored, every relay it counts is
a message Mosquitto delivered back, and a connect storm gets every client in."""

import json
import subprocess
from pathlib import Path

from conftest import BIN, Core, Mosquitto
from kp_client import KpClient

LOAD = Path(BIN).parent / "examples" / "kp_load"


def load(*args, seconds=4):
    out = subprocess.run([str(LOAD), *args, "--seconds", str(seconds)], capture_output=True, text=True,
                         timeout=seconds + 60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def kp1_answered_and_stored(core, clients: int, window: int, seconds: int) -> dict:
    """Runs anonymous kp1 clients (tokens t0…) against `core`: every client connects,
    none errs, some requests are answered, and every answer counted was stored."""
    r = load("--mode", "kp1", "--addr", f"127.0.0.1:{core.port}", "--clients", str(clients),
             "--window", str(window), "--avn", core.APP_VERSION, "--token-prefix", "t", seconds=seconds)
    assert r["connected"] == clients and r["errors"] == 0, r
    assert r["answered"] > 0, r
    stored = core.query("SELECT count(*) FROM data_samples")[0][0]
    assert stored >= r["answered"], (stored, r)
    return r


def test_kp1_mode_counts_only_answers_the_core_stored(tmp_path):
    core = Core(tmp_path, extra_tokens=("t0", "t1", "t2"))
    try:
        r = load("--mode", "kp1", "--addr", f"127.0.0.1:{core.port}", "--clients", "3", "--window", "16",
                 "--avn", core.APP_VERSION, "--token-prefix", "t", "--user", core.USER, "--password", core.PASSWORD)
        assert r["connected"] == 3 and r["errors"] == 0, r
        assert r["answered"] > 0 and r["p50_ms"] > 0, r
        stored = {t: core.query("SELECT count(*) FROM data_samples WHERE endpoint_id = ?", f"ep-{t}")[0][0]
                  for t in ("t0", "t1", "t2")}
        # Requests still in flight at the stop are stored but not counted: never fewer.
        assert sum(stored.values()) >= r["answered"], (stored, r)
        assert all(n > 0 for n in stored.values()), stored
    finally:
        core.stop()


def test_kp1_endpoints_option_spreads_clients_over_fewer_endpoints(tmp_path):
    # 6 clients on 2 endpoints: client c reports as endpoint t(c % 2). Only t0 and t1
    # get samples, both of them do, and every answer counted was stored.
    core = Core(tmp_path, allow_anonymous=True, extra_tokens=("t0", "t1", "t2"))
    try:
        r = load("--mode", "kp1", "--addr", f"127.0.0.1:{core.port}", "--clients", "6", "--window", "8",
                 "--avn", core.APP_VERSION, "--token-prefix", "t", "--endpoints", "2", seconds=2)
        assert r["connected"] == 6 and r["errors"] == 0 and r["answered"] > 0, r
        stored = {t: core.query("SELECT count(*) FROM data_samples WHERE endpoint_id = ?", f"ep-{t}")[0][0]
                  for t in ("t0", "t1", "t2")}
        assert stored["t0"] > 0 and stored["t1"] > 0 and stored["t2"] == 0, stored
        assert stored["t0"] + stored["t1"] >= r["answered"], (stored, r)
    finally:
        core.stop()


def test_more_requests_than_the_cores_in_flight_budget_are_all_answered_in_turn(tmp_path):
    # 150 clients x 64 outstanding = 9 600 requests, over the core's budget of 8 192 read
    # and unanswered (docs/protocol.md §5): connections wait for turns to act on what they
    # read; nothing is refused, nothing deadlocks, and what was answered was stored.
    # Anonymous clients, so the run is about requests, not password checks.
    tokens = [f"t{i}" for i in range(150)]
    core = Core(tmp_path, allow_anonymous=True, extra_tokens=tokens)
    try:
        kp1_answered_and_stored(core, clients=150, window=64, seconds=6)
        assert "closing connection" not in core.proc.output(), "no client was cut while it waited"
    finally:
        core.stop()


def test_idle_connections_hold_no_turns_so_a_small_budget_still_serves_a_busy_client(tmp_path):
    # A budget of 4 requests in flight, and 12 connected clients that send nothing. A
    # connection takes a turn only for a request it has read and gives spare ones back
    # before it waits on its client, so two busy clients' requests are still answered.
    tokens = [f"t{i}" for i in range(2)]
    core = Core(tmp_path, allow_anonymous=True, extra_tokens=tokens, mqtt_keys={"max_requests_in_flight": 4})
    idle = None
    try:
        idle = subprocess.Popen([str(LOAD), "--mode", "storm", "--addr", f"127.0.0.1:{core.port}",
                                 "--clients", "12", "--seconds", "120"], stdout=subprocess.PIPE, text=True)
        connected = json.loads(idle.stdout.readline())
        assert (connected["connected"], connected["failed"]) == (12, 0), connected
        kp1_answered_and_stored(core, clients=2, window=16, seconds=3)
        assert idle.poll() is None, "the idle clients are still connected"
    finally:
        if idle is not None:
            idle.kill()
            idle.wait()
        core.stop()


def test_a_budget_smaller_than_a_batch_of_turns_still_answers_every_request(tmp_path):
    # A budget of 4 requests in flight, fewer than a connection takes at once. A
    # connection that has to wait for turns asks for at most what the budget holds, so
    # 40 requests sent back to back are all answered and stored (a wait for a whole
    # batch from a smaller budget never ended: the 5th request stalled the core).
    core = Core(tmp_path, allow_anonymous=True, extra_tokens=("t0",), mqtt_keys={"max_requests_in_flight": 4})
    client = None
    try:
        client = KpClient(core.port, client_id="back-to-back")
        base = f"kp1/{core.APP_VERSION}/dcx/t0/json"
        client.subscribe(f"{base}/+/status")
        client.subscribe(f"{base}/+/error")
        for i in range(1, 41):
            client.client.publish(f"{base}/{i}", json.dumps({"n": i}), qos=1)
        answered = set()
        while len(answered) < 40:
            topic, body = client.wait_message(f"{base}/", timeout=30)
            request, outcome = topic[len(base) + 1:].split("/")
            assert outcome == "status", (topic, body)
            answered.add(int(request))
        assert answered == set(range(1, 41))
        assert core.query("SELECT count(*) FROM data_samples WHERE endpoint_id = 'ep-t0'")[0][0] == 40
    finally:
        if client is not None:
            client.close()
        core.stop()


def test_echo_mode_against_mosquitto(tmp_path):
    broker = Mosquitto(tmp_path)
    try:
        trace = tmp_path / "trace.csv"
        r = load("--mode", "echo", "--addr", f"127.0.0.1:{broker.port}", "--clients", "3", "--window", "16",
                 "--trace", str(trace))
        assert r["connected"] == 3 and r["errors"] == 0, r
        assert r["answered"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0, r
        # The trace: one line per counted answer, from every client, latencies that give
        # the same median as the summary (both to 2 decimals, as printed).
        lines = trace.read_text().splitlines()
        assert lines[0] == "client,sent_ms,latency_ms"
        rows = [tuple(float(x) for x in line.split(",")) for line in lines[1:]]
        assert len(rows) == r["answered"], (len(rows), r)
        assert {int(c) for c, _, _ in rows} == {0, 1, 2}
        lat = sorted(x for _, _, x in rows)
        assert abs(lat[(len(lat) + 1) // 2 - 1] - r["p50_ms"]) < 0.01, (lat[len(lat) // 2], r)
    finally:
        broker.stop()


def test_storm_mode_connects_every_client(tmp_path):
    core = Core(tmp_path)
    try:
        r = load("--mode", "storm", "--addr", f"127.0.0.1:{core.port}", "--clients", "50",
                 "--user", core.USER, "--password", core.PASSWORD, seconds=1)
        assert (r["connected"], r["failed"]) == (50, 0), r
        bad = load("--mode", "storm", "--addr", f"127.0.0.1:{core.port}", "--clients", "3",
                   "--user", core.USER, "--password", "wrong", seconds=1)
        assert (bad["connected"], bad["failed"]) == (0, 3), bad
    finally:
        core.stop()
