"""Helpers for the gateway runtime tests: frames built by hand, settings, and an MQTT collector."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from carewatch.mqtt import MqttTarget
from carewatch.settings import Settings

OXIMETER_MAC = "A4:C1:38:00:00:01"
THERMOMETER_MAC = "A4:C1:38:00:00:02"
MOTION_MAC = "A4:C1:38:00:00:03"


def sfloat(value: int) -> bytes:
    """An IEEE-11073 SFLOAT with exponent 0 (whole numbers are all these tests need)."""
    return struct.pack("<H", value & 0x0FFF)


def plx_spot_check(spo2: int, pulse: int) -> bytes:
    """PLX Spot-Check Measurement 0x2A5E with no optional fields."""
    return b"\x00" + sfloat(spo2) + sfloat(pulse)


def plx_spot_check_at(spo2: int, pulse: int, at: datetime) -> bytes:
    """0x2A5E with a timestamp (flag bit 0)."""
    stamp = struct.pack("<HBBBBB", at.year, at.month, at.day, at.hour, at.minute, at.second)
    return b"\x01" + sfloat(spo2) + sfloat(pulse) + stamp


def temperature(celsius_tenths: int) -> bytes:
    """Temperature Measurement 0x2A1C in °C: FLOAT mantissa ``celsius_tenths``, exponent -1."""
    return b"\x00" + struct.pack("<I", (0xFF << 24) | (celsius_tenths & 0xFFFFFF))


def bthome(
    packet_id: int,
    *,
    temp_hundredths: int | None = None,
    motion: int | None = None,
    battery: int | None = None,
) -> bytes:
    """BTHome v2 unencrypted service data: device-info byte 0x40, then objects in id order."""
    out = bytes([0x40, 0x00, packet_id & 0xFF])
    if battery is not None:
        out += bytes([0x01, battery])
    if temp_hundredths is not None:
        out += b"\x02" + struct.pack("<h", temp_hundredths)
    if motion is not None:
        out += bytes([0x21, motion])
    return out


def make_settings(scratch: Path, uid: str, broker_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mqtt_url": broker_url,
        "site_id": f"site-{uid}",
        "gateway_id": f"gw-{uid}",
        "outbox_path": scratch / f"outbox-{uid}.sqlite",
        "state_dir": scratch / f"state-{uid}",
        "publish_batch_ms": 20,
    }
    values.update(overrides)
    return Settings(**values)


class Collector:
    """A persistent-session QoS 1 subscriber (like ingest) that records what one gateway published."""

    def __init__(
        self,
        broker_url: str,
        site_id: str,
        gateway_id: str,
        client_id: str,
        *,
        ca_file: Path | None = None,
        topic_filter: str | None = None,
    ) -> None:
        """Credentials come from ``broker_url``; ``mqtts://`` uses ``ca_file``. ``topic_filter`` overrides the
        default (this gateway's topics), e.g. to watch every gateway's."""
        target = MqttTarget(broker_url)
        self.lock = threading.Lock()
        self.batches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.statuses: list[tuple[bool, dict[str, Any]]] = []
        self.resends: list[bytes] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if target.username:
            self.client.username_pw_set(target.username, target.password)
        if target.tls:
            self.client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        self.prefix = f"carewatch/v1/{site_id}/{gateway_id}"
        self.topic_filter = topic_filter or f"{self.prefix}/#"
        self.topics: list[str] = []
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(target.host, target.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "collector could not subscribe"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/resend"):  # to the gateway, not from it (and maybe garbage on purpose)
            with self.lock:
                self.topics.append(msg.topic)
                self.resends.append(bytes(msg.payload))
            return
        doc = json.loads(msg.payload)
        with self.lock:
            self.topics.append(msg.topic)
            if msg.topic.endswith("/readings"):
                self.batches.append(doc)
            elif msg.topic.endswith("/events"):
                self.events.append(doc)
            elif msg.topic.endswith("/status"):
                self.statuses.append((msg.retain, doc))

    def seqs(self) -> list[int]:
        with self.lock:
            return [r["seq"] for batch in self.batches for r in batch["readings"]]

    def unique(self) -> int:
        return len(set(self.seqs()))

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(predicate, timeout, what, describe=lambda: f"have {self.unique()} readings")

    def assert_exactly_once_in_order(self, total: int) -> None:
        """Every seq 1..total arrived; after de-duplication, first arrivals are in sequence order."""
        seqs = self.seqs()
        assert set(seqs) == set(range(1, total + 1)), (
            f"missing {sorted(set(range(1, total + 1)) - set(seqs))[:10]}"
        )
        first: list[int] = []
        seen: set[int] = set()
        for seq in seqs:
            if seq not in seen:
                seen.add(seq)
                first.append(seq)
        assert first == sorted(first), "readings arrived out of order"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collector_factory() -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def make(broker_url: str, site_id: str, gateway_id: str, client_id: str, **kw: Any) -> Collector:
        collector = Collector(broker_url, site_id, gateway_id, client_id, **kw)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def now_utc() -> datetime:
    return datetime.now(UTC)


class _Helpers:
    """Everything above, handed to tests as the ``gw`` fixture (test modules cannot import a conftest)."""

    OXIMETER_MAC = OXIMETER_MAC
    THERMOMETER_MAC = THERMOMETER_MAC
    MOTION_MAC = MOTION_MAC
    sfloat = staticmethod(sfloat)
    plx_spot_check = staticmethod(plx_spot_check)
    plx_spot_check_at = staticmethod(plx_spot_check_at)
    temperature = staticmethod(temperature)
    bthome = staticmethod(bthome)
    make_settings = staticmethod(make_settings)
    now = staticmethod(now_utc)


@pytest.fixture
def gw() -> type[_Helpers]:
    return _Helpers
