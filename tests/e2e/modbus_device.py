"""A real Modbus device for the tests: a pymodbus server on 127.0.0.1 or on a serial port.

Usage: modbus_device.py SPEC_JSON
SPEC_JSON = {
  "transport": "tcp" | "rtu_over_tcp" | "rtu",
  "port": <tcp port> (tcp, rtu_over_tcp),
  "serial": "<device path>" (rtu),
  "slaves": {"<unit id>": {"hr": [...], "ir": [...], "co": [...], "di": [...]}},
  "log": "<path>" (optional: one line "<unit> <table> <address> <count>" per read served)
}
Each table is a list of values starting at protocol address 0; reading past its end is
answered with an "illegal data address" exception. Unit IDs not listed get no answer.
Runs until killed (the tests stop it by PID).
"""

import json
import logging
import sys

from pymodbus import FramerType
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartSerialServer, StartTcpServer


class LoggedBlock(ModbusSequentialDataBlock):
    """A data block that appends every read it serves to the request log."""

    def __init__(self, values, log, unit, table):
        super().__init__(1, values)
        self.log, self.unit, self.table = log, unit, table

    def getValues(self, address, count=1):  # noqa: N802 (pymodbus' name)
        self.log.write(f"{self.unit} {self.table} {address - 1} {count}\n")
        self.log.flush()
        return super().getValues(address, count)


def block(values, log=None, unit=0, table=""):
    # pymodbus maps protocol address N to block index N+1, so blocks start at 1.
    values = list(values) if values else [0]
    if log is None:
        return ModbusSequentialDataBlock(1, values)
    return LoggedBlock(values, log, unit, table)


def main() -> None:
    spec = json.loads(sys.argv[1])
    log = open(spec["log"], "a", encoding="ascii") if spec.get("log") else None  # noqa: SIM115
    devices = {
        int(unit): ModbusDeviceContext(
            **{table: block(t.get(table), log, unit, table) for table in ("hr", "ir", "co", "di")}
        )
        for unit, t in spec["slaves"].items()
    }
    context = ModbusServerContext(devices=devices, single=False)
    logging.basicConfig(level=logging.WARNING)
    if spec["transport"] == "rtu":
        StartSerialServer(context=context, framer=FramerType.RTU, port=spec["serial"], baudrate=19200,
                          ignore_missing_devices=True)
    else:
        framer = FramerType.RTU if spec["transport"] == "rtu_over_tcp" else FramerType.SOCKET
        StartTcpServer(context=context, framer=framer, address=("127.0.0.1", spec["port"]),
                       ignore_missing_devices=True)


if __name__ == "__main__":
    main()
