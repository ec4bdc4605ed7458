"""A standalone site: the gateway with its embedded core and no cloud. The core's REST
API drives everything a Kaa server would: a command becomes a Modbus write on a real
pymodbus device and its result comes back in the HTTP answer; a configuration pushed to
the gateway's own endpoint replaces its field side."""

import functools

from pymodbus.client import ModbusTcpClient

import configs
from conftest import Gateway, free_port, hash_password, rest_call, start_modbus_device, wait_for

AVN = "site-v1"


def config(tmp_path, mport, core_port, http_port):
    core = configs.core(core_port, versions=[AVN], application="site",
                        http={"listen": f"127.0.0.1:{http_port}"},
                        api={"admin_username": "admin", "admin_password_hash": hash_password("admin-password")})
    boiler = configs.modbus_device("boiler", "plant", [configs.point("speed", 0, "u16", writable=True)],
                                   token="boiler-1", app_version=AVN, poll_interval_ms=300)
    return configs.config(tmp_path / "state", gateway={"token": "gw", "app_version": AVN}, core=core,
                          buses=[configs.tcp_bus("plant", mport)], devices=[boiler])


def test_rest_commands_become_modbus_writes_and_remote_config_applies(tmp_path):
    mport, core_port, http_port = free_port(), free_port(), free_port()
    device = start_modbus_device(tmp_path, {"transport": "tcp", "port": mport, "slaves": {"1": {"hr": [7, 0]}}})
    gw = Gateway(tmp_path, config(tmp_path, mport, core_port, http_port))
    api = functools.partial(rest_call, http_port)
    mb = ModbusTcpClient("127.0.0.1", port=mport)
    try:
        def endpoint_of(token):
            for ep in api("GET", f"/api/v1/endpoints?appVersionName={AVN}")[1]:
                if any(t["token"] == token for t in api("GET", f"/api/v1/endpoints/{ep['endpointId']}/tokens")[1]):
                    return ep["endpointId"]
            return None

        boiler = wait_for("the boiler's endpoint", lambda: endpoint_of("boiler-1"))
        wait_for("a polled sample in the core", lambda: api(
            "GET", f"/api/v1/applications/site/time-series/last?endpointId={boiler}&timeSeriesName=auto~speed"
        )[1][0][boiler]["auto~speed"])
        code, cmd = api("POST", f"/api/v1/endpoints/{boiler}/commands/write?awaitTimeout=15000",
                        {"point": "speed", "value": 1234})
        assert code == 200, (cmd, gw.proc.output()[-3000:])
        assert cmd["result"]["statusCode"] == 200 and cmd["result"]["payload"] == {"point": "speed", "value": 1234}
        assert mb.connect() and mb.read_holding_registers(0, count=1, device_id=1).registers == [1234]
        code, bad = api("POST", f"/api/v1/endpoints/{boiler}/commands/write?awaitTimeout=15000",
                        {"point": "nope", "value": 1})
        assert code == 200 and bad["result"]["statusCode"] == 404

        # Remote configuration of the gateway's own endpoint: a simulated device instead.
        own = wait_for("the gateway's own endpoint", lambda: endpoint_of("gw"))
        new_side = {"devices": [{"name": "sim9", "token": "sim9", "app_version": AVN, "poll_interval_ms": 100,
                                 "simulated": {}, "points": [{"name": "w", "waveform": "triangle", "period_secs": 5}]}]}
        code, put = api("PUT", f"/api/v1/endpoints/{own}/config", new_side)
        assert code == 200 and put["changed"]
        applied = wait_for("the gateway to apply it", lambda: api("GET", f"/api/v1/endpoints/{own}/config")[1]["applied"],
                           timeout=30)
        assert applied == {**applied, "configId": put["configId"], "statusCode": 200}
        sim9 = wait_for("the new device's endpoint", lambda: endpoint_of("sim9"))
        wait_for("samples of the new device", lambda: api(
            "GET", f"/api/v1/applications/site/time-series/last?endpointId={sim9}&timeSeriesName=auto~w"
        )[1][0][sim9]["auto~w"])
        # A configuration that does not validate is refused with the reason, and reported.
        code, put2 = api("PUT", f"/api/v1/endpoints/{own}/config", {"devices": [{"name": "x"}]})
        refused = wait_for("the refusal", lambda: (a := api("GET", f"/api/v1/endpoints/{own}/config")[1]["applied"])
                           and a["configId"] == put2["configId"] and a)
        assert refused["statusCode"] == 400 and "missing field `token`" in refused["reasonPhrase"]
    finally:
        mb.close()
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
