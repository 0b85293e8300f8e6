"""``carewatch sim --output mqtt``: wire messages straight to MQTT, bypassing BLE, for load tests.

Uses the same wire contract as a gateway (``carewatch.wire``): batches of readings with a per-gateway sequence
number. The sequence continues across runs (kept in the state dir), so ingest never mistakes a new run for
duplicates.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from carewatch.firmware_sim.devices import ID_PREFIX
from carewatch.firmware_sim.driver import SimClock
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import VitalSample
from carewatch.firmware_sim.world import World

from carewatch.settings import Settings
from carewatch.wire import METRICS, Channel, DeviceKind, Reading, encode_batch, topic

BATCH = 200


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


def publish_direct(settings: Settings, world: World, *, start: datetime, days: float, accelerate: float,
                   stop: threading.Event) -> int:
    target = settings.mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-direct-{world.seed}")
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set(ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None)
    client.max_inflight_messages_set(64)
    client.connect(target.host, target.port)
    client.loop_start()
    seq_file = settings.state_dir / "sim" / "direct-seq.json"
    seqs: dict[str, int] = json.loads(seq_file.read_text()) if seq_file.exists() else {}
    clock = SimClock(start, accelerate)
    pending: dict[str, list[Reading]] = {}
    infos = []
    sent = 0

    def flush(site: str) -> None:
        nonlocal sent
        readings = pending.pop(site, [])
        if readings:
            gw = direct_gateway_id(site)
            infos.append(client.publish(topic(site, gw, Channel.READINGS), encode_batch(site, gw, readings), qos=1))
            sent += len(readings)

    try:
        for event in world.events(start, start + timedelta(days=days)):
            if stop.is_set():
                break
            if not isinstance(event, VitalSample | SensorEvent):
                continue
            delay = clock.wall_seconds_until(event.at)
            if delay > 0:
                for site in list(pending):
                    flush(site)
                stop.wait(delay)
            gw = direct_gateway_id(event_source(event)[0])
            seqs[gw] = seqs.get(gw, 0) + 1
            site, reading = event_reading(event, seqs[gw])
            pending.setdefault(site, []).append(reading)
            if len(pending[site]) >= BATCH:
                flush(site)
        for site in list(pending):
            flush(site)
        for info in infos:
            info.wait_for_publish(timeout=60)
    finally:
        Path(seq_file).parent.mkdir(parents=True, exist_ok=True)
        seq_file.write_text(json.dumps(seqs))
        client.loop_stop()
        client.disconnect()
    print(json.dumps({"readings_published": sent, "sequence": seqs}), flush=True)
    return 0
