"""Time series points go through `points_recent`, are settled into blocks, and come back
whole and in order by the REST API and the `time_series` view, with EPL's connectivity
points in `points`; deleting the endpoint deletes them all."""

from conftest import wait_for
from kp_client import KpClient

AVN = "demo-v1"
FIELDS = 600  # series of one endpoint: one settle takes 600 x 128 = 76 800 points
BATCH = 8  # samples per request (a payload under 128 KiB)
REQUESTS = 20  # 96 000 points: one settle's worth, and more left in `points_recent`
BASE_MS = 1_780_000_000_000


def value(i, j):
    return i * 1000 + j + 0.25


def q(name):
    return f"endpointId=ep-tok2&timeSeriesName=auto~{name}"


def test_settled_points_read_back_whole_and_in_order_and_go_with_their_endpoint(core):
    c = KpClient(core.port, core.USER, core.PASSWORD)
    try:
        for r in range(REQUESTS):
            samples = []
            for i in range(r * BATCH, (r + 1) * BATCH):
                s = {f"f{j}": value(i, j) for j in range(FIELDS)}
                s["timestamp"] = BASE_MS + i * 1000
                samples.append(s)
            got = c.request(f"kp1/{AVN}/dcx/tok2/json/{r + 1}", samples, timeout=60)
            assert got == ("status", b""), got[1][:300]
    finally:
        c.close()
    total = REQUESTS * BATCH
    # The settle runs after the answer that filled `points_recent`.
    wait_for("a settle", lambda: core.query("SELECT count(*) FROM point_blocks")[0][0] > 0, timeout=60)
    # Whether a settle runs before or after the next request's append depends on timing:
    # both are fine, so only the sum is exact.
    recent, blocks, in_blocks = core.query(
        "SELECT (SELECT count(*) FROM points_recent), (SELECT count(*) FROM point_blocks), "
        "(SELECT sum(json_array_length(points)) FROM point_blocks)")[0]
    assert recent > 0 and blocks >= FIELDS and recent + in_blocks == total * FIELDS, (recent, blocks, in_blocks)
    assert core.query("SELECT DISTINCT s.name FROM points p JOIN series s ON s.id = p.series_id") \
        == [("connectivity",)]
    for name, j in [("f0", 0), ("f7", 7), ("f599", 599)]:
        code, data = core.api("GET", f"/api/v1/applications/demo/time-series/data?{q(name)}")
        assert code == 200
        got = [p["values"]["value"] for p in data[0]["ep-tok2"][f"auto~{name}"]]
        assert got == [value(i, j) for i in range(total)]
        code, last = core.api("GET", f"/api/v1/applications/demo/time-series/last?{q(name)}")
        assert code == 200 and last[0]["ep-tok2"][f"auto~{name}"][0]["values"]["value"] == value(total - 1, j)
    # A range inside what was settled: only its points.
    code, data = core.api("GET", f"/api/v1/applications/demo/time-series/data?{q('f3')}"
                          "&fromDate=2026-05-28T20:27:00Z&toDate=2026-05-28T20:27:09Z")
    assert code == 200
    ts = [BASE_MS + i * 1000 for i in range(total)]
    want = [value(i, 3) for i in range(total) if 1_780_000_020_000 <= ts[i] <= 1_780_000_029_000]
    assert [p["values"]["value"] for p in data[0]["ep-tok2"]["auto~f3"]] == want and len(want) == 10
    # The view reads all three tables, blocks included.
    n = core.query("SELECT count(*) FROM time_series WHERE endpoint_id = 'ep-tok2' AND name LIKE 'auto~%'")
    assert n == [(total * FIELDS,)]
    rows = core.query("SELECT ts_ms, value FROM time_series WHERE endpoint_id = 'ep-tok2' AND name = 'auto~f42' "
                      "ORDER BY ts_ms, seq")
    assert rows == [(BASE_MS + i * 1000, value(i, 42)) for i in range(total)]
    assert core.api("DELETE", "/api/v1/endpoints/ep-tok2")[0] == 204
    assert core.query("SELECT (SELECT count(*) FROM points), (SELECT count(*) FROM points_recent), "
                      "(SELECT count(*) FROM point_blocks)") == [(0, 0, 0)]
