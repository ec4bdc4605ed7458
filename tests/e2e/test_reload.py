"""`systemctl reload` (SIGHUP): the daemon reads its configuration file again and applies it
without a restart when it is valid; an invalid one is refused with every error and the
running configuration stays. Buffered samples are kept either way."""

import signal

import configs
from conftest import Gateway, core_samples, free_port, wait_for


def site(tmp_path, port, devices):
    core = configs.core(port, versions=["plant-v1"])
    return configs.config(tmp_path / "state", core=core, devices=devices, log_level="info")


def sim(name):
    return configs.simulated_device(name, "plant-v1", 200, [{"name": "level", "waveform": "sine"}])


def test_sighup_applies_a_valid_file_and_refuses_an_invalid_one(tmp_path):
    port = free_port()
    gw = Gateway(tmp_path, site(tmp_path, port, [sim("tank-a")]))
    db = tmp_path / "state/core.sqlite"
    try:
        wait_for("tank-a's samples", lambda: len(core_samples(db, "tank-a")) > 0, timeout=30)
        # A second device in the file, then SIGHUP: it starts sending, tank-a goes on.
        gw.config.write_text(site(tmp_path, port, [sim("tank-a"), sim("tank-b")]))
        gw.proc.popen.send_signal(signal.SIGHUP)
        wait_for("tank-b's samples after the reload", lambda: len(core_samples(db, "tank-b")) > 0, timeout=30)
        before = len(core_samples(db, "tank-a"))
        wait_for("tank-a still sending", lambda: len(core_samples(db, "tank-a")) > before, timeout=30)
        # An invalid file is refused with its errors; the process keeps running as it was.
        gw.config.write_text(site(tmp_path, port, [sim("tank-a"), sim("tank-a")]))
        gw.proc.popen.send_signal(signal.SIGHUP)
        wait_for("the refusal", lambda: "reload refused" in gw.proc.output(), timeout=30)
        assert "duplicate device name" in gw.proc.output()
        n = len(core_samples(db, "tank-b"))
        wait_for("tank-b still sending", lambda: len(core_samples(db, "tank-b")) > n, timeout=30)
        assert gw.proc.popen.poll() is None
    finally:
        assert gw.stop() == 0, gw.proc.output()
    # The file as read at each change is kept in the history.
    kept = sorted((tmp_path / "state/config").glob("*.toml"))
    assert len(kept) == 2, kept


def test_a_dropin_file_is_merged_at_start_and_at_reload(tmp_path):
    """`conf.d/*.toml` beside the file: merged in name order (arrays of tables appended,
    keys replaced); a broken fragment is refused by name and the running site stays."""
    port = free_port()
    gw_file = tmp_path / "gateway.toml"
    dropins = tmp_path / "conf.d"
    dropins.mkdir()
    (dropins / "10-level.toml").write_text('[gateway]\nlog_level = "debug"\n')
    gw = Gateway(tmp_path, site(tmp_path, port, [sim("tank-a")]))
    assert gw.config == gw_file
    db = tmp_path / "state/core.sqlite"
    try:
        wait_for("tank-a's samples", lambda: len(core_samples(db, "tank-a")) > 0, timeout=30)
        assert " DEBUG " in gw.proc.output(), "the fragment's log level is in force"
        (dropins / "20-tank-b.toml").write_text(configs.render({"devices": [sim("tank-b")]}))
        gw.proc.popen.send_signal(signal.SIGHUP)
        wait_for("tank-b's samples after the reload", lambda: len(core_samples(db, "tank-b")) > 0, timeout=30)
        before = len(core_samples(db, "tank-a"))
        wait_for("tank-a still sending", lambda: len(core_samples(db, "tank-a")) > before, timeout=30)
        (dropins / "30-broken.toml").write_text("[web\n")
        gw.proc.popen.send_signal(signal.SIGHUP)
        wait_for("the refusal", lambda: "reload refused" in gw.proc.output(), timeout=30)
        assert "30-broken.toml" in gw.proc.output()
        n = len(core_samples(db, "tank-b"))
        wait_for("tank-b still sending", lambda: len(core_samples(db, "tank-b")) > n, timeout=30)
    finally:
        assert gw.stop() == 0, gw.proc.output()
    kept = sorted((tmp_path / "state/config").glob("*.toml"))
    assert "20-tank-b.toml" in kept[-1].read_text().splitlines()[0], "the history keeps the merged text"
