"""The README's first command: `kp-gateway --demo` runs two simulated devices into the
in-process core; the web page, claimed with the setup code the demo prints, shows the
endpoints and their data through the core console's API (no password ships with it)."""

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request

from conftest import BIN, Proc, wait_for


def test_the_demo_stores_data_the_web_page_shows(tmp_path):
    demo = Proc("demo", [str(BIN), "--demo", "--state-dir", str(tmp_path / "demo")], tmp_path / "demo.log")
    try:
        # The demo takes 127.0.0.1:1883/:8080/:8088, or free ports when those are taken.
        web = wait_for("the web page", lambda: re.search(r"web page: (http://127\.0\.0\.1:\d+)/", demo.output()))
        base = web.group(1)
        code = wait_for("the setup code", lambda: re.search(r"setup code (\S+)", demo.output())).group(1)
        assert code == (tmp_path / "demo/web/setup-code").read_text().strip()
        page = claim(base, code)
        status, eps = page("/core/api/v1/endpoints?applicationName=demo")
        assert status == 200 and len(eps) == 2, eps  # the two simulated devices

        def temperature():
            for ep in eps:
                _, ts = page(f"/core/api/v1/applications/demo/time-series/last?endpointId={ep['endpointId']}"
                             "&timeSeriesName=auto~temperature")
                points = ts[0][ep["endpointId"]]["auto~temperature"]
                if points:
                    return points[0]["values"]["value"]
            return None

        value = wait_for("a temperature in the core", temperature, timeout=30)
        assert 17.0 <= value <= 25.0  # sine around 21 with amplitude 4
        # Without the session the same call is refused.
        try:
            urllib.request.urlopen(base + "/core/api/v1/endpoints", timeout=10)
            raise AssertionError("the core API answered without a session")
        except urllib.error.HTTPError as e:
            assert e.code == 401
    finally:
        status = demo.stop()
    assert status == 0, demo.output()
    # A new user's first sight: no warning or error, except the note that a port was taken.
    noisy = [line for line in demo.output().splitlines()
             if re.search(r" (WARN|ERROR) ", line) and "is taken; the demo takes a free port" not in line]
    assert noisy == [], noisy


def claim(base: str, code: str):
    """Claims the page as a browser would; returns GET → (status, JSON) with the session."""
    jar = http.cookiejar.CookieJar()
    op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    op.open(base + "/setup", timeout=10).read()
    pre = next(c.value for c in jar if c.name == "kpgw_pre")
    form = urllib.parse.urlencode({"csrf": pre, "code": code, "password": "a demo admin password",
                                   "password2": "a demo admin password"}).encode()
    op.open(base + "/setup", form, timeout=30).read()
    assert any(c.name == "kpgw_session" for c in jar), "claiming logs the browser in"

    def get(path):
        with op.open(base + path, timeout=10) as r:
            return r.status, json.loads(r.read())

    return get
