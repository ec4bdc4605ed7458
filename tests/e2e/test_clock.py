"""A clock set while the gateway runs (a Pi without RTC booting with a stale time, then
NTP): the samples buffered before the step are moved by it, under a real libfaketime
clock for the gateway process only (the machine's clock is never touched)."""

import glob
import time

from conftest import Gateway, Mosquitto, wait_for
from kaa_server import KaaServer
from test_store_and_forward import bridge, buffer_db, devices, pending_keys

YEAR_MS = 365 * 24 * 3600 * 1000
POLL_MS = 200


def faketime_lib() -> str:
    found = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    assert found, "libfaketime is missing (tests/run.sh installs the faketime package)"
    return found[0]


def test_samples_buffered_before_the_clock_is_set_get_the_right_time(tmp_path):
    stamp = tmp_path / "faketime"
    stamp.write_text("-365d\n")
    env = {"LD_PRELOAD": faketime_lib(), "FAKETIME_TIMESTAMP_FILE": str(stamp),
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_CACHE_DURATION": "1"}
    broker = Mosquitto(tmp_path)
    kaa = KaaServer(broker.port)
    broker.stop()  # no upstream yet: everything stays in the buffer
    gw = Gateway(tmp_path, bridge(tmp_path, broker.port, devices(1, POLL_MS)), env=env)
    db = buffer_db(tmp_path)
    try:
        wait_for("a backlog stamped a year ago", lambda: len(pending_keys(db)) >= 15, timeout=60)
        now = time.time() * 1000
        assert all(abs(ts - (now - YEAR_MS)) < 3600_000 for _, ts in pending_keys(db))
        stamp.write_text("+0\n")  # NTP sets the clock
        wait_for("the step noticed", lambda: "clock: stepped by" in gw.proc.output(), timeout=60)
        set_at = time.time() * 1000
        broker.start()
        wait_for("the backlog delivered", lambda: len(pending_keys(db)) < 5 and len(kaa.keys()) >= 15, timeout=60)
    finally:
        assert gw.stop() == 0, gw.proc.output()
        kaa.close()
        broker.stop()
    stamps = [ts for _, ts in kaa.keys()]
    stale = [ts for ts in stamps if ts < set_at - YEAR_MS / 2]
    right = [ts for ts in stamps if abs(ts - set_at) < 600_000]
    assert len(stale) + len(right) == len(stamps), stamps
    # Left as taken: only those from the last second before the step (the watcher looks
    # once a second), plus the clock cache of libfaketime (1 s): at most 2 s of samples.
    assert len(stale) <= 2 * 1000 // POLL_MS + 1, (len(stale), len(right))
    assert len(right) >= 15 - len(stale)
    assert "clock: synchronisation status unknown" in gw.proc.output()
