"""The Bluetooth LE transport (bleak + bleak-retry-connector). A thin shell: no parsing, no storage.

- One scanner for the whole gateway: BTHome sensors are read straight from their advertisements (service
  data 0xFCD2); GATT devices are noticed by their adverts and then connected to.
- One task per registered GATT/UART device (:meth:`BleakTransport.maintain`): wait until it advertises,
  connect with ``establish_connection`` (which retries BlueZ's transient failures), subscribe to each of its
  characteristics on its own, stay until it disconnects, then back off (exponential, jittered) and try again,
  forever. A characteristic the device lacks or cannot notify is skipped and logged once, never a reason to
  drop the link; the battery level (0x2A19) is read instead (and every hour) when it cannot notify.
  Oximeters that stream only when asked (EMAY, legacy O2Ring) get their documented start command and
  keep-alive (``LINK_COMMANDS``) written once subscribed.
- Per-device token bucket (:class:`~carewatch.gateway.transport.RateLimiter`) and a bounded per-device queue:
  a flooding device loses its own excess (reported as a ``rate_limited`` event), nobody else's data.
- Each device's notifications are delivered in order by one consumer task (stream formats need order).

Everything with logic in it (rate limiting, backoff, UUID forms, decoding) lives outside this module and is
tested without a radio; the connection loop takes its ``connect`` (bleak's boundary) and ``sleep`` as
arguments so that it is tested with a fake client. Needs BlueZ/D-Bus at run time
(``pip install 'carewatch[gateway]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog
from bleak import BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTServiceCollection
from bleak.exc import BleakError
from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

from carewatch.gateway.oximeters import CONTEC_BLE_COMMANDS, O2RING_LEGACY_REALTIME_REQUEST, contec_ble_command
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
    "emay": ("ff02",),  # service FF12 (chenders/emay-sleepo2)
    "o2ring": ("0734594a-a8e7-4b1a-a6b1-cd5243059a57",),  # service 14839ac4-7d7e-415c-9a42-167340cf2339
}
O2RING_WRITE_UUID = "8b00ace7-eb0b-49b0-bbe9-9aee0a26e1a3"


@dataclass(frozen=True)
class LinkCommands:
    """What a device must be sent before it streams: ``start`` once subscribed, then ``repeat`` every
    ``every_s`` seconds (a keep-alive, or a poll for devices that answer one request at a time)."""

    write_uuid: str
    start: tuple[bytes, ...]
    repeat: bytes | None = None
    every_s: float = 0.0


def _contec(*names: str) -> tuple[bytes, ...]:
    return tuple(contec_ble_command(*CONTEC_BLE_COMMANDS[name]) for name in names)


#: Start commands by frame format, from the public drivers the parsers follow (bytes in ``oximeters``).
LINK_COMMANDS: dict[str, LinkCommands] = {
    # chenders/emay-sleepo2 client.py: HELLO, DEVICE_STATE, START_REALTIME, GET_BATTERY to FF01, then a
    # HEARTBEAT every 1.5 s or the oximeter stops streaming (same bytes as the Contec CMS50D-BT driver).
    "emay": LinkCommands(
        "ff01",
        _contec("HELLO", "DEVICE_STATE", "START_REALTIME", "GET_BATTERY"),
        _contec("HEARTBEAT")[0],
        1.5,
    ),
    # ecostech/viatom-ble client.py: the legacy O2Ring answers each AA 17 E8 ... request once; poll every 2 s.
    "o2ring": LinkCommands(
        O2RING_WRITE_UUID, (O2RING_LEGACY_REALTIME_REQUEST,), O2RING_LEGACY_REALTIME_REQUEST, 2.0
    ),
}
#: Characteristics that are read (at connect, then every READ_EVERY_S) when the device cannot notify them.
READ_WHEN_NO_NOTIFY = frozenset({"2a19"})  # Battery Level: many devices only allow reading it
READ_EVERY_S = 3600.0
STABLE_S = 30.0  # a connection that lasted this long resets the reconnect backoff
DEVICE_QUEUE_MAX = 1000
SEEN_EVENT_EVERY_S = 30.0


class GattClient(Protocol):
    """The part of bleak's ``BleakClient`` the transport uses (tests pass a fake with these)."""

    @property
    def services(self) -> BleakGATTServiceCollection: ...

    async def start_notify(self, char_specifier: Any, callback: Callable[[Any, bytearray], None]) -> None: ...

    async def read_gatt_char(self, char_specifier: Any) -> bytearray: ...

    async def write_gatt_char(self, char_specifier: Any, data: bytes, response: bool | None = None) -> None: ...

    async def disconnect(self) -> Any: ...


#: ``connect(device, current_ble_device, on_disconnected)``: bleak's boundary, replaceable in tests.
Connect = Callable[[RegisteredDevice, Callable[[], BLEDevice], Callable[[Any], None]], Awaitable[GattClient]]
Sleep = Callable[[float], Awaitable[None]]


async def establish(
    device: RegisteredDevice, current: Callable[[], BLEDevice], on_disconnected: Callable[[Any], None]
) -> GattClient:
    """Connect with bleak-retry-connector (it retries BlueZ's transient failures and caches services)."""
    client: GattClient = await establish_connection(
        BleakClientWithServiceCache,
        current(),
        device.device_id,
        disconnected_callback=on_disconnected,
        ble_device_callback=current,
    )
    return client


class DeviceLinkError(Exception):
    """The device connected but cannot be used as registered (nothing to subscribe, no command channel)."""


class BleakTransport:
    """Scan, connect, subscribe and forward; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock = system_clock,
        rate_limiter: RateLimiter | None = None,
        adapter: str | None = None,
        scanning_mode: str = "active",
        connect: Connect = establish,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        backoff: Callable[[], Backoff] = Backoff,
        stable_s: float = STABLE_S,
    ) -> None:
        """``connect``, ``sleep``, ``monotonic`` and ``backoff``: the connection loop's boundaries (tests fake
        them); a connection that lasts ``stable_s`` resets the backoff."""
        self.clock = clock
        self.limiter = rate_limiter or RateLimiter()
        self.adapter = adapter
        self.scanning_mode = scanning_mode
        self._connect = connect
        self._sleep = sleep
        self._monotonic = monotonic
        self._backoff = backoff
        self.stable_s = stable_s
        self._seen: dict[str, BLEDevice] = {}
        self._seen_event: dict[str, asyncio.Event] = {}
        self._last_seen_report: dict[str, datetime] = {}
        self._queues: dict[str, asyncio.Queue[Notification]] = {}
        self._told: set[tuple[str, str]] = set()  # (address, uuid) already logged as skipped

    async def run(self, registry: DeviceRegistry, deliver: Deliver, on_event: OnEvent) -> None:
        tasks = self.start_consumers(registry, deliver)
        tasks += [asyncio.create_task(self.maintain(d, on_event)) for d in registry if d.source != BTHOME]
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

    async def maintain(self, device: RegisteredDevice, on_event: OnEvent) -> None:
        """Keep one GATT/UART device connected: connect when it advertises, serve it until it disconnects, back
        off, again, forever. Nothing a device does (or lacks) ends this loop except cancellation."""
        backoff = self._backoff()
        characteristics = device.gatt_characteristics or UART_CHARACTERISTICS.get(device.source, ())
        if not characteristics:
            log.error("no_characteristics", device_id=device.device_id, source=device.source)
            return
        while True:
            await self._seen_event[device.address].wait()
            disconnected = asyncio.Event()
            client: GattClient | None = None
            up_since: float | None = None
            try:
                client = await self._connect(
                    device, lambda: self._seen[device.address], lambda _client, gone=disconnected: gone.set()
                )
                up_since = self._monotonic()
                await on_event(TransportEvent(device.address, "connected", self.clock()))
                await self._serve(device, client, characteristics, disconnected, on_event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # BleakError, TimeoutError, OSError, DeviceLinkError, a device's nonsense
                await on_event(TransportEvent(device.address, "error", self.clock(), detail=f"{exc}"[:500]))
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.disconnect()
                    await on_event(TransportEvent(device.address, "disconnected", self.clock()))
            if up_since is not None and self._monotonic() - up_since >= self.stable_s:
                backoff.reset()  # it worked for a while: a drop now is ordinary, retry soon
            self._seen_event[device.address].clear()  # wait for a fresh advert before trying again
            await self._sleep(backoff.next())

    async def _serve(
        self,
        device: RegisteredDevice,
        client: GattClient,
        characteristics: tuple[str, ...],
        disconnected: asyncio.Event,
        on_event: OnEvent,
    ) -> None:
        """Subscribe each characteristic on its own, read what can only be read, send the format's start
        commands; return when the device disconnects (raise when the link is of no use or a command fails)."""
        subscribed, readable = 0, []
        for uuid in characteristics:
            try:
                char = client.services.get_characteristic(uuid128(uuid))
            except BleakError as exc:  # the same UUID in two services
                self._skip(device, uuid, f"ambiguous: {exc}")
                continue
            if char is None:  # optional ones (e.g. battery level 0x2A19) are absent on many devices
                self._skip(device, uuid, "absent")
                continue
            properties = set(char.properties)
            if properties & {"notify", "indicate"}:
                try:
                    await client.start_notify(char, self.notification_handler(device, uuid, on_event))
                    subscribed += 1
                    continue
                except BleakError as exc:
                    reason = f"start_notify failed: {exc}"
            else:
                reason = f"cannot notify (properties: {', '.join(sorted(properties)) or 'none'})"
            if device.source == GATT and short_uuid(uuid) in READ_WHEN_NO_NOTIFY and "read" in properties:
                readable.append(char)
                reason += f"; read every {READ_EVERY_S:g} s instead"
            self._skip(device, uuid, reason)
        if not subscribed and not readable:
            raise DeviceLinkError(f"{device.device_id}: none of {', '.join(characteristics)} can be subscribed")
        jobs: list[Coroutine[Any, Any, None]] = [self._keep_reading(device, client, c, on_event) for c in readable]
        commands = LINK_COMMANDS.get(device.source)
        if commands is not None:
            jobs.append(self._drive(device, client, commands))
        gone = asyncio.create_task(disconnected.wait())
        pending: set[asyncio.Task[Any]] = {gone, *(asyncio.create_task(job) for job in jobs)}
        try:
            while gone in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {gone}:  # a read or command that failed ends the session (then backoff)
                    if (error := task.exception()) is not None:
                        raise error
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _skip(self, device: RegisteredDevice, uuid: str, reason: str) -> None:
        """Log a characteristic we cannot subscribe, once per device and characteristic (not per reconnect)."""
        if (device.address, uuid) in self._told:
            return
        self._told.add((device.address, uuid))
        say = log.info if reason == "absent" else log.warning
        say("characteristic_skipped", device_id=device.device_id, uuid=uuid, reason=reason)

    async def _keep_reading(
        self, device: RegisteredDevice, client: GattClient, char: BleakGATTCharacteristic, on_event: OnEvent
    ) -> None:
        handler = self.notification_handler(device, char.uuid, on_event)
        while True:
            handler(char, await client.read_gatt_char(char))
            await self._sleep(READ_EVERY_S)

    async def _drive(self, device: RegisteredDevice, client: GattClient, commands: LinkCommands) -> None:
        """Write the start commands, then the keep-alive/poll, with a response when the characteristic has one."""
        char = client.services.get_characteristic(uuid128(commands.write_uuid))
        if char is None:
            raise DeviceLinkError(
                f"{device.device_id}: no characteristic {commands.write_uuid} to send the {device.source} start "
                "command to"
            )
        response = "write" in char.properties
        for command in commands.start:
            await client.write_gatt_char(char, command, response=response)
        if commands.repeat is None:
            return
        while True:
            await self._sleep(commands.every_s)
            await client.write_gatt_char(char, commands.repeat, response=response)

    def notification_handler(
        self, device: RegisteredDevice, uuid: str, on_event: OnEvent
    ) -> Callable[[Any, bytearray], None]:
        """The callback bleak calls with each notification of ``uuid``; GATT ones are named by short UUID."""
        source = short_uuid(uuid) if device.source == GATT else device.source

        def on_notify(_characteristic: Any, data: bytearray) -> None:
            self._enqueue(Notification(device.address, source, bytes(data), self.clock()), on_event)

        return on_notify
