"""The 1/KP HTTP binding (POST /kp1/...) with curl, and token-only MQTT clients."""

import json
import subprocess

from kp_client import KpClient

AVN = "demo-v1"


def curl(core, path: str, body: bytes = b"", method: str = "POST"):
    out = subprocess.run(
        ["curl", "-s", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--data-binary", "@-",
         "-H", "Content-Type: application/json", f"http://127.0.0.1:{core.http_port}{path}"],
        input=body, capture_output=True, timeout=20,
    )
    assert out.returncode == 0, out.stderr
    text, _, code = out.stdout.rpartition(b"\n")
    return int(code), text


def test_dcx_over_http_stores_samples(core):
    code, body = curl(core, f"/kp1/{AVN}/dcx/tok1/json", json.dumps([{"temp": 20.5}]).encode())
    assert (code, body) == (200, b"")
    assert core.query("SELECT value FROM time_series WHERE endpoint_id='ep-tok1' AND name='auto~temp'") == [(20.5,)]


def test_epmx_over_http_returns_the_success_payload(core):
    assert curl(core, f"/kp1/{AVN}/epmx/tok2/update/keys", b'{"site": "roof"}') == (200, b"")
    code, body = curl(core, f"/kp1/{AVN}/epmx/tok2/get")
    assert code == 200 and json.loads(body) == {"site": "roof"}


def test_http_errors_carry_the_status_and_the_kp1_error_json(core):
    cases = [
        (f"/kp1/{AVN}/dcx/tok1/json", b"{nope", 400),
        (f"/kp1/{AVN}/dcx/unknown/json", b"[]", 401),
        ("/kp1/other-v9/dcx/tok1/json", b"[]", 404),
        (f"/kp1/{AVN}/nosuch/tok1/json", b"[]", 404),
        (f"/kp1/{AVN}/dcx/tok1/json", b"[" + b"1," * 100_000 + b"1]", 413),
    ]
    for path, body, status in cases:
        code, text = curl(core, path, body)
        assert code == status, (path, code, text)
        err = json.loads(text)
        assert err["statusCode"] == status and err["reasonPhrase"], err


def test_only_post_is_served(core):
    code, _ = curl(core, f"/kp1/{AVN}/dcx/tok1/json", method="GET")
    assert code == 405


def test_token_only_clients_are_served_when_the_listener_allows_anonymous(anonymous_core):
    c = KpClient(anonymous_core.port, client_id="token-only")
    try:
        assert not c.connack.is_failure
        assert c.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"x": 1}]) == ("status", b"")
        outcome, body = c.request(f"kp1/{AVN}/dcx/not-a-token/json/2", [{"x": 1}])
        assert outcome == "error" and json.loads(body)["statusCode"] == 401
    finally:
        c.close()
    # A wrong password is still refused on an anonymous listener.
    w = KpClient(anonymous_core.port, anonymous_core.USER, "wrong", client_id="wrong")
    try:
        assert w.connack.is_failure
    finally:
        w.close()
