"""The open-file limit against the configured connection caps: raised to fit when the hard
limit allows, a warning with the fix when it does not (else a flood of connections would
end in "Too many open files" for everyone)."""

import configs
from conftest import BIN, Proc, ReadyListener, free_port, wait_for


def run_with_nofile(tmp_path, name: str, soft: int, hard: int, max_connections: int) -> str:
    core = configs.core(free_port(), mqtt={"max_connections": max_connections})
    conf = tmp_path / f"{name}.toml"
    conf.write_text(configs.config(tmp_path / name, core=core, log_level="info"))
    ready = ReadyListener()
    proc = Proc(name, ["prlimit", f"--nofile={soft}:{hard}", str(BIN), "-c", str(conf)], tmp_path / f"{name}.log",
                env={"NOTIFY_SOCKET": str(ready.path), "PATH": "/usr/bin:/bin"})
    try:
        wait_for(f"{name} ready", ready.ready, timeout=60)
    finally:
        assert proc.stop() == 0, proc.output()
        ready.close()
    return proc.output()


def test_the_open_file_limit_is_raised_to_the_caps_or_the_fix_is_logged(tmp_path):
    # Caps: MQTT 2000 + 256 reserve = 2256 open files.
    raised = run_with_nofile(tmp_path, "raised", 1024, 4096, 2000)
    assert "open-file limit raised from 1024 to 2256" in raised, raised
    short = run_with_nofile(tmp_path, "short", 1024, 1024, 2000)
    assert "need up to 2256 open files but the limit is 1024" in short, short
    assert "LimitNOFILE=2256" in short
    fits = run_with_nofile(tmp_path, "fits", 4096, 4096, 2000)
    assert "open-file limit" not in fits and "open files" not in fits, fits
