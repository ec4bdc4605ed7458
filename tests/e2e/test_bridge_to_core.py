"""Bridge mode: kp-gateway forwards over its one upstream MQTT connection (rumqttc,
username/password) to a separate core process, which answers /status or /error."""

import json
from contextlib import closing
import sqlite3

import configs
from conftest import BIN, Proc, wait_for


def bridge_config(tmp_path, core, buses=(), devices=()) -> str:
    up = configs.upstream(core.port, client_id="bridge-under-test", username=core.USER, password=core.PASSWORD,
                          keepalive_secs=10, response_timeout_secs=5)
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(configs.config(tmp_path / "gw-state", upstream=up, buses=buses, devices=devices))
    return str(cfg)


def sim_device(name: str, token: str, avn: str = "demo-v1") -> dict:
    wave = {"name": "wave", "waveform": "sawtooth", "period_secs": 10, "amplitude": 1.0, "center": 5.0}
    dev = configs.simulated_device(name, avn, 100, [wave], token=token)
    return {**dev, "metadata": {"location": "roof", "floor": 3}}


def buffer_rows(tmp_path, table: str):
    db = tmp_path / "gw-state" / "buffer.sqlite"
    if not db.exists():
        return None
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        # The file appears before the gateway's first migration has made its tables.
        if not c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            return None
        return c.execute(f"SELECT * FROM {table}").fetchall()


def test_samples_are_confirmed_and_leave_the_buffer(tmp_path, core):
    gw = Proc("gateway", [str(BIN), "-c", bridge_config(tmp_path, core, devices=[sim_device("sim", "tok1")])], tmp_path / "gw.log")
    try:
        wait_for("20 samples in the core", lambda: core.query("SELECT count(*) FROM data_samples WHERE endpoint_id='ep-tok1'")[0][0] >= 20)
    finally:
        assert gw.stop() == 0, gw.output()
    # After a clean stop everything taken was either confirmed (deleted) or is still buffered;
    # the core holds each buffered-then-confirmed sample at least once.
    stored = core.query("SELECT sample FROM data_samples WHERE endpoint_id='ep-tok1'")
    stamps = [json.loads(s)["timestamp"] for (s,) in stored]
    assert stamps == sorted(stamps), "samples of one endpoint arrive oldest first"
    assert "client \"bridge-under-test\" connected" in core.proc.output()
    # Endpoint metadata was published on connect (10/EPMP update/keys).
    meta = dict(core.query("SELECT key, value FROM metadata WHERE endpoint_id='ep-tok1'"))
    assert {k: meta[k] for k in ("location", "floor")} == {"location": '"roof"', "floor": "3"}
    # EPL: the gateway's session used the token, then disconnected when it stopped.
    assert meta["connected"] == "false"
    remaining = buffer_rows(tmp_path, "samples")
    assert len(remaining) <= 5, f"{len(remaining)} samples not confirmed after a clean stop"


def test_a_4xx_answer_parks_the_batch_in_the_dead_letter_table(tmp_path, core):
    devices = [sim_device("good", "tok2"), sim_device("stranger", "not-provisioned")]
    gw = Proc("gateway", [str(BIN), "-c", bridge_config(tmp_path, core, devices=devices)], tmp_path / "gw.log")
    try:
        dead = wait_for("parked samples", lambda: buffer_rows(tmp_path, "dead_letters"))
        wait_for("good samples in the core", lambda: core.query("SELECT count(*) FROM data_samples WHERE endpoint_id='ep-tok2'")[0][0] > 0)
    finally:
        assert gw.stop() == 0, gw.output()
    statuses = {(row[2], row[5]) for row in dead}  # (token, status)
    assert statuses == {("not-provisioned", 401)}
    assert "parked in the dead-letter table" in gw.output()


def test_a_command_queued_while_the_gateway_was_away_runs_when_it_connects(tmp_path, core):
    """The gateway (bridge) to a separate core: a Modbus write command created over the
    core's REST API before the gateway connects is fetched by its observe request on
    connect, written to the pymodbus device, and its result reaches the REST caller."""
    from pymodbus.client import ModbusTcpClient
    from conftest import free_port, start_modbus_device

    mport = free_port()
    device = start_modbus_device(tmp_path, {"transport": "tcp", "port": mport, "slaves": {"1": {"hr": [0]}}})
    code, cmd = core.api("POST", "/api/v1/endpoints/ep-tok2/commands/write?commandTtl=60000",
                         {"point": "level", "value": 321})
    assert code == 202 and cmd["status"] == "PENDING"
    bus = configs.tcp_bus("plant", mport)
    tank = configs.modbus_device("tank", "plant", [configs.point("level", 0, "u16", writable=True)],
                                 token="tok2", app_version="demo-v1", poll_interval_ms=500)
    gw = Proc("gateway", [str(BIN), "-c", bridge_config(tmp_path, core, buses=[bus], devices=[tank])], tmp_path / "gw.log")
    mb = ModbusTcpClient("127.0.0.1", port=mport)
    try:
        done = wait_for("the command's result", lambda: (c := core.api(
            "GET", f"/api/v1/endpoints/ep-tok2/commands/write/{cmd['id']}")[1])["status"] == "EXECUTED" and c)
        assert done["result"]["statusCode"] == 200 and done["result"]["payload"] == {"point": "level", "value": 321}
        assert mb.connect() and mb.read_holding_registers(0, count=1, device_id=1).registers == [321]
        # And one pushed while it is connected, answered within the HTTP call.
        code, live = core.api("POST", "/api/v1/endpoints/ep-tok2/commands/write?awaitTimeout=10000",
                              {"point": "level", "value": 7})
        assert code == 200 and live["result"]["statusCode"] == 200
        assert mb.read_holding_registers(0, count=1, device_id=1).registers == [7]
    finally:
        mb.close()
        assert gw.stop() == 0, gw.output()
        device.stop()
