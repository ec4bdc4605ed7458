"""The first run after `apt install`: the shipped configuration has no upstream yet. The
daemon starts quietly (no warning, no error), serves the web page with a setup code,
and the upstream set on the page is applied at once."""

import http.cookiejar
import json
import re
import urllib.parse
import urllib.request

import configs
from conftest import Gateway, Mosquitto, free_port, wait_for

ROOT = configs.Path(__file__).resolve().parents[2]


def test_first_run_starts_quietly_and_the_page_sets_the_upstream(tmp_path):
    web_port = free_port()
    shipped = (ROOT / "config/gateway.toml").read_text()
    text = (shipped.replace('"/var/lib/kp-gateway"', f'"{tmp_path / "state"}"')
            .replace('"0.0.0.0:8088"', f'"127.0.0.1:{web_port}"'))
    assert "\n[upstream]\n" not in text, "the shipped file has no upstream yet"
    broker = Mosquitto(tmp_path)
    gw = Gateway(tmp_path, text)
    base = f"http://127.0.0.1:{web_port}"
    try:
        # Readiness is told before the first generation logs its start: wait for the line.
        wait_for("the first-run line", lambda: "first run: no upstream configured yet" in gw.proc.output())
        assert "setup code" in gw.proc.output()
        jar = http.cookiejar.CookieJar()
        op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        op.open(base + "/setup", timeout=10).read()
        pre = next(c.value for c in jar if c.name == "kpgw_pre")
        code = (tmp_path / "state/web/setup-code").read_text().strip()
        form = {"csrf": pre, "code": code, "password": "first run password", "password2": "first run password"}
        op.open(base + "/setup", urllib.parse.urlencode(form).encode(), timeout=30).read()
        status = json.loads(op.open(base + "/api/status", timeout=10).read())
        assert status["upstream"]["connected"] is False
        assert status["upstream"]["broker"] == "(not configured yet)"
        page = op.open(base + "/config/upstream", timeout=10).read().decode()
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        form = {"csrf": csrf, "host": "127.0.0.1", "port": str(broker.port), "client_id": "first-run"}
        op.open(base + "/config/upstream", urllib.parse.urlencode(form).encode(), timeout=30).read()
        wait_for("the upstream connected", lambda: json.loads(
            op.open(base + "/api/status", timeout=10).read())["upstream"]["connected"], timeout=30)
    finally:
        code = gw.stop()
        broker.stop()
    assert code == 0, gw.proc.output()
    noisy = [line for line in gw.proc.output().splitlines() if re.search(r" (WARN|ERROR) ", line)]
    assert noisy == [], noisy
