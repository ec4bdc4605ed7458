"""End to end: a real Modbus TCP device (pymodbus) → kp-gateway → embedded core storage.

The register values are encoded by pymodbus itself; the test reads the decoded values back
from the core's time series and compares them exactly with raw × scale + offset."""

import json
import sys
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient
import configs
from conftest import BIN, Proc, free_port, wait_for, wait_port

HERE = Path(__file__).parent
DT = ModbusTcpClient.DATATYPE

# (name, table, address, type, pymodbus type, raw value, scale, offset)
POINTS = [
    ("temp", "holding", 0, "i16", DT.INT16, -215, 0.1, 0.0),
    ("count16", "holding", 1, "u16", DT.UINT16, 65000, 1.0, 0.0),
    ("energy", "holding", 2, "u32", DT.UINT32, 4_000_000_000, 1.0, 0.0),
    ("delta", "holding", 4, "i32", DT.INT32, -70_000, 0.01, 1.0),
    ("ratio", "holding", 6, "f32", DT.FLOAT32, 21.5, 1.0, 0.0),
    ("level", "input", 0, "u16", DT.UINT16, 42, 1.0, -2.0),
]


def registers(table: str) -> list:
    regs = [0] * 16
    for _, t, addr, _, dt, raw, _, _ in POINTS:
        if t == table:
            words = ModbusTcpClient.convert_to_registers(raw, dt)
            regs[addr : addr + len(words)] = words
    return regs


@pytest.fixture
def modbus_device(tmp_path):
    port = free_port()
    spec = {"transport": "tcp", "port": port, "slaves": {"1": {"hr": registers("holding"), "ir": registers("input")}}}
    proc = Proc("pymodbus", [sys.executable, str(HERE / "modbus_device.py"), json.dumps(spec)], tmp_path / "modbus.log")
    wait_port(port, proc)
    yield port
    proc.stop()


def gateway_config(tmp_path, modbus_port: int, core_port: int) -> Path:
    points = [configs.point(n, a, ty, table=t, scale=s, offset=o) for n, t, a, ty, _, _, s, o in POINTS]
    meter = configs.modbus_device("meter", "plant", points, token="meter-1", poll_interval_ms=200)
    meter["modbus"]["vendor"] = "acme"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(configs.config(tmp_path / "state", core=configs.core(core_port),
                                  buses=[configs.tcp_bus("plant", modbus_port)], devices=[meter]))
    return cfg


def test_modbus_registers_reach_the_core_time_series_exactly(tmp_path, modbus_device):
    import sqlite3
    from contextlib import closing

    core_port = free_port()
    gw = Proc("gateway", [str(BIN), "--config", str(gateway_config(tmp_path, modbus_device, core_port))], tmp_path / "gw.log")
    db = tmp_path / "state" / "core.sqlite"
    expected = {f"auto~{n}": raw * s + o for n, _, _, _, _, raw, s, o in POINTS}

    def latest():
        if not db.exists():
            return None
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            rows = c.execute(
                """SELECT ts.name, ts.value FROM time_series ts JOIN tokens t ON t.endpoint_id = ts.endpoint_id
                   WHERE t.token = 'meter-1' AND ts.name LIKE 'auto~%' ORDER BY ts.rowid"""
            ).fetchall()
        got = dict(rows)
        return got if set(got) == set(expected) else None

    try:
        got = wait_for("decoded Modbus values in the core", latest, timeout=30)
        assert got == expected
        assert expected["auto~temp"] == -21.5 and expected["auto~level"] == 40.0
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            meta = dict(c.execute("SELECT m.key, m.value FROM metadata m JOIN tokens t ON t.endpoint_id = m.endpoint_id WHERE t.token='meter-1'").fetchall())
            sample = json.loads(c.execute("SELECT sample FROM data_samples ORDER BY id LIMIT 1").fetchone()[0])
        assert {k: meta[k] for k in ("vendor", "unit_id", "bus")} == {"vendor": '"acme"', "unit_id": "1", "bus": '"plant"'}
        assert meta["connected"] == "true"  # EPL: the gateway's session uses the token
        assert set(sample) == {"timestamp"} | {n for n, *_ in POINTS}
    finally:
        code = gw.stop()
    assert code == 0, gw.output()
    assert "panicked" not in gw.output()
