"""Gateway footprint in bridge mode (not a test): RSS and CPU of `kp-gateway` polling
10 Modbus TCP devices x 30 holding registers every second, forwarding over its one
upstream MQTT connection to the embedded core running as a separate process.

The devices are one pymodbus server (tests/e2e/modbus_device.py) with 10 unit IDs.
After a warm-up the gateway's RSS (VmRSS), peak RSS (VmHWM), CPU seconds and samples the
core stored are read over the measuring window. The gateway runs with the packaged
unit's allocator settings (`MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2`) and, when
the script runs as root, as the unprivileged user `nobody` with the binary owned by root,
as the packaged service runs.

Usage (after `cargo build --release -p kp-gateway`):
  tests/.venv/bin/python tests/bench/gateway_rss.py [--seconds 120] [--warmup 40]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("KP_GATEWAY_BIN", str(ROOT / "target" / "release" / "kp-gateway"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import configs  # noqa: E402
import conftest  # noqa: E402
from conftest import BIN, Core, Proc, free_port, start_modbus_device, wait_for  # noqa: E402
from core_vs_broker import cpu_seconds, status_kib  # noqa: E402

DEVICES, REGISTERS = 10, 30


def rss_by_mapping(pid: int) -> dict:
    """Resident KiB per mapped file (or [heap], [anon]…), largest first."""
    rss, name = {}, "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
            name = head[5] if len(head) > 5 else "[anon]"
        elif head[0] == "Rss:":
            rss[name] = rss.get(name, 0) + int(head[1])
    return dict(sorted(rss.items(), key=lambda kv: -kv[1])[:8])


def symbol_order_matched(binary: Path) -> str:
    """How many names of gateway/link/symbol-order.txt the binary has ("n/m"), i.e. how much
    of its hot-code ordering took effect (see gateway/build.rs); "no symbols" when stripped."""
    listed = (ROOT / "gateway" / "link" / "symbol-order.txt").read_text().split()
    out = subprocess.run(["nm", "--defined-only", str(binary)], capture_output=True, text=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    return f"{sum(n in names for n in listed)}/{len(listed)}" if names else "no symbols"


def start_devices(tmp: Path) -> tuple:
    """One pymodbus server with DEVICES unit IDs of REGISTERS holding registers; (proc, port)."""
    port = free_port()
    slaves = {str(u): {"hr": [u * 100 + i for i in range(REGISTERS)]} for u in range(1, DEVICES + 1)}
    return start_modbus_device(tmp, {"transport": "tcp", "port": port, "slaves": slaves}), port


def measure(pid: int, seconds: int, warmup: int, count) -> dict:
    """CPU seconds, RSS and samples delivered (`count()`) over `seconds` after `warmup`."""
    time.sleep(warmup)
    cpu0, n0, t0 = cpu_seconds(pid), count(), time.monotonic()
    time.sleep(seconds)
    cpu1, n1, t1 = cpu_seconds(pid), count(), time.monotonic()
    r = {"devices": DEVICES, "registers": REGISTERS, "poll_ms": 1000, "seconds": round(t1 - t0, 1),
         "cpu_s": round(cpu1 - cpu0, 2), "rss_kib": status_kib(pid, "VmRSS"),
         "peak_rss_kib": status_kib(pid, "VmHWM"),
         "threads": int(next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                             if x.startswith("Threads:")).split()[1]),
         "samples_delivered": n1 - n0}
    for k in ("RssAnon", "RssFile"):
        r[k] = status_kib(pid, k)
    r["rss_by_mapping_kib"] = rss_by_mapping(pid)
    return r


def as_service_user(tmp: Path, args: list) -> list:
    """Run as the packaged service does: a user of its own, not the owner of the binary
    (the kernel treats the code pages of a file one may not write differently). Run as
    root, the command drops to `nobody`; the gateway's folders are handed to it."""
    if os.geteuid() != 0:
        return args
    os.chmod(tmp, 0o755)
    state = tmp / "gw-state"
    state.mkdir(exist_ok=True)
    os.chown(state, 65534, 65534)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args]


def run_kp_gateway(tmp: Path, device_port: int, seconds: int, warmup: int) -> dict:
    """kp-gateway in bridge mode on the devices, forwarding to the core (a separate process)."""
    # The core runs from a copy of the binary: in the field the platform is another
    # machine, and two processes of one file share its code pages (the kernel does not
    # reclaim shared pages for one of them, see gateway/src/footprint.rs).
    shutil.copy(BIN, tmp / "core-bin")
    conftest.BIN = tmp / "core-bin"
    core = Core(tmp, extra_tokens=[f"dev{u}" for u in range(1, DEVICES + 1)])
    points = [configs.point(f"r{i}", i, "u16") for i in range(REGISTERS)]
    devices = [configs.modbus_device(f"dev{u}", "bus", points, unit_id=u, app_version=core.APP_VERSION,
                                     poll_interval_ms=1000) for u in range(1, DEVICES + 1)]
    up = configs.upstream(core.port, client_id="rss-bench", username=core.USER, password=core.PASSWORD)
    cfg = tmp / "gateway.toml"
    cfg.write_text(configs.config(tmp / "gw-state", upstream=up, buses=[configs.tcp_bus("bus", device_port)],
                                  devices=devices, log_level="warn"))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_ARENA_MAX="2")
    gw = Proc("gateway", as_service_user(tmp, [str(BIN), "-c", str(cfg)]), tmp / "gw.log", env=env)
    try:
        count = lambda: core.query("SELECT count(*) FROM data_samples")[0][0]  # noqa: E731
        wait_for("the first samples in the core", lambda: count() > 0, timeout=60)
        return measure(gw.pid, seconds, warmup, count)
    finally:
        gw.stop()
        core.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-rss-") as d:
        tmp = Path(d)
        device, port = start_devices(tmp)
        try:
            r = run_kp_gateway(tmp, port, a.seconds, a.warmup)
            r["symbol_order_matched"] = symbol_order_matched(Path(BIN))
            print(json.dumps(r))
        finally:
            device.stop()


if __name__ == "__main__":
    main()
