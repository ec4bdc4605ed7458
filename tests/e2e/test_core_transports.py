"""KPC on every transport with real clients: paho-mqtt over TLS (password, and X.509
client certificates registered in CCM by fingerprint), paho-mqtt and MQTT.js over
WebSocket (`/ws`), and a certificate suspended while its session is live."""

import json
import os
import ssl
import subprocess
from pathlib import Path

import pytest

from conftest import Core, free_port, make_pki, wait_for
from kp_client import KpClient

AVN = "demo-v1"
JS = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture
def tls_core(tmp_path):
    make_pki(tmp_path)
    tls_port = free_port()
    tls = {"listen": f"127.0.0.1:{tls_port}", "cert_file": tmp_path / "server.pem", "key_file": tmp_path / "server.key"}
    c = Core(tmp_path, core_keys={"tls": tls})
    c.tls_port = tls_port
    c.pki = tmp_path
    yield c
    c.stop()


def tls_opts(pki, name=None):
    opts = {"ca_certs": str(pki / "ca.pem"), "cert_reqs": ssl.CERT_REQUIRED}
    if name:
        opts.update(certfile=str(pki / f"{name}.pem"), keyfile=str(pki / f"{name}.key"))
    return opts


def test_tls_with_username_and_password(tls_core):
    c = KpClient(tls_core.tls_port, tls_core.USER, tls_core.PASSWORD, client_id="tls-pw", tls=tls_opts(tls_core.pki))
    try:
        assert c.connack == "Success"
        assert c.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"t": 1}]) == ("status", b"")
    finally:
        c.close()


def test_tls_client_certificate_registered_in_ccm_and_suspended_while_live(tls_core):
    pem = (tls_core.pki / "stranger.pem").read_text()
    # Not registered yet: refused (CONNACK 5, not authorized).
    refused = KpClient(tls_core.tls_port, client_id="x509-early", tls=tls_opts(tls_core.pki, "stranger"))
    assert refused.connack == "Not authorized"
    refused.close()
    code, cred = tls_core.api("POST", "/api/v1/credentials/x509", {"certificate": pem, "label": "sensor 7"})
    assert code == 201 and cred["state"] == "INACTIVE"
    fp = cred["fingerprint"]
    der = subprocess.run(["openssl", "x509", "-in", str(tls_core.pki / "stranger.pem"), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    import hashlib
    assert fp == hashlib.sha256(der).hexdigest()
    c = KpClient(tls_core.tls_port, client_id="x509", tls=tls_opts(tls_core.pki, "stranger"))
    try:
        assert c.connack == "Success"
        assert c.request(f"kp1/{AVN}/dcx/tok2/json/1", [{"t": 2}]) == ("status", b"")
        assert tls_core.api("GET", f"/api/v1/credentials/x509/{fp}")[1]["state"] == "ACTIVE"
        code, change = tls_core.api("PUT", f"/api/v1/credentials/x509/{fp}/state", {"state": "SUSPENDED"})
        assert code == 200 and change["sessionsEnded"] == 1 and change["previousState"] == "ACTIVE"
        assert c.disconnected.wait(5), "the suspended certificate's session must end at once"
    finally:
        c.close()
    again = KpClient(tls_core.tls_port, client_id="x509-again", tls=tls_opts(tls_core.pki, "stranger"))
    assert again.connack == "Not authorized"
    again.close()
    # Revoked is final.
    assert tls_core.api("PUT", f"/api/v1/credentials/x509/{fp}/state", {"state": "REVOKED"})[0] == 200
    code, err = tls_core.api("PUT", f"/api/v1/credentials/x509/{fp}/state", {"state": "ACTIVE"})
    assert code == 409 and "REVOKED" in err["error"].upper()


def test_a_tls_handshake_failure_is_counted_and_harms_no_one(tls_core):
    ok = KpClient(tls_core.tls_port, tls_core.USER, tls_core.PASSWORD, client_id="bystander", tls=tls_opts(tls_core.pki))
    try:
        import socket
        with socket.create_connection(("127.0.0.1", tls_core.tls_port)) as s:
            s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # plain MQTT on the TLS port
            s.settimeout(5)
            try:
                while s.recv(100):  # a TLS alert at most, then the server closes
                    pass
            except OSError:
                pass
        wait_for("the failure to be counted",
                 lambda: tls_core.api("GET", "/api/v1/kpc/stats")[1]["transportErrors"] >= 1)
        assert ok.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"t": 1}]) == ("status", b"")
    finally:
        ok.close()


def test_paho_over_websocket(core):
    c = KpClient(core.http_port, core.USER, core.PASSWORD, client_id="ws-paho", transport="websockets")
    try:
        assert c.connack == "Success"
        assert c.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"temperature": 19.5}]) == ("status", b"")
        outcome, body = c.request(f"kp1/{AVN}/epmx/tok1/get/keys/2", b"")
        assert outcome == "status" and "connected" in json.loads(body)
        code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/reboot", None)
        topic, payload = c.wait_message(f"kp1/{AVN}/cex/tok1/command/reboot/status")
        assert json.loads(payload) == [{"id": cmd["id"], "payload": None}]
    finally:
        c.close()
    wrong = KpClient(core.http_port, core.USER, "wrong", client_id="ws-wrong", transport="websockets")
    assert wrong.connack == "Bad user name or password"
    wrong.close()


def test_mqtt_js_over_websocket_sends_data_and_answers_a_pushed_command(core):
    node = subprocess.Popen(
        ["node", str(JS / "kp_ws_client.js"), f"ws://127.0.0.1:{core.http_port}/ws", AVN, "tok3",
         core.USER, core.PASSWORD],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NODE_PATH": str(JS / "node_modules")})
    try:
        events = []

        def next_event():
            line = node.stdout.readline()
            assert line, f"MQTT.js client ended early: {events}"
            events.append(json.loads(line))
            return events[-1]

        assert next_event() == {"event": "connected"}
        reply = next_event()
        assert reply["event"] == "reply" and reply["topic"] == f"kp1/{AVN}/dcx/tok3/json/1/status", events
        code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok3/commands/reboot?awaitTimeout=15000", {"in": 3})
        assert code == 200, (cmd, events)
        assert cmd["result"] == {"statusCode": 200, "reasonPhrase": "done", "payload": {"echo": {"in": 3}},
                                 "receivedAt": cmd["result"]["receivedAt"]}
        got = next_event()
        assert got["event"] == "command" and got["commands"] == [{"id": cmd["id"], "payload": {"in": 3}}]
        assert next_event() == {"event": "result-accepted"}
        assert node.wait(15) == 0
    finally:
        if node.poll() is None:
            node.kill()
    samples = core.query("SELECT sample FROM data_samples WHERE endpoint_id = 'ep-tok3'")
    assert [json.loads(s[0]) for s in samples] == [{"temperature": 21.5, "humidity": 40}]


def test_https_rest_api_and_mqtt_over_secure_websocket(tmp_path):
    make_pki(tmp_path)
    https = {"cert_file": tmp_path / "server.pem", "key_file": tmp_path / "server.key"}
    core = Core(tmp_path, http_keys=https, cacert=tmp_path / "ca.pem")
    try:
        code, eps = core.api("GET", "/api/v1/endpoints")
        assert code == 200 and len(eps) == 3
        plain = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://127.0.0.1:{core.http_port}/api/v1/endpoints"], capture_output=True, text=True)
        assert plain.stdout in ("000", "400"), "plain HTTP is not served on the HTTPS port"
        c = KpClient(core.http_port, core.USER, core.PASSWORD, client_id="wss", transport="websockets",
                     tls=tls_opts(tmp_path))
        try:
            assert c.connack == "Success"
            assert c.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"secure": 1}]) == ("status", b"")
        finally:
            c.close()
        # The 1/KP HTTP binding over HTTPS too.
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--cacert", str(tmp_path / "ca.pem"), "-X", "POST",
                              "--data-binary", '[{"x":1}]', f"https://127.0.0.1:{core.http_port}/kp1/{AVN}/dcx/tok2/json"],
                             capture_output=True, text=True)
        assert out.stdout.rpartition("\n")[2] == "200"
    finally:
        core.stop()
