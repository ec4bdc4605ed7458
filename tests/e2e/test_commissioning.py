"""Commissioning tools against real devices: pymodbus RTU slaves on a socat PTY, scanned,
browsed and written from the command line (on its own link) and from the web page in a
real browser (through the bus's owner task, which pauses that bus's polling meanwhile)."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import configs
from conftest import BIN, Gateway, PtyPair, core_samples, free_port, start_modbus_device, wait_for

JS = Path(__file__).resolve().parent.parent / "js"
PRESENT = [1, 17, 247]
ID_TIMEOUT_MS = 40
FLOAT = -1234.5  # in unit 247's holding registers 10-11, word-swapped (CDAB)
LEVEL = 4242  # unit 17's holding register 0


def cdab(value: float) -> list:
    b = struct.unpack(">I", struct.pack(">f", value))[0]
    return [b & 0xFFFF, b >> 16]


def slaves() -> dict:
    hr247 = [0] * 24
    hr247[10:12] = cdab(FLOAT)
    hr247[12:14] = [0x4B50, 0x2D47]  # "KP-G"
    # Unit 17 is an XY-MD02 (input registers 1-2: 21.5 °C, 45.5 %RH) with a level in holding 0.
    return {"1": {"hr": [215, 1000]}, "17": {"hr": [LEVEL], "ir": [0, 215, 455]}, "247": {"hr": hr247}}


def cli(*args, check=True):
    r = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, f"{args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_cli_scan_read_and_write_on_an_rtu_line(tmp_path):
    pty = PtyPair(tmp_path, "rs485")
    device = start_modbus_device(tmp_path, {"transport": "rtu", "serial": str(pty.b), "slaves": slaves()})
    line = ["--rtu", str(pty.a), "--baud", "19200"]
    try:
        scan = json.loads(cli("scan", *line, "--id-timeout-ms", str(ID_TIMEOUT_MS), "--json").stdout)
        text = cli("read", *line, "-a", "247", "-r", "10", "-n", "4").stdout
        data = json.loads(cli("read", *line, "-a", "247", "-r", "10", "-n", "2", "--json").stdout)
        refused = cli("write", *line, "-a", "247", "-r", "20", "--type", "f32", "--order", "CDAB", "--", "12.25",
                      check=False)
        cli("write", *line, "-a", "247", "-r", "20", "--type", "f32", "--order", "CDAB", "--yes", "--", "12.25")
        back = json.loads(cli("read", *line, "-a", "247", "-r", "20", "-n", "2", "--json").stdout)
        coil = cli("write", *line, "-a", "1", "-t", "input", "-r", "0", "--yes", "5", check=False)
    finally:
        device.stop()
        pty.stop()
    assert [h["unit"] for h in scan["found"]] == PRESENT
    assert scan["done"] == scan["total"] == 247 and scan["finished"]
    # Each of the 244 absent IDs costs at least the time-out; the scan adds little to it.
    absent = 247 - len(PRESENT)
    assert scan["elapsed_ms"] >= absent * ID_TIMEOUT_MS, scan
    assert scan["lower_bound_ms"] >= absent * ID_TIMEOUT_MS
    # ... and costs little more than them (a generous bound: a loaded machine must pass).
    assert scan["elapsed_ms"] <= 2 * scan["lower_bound_ms"] + 10_000, scan
    assert "32-bit CDAB" in text and "-1234.5" in text and "KP-G" in text
    floats = {w["order"]: w["float"] for w in data["interpretations"][0]["w32"]}
    assert floats["CDAB"] == "-1234.5"
    assert sum(1 for v in floats.values() if v == "-1234.5") == 1, floats
    assert data["words"] == cdab(FLOAT)
    assert refused.returncode == 1 and "--yes" in refused.stderr, "a write without a terminal needs --yes"
    assert back["words"] == cdab(12.25)
    assert coil.returncode == 1 and "read-only" in coil.stderr


def site(tmp_path: Path, pty: PtyPair, mqtt_port: int, web_port: int) -> str:
    bus = configs.rtu_bus("rs485", pty.a, baud=19200, timeout_ms=300, retries=0)
    meter = configs.modbus_device("meter", "rs485", [configs.point("t", 0, "u16")], unit_id=1,
                                  poll_interval_ms=200)
    text = configs.config(tmp_path / "state", core=configs.core(mqtt_port), buses=[bus], devices=[meter],
                          log_level="info")
    return text + f'\n[web]\nlisten = "127.0.0.1:{web_port}"\n'


def test_commissioning_in_the_browser_scan_add_browse_write(tmp_path):
    pty = PtyPair(tmp_path, "rs485")
    device = start_modbus_device(tmp_path, {"transport": "rtu", "serial": str(pty.b), "slaves": slaves()})
    mqtt_port, web_port = free_port(), free_port()
    gw = Gateway(tmp_path, site(tmp_path, pty, mqtt_port, web_port))
    db = tmp_path / "state/core.sqlite"
    shots = tmp_path / "shots"
    shots.mkdir()
    try:
        wait_for("the meter's first samples", lambda: len(core_samples(db, "meter")) >= 3, timeout=60)
        # The service owns the port: a second opener is told so and sends nothing.
        busy = cli("read", "--rtu", str(pty.a), "-a", "1", "-r", "0", check=False)
        assert busy.returncode == 1 and "in use" in busy.stderr, busy.stderr
        spec = {"base": f"http://127.0.0.1:{web_port}", "codeFile": str(tmp_path / "state/web/setup-code"),
                "password": "commission-2026-walk", "bus": "rs485", "idTimeoutMs": 100,
                "addUnit": 17, "profile": "xy-md02", "deviceToken": "tank-tok", "appVersion": "plant-v1",
                "live": {"temperature": "21.5 °C", "humidity": "45.5 %RH", "level": str(LEVEL)},
                "floatUnit": 247, "floatAddress": 10, "writeAddress": 20, "writeValue": 12.25,
                "shots": str(shots)}
        walk = subprocess.run(["node", str(JS / "commission_walk.js"), json.dumps(spec)], cwd=JS,
                              capture_output=True, text=True, timeout=900)
        out = walk.stdout.strip().splitlines()
        result = json.loads(out[-1]) if out else {}
        assert walk.returncode == 0, f"{result.get('error')}\n{walk.stderr}\nsteps done: {result.get('steps')}"
        # Polling resumes after the scan: samples taken after it ended.
        wait_for("the meter polled after the scan",
                 lambda: any(s["timestamp"] > result["scanEndMs"] for s in core_samples(db, "meter")), timeout=60)
    finally:
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
        pty.stop()
        if os.environ.get("KP_WEB_SHOTS"):
            shutil.copytree(shots, os.environ["KP_WEB_SHOTS"], dirs_exist_ok=True)
    log = gw.proc.output()
    assert result["found"] == PRESENT, result
    assert "polling paused" in log and "found [1, 17, 247]; polling resumes" in log
    # Polling of the scanned bus paused while the scan ran: no meter sample from well inside it.
    inside = [s["timestamp"] for s in core_samples(db, "meter")
              if result["scanStartMs"] + 2000 < s["timestamp"] < result["scanEndMs"] - 2000]
    assert inside == [], inside
    assert result["f32"]["CDAB"] == "-1234.5"
    assert [o for o, v in result["f32"].items() if v == "-1234.5"] == ["CDAB"], result["f32"]
    assert result["pointForm"] == {"address": "10", "type": "f32", "order": "CDAB", "unit": "247"}
    assert result["readBack"] == "12.25"
    assert result["profilePoints"] == ["temperature", "humidity"]
    tank = core_samples(db, "tank-tok")
    assert any(s.get("level") == LEVEL and s.get("temperature") == 21.5 and s.get("humidity") == 45.5
               for s in tank), tank[-3:]
    for name in ["scan-running", "scan-done", "device-from-profile", "devices", "registers", "write-confirm"]:
        assert (shots / f"{name}.png").stat().st_size > 5000, name


def profile_image(points: list) -> tuple:
    """Register images (by table) holding a known raw value for every point of a profile,
    encoded by pymodbus itself, and the engineering values the gateway must report."""
    from pymodbus.client import ModbusTcpClient

    dt = ModbusTcpClient.DATATYPE
    types = {"u16": dt.UINT16, "i16": dt.INT16, "u32": dt.UINT32, "i32": dt.INT32, "f32": dt.FLOAT32}
    tables = {"hr": [0] * 400, "ir": [0] * 400}
    expected = {}
    for i, p in enumerate(points):
        ty = p["type"]
        raw = 230.5 + i if ty == "f32" else (-(100 + i) if ty.startswith("i") else 1000 + 7 * i)
        if ty == "u32":
            raw = 70_000 + i  # needs both words
        words = ModbusTcpClient.convert_to_registers(raw, types[ty])
        if p.get("order") == "CDAB":
            words = list(reversed(words))
        table = tables["hr" if p.get("table", "holding") == "holding" else "ir"]
        table[p["address"]: p["address"] + len(words)] = words
        expected[p["name"]] = raw * p.get("scale", 1.0) + p.get("offset", 0.0)
    return tables, expected


def test_every_shipped_profile_decodes_a_device_that_follows_its_map(tmp_path):
    import tomllib

    listing = cli("profiles", "-c", str(tmp_path / "none.toml")).stdout.split("\n")
    ids = [line.split()[0] for line in listing if line.strip()]
    assert len(ids) >= 5, listing
    port = free_port()
    slaves, devices, expected = {}, [], {}
    for unit, pid in enumerate(ids, start=1):
        points = tomllib.loads(cli("profiles", pid, "-c", str(tmp_path / "none.toml")).stdout)["devices"]["points"]
        assert all("unit" in p for p in points if p["name"] not in ("power_factor", "status")
                   and not p["name"].endswith("power_factor")), f"{pid}: units"
        tables, expected[pid] = profile_image(points)
        slaves[str(unit)] = tables
        devices.append(configs.modbus_device(pid, "field", points, unit_id=unit, poll_interval_ms=300))
    device = start_modbus_device(tmp_path, {"transport": "tcp", "port": port, "slaves": slaves})
    gw = Gateway(tmp_path, configs.config(tmp_path / "state", core=configs.core(free_port()),
                                          buses=[configs.tcp_bus("field", port)], devices=devices))
    db = tmp_path / "state/core.sqlite"
    try:
        for pid in ids:
            wait_for(f"a sample of {pid}", lambda: core_samples(db, pid), timeout=60)
    finally:
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
    for pid in ids:
        got = core_samples(db, pid)[-1]
        assert "bad" not in got, (pid, got)
        want = expected[pid]
        assert set(got) - {"timestamp"} == set(want), pid
        for name, value in want.items():
            assert abs(got[name] - value) <= 1e-9 * max(1.0, abs(value)), (pid, name, got[name], value)
