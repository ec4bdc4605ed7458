"""With the embedded core on, kp-gateway runs itself again with glibc's larger per-thread
allocator cache (`GLIBC_TUNABLES`, see gateway/src/malloc_tuning.rs): same PID, same
arguments, other tunables kept, and an operator's own setting of the cache left alone."""

from pathlib import Path

import pytest

import configs
from conftest import Core, Gateway, free_port


def tunables(pid: int) -> list:
    """The process's GLIBC_TUNABLES as a list of `name=value`. Read from its starting
    environment: glibc parses that copy in place, writing a NUL over each ':', so the
    tunables after the first show as entries of their own."""
    entries = [e.decode() for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")]
    out = []
    for i, e in enumerate(entries):
        if e.startswith("GLIBC_TUNABLES="):
            out.append(e[len("GLIBC_TUNABLES="):])
            out += [t for t in entries[i + 1:] if t.startswith("glibc.")]
            break
    return [t for t in out if t]


def test_the_core_runs_with_the_larger_tcache_under_its_own_pid(tmp_path):
    core = Core(tmp_path)
    try:
        assert tunables(core.proc.pid) == ["glibc.malloc.tcache_count=64"]
        args = Path(f"/proc/{core.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert args[1:3] == [b"--config", str(core.config).encode()]
        # The process started (and stopped by its PID) is the one that serves.
        assert core.api("GET", "/api/v1/endpoints")[0] == 200
    finally:
        core.stop()


@pytest.mark.parametrize("given, running", [
    # Another tunable is kept, ours is added after it.
    ("glibc.malloc.arena_max=2", ["glibc.malloc.arena_max=2", "glibc.malloc.tcache_count=64"]),
    # The operator's own cache size wins: no re-run.
    ("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=7", ["glibc.malloc.arena_max=2", "glibc.malloc.tcache_count=7"]),
])
def test_other_tunables_are_kept_and_an_operators_tcache_setting_wins(tmp_path, monkeypatch, given, running):
    monkeypatch.setenv("GLIBC_TUNABLES", given)
    core = Core(tmp_path)
    try:
        assert tunables(core.proc.pid) == running
    finally:
        core.stop()


def test_bridge_mode_keeps_glibcs_default_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    # A bridge to a platform that is not there (nothing listens on the port): it polls and
    # buffers, and keeps trying to connect.
    bridge = configs.config(tmp_path / "state", upstream=configs.upstream(free_port()),
                            devices=[configs.simulated_device("d1", "plant-v1", 1000, [{"name": "t"}])])
    gw = Gateway(tmp_path, bridge)
    try:
        assert tunables(gw.proc.pid) == []
    finally:
        assert gw.stop() == 0
