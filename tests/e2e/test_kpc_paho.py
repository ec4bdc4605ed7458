"""KPC against a real third-party MQTT client (paho-mqtt), as Kaa's example clients use it."""

import json
import socket

import pytest
from kp_client import KpClient

AVN = "demo-v1"


@pytest.fixture
def client(core):
    c = KpClient(core.port, core.USER, core.PASSWORD)
    yield c
    c.close()


def test_dcx_with_request_id_gets_an_empty_status_and_is_stored(core, client):
    outcome, body = client.request(f"kp1/{AVN}/dcx/tok1/json/7", [{"timestamp": 1700000000000, "temp": 21.5, "on": True}])
    assert (outcome, body) == ("status", b"")
    rows = core.query("SELECT name, ts_ms, value FROM time_series WHERE endpoint_id = 'ep-tok1' AND name LIKE 'auto~%' ORDER BY name")
    assert rows == [("auto~on", 1700000000000, 1.0), ("auto~temp", 1700000000000, 21.5)]
    raw = core.query("SELECT sample FROM data_samples WHERE endpoint_id = 'ep-tok1'")
    assert [json.loads(r[0]) for r in raw] == [{"timestamp": 1700000000000, "temp": 21.5, "on": True}]


def test_dcx_without_request_id_is_stored_and_gets_no_status(core, client):
    client.publish(f"kp1/{AVN}/dcx/tok2/json", {"humidity": 40})
    # Requests on one connection are processed in order: once this one is answered,
    # the first has been processed too, and any status for it would have arrived first.
    assert client.request(f"kp1/{AVN}/dcx/tok2/json/1", [{"humidity": 41}]) == ("status", b"")
    assert [t for t, _ in client.seen] == [f"kp1/{AVN}/dcx/tok2/json/1/status"]
    values = core.query("SELECT value FROM time_series WHERE endpoint_id='ep-tok2' AND name='auto~humidity' ORDER BY ts_ms, seq")
    assert values == [(40.0,), (41.0,)]


def test_a_single_sample_object_is_a_batch_of_one(core, client):
    assert client.request(f"kp1/{AVN}/dcx/tok1/json/3", {"x": 1}) == ("status", b"")
    assert core.query("SELECT value FROM time_series WHERE name='auto~x'") == [(1.0,)]


def test_plain_metric_is_stored(core, client):
    assert client.request(f"kp1/{AVN}/dcx/tok1/plain/battery/4", "47%") == ("status", b"")
    assert core.query("SELECT value FROM time_series WHERE name='auto~battery'") == [(47.0,)]


def error_of(outcome_body):
    outcome, body = outcome_body
    assert outcome == "error", outcome_body
    return json.loads(body)


def test_bad_json_gets_400_with_and_without_request_id(core, client):
    e = error_of(client.request(f"kp1/{AVN}/dcx/tok1/json/9", b"{not json"))
    assert e["statusCode"] == 400 and "not valid JSON" in e["reasonPhrase"]
    assert set(e) == {"statusCode", "reasonPhrase"}
    # Decision: an error is published even without a request ID, on <topic>/error.
    e = error_of(client.request(f"kp1/{AVN}/dcx/tok1/json", b"[1,"))
    assert e["statusCode"] == 400
    assert core.query("SELECT count(*) FROM data_samples") == [(0,)]


def test_unknown_token_gets_401(client):
    e = error_of(client.request(f"kp1/{AVN}/dcx/no-such-token/json/1", [{"x": 1}]))
    assert e["statusCode"] == 401


def test_unknown_app_version_and_extension_get_404(client):
    assert error_of(client.request("kp1/other-v9/dcx/tok1/json/1", []))["statusCode"] == 404
    assert error_of(client.request(f"kp1/{AVN}/nosuchext/tok1/json/1", []))["statusCode"] == 404


def test_out_of_range_request_id_gets_400(client):
    for rid in ("0", "2147483648"):
        e = error_of(client.request(f"kp1/{AVN}/dcx/tok1/json/{rid}", []))
        assert e["statusCode"] == 400 and "request id" in e["reasonPhrase"]


def test_qos0_and_qos2_requests_are_answered(client):
    assert client.request(f"kp1/{AVN}/dcx/tok1/json/11", [{"q": 0}], qos=0) == ("status", b"")
    assert client.request(f"kp1/{AVN}/dcx/tok1/json/12", [{"q": 2}], qos=2) == ("status", b"")


def test_epmx_update_get_round_trip(client):
    base = f"kp1/{AVN}/epmx/tok3"
    assert client.request(f"{base}/update/keys/1", {"model": "thermo", "floor": 2, "tags": ["a", "b"]}) == ("status", b"")
    assert client.request(f"{base}/update/keys/2", {"floor": 3}) == ("status", b"")
    outcome, body = client.request(f"{base}/get/3", b"")
    assert outcome == "status"
    got = json.loads(body)
    assert got.pop("connected") is True and "connectivity_ts" in got  # written by EPL
    del got["connectivity_ts"]
    assert got == {"model": "thermo", "floor": 3, "tags": ["a", "b"]}
    outcome, body = client.request(f"{base}/get/4", {"keys": ["floor", "absent"]})
    assert json.loads(body) == {"floor": 3}
    outcome, body = client.request(f"{base}/get/keys/5", b"")
    assert sorted(json.loads(body)) == ["connected", "connectivity_ts", "floor", "model", "tags"]
    assert client.request(f"{base}/delete/keys/6", ["tags"]) == ("status", b"")
    assert client.request(f"{base}/update/7", {"only": True}) == ("status", b"")
    got = json.loads(client.request(f"{base}/get/8", b"")[1])
    # A full replace keeps the keys endpoints may not write (EPL's connectivity keys).
    assert sorted(got) == ["connected", "connectivity_ts", "only"] and got["only"] is True
    e = error_of(client.request(f"{base}/update/keys/10", {"connected": False}))
    assert e["statusCode"] == 403 and "not writable" in e["reasonPhrase"]
    e = error_of(client.request(f"{base}/delete/keys/11", ["connectivity_ts"]))
    assert e["statusCode"] == 403
    e = error_of(client.request(f"{base}/update/keys/9", {"bad key": 1}))
    assert e["statusCode"] == 400


def test_wrong_password_is_refused_at_connack(core):
    c = KpClient(core.port, core.USER, "wrong", client_id="intruder")
    try:
        assert c.connack.is_failure
        assert c.connack.getName() == "Bad user name or password"
    finally:
        c.close()


def test_no_credentials_is_not_authorized(core):
    c = KpClient(core.port, client_id="anon")
    try:
        assert c.connack.is_failure
        assert c.connack.getName() == "Not authorized"
    finally:
        c.close()


def test_mqtt5_connect_is_refused_with_unacceptable_protocol_version(core):
    # MQTT 5 CONNECT: name "MQTT", level 5, clean start, keepalive 10, no properties, client id "v5".
    body = b"\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x02v5"
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        assert s.recv(16) == b"\x20\x02\x00\x01"
        assert s.recv(16) == b""  # then the server closes


def test_a_malformed_packet_closes_only_that_connection(core, client):
    with socket.create_connection(("127.0.0.1", core.port), timeout=5) as s:
        s.sendall(b"\x10\xff\xff\xff\xff\x7f garbage")  # remaining length over 4 bytes
        assert s.recv(16) == b""
    assert client.request(f"kp1/{AVN}/dcx/tok1/json/21", [{"still": 1}]) == ("status", b"")
