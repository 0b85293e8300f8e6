"""The whole gateway (pipeline, SQLite outbox, publisher, real Mosquitto) on the Bumble backend and the virtual
radio, against the same gateway fed the same bytes directly (the byte-level path): what reaches the broker, and so
ingest, is the same readings; a device that refuses to pair becomes a ``device_fault`` event there."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from virtual_radio import AT, CUFF, every_kind, frames_of_every_kind, transport_for
from waiting import wait_until

from carewatch.firmware_sim.radio import VirtualRadio
from carewatch.gateway.service import Gateway
from carewatch.gateway.transport import ReplayTransport
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.wire import DeviceKind

FIELDS = ("device_id", "device_kind", "metric", "value", "unit", "measured_at", "received_at", "flags")


def published(collector: Any) -> list[tuple]:
    with collector.lock:
        rows = [r for batch in collector.batches for r in batch["readings"]]
    return sorted(tuple(tuple(r.get(f) or ()) if f == "flags" else r.get(f) for f in FIELDS) for r in rows)


def test_readings_reach_the_broker_unchanged_through_the_virtual_radio(
        mqtt_url: str, uid: str, scratch_dir: Path, gw: Any, collector_factory: Any) -> None:
    registry = every_kind()
    notes = frames_of_every_kind()
    byte_settings = gw.make_settings(scratch_dir, f"{uid}-bytes", mqtt_url)
    radio_settings = gw.make_settings(scratch_dir, f"{uid}-radio", mqtt_url)
    by_bytes = collector_factory(mqtt_url, byte_settings.site_id, byte_settings.gateway_id, f"c-{uid}-b")
    by_radio = collector_factory(mqtt_url, radio_settings.site_id, radio_settings.gateway_id, f"c-{uid}-r")
    replay = ReplayTransport(notes)
    with Gateway(byte_settings, replay, registry=registry, clock=lambda: AT) as reference:
        # every frame delivered first: on a busy machine the broker could otherwise catch up with a part of them
        by_bytes.wait_for(lambda: replay.delivered == len(notes)
                          and by_bytes.unique() >= reference.counters.readings_accepted > 0, 20, "the bytes")
        expected = reference.counters.readings_accepted
    with VirtualRadio(registry) as radio:
        transport = transport_for(radio)
        gateway = Gateway(radio_settings, transport, registry=registry, clock=lambda: AT).start()
        wait_until(transport.ready.is_set, 20, "the gateway to scan")  # adverts are broadcasts: heard only then
        radio.push(notes)
        by_radio.wait_for(lambda: by_radio.unique() >= expected, 30, "the readings over the virtual radio")
        time.sleep(0.5)  # nothing more may come
        counters = gateway.counters
        gateway.stop()
    assert published(by_radio) == published(by_bytes)  # same readings, values, times and flags; none twice
    assert counters.readings_accepted == expected
    dead = [e for e in by_radio.events if e["kind"] == "dead_letter"]
    assert {e["device_id"] for e in dead} == {"door-1"}  # the advert under the wrong key


def test_a_cuff_that_refuses_to_pair_is_a_device_fault_event_at_the_broker(
        mqtt_url: str, uid: str, scratch_dir: Path, gw: Any, collector_factory: Any) -> None:
    registry = DeviceRegistry([RegisteredDevice(address=CUFF, device_id=f"bp-{uid}", kind=DeviceKind.BP_CUFF,
                                                resident_id="r-1")])
    settings = gw.make_settings(scratch_dir, uid, mqtt_url)
    collector = collector_factory(mqtt_url, settings.site_id, settings.gateway_id, f"c-{uid}")
    with VirtualRadio(registry, pairing_mode=False) as radio, Gateway(settings, transport_for(radio),
                                                                      registry=registry, clock=lambda: AT):
        collector.wait_for(lambda: any(e["kind"] == "device_fault" for e in collector.events), 20, "a fault")
    fault = next(e for e in collector.events if e["kind"] == "device_fault")
    assert fault["device_id"] == f"bp-{uid}"
    assert "requires pairing and refused to pair" in fault["message"] and "pairing mode" in fault["message"]
    assert fault["detail"] == {"address": CUFF}
