"""The core on NATS: Kaa events and external extensions, checked by an independent peer
(nats-py + fastavro with Kaa's own .avsc files) through a real nats-server."""

import json
import re
import threading
import time

import pytest

from conftest import Core, wait_for
from kaa_nats import NatsPeer, TcpRelay, decode, encode, extension_data, wait_on_nats
from kp_client import KpClient

AVN = Core.APP_VERSION
EVENTS = "kaa.v1.events."


@pytest.fixture
def peer(nats_server):
    p = NatsPeer(nats_server.url)
    yield p
    p.close()


def nats_core(tmp_path, server, **nats_keys):
    keys = {"servers": [server.url], "replica_id": "replica-a", **nats_keys.pop("nats", {})}
    core = Core(tmp_path, core_keys={"nats": keys, **nats_keys})
    wait_on_nats(server.url, keys["replica_id"])
    return core


def decoded(peer, subject, record):
    return [decode(record, d) for s, d in peer.messages(subject) if s == subject]


def test_every_event_decodes_as_its_kaa_record(tmp_path, nats_server, peer):
    peer.collect(EVENTS + ">")
    core = nats_core(tmp_path, nats_server)
    client = KpClient(core.port, core.USER, core.PASSWORD, client_id="sensor")
    try:
        batch = [{"timestamp": 1000, "temp": 21.5, "label": "a"}, {"timestamp": 2000, "temp": 22, "hum": 40}]
        assert client.request(f"kp1/{AVN}/dcx/tok1/json/1", batch) == ("status", b"")

        dstp = EVENTS + "dcx.endpoint.data-collection.data-samples-received"
        peer.wait_messages(dstp)
        [ds] = decoded(peer, dstp, "DataSamplesEvent")
        assert ds["endpointId"] == "ep-tok1" and ds["appVersionName"] == AVN
        assert ds["contentType"] == "application/json"
        assert [json.loads(s) for s in ds["dataSamples"]] == batch
        assert ds["correlationId"] and ds["timestamp"] > 0

        tstp = EVENTS + "epts.endpoint.data-collection.data-points-received."
        peer.wait_messages(tstp, 2)
        series = {}
        for s, d in peer.messages(tstp):
            ev = decode("TimeSeriesEvent", d)
            assert s == tstp + ev["timeSeriesName"]
            assert ev["endpointId"] == "ep-tok1"
            series[ev["timeSeriesName"]] = [(p["timestamp"], p["values"]) for p in ev["dataPoints"]]
            assert all(p["ingestionTimestamp"] > 0 for p in ev["dataPoints"])
        assert series == {"auto~temp": [(1000, {"value": 21.5}), (2000, {"value": 22.0})],
                          "auto~hum": [(2000, {"value": 40.0})]}

        connected = EVENTS + "kpc.endpoint.connectivity.connected"
        peer.wait_messages(connected)
        [c] = decoded(peer, connected, "ConnectedEvent")
        assert c["endpoints"] == {"ep-tok1": AVN}
        assert c["originatorReplicaId"] == "replica-a"
    finally:
        client.close()
    disconnected = EVENTS + "kpc.endpoint.connectivity.disconnected"
    peer.wait_messages(disconnected)
    [d] = decoded(peer, disconnected, "DisconnectedEvent")
    assert d["endpoints"] == {"ep-tok1": AVN}

    code, body = core.api("POST", "/api/v1/endpoints", {"appVersion": {"name": AVN}})
    assert code == 201, body
    new_id = body["endpointId"]
    registered = EVENTS + "epr.endpoint.lifecycle.registered"
    peer.wait_messages(registered)
    [r] = decoded(peer, registered, "RegisteredEvent")
    assert (r["endpointId"], r["appVersionName"], r["originatorReplicaId"]) == (new_id, AVN, "replica-a")
    code, _ = core.api("DELETE", f"/api/v1/endpoints/{new_id}")
    assert code in (200, 204)
    unregistered = EVENTS + "epr.endpoint.lifecycle.unregistered"
    peer.wait_messages(unregistered)
    [u] = decoded(peer, unregistered, "UnregisteredEvent")
    assert (u["endpointId"], u["appVersionName"]) == (new_id, AVN)
    core.stop()
    for s, d in peer.messages():
        assert not s.endswith("data-points-received.") and d, f"empty subject token or record on {s}"


def test_a_gateway_session_closing_is_one_disconnected_event_with_all_its_endpoints(tmp_path, nats_server, peer):
    peer.collect(EVENTS + "kpc.endpoint.connectivity.>")
    core = nats_core(tmp_path, nats_server)
    gw = KpClient(core.port, core.USER, core.PASSWORD, client_id="gateway")
    for i, token in enumerate(core.TOKENS):
        assert gw.request(f"kp1/{AVN}/dcx/{token}/json/{i + 1}", {"v": i}) == ("status", b"")
    peer.wait_messages(EVENTS + "kpc.endpoint.connectivity.connected", len(core.TOKENS))
    gw.close()
    disconnected = EVENTS + "kpc.endpoint.connectivity.disconnected"
    peer.wait_messages(disconnected)
    # the session is gone in the core's own state before the count is final
    wait_for("all endpoints disconnected in the core",
             lambda: core.query("SELECT count(*) FROM metadata WHERE key = 'connected' AND value = 'false'")
             == [(len(core.TOKENS),)])
    events = decoded(peer, disconnected, "DisconnectedEvent")
    assert [e["endpoints"] for e in events] == [{f"ep-{t}": AVN for t in core.TOKENS}]
    connected = decoded(peer, EVENTS + "kpc.endpoint.connectivity.connected", "ConnectedEvent")
    assert sorted(k for e in connected for k in e["endpoints"]) == sorted(f"ep-{t}" for t in core.TOKENS)
    core.stop()


def test_an_external_extension_answers_pushes_and_fails_loudly(tmp_path, nats_server, peer):
    def answer(req):
        if req["payload"] == b"bad":
            return extension_data(req, 400, reason="bad sample")
        return extension_data(req, 200, payload=b'{"ok":true}')

    peer.serve_extension("ext-dcx", answer)
    extensions = [{"instance": "ext-dcx", "kind": "external"}, {"instance": "ext-gone", "kind": "external"}]
    core = nats_core(tmp_path, nats_server, extensions=extensions, extension_timeout_ms=1500,
                     nats={"replica_id": "replica-x"})
    client = KpClient(core.port, core.USER, core.PASSWORD, client_id="dev")
    try:
        assert client.request(f"kp1/{AVN}/ext-dcx/tok1/json/7", b"hello") == ("status", b'{"ok":true}')
        [(subject, reply, req)] = peer.requests
        assert subject == "kaa.v1.service.ext-dcx.esp.ClientData"
        assert reply == "kaa.v1.replica.replica-x.esp.ExtensionData"
        assert (req["endpointId"], req["appVersionName"], req["resourcePath"], req["requestId"]) == \
            ("ep-tok1", AVN, "/json", 7)
        assert (req["payload"], req["configName"], req["timeout"]) == (b"hello", None, 1500)

        outcome, body = client.request(f"kp1/{AVN}/ext-dcx/tok1/json/8", b"bad")
        assert (outcome, json.loads(body)) == ("error", {"statusCode": 400, "reasonPhrase": "bad sample"})

        # A push from the service (no request ID) reaches the session that uses the endpoint.
        client.subscribe(f"kp1/{AVN}/ext-dcx/tok1/#")
        push = extension_data({"correlationId": "push-1", "appVersionName": AVN, "endpointId": "ep-tok1",
                               "resourcePath": "/command/reboot", "requestId": None},
                              200, payload=b'[{"id":1}]', instance="ext-dcx")
        peer.publish("kaa.v1.service.kpc.esp.ExtensionData", encode("ExtensionData", push))
        topic, payload = client.wait_message(f"kp1/{AVN}/ext-dcx/tok1/command/reboot")
        assert payload == b'[{"id":1}]'

        # Nobody serves ext-gone: an error within the extension timeout, not silence.
        started = time.monotonic()
        outcome, body = client.request(f"kp1/{AVN}/ext-gone/tok1/json/9", b"x", timeout=30)
        assert outcome == "error" and json.loads(body)["statusCode"] == 504, body
        assert time.monotonic() - started >= 1.4
        code, stats = core.api("GET", "/api/v1/kpc/stats")
        assert (stats["nats"]["espRequests"], stats["nats"]["espTimeouts"]) == (3, 1), stats

        # NATS down: 503 at once; back up: answers again.
        nats_server.stop()
        wait_for("the core to see NATS down", lambda: "nats: disconnected" in core.proc.output())
        outcome, body = client.request(f"kp1/{AVN}/ext-dcx/tok1/json/10", b"x", timeout=30)
        assert outcome == "error" and json.loads(body)["statusCode"] == 503, body
        nats_server.start()
        wait_for("both sides back on NATS", lambda: peer.connected() and core.proc.output().count("nats: connected") >= 2,
                 timeout=60)
        # the peer's queue subscription is restored by nats-py on reconnect
        wait_for("an answer after the restart",
                 lambda: client.request(f"kp1/{AVN}/ext-dcx/tok1/json/11", b"x", timeout=30)[0] == "status",
                 timeout=60, every=0.5)
    finally:
        client.close()
    core.stop()


def test_events_queue_while_nats_is_away_bounded_and_counted(tmp_path, nats_server, peer):
    """NATS away: clients keep getting answers, events wait in a bounded queue, what does
    not fit is dropped and counted, and the queue drains when NATS is back."""
    # The core reaches NATS through a relay the test cuts, so the peer's subscription
    # stays live on the server the whole time: the queued events cannot be flushed before
    # the peer is back (NATS keeps nothing for absent subscribers).
    relay = TcpRelay(nats_server.port)
    peer.collect(EVENTS + ">")
    core = nats_core(tmp_path, nats_server, nats={"servers": [relay.url], "queue_capacity": 5})
    relay.cut()
    wait_for("the core to see NATS down", lambda: "nats: disconnected" in core.proc.output())
    client = KpClient(core.port, core.USER, core.PASSWORD, client_id="sensor")
    try:
        for i in range(1, 51):
            assert client.request(f"kp1/{AVN}/dcx/tok1/json/{i}", {"v": i}) == ("status", b"")
        assert len(core.query("SELECT 1 FROM time_series WHERE endpoint_id = 'ep-tok1' AND name = 'auto~v'")) == 50
        relay.restore()
        # what waited in the queue arrives once the core is back
        got = peer.wait_messages(EVENTS, 5, timeout=60)
        for subject, data in got:
            assert data, subject
        code, stats = core.api("GET", "/api/v1/kpc/stats")
        assert code == 200 and stats["nats"]["eventsDropped"] > 0, stats
        assert stats["nats"]["replicaId"] == "replica-a"
        wait_for("the stats to show NATS connected", lambda: core.api("GET", "/api/v1/kpc/stats")[1]["nats"]["connected"])
    finally:
        client.close()
    core.stop()
    m = re.search(r"nats: (\d+) event\(s\) handed to the NATS client, (\d+) dropped", core.proc.output())
    assert m, core.proc.output()[-2000:]
    handed, dropped = int(m.group(1)), int(m.group(2))
    assert dropped > 0, "more events than the queue holds were made while NATS was away"
    # 50 DSTP + 50 TSTP + connected + disconnected (at shutdown): each one either handed
    # over or counted as dropped
    assert handed + dropped == 102, (handed, dropped)


def test_nats_restarted_under_load_leaves_no_request_unanswered(tmp_path, nats_server, peer):
    peer.serve_extension("ext-dcx", lambda req: extension_data(req, 200, payload=b"ok"))
    core = nats_core(tmp_path, nats_server, extensions=[{"instance": "ext-dcx", "kind": "external"}],
                     extension_timeout_ms=2000)
    remote = KpClient(core.port, core.USER, core.PASSWORD, client_id="remote")
    local = KpClient(core.port, core.USER, core.PASSWORD, client_id="local")
    outcomes = {"remote": [], "local": []}
    restarted = threading.Event()

    def drive(name, client, extension, token):
        n = 0
        after = 0
        while after < 20:
            n += 1
            outcome, body = client.request(f"kp1/{AVN}/{extension}/{token}/json/{n}", b'{"v":1}', timeout=30)
            code = 200 if outcome == "status" else json.loads(body)["statusCode"]
            outcomes[name].append(code)
            if restarted.is_set():
                after += 1

    threads = [threading.Thread(target=drive, args=("remote", remote, "ext-dcx", "tok1")),
               threading.Thread(target=drive, args=("local", local, "dcx", "tok2"))]
    try:
        for t in threads:
            t.start()
        wait_for("answers before the restart", lambda: outcomes["remote"].count(200) >= 5)
        nats_server.stop()
        wait_for("a request during the outage", lambda: any(c != 200 for c in outcomes["remote"]), timeout=30)
        nats_server.start()
        wait_for("answers again after the restart",
                 lambda: outcomes["remote"][-3:] == [200, 200, 200], timeout=60)
        restarted.set()
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "a request got no answer"
    finally:
        restarted.set()
        remote.close()
        local.close()
    # every request was answered: a success, or 503/504 while NATS was away
    assert set(outcomes["remote"]) <= {200, 503, 504}, outcomes["remote"]
    assert outcomes["remote"].count(200) >= 25
    # what the core serves itself never noticed
    assert set(outcomes["local"]) == {200}, outcomes["local"]
    core.stop()


def test_garbage_on_the_cores_subjects_is_counted_and_changes_nothing(tmp_path, nats_server, peer):
    core = nats_core(tmp_path, nats_server)
    junk = [b"", b"\xff" * 40, b"\x02c\x02\x00" + b"\x80" * 10, json.dumps({"endpoints": 5}).encode()]
    for data in junk:
        for subject in ("kaa.v1.replica.replica-a.esp.ExtensionData", "kaa.v1.service.kpc.esp.ExtensionData",
                        "kaa.v1.events.kpc.endpoint.connectivity.connected",
                        "kaa.v1.events.kpc.endpoint.connectivity.disconnected",
                        "kaa.v1.replica.replica-a.kpgw.presence"):
            peer.publish(subject, data)
    # requests that expect an answer get one that says what was wrong
    answer = peer._run(peer.nc.request("kaa.v1.replica.replica-a.kpgw.rest", b"{not json", timeout=10))
    reply = json.loads(answer.data)
    assert reply["status"] == 400, reply
    forbidden = json.dumps({"method": "GET", "uri": "/api/v1/kpc/stats", "body": ""}).encode()
    reply = json.loads(peer._run(peer.nc.request("kaa.v1.replica.replica-a.kpgw.rest", forbidden, timeout=10)).data)
    assert reply["status"] == 403, "only command and registry calls are taken from other replicas"
    wait_for("the malformed records counted",
             lambda: core.api("GET", "/api/v1/kpc/stats")[1]["nats"]["malformed"] >= 2 * len(junk))
    client = KpClient(core.port, core.USER, core.PASSWORD, client_id="after")
    try:
        assert client.request(f"kp1/{AVN}/dcx/tok1/json/1", {"v": 1}) == ("status", b"")
    finally:
        client.close()
    assert core.proc.popen.poll() is None
    core.stop()


def test_tokens_unknown_here_are_asked_of_the_ecap_provider(tmp_path, nats_server, peer):
    core = nats_core(tmp_path, nats_server, nats={"ecap_provider": "cm"}, extension_timeout_ms=2000)
    client = KpClient(core.port, core.USER, core.PASSWORD, client_id="device")
    try:
        # No provider on NATS yet: the client hears why, at once.
        outcome, body = client.request(f"kp1/{AVN}/dcx/ext-tok/json/1", b'{"v":1}')
        assert (outcome, json.loads(body)["statusCode"]) == ("error", 503)
        peer.serve_token_provider("cm", lambda req: ("ext-ep-1", 200) if req["token"] == "ext-tok" else (None, 404))
        assert client.request(f"kp1/{AVN}/dcx/ext-tok/json/2", b'{"v":2}') == ("status", b"")
        [(subject, _, req)] = peer.requests
        assert subject == "kaa.v1.service.cm.ecap.ep-token-request"
        assert (req["appName"], req["token"], req["timeout"]) == ("demo", "ext-tok", 2000)
        # recorded here: the next request needs no provider
        assert core.query("SELECT endpoint_id, state FROM tokens WHERE token = 'ext-tok'") == [("ext-ep-1", "active")]
        assert client.request(f"kp1/{AVN}/dcx/ext-tok/json/3", b'{"v":3}') == ("status", b"")
        assert len(peer.requests) == 1
        assert len(core.query("SELECT 1 FROM time_series WHERE endpoint_id = 'ext-ep-1' AND name = 'auto~v'")) == 2
        # a token the provider does not know either is refused as usual; known ones never asked
        outcome, body = client.request(f"kp1/{AVN}/dcx/nobody/json/4", b'{"v":4}')
        assert (outcome, json.loads(body)["statusCode"]) == ("error", 401)
        assert client.request(f"kp1/{AVN}/dcx/tok1/json/5", b'{"v":5}') == ("status", b"")
        assert [r["token"] for _, _, r in peer.requests] == ["ext-tok", "nobody"]
    finally:
        client.close()
    core.stop()
