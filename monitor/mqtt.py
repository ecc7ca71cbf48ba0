"""Events to an MQTT broker (paho-mqtt): `PREFIX/<source>/events` (QoS 1), `PREFIX/<source>/state` (QoS 1,
retained), `PREFIX/status` ("online", or the broker's "offline" will when this process goes). paho's own network
thread connects, and reconnects with backoff when the broker is absent or lost; messages published meanwhile wait in
its bounded queue (QoS 1) and go out on reconnect, so the frame loop never waits for the broker."""

from __future__ import annotations

import json
import threading
import uuid

from fusionrt.monitor.address import parse_address
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.optional import require

__all__ = ["MqttSink"]

QUEUED_MAX = 10_000  # QoS 1 messages kept while the broker is away; past it new ones are dropped and counted
BACKOFF_S = (0.5, 8.0)  # reconnect waits: shortest, longest (doubling between)


class MqttSink:
    def __init__(self, address: str, prefix: str = "fusionrt", client_id: str | None = None):
        mqtt = require("paho.mqtt.client", "MQTT events")
        if not prefix or any(c in prefix for c in "#+") or prefix.startswith("/") or prefix.endswith("/"):
            raise InputError(f"--topic {prefix!r}: expected a topic prefix like 'site/cameras' (no wildcards, no "
                             "leading or trailing '/').")
        self.host, self.port = parse_address(address, "--mqtt", 1883)
        self.prefix, self._mqtt = prefix, mqtt
        self.dropped = 0  # messages refused by the full queue
        self.connected = threading.Event()
        self.connects = 0
        self._states: dict = {}  # source -> its latest state, published again on each (re)connect
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"fusionrt-{uuid.uuid4().hex[:8]}")
        self.client.max_queued_messages_set(QUEUED_MAX)
        self.client.reconnect_delay_set(min_delay=BACKOFF_S[0], max_delay=BACKOFF_S[1])
        self.client.will_set(f"{prefix}/status", "offline", qos=1, retain=True)
        self.client.on_connect, self.client.on_disconnect = self._on_connect, self._on_disconnect
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()

    def _topic(self, source: str, leaf: str) -> str:
        safe = "".join("_" if c in "#+/" else c for c in source)  # an id like rtsp://host/x stays one topic level
        return f"{self.prefix}/{safe}/{leaf}"

    def _publish(self, topic: str, payload: str, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.connects += 1
        self.connected.set()
        self._publish(f"{self.prefix}/status", "online", retain=True)
        with self._lock:
            states = list(self._states.items())
        for source, record in states:  # a restarted broker without persistence gets the retained states again
            self._publish(self._topic(source, "state"), json.dumps(record), retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()

    def event(self, record: dict) -> None:
        self._publish(self._topic(record["source"], "events"), json.dumps(record))

    def state(self, record: dict) -> None:
        with self._lock:
            self._states[record["source"]] = record
        self._publish(self._topic(record["source"], "state"), json.dumps(record), retain=True)

    def close(self, timeout_s: float = 2.0) -> None:
        """Say offline, send what is queued (at most `timeout_s` while connected), and stop the network thread."""
        if self.connected.is_set():
            self.client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True).wait_for_publish(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
