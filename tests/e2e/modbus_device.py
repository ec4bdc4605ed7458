"""A real Modbus device for the tests: a pymodbus server on 127.0.0.1 or on a serial port.

Usage: modbus_device.py SPEC_JSON
SPEC_JSON = {
  "transport": "tcp" | "rtu_over_tcp" | "rtu",
  "port": <tcp port> (tcp, rtu_over_tcp),
  "serial": "<device path>" (rtu),
  "slaves": {"<unit id>": {"hr": [...], "ir": [...], "co": [...], "di": [...]}}
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


def block(values):
    # pymodbus maps protocol address N to block index N+1, so blocks start at 1.
    return ModbusSequentialDataBlock(1, list(values) if values else [0])


def main() -> None:
    spec = json.loads(sys.argv[1])
    devices = {
        int(unit): ModbusDeviceContext(
            hr=block(t.get("hr")), ir=block(t.get("ir")), co=block(t.get("co")), di=block(t.get("di"))
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
