"""A small Kaa server stand-in on paho-mqtt, for a real Mosquitto broker: it answers the
gateway's 2/DCP batches as told (status, an error code, silence, or a delay), records
every sample it confirmed, pushes commands and collects command results."""

import json
import threading
import time

import paho.mqtt.client as mqtt


class KaaServer:
    def __init__(self, port: int, mode: str = "status", client_id: str = "kaa-server"):
        self.mode = mode  # "status", "error:<code>", "silent", "delay:<ms>", "hold"
        self.held = []  # (topic, payload) of batches kept unanswered in "hold" mode
        self.lock = threading.Lock()
        self.samples = []  # (token, sample) for every sample in an answered-with-status batch
        self.batches = 0
        self.results = []
        self.applied = []
        self.config_requests = []
        self.observed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.c.on_message = self.on_message
        self.connected = threading.Event()

        def on_connect(client, userdata, flags, rc, props):
            client.subscribe("kp1/#", 1)  # again after every reconnect (clean session)
            self.connected.set()

        self.c.on_connect = on_connect
        self.c.on_disconnect = lambda *a: self.connected.clear()
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10), "kaa server could not connect"

    def on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) >= 6 and parts[2] == "dcx" and parts[4] == "json" and parts[-1].isdigit():
            mode = self.mode
            if mode == "silent":
                return
            with self.lock:
                if self.mode == "hold":
                    self.held.append((msg.topic, msg.payload))
                    return
            if mode.startswith("delay:"):
                time.sleep(int(mode.split(":")[1]) / 1000)
                mode = "status"
            if mode.startswith("error:"):
                code = int(mode.split(":")[1])
                body = json.dumps({"statusCode": code, "reasonPhrase": f"test error {code}"})
                client.publish(msg.topic + "/error", body, qos=1)
                return
            with self.lock:
                self.samples.extend((parts[3], s) for s in json.loads(msg.payload))
                self.batches += 1
            client.publish(msg.topic + "/status", b"", qos=1)
        elif parts[2] == "cex" and len(parts) >= 7 and parts[4] == "command" and parts[-1].isdigit():
            self.observed.set()
        elif parts[2] == "cmx" and parts[4] == "applied":
            with self.lock:
                self.applied.append(json.loads(msg.payload))
        elif parts[2] == "cmx" and parts[4] == "config" and parts[-1].isdigit():
            with self.lock:
                self.config_requests.append(json.loads(msg.payload))
        elif parts[2] == "cex" and parts[4] == "result":
            with self.lock:
                self.results.extend(json.loads(msg.payload))

    def received(self, token=None):
        with self.lock:
            return [s for t, s in self.samples if token is None or t == token]

    def keys(self):
        """(token, timestamp) of every confirmed sample, duplicates included."""
        with self.lock:
            return [(t, s["timestamp"]) for t, s in self.samples]

    def push(self, base: str, commands):
        self.c.publish(f"{base}/command/write/status", json.dumps(commands), qos=1)

    def result(self, cid):
        with self.lock:
            found = [r for r in self.results if r["id"] == cid]
        return found[-1] if found else None

    def stop_holding(self):
        """Answers from now on; returns the batches held so far, unanswered (a lost answer)."""
        with self.lock:
            self.mode = "status"
            held, self.held = self.held, []
        return held

    def answer_held(self):
        """Answers from now on, and stores and answers (`/status`) every batch held so far;
        returns how many there were."""
        held = self.stop_holding()
        for topic, payload in held:
            parts = topic.split("/")
            with self.lock:
                self.samples.extend((parts[3], s) for s in json.loads(payload))
                self.batches += 1
            self.c.publish(topic + "/status", b"", qos=1)
        return len(held)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()
