"""KPC's MQTT session rules and bad-input handling, packet by packet (mqtt_raw) and with
paho-mqtt: persistent sessions resend unacknowledged pushes with DUP, client-ID takeover,
wills accepted but never relayed, retain ignored, oversized and malformed packets closed
and counted (logged once), every 1/KP error code of docs/protocol.md §4, and none of it
touching a bystander session."""

import json
import time

from conftest import Core, wait_for
from kp_client import KpClient
from mqtt_raw import RawClient, connect, publish, puback, subscribe

AVN = "demo-v1"


def raw_session(core, client_id, clean=True, will=None):
    c = RawClient(core.port)
    c.send(connect(client_id, core.USER, core.PASSWORD, clean=clean, will=will))
    kind, _, body = c.read()
    assert kind == 2, "CONNACK expected"
    return c, body  # body = [session present flag, return code]


def stats(core):
    return core.api("GET", "/api/v1/kpc/stats")[1]


def test_a_persistent_session_gets_unacknowledged_pushes_again_with_dup(core):
    c, ack = raw_session(core, "persist", clean=False)
    assert ack == bytes([0, 0])
    c.send(publish(f"kp1/{AVN}/dcx/tok1/json", b'[{"t":1}]', qos=1, pkid=1))
    assert c.read()[0] == 4  # PUBACK
    code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok1/commands/reboot", {"n": 1})
    push = c.read_publish()
    assert push["topic"] == f"kp1/{AVN}/cex/tok1/command/reboot/status" and push["qos"] == 1 and not push["dup"]
    c.close()  # gone without PUBACK
    c, ack = raw_session(core, "persist", clean=False)
    try:
        assert ack == bytes([1, 0]), "session present"
        again = c.read_publish()
        assert again["dup"] and again["pkid"] == push["pkid"] and again["payload"] == push["payload"]
        assert json.loads(again["payload"]) == [{"id": cmd["id"], "payload": {"n": 1}}]
        c.send(puback(again["pkid"]))
        c.send(bytes([0xC0, 0]))  # PINGREQ: answered after the PUBACK was processed
        assert c.read()[0] == 13
    finally:
        c.close()
    c, ack = raw_session(core, "persist", clean=False)
    try:
        assert ack == bytes([1, 0])
        # Resends go out right after CONNACK, before later packets are answered: the
        # next packet after a PINGREQ must be its PINGRESP, not a resent PUBLISH.
        c.send(bytes([0xC0, 0]))  # PINGREQ: the session is alive, not closed
        assert c.read()[0] == 13
    finally:
        c.close()
    # A clean session drops what was kept.
    c, ack = raw_session(core, "persist", clean=True)
    assert ack == bytes([0, 0])
    c.close()


def test_a_second_connection_with_the_same_client_id_takes_over(core):
    first = KpClient(core.port, core.USER, core.PASSWORD, client_id="same-id")
    second = KpClient(core.port, core.USER, core.PASSWORD, client_id="same-id")
    try:
        assert first.disconnected.wait(5), "the older connection is closed"
        assert second.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"t": 1}]) == ("status", b"")
    finally:
        first.close()
        second.close()


def test_wills_are_accepted_but_never_relayed_and_retain_is_ignored(core):
    watcher = KpClient(core.port, core.USER, core.PASSWORD, client_id="watcher")
    try:
        watcher.subscribe("kp1/#")
        will_topic = f"kp1/{AVN}/dcx/tok2/json"
        c, ack = raw_session(core, "with-will", will=(will_topic, b'[{"will":1}]'))
        assert ack == bytes([0, 0])
        c.close()  # abrupt: a broker would now publish the will
        # Retained request: processed like any other, nothing kept for later subscribers.
        r = RawClient(core.port)
        r.send(connect("retainer", core.USER, core.PASSWORD))
        r.read()
        r.send(publish(f"kp1/{AVN}/dcx/tok3/json/4", b'[{"r":1}]', qos=1, pkid=4, retain=True))
        reply = r.read_publish()
        assert reply["topic"] == f"kp1/{AVN}/dcx/tok3/json/4/status"
        r.close()
        time.sleep(1)
        assert not [t for t, _ in watcher.seen if t.startswith(will_topic)], watcher.seen
        assert core.query("SELECT count(*) FROM data_samples WHERE endpoint_id = 'ep-tok2'") == [(0,)]
        late = KpClient(core.port, core.USER, core.PASSWORD, client_id="late")
        try:
            late.subscribe(f"kp1/{AVN}/dcx/tok3/#")
            time.sleep(0.5)
            assert late.seen == [], "nothing retained"
        finally:
            late.close()
    finally:
        watcher.close()


def test_bad_packets_close_only_their_connection_and_are_counted_and_logged_once(tmp_path):
    # A small payload limit for 413; the default 256 KiB max packet size for oversized packets.
    core = Core(tmp_path, core_keys={"max_payload_bytes": 2000})
    bystander = KpClient(core.port, core.USER, core.PASSWORD, client_id="bystander")
    try:
        # Oversized packet: over the 256 KiB default max packet size.
        c, _ = raw_session(core, "big")
        c.send(publish(f"kp1/{AVN}/dcx/tok1/json", b"[" + b"1," * 140_000 + b"1]"))
        assert c.closed_by_server()
        # Invalid UTF-8 in a topic.
        c, _ = raw_session(core, "utf8")
        c.send(publish(b"kp1/\xff\xfe/dcx", b"x"))
        assert c.closed_by_server()
        # Wildcards in a publish topic.
        c, _ = raw_session(core, "wild")
        c.send(publish(f"kp1/{AVN}/dcx/+/json", b"x"))
        assert c.closed_by_server()
        # A flood of malformed connections: each closed, counted, logged once.
        for i in range(30):
            c = RawClient(core.port)
            c.send(b"\x10\x05garbage")
            assert c.closed_by_server()
        s = wait_for("counters", lambda: (st := stats(core))["malformedPackets"] >= 31 and st)
        assert s["oversizedPackets"] == 1 and s["protocolViolations"] >= 1
        log = core.proc.output()
        assert log.count("closing connection: malformed packet") == 1, "rate-limited"
        # 413: under the packet limit, over the payload limit.
        e = bystander.request(f"kp1/{AVN}/dcx/tok1/json/1", json.dumps([{"v": "x" * 3000}]))
        assert e[0] == "error" and json.loads(e[1])["statusCode"] == 413
        # The bystander never noticed.
        assert bystander.request(f"kp1/{AVN}/dcx/tok1/json/2", [{"ok": 1}]) == ("status", b"")
        assert not bystander.disconnected.is_set()
    finally:
        bystander.close()
        core.stop()


def test_every_error_code_of_the_protocol(tmp_path):
    core = Core(tmp_path, core_keys={"max_payload_bytes": 100000, "extension_timeout_ms": 1})
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="errors")

    def code(topic, payload):
        outcome, body = c.request(topic, payload)
        assert outcome == "error", (topic, body)
        return json.loads(body)["statusCode"]

    try:
        assert code(f"kp1/{AVN}/dcx/tok1/json/1", b"{not json") == 400
        assert code(f"kp1/{AVN}/dcx/tok1/json/0", b"[]") == 400
        assert code(f"kp1/{AVN}/dcx/nope/json/2", b"[]") == 401
        core.api("PUT", "/api/v1/endpoints/ep-tok2/tokens/tok2/state", {"state": "SUSPENDED"})
        assert code(f"kp1/{AVN}/dcx/tok2/json/3", b"[]") == 403
        assert code(f"kp1/{AVN}/epmx/tok1/update/keys/4", {"connected": 1}) == 403
        core.api("PUT", "/api/v1/endpoints/ep-tok3/tokens/tok3/state", {"state": "REVOKED"})
        assert code(f"kp1/{AVN}/dcx/tok3/json/5", b"[]") == 401
        assert code("kp1/nope-v1/dcx/tok1/json/6", b"[]") == 404
        assert code(f"kp1/{AVN}/nope/tok1/json/7", b"[]") == 404
        assert code(f"kp1/{AVN}/dcx/tok1/json/8", b"[" + b"1," * 60_000 + b"1]") == 413
        # A batch too big to store within the 1 ms extension deadline.
        batch = json.dumps([{"i": i, "v": i * 0.5} for i in range(3000)])
        assert code(f"kp1/{AVN}/dcx/tok1/json/9", batch) == 504
        assert stats(core)["requestErrors"] >= 10
    finally:
        c.close()
        core.stop()


def test_a_subscriber_that_never_reads_does_not_stall_anyone(core):
    slow, _ = raw_session(core, "never-reads")
    slow.send(subscribe("kp1/#", qos=0))
    assert slow.read()[0] == 9  # SUBACK; from now on it reads nothing
    assert core.api("PATCH", "/api/v1/endpoints/ep-tok1/metadata", {"blob": "x" * 100_000})[0] == 204
    fast = KpClient(core.port, core.USER, core.PASSWORD, client_id="fast")
    try:
        started = time.monotonic()
        for i in range(1, 301):  # 300 replies of ~100 kB, each copied to the slow subscriber
            outcome, body = fast.request(f"kp1/{AVN}/epmx/tok1/get/{i}", {"keys": ["blob"]})
            assert outcome == "status" and len(body) > 100_000
        elapsed = time.monotonic() - started
        s = stats(core)
        assert s["messagesDropped"] > 0, "the slow subscriber's copies were dropped, not waited for"
        print(f"300 requests with a stalled subscriber: {elapsed:.1f} s")
    finally:
        fast.close()
        slow.close()


def test_a_full_disk_is_a_500_logged_at_error_and_reads_go_on(tmp_path):
    import os
    import subprocess
    import pytest
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs and needs root (CI runs as root)")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(state)], check=True)
    try:
        core = Core(tmp_path)
        c = KpClient(core.port, core.USER, core.PASSWORD, client_id="filler")
        try:
            batch = json.dumps([{"i": i, "text": "y" * 200} for i in range(80)])
            outcome = None
            for n in range(1, 400):
                outcome, body = c.request(f"kp1/{AVN}/dcx/tok1/json/{n}", batch)
                if outcome == "error":
                    break
            assert outcome == "error", "the disk never filled"
            assert json.loads(body) == {"statusCode": 500, "reasonPhrase": "internal error"}
            assert "ERROR" in core.proc.output() and "extension storage failure" in core.proc.output()
            # Reads still work and the session lives on.
            outcome, body = c.request(f"kp1/{AVN}/epmx/tok1/get/keys/999", b"")
            assert outcome == "status"
        finally:
            c.close()
        core.stop()
        assert core.query("PRAGMA integrity_check") == [("ok",)]
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_keepalive_closes_a_silent_client_and_keeps_one_that_pings(tmp_path):
    core = Core(tmp_path)
    try:
        # No packet for 1.5 × keepalive (1 s) closes the connection: not before 1 s
        # (the server waits at least the keepalive), and it does close (no upper bound
        # tighter than the read timeout: a loaded machine may be slow to schedule).
        quiet = RawClient(core.port)
        quiet.send(connect("quiet", core.USER, core.PASSWORD, keepalive=1))
        assert quiet.read()[0] == 2
        started = time.monotonic()
        assert quiet.closed_by_server(timeout=30)
        assert time.monotonic() - started >= 1.0
        # A client that pings every 0.3 s (well inside 1.5 s) stays connected for 4 s,
        # more than twice what a silent one survives.
        pinger = RawClient(core.port)
        pinger.send(connect("pinger", core.USER, core.PASSWORD, keepalive=1))
        assert pinger.read()[0] == 2
        until = time.monotonic() + 4
        while time.monotonic() < until:
            time.sleep(0.3)
            pinger.send(bytes([0xC0, 0]))  # PINGREQ
            assert pinger.read()[0] == 13  # PINGRESP
        pinger.close()
    finally:
        core.stop()


def test_the_connection_limit_refuses_and_counts_the_extra_connection(tmp_path):
    # Every client keeps the default 60 s keepalive: nothing here depends on how long a
    # CONNECT (an Argon2 check) takes on this machine.
    core = Core(tmp_path, mqtt_keys={"max_connections": 3})
    try:
        clients = [raw_session(core, f"c{i}")[0] for i in range(3)]
        extra = RawClient(core.port)
        assert extra.closed_by_server(timeout=30)
        assert stats(core)["connectionLimitRefusals"] == 1
        clients[0].close()

        def a_new_client_is_accepted():
            c = RawClient(core.port)
            try:
                c.send(connect("again", core.USER, core.PASSWORD))
                return c.read(timeout=30)[0] == 2 and c
            except (OSError, ConnectionError):
                c.close()
                return False

        again = wait_for("a free slot", a_new_client_is_accepted)
        again.close()
        for c in clients[1:]:
            c.close()
    finally:
        core.stop()
