"""The Bluetooth LE transport (bleak + bleak-retry-connector). A thin shell: no parsing, no storage.

- One scanner for the whole gateway: BTHome sensors are read straight from their advertisements (service
  data 0xFCD2); GATT devices are noticed by their adverts and then connected to.
- One task per registered GATT/UART device: wait until it advertises, connect with
  ``establish_connection`` (which retries BlueZ's transient failures), subscribe to its characteristics,
  stay until it disconnects, then back off (exponential, jittered) and try again, forever.
- Per-device token bucket (:class:`~carewatch.gateway.transport.RateLimiter`) and a bounded per-device queue:
  a flooding device loses its own excess (reported as a ``rate_limited`` event), nobody else's data.
- Each device's notifications are delivered in order by one consumer task (stream formats need order).

Everything with logic in it (rate limiting, backoff, UUID forms, decoding) lives outside this module and is
tested without a radio. Needs BlueZ/D-Bus at run time (``pip install 'carewatch[gateway]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from bleak_retry_connector import BleakClientWithServiceCache, establish_connection
from carewatch.gateway.registry import BTHOME, GATT, DeviceRegistry, RegisteredDevice
from carewatch.gateway.transport import (
    BTHOME_SOURCE,
    Backoff,
    Clock,
    Deliver,
    Notification,
    OnEvent,
    RateLimiter,
    TransportEvent,
    short_uuid,
    system_clock,
    uuid128,
)

log = structlog.get_logger("carewatch.gateway.ble")

BTHOME_UUIDS = {uuid128("fcd2"): "fcd2", uuid128("181c"): "181c", uuid128("181e"): "181e"}

#: Notify characteristics of "transparent UART" oximeters, as documented by the open-source projects the
#: parsers follow. A registry entry's ``characteristics`` overrides these (and is required for the others).
UART_CHARACTERISTICS: dict[str, tuple[str, ...]] = {
    "berrymed": ("49535343-1e4d-4bd9-ba61-23c647249616",),
    "pc60fw": ("6e400003-b5a3-f393-e0a9-e50e24dcca9e",),  # Nordic UART TX
    "o2ring": ("6e400003-b5a3-f393-e0a9-e50e24dcca9e",),
}
DEVICE_QUEUE_MAX = 1000
SEEN_EVENT_EVERY_S = 30.0


class BleakTransport:
    """Scan, connect, subscribe and forward; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock = system_clock,
        rate_limiter: RateLimiter | None = None,
        adapter: str | None = None,
        scanning_mode: str = "active",
    ) -> None:
        self.clock = clock
        self.limiter = rate_limiter or RateLimiter()
        self.adapter = adapter
        self.scanning_mode = scanning_mode
        self._seen: dict[str, BLEDevice] = {}
        self._seen_event: dict[str, asyncio.Event] = {}
        self._last_seen_report: dict[str, datetime] = {}
        self._queues: dict[str, asyncio.Queue[Notification]] = {}

    async def run(self, registry: DeviceRegistry, deliver: Deliver, on_event: OnEvent) -> None:
        tasks = self.start_consumers(registry, deliver)
        tasks += [asyncio.create_task(self._device_loop(d, on_event)) for d in registry if d.source != BTHOME]
        kwargs: dict[str, Any] = {"bluez": {"adapter": self.adapter}} if self.adapter else {}
        scanner = BleakScanner(
            detection_callback=lambda d, a: self.on_advert(registry, d, a, on_event),
            scanning_mode=self.scanning_mode,  # type: ignore[arg-type]
            **kwargs,
        )
        try:
            async with scanner:
                await asyncio.gather(*tasks)
                await asyncio.Event().wait()  # registry without GATT devices: scan until cancelled
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --------------------------------------------------------------------------------------------------------
    # What the radio callbacks feed (tested without a radio: tests/gateway/test_ble_shell.py)
    # --------------------------------------------------------------------------------------------------------
    def start_consumers(self, registry: DeviceRegistry, deliver: Deliver) -> list[asyncio.Task[Any]]:
        """One bounded queue and one in-order consumer task per registered device (call inside the loop)."""
        tasks = []
        for device in registry:
            self._queues[device.address] = asyncio.Queue(maxsize=DEVICE_QUEUE_MAX)
            self._seen_event[device.address] = asyncio.Event()
            tasks.append(asyncio.create_task(self._consume(device.address, deliver)))
        return tasks

    def _enqueue(self, note: Notification, on_event: OnEvent) -> None:
        queue = self._queues.get(note.address)
        if queue is None:
            return
        if not self.limiter.allow(note.address) or queue.full():
            dropped = self.limiter.dropped.get(note.address, 0)
            if dropped in (1, 10, 100) or dropped % 1000 == 0:  # say so, without flooding the log in turn
                self._event(
                    on_event,
                    TransportEvent(
                        note.address,
                        "rate_limited",
                        note.received_at,
                        detail=f"{dropped} notifications dropped",
                    ),
                )
            return
        queue.put_nowait(note)

    async def _consume(self, address: str, deliver: Deliver) -> None:
        queue = self._queues[address]
        while True:
            note = await queue.get()
            await deliver(note)

    def _event(self, on_event: OnEvent, event: TransportEvent) -> None:
        task = asyncio.get_running_loop().create_task(on_event(event))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def on_advert(
        self, registry: DeviceRegistry, ble_device: BLEDevice, adv: AdvertisementData, on_event: OnEvent
    ) -> None:
        device = registry.get(ble_device.address)
        if device is None:
            return
        now = self.clock()
        self._seen[device.address] = ble_device
        self._seen_event[device.address].set()
        last = self._last_seen_report.get(device.address)
        if last is None or (now - last).total_seconds() >= SEEN_EVENT_EVERY_S:
            self._last_seen_report[device.address] = now
            self._event(on_event, TransportEvent(device.address, "seen", now, rssi=adv.rssi))
        if device.source != BTHOME:
            return
        for uuid, data in adv.service_data.items():
            if uuid.lower() in BTHOME_UUIDS:
                note = Notification(device.address, BTHOME_SOURCE, bytes(data), now, adv.rssi)
                self._enqueue(note, on_event)

    async def _device_loop(self, device: RegisteredDevice, on_event: OnEvent) -> None:
        backoff = Backoff()
        characteristics = device.gatt_characteristics or UART_CHARACTERISTICS.get(device.source, ())
        if not characteristics:
            log.error("no_characteristics", device_id=device.device_id, source=device.source)
            return
        while True:
            await self._seen_event[device.address].wait()
            disconnected = asyncio.Event()
            client = None
            try:
                client = await establish_connection(
                    BleakClientWithServiceCache,
                    self._seen[device.address],
                    device.device_id,
                    disconnected_callback=lambda _client, gone=disconnected: gone.set(),
                    ble_device_callback=lambda: self._seen[device.address],
                )
                await on_event(TransportEvent(device.address, "connected", self.clock()))
                for uuid in characteristics:
                    if client.services.get_characteristic(uuid128(uuid)) is None:
                        # optional ones (e.g. battery level 0x2A19) are absent on many devices
                        log.info("characteristic_absent", device_id=device.device_id, uuid=uuid)
                        continue
                    await client.start_notify(uuid128(uuid), self.notification_handler(device, uuid, on_event))
                backoff.reset()
                await disconnected.wait()
            except (BleakError, TimeoutError, OSError) as exc:
                await on_event(TransportEvent(device.address, "error", self.clock(), detail=str(exc)))
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.disconnect()
                    await on_event(TransportEvent(device.address, "disconnected", self.clock()))
            self._seen_event[device.address].clear()  # wait for a fresh advert before trying again
            await asyncio.sleep(backoff.next())

    def notification_handler(
        self, device: RegisteredDevice, uuid: str, on_event: OnEvent
    ) -> Callable[[Any, bytearray], None]:
        """The callback bleak calls with each notification of ``uuid``; GATT ones are named by short UUID."""
        source = short_uuid(uuid) if device.source == GATT else device.source

        def on_notify(_characteristic: Any, data: bytearray) -> None:
            self._enqueue(Notification(device.address, source, bytes(data), self.clock()), on_event)

        return on_notify
