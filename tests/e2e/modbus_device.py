"""A real Modbus TCP device for the tests: a pymodbus server on 127.0.0.1.

Usage: modbus_device.py PORT HOLDING_JSON INPUT_JSON
HOLDING_JSON / INPUT_JSON: JSON lists of 16-bit register values starting at address 0.
Runs until killed (the tests stop it by PID).
"""

import json
import logging
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartTcpServer


def main() -> None:
    port = int(sys.argv[1])
    holding = json.loads(sys.argv[2])
    inputs = json.loads(sys.argv[3])
    # pymodbus maps protocol address N to block index N+1 (its "zero_mode" off), so the
    # blocks start at 1 to make protocol address 0 the first value.
    device = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, holding),
        ir=ModbusSequentialDataBlock(1, inputs),
    )
    context = ModbusServerContext(devices=device, single=True)
    logging.basicConfig(level=logging.WARNING)
    StartTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    main()
