"""A reload or a stop while a batch waits for its answer: the session waits a little for
the answer, so that the platform does not get the batch twice, and what stays unanswered
is sent again by the next session, never stuck and never lost."""

import json
import signal
from collections import Counter
from contextlib import contextmanager

import configs
from conftest import Gateway, Mosquitto, wait_for
from kaa_server import KaaServer

AVN = "site-v1"


def site(tmp_path, port, names) -> str:
    wave = {"name": "v", "waveform": "sawtooth", "period_secs": 7, "amplitude": 10.0}
    devs = [configs.simulated_device(n, AVN, 200, [wave]) for n in names]
    up = configs.upstream(port, client_id="gs-gateway", keepalive_secs=5, response_timeout_secs=30,
                          reconnect_max_secs=1)
    return configs.config(tmp_path / "state", upstream=up, devices=devs, log_level="info")


def keys_of(held):
    return [(topic.split("/")[3], s["timestamp"]) for topic, payload in held for s in json.loads(payload)]


@contextmanager
def a_reload_while_a_batch_waits(tmp_path):
    """A bridge whose first batch the platform holds unanswered, reloaded with a second
    device; yields (kaa, gw) once the old session waits for that answer. Stops all on exit."""
    broker = Mosquitto(tmp_path)
    kaa = KaaServer(broker.port, mode="hold")
    gw = Gateway(tmp_path, site(tmp_path, broker.port, ["pump"]))
    try:
        wait_for("a batch in flight", lambda: len(kaa.held) >= 1, timeout=30)
        gw.config.write_text(site(tmp_path, broker.port, ["pump", "fan"]))
        gw.proc.popen.send_signal(signal.SIGHUP)
        wait_for("the session waiting for its answer", lambda: "waiting up to" in gw.proc.output(), timeout=30)
        yield kaa, gw
    finally:
        assert gw.stop() == 0, gw.proc.output()
        kaa.close()
        broker.stop()


def test_a_reload_waits_for_the_answer_in_flight_and_nothing_arrives_twice(tmp_path):
    with a_reload_while_a_batch_waits(tmp_path) as (kaa, gw):
        assert kaa.answer_held() >= 1
        wait_for("the new device's samples", lambda: any(t == "fan" for t, _ in kaa.keys()), timeout=30)
        before = len([k for k in kaa.keys() if k[0] == "pump"])
        wait_for("pump still sending", lambda: len([k for k in kaa.keys() if k[0] == "pump"]) > before, timeout=30)
    assert "every batch sent was answered" in gw.proc.output()
    twice = [k for k, n in Counter(kaa.keys()).items() if n > 1]
    assert twice == [], f"{len(twice)} samples arrived twice"


def test_a_batch_unanswered_at_a_reload_is_sent_again_by_the_next_session(tmp_path):
    with a_reload_while_a_batch_waits(tmp_path) as (kaa, gw):
        lost_answers = keys_of(kaa.stop_holding())  # never answered; later batches are answered
        assert lost_answers
        wait_for("the wait to end unanswered", lambda: "stay in the buffer" in gw.proc.output(), timeout=30)
        wait_for("the unanswered samples sent again", lambda: set(lost_answers) <= set(kaa.keys()), timeout=30)
        wait_for("the new device's samples", lambda: any(t == "fan" for t, _ in kaa.keys()), timeout=30)
