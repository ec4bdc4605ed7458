"""Registry and credential management over the REST API, and what state changes do to
live sessions (docs/protocol.md §6): applications and app versions, endpoints created and
deleted, tokens suspended / reactivated / revoked / re-issued, basic credentials
suspended while connected. Clients are paho-mqtt; the API is driven with curl."""

import json

from kp_client import KpClient

AVN = "demo-v1"


def error_code(reply):
    outcome, body = reply
    assert outcome == "error", reply
    return json.loads(body)["statusCode"]


def test_applications_and_app_versions(core):
    assert core.api("POST", "/api/v1/applications", {"name": "pumps"})[0] == 201
    assert core.api("POST", "/api/v1/applications", {"name": "pumps"})[0] == 409
    code, err = core.api("POST", "/api/v1/applications", {"name": "Bad Name"})
    assert code == 400 and "^[a-z0-9_-]+$" in err["error"]
    assert core.api("POST", "/api/v1/applications/pumps/app-versions", {"name": "pumps-v1"})[0] == 201
    code, err = core.api("POST", "/api/v1/applications/pumps/app-versions", {"name": "demo-v1"})
    assert code == 409 and "belongs to application" in err["error"]
    assert core.api("POST", "/api/v1/applications/nope/app-versions", {"name": "x"})[0] == 404
    code, apps = core.api("GET", "/api/v1/applications")
    assert {"name": "pumps", "appVersions": ["pumps-v1"]} in apps
    assert core.api("GET", "/api/v1/applications/pumps/app-versions")[1] == [
        {"name": "pumps-v1", "applicationName": "pumps"}]
    # An endpoint in the new app version works at once over MQTT.
    code, ep = core.api("POST", "/api/v1/endpoints", {"appVersion": {"name": "pumps-v1"}, "metadata": {"site": "a"}})
    assert code == 201 and len(ep["token"]) >= 16
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="pump")
    try:
        assert c.request(f"kp1/pumps-v1/dcx/{ep['token']}/json/1", [{"rpm": 1200}]) == ("status", b"")
        assert c.request(f"kp1/{AVN}/dcx/{ep['token']}/json/2", [{"rpm": 1}]) != ("status", b""), \
            "a token is only valid in its own app version"
    finally:
        c.close()
    code, listed = core.api("GET", "/api/v1/endpoints?applicationName=pumps")
    assert [e["endpointId"] for e in listed] == [ep["endpointId"]]


def test_endpoint_ids_are_given_or_uuids_and_deletion_cuts_sessions(core):
    code, ep = core.api("POST", "/api/v1/endpoints", {"appVersion": AVN, "endpointId": "boiler-1", "token": "boiler-tok"})
    assert (code, ep["endpointId"], ep["token"]) == (201, "boiler-1", "boiler-tok")
    assert core.api("POST", "/api/v1/endpoints", {"appVersion": AVN, "endpointId": "boiler-1"})[0] == 409
    assert core.api("POST", "/api/v1/endpoints", {"appVersion": AVN, "token": "boiler-tok"})[0] == 409
    assert core.api("POST", "/api/v1/endpoints", {"appVersion": AVN, "endpointId": "has space"})[0] == 400
    assert core.api("POST", "/api/v1/endpoints", {"appVersion": "nope"})[0] == 404
    code, auto = core.api("POST", "/api/v1/endpoints", {"appVersion": {"name": AVN}})
    assert len(auto["endpointId"]) == 36 and auto["endpointId"].count("-") == 4
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="boiler")
    try:
        assert c.request(f"kp1/{AVN}/dcx/boiler-tok/json/1", [{"t": 70}]) == ("status", b"")
        assert core.api("DELETE", "/api/v1/endpoints/boiler-1")[0] == 204
        assert c.disconnected.wait(5), "deleting an endpoint ends its sessions"
    finally:
        c.close()
    assert core.api("GET", "/api/v1/endpoints/boiler-1")[0] == 404
    assert core.query("SELECT count(*) FROM data_samples WHERE endpoint_id = 'boiler-1'") == [(0,)]
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="boiler-again")
    try:
        assert error_code(c.request(f"kp1/{AVN}/dcx/boiler-tok/json/2", [{"t": 1}])) == 401
    finally:
        c.close()


def test_token_suspend_reactivate_revoke_and_reissue(core):
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="tok-user")
    assert c.request(f"kp1/{AVN}/dcx/tok1/json/1", [{"t": 1}]) == ("status", b"")
    assert core.api("GET", "/api/v1/endpoints/ep-tok1/tokens")[1][0]["state"] == "ACTIVE"
    code, change = core.api("PUT", "/api/v1/endpoints/ep-tok1/tokens/tok1/state", {"state": "SUSPENDED"})
    assert code == 200 and change["sessionsEnded"] == 1
    assert c.disconnected.wait(5), "suspending a token ends its live sessions at once"
    c.close()
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="tok-user-2")
    try:
        assert error_code(c.request(f"kp1/{AVN}/dcx/tok1/json/2", [{"t": 2}])) == 403
    finally:
        c.close()
    assert core.api("PUT", "/api/v1/endpoints/ep-tok1/tokens/tok1/state", {"state": "ACTIVE"})[0] == 200
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="tok-user-3")
    try:
        assert c.request(f"kp1/{AVN}/dcx/tok1/json/3", [{"t": 3}]) == ("status", b"")
        # Re-issue: a new token for the same endpoint ID; the old one is revoked.
        code, new = core.api("POST", "/api/v1/endpoints/ep-tok1/tokens", {"revokeOthers": True})
        assert code == 201 and new["revoked"] == 1 and new["endpointId"] == "ep-tok1"
        assert c.disconnected.wait(5)
    finally:
        c.close()
    c = KpClient(core.port, core.USER, core.PASSWORD, client_id="tok-user-4")
    try:
        assert error_code(c.request(f"kp1/{AVN}/dcx/tok1/json/4", [{"t": 4}])) == 401
        assert c.request(f"kp1/{AVN}/dcx/{new['token']}/json/5", [{"t": 5}]) == ("status", b"")
    finally:
        c.close()
    states = {t["token"]: t["state"] for t in core.api("GET", "/api/v1/endpoints/ep-tok1/tokens")[1]}
    assert states == {"tok1": "REVOKED", new["token"]: "ACTIVE"}
    code, err = core.api("PUT", "/api/v1/endpoints/ep-tok1/tokens/tok1/state", {"state": "ACTIVE"})
    assert code == 409
    assert core.api("PUT", "/api/v1/endpoints/ep-tok1/tokens/nope/state", {"state": "ACTIVE"})[0] == 404
    assert core.api("PUT", "/api/v1/endpoints/ep-tok1/tokens/tok2/state", {"state": "ACTIVE"})[0] == 404, \
        "tok2 is another endpoint's token"
    # Both tokens' samples belong to the one endpoint.
    assert core.query("SELECT count(*) FROM data_samples WHERE endpoint_id = 'ep-tok1'") == [(3,)]


def test_basic_credential_suspended_while_connected(core):
    code, cred = core.api("POST", "/api/v1/credentials/basic", {"username": "field-gw", "password": "s3cret pw",
                                                                 "applications": ["*"]})
    assert code == 201 and cred["state"] == "INACTIVE"
    assert core.api("POST", "/api/v1/credentials/basic", {"username": "field-gw", "password": "x",
                                                          "applications": ["*"]})[0] == 409
    assert core.api("POST", "/api/v1/credentials/basic", {"username": "x"})[0] == 400
    assert "s3cret" not in json.dumps(core.api("GET", "/api/v1/credentials/basic")[1])
    c = KpClient(core.port, "field-gw", "s3cret pw", client_id="field-gw")
    try:
        assert c.connack == "Success"
        assert core.api("GET", "/api/v1/credentials/basic/field-gw")[1]["state"] == "ACTIVE"
        code, change = core.api("PUT", "/api/v1/credentials/basic/field-gw/state", {"state": "SUSPENDED"})
        assert change["sessionsEnded"] == 1
        assert c.disconnected.wait(5)
    finally:
        c.close()
    refused = KpClient(core.port, "field-gw", "s3cret pw", client_id="field-gw-2")
    assert refused.connack == "Not authorized"
    refused.close()
    assert core.api("PUT", "/api/v1/credentials/basic/field-gw/state", {"state": "ACTIVE"})[0] == 200
    back = KpClient(core.port, "field-gw", "s3cret pw", client_id="field-gw-3")
    assert back.connack == "Success"
    back.close()
    assert core.api("PUT", "/api/v1/credentials/basic/nobody/state", {"state": "ACTIVE"})[0] == 404
    assert core.api("PUT", "/api/v1/credentials/basic/field-gw/state", {"state": "BOGUS"}) == (400, {"error": "Failed to deserialize the JSON body into the target type: state: unknown variant `BOGUS`, expected one of `INACTIVE`, `ACTIVE`, `SUSPENDED`, `REVOKED` at line 1 column 17"})
