"""KPC against the Mosquitto command-line clients, the way Kaa's tutorials drive a server:
mosquitto_sub watching response topics in one process, mosquitto_pub sending in another."""

import json
import subprocess

from conftest import Proc, wait_for

AVN = "demo-v1"


def sub(core, tmp_path, topic: str, count: int = 1) -> Proc:
    return Proc(
        "mosquitto_sub",
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(core.port), "-u", core.USER, "-P", core.PASSWORD,
         "-i", "watcher", "-t", topic, "-q", "1", "-v", "-C", str(count), "-W", "20"],
        tmp_path / "sub.log",
    )


def pub(core, topic: str, message: str, password=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(core.port), "-u", core.USER, "-P", password or core.PASSWORD,
         "-i", "sender", "-q", "1", "-t", topic, "-m", message],
        capture_output=True, text=True, timeout=20,
    )


def subscribed(core, proc: Proc):
    # The watcher has subscribed once the core logged its SUBSCRIBE: wait for its session.
    return wait_for("mosquitto_sub to connect", lambda: "client \"watcher\" connected" in core.proc.output())


def test_status_seen_by_mosquitto_sub_for_a_mosquitto_pub_request(core, tmp_path):
    watcher = sub(core, tmp_path, f"kp1/{AVN}/dcx/tok1/json/+/status")
    subscribed(core, watcher)
    # Give the SUBSCRIBE a moment to be processed after CONNACK; retry the publish if needed.
    def attempt():
        assert pub(core, f"kp1/{AVN}/dcx/tok1/json/42", json.dumps([{"level": 3}])).returncode == 0
        return "kp1/" in watcher.output()
    wait_for("a status copy", attempt, timeout=15, every=0.5)
    assert watcher.popen.wait(20) == 0
    line = watcher.output().strip().splitlines()[0]
    # -v prints "topic payload"; mosquitto_sub shows an empty payload as "(null)"
    assert line == f"kp1/{AVN}/dcx/tok1/json/42/status (null)"
    assert core.query("SELECT value FROM time_series WHERE name='auto~level'")[0] == (3.0,)


def test_error_seen_by_mosquitto_sub_for_bad_json(core, tmp_path):
    watcher = sub(core, tmp_path, f"kp1/{AVN}/dcx/tok1/json/+/error")
    subscribed(core, watcher)
    def attempt():
        assert pub(core, f"kp1/{AVN}/dcx/tok1/json/5", "{oops").returncode == 0
        return "kp1/" in watcher.output()
    wait_for("an error copy", attempt, timeout=15, every=0.5)
    assert watcher.popen.wait(20) == 0
    topic, payload = watcher.output().strip().split(" ", 1)
    assert topic == f"kp1/{AVN}/dcx/tok1/json/5/error"
    assert json.loads(payload)["statusCode"] == 400


def test_mosquitto_pub_with_a_wrong_password_is_refused(core):
    r = pub(core, f"kp1/{AVN}/dcx/tok1/json", "[]", password="nope")
    assert r.returncode != 0
    assert "not authorised" in r.stderr.lower() or "bad user name or password" in r.stderr.lower(), r.stderr
