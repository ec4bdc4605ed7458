"""Shared helpers for the end-to-end tests: the real kp-gateway binary and real peers.

Every process is started here on 127.0.0.1 with a free port and stopped by PID.
"""

import os
import signal
import socket
from contextlib import closing
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import configs

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("KP_GATEWAY_BIN", ROOT / "target" / "debug" / "kp-gateway"))


_PORTS_GIVEN: set = set()


def free_port() -> int:
    """A free loopback port, never one this test run has handed out before: two calls in a
    row can otherwise get the same port back from the kernel (a core whose MQTT and HTTP
    ports clashed failed one CI run)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def wait_port(port: int, proc: "Proc", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not listen on {port}:\n{proc.output()}")


def wait_for(what: str, check, timeout: float = 20.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what} (last: {last!r})")


class Proc:
    """A child process with its output in a file; stopped by PID."""

    def __init__(self, name: str, args: list, log: Path, env=None, cwd=None):
        self.name = name
        self.log = log
        self._out = open(log, "wb")
        self.popen = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        self._out.close()
        return self.popen.returncode


def rest_call(port: int, method: str, path: str, body=None, auth=("admin", "admin-password"), raw: bytes = None,
              cacert: Path = None):
    """A call to the core's REST API with curl: (status code, parsed JSON or None).
    Over HTTPS when `cacert` (the CA of the server certificate) is given."""
    import json

    scheme = "https" if cacert else "http"
    args = ["curl", "-s", "-X", method, "-w", "\n%{http_code}", f"{scheme}://127.0.0.1:{port}{path}"]
    if cacert:
        args += ["--cacert", str(cacert)]
    if auth:
        args += ["-u", f"{auth[0]}:{auth[1]}"]
    if body is not None:
        raw = json.dumps(body).encode()
    if raw is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    out = subprocess.run(args, input=raw, capture_output=True, timeout=60)
    text, _, code = out.stdout.decode().rpartition("\n")
    return int(code), (json.loads(text) if text else None)


def hash_password(password: str) -> str:
    out = subprocess.run([str(BIN), "hash-password"], input=password + "\n", capture_output=True, text=True, check=True)
    return out.stdout.strip()


class Core:
    """kp-gateway in core-only mode: the embedded platform core alone."""

    APP_VERSION = "demo-v1"
    USER = "dev"
    PASSWORD = "dev-password"
    TOKENS = ["tok1", "tok2", "tok3"]
    ADMIN_PASSWORD = "admin-password"

    def __init__(self, tmp: Path, allow_anonymous: bool = False, idle_timeout_secs: int = 600, extra_tokens=(),
                 core_keys: dict = None, mqtt_keys: dict = None, http_keys: dict = None, cacert: Path = None):
        """`core_keys`: keys (or tables) added to `[core]`; `mqtt_keys`: to `[core.mqtt]`;
        `http_keys`: to `[core.http]` (with `cacert`, the API is called over HTTPS)."""
        self.cacert = cacert
        self.port = free_port()
        self.http_port = free_port()
        self.state = tmp / "state"
        endpoints = [{"id": f"ep-{t}", "token": t, "app_version": self.APP_VERSION}
                     for t in [*self.TOKENS, *extra_tokens]]
        core = {
            "mqtt": {"listen": f"127.0.0.1:{self.port}", "allow_anonymous": allow_anonymous},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "epl": {"idle_timeout_secs": idle_timeout_secs},
            "api": {"admin_username": "admin", "admin_password_hash": hash_password(self.ADMIN_PASSWORD)},
            "applications": [{"name": "demo", "versions": [self.APP_VERSION]}],
            "credentials": [{"username": self.USER, "password_hash": hash_password(self.PASSWORD),
                             "applications": ["*"]}],
            "endpoints": endpoints,
        }
        core.update(core_keys or {})
        core["mqtt"].update(mqtt_keys or {})
        core["http"].update(http_keys or {})
        self.config = tmp / "core.toml"
        self.config.write_text(configs.config(self.state, core=core))
        # Ready is the process's own word (every listener bound: MQTT, HTTP and any TLS one
        # a test adds), not the first port that answers.
        self.proc, notify = start_notified("core", ["--config", str(self.config)], tmp / "core.log")
        notify.close()  # later notices (STOPPING=1) go nowhere; the binary ignores that
        wait_port(self.port, self.proc)
        wait_port(self.http_port, self.proc)

    @property
    def db(self) -> Path:
        return self.state / "core.sqlite"

    def query(self, sql: str, *args):
        with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as c:
            return c.execute(sql, args).fetchall()

    def api(self, method: str, path: str, body=None, auth=("admin", "admin-password"), raw: bytes = None):
        """A REST API call with curl: (status code, parsed JSON or None)."""
        return rest_call(self.http_port, method, path, body, auth, raw, self.cacert)

    def stop(self):
        code = self.proc.stop()
        assert code == 0, f"core exited with {code}:\n{self.proc.output()}"



@pytest.fixture
def core(tmp_path):
    c = Core(tmp_path)
    yield c
    code = c.proc.stop()
    assert code == 0, f"core exited with {code}:\n{c.proc.output()}"


@pytest.fixture
def anonymous_core(tmp_path):
    c = Core(tmp_path, allow_anonymous=True)
    yield c
    code = c.proc.stop()
    assert code == 0, f"core exited with {code}:\n{c.proc.output()}"


@pytest.fixture
def nats_server(tmp_path):
    """A real nats-server on a free loopback port for one test, stopped by PID."""
    from kaa_nats import NatsServer  # kaa_nats imports this module

    server = NatsServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def python():
    return sys.executable


HERE = Path(__file__).parent


def start_modbus_device(tmp_path: Path, spec: dict, name: str = "pymodbus") -> Proc:
    """A pymodbus server (see modbus_device.py); waits until it is reachable."""
    import json

    proc = Proc(name, [sys.executable, str(HERE / "modbus_device.py"), json.dumps(spec)], tmp_path / f"{name}.log")
    if spec["transport"] == "rtu":
        time.sleep(0.5)  # no socket to probe; the serial server opens its port at once
        if proc.popen.poll() is not None:
            raise RuntimeError(proc.output())
    else:
        wait_port(spec["port"], proc)
    return proc


class PtyPair:
    """Two linked pseudo-terminals made by socat: what one end writes, the other reads."""

    def __init__(self, tmp_path: Path, name: str = "pty"):
        self.a = tmp_path / f"{name}-a"
        self.b = tmp_path / f"{name}-b"
        self.tmp_path = tmp_path
        self.name = name
        self.proc = None
        self.start()

    def start(self):
        self.proc = Proc(
            f"socat-{self.name}",
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            self.tmp_path / f"socat-{self.name}.log",
        )
        wait_for("socat PTY links", lambda: self.a.exists() and self.b.exists(), timeout=10)

    def stop(self):
        self.proc.stop()
        wait_for("socat PTY links to go", lambda: not self.a.exists() and not self.b.exists(), timeout=10)


class ReadyListener:
    """Receives sd_notify(3) datagrams, as systemd does for a `Type=notify` service: the
    process's own word that it is ready (`READY=1`), not a guess from its log."""

    def __init__(self):
        # A short path: AF_UNIX paths are limited to 108 bytes, pytest's tmp paths are long.
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="kpn"))
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.seen: list = []

    def ready(self) -> bool:
        try:
            self.seen.extend(self.sock.recv(4096).decode(errors="replace").split("\n"))
        except (socket.timeout, BlockingIOError):
            pass
        return "READY=1" in self.seen

    def close(self):
        self.sock.close()
        self.path.unlink(missing_ok=True)
        if self.dir.exists():
            self.dir.rmdir()


def start_notified(name: str, args: list, log: Path, env=None) -> tuple:
    """Starts the kp-gateway binary with `args` and a `$NOTIFY_SOCKET`, and returns (its
    Proc, the ReadyListener) once it sent READY=1; stopped at once if it exits or never
    does."""
    notify = ReadyListener()
    env = {**os.environ, **(env or {}), "NOTIFY_SOCKET": str(notify.path)}
    proc = Proc(name, [str(BIN), *args], log, env=env)

    def started():
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.popen.returncode}:\n{proc.output()}")
        return notify.ready()

    try:
        wait_for(f"{name} to be ready", started, timeout=60)
    except BaseException:
        proc.stop()
        notify.close()
        raise
    return proc, notify


class Gateway:
    """The kp-gateway binary with a config written by the test; returns once it told its
    readiness over `$NOTIFY_SOCKET` (buffer open, core and listeners up)."""

    def __init__(self, tmp_path: Path, config: str, name: str = "gateway", args=(), env=None):
        self.tmp_path = tmp_path
        self.config = tmp_path / f"{name}.toml"
        self.config.write_text(config)
        self.proc, self.notify = start_notified(name, ["-c", str(self.config), *args], tmp_path / f"{name}.log", env)

    def stop(self) -> int:
        code = self.proc.stop()
        self.notify.close()
        return code


def core_samples(db: Path, token: str) -> list:
    """Raw data samples the core stored for the endpoint with `token`, oldest first."""
    import json

    if not db.exists():
        return []
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        try:
            rows = c.execute(
                "SELECT s.sample FROM data_samples s JOIN tokens t ON t.endpoint_id = s.endpoint_id "
                "WHERE t.token = ? ORDER BY s.id",
                (token,),
            ).fetchall()
        except sqlite3.OperationalError:
            return []
    return [json.loads(r[0]) for r in rows]


def make_pki(d: Path):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl;
    plus a self-signed client certificate `stranger` that no CA vouches for."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")]:
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=stranger", "-keyout", str(d / "stranger.key"), "-out", str(d / "stranger.pem"))


class Mosquitto:
    """A real Mosquitto broker on a free loopback port; `extra` adds config lines
    (e.g. a TLS listener). Can be stopped and started again on the same port."""

    def __init__(self, tmp_path: Path, extra: str = ""):
        self.port = free_port()
        self.tmp_path = tmp_path
        self.conf = tmp_path / "mosquitto.conf"
        # "user root": as root, mosquitto would switch to its own user and could not read
        # the test files (under a 0700 pytest directory); as another user it is ignored.
        self.conf.write_text(f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}")
        self.runs = 0
        self.start()

    def start(self):
        self.runs += 1
        self.proc = Proc("mosquitto", ["mosquitto", "-c", str(self.conf)], self.tmp_path / f"mosquitto-{self.runs}.log")
        wait_port(self.port, self.proc)

    def stop(self):
        self.proc.stop()


@pytest.fixture
def mosquitto(tmp_path):
    m = Mosquitto(tmp_path)
    yield m
    m.stop()
