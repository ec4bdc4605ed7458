"""The one place the end-to-end tests write kp-gateway configurations.

Tests describe a configuration as Python values with the builders below and `render`
turns it into TOML (read back with `tomllib` before it is written, so a builder mistake
fails here and not as a confusing gateway error). Keys are the ones documented in
config/README.md; a builder only fills in what every test would otherwise repeat.
"""

import os
import tomllib
import uuid
from pathlib import Path


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as a TOML value")


def _is_table_array(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _table(path: str, table: dict, out: list, array: bool = False) -> None:
    plain = {k: v for k, v in table.items() if v is not None and not isinstance(v, dict) and not _is_table_array(v)}
    if path:
        out.append(f"[[{path}]]" if array else f"[{path}]")
    for k, v in plain.items():
        out.append(f"{k} = {_scalar(v)}")
    for k, v in table.items():
        sub = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            _table(sub, v, out)
        elif _is_table_array(v):
            for item in v:
                _table(sub, item, out, array=True)


def render(doc: dict) -> str:
    """A configuration document (nested dicts; lists of dicts are arrays of tables) as TOML."""
    out: list = []
    _table("", doc, out)
    text = "\n".join(out) + "\n"
    tomllib.loads(text)  # a builder mistake fails here, with the TOML error
    return text


def on_test_bus(core: dict) -> dict:
    """With KP_TEST_BUS=nats (tests/run.sh's second pass), the core runs on NATS: one
    nats-server for the run, and a KPC instance name of its own per core, so cores of
    different tests are no replicas of each other."""
    if os.environ.get("KP_TEST_BUS") != "nats" or "nats" in core:
        return core
    import nats_shared

    return {**core, "nats": {"servers": [nats_shared.url()], "kpc_instance": f"kpc-{uuid.uuid4().hex[:12]}"}}


def config(state: Path, *, upstream=None, core=None, buses=(), devices=(), buffer=None, gateway=None,
           log_level="debug") -> str:
    """A whole configuration: `[gateway]` with the state directory, then the given sections."""
    doc = {"gateway": {"state_dir": state, "log_level": log_level, **(gateway or {})}}
    if upstream is not None:
        doc["upstream"] = upstream
    if buffer is not None:
        doc["buffer"] = buffer
    if core is not None:
        doc["core"] = on_test_bus(core)
    if buses:
        doc["modbus"] = {"buses": list(buses)}
    if devices:
        doc["devices"] = list(devices)
    return render(doc)


def upstream(port: int, **keys) -> dict:
    """`[upstream]` to 127.0.0.1:`port`."""
    return {"host": "127.0.0.1", "port": port, **keys}


def core(mqtt_port: int, versions=("plant-v1",), application="plant", **keys) -> dict:
    """`[core]` with its MQTT listener on 127.0.0.1 and one application."""
    mqtt = {"listen": f"127.0.0.1:{mqtt_port}", **keys.pop("mqtt", {})}
    return {"mqtt": mqtt, "applications": [{"name": application, "versions": list(versions)}], **keys}


def tcp_bus(name: str, port: int, kind: str = "tcp", **keys) -> dict:
    """A Modbus bus over TCP (`kind` = `tcp` or `rtu_over_tcp`) to 127.0.0.1:`port`."""
    return {"name": name, "kind": kind, "address": f"127.0.0.1:{port}", **keys}


def rtu_bus(name: str, port: Path, **keys) -> dict:
    """A Modbus RTU bus on a serial port (a pseudo-terminal in the tests)."""
    return {"name": name, "kind": "rtu", "port": port, **keys}


def point(name: str, address: int, type: str = None, **keys) -> dict:
    """One Modbus point (`type` left out for coils and discrete inputs)."""
    p = {"name": name, "address": address}
    if type is not None:
        p["type"] = type
    return {**p, **keys}


def modbus_device(name: str, bus: str, points, unit_id: int = 1, app_version="plant-v1", token=None,
                  **keys) -> dict:
    """A device on a Modbus bus; its token is its name unless given."""
    return {"name": name, "token": token or name, "app_version": app_version,
            "modbus": {"bus": bus, "unit_id": unit_id}, "points": list(points), **keys}


def serial_line_device(name: str, port: Path, format: str, app_version="plant-v1", **serial) -> dict:
    """A sensor printing lines on a serial port."""
    return {"name": name, "token": name, "app_version": app_version,
            "serial_line": {"port": port, "format": format, **serial}}


def simulated_device(name: str, app_version: str, poll_interval_ms: int, points, token=None) -> dict:
    """A simulated device; `points` are `{"name", "waveform"?, ...}` tables."""
    return {"name": name, "token": token or name, "app_version": app_version, "poll_interval_ms": poll_interval_ms,
            "simulated": {}, "points": list(points)}
