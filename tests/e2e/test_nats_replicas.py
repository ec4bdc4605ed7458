"""Two core processes (replicas) on one real nats-server: connectivity stays right while
clients move between them, a command sent through one replica's REST API reaches a client
on the other, and a killed replica leaves nothing stuck."""

import json
import signal
import threading

import pytest

from conftest import Core, wait_for
from kaa_nats import NatsPeer, decode, encode, extension_data, wait_on_nats
from kp_client import KpClient

AVN = Core.APP_VERSION
CONNECTIVITY = "kaa.v1.events.kpc.endpoint.connectivity."


@pytest.fixture
def peer(nats_server):
    p = NatsPeer(nats_server.url)
    p.collect(CONNECTIVITY + "*")
    yield p
    p.close()


def replica(tmp_path, server, name):
    d = tmp_path / name
    d.mkdir()
    core = Core(d, core_keys={"nats": {"servers": [server.url], "replica_id": name}})
    wait_on_nats(server.url, name)
    return core


def connected(core, endpoint):
    rows = core.query("SELECT value FROM metadata WHERE endpoint_id = ? AND key = 'connected'", endpoint)
    return json.loads(rows[0][0]) if rows else None


def events(peer, kind):
    record = "ConnectedEvent" if kind == "connected" else "DisconnectedEvent"
    return [decode(record, d) for s, d in peer.messages(CONNECTIVITY + kind)]


def test_an_endpoint_stays_connected_while_any_replica_holds_it(tmp_path, nats_server, peer):
    a = replica(tmp_path, nats_server, "replica-a")
    b = replica(tmp_path, nats_server, "replica-b")
    on_a = KpClient(a.port, a.USER, a.PASSWORD, client_id="on-a")
    on_b = None
    try:
        assert on_a.request(f"kp1/{AVN}/dcx/tok1/json/1", {"v": 1}) == ("status", b"")
        peer.wait_messages(CONNECTIVITY + "connected")
        # B follows A's event in its own registry
        wait_for("B to record ep-tok1 connected", lambda: connected(b, "ep-tok1") is True)

        on_b = KpClient(b.port, b.USER, b.PASSWORD, client_id="on-b")
        assert on_b.request(f"kp1/{AVN}/dcx/tok1/json/2", {"v": 2}) == ("status", b"")
        peer.wait_messages(CONNECTIVITY + "connected", 2)
        wait_for("A to learn that B holds ep-tok1",
                 lambda: "replica-b" in [e["originatorReplicaId"] for e in events(peer, "connected")])

        on_a.close()
        on_a = None
        wait_for("A to let go of ep-tok1", lambda: "stay connected through another replica" in a.proc.output())
        assert events(peer, "disconnected") == [], "B still holds ep-tok1"
        assert connected(a, "ep-tok1") is True and connected(b, "ep-tok1") is True

        on_b.close()
        on_b = None
        peer.wait_messages(CONNECTIVITY + "disconnected")
        [d] = events(peer, "disconnected")
        assert d["endpoints"] == {"ep-tok1": AVN} and d["originatorReplicaId"] == "replica-b"
        wait_for("A to follow B's disconnected", lambda: connected(a, "ep-tok1") is False)
        assert connected(b, "ep-tok1") is False
    finally:
        for c in (on_a, on_b):
            if c is not None:
                c.close()
    a.stop()
    b.stop()


def test_a_command_sent_through_one_replica_reaches_a_client_on_the_other(tmp_path, nats_server, peer):
    a = replica(tmp_path, nats_server, "replica-a")
    b = replica(tmp_path, nats_server, "replica-b")
    c = KpClient(a.port, a.USER, a.PASSWORD, client_id="device")
    try:
        assert c.request(f"kp1/{AVN}/dcx/tok1/json/1", {"v": 1}) == ("status", b"")
        wait_for("B to learn that A holds ep-tok1", lambda: connected(b, "ep-tok1") is True)
        answer = {}

        def post():
            answer["r"] = b.api("POST", "/api/v1/endpoints/ep-tok1/commands/reboot?awaitTimeout=20000",
                                {"delay": 5})

        t = threading.Thread(target=post)
        t.start()
        topic, payload = c.wait_message(f"kp1/{AVN}/cex/tok1/command/reboot/status", timeout=20)
        [cmd] = json.loads(payload)
        assert cmd["payload"] == {"delay": 5}
        result = [{"id": cmd["id"], "statusCode": 200, "payload": {"uptime": 0}}]
        assert c.request(f"kp1/{AVN}/cex/tok1/result/reboot/2", result) == ("status", b"")
        t.join(30)
        code, done = answer["r"]
        assert code == 200 and done["status"] == "EXECUTED", done
        # the result is read through B as well, while A holds the session
        code, again = b.api("GET", f"/api/v1/endpoints/ep-tok1/commands/reboot/{done['id']}")
        assert code == 200 and again["result"]["payload"] == {"uptime": 0}, again
        # an unauthenticated call is refused by B before anything is passed on
        code, _ = b.api("POST", "/api/v1/endpoints/ep-tok1/commands/reboot", {}, auth=("admin", "wrong"))
        assert code == 401
    finally:
        c.close()
    a.stop()
    b.stop()


def test_a_killed_replica_leaves_nothing_connected_for_ever(tmp_path, nats_server, peer):
    a = replica(tmp_path, nats_server, "replica-a")
    b = replica(tmp_path, nats_server, "replica-b")
    c = KpClient(a.port, a.USER, a.PASSWORD, client_id="gateway")
    for i, token in enumerate(["tok2", "tok3"], start=1):
        assert c.request(f"kp1/{AVN}/dcx/{token}/json/{i}", {"v": i}) == ("status", b"")
    wait_for("B to learn A's endpoints", lambda: connected(b, "ep-tok2") and connected(b, "ep-tok3"))
    a.proc.stop(signal.SIGKILL)
    c.close()
    # The gateway comes back on B for tok2 only, then goes.
    moved = KpClient(b.port, b.USER, b.PASSWORD, client_id="gateway")
    try:
        assert moved.request(f"kp1/{AVN}/dcx/tok2/json/3", {"v": 3}) == ("status", b"")
    finally:
        moved.close()
    # Nothing stuck: both endpoints end disconnected, announced by the survivor.
    wait_for("ep-tok2 and ep-tok3 disconnected in B",
             lambda: connected(b, "ep-tok2") is False and connected(b, "ep-tok3") is False, timeout=60)
    b.stop()
    gone = []
    for e in events(peer, "disconnected"):
        assert e["originatorReplicaId"] == "replica-b"
        gone += e["endpoints"].items()
    assert sorted(gone) == [("ep-tok2", AVN), ("ep-tok3", AVN)], "each announced once"


def test_a_push_from_an_extension_service_reaches_the_replica_holding_the_session(tmp_path, nats_server, peer):
    extensions = [{"instance": "ext-cmd", "kind": "external"}]
    cores = []
    for name in ("replica-a", "replica-b"):
        d = tmp_path / name
        d.mkdir()
        cores.append(Core(d, core_keys={"nats": {"servers": [nats_server.url], "replica_id": name},
                                        "extensions": extensions}))
        wait_on_nats(nats_server.url, name)
    a, b = cores
    peer.serve_extension("ext-cmd", lambda req: extension_data(req, 200))
    c = KpClient(b.port, b.USER, b.PASSWORD, client_id="device")
    try:
        c.subscribe(f"kp1/{AVN}/ext-cmd/tok1/#")
        assert c.request(f"kp1/{AVN}/ext-cmd/tok1/hello/1", b"hi") == ("status", b"")
        wait_for("A to learn that B holds ep-tok1", lambda: connected(a, "ep-tok1") is True)
        # The service sends to KPC's service subject: either replica may take each push
        # (queue group); every one reaches the device, until A has passed some on.
        i = 0
        while i < 8 or "push passed on to replica replica-b" not in a.proc.output():
            assert i < 200, "A never took a push"
            push = extension_data({"correlationId": f"push-{i}", "appVersionName": AVN, "endpointId": "ep-tok1",
                                   "resourcePath": f"/note/{i}", "requestId": None},
                                  200, payload=str(i).encode(), instance="ext-cmd")
            peer.publish("kaa.v1.service.kpc.esp.ExtensionData", encode("ExtensionData", push))
            topic, payload = c.wait_message(f"kp1/{AVN}/ext-cmd/tok1/note/")
            assert (topic, payload) == (f"kp1/{AVN}/ext-cmd/tok1/note/{i}", str(i).encode())
            i += 1
    finally:
        c.close()
    a.stop()
    b.stop()
    assert "push passed on" not in b.proc.output(), "B delivered every push it took"


def test_every_replica_shows_the_owners_registry(tmp_path, nats_server, peer):
    cores = []
    for name in ("replica-a", "replica-b"):
        d = tmp_path / name
        d.mkdir()
        nats = {"servers": [nats_server.url], "replica_id": name, "registry_owner": "replica-a"}
        cores.append(Core(d, core_keys={"nats": nats}))
        wait_on_nats(nats_server.url, name)
    a, b = cores
    # Made through the mirror's API: it is the owner's, and the mirror's copy has it at once.
    code, ep = b.api("POST", "/api/v1/endpoints", {"appVersion": AVN, "endpointId": "boiler-1", "token": "boiler-tok"})
    assert code == 201, ep
    assert a.api("GET", "/api/v1/endpoints/boiler-1")[0] == 200
    assert b.query("SELECT app_version FROM endpoints WHERE id = 'boiler-1'") == [(AVN,)]
    code, cred = a.api("POST", "/api/v1/credentials/basic", {"username": "field-gw", "password": "s3cret pw",
                                                             "applications": ["*"]})
    assert code == 201
    assert a.api("PUT", "/api/v1/credentials/basic/field-gw/state", {"state": "ACTIVE"})[0] == 200
    # Made on the owner: the mirror follows the owner's notice.
    wait_for("the mirror to copy the credential",
             lambda: b.query("SELECT state FROM credentials_basic WHERE username = 'field-gw'") == [("active",)])
    assert [c["username"] for c in b.api("GET", "/api/v1/credentials/basic")[1]] == \
        [c["username"] for c in a.api("GET", "/api/v1/credentials/basic")[1]]
    device = KpClient(b.port, "field-gw", "s3cret pw", client_id="boiler")
    try:
        assert device.request(f"kp1/{AVN}/dcx/boiler-tok/json/1", [{"t": 70}]) == ("status", b"")
        # Suspended on the owner: the session on the mirror ends.
        code, _ = a.api("PUT", "/api/v1/endpoints/boiler-1/tokens/boiler-tok/state", {"state": "SUSPENDED"})
        assert code == 200
        assert device.disconnected.wait(20), "the mirror ends the sessions of a suspended token"
    finally:
        device.close()
    assert b.api("GET", "/api/v1/kpc/stats")[1]["nats"]["registry"]["role"] == "mirror"
    assert a.api("GET", "/api/v1/kpc/stats")[1]["nats"]["registry"] == {"role": "owner"}
    # The owner away: the mirror answers registry reads from its copy, refuses writes.
    a.stop()
    code, got = b.api("GET", "/api/v1/endpoints/boiler-1")
    assert code == 200 and got["endpointId"] == "boiler-1"
    code, err = b.api("POST", "/api/v1/endpoints", {"appVersion": AVN})
    assert code == 503 and "replica-a" in err["error"], err
    b.stop()
