"""What the bleak transport does with what the radio hands it, without a radio.

``gateway/ble.py`` has never run against a Bluetooth adapter (there is none here; see docs/gateway.md). Its
scanning and connecting are bleak's and BlueZ's; everything between bleak's callbacks and the pipeline is ours and
is exercised here with real byte frames from the external conformance vectors: the advert callback with bleak's own
``BLEDevice``/``AdvertisementData``, the GATT notification callback, per-device in-order queues, and flooding.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from carewatch.gateway.ble import BleakTransport
from carewatch.gateway.pipeline import Pipeline
from carewatch.gateway.registry import DeviceRegistry, RegisteredDevice
from carewatch.gateway.transport import Notification, RateLimiter, TransportEvent, uuid128
from conformance import load_conformance

from carewatch.wire import DeviceKind, Metric

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OXIMETER, CHEAP, SEALED, OPEN, STRANGER = (
    "A4:C1:38:20:00:01", "A4:C1:38:20:00:02", "54:48:E6:8F:80:A5", "A4:C1:38:8D:18:B2", "A4:C1:38:20:00:99")


def _case(name: str, case_id: str) -> dict[str, Any]:
    return next(c for c in load_conformance(name)["cases"] if c["id"] == case_id)


@pytest.fixture
def vectors() -> dict[str, dict[str, Any]]:
    return {
        "plx": _case("gatt_cases.json", "plx-spot-unidentified-dart"),
        "sealed": _case("bthome_cases.json", "bthome-v2-032"),  # AES-CCM, bind key verified
        "open": _case("bthome_cases.json", "bthome-v2-048"),  # battery, temperature, humidity
        "berrymed": _case("oximeter_proprietary_cases.json", "bm-valid-1"),
    }


def registry(vectors: dict[str, dict[str, Any]]) -> DeviceRegistry:
    return DeviceRegistry([
        RegisteredDevice(address=OXIMETER, device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER, resident_id="r-1"),
        RegisteredDevice(address=CHEAP, device_id="ox-bci", kind=DeviceKind.PULSE_OXIMETER, source="berrymed",
                         resident_id="r-1"),
        RegisteredDevice(address=SEALED, device_id="climate-1", kind=DeviceKind.CLIMATE_SENSOR, room="lounge",
                         bind_key=vectors["sealed"]["bindkey_hex"]),
        RegisteredDevice(address=OPEN, device_id="climate-2", kind=DeviceKind.CLIMATE_SENSOR, room="bedroom"),
    ])


def advert(service_uuid16: str, data_hex: str, rssi: int = -67) -> AdvertisementData:
    return AdvertisementData(local_name=None, manufacturer_data={}, platform_data=(),
                             service_data={uuid128(service_uuid16): bytes.fromhex(data_hex)},
                             service_uuids=[uuid128(service_uuid16)], tx_power=None, rssi=rssi)


class Sink:
    """deliver/on_event for the transport: each notification through the real pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.notes: list[Notification] = []
        self.events: list[TransportEvent] = []
        self.readings: dict[str, dict[Metric, float]] = {}
        self.dead: list[str] = []

    async def deliver(self, note: Notification) -> None:
        self.notes.append(note)
        result = self.pipeline.process(note)
        for draft in result.drafts:
            self.readings.setdefault(draft.device_id, {})[draft.metric] = draft.value
        self.dead.extend(d.reason for d in result.dead_letters)

    async def on_event(self, event: TransportEvent) -> None:
        self.events.append(event)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_adverts_and_notifications_reach_the_pipeline_as_readings(vectors: dict[str, dict[str, Any]]) -> None:
    reg = registry(vectors)
    sink = Sink(Pipeline(reg))
    transport = BleakTransport(clock=lambda: AT)

    async def scenario() -> None:
        tasks = transport.start_consumers(reg, sink.deliver)
        try:
            for address, case in ((SEALED, vectors["sealed"]), (OPEN, vectors["open"]), (STRANGER, vectors["open"])):
                transport.on_advert(reg, BLEDevice(address, None, None), advert(case["service_uuid16"],
                                                                                  case["service_data_hex"]),
                                    sink.on_event)
            plx = reg.get(OXIMETER)
            assert plx is not None
            transport.notification_handler(plx, "00002a5e-0000-1000-8000-00805f9b34fb", sink.on_event)(
                None, bytearray.fromhex(vectors["plx"]["bytes_hex"]))
            cheap = reg.get(CHEAP)
            assert cheap is not None
            on_uart = transport.notification_handler(cheap, "49535343-1e4d-4bd9-ba61-23c647249616", sink.on_event)
            for chunk in vectors["berrymed"]["bytes_hex"].split("|"):
                on_uart(None, bytearray.fromhex(chunk))
            await _settle()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert {(n.address, n.source) for n in sink.notes} == {
        (SEALED, "bthome"), (OPEN, "bthome"), (OXIMETER, "2a5e"), (CHEAP, "berrymed")}  # the stranger is ignored
    assert sink.readings["climate-1"] == {Metric.ROOM_TEMPERATURE: 25.06, Metric.HUMIDITY: 50.55}  # decrypted
    assert sink.readings["climate-2"] == {Metric.BATTERY: 93, Metric.ROOM_TEMPERATURE: 23.97, Metric.HUMIDITY: 63.27}
    assert sink.readings["ox-1"] == {Metric.SPO2: 97, Metric.PULSE_RATE: 72}
    assert sink.readings["ox-bci"][Metric.SPO2] == vectors["berrymed"]["expected"]["spo2"]
    assert sink.dead == []
    seen = {e.address: e.rssi for e in sink.events if e.kind == "seen"}
    assert seen == {SEALED: -67, OPEN: -67}


def test_a_flooding_device_loses_its_own_excess_and_nobody_elses(vectors: dict[str, dict[str, Any]]) -> None:
    reg = registry(vectors)
    sink = Sink(Pipeline(reg))
    transport = BleakTransport(clock=lambda: AT, rate_limiter=RateLimiter(rate_per_s=5, burst=20,
                                                                                 monotonic=lambda: 0.0))
    frame = bytearray.fromhex(vectors["plx"]["bytes_hex"])

    async def scenario() -> None:
        tasks = transport.start_consumers(reg, sink.deliver)
        try:
            ox, other = reg.get(OXIMETER), reg.get(OPEN)
            assert ox is not None and other is not None
            flood = transport.notification_handler(ox, "2a5e", sink.on_event)
            for _ in range(500):
                flood(None, frame)
            transport.on_advert(reg, BLEDevice(OPEN, None, None),
                                advert("fcd2", vectors["open"]["service_data_hex"]), sink.on_event)
            await _settle()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    from_flood = [n for n in sink.notes if n.address == OXIMETER]
    assert len(from_flood) == 20  # the burst; time stands still, so nothing more
    assert [n.address for n in sink.notes if n.address == OPEN] == [OPEN]
    limited = [e for e in sink.events if e.kind == "rate_limited"]
    assert [e.detail for e in limited] == ["1 notifications dropped", "10 notifications dropped",
                                           "100 notifications dropped"]  # said, without flooding the log in turn
    assert all(e.address == OXIMETER for e in limited)
    assert "climate-2" in sink.readings
