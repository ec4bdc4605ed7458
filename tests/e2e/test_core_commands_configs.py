"""CEX (11/CEP) and CMX (7/CMP) in the embedded core, driven by the REST API, answered by
real clients: paho-mqtt (which never subscribes: pushes must reach it anyway), a
mosquitto_sub watcher, and curl on the HTTP binding."""

import json
import subprocess
import threading

from conftest import wait_for
from kp_client import KpClient

AVN = "demo-v1"


def client_for(core, token="tok1", **kw):
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id=f"cmd-{token}", **kw)
    # Using the token makes this session a target of the endpoint's pushes.
    assert c.request(f"kp1/{AVN}/dcx/{token}/json/1", [{"t": 1}]) == ("status", b"")
    return c


def test_a_command_reaches_a_client_that_never_subscribed_and_its_result_returns_200(core):
    c = client_for(core)
    try:
        answer = {}

        def post():
            answer["r"] = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/reboot?awaitTimeout=10000",
                                   {"delay": 5})

        t = threading.Thread(target=post)
        t.start()
        topic, payload = c.wait_message(f"kp1/{AVN}/cex/tok1/command/reboot/status")
        cmds = json.loads(payload)
        assert len(cmds) == 1 and cmds[0]["payload"] == {"delay": 5} and isinstance(cmds[0]["id"], int)
        result = [{"id": cmds[0]["id"], "statusCode": 200, "reasonPhrase": "rebooting", "payload": {"uptime": 0}}]
        assert c.request(f"kp1/{AVN}/cex/tok1/result/reboot/2", result) == ("status", b"")
        t.join(15)
        code, cmd = answer["r"]
        assert code == 200, cmd
        assert cmd["status"] == "EXECUTED" and cmd["result"]["statusCode"] == 200
        assert cmd["result"]["payload"] == {"uptime": 0} and cmd["result"]["reasonPhrase"] == "rebooting"
        code, again = core.api("GET", f"/api/v1/endpoints/ep-tok1/commands/reboot/{cmd['id']}")
        assert code == 200 and again["status"] == "EXECUTED"
        # A resent result (its /status was lost, say) is accepted and changes nothing.
        assert c.request(f"kp1/{AVN}/cex/tok1/result/reboot/3", result[0]) == ("status", b"")
    finally:
        c.close()


def test_no_result_in_time_is_202_and_the_command_waits_for_its_endpoint(core):
    code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok2/commands/set-led?awaitTimeout=300", {"on": True})
    assert code == 202 and cmd["status"] == "PENDING" and cmd["result"] is None
    # The endpoint comes online later and fetches its pending commands.
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="late")
    try:
        outcome, body = c.request(f"kp1/{AVN}/cex/tok2/command/set-led/1", {"observe": True})
        assert outcome == "status"
        assert json.loads(body) == [{"id": cmd["id"], "payload": {"on": True}}]
        code, got = core.api("GET", f"/api/v1/endpoints/ep-tok2/commands/set-led/{cmd['id']}")
        assert code == 200 and got["status"] == "DELIVERED" and got["deliveredAt"]
        res = {"id": cmd["id"], "statusCode": 500, "reasonPhrase": "LED broken"}
        assert c.request(f"kp1/{AVN}/cex/tok2/result/set-led/2", [res]) == ("status", b"")
        code, got = core.api("GET", f"/api/v1/endpoints/ep-tok2/commands/set-led/{cmd['id']}")
        assert got["status"] == "EXECUTED" and got["result"]["statusCode"] == 500
        # Nothing pending any more.
        assert c.request(f"kp1/{AVN}/cex/tok2/command/set-led/3", b"") == ("status", b"[]")
    finally:
        c.close()


def test_a_command_past_its_ttl_expires(core):
    code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok3/commands/ping?commandTtl=200", None)
    assert code == 202
    wait_for("the command to expire",
             lambda: core.api("GET", f"/api/v1/endpoints/ep-tok3/commands/ping/{cmd['id']}")[1]["status"] == "EXPIRED")
    code, body = subprocess_post(core, f"kp1/{AVN}/cex/tok3/command/ping", b"")
    assert (code, body) == (200, "[]")


def subprocess_post(core, path, body: bytes):
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", "--data-binary", "@-",
                          f"http://127.0.0.1:{core.http_port}/{path}"], input=body, capture_output=True, timeout=20)
    text, _, code = out.stdout.decode().rpartition("\n")
    return int(code), text


def test_command_api_errors(core):
    code, err = core.api("POST", "/api/v1/endpoints/nope/commands/reboot", {})
    assert code == 404 and "no endpoint" in err["error"]
    code, err = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/reboot?commandTtl=0", {})
    assert code == 400 and "commandTtl" in err["error"]
    code, err = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/reboot", raw=b"{not json")
    assert code == 400 and "not JSON" in err["error"]
    code, err = core.api("GET", "/api/v1/endpoints/ep-tok1/commands/reboot/999")
    assert code == 404
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="bad-results")
    try:
        outcome, body = c.request(f"kp1/{AVN}/cex/tok1/result/reboot/1", [{"statusCode": 200}])
        assert outcome == "error" and json.loads(body)["statusCode"] == 400
        outcome, body = c.request(f"kp1/{AVN}/cex/tok1/command/reboot/2", {"observe": "yes"})
        assert outcome == "error" and json.loads(body)["statusCode"] == 400
        outcome, body = c.request(f"kp1/{AVN}/cex/tok1/frobnicate/reboot/3", b"")
        assert outcome == "error" and json.loads(body)["statusCode"] == 404
    finally:
        c.close()


def test_a_subscriber_watching_the_command_topic_sees_the_push_too(core):
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(core.port), "-u", core.USER, "-P",
                            core.PASSWORD, "-t", f"kp1/{AVN}/cex/tok1/command/#", "-C", "1", "-v", "-W", "20"],
                           stdout=subprocess.PIPE, text=True)
    try:
        wait_for("the watcher's subscription", lambda: core.api("GET", "/api/v1/kpc/stats")[1]["liveSessions"] >= 1)
        code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/blink", [1, 2])
        assert code == 202
        out, _ = sub.communicate(timeout=25)
        topic, _, payload = out.strip().partition(" ")
        assert topic == f"kp1/{AVN}/cex/tok1/command/blink/status"
        assert json.loads(payload) == [{"id": cmd["id"], "payload": [1, 2]}]
    finally:
        if sub.poll() is None:
            sub.kill()


def test_configurations_are_pushed_applied_and_reported(core):
    c = client_for(core, "tok2")
    try:
        base = f"kp1/{AVN}/cmx/tok2"
        # No configuration yet.
        assert json.loads(c.request(f"{base}/config/json/1", {"observe": True})[1]) == {"configId": "", "config": None}
        code, put = core.api("PUT", "/api/v1/endpoints/ep-tok2/config", {"interval": 10})
        assert code == 200 and put["changed"] is True
        topic, payload = c.wait_message(f"{base}/config/json/status")
        assert topic == f"{base}/config/json/status"
        pushed = json.loads(payload)
        assert pushed == {"configId": put["configId"], "config": {"interval": 10}}
        # The same body again: same ID, nothing pushed.
        assert core.api("PUT", "/api/v1/endpoints/ep-tok2/config", {"interval": 10})[1] == {
            "configId": put["configId"], "changed": False}
        applied = {"configId": put["configId"], "statusCode": 200}
        assert c.request(f"{base}/applied/json/2", applied) == ("status", b"")
        code, got = core.api("GET", "/api/v1/endpoints/ep-tok2/config")
        assert got["config"] == {"interval": 10} and got["applied"]["configId"] == put["configId"]
        assert got["applied"]["statusCode"] == 200
        # Up to date → empty object; outdated → the configuration.
        assert c.request(f"{base}/config/json/3", {"configId": put["configId"]}) == ("status", b"{}")
        assert json.loads(c.request(f"{base}/config/json/4", {"configId": "old"})[1])["config"] == {"interval": 10}
        # A named configuration travels on its own topic.
        code, named = core.api("PUT", "/api/v1/endpoints/ep-tok2/config/ota", {"url": "http://x/fw.bin"})
        assert code == 200
        topic, payload = c.wait_message(f"{base}/config/json/ota/status")
        assert json.loads(payload)["config"] == {"url": "http://x/fw.bin"}
        refused = {"configId": named["configId"], "statusCode": 400, "reasonPhrase": "bad url"}
        assert c.request(f"{base}/applied/json/ota/5", refused) == ("status", b"")
        code, got = core.api("GET", "/api/v1/endpoints/ep-tok2/config/ota")
        assert got["applied"]["statusCode"] == 400 and got["applied"]["reasonPhrase"] == "bad url"
        # The default configuration is untouched by the named one.
        assert core.api("GET", "/api/v1/endpoints/ep-tok2/config")[1]["config"] == {"interval": 10}
        outcome, body = c.request(f"{base}/applied/json/6", {"statusCode": 200})
        assert outcome == "error" and json.loads(body)["statusCode"] == 400
        code, err = core.api("PUT", "/api/v1/endpoints/ep-tok2/config/bad.name", {})
        assert code == 400
    finally:
        c.close()


def test_config_and_commands_over_the_http_binding(core):
    code, put = core.api("PUT", "/api/v1/endpoints/ep-tok3/config", {"mode": "eco"})
    code, body = subprocess_post(core, f"kp1/{AVN}/cmx/tok3/config/json", b"{}")
    assert code == 200 and json.loads(body) == {"configId": put["configId"], "config": {"mode": "eco"}}
    code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok3/commands/reboot", None)
    code, body = subprocess_post(core, f"kp1/{AVN}/cex/tok3/command/reboot", b"")
    assert code == 200 and json.loads(body) == [{"id": cmd["id"], "payload": None}]
    code, body = subprocess_post(core, f"kp1/{AVN}/cex/tok3/result/reboot",
                                 json.dumps({"id": cmd["id"], "statusCode": 200}).encode())
    assert code == 200
    assert core.api("GET", f"/api/v1/endpoints/ep-tok3/commands/reboot/{cmd['id']}")[1]["status"] == "EXECUTED"


def test_configured_extension_instances_keep_their_data_apart(tmp_path):
    from conftest import Core
    extensions = [{"instance": "cmx_ota", "kind": "cmx"}, {"instance": "dcx_fast", "kind": "dcx"}]
    core = Core(tmp_path, core_keys={"extensions": extensions})
    c = client_for(core, "tok1")
    try:
        assert c.request(f"kp1/{AVN}/dcx_fast/tok1/json/5", [{"fast": 1}]) == ("status", b"")
        assert {"fast": 1} in [json.loads(s) for (s,) in core.query(
            "SELECT sample FROM data_samples WHERE endpoint_id = 'ep-tok1'")]
        code, put = core.api("PUT", "/api/v1/endpoints/ep-tok1/config?instance=cmx_ota", {"fw": "2.0"})
        assert code == 200
        topic, payload = c.wait_message(f"kp1/{AVN}/cmx_ota/tok1/config/json/status")
        assert json.loads(payload) == {"configId": put["configId"], "config": {"fw": "2.0"}}
        # The default instance has no configuration; the other one has it.
        assert json.loads(c.request(f"kp1/{AVN}/cmx/tok1/config/json/6", b"")[1]) == {"configId": "", "config": None}
        assert json.loads(c.request(f"kp1/{AVN}/cmx_ota/tok1/config/json/7", b"")[1])["config"] == {"fw": "2.0"}
        assert core.api("GET", "/api/v1/endpoints/ep-tok1/config")[1]["config"] is None
        assert core.api("GET", "/api/v1/endpoints/ep-tok1/config?instance=cmx_ota")[1]["config"] == {"fw": "2.0"}
        code, err = core.api("GET", "/api/v1/endpoints/ep-tok1/config?instance=dcx_fast")
        assert code == 404 and "no cmx instance" in err["error"]
        assert core.api("POST", "/api/v1/endpoints/ep-tok1/commands/x?instance=nope", {})[0] == 404
        outcome, body = c.request(f"kp1/{AVN}/cex_other/tok1/command/x/8", b"")
        assert outcome == "error" and json.loads(body)["statusCode"] == 404
    finally:
        c.close()
        core.stop()


def test_an_anonymous_client_sees_pushes_of_its_own_tokens_only(anonymous_core):
    core = anonymous_core
    snoop = KpClient(core.port, client_id="anon-snoop")
    try:
        snoop.subscribe("kp1/#")
        assert snoop.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"t": 1}]) == ("status", b"")
        code, other = core.api("POST", "/api/v1/endpoints/ep-tok2/commands/secret", {"pin": 1234})
        code, own = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/blink", None)
        topic, payload = snoop.wait_message(f"kp1/{AVN}/cex/tok1/command/blink/status")
        assert json.loads(payload) == [{"id": own["id"], "payload": None}]
        # The tok2 command was sent before the tok1 one: had it leaked, it would have come
        # first. A round trip on the same connection makes sure nothing is still on its way.
        assert snoop.request(f"kp1/{AVN}/dcx/tok1/json/2", [{"t": 2}]) == ("status", b"")
        assert not [t for t, _ in snoop.seen if "/tok2/" in t], "another endpoint's command leaked"
    finally:
        snoop.close()
