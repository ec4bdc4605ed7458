"""A byte-level MQTT 3.1.1 client for tests that must control every packet: withhold a
PUBACK, send malformed or oversized packets, or watch DUP flags. Real clients hide those."""

import socket
import struct


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(b) -> bytes:
    if isinstance(b, str):
        b = b.encode()
    return struct.pack("!H", len(b)) + b


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


def connect(client_id: str, user=None, password=None, clean=True, keepalive=60, will=None) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if user else 0) | (0x40 if password else 0)
    payload = _str(client_id)
    if will:
        flags |= 0x04 | 0x08  # will flag, will QoS 1
        payload += _str(will[0]) + _str(will[1])
    if user:
        payload += _str(user)
    if password:
        payload += _str(password)
    return packet(0x10, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload)


def publish(topic, payload: bytes, qos=0, pkid=1, retain=False) -> bytes:
    body = _str(topic) + (struct.pack("!H", pkid) if qos else b"") + payload
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body)


def puback(pkid: int) -> bytes:
    return packet(0x40, struct.pack("!H", pkid))


class RawClient:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, n: int):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk

    def read(self, timeout: float = 10.0):
        """The next packet as (type, flags, body)."""
        self.sock.settimeout(timeout)
        self._fill(2)
        n, mult, i = 0, 1, 1
        while True:
            self._fill(i + 1)
            b = self.buf[i]
            n += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        self._fill(i + n)
        first, body = self.buf[0], self.buf[i:i + n]
        self.buf = self.buf[i + n:]
        return first >> 4, first & 0x0F, body

    def read_publish(self, timeout: float = 10.0):
        """The next PUBLISH as dict(topic, payload, qos, dup, pkid), skipping other packets."""
        while True:
            kind, flags, body = self.read(timeout)
            if kind != 3:
                continue
            qos = (flags >> 1) & 3
            tlen = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + tlen].decode()
            rest = body[2 + tlen:]
            pkid = None
            if qos:
                pkid, rest = struct.unpack("!H", rest[:2])[0], rest[2:]
            return {"topic": topic, "payload": rest, "qos": qos, "dup": bool(flags & 0x08), "pkid": pkid}

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def subscribe(topic_filter: str, qos=0, pkid=1) -> bytes:
    return packet(0x82, struct.pack("!H", pkid) + _str(topic_filter) + bytes([qos]))
