"""``carewatch sim --output mqtt|jsonl``: wire messages straight to MQTT (or a file), bypassing BLE, for load tests.

Uses the same wire contract as a gateway (``carewatch.wire``): readings messages of up to ``BATCH`` readings with a
per-gateway sequence number, each gateway being ``gw-<site>-direct``. :class:`WireBatcher` is the pure core (events
in, messages out, stamped with simulated time so a seed and start always give the same bytes); ``publish_direct``
and ``write_jsonl`` are its shells. Over MQTT the sequence continues across runs (kept in the state dir), so
ingest never mistakes a new run for duplicates; a file starts every gateway at 1.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from carewatch.firmware_sim.devices import ID_PREFIX
from carewatch.firmware_sim.driver import SimClock
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import VitalSample
from carewatch.firmware_sim.world import World
from carewatch.mqtt import make_client
from carewatch.settings import Settings
from carewatch.wire import METRICS, Channel, DeviceKind, Reading, encode_batch, topic

BATCH = 200
#: A reading waits at most this long in simulated time for its batch to fill (a gateway's publish_batch_ms is
#: 250 ms of wall time, 15 s of simulated time at the CLI's default x60).
MAX_WAIT = timedelta(seconds=15)
#: Messages handed to the MQTT client but not yet acknowledged: beyond this, publishing waits (bounded memory,
#: and a rate that is the broker's, not the client queue's).
MAX_UNACKED = 256

#: (site id, gateway id, one encoded readings message)
Message = tuple[str, str, bytes]


def direct_gateway_id(site_id: str) -> str:
    """Load tests publish as their own gateway, so their sequence numbers never collide with a real one's."""
    return f"gw-{site_id}-direct"


def event_source(event: VitalSample | SensorEvent) -> tuple[str, str, DeviceKind]:
    """(site, device id, kind) as the device layer names them."""
    if isinstance(event, VitalSample):
        return event.site_id, f"{ID_PREFIX[event.device_kind]}-{event.resident_id}", event.device_kind
    return event.household_id, f"{event.household_id}-{event.sensor.replace('_', '-')}", event.device_kind


def event_reading(event: VitalSample | SensorEvent, seq: int) -> tuple[str, Reading]:
    """The wire reading a perfect gateway would make of this event, and its site."""
    site, device_id, kind = event_source(event)
    return site, Reading(
        seq=seq, device_id=device_id, device_kind=kind, metric=event.metric, value=event.value,
        unit=METRICS[event.metric].unit, measured_at=event.at, received_at=event.at,
        flags=tuple(getattr(event, "flags", ())),
    )


class WireBatcher:
    """Device events -> readings messages, per site, as a perfect gateway would publish them.

    ``seqs`` (gateway id -> last sequence number) is updated in place. A message goes out when it holds ``batch``
    readings, or once its oldest reading has waited ``max_wait`` of simulated time; ``sent_at`` is the simulated
    time of its newest reading. No clock and no I/O: the same events always give the same bytes.
    """

    def __init__(self, seqs: dict[str, int] | None = None, *, batch: int = BATCH,
                 max_wait: timedelta = MAX_WAIT) -> None:
        self.seqs = seqs if seqs is not None else {}
        self.batch = batch
        self.max_wait = max_wait
        self.readings = 0
        self.messages = 0
        self._pending: dict[str, list[Reading]] = {}
        self._oldest: datetime | None = None

    def add(self, event: VitalSample | SensorEvent) -> list[Message]:
        out = self.flush() if self._oldest is not None and event.at - self._oldest >= self.max_wait else []
        gw = direct_gateway_id(event_source(event)[0])
        seq = self.seqs[gw] = self.seqs.get(gw, 0) + 1
        site, reading = event_reading(event, seq)
        pending = self._pending.setdefault(site, [])
        pending.append(reading)
        if self._oldest is None:
            self._oldest = event.at
        if len(pending) >= self.batch:
            out.append(self._message(site))
        return out

    def flush(self) -> list[Message]:
        """Every pending reading, one message per site."""
        out = [self._message(site) for site in list(self._pending)]
        self._oldest = None
        return out

    def _message(self, site: str) -> Message:
        readings = self._pending.pop(site)
        gw = direct_gateway_id(site)
        self.readings += len(readings)
        self.messages += 1
        return site, gw, encode_batch(site, gw, readings, sent_at=readings[-1].received_at)


def device_events(events: Iterable[Any]) -> Iterator[VitalSample | SensorEvent]:
    """The events a device reports (staff entries, faults and outages are not readings)."""
    return (e for e in events if isinstance(e, VitalSample | SensorEvent))


# ------------------------------------------------------------------------------------------------------------
# Shells
# ------------------------------------------------------------------------------------------------------------
def write_jsonl(world: World, path: Path, *, start: datetime, end: datetime) -> dict[str, Any]:
    """Every readings message of [start, end) as one JSON line each, as fast as it can (not paced)."""
    batcher = WireBatcher()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for event in device_events(world.events(start, end)):
            for _, _, payload in batcher.add(event):
                fh.write(payload + b"\n")
        for _, _, payload in batcher.flush():
            fh.write(payload + b"\n")
    return {"readings": batcher.readings, "messages": batcher.messages, "file": str(path),
            "sequence": batcher.seqs}


def _client(settings: Settings) -> mqtt.Client:
    target = settings.mqtt
    client = make_client(target, client_id=f"sim-direct-{uuid.uuid4().hex[:10]}", ca_file=settings.mqtt_ca_file,
                         max_inflight=64)
    client.connect(target.host, target.port)
    return client


def publish_direct(settings: Settings, world: World, *, start: datetime, end: datetime, accelerate: float | None,
                   stop: threading.Event) -> dict[str, Any]:
    """Publish [start, end) to ``settings.mqtt_url`` in simulated time (``accelerate`` x real time; None: as fast
    as the broker acknowledges), until done or ``stop`` is set. Returns what was published and how fast."""
    client = _client(settings)
    client.loop_start()
    seq_file = settings.state_dir / "sim" / "direct-seq.json"
    batcher = WireBatcher(json.loads(seq_file.read_text()) if seq_file.exists() else {})
    clock = SimClock(start, accelerate) if accelerate else None
    unacked: deque[mqtt.MQTTMessageInfo] = deque()
    reached: datetime | None = None
    t0 = time.perf_counter()
    first_s: float | None = None  # wall time to the first event (the first simulated day is built before it)

    def send(messages: list[Message]) -> None:
        for site, gw, payload in messages:
            unacked.append(client.publish(topic(site, gw, Channel.READINGS), payload, qos=1))
            while len(unacked) > MAX_UNACKED:
                unacked.popleft().wait_for_publish(timeout=60)

    try:
        for event in device_events(world.events(start, end)):
            if stop.is_set():
                break
            delay = clock.wall_seconds_until(event.at) if clock is not None else 0.0
            if delay > 0:
                send(batcher.flush())  # nothing waits for the clock in a half-full batch
                if stop.wait(delay):
                    break
            send(batcher.add(event))
            if reached is None:
                first_s = time.perf_counter() - t0
            reached = event.at
        send(batcher.flush())
        while unacked:
            unacked.popleft().wait_for_publish(timeout=60)
    finally:
        seq_file.parent.mkdir(parents=True, exist_ok=True)
        seq_file.write_text(json.dumps(batcher.seqs))
        client.loop_stop()
        client.disconnect()
    return {"readings_published": batcher.readings, "messages": batcher.messages,
            "sim_start": start.isoformat(), "sim_reached": reached.isoformat() if reached else None,
            "wall_s": round(time.perf_counter() - t0, 3),
            "first_event_wall_s": round(first_s, 3) if first_s is not None else None, "sequence": batcher.seqs}
