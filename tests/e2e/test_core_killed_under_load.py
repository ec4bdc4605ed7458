"""The embedded core killed (SIGKILL) while clients keep it busy, three times over, and
started again on the same database: every sample it answered with `/status` is stored,
in `data_samples` and in its time series (points in `points_recent`, in blocks or cut
off mid-settle alike), and nothing is stored twice. Clients pipeline their requests, so
a kill always lands with many in flight; those never answered may or may not be stored."""

import json
import random
import signal
import threading
import time

import paho.mqtt.client as mqtt

from conftest import Core, wait_for

AVN = Core.APP_VERSION
TOKENS = [f"cut{i}" for i in range(6)]
WINDOW = 64  # requests a client has sent and not yet seen answered
SAMPLES_PER_REQUEST = 4


class Sender:
    """One paho client for one endpoint, sending requests with a window of WINDOW, each
    holding SAMPLES_PER_REQUEST samples numbered from 0 up (never repeated, even across
    restarts). Records which request IDs were answered with `/status`."""

    def __init__(self, port: int, token: str, first_request: int):
        self.token = token
        self.next = first_request
        self.answered: set = set()
        self.errors: list = []
        self.room = threading.Semaphore(WINDOW)
        self.stop = threading.Event()
        self.gone = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cut-{token}-{first_request}",
                        protocol=mqtt.MQTTv311)
        c.username_pw_set(Core.USER, Core.PASSWORD)
        c.max_inflight_messages_set(WINDOW)
        c.reconnect_delay_set(60, 120)  # a killed core is not reconnected to
        connected = threading.Event()
        c.on_connect = lambda *a: connected.set()
        c.on_disconnect = lambda *a: self.gone.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        assert connected.wait(10), "no CONNACK"
        done = threading.Event()
        c.on_subscribe = lambda *a: done.set()
        c.subscribe(f"kp1/{AVN}/dcx/{token}/json/+/+", 1)
        assert done.wait(10), "no SUBACK"
        self.client = c
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_message(self, client, userdata, msg):
        *_, rid, outcome = msg.topic.split("/")
        if outcome == "status":
            self.answered.add(int(rid))
        else:
            self.errors.append((msg.topic, msg.payload))
        self.room.release()

    def _run(self):
        while not self.stop.is_set() and not self.gone.is_set():
            if not self.room.acquire(timeout=0.2):
                continue
            rid = self.next
            self.next += 1
            samples = [{"value": sample_value(self.token, rid, k), "k": k} for k in range(SAMPLES_PER_REQUEST)]
            info = self.client.publish(f"kp1/{AVN}/dcx/{self.token}/json/{rid}", json.dumps(samples), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # the connection is gone: what was not answered is not counted

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.client.loop_stop()
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - the socket may be dead already after a kill
            pass


def sample_value(token: str, rid: int, k: int) -> float:
    """Unique per endpoint: the request ID and the sample's place in it."""
    return rid * 10 + k + 0.5


def test_answered_samples_survive_kill9_under_load_and_none_is_stored_twice(tmp_path):
    rng = random.Random(20261206)
    answered = {t: set() for t in TOKENS}
    first = 1
    core = Core(tmp_path, extra_tokens=TOKENS)
    try:
        for cycle in range(3):
            senders = [Sender(core.port, t, first) for t in TOKENS]
            # Kill once this cycle's clients have had a few thousand answers, at a moment
            # drawn at random, with every client's window full.
            wait_for("answers", lambda: sum(len(s.answered) for s in senders) >= 1500, timeout=120)
            time.sleep(rng.uniform(0.0, 0.5))
            core.proc.stop(sig=signal.SIGKILL)
            for s in senders:
                s.close()
                assert not s.errors, s.errors[:3]
                answered[s.token] |= s.answered
            first = max(s.next for s in senders) + 1
            core = Core(tmp_path, extra_tokens=TOKENS)
            if cycle == 0:
                # The first cycle alone passes the settle size (4 096 points): blocks exist.
                assert sum(len(a) for a in answered.values()) * SAMPLES_PER_REQUEST * 2 > 4096
        wait_for("a settle", lambda: core.query("SELECT count(*) FROM point_blocks")[0][0] > 0, timeout=30)
        stored_total = 0
        for token in TOKENS:
            ep = f"ep-{token}"
            raw = [json.loads(r[0]) for r in core.query(
                "SELECT sample FROM data_samples WHERE endpoint_id = ? ORDER BY id", ep)]
            stored = [s["value"] for s in raw]
            assert len(stored) == len(set(stored)), f"{token}: a sample stored twice"
            want = {sample_value(token, rid, k) for rid in answered[token] for k in range(SAMPLES_PER_REQUEST)}
            missing = want - set(stored)
            assert not missing, f"{token}: {len(missing)} answered samples lost, e.g. {sorted(missing)[:5]}"
            stored_total += len(stored)
            # The time series holds exactly what `data_samples` holds, whichever table
            # each point ended up in.
            points = [v for (v,) in core.query(
                "SELECT value FROM time_series WHERE endpoint_id = ? AND name = 'auto~value'", ep)]
            assert sorted(points) == sorted(stored), f"{token}: time series and samples differ"
        n_answered = sum(len(a) for a in answered.values()) * SAMPLES_PER_REQUEST
        print(f"3 kills: {n_answered} answered samples, all stored; {stored_total - n_answered} stored "
              f"but never answered (in flight at a kill); 0 lost, 0 stored twice")
        code, data = core.api("GET", f"/api/v1/applications/demo/time-series/data?endpointId=ep-{TOKENS[0]}"
                              "&timeSeriesName=auto~value&sort=ASC")
        assert code == 200
        got = {p["values"]["value"] for p in data[0][f"ep-{TOKENS[0]}"]["auto~value"]}
        assert {sample_value(TOKENS[0], rid, k) for rid in answered[TOKENS[0]]
                for k in range(SAMPLES_PER_REQUEST)} <= got
    finally:
        code = core.proc.stop()
        assert code == 0, f"core exited with {code}:\n{core.proc.output()}"
