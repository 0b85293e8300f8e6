"""Helpers for the ingest tests: a registered site with a gateway and devices, readings, a publisher."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from carewatch.mqtt import MqttTarget
from carewatch.settings import Settings
from carewatch.wire import Channel, DeviceKind, Metric, Reading, encode_batch, topic

BASE_TIME = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@dataclass
class Estate:
    """One site with a gateway, a resident-bound oximeter, a room-bound motion sensor and an inactive device."""

    site_id: str
    gateway_id: str
    resident_id: str
    oximeter: str
    motion: str
    inactive: str
    other_site: str
    other_gateway: str
    other_device: str
    extra_gateways: list[str] = field(default_factory=list)

    def reading(self, seq: int, *, device: str | None = None, metric: Metric = Metric.SPO2,
                value: float = 96, at: datetime | None = None) -> Reading:
        when = at or BASE_TIME + timedelta(seconds=seq)
        kind = DeviceKind.MOTION_SENSOR if metric is Metric.MOTION else DeviceKind.PULSE_OXIMETER
        unit = {Metric.SPO2: "%", Metric.PULSE_RATE: "/min", Metric.MOTION: "1", Metric.BATTERY: "%"}[metric]
        return Reading(seq=seq, device_id=device or self.oximeter, device_kind=kind, metric=metric, value=value,
                       unit=unit, measured_at=when, received_at=when + timedelta(milliseconds=300))

    def batch(self, seqs: range | list[int], gateway_id: str | None = None) -> bytes:
        return encode_batch(self.site_id, gateway_id or self.gateway_id, [self.reading(s) for s in seqs])

    def readings_topic(self, gateway: str | None = None, site: str | None = None) -> str:
        return topic(site or self.site_id, gateway or self.gateway_id, Channel.READINGS)


def register_estate(conn: psycopg.Connection, uid: str, extra_gateways: int = 0) -> Estate:
    est = Estate(
        site_id=f"site-{uid}", gateway_id=f"gw-{uid}", resident_id=f"res-{uid}", oximeter=f"oxi-{uid}",
        motion=f"pir-{uid}", inactive=f"old-{uid}", other_site=f"other-{uid}", other_gateway=f"ogw-{uid}",
        other_device=f"odev-{uid}", extra_gateways=[f"gw{i}-{uid}" for i in range(extra_gateways)],
    )
    with conn.transaction():
        conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Test home'), "
                     "(%s, 'household', 'Elsewhere')", (est.site_id, est.other_site))
        conn.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                     "VALUES (%s, %s, 'Test Person', '1940-01-01')", (est.resident_id, est.site_id))
        for gw in [est.gateway_id, *est.extra_gateways]:
            conn.execute("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s)", (gw, est.site_id))
        conn.execute("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s)", (est.other_gateway, est.other_site))
        conn.execute(
            """INSERT INTO devices (device_id, site_id, gateway_id, kind, resident_id, room, role, active) VALUES
               (%s, %s, %s, 'pulse_oximeter', %s, NULL, NULL, true),
               (%s, %s, %s, 'motion_sensor', NULL, 'hall', 'hall', true),
               (%s, %s, %s, 'pulse_oximeter', NULL, NULL, NULL, false),
               (%s, %s, %s, 'motion_sensor', NULL, 'kitchen', 'kitchen', true)""",
            (est.oximeter, est.site_id, est.gateway_id, est.resident_id,
             est.motion, est.site_id, est.gateway_id,
             est.inactive, est.site_id, est.gateway_id,
             est.other_device, est.other_site, est.other_gateway),
        )
    return est


@pytest.fixture
def estate(db: psycopg.Connection, uid: str) -> Estate:
    return register_estate(db, uid)


def stored_seqs(dsn: str, gateway_id: str) -> list[int]:
    """Every stored seq of a gateway, with repeats (so a double insert shows)."""
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM readings WHERE gateway_id = %s ORDER BY seq",
                                           (gateway_id,))]


def worker_settings(dsn: str, mqtt_url: str, **extra: object) -> Settings:
    return Settings(database_url=dsn, mqtt_url=mqtt_url, metrics_port=0, **extra)


class Publisher:
    """A QoS 1 publisher that waits for each PUBACK (so 'published' means the broker has it)."""

    def __init__(self, url: str, client_id: str) -> None:
        target = MqttTarget(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.connect(target.host, target.port, keepalive=30)
        self.client.loop_start()
        self._lock = threading.Lock()

    def publish(self, topic_name: str, payload: bytes, *, retain: bool = False, timeout: float = 10) -> None:
        with self._lock:
            info = self.client.publish(topic_name, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"broker did not acknowledge publish to {topic_name}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher_factory() -> Iterator[object]:
    made: list[Publisher] = []

    def make(url: str, client_id: str) -> Publisher:
        pub = Publisher(url, client_id)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.close()
