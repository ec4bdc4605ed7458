"""EPL: endpoint connectivity follows the sessions that use an endpoint's token."""

import json
import time
from datetime import datetime

from conftest import Core, wait_for
from kp_client import KpClient

AVN = "demo-v1"


def meta(core, ep):
    return {k: json.loads(v) for k, v in core.query("SELECT key, value FROM metadata WHERE endpoint_id = ?", ep)}


def series(core, ep):
    return [v for (v,) in core.query(
        "SELECT value FROM time_series WHERE endpoint_id = ? AND name = 'connectivity' ORDER BY ts_ms, seq", ep)]


def test_connected_while_any_session_uses_the_token(core):
    a = KpClient(core.port, core.USER, core.PASSWORD, client_id="a")
    b = KpClient(core.port, core.USER, core.PASSWORD, client_id="b")
    try:
        assert a.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"x": 1}]) == ("status", b"")
        m = meta(core, "ep-tok1")
        assert m["connected"] is True
        datetime.fromisoformat(m["connectivity_ts"].replace("Z", "+00:00"))  # RFC 3339
        assert b.request(f"kp1/{AVN}/dcx/tok1/json/2", [{"x": 2}]) == ("status", b"")
        a.close()
        time.sleep(0.5)
        assert meta(core, "ep-tok1")["connected"] is True, "b still uses the token"
    finally:
        b.close()
    wait_for("disconnected after the last session", lambda: meta(core, "ep-tok1")["connected"] is False)
    assert series(core, "ep-tok1") == [1.0, 0.0]
    assert meta(core, "ep-tok2") == {}, "an endpoint nobody used has no connectivity yet"


def test_an_idle_endpoint_is_disconnected_while_its_session_lives(tmp_path):
    core = Core(tmp_path, idle_timeout_secs=1)
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="gw")
    try:
        assert c.request(f"kp1/{AVN}/dcx/tok3/json/1", [{"x": 1}]) == ("status", b"")
        assert meta(core, "ep-tok3")["connected"] is True
        wait_for("the idle disconnect", lambda: meta(core, "ep-tok3")["connected"] is False, timeout=15)
        assert c.request(f"kp1/{AVN}/dcx/tok3/json/2", [{"x": 2}]) == ("status", b"")
        assert meta(core, "ep-tok3")["connected"] is True
        assert series(core, "ep-tok3") == [1.0, 0.0, 1.0]
    finally:
        c.close()
        assert core.proc.stop() == 0, core.proc.output()


def test_stopping_the_core_disconnects_the_endpoints_of_live_sessions(tmp_path):
    core = Core(tmp_path)
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="gw")
    assert c.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"x": 1}]) == ("status", b"")
    assert c.request(f"kp1/{AVN}/dcx/tok2/json/2", [{"x": 1}]) == ("status", b"")
    assert meta(core, "ep-tok1")["connected"] is True
    try:
        core.stop()  # the client is still connected
    finally:
        c.close()
    for ep in ("ep-tok1", "ep-tok2"):
        assert meta(core, ep)["connected"] is False, ep
        assert series(core, ep) == [1.0, 0.0]
