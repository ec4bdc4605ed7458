"""The local web page, end to end: a real browser (Debian's chromium driven by npm
playwright-core, tests/js/web_walk.js) walks a standalone site with a pymodbus device, and
plain HTTP checks the access rules. Screenshots of every main page are kept in the test's
directory (and copied to $KP_WEB_SHOTS when set)."""

import json
import os
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import configs
from conftest import Gateway, core_samples, free_port, hash_password, start_modbus_device, wait_for
from kp_client import KpClient

JS = Path(__file__).resolve().parent.parent / "js"
ADMIN_PASSWORD = "walk-the-page-2026"
DEVICE_TOKEN = "boiler-secret-tok"
EXT_TOKEN = "ext-secret-tok"
CLIENT_PASSWORD = "ext-client-pw-1"


def site(tmp_path: Path, mqtt_port: int, web_port: int) -> str:
    core = configs.core(
        mqtt_port,
        versions=["plant-v1"],
        credentials=[{"username": "ext", "password_hash": hash_password(CLIENT_PASSWORD), "applications": ["*"]}],
        endpoints=[{"id": "ep-ext", "token": EXT_TOKEN, "app_version": "plant-v1"}],
    )
    meter = configs.simulated_device("meter", "plant-v1", 200, [{"name": "power", "waveform": "sine"}])
    text = configs.config(tmp_path / "state", core=core, devices=[meter], log_level="info")
    return text + f'\n[web]\nlisten = "127.0.0.1:{web_port}"\n'


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http(method: str, url: str, body: bytes = None, headers=None):
    """(status, headers, body) without following redirects."""
    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def buffer_rows(db: Path, sql: str):
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        return c.execute(sql).fetchall()


def test_browser_walk_claim_configure_watch_roll_back_and_revoke(tmp_path):
    modbus_port = free_port()
    device = start_modbus_device(tmp_path, {"transport": "tcp", "port": modbus_port,
                                            "slaves": {"1": {"hr": [215, 1000]}}})
    mqtt_port, web_port = free_port(), free_port()
    gw = Gateway(tmp_path, site(tmp_path, mqtt_port, web_port))
    ext = KpClient(mqtt_port, "ext", CLIENT_PASSWORD, client_id="ext-client")
    shots = tmp_path / "shots"
    shots.mkdir()
    try:
        # The credential starts active when listed in the config; the client's first
        # request makes its endpoint "connected" for the console.
        assert ext.request(f"kp1/plant-v1/dcx/{EXT_TOKEN}/json/1", [{"t": 1}]) == ("status", b"")
        spec = {"base": f"http://127.0.0.1:{web_port}", "codeFile": str(tmp_path / "state/web/setup-code"),
                "password": ADMIN_PASSWORD, "modbusPort": modbus_port, "deviceToken": DEVICE_TOKEN,
                "appVersion": "plant-v1", "externalEndpoint": "ep-ext", "shots": str(shots)}
        walk = subprocess.run(["node", str(JS / "web_walk.js"), json.dumps(spec)], cwd=JS,
                              capture_output=True, text=True, timeout=600)
        out = walk.stdout.strip().splitlines()
        result = json.loads(out[-1]) if out else {}
        assert walk.returncode == 0, f"{result.get('error')}\n{walk.stderr}\nsteps done: {result.get('steps')}"
        assert len(result["steps"]) == 12, result
        assert ext.disconnected.wait(10), "revoking the token in the console cuts the client's session"

        # The boiler's samples reached the core, and nothing buffered was lost on the way:
        # after the rollback the buffer drains, nothing was dropped or refused.
        assert any(s.get("temperature") == 21.5 for s in core_samples(tmp_path / "state/core.sqlite", DEVICE_TOKEN))
        db = tmp_path / "state/buffer.sqlite"
        wait_for("the buffer to drain",
                 lambda: buffer_rows(db, f"SELECT count(*) FROM samples WHERE token = '{DEVICE_TOKEN}'") == [(0,)],
                 timeout=60)
        assert buffer_rows(db, "SELECT count(*) FROM dead_letters") == [(0,)]
        assert buffer_rows(db, "SELECT count(*) FROM drops") == [(0,)]
        meter = core_samples(tmp_path / "state/core.sqlite", "meter")
        assert len({s["timestamp"] for s in meter}) == len(meter) > 0, "the meter's samples arrived once each"
    finally:
        ext.close()
        assert gw.stop() == 0, gw.proc.output()
        device.stop()
        if os.environ.get("KP_WEB_SHOTS"):
            shutil.copytree(shots, os.environ["KP_WEB_SHOTS"], dirs_exist_ok=True)

    # Screenshots of every main page exist, and no page, download or log shows a secret.
    for name in ["setup", "dashboard", "config", "devices", "config-error", "versions", "diff", "buffer", "logs",
                 "console"]:
        assert (shots / f"{name}.png").stat().st_size > 5000, name
    seen = [p.read_text(errors="replace") for p in shots.glob("*.html")]
    seen += [(shots / "download.toml").read_text(), gw.proc.output()]
    for text in seen:
        for secret in [ADMIN_PASSWORD, DEVICE_TOKEN, CLIENT_PASSWORD]:
            assert secret not in text, f"{secret} shown"


def test_access_rules_without_a_browser(tmp_path):
    mqtt_port, web_port = free_port(), free_port()
    gw = Gateway(tmp_path, site(tmp_path, mqtt_port, web_port))
    base = f"http://127.0.0.1:{web_port}"
    try:
        code_file = tmp_path / "state/web/setup-code"
        assert oct(code_file.stat().st_mode & 0o777) == "0o600", "the setup code is readable by the service only"
        assert code_file.read_text().strip() in gw.proc.output(), "the setup code is in the log (the journal)"
        for path in ["/", "/devices", "/config", "/config/raw", "/buffer", "/logs", "/console"]:
            status, headers, _ = http("GET", base + path)
            assert (status, headers.get("location")) == (303, "/setup"), path
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
        assert http("GET", base + "/api/status")[0] == 401
        # A form posted from elsewhere (no CSRF cookie or token) is refused.
        code = code_file.read_text().strip()
        body = f"code={code}&password=long+enough+pw&password2=long+enough+pw".encode()
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert http("POST", base + "/setup", body, form)[0] == 403
        assert not (tmp_path / "state/web/admin").exists()
        # /healthz is open; /metrics is open to loopback (this test) in the Prometheus format.
        status, _, health = http("GET", base + "/healthz")
        assert status == 200 and json.loads(health)["status"] == "ok"
        status, headers, metrics = http("GET", base + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b'kpgw_device_up{device="meter"}' in metrics and b"kpc_sessions" in metrics
    finally:
        assert gw.stop() == 0, gw.proc.output()
