"""The field side against real Modbus devices (pymodbus over TCP, RTU over TCP, and RTU
on a socat pseudo-terminal pair), cross-checked with mbpoll, plus a serial NMEA sensor."""

import re
import subprocess
import time

import pytest
from pymodbus.client import ModbusTcpClient

import configs
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


def typed_points(order: str) -> list:
    out = [configs.point(n, a, t, order=order) for n, a, t, _, _ in TYPED]
    out.append(configs.point(TEXT[0], TEXT[1], "string", length=TEXT[2], order=order))
    out.append(configs.point(FLAG[0], FLAG[1], "bool", bit=FLAG[2]))
    return out


def standalone(tmp_path, buses=(), devices=()) -> str:
    return configs.config(tmp_path / "state", core=configs.core(free_port()), buses=buses, devices=devices)


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
    extra = [configs.point("relay", 1, table="coil"), configs.point("door", 2, table="discrete_input")]
    devices = [
        configs.modbus_device(f"meter-{o}", "field", typed_points(o) + extra, unit_id=u, poll_interval_ms=200)
        for u, o in ORDERS.items()
    ]
    bus = configs.tcp_bus("field", port, kind=transport)
    gw = Gateway(tmp_path, standalone(tmp_path, [bus], devices))
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
    bus = configs.rtu_bus("rs485", pty.a, baud=19200, timeout_ms=300, retries=1, backoff_max_ms=2000)

    def u16(name, address):
        return configs.point(name, address, "u16")

    devices = [
        configs.modbus_device("good", "rs485", [u16("a", 0), u16("b", 1)], unit_id=1, poll_interval_ms=200),
        configs.modbus_device("flaky", "rs485", [u16("ok", 3), u16("unmapped", 40)], unit_id=2, poll_interval_ms=200),
        configs.modbus_device("dead", "rs485", [u16("x", 0)], unit_id=3, poll_interval_ms=200),
    ]
    gw = Gateway(tmp_path, standalone(tmp_path, [bus], devices), args=["--status-every", "1"])
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
    gps = configs.serial_line_device("gps", pty.a, "nmea", baud=4800)
    gw = Gateway(tmp_path, standalone(tmp_path, devices=[gps]), args=["--status-every", "1"])
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
    bus = configs.rtu_bus("usb", pty.a, baud=19200, timeout_ms=300, retries=0, backoff_max_ms=1000)
    meter = configs.modbus_device("meter", "usb", [configs.point("v", 0, "u16")], poll_interval_ms=200)
    gw = Gateway(tmp_path, standalone(tmp_path, [bus], [meter]))
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


def test_points_with_their_own_period_are_polled_at_it_and_still_merged(tmp_path):
    """Two points at 100 ms and two at the device's 1 s: the device serves exactly two kinds
    of read (each group merged into one), at rates that follow the two periods."""
    port = free_port()
    log = tmp_path / "requests.log"
    spec = {"transport": "tcp", "port": port, "log": str(log), "slaves": {"1": {"hr": list(range(100, 120))}}}
    device = start_modbus_device(tmp_path, spec)
    points = [
        configs.point("slow_a", 0, "u16"),
        configs.point("slow_b", 1, "u16"),
        configs.point("fast_a", 10, "u16", poll_interval_ms=100),
        configs.point("fast_b", 11, "u16", poll_interval_ms=100),
    ]
    dev = configs.modbus_device("meter", "field", points, poll_interval_ms=1000)
    gw = Gateway(tmp_path, standalone(tmp_path, [configs.tcp_bus("field", port)], [dev]))
    db = tmp_path / "state" / "core.sqlite"

    def reads():
        lines = log.read_text().splitlines() if log.exists() else []
        return [tuple(line.split()[1:]) for line in lines]

    try:
        wait_for("both groups polled", lambda: {("hr", "0", "2"), ("hr", "10", "2")} <= set(reads()))
        before, t0 = reads(), time.monotonic()
        wait_for("4 s of polling", lambda: time.monotonic() - t0 >= 4.0, timeout=30)
        after, window = reads(), time.monotonic() - t0
        samples = core_samples(db, "meter")
    finally:
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
    assert set(after) == {("hr", "0", "2"), ("hr", "10", "2")}, "reads merged within each group only"
    new = after[len(before):]
    slow, fast = new.count(("hr", "0", "2")), new.count(("hr", "10", "2"))
    # The grid bounds the counts from above whatever the machine's speed (+1 for each end of
    # the window); from below only loosely, since a loaded machine skips missed slots.
    assert 2 <= slow <= window / 1.0 + 2, (slow, window)
    assert fast <= window / 0.1 + 2, (fast, window)
    assert fast >= 5 * (slow - 1), (fast, slow, window)
    # Each group's poll is its own sample with only its points.
    kinds = {frozenset(k for k in s if k != "timestamp") for s in samples}
    assert kinds == {frozenset({"slow_a", "slow_b"}), frozenset({"fast_a", "fast_b"})}, kinds
    slow_values = [s for s in samples if "slow_a" in s][-1]
    fast_values = [s for s in samples if "fast_a" in s][-1]
    assert (slow_values["slow_a"], slow_values["slow_b"]) == (100, 101)
    assert (fast_values["fast_a"], fast_values["fast_b"]) == (110, 111)
