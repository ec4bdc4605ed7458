"""The gateway as an endpoint of its own: health samples, and remote configuration of
its field side over 7/CMP (refused with every error, or applied without losing data)."""

import json

import configs
from conftest import Gateway, Mosquitto, wait_for
from kaa_server import KaaServer

AVN = "site-v1"
CMX = f"kp1/{AVN}/cmx/gw"


def base_config(tmp_path, port) -> str:
    return configs.config(
        tmp_path / "state",
        gateway={"token": "gw", "app_version": AVN, "health_interval_secs": 1},
        upstream=configs.upstream(port, client_id="cfg-gateway"),
        devices=[configs.simulated_device("sim0", AVN, 100, [{"name": "v"}])],
    )


def sim(name: str) -> dict:
    return {"name": name, "token": name, "app_version": AVN, "poll_interval_ms": 100,
            "simulated": {}, "points": [{"name": "w", "waveform": "triangle", "period_secs": 5}]}


def test_health_samples_and_remote_configuration(tmp_path):
    broker = Mosquitto(tmp_path)
    kaa = KaaServer(broker.port)
    gw = Gateway(tmp_path, base_config(tmp_path, broker.port))
    try:
        # (the very first one may predate the connection and say so)
        health = wait_for("a health sample taken while connected",
                          lambda: [h for h in kaa.received("gw") if h["upstream_connected"] is True])
        h = health[-1]
        assert {"buffer_pending", "buffer_bytes", "buffer_dropped", "dead_letters", "rss_bytes", "devices"} <= set(h)
        wait_for("the configuration request", lambda: kaa.config_requests)
        assert kaa.config_requests[0] == {"configId": "", "observe": True}

        # A bad configuration is refused with every error; the running one stays.
        bad = {"devices": [dict(sim("x"), app_version="Not Valid", points=[])]}
        kaa.c.publish(f"{CMX}/config/json/status", json.dumps({"configId": "bad-1", "config": bad}), qos=1)
        refused = wait_for("the refusal", lambda: [a for a in kaa.applied if a["configId"] == "bad-1"])
        assert refused[0]["statusCode"] == 400
        assert "devices[0].app_version" in refused[0]["reasonPhrase"] and "devices[0].points" in refused[0]["reasonPhrase"]

        # A good one replaces the field side: sim0 goes, sim9 comes; nothing buffered is lost.
        kaa.c.publish(f"{CMX}/config/json/status", json.dumps({"configId": "good-1", "config": {"devices": [sim("sim9")]}}), qos=1)
        ok = wait_for("the acceptance", lambda: [a for a in kaa.applied if a["configId"] == "good-1"])
        assert ok[0]["statusCode"] == 200
        wait_for("samples from the new device", lambda: len(kaa.received("sim9")) >= 5)
        sim0_after = len(kaa.received("sim0"))
        wait_for("more samples from the new device", lambda: len(kaa.received("sim9")) >= 15)
        assert len(kaa.received("sim0")) == sim0_after, "the removed device stopped"
        assert gw.stop() == 0, gw.proc.output()

        # After a restart the saved remote configuration is in force.
        gw = Gateway(tmp_path, base_config(tmp_path, broker.port), name="gw2")
        assert "using the saved remote configuration \"good-1\"" in gw.proc.output()
        n = len(kaa.received("sim9"))
        wait_for("sim9 after the restart", lambda: len(kaa.received("sim9")) > n + 5)
        wait_for("the next configuration request", lambda: any(r.get("configId") == "good-1" for r in kaa.config_requests))
    finally:
        code = gw.stop()
        kaa.close()
        broker.stop()
    assert code == 0, gw.proc.output()
