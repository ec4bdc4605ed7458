"""One nats-server for a whole test run on the NATS bus (KP_TEST_BUS=nats): started on
first use on a free loopback port, stopped by PID when the run ends."""

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_SERVER = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url() -> str:
    if "url" not in _SERVER:
        exe = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")
        assert exe, "nats-server is not installed (tests/run.sh installs the Debian package)"
        port = _free_port()
        log = open(Path(tempfile.mkdtemp(prefix="kp-nats-")) / "nats.log", "wb")
        proc = subprocess.Popen([exe, "-a", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
            log.close()

        atexit.register(stop)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"nats-server exited with {proc.returncode}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not listen"
                time.sleep(0.05)
        _SERVER["url"] = f"nats://127.0.0.1:{port}"
    return _SERVER["url"]
