"""One connection carrying 200 endpoints (the gateway use case), against a real client."""

from conftest import Core, wait_for
from kp_client import KpClient

AVN = "demo-v1"
TOKENS = [f"dev{i:03}" for i in range(200)]


def test_200_endpoints_over_one_connection(tmp_path):
    core = Core(tmp_path, extra_tokens=TOKENS)
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="gateway-like")
    try:
        for i, t in enumerate(TOKENS):
            c.publish(f"kp1/{AVN}/dcx/{t}/json/{i + 1}", [{"n": i}], qos=1)
        wait_for("200 status replies", lambda: sum(1 for topic, _ in c.seen if topic.endswith("/status")) == 200)
        rows = core.query(
            "SELECT count(DISTINCT endpoint_id), count(*) FROM time_series WHERE name = 'auto~n'")
        assert rows == [(200, 200)]
        connected = core.query("SELECT count(*) FROM metadata WHERE key = 'connected' AND value = 'true'")
        assert connected == [(200,)]
    finally:
        c.close()
        assert core.proc.stop() == 0, core.proc.output()
