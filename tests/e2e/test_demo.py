"""The README's first command: `kp-gateway --demo` runs two simulated devices into the
in-process core, whose REST API (admin / demo) shows the endpoints and their data."""

import re

from conftest import BIN, Proc, rest_call, wait_for


def test_the_demo_stores_data_the_rest_api_shows(tmp_path):
    demo = Proc("demo", [str(BIN), "--demo", "--state-dir", str(tmp_path / "demo")], tmp_path / "demo.log")
    try:
        # The demo takes 127.0.0.1:1883/:8080, or free ports when those are taken: read them.
        http = wait_for("the HTTP listener", lambda: re.search(r"HTTP listening on 127\.0\.0\.1:(\d+)", demo.output()))
        port = int(http.group(1))
        api = _api(port)
        code, eps = api("/api/v1/endpoints?applicationName=demo")
        assert code == 200 and len(eps) == 2, eps  # the two simulated devices

        def temperature():
            for ep in eps:
                code, ts = api(f"/api/v1/applications/demo/time-series/last?endpointId={ep['endpointId']}"
                               "&timeSeriesName=auto~temperature")
                points = ts[0][ep["endpointId"]]["auto~temperature"]
                if points:
                    return points[0]["values"]["value"]
            return None

        value = wait_for("a temperature in the core", temperature, timeout=30)
        assert 17.0 <= value <= 25.0  # sine around 21 with amplitude 4
        assert _api(port, password="wrong")("/api/v1/endpoints")[0] == 401
    finally:
        code = demo.stop()
    assert code == 0, demo.output()
    # A new user's first sight: no warning or error, except the note that a port was taken.
    noisy = [line for line in demo.output().splitlines()
             if re.search(r" (WARN|ERROR) ", line) and "is taken; the demo core takes a free port" not in line]
    assert noisy == [], noisy


def _api(port, password="demo"):
    return lambda path: rest_call(port, "GET", path, auth=("admin", password))
