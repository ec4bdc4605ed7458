"""KaaIoT's own clients, reproduced with paho-mqtt as they behave on the wire (their shapes
are listed in docs/protocol.md §10): none of them asks for what waited while it was
offline, the Python and Node-RED ones never subscribe, requests often carry no request
ID. The core must hand them their configuration and commands anyway, honour an explicit
`observe: false`, serve app-version default configurations, and take BCX binary uploads.
"""

import json
import random
import re
import subprocess

import pytest

from conftest import Core, wait_for
from kp_client import KpClient

AVN = "demo-v1"


@pytest.fixture
def core(tmp_path):
    # KaaIoT's example clients connect without credentials: an anonymous listener, and a
    # small BCX quota to reach it.
    c = Core(tmp_path, allow_anonymous=True,
             core_keys={"bcx": {"max_file_bytes": 4096, "quota_bytes": 6000}})
    yield c
    c.stop()


def python_client(core) -> KpClient:
    """kaaproject/mqtt-client-python: a random client ID, no credentials, no SUBSCRIBE;
    on connect it asks for a BCX upload token (`bcx/<token>/token`, empty payload, no
    request ID) and listens on the push topics by callback only."""
    c = KpClient(core.port, client_id=f"py-{random.randrange(1 << 30)}")
    c.publish(f"kp1/{AVN}/bcx/tok1/token", b"", qos=0)
    return c


def test_python_client_gets_a_configuration_set_while_it_was_offline(core):
    code, put = core.api("PUT", "/api/v1/endpoints/ep-tok1/config", {"interval": 30})
    assert code == 200
    c = python_client(core)
    try:
        topic, payload = c.wait_message(f"kp1/{AVN}/cmx/tok1/config/json/status")
        assert json.loads(payload) == {"configId": put["configId"], "config": {"interval": 30}}
        # It answers on applied/json without a request ID, as the Python client does.
        c.publish(f"kp1/{AVN}/cmx/tok1/applied/json", {"configId": put["configId"], "statusCode": 200})
        wait_for("the applied report", lambda: (core.api("GET", "/api/v1/endpoints/ep-tok1/config")[1]
                                                .get("applied") or {}).get("configId") == put["configId"])
    finally:
        c.close()
    # Applied: the next connection gets no push of it again.
    c = python_client(core)
    try:
        c.wait_message(f"kp1/{AVN}/bcx/tok1/token/status")
        assert c.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"x": 1}]) == ("status", b"")
        assert not [t for t, _ in c.seen if "/cmx/" in t], c.seen
    finally:
        c.close()


def test_python_client_gets_commands_invoked_while_it_was_offline_and_they_end_executed(core):
    code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/reboot?commandTtl=60000", {"delay": 1})
    assert code == 202 and cmd["status"] == "PENDING"
    c = python_client(core)
    try:
        topic, payload = c.wait_message(f"kp1/{AVN}/cex/tok1/command/reboot/status")
        assert json.loads(payload) == [{"id": cmd["id"], "payload": {"delay": 1}}]
        assert core.api("GET", f"/api/v1/endpoints/ep-tok1/commands/reboot/{cmd['id']}")[1]["status"] == "DELIVERED"
        # The Python client's result: an array, None fields left out, no request ID.
        c.publish(f"kp1/{AVN}/cex/tok1/result/reboot", [{"id": cmd["id"], "statusCode": 200, "payload": "ok"}])
        done = wait_for("EXECUTED", lambda: (r := core.api(
            "GET", f"/api/v1/endpoints/ep-tok1/commands/reboot/{cmd['id']}")[1])["status"] == "EXECUTED" and r)
        assert done["result"]["statusCode"] == 200 and done["result"]["payload"] == "ok"
    finally:
        c.close()


def test_a_command_request_without_request_id_delivers_on_the_push_topic(core):
    """Node-RED's contrib node style: `command/<type>` with `{"observe": true}` and no
    request ID. The pending commands go to the push topic — never marked DELIVERED unsent."""
    first = KpClient(core.port, client_id="nodered-warmup")
    try:
        # Use the token once, so the command below is not handed over by the first-use push.
        assert first.request(f"kp1/{AVN}/dcx/tok2/json/1", [{"x": 1}]) == ("status", b"")
    finally:
        first.close()
    c = KpClient(core.port, client_id="nodered")
    try:
        assert c.request(f"kp1/{AVN}/dcx/tok2/json/7", [{"x": 2}]) == ("status", b"")
        code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok2/commands/open?commandTtl=60000", {"valve": 3})
        # Pushed at once to this live session, which used the token.
        c.wait_message(f"kp1/{AVN}/cex/tok2/command/open/status")
        # A later request without request ID gets the (still unanswered) command again.
        c.publish(f"kp1/{AVN}/cex/tok2/command/open", {"observe": True})
        topic, payload = c.wait_message(f"kp1/{AVN}/cex/tok2/command/open/status")
        assert json.loads(payload) == [{"id": cmd["id"], "payload": {"valve": 3}}]
    finally:
        c.close()
    # With nothing pending, a request without request ID is not answered at all.
    c = KpClient(core.port, client_id="nodered-2")
    try:
        assert c.request(f"kp1/{AVN}/cex/tok3/result/open/1", []) == ("status", b"")
        c.publish(f"kp1/{AVN}/cex/tok3/command/open", {"observe": True})
        assert c.request(f"kp1/{AVN}/dcx/tok3/json/2", [{"x": 1}]) == ("status", b"")
        assert not [t for t, _ in c.seen if "/command/" in t], c.seen
    finally:
        c.close()


def test_observe_false_stops_pushes_until_observe_true(core):
    c = KpClient(core.port, client_id="quiet")
    try:
        assert c.request(f"kp1/{AVN}/cex/tok3/command/beep/1", {"observe": False}) == ("status", b"[]")
        code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok3/commands/beep?commandTtl=60000", None)
        assert code == 202
        # Not pushed: the command is still PENDING (a push would have made it DELIVERED).
        assert core.api("GET", f"/api/v1/endpoints/ep-tok3/commands/beep/{cmd['id']}")[1]["status"] == "PENDING"
        # Configurations are another extension: still pushed.
        code, put = core.api("PUT", "/api/v1/endpoints/ep-tok3/config", {"led": "on"})
        c.wait_message(f"kp1/{AVN}/cmx/tok3/config/json/status")
        # observe: true again: the answer carries the command, and pushes resume.
        outcome, body = c.request(f"kp1/{AVN}/cex/tok3/command/beep/2", {"observe": True})
        assert (outcome, json.loads(body)) == ("status", [{"id": cmd["id"], "payload": None}])
        code, cmd2 = core.api("POST", "/api/v1/endpoints/ep-tok3/commands/beep?commandTtl=60000", {"n": 2})
        topic, payload = c.wait_message(f"kp1/{AVN}/cex/tok3/command/beep/status")
        assert {"id": cmd2["id"], "payload": {"n": 2}} in json.loads(payload)
    finally:
        c.close()


def test_arduino_sdk_requests_its_configuration_with_a_request_id(core):
    """kaaproject/kaa-arduino-sdk: subscribes to `config/json` and `config/json/+/status`,
    `requestConfig()` sends `{"observe": true}` with a random request ID; data goes to
    `dcx/<token>/json/<random>`; results are `[{"id", "statusCode": 200, "payload": "done"}]`."""
    code, put = core.api("PUT", "/api/v1/endpoints/ep-tok2/config", {"blink": 2})
    code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok2/commands/led?commandTtl=60000", {"on": True})
    c = KpClient(core.port, client_id="esp32")
    try:
        c.subscribe(f"kp1/{AVN}/cmx/tok2/config/json")
        c.subscribe(f"kp1/{AVN}/cmx/tok2/config/json/+/status")
        rid = random.randrange(1, 100000)
        outcome, body = c.request(f"kp1/{AVN}/cmx/tok2/config/json/{rid}", {"observe": True})
        assert (outcome, json.loads(body)) == ("status", {"configId": put["configId"], "config": {"blink": 2}})
        # Its first use also brought the pending command (and not the configuration twice).
        topic, payload = c.wait_message(f"kp1/{AVN}/cex/tok2/command/led/status")
        c.publish(f"kp1/{AVN}/cex/tok2/result/led", [{"id": cmd["id"], "statusCode": 200, "payload": "done"}], qos=0)
        wait_for("EXECUTED", lambda: core.api(
            "GET", f"/api/v1/endpoints/ep-tok2/commands/led/{cmd['id']}")[1]["status"] == "EXECUTED")
        assert c.request(f"kp1/{AVN}/dcx/tok2/json/{random.randrange(1, 100000)}", {"temp": 21}) == ("status", b"")
        assert len([t for t, _ in c.seen if t.endswith("/cmx/tok2/config/json/status")]) == 0
    finally:
        c.close()


def test_app_version_default_configuration_and_endpoint_override(core):
    c2 = KpClient(core.port, client_id="follower")
    try:
        assert c2.request(f"kp1/{AVN}/dcx/tok2/json/1", [{"x": 1}]) == ("status", b"")
        code, d = core.api("PUT", f"/api/v1/app-versions/{AVN}/config", {"mode": "eco"})
        assert code == 200 and d["changed"] is True
        # A live follower gets the default pushed.
        topic, payload = c2.wait_message(f"kp1/{AVN}/cmx/tok2/config/json/status")
        assert json.loads(payload) == {"configId": d["configId"], "config": {"mode": "eco"}}
        # tok1 gets its own configuration, which overrides the default for it alone.
        code, own = core.api("PUT", "/api/v1/endpoints/ep-tok1/config", {"mode": "boost"})
        got1 = core.api("GET", "/api/v1/endpoints/ep-tok1/config")[1]
        got2 = core.api("GET", "/api/v1/endpoints/ep-tok2/config")[1]
        assert (got1["config"], got1["source"]) == ({"mode": "boost"}, "endpoint")
        assert (got2["config"], got2["source"]) == ({"mode": "eco"}, "appVersion")
        # Over 1/KP the same rule.
        outcome, body = c2.request(f"kp1/{AVN}/cmx/tok2/config/json/5", {})
        assert json.loads(body)["config"] == {"mode": "eco"}
        c1 = KpClient(core.port, client_id="override")
        try:
            outcome, body = c1.request(f"kp1/{AVN}/cmx/tok1/config/json/6", {})
            assert json.loads(body) == {"configId": own["configId"], "config": {"mode": "boost"}}
        finally:
            c1.close()
        # A new default reaches the follower; the overriding endpoint keeps its own.
        code, d2 = core.api("PUT", f"/api/v1/app-versions/{AVN}/config", {"mode": "quiet"})
        topic, payload = c2.wait_message(f"kp1/{AVN}/cmx/tok2/config/json/status")
        assert json.loads(payload) == {"configId": d2["configId"], "config": {"mode": "quiet"}}
        assert core.api("GET", "/api/v1/endpoints/ep-tok1/config")[1]["config"] == {"mode": "boost"}
        assert core.api("GET", f"/api/v1/app-versions/{AVN}/config")[1]["config"] == {"mode": "quiet"}
        assert core.api("GET", "/api/v1/app-versions/nope-v9/config")[0] == 404
    finally:
        c2.close()


def test_bcx_token_upload_list_download_and_quota(core, tmp_path):
    c = python_client(core)
    try:
        topic, payload = c.wait_message(f"kp1/{AVN}/bcx/tok1/token/status")
        token = json.loads(payload)["token"]
    finally:
        c.close()
    data = bytes(range(256)) * 12  # 3072 bytes, every byte value
    blob = tmp_path / "blob.bin"
    blob.write_bytes(data)

    def upload(name: str, path, auth: str = token) -> tuple:
        out = subprocess.run(
            ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
             "-H", f"X-Auth-Token: {auth}", "-H", "Content-Type: application/octet-stream",
             "--data-binary", f"@{path}",
             f"http://127.0.0.1:{core.http_port}/bcx/api/v1/binary-data?name={name}"],
            capture_output=True, text=True, timeout=30)
        body, code = out.stdout.rsplit("\n", 1)
        return int(code), body

    code, body = upload("logs/run.bin", blob)
    assert code == 200, body
    assert json.loads(body) == {"name": "logs_run.bin", "size": len(data)}
    code, files = core.api("GET", "/api/v1/endpoints/ep-tok1/binary-data")
    assert code == 200 and [f["name"] for f in files] == ["logs_run.bin"] and files[0]["size"] == len(data)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", files[0]["uploadedAt"])
    got = subprocess.run(["curl", "-s", "-u", "admin:admin-password",
                          f"http://127.0.0.1:{core.http_port}/api/v1/endpoints/ep-tok1/binary-data/logs_run.bin"],
                         capture_output=True, timeout=30).stdout
    assert got == data, "byte-identical download"
    # Quota 6000: a second 3072-byte file does not fit; the file over 4096 never does.
    assert upload("second.bin", blob)[0] == 413
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 5000)
    assert upload("big.bin", big)[0] == 413
    # Replacing the same name fits (its old size does not count); a wrong token is 401.
    assert upload("logs_run.bin", blob)[0] == 200
    assert upload("x.bin", blob, auth="guess")[0] == 401


def test_core_only_mode_touches_no_gateway_buffer_and_times_have_three_digits(core):
    assert not (core.state / "buffer.sqlite").exists()
    assert "samples waiting" not in core.proc.output()
    code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/ping?commandTtl=60000", None)
    for key in ("createdAt", "expiresAt"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", cmd[key]), cmd
