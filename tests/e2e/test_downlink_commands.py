"""Downlink: 11/CEP commands from a Kaa-like server become Modbus writes.

The upstream is a real Mosquitto broker; a paho-mqtt client plays the Kaa server: it
confirms data batches, pushes commands and collects results. The device is pymodbus;
the test reads its registers back independently."""

import pytest
from pymodbus.client import ModbusTcpClient

import configs
from conftest import Gateway, free_port, start_modbus_device, wait_for
from kaa_server import KaaServer

AVN, TOKEN = "plant-v1", "boiler-1"
BASE = f"kp1/{AVN}/cex/{TOKEN}"


@pytest.fixture
def kaa(mosquitto):
    k = KaaServer(mosquitto.port)
    yield k
    k.close()


def test_write_commands_reach_the_device_and_results_come_back(tmp_path, mosquitto, kaa):
    mport = free_port()
    slaves = {"1": {"hr": [0, 0, 0, 0b0001, 55, 0], "co": [0, 0]}}
    device = start_modbus_device(tmp_path, {"transport": "tcp", "port": mport, "slaves": slaves})
    points = [
        configs.point("setpoint", 0, "f32", writable=True),
        configs.point("speed", 2, "u16", writable=True),
        configs.point("alarm_ack", 3, "bool", bit=3, writable=True),
        configs.point("model", 4, "u16"),
        configs.point("speed_fc16", 5, "u16", writable=True, write_function="multiple"),
        configs.point("relay", 1, table="coil", writable=True),
    ]
    boiler = configs.modbus_device("boiler", "plant", points, token=TOKEN, app_version=AVN, poll_interval_ms=500)
    config = configs.config(tmp_path / "state", upstream=configs.upstream(mosquitto.port, client_id="gw-under-test"),
                            buses=[configs.tcp_bus("plant", mport)], devices=[boiler])
    gw = Gateway(tmp_path, config)
    mb = ModbusTcpClient("127.0.0.1", port=mport)
    try:
        assert kaa.observed.wait(20), gw.proc.output()  # subscribed, and asked for pending commands
        kaa.push(BASE, [
            {"id": "c1", "payload": {"point": "setpoint", "value": 21.5}},
            {"id": "c2", "payload": {"point": "speed", "value": 1500}},
            {"id": "c3", "payload": {"point": "alarm_ack", "value": True}},
            {"id": "c4", "payload": {"point": "relay", "value": True}},
            {"id": "c5", "payload": {"point": "speed_fc16", "value": 777}},
            {"id": "bad-range", "payload": {"point": "speed", "value": 70000}},
            {"id": "no-point", "payload": {"point": "nope", "value": 1}},
            {"id": "read-only", "payload": {"point": "model", "value": 1}},
            {"id": "no-value", "payload": {"point": "speed"}},
        ])
        ids = ["c1", "c2", "c3", "c4", "c5", "bad-range", "no-point", "read-only", "no-value"]
        wait_for("every result", lambda: all(kaa.result(i) for i in ids))
        codes = {i: kaa.result(i)["statusCode"] for i in ids}
        assert codes == {"c1": 200, "c2": 200, "c3": 200, "c4": 200, "c5": 200,
                         "bad-range": 400, "no-point": 404, "read-only": 403, "no-value": 400}
        assert kaa.result("c1")["payload"] == {"point": "setpoint", "value": 21.5}  # the read-back value
        assert "out of range" in kaa.result("bad-range")["reasonPhrase"]

        assert mb.connect()
        regs = mb.read_holding_registers(0, count=6, device_id=1).registers
        assert ModbusTcpClient.convert_from_registers(regs[0:2], ModbusTcpClient.DATATYPE.FLOAT32) == 21.5
        assert regs[2] == 1500
        assert regs[3] == 0b1001  # bit 3 set, bit 0 kept (read-modify-write)
        assert regs[4] == 55      # read-only point untouched
        assert regs[5] == 777
        assert mb.read_coils(0, count=2, device_id=1).bits[:2] == [False, True]

        # The same command again (a resend) is answered, not executed twice.
        kaa.push(BASE, [{"id": "c2", "payload": {"point": "speed", "value": 9}}])
        wait_for("the repeated answer", lambda: sum(r["id"] == "c2" for r in kaa.results) >= 2)
        assert mb.read_holding_registers(2, count=1, device_id=1).registers == [1500]
        # The polled samples carry the written values.
        wait_for("a sample with the new values", lambda: any(
            s.get("speed") == 1500 and s.get("setpoint") == 21.5 and s.get("relay") is True for s in kaa.received()))
    finally:
        mb.close()
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
