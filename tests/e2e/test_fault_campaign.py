"""The fault campaign's short version (tests/faults/campaign.py; RELIABILITY.md has the
long runs): a bridge under seeded random faults — kill -9 and restart, broker outages, a
silent platform, disk-full episodes on a 1 MiB tmpfs — must lose nothing it took, stop
cleanly at the end, and count every sample it refused at the full disk."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "faults"))

import campaign  # noqa: E402


@pytest.mark.parametrize("seed", [1, 20261201])
def test_a_short_fault_campaign_loses_nothing(tmp_path, seed):
    if os.geteuid() != 0:
        pytest.fail("the campaign's disk-full episodes mount a small tmpfs and need root (CI runs as root)")
    report = campaign.run(cycles=8, seed=seed, work=tmp_path)
    summary = {k: v for k, v in report.items() if k != "lost_examples"}
    assert report["lost"] == 0, report
    # Nothing that waited when the faults stopped is still in the buffer (no stuck rows).
    assert report["still_waiting"] == 0, summary
    assert report["last_exit_code"] == 0, summary
    assert report["taken"] > 1000, summary
    # These seeds draw every fault kind; the samples refused at the full disk were
    # counted durably in the buffer.
    assert set(report["faults"]) == {"kill9", "outage", "silence", "disk_full"}, summary
    assert report["drops"].get("disk_full", 0) > 0, summary
    # At-least-once repeats only what was in flight at a fault (16 batches of at most 100).
    faults = sum(report["faults"].values())
    assert report["duplicates"] <= faults * 16 * 100, summary
