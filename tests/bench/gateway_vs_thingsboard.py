"""kp-gateway next to ThingsBoard IoT Gateway on the same Modbus devices (not a test).

Both poll one pymodbus server with 10 unit IDs x 30 holding registers every second and
forward every reading over MQTT; CPU seconds and RSS of each gateway are read over the
same window after the same warm-up, one gateway after the other, in one run.

- kp-gateway: bridge mode, upstream = the embedded core in a separate process
  (tests/bench/gateway_rss.py); counted: samples the core stored.
- ThingsBoard IoT Gateway (PyPI `thingsboard-gateway`, its Modbus connector, memory
  storage, report strategy ON_RECEIVED): upstream = Mosquitto standing in for the
  ThingsBoard server, with a password file and an ACL so the gateway never receives its
  own publishes; a small paho-mqtt responder answers its `getSessionLimits` request (no
  rate limits) and counts the telemetry messages it publishes. It runs in its own venv
  (tests/.tb-venv, made on first use with the Modbus library version its connector
  pins, so it never installs anything itself), from a temporary folder with a `logs/`
  folder, with its statistics, remote shell and remote configuration off. Its update
  check (HTTPS to updates.thingsboard.io at start) and any other HTTP(S) call go to proxy
  variables pointing at a closed port on 127.0.0.1: nothing leaves the machine.

Usage (after `cargo build --release -p kp-gateway`):
  tests/.venv/bin/python tests/bench/gateway_vs_thingsboard.py [--seconds 120] [--warmup 40]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_rss import measure, run_kp_gateway, start_devices, DEVICES, REGISTERS  # noqa: E402
from conftest import Proc, free_port, wait_for, wait_port  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402

HERE = Path(__file__).resolve().parent
TB_VENV = HERE.parent / ".tb-venv"
TB_VERSION = "3.8.5"
# The version its Modbus connector requires (connectors/modbus/modbus_connector.py):
# with another one installed it would pip-install this one at start.
TB_PACKAGES = [f"thingsboard-gateway=={TB_VERSION}", "pymodbus==3.9.2", "pyserial", "pyserial-asyncio"]
PASSWORD = "bench-password"


def tb_venv() -> Path:
    python = TB_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TB_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TB_PACKAGES], check=True)
    return TB_VENV / "bin" / "thingsboard-gateway"


def tb_config(tmp: Path, mqtt_port: int, device_port: int) -> Path:
    conf = tmp / "tb-config"
    conf.mkdir()
    src = Path(subprocess.run([str(TB_VENV / "bin" / "python"), "-c",
                               "import thingsboard_gateway, os; print(os.path.dirname(thingsboard_gateway.__file__))"],
                              capture_output=True, text=True, check=True).stdout.strip()) / "config"
    (conf / "logs.json").write_text((src / "logs.json").read_text())
    (conf / "tb_gateway.json").write_text(json.dumps({
        "thingsboard": {
            "host": "127.0.0.1", "port": mqtt_port, "remoteShell": False, "remoteConfiguration": False,
            "latencyDebugMode": False, "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False}, "maxPayloadSizeBytes": 8196, "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500, "checkConnectorsConfigurationInSeconds": 60, "handleDeviceRenaming": True,
            "security": {"type": "usernamePassword", "clientId": "tb-gateway", "username": "tbgw",
                         "password": PASSWORD},
            "qos": 1, "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }, indent=1))
    timeseries = [{"tag": f"r{i}", "type": "16uint", "functionCode": 3, "objectsCount": 1, "address": i}
                  for i in range(REGISTERS)]
    slaves = [{"host": "127.0.0.1", "port": device_port, "type": "tcp", "method": "socket", "unitId": u,
               "deviceName": f"dev{u}", "deviceType": "default", "timeout": 35, "byteOrder": "BIG",
               "wordOrder": "BIG", "retries": 3, "retryOnEmpty": True, "retryOnInvalid": True,
               "pollPeriod": 1000, "connectAttemptTimeMs": 5000, "connectAttemptCount": 5,
               "waitAfterFailedAttemptsMs": 300000, "attributes": [], "timeseries": timeseries,
               "attributeUpdates": [], "rpc": []} for u in range(1, DEVICES + 1)]
    (conf / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=1))
    return conf


def start_broker(tmp: Path) -> tuple:
    port = free_port()
    pw = tmp / "tb-mosquitto.passwd"
    pw.write_text("")
    for user in ("tbgw", "server"):
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, PASSWORD], check=True)
    acl = tmp / "tb-mosquitto.acl"
    # The gateway subscribes to v1/devices/me/rpc/request/+ (server-side calls) and also
    # publishes its own calls there: it may not read that topic, nor its telemetry.
    acl.write_text("user tbgw\ntopic write v1/#\n"
                   "topic read v1/devices/me/rpc/response/+\ntopic read v1/devices/me/attributes\n"
                   "topic read v1/devices/me/attributes/response/+\ntopic read v1/gateway/attributes\n"
                   "topic read v1/gateway/attributes/response\ntopic read v1/gateway/rpc\n"
                   "user server\ntopic readwrite v1/#\n")
    conf = tmp / "tb-mosquitto.conf"
    conf.write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
                    f"acl_file {acl}\npersistence false\n")
    proc = Proc("tb-mosquitto", ["mosquitto", "-c", str(conf)], tmp / "tb-mosquitto.log")
    wait_port(port, proc)
    return proc, port


class Server:
    """Stands in for ThingsBoard: answers getSessionLimits, counts telemetry messages."""

    def __init__(self, port: int):
        self.telemetry = 0
        self.limits_asked = 0
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tb-server")
        self.c.username_pw_set("server", PASSWORD)
        self.c.on_connect = lambda c, *_: c.subscribe([("v1/devices/me/rpc/request/+", 1),
                                                       ("v1/gateway/telemetry", 1)])
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def on_message(self, c, _, msg):
        if msg.topic == "v1/gateway/telemetry":
            with self.lock:
                self.telemetry += 1
            return
        req = json.loads(msg.payload)
        if req.get("method") == "getSessionLimits":
            self.limits_asked += 1
            c.publish(msg.topic.replace("/request/", "/response/"), json.dumps({
                "maxPayloadSize": 65536, "maxInflightMessages": 0,
                "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
                "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,",
                                      "telemetryDataPoints": "0:0,"}}), qos=1)

    def count(self):
        with self.lock:
            return self.telemetry

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def tree_pids(pid: int) -> list:
    kids = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def run_thingsboard(tmp: Path, device_port: int, seconds: int, warmup: int) -> dict:
    exe = tb_venv()
    broker, port = start_broker(tmp)
    server = Server(port)
    conf = tb_config(tmp, port, device_port)
    work = tmp / "tb-work"
    (work / "logs").mkdir(parents=True)
    closed = free_port()  # nothing listens here: every HTTP(S) request fails at once
    proxy = f"http://127.0.0.1:{closed}"
    env = dict(os.environ, TB_GW_CONFIG_DIR=str(conf), HTTP_PROXY=proxy, HTTPS_PROXY=proxy,
               http_proxy=proxy, https_proxy=proxy, ALL_PROXY=proxy, all_proxy=proxy, NO_PROXY="", no_proxy="",
               PIP_NO_INDEX="1")
    proc = Proc("thingsboard-gateway", [str(exe)], tmp / "tb-gateway.log", env=env, cwd=work)
    try:
        wait_for("ThingsBoard gateway telemetry", lambda: server.count() > 0, timeout=120)
        r = measure(proc.pid, seconds, warmup, server.count)
        r["process_tree_pids"] = len(tree_pids(proc.pid))
        r["session_limits_answered"] = server.limits_asked
        return r
    finally:
        proc.stop()
        server.stop()
        broker.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-vs-tb-") as d:
        tmp = Path(d)
        device, port = start_devices(tmp)
        try:
            kp = run_kp_gateway(tmp, port, a.seconds, a.warmup)
            tb = run_thingsboard(tmp, port, a.seconds, a.warmup)
        finally:
            device.stop()
    out = {"machine": f"{os.cpu_count()} cores, {platform.release()}", "thingsboard_gateway": TB_VERSION,
           "kp_gateway": kp, "thingsboard": tb,
           "ratio_cpu": round(kp["cpu_s"] / max(tb["cpu_s"], 0.01), 3),
           "ratio_rss": round(kp["rss_kib"] / max(tb["rss_kib"], 1), 3)}
    print("| | kp-gateway (bridge) | ThingsBoard IoT Gateway | ratio |\n|---|---|---|---|")
    print(f"| CPU s over {a.seconds} s | {kp['cpu_s']} | {tb['cpu_s']} | **{out['ratio_cpu']}** |")
    print(f"| RSS MiB | {kp['rss_kib'] / 1024:.1f} | {tb['rss_kib'] / 1024:.1f} | **{out['ratio_rss']}** |")
    print(f"| peak RSS MiB | {kp['peak_rss_kib'] / 1024:.1f} | {tb['peak_rss_kib'] / 1024:.1f} | |")
    print(f"| messages delivered | {kp['samples_delivered']} samples | {tb['samples_delivered']} telemetry | |")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
