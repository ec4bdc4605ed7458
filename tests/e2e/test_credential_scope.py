"""Credential scopes (#15 item 7): a basic credential bound to an application acts only
for that application's endpoints, and sees neither the replies nor the pushes (commands,
configurations) of other applications' endpoints, even when it subscribes to `#`. New
credentials must name their applications (config and REST); an admin can rebind one, which
ends its live sessions."""

import json
import subprocess

from conftest import BIN, Core, hash_password
from kp_client import KpClient

OTHER_AVN = "other-v1"


def scoped_core(tmp_path):
    dev = {"username": Core.USER, "password_hash": hash_password(Core.PASSWORD), "applications": ["*"]}
    site = {"username": "site-a", "password_hash": hash_password("site-a-pw"), "applications": ["demo"]}
    endpoints = [{"id": f"ep-{t}", "token": t, "app_version": Core.APP_VERSION} for t in Core.TOKENS]
    endpoints.append({"id": "ep-x", "token": "tokx", "app_version": OTHER_AVN})
    return Core(tmp_path, core_keys={
        "applications": [{"name": "demo", "versions": [Core.APP_VERSION]},
                         {"name": "other", "versions": [OTHER_AVN]}],
        "credentials": [dev, site],
        "endpoints": endpoints,
    })


def status_code(payload: bytes) -> int:
    return json.loads(payload)["statusCode"]


def test_a_bound_credential_acts_and_sees_only_its_application(tmp_path):
    core = scoped_core(tmp_path)
    bound = KpClient(core.port, "site-a", "site-a-pw", client_id="site-a")
    free = KpClient(core.port, Core.USER, Core.PASSWORD, client_id="dev")
    try:
        bound.subscribe("kp1/#")
        free.subscribe(f"kp1/{OTHER_AVN}/cex/tokx/#")
        # Its own application: accepted.
        bound.publish(f"kp1/{Core.APP_VERSION}/dcx/tok1/json/1", [{"v": 1}])
        topic, _ = bound.wait_message(f"kp1/{Core.APP_VERSION}/dcx/tok1/json/1/status")
        # Another application's endpoint: 403, and nothing stored for it.
        bound.publish(f"kp1/{OTHER_AVN}/dcx/tokx/json/2", [{"v": 666}])
        _, err = bound.wait_message(f"kp1/{OTHER_AVN}/dcx/tokx/json/2/error")
        assert status_code(err) == 403, err
        assert core.query("SELECT count(*) FROM data_samples WHERE endpoint_id = 'ep-x'") == [(0,)]
        # Metadata of the other application's endpoint: refused the same way.
        bound.publish(f"kp1/{OTHER_AVN}/epmx/tokx/update/keys/3", {"name": "hijacked"})
        _, err = bound.wait_message(f"kp1/{OTHER_AVN}/epmx/tokx/update/keys/3/error")
        assert status_code(err) == 403, err

        # Replies of the other application are not copied to it; its own are. The free
        # client's two requests are handled in order, so once the second copy is here the
        # first would have come before it.
        free.publish(f"kp1/{OTHER_AVN}/dcx/tokx/json/10", [{"v": 2}])
        free.wait_message(f"kp1/{OTHER_AVN}/dcx/tokx/json/10/status")
        free.publish(f"kp1/{Core.APP_VERSION}/dcx/tok2/json/11", [{"v": 3}])
        bound.wait_message(f"kp1/{Core.APP_VERSION}/dcx/tok2/json/11/status")

        # A command for the other application's endpoint (with a secret) reaches the free
        # client, not the bound one; one for its own application reaches it (pushed after,
        # so it arrives after the first would have).
        code, _ = core.api("POST", "/api/v1/endpoints/ep-x/commands/secret", {"pin": 1234})
        assert code in (200, 201, 202), code
        free.wait_message(f"kp1/{OTHER_AVN}/cex/tokx/command/secret")
        code, _ = core.api("POST", "/api/v1/endpoints/ep-tok3/commands/blink", None)
        assert code in (200, 201, 202), code
        bound.wait_message(f"kp1/{Core.APP_VERSION}/cex/tok3/command/blink")
        leaked = [t for t, p in bound.seen if f"/{OTHER_AVN}/" in t and not t.startswith(f"kp1/{OTHER_AVN}/dcx/tokx/json/2")
                  and not t.startswith(f"kp1/{OTHER_AVN}/epmx/tokx/update/keys/3")]
        assert leaked == [], leaked
        assert not any(b"1234" in p for _, p in bound.seen)
    finally:
        bound.close()
        free.close()
        core.stop()


def test_new_credentials_must_name_their_applications_and_can_be_rebound(tmp_path):
    core = scoped_core(tmp_path)
    try:
        code, err = core.api("POST", "/api/v1/credentials/basic", {"username": "n", "password": "pw"})
        assert code == 400 and "applications" in err["error"], err
        code, made = core.api("POST", "/api/v1/credentials/basic",
                              {"username": "n", "password": "pw", "applications": ["other"], "endpoints": ["tokx"]})
        assert code == 201 and made["applications"] == ["other"] and made["endpoints"] == ["tokx"], made
        assert core.api("GET", "/api/v1/credentials/basic/site-a")[1]["applications"] == ["demo"]
        assert core.api("GET", "/api/v1/credentials/basic/dev")[1]["applications"] == ["*"]
        assert core.api("PUT", "/api/v1/credentials/basic/nobody/scope", {"applications": ["*"]})[0] == 404
        assert core.api("PUT", "/api/v1/credentials/basic/n/scope", {"applications": []})[0] == 400

        c = KpClient(core.port, "site-a", "site-a-pw", client_id="site-a")
        try:
            code, changed = core.api("PUT", "/api/v1/credentials/basic/site-a/scope", {"applications": ["other"]})
            assert code == 200 and changed["sessionsEnded"] == 1, changed
            assert c.disconnected.wait(10), "the session under the old scope was not ended"
        finally:
            c.close()
        c = KpClient(core.port, "site-a", "site-a-pw", client_id="site-a")
        try:
            c.publish(f"kp1/{OTHER_AVN}/dcx/tokx/json/1", [{"v": 1}])
            c.wait_message(f"kp1/{OTHER_AVN}/dcx/tokx/json/1/status")
            c.publish(f"kp1/{Core.APP_VERSION}/dcx/tok1/json/2", [{"v": 1}])
            _, err = c.wait_message(f"kp1/{Core.APP_VERSION}/dcx/tok1/json/2/error")
            assert status_code(err) == 403
        finally:
            c.close()
        # Bound to one token of its application: another token of it is refused.
        c = KpClient(core.port, "n", "pw", client_id="n")
        try:
            c.publish(f"kp1/{OTHER_AVN}/dcx/tokx/json/1", [{"v": 1}])
            c.wait_message(f"kp1/{OTHER_AVN}/dcx/tokx/json/1/status")
        finally:
            c.close()
    finally:
        core.stop()


def test_check_config_refuses_a_credential_without_applications(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
[core]
[core.mqtt]
listen = "127.0.0.1:0"
[[core.credentials]]
username = "old"
password_hash = "{hash_password('pw')}"
""")
    out = subprocess.run([str(BIN), "check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "core.credentials[0].applications: missing" in out.stdout + out.stderr, out.stdout + out.stderr
