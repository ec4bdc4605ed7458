"""The core's REST API with curl: endpoints, metadata, time series; every route of the
OpenAPI document answers; admin authentication; JSON errors."""

import json
import subprocess
from pathlib import Path

from kp_client import KpClient

ROOT = Path(__file__).resolve().parents[2]
AVN = "demo-v1"


def api(core, method, path, body=None, auth=("admin", "admin-password")):
    return core.api(method, path, body, auth=auth)


PATH_VALUES = {
    "{endpointId}": "ep-tok1",
    "{applicationName}": "demo",
    "{token}": "tok1",
    "{username}": "dev",
    "{fingerprint}": "ab" * 32,
    "{commandType}": "reboot",
    "{commandId}": "1",
    "{configName}": "ota",
    "{appVersionName}": "demo-v1",
    "{name}": "f.bin",
}

BODIES = {
    ("POST", "/api/v1/applications"): {"name": "other"},
    ("POST", "/api/v1/applications/{applicationName}/app-versions"): {"name": "demo-v2"},
    ("POST", "/api/v1/endpoints"): {"appVersion": {"name": "demo-v1"}},
    ("POST", "/api/v1/endpoints/{endpointId}/tokens"): {},
    ("PUT", "/api/v1/endpoints/{endpointId}/tokens/{token}/state"): {"state": "ACTIVE"},
    ("POST", "/api/v1/credentials/basic"): {"username": "new-user", "password": "pw", "applications": ["demo"]},
    ("PUT", "/api/v1/credentials/basic/{username}/state"): {"state": "ACTIVE"},
    ("PUT", "/api/v1/credentials/basic/{username}/scope"): {"applications": ["*"]},
    ("POST", "/api/v1/credentials/x509"): {"fingerprint": "ab" * 32},
    ("PUT", "/api/v1/credentials/x509/{fingerprint}/state"): {"state": "SUSPENDED"},
    ("POST", "/api/v1/endpoints/{endpointId}/commands/{commandType}"): {"delay": 1},
}


def documented_routes():
    doc = (ROOT / "platform-core/openapi.yaml").read_text()
    routes = []
    path = None
    for line in doc.splitlines():
        if line.startswith("  /api/v1"):
            path = line.strip().rstrip(":")
        elif path and line.startswith("    ") and line.strip().rstrip(":") in ("get", "put", "patch", "post", "delete"):
            routes.append((line.strip().rstrip(":").upper(), path))
    return routes


def test_every_documented_route_answers_and_needs_the_admin(core):
    routes = documented_routes()
    assert len(routes) == 39
    # A file for the binary-data download (BCX: upload token over 1/KP, then HTTP upload);
    # its bytes happen to be JSON so the generic JSON-reading helper can call the route.
    c = KpClient(core.port, core.USER, core.PASSWORD)
    try:
        outcome, body = c.request(f"kp1/{AVN}/bcx/tok1/token/1", b"")
        token = json.loads(body)["token"]
    finally:
        c.close()
    up = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                         "-H", f"X-Auth-Token: {token}", "--data-binary", '{"a": 1}',
                         f"http://127.0.0.1:{core.http_port}/bcx/api/v1/binary-data?name=f.bin"],
                        capture_output=True, text=True, timeout=30)
    assert up.stdout == "200"
    # Creations first (so GETs of what they made succeed), the DELETE last.
    order = {"POST": 0, "PUT": 1, "PATCH": 1, "GET": 2, "DELETE": 3}
    for method, p in sorted(routes, key=lambda r: order[r[0]]):
        concrete = p
        for k, v in PATH_VALUES.items():
            concrete = concrete.replace(k, v)
        concrete += "?endpointId=ep-tok1&timeSeriesName=auto~x" if "time-series" in p else ""
        body = BODIES.get((method, p), {"k": 1} if method in ("PUT", "PATCH") else None)
        code, _ = api(core, method, concrete, body, auth=None)
        assert code == 401, (method, p, code)
        code, reply = api(core, method, concrete, body)
        assert code in (200, 201, 202, 204), (method, p, code, reply)
    code, err = api(core, "GET", "/api/v1/endpoints/ep-tok1", auth=("admin", "wrong"))
    assert code == 401 and "admin credentials" in err["error"]


def test_the_openapi_document_is_valid_openapi():
    import yaml
    from openapi_spec_validator import validate

    validate(yaml.safe_load((ROOT / "platform-core/openapi.yaml").read_text()))


def test_metadata_and_time_series_round_trip(core):
    c = KpClient(core.port, core.USER, core.PASSWORD)
    try:
        for i, t in enumerate(["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]):
            assert c.request(f"kp1/{AVN}/dcx/tok2/json/{i + 1}", [{"timestamp": t, "temp": 20 + i}]) == ("status", b"")
    finally:
        c.close()
    assert api(core, "PUT", "/api/v1/endpoints/ep-tok2/metadata", {"site": "roof"}) == (204, None)
    assert api(core, "PATCH", "/api/v1/endpoints/ep-tok2/metadata", {"floor": 2}) == (204, None)
    code, meta = api(core, "GET", "/api/v1/endpoints/ep-tok2/metadata")
    assert code == 200 and meta["site"] == "roof" and meta["floor"] == 2
    code, ep = api(core, "GET", "/api/v1/endpoints/ep-tok2")
    assert code == 200 and ep["appVersion"] == {"name": AVN} and ep["metadata"]["floor"] == 2
    q = "endpointId=ep-tok2&timeSeriesName=auto~temp"
    code, last = api(core, "GET", f"/api/v1/applications/demo/time-series/last?{q}")
    assert code == 200
    assert last == [{"ep-tok2": {"auto~temp": [{"timestamp": "2026-01-01T00:02:00.000Z", "values": {"value": 22.0}}]}}]
    code, data = api(core, "GET", f"/api/v1/applications/demo/time-series/data?{q}"
                     "&fromDate=2026-01-01T00:00:30Z&toDate=2026-01-01T00:02:00Z")
    assert code == 200
    assert [p["values"]["value"] for p in data[0]["ep-tok2"]["auto~temp"]] == [21.0, 22.0]


def test_api_errors_are_json_with_a_clear_message(core):
    code, err = api(core, "GET", "/api/v1/endpoints/nope")
    assert code == 404 and err["error"] == 'no endpoint "nope"'
    code, err = api(core, "PATCH", "/api/v1/endpoints/ep-tok1/metadata", {"bad key": 1})
    assert code == 400 and "invalid metadata key" in err["error"]
    code, err = api(core, "GET", "/api/v1/applications/other/time-series/last?endpointId=ep-tok1&timeSeriesName=x")
    assert code == 404 and "not in application" in err["error"]
    code, err = api(core, "GET", "/api/v1/applications/demo/time-series/data?endpointId=ep-tok1&timeSeriesName=x&fromDate=yesterday")
    assert code == 400 and "RFC 3339" in err["error"]
