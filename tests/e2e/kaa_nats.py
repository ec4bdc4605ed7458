"""An independent Kaa service on NATS for the scale-out tests: a real `nats-server`, and
nats-py + fastavro reading Kaa's own .avsc files (from ../shared/kaa-schemas, not from the
project's copy) to decode every event the core publishes and to play external extensions."""

import asyncio
import glob
import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import fastavro
import nats

from conftest import Proc, free_port, wait_for, wait_port

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT.parent / "shared" / "kaa-schemas"


def _load_schemas() -> dict:
    """Every Kaa .avsc by record name (ClientData, ConnectedEvent, TimeSeriesEvent, ...)."""
    out = {}
    for f in sorted(glob.glob(str(SCHEMA_DIR / "*" / "*.avsc"))):
        schema = json.loads(Path(f).read_text())
        out[schema["name"]] = fastavro.parse_schema(schema)
    assert {"ClientData", "ExtensionData", "ConnectedEvent", "DisconnectedEvent", "RegisteredEvent",
            "UnregisteredEvent", "DataSamplesEvent", "TimeSeriesEvent"} <= out.keys(), SCHEMA_DIR
    return out


SCHEMAS = _load_schemas()


def decode(record: str, data: bytes) -> dict:
    """A raw Avro datum (no container header) as the named Kaa record; every byte must be
    part of it."""
    buf = io.BytesIO(data)
    value = fastavro.schemaless_reader(buf, SCHEMAS[record], None)
    assert buf.tell() == len(data), f"{len(data) - buf.tell()} bytes after the {record} record"
    return value


def encode(record: str, value: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMAS[record], value)
    return buf.getvalue()


def nats_server_bin() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")
    assert found, "nats-server is not installed (tests/run.sh installs the Debian package)"
    return found


class NatsServer:
    """A real nats-server on 127.0.0.1 and a free port; stop() and start() keep the port."""

    def __init__(self, tmp: Path, name: str = "nats"):
        self.port = free_port()
        self.tmp = tmp
        self.name = name
        self.runs = 0
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        self.runs += 1
        log = self.tmp / f"{self.name}-{self.runs}.log"
        self.proc = Proc(self.name, [nats_server_bin(), "-a", "127.0.0.1", "-p", str(self.port)], log)
        wait_port(self.port, self.proc)

    def stop(self):
        self.proc.stop()


def wait_on_nats(url: str, replica_id: str, timeout: float = 60):
    """Returns once the core replica `replica_id` answers on NATS: connected, with its
    subscriptions in place. (A core is ready to serve before it reaches NATS, which it
    does in the background; a test that publishes to it must wait for this.) The probe
    is a malformed call on the replica's REST subject, answered with a 400."""
    probe = NatsPeer(url)

    def answered():
        try:
            probe._run(probe.nc.request(f"kaa.v1.replica.{replica_id}.kpgw.rest", b"{not json", timeout=1),
                       timeout=5)
            return True
        except Exception:  # no responders yet, or no answer in time: ask again
            return False

    try:
        wait_for(f"replica {replica_id} to answer on NATS", answered, timeout=timeout)
    finally:
        probe.close()


class TcpRelay:
    """A TCP relay on 127.0.0.1 to `target_port` that the test can cut and restore (same
    port): NATS away for one client only, while others stay connected to the server."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.sockets: list = []
        self.listener = None
        self.restore()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restore(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self):
        """Stops accepting and closes every relayed connection (both ends see it)."""
        # shutdown() first: close() alone would leave the accept() blocked in the other
        # thread holding the socket, and the kernel would go on accepting.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class NatsPeer:
    """A nats-py client on its own asyncio loop in a thread, driven from the (synchronous)
    tests: collects messages on subjects, serves ESP requests, publishes."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.lock = threading.Lock()
        self.seen: list = []  # (subject, data) in arrival order
        self.requests: list = []  # decoded ClientData the extensions got
        self.errors: list = []
        self.nc = self._run(nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                         connect_timeout=5, error_cb=self._on_error))

    async def _on_error(self, e):
        # the tests stop the server on purpose; nats-py reconnects by itself
        self.errors.append(repr(e))

    def _run(self, coro, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def collect(self, subject: str):
        """Keeps every message on `subject` (wildcards allowed) in `self.seen`."""

        async def on_msg(msg):
            with self.lock:
                self.seen.append((msg.subject, msg.data))

        async def sub():
            await self.nc.subscribe(subject, cb=on_msg)
            await self.nc.flush()

        self._run(sub())

    def serve_extension(self, instance: str, answer):
        """Plays the external extension `instance`: queue-subscribes its ClientData subject
        (queue group = instance name, as Kaa services do) and replies to the request's reply
        subject with `answer(client_data) -> ExtensionData dict` (None: no reply)."""

        async def on_msg(msg):
            request = decode("ClientData", msg.data)
            with self.lock:
                self.requests.append((msg.subject, msg.reply, request))
            reply = answer(request)
            if reply is not None and msg.reply:
                await self.nc.publish(msg.reply, encode("ExtensionData", reply))

        async def sub():
            await self.nc.subscribe(f"kaa.v1.service.{instance}.esp.ClientData", queue=instance, cb=on_msg)
            await self.nc.flush()

        self._run(sub())

    def serve_token_provider(self, instance: str, answer):
        """Plays a 16/ECAP provider: `answer(request) -> (endpointId or None, statusCode)`
        for every EndpointTokenValidationRequest on its subject."""

        async def on_msg(msg):
            request = decode("EndpointTokenValidationRequest", msg.data)
            with self.lock:
                self.requests.append((msg.subject, msg.reply, request))
            endpoint, status = answer(request)
            reply = {"correlationId": request["correlationId"], "timestamp": int(time.time() * 1000),
                     "timeout": 0, "tokenId": None, "endpointId": endpoint, "statusCode": status,
                     "reasonPhrase": None if status == 200 else "unknown token"}
            await self.nc.publish(msg.reply, encode("EndpointTokenValidationResponse", reply))

        async def sub():
            await self.nc.subscribe(f"kaa.v1.service.{instance}.ecap.ep-token-request", queue=instance, cb=on_msg)
            await self.nc.flush()

        self._run(sub())

    def publish(self, subject: str, data: bytes):
        async def pub():
            await self.nc.publish(subject, data)
            await self.nc.flush()

        self._run(pub())

    def connected(self) -> bool:
        return self.nc.is_connected

    def messages(self, prefix: str = "") -> list:
        with self.lock:
            return [(s, d) for s, d in self.seen if s.startswith(prefix)]

    def wait_messages(self, prefix: str, count: int = 1, timeout: float = 20) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages(prefix)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise TimeoutError(f"{count} message(s) on {prefix}*: got {self.messages()}")

    def close(self):
        try:
            self._run(self.nc.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def extension_data(request: dict, status: int, payload: bytes = None, reason: str = None,
                   instance: str = None) -> dict:
    """The ExtensionData answering `request` (same correlation, endpoint, resource, ID)."""
    return {
        "correlationId": request["correlationId"],
        "timestamp": int(time.time() * 1000),
        "timeout": 0,
        "appVersionName": request["appVersionName"],
        "extensionInstanceName": instance,
        "endpointId": request["endpointId"],
        "resourcePath": request["resourcePath"],
        "requestId": request["requestId"],
        "payload": payload,
        "statusCode": status,
        "reasonPhrase": reason,
    }
