"""The field side against real Modbus devices (pymodbus over TCP, RTU over TCP, and RTU
on a socat pseudo-terminal pair), cross-checked with mbpoll, plus a serial NMEA sensor."""

import re
import subprocess
import time

import pytest
from pymodbus.client import ModbusTcpClient

from conftest import Gateway, PtyPair, core_samples, free_port, start_modbus_device, wait_for

DT = ModbusTcpClient.DATATYPE
ORDERS = {1: "ABCD", 2: "DCBA", 3: "BADC", 4: "CDAB"}

# name, address, config type, pymodbus type, value
TYPED = [
    ("u16", 0, "u16", DT.UINT16, 4321),
    ("i16", 1, "i16", DT.INT16, -1234),
    ("u32", 2, "u32", DT.UINT32, 3_000_000_000),
    ("i32", 4, "i32", DT.INT32, -2_000_000_000),
    ("u64", 6, "u64", DT.UINT64, 2**63 + 12345),
    ("i64", 10, "i64", DT.INT64, -(2**62) - 7),
    ("f32", 14, "f32", DT.FLOAT32, -21.5),
    ("f64", 16, "f64", DT.FLOAT64, 12345.6789),
]
TEXT = ("text", 20, 4, "kp-gw!")
FLAG = ("flag", 24, 5)  # bit 5 of register 24


def swap(reg: int) -> int:
    return ((reg & 0xFF) << 8) | (reg >> 8)


def registers_for(order: str) -> list:
    """The register image of TYPED/TEXT/FLAG in `order`, encoded by pymodbus itself."""
    regs = [0] * 25
    word_order = "little" if order in ("DCBA", "CDAB") else "big"
    for _, addr, _, dt, value in TYPED:
        words = ModbusTcpClient.convert_to_registers(value, dt, word_order=word_order)
        regs[addr : addr + len(words)] = words
    name, addr, length, text = TEXT
    words = ModbusTcpClient.convert_to_registers(text, DT.STRING)
    regs[addr : addr + length] = words + [0] * (length - len(words))
    if order in ("DCBA", "BADC"):
        regs = [swap(r) for r in regs]
    regs[FLAG[1]] = 0b1000_0010_0001  # bit 5 set, others too (bytes are irrelevant to a bit)
    return regs


def typed_points(order: str) -> str:
    out = [
        f'[[devices.points]]\nname = "{n}"\naddress = {a}\ntype = "{t}"\norder = "{order}"\n' for n, a, t, _, _ in TYPED
    ]
    out.append(f'[[devices.points]]\nname = "{TEXT[0]}"\naddress = {TEXT[1]}\ntype = "string"\nlength = {TEXT[2]}\norder = "{order}"\n')
    out.append(f'[[devices.points]]\nname = "{FLAG[0]}"\naddress = {FLAG[1]}\ntype = "bool"\nbit = {FLAG[2]}\n')
    return "\n".join(out)


def standalone(tmp_path, core_port: int, body: str, apps=("plant-v1",)) -> str:
    versions = ", ".join(f'"{a}"' for a in apps)
    return f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
log_level = "debug"
[core]
[core.mqtt]
listen = "127.0.0.1:{core_port}"
[[core.applications]]
name = "plant"
versions = [{versions}]
{body}
"""


def expected_sample() -> dict:
    exp = {n: v for n, _, _, _, v in TYPED}
    exp[TEXT[0]] = TEXT[3]
    exp[FLAG[0]] = True
    exp["relay"] = True
    exp["door"] = True
    return exp


@pytest.mark.parametrize("transport", ["tcp", "rtu_over_tcp"])
def test_every_type_in_every_byte_order(tmp_path, transport):
    port = free_port()
    spec = {
        "transport": transport,
        "port": port,
        "slaves": {str(u): {"hr": registers_for(o), "co": [0, 1], "di": [1, 0, 1]} for u, o in ORDERS.items()},
    }
    device = start_modbus_device(tmp_path, spec)
    devices = "".join(
        f"""
[[devices]]
name = "meter-{o}"
token = "meter-{o}"
app_version = "plant-v1"
poll_interval_ms = 200
[devices.modbus]
bus = "field"
unit_id = {u}
{typed_points(o)}
[[devices.points]]
name = "relay"
table = "coil"
address = 1
[[devices.points]]
name = "door"
table = "discrete_input"
address = 2
"""
        for u, o in ORDERS.items()
    )
    body = f'[[modbus.buses]]\nname = "field"\nkind = "{transport}"\naddress = "127.0.0.1:{port}"\n{devices}'
    gw = Gateway(tmp_path, standalone(tmp_path, free_port(), body))
    db = tmp_path / "state" / "core.sqlite"
    try:
        for order in ORDERS.values():
            samples = wait_for(f"a sample of the {order} device", lambda: core_samples(db, f"meter-{order}"))
            got = {k: v for k, v in samples[-1].items() if k != "timestamp"}
            assert got == expected_sample(), f"{order}: {got}"
    finally:
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
    # Four slaves on one connection: one planned read each per cycle.
    assert "panicked" not in gw.proc.output()


def test_mbpoll_sees_the_registers_the_gateway_decodes(tmp_path):
    port = free_port()
    regs = registers_for("ABCD")
    device = start_modbus_device(tmp_path, {"transport": "tcp", "port": port, "slaves": {"1": {"hr": regs}}})
    try:
        out = subprocess.run(
            ["mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-r", "1", "-c", "25", "-t", "4:hex", "-1", "127.0.0.1"],
            capture_output=True, text=True, timeout=20,
        )
    finally:
        device.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    served = {int(i) - 1: int(v, 16) for i, v in re.findall(r"\[(\d+)\]:\s+(0x[0-9A-Fa-f]+)", out.stdout)}
    assert served == dict(enumerate(regs))


def test_rtu_bus_with_a_dead_slave_and_one_answering_exceptions(tmp_path):
    pty = PtyPair(tmp_path, "rs485")
    slaves = {"1": {"hr": [100, 200]}, "2": {"hr": [7, 8, 9, 10]}}
    device = start_modbus_device(tmp_path, {"transport": "rtu", "serial": str(pty.b), "slaves": slaves})
    body = f"""
[[modbus.buses]]
name = "rs485"
kind = "rtu"
port = "{pty.a}"
baud = 19200
timeout_ms = 300
retries = 1
backoff_max_ms = 2000

[[devices]]
name = "good"
token = "good"
app_version = "plant-v1"
poll_interval_ms = 200
[devices.modbus]
bus = "rs485"
unit_id = 1
[[devices.points]]
name = "a"
address = 0
type = "u16"
[[devices.points]]
name = "b"
address = 1
type = "u16"

[[devices]]
name = "flaky"
token = "flaky"
app_version = "plant-v1"
poll_interval_ms = 200
[devices.modbus]
bus = "rs485"
unit_id = 2
[[devices.points]]
name = "ok"
address = 3
type = "u16"
[[devices.points]]
name = "unmapped"
address = 40
type = "u16"

[[devices]]
name = "dead"
token = "dead"
app_version = "plant-v1"
poll_interval_ms = 200
[devices.modbus]
bus = "rs485"
unit_id = 3
[[devices.points]]
name = "x"
address = 0
type = "u16"
"""
    gw = Gateway(tmp_path, standalone(tmp_path, free_port(), body), args=["--status-every", "1"])
    db = tmp_path / "state" / "core.sqlite"
    try:
        wait_for("10 samples from the good slave", lambda: len(core_samples(db, "good")) >= 10, timeout=60)
        wait_for("10 samples from the flaky slave", lambda: len(core_samples(db, "flaky")) >= 10, timeout=60)
        wait_for("the dead slave reported as failing", lambda: "status: device dead failing" in gw.proc.output())
    finally:
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
        pty.stop()
    good = core_samples(db, "good")
    assert {k: v for k, v in good[-1].items() if k != "timestamp"} == {"a": 100, "b": 200}
    flaky = core_samples(db, "flaky")[-1]
    assert flaky["ok"] == 10
    assert "unmapped" not in flaky and "exception" in flaky["bad"]["unmapped"].lower(), flaky
    assert core_samples(db, "dead") == []
    log = gw.proc.output()
    assert re.search(r"modbus dead \(unit 3 on rs485\): poll failed: .*backing off", log), log[-3000:]
    # The dead slave is backed off (probed at most every 2 s, 600 ms per probe), so the
    # others keep their 200 ms pace most of the time. Measured on the gateway's own sample
    # timestamps, not on this test's clock: without backoff every gap would be ≥ 600 ms.
    stamps = [s["timestamp"] for s in good]
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    median = gaps[len(gaps) // 2]
    assert median < 600, f"healthy slaves were starved: median gap {median} ms ({gaps})"


NMEA_GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
NMEA_BAD = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48"
NMEA_RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
NMEA_GSV = "$GPGSV,1,1,00*79"


def test_nmea_sensor_on_a_pty_survives_bad_lines_and_an_unplug(tmp_path):
    pty = PtyPair(tmp_path, "gps")
    body = f"""
[[devices]]
name = "gps"
token = "gps"
app_version = "plant-v1"
[devices.serial_line]
port = "{pty.a}"
baud = 4800
format = "nmea"
"""
    gw = Gateway(tmp_path, standalone(tmp_path, free_port(), body), args=["--status-every", "1"])
    db = tmp_path / "state" / "core.sqlite"

    def send(*lines):
        with open(pty.b, "wb", buffering=0) as f:
            for line in lines:
                f.write(line.encode() + b"\r\n")

    try:
        wait_for("the gateway to open the port", lambda: f"reading {pty.a}" in gw.proc.output())
        send(NMEA_GGA, NMEA_BAD, NMEA_GSV, "garbage \x01\x02", NMEA_RMC)
        samples = wait_for("two samples", lambda: (s := core_samples(db, "gps")) and len(s) >= 2 and s)
        assert samples[0]["latitude"] == 48.1173 and samples[0]["fix_quality"] == 1
        assert samples[1]["speed_knots"] == 22.4 and samples[1]["valid"] is True
        wait_for("bad lines counted", lambda: "2 bad lines" in gw.proc.output())
        assert "NMEA checksum mismatch" in gw.proc.output()

        pty.stop()  # unplug: the device node disappears
        wait_for("the gateway to notice", lambda: "closed or failed; re-opening" in gw.proc.output())
        time.sleep(1.5)
        pty.start()  # plug back in
        wait_for("the port re-opened", lambda: gw.proc.output().count(f"reading {pty.a}") >= 2, timeout=20)
        send(NMEA_GGA)
        wait_for("a sample after the replug", lambda: len(core_samples(db, "gps")) >= 3)
    finally:
        assert gw.stop() == 0, gw.proc.output()
        pty.stop()
    assert len(core_samples(db, "gps")) == 3


def test_an_rtu_bus_recovers_after_the_adapter_is_unplugged(tmp_path):
    pty = PtyPair(tmp_path, "usb")
    spec = {"transport": "rtu", "serial": str(pty.b), "slaves": {"1": {"hr": [42]}}}
    device = start_modbus_device(tmp_path, spec, name="device-1")
    body = f"""
[[modbus.buses]]
name = "usb"
kind = "rtu"
port = "{pty.a}"
baud = 19200
timeout_ms = 300
retries = 0
backoff_max_ms = 1000
[[devices]]
name = "meter"
token = "meter"
app_version = "plant-v1"
poll_interval_ms = 200
[devices.modbus]
bus = "usb"
[[devices.points]]
name = "v"
address = 0
type = "u16"
"""
    gw = Gateway(tmp_path, standalone(tmp_path, free_port(), body))
    db = tmp_path / "state" / "core.sqlite"
    try:
        wait_for("samples before the unplug", lambda: len(core_samples(db, "meter")) >= 3)
        device.stop()
        pty.stop()  # the adapter's device node is gone
        wait_for("the bus to notice", lambda: "cannot open" in gw.proc.output(), timeout=20)
        before = len(core_samples(db, "meter"))
        pty.start()  # plugged back in
        device = start_modbus_device(tmp_path, spec, name="device-2")
        wait_for("samples after the replug", lambda: len(core_samples(db, "meter")) >= before + 3, timeout=30)
        assert "modbus bus usb: open again" in gw.proc.output()
        assert core_samples(db, "meter")[-1]["v"] == 42
    finally:
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
        pty.stop()
