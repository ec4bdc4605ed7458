"""A small 1/KP client on paho-mqtt, as KaaIoT's own example clients are built."""

import json
import queue
import threading
import time

import paho.mqtt.client as mqtt


class KpClient:
    def __init__(self, port: int, username=None, password=None, client_id: str = "test-client",
                 transport: str = "tcp", tls: dict = None, clean_session: bool = True, will=None):
        """`transport`: "tcp" or "websockets" (path /ws); `tls`: kwargs for paho's tls_set;
        `will`: (topic, payload) of a will message."""
        self.messages: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
        self.seen: list = []
        self._lock = threading.Lock()
        self.connack = None
        self._connected = threading.Event()
        self.disconnected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  transport=transport, clean_session=clean_session)
        if transport == "websockets":
            self.client.ws_set_options(path="/ws")
        if tls is not None:
            self.client.tls_set(**tls)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        # Tests decide about reconnecting; paho must not do it behind their back.
        self.client.reconnect_delay_set(60, 120)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("no CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected.set()

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.seen.append((msg.topic, msg.payload))
        self.messages.put((msg.topic, msg.payload))

    def subscribe(self, topic: str, qos: int = 1):
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(10), "no SUBACK"

    def publish(self, topic: str, payload, qos: int = 1):
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos)
        if qos > 0:
            info.wait_for_publish(10)
        return info

    def wait_message(self, topic_prefix: str, timeout: float = 10.0):
        """The next message whose topic starts with `topic_prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no message on {topic_prefix}*; seen: {self.seen}")
            try:
                topic, payload = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if topic.startswith(topic_prefix):
                return topic, payload

    def request(self, topic: str, payload, qos: int = 1, timeout: float = 10.0):
        """Publishes a request and returns (outcome, payload): outcome is 'status' or 'error'."""
        self.publish(topic, payload, qos)
        reply_topic, body = self.wait_message(topic + "/", timeout)
        outcome = reply_topic[len(topic) + 1 :]
        return outcome, body

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
