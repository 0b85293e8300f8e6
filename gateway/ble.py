"""The Bluetooth LE transport on BlueZ (bleak + bleak-retry-connector). A thin shell: no parsing, no storage,
no decisions.

- One scanner for the whole gateway: BTHome sensors are read straight from their advertisements (service
  data 0xFCD2); GATT devices are noticed by their adverts and then connected to.
- Connections go through ``establish_connection`` (which retries BlueZ's transient failures and caches
  services), adapted (:class:`BleakLink`) to the shared connection loop in
  :class:`~carewatch.gateway.radio.RadioTransport` (per-characteristic subscription, battery reads, start
  commands, backoff, silent devices). What that loop decides is ``gateway/link.py``'s, the same for the Bumble
  backend (``gateway/bumble_ble.py``).

The connection loop takes its ``connect`` (bleak's boundary) and ``sleep`` as arguments so that it is tested with a
fake client. Needs BlueZ/D-Bus at run time (``pip install 'carewatch[gateway]'``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTServiceCollection
from bleak.exc import BleakError
from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

from carewatch.gateway import link
from carewatch.gateway.link import (  # noqa: F401  (re-exported: their home before gateway/link.py)
    LINK_COMMANDS,
    O2RING_WRITE_UUID,
    READ_EVERY_S,
    READ_WHEN_NO_NOTIFY,
    STABLE_S,
    UART_CHARACTERISTICS,
    DeviceLinkError,
    LinkCommands,
    SubscribeRefused,
)
from carewatch.gateway.radio import BTHOME_UUIDS, DEVICE_QUEUE_MAX, SEEN_EVENT_EVERY_S, RadioTransport  # noqa: F401
from carewatch.gateway.transport import Backoff, Clock, Deliver, OnEvent, RateLimiter, system_clock, uuid128
from carewatch.registry import DeviceRegistry, RegisteredDevice


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


class BleakLink:
    """A bleak client as the shared connection loop sees it (:class:`~carewatch.gateway.radio.GattLink`)."""

    def __init__(self, client: GattClient) -> None:
        self.client = client

    def _char(self, uuid: str) -> Any:
        try:
            return self.client.services.get_characteristic(uuid128(uuid))
        except BleakError as exc:  # the same UUID in two services
            raise SubscribeRefused(str(exc)) from exc

    def properties(self, uuid: str) -> frozenset[str] | None:
        char = self._char(uuid)
        return None if char is None else frozenset(char.properties)

    async def subscribe(self, uuid: str, on_value: Callable[[bytes], None]) -> None:
        try:
            await self.client.start_notify(self._char(uuid), lambda _char, data: on_value(bytes(data)))
        except BleakError as exc:
            raise SubscribeRefused(f"start_notify failed: {exc}") from exc

    async def read(self, uuid: str) -> bytes:
        return bytes(await self.client.read_gatt_char(self._char(uuid)))

    async def write(self, uuid: str, data: bytes, *, response: bool) -> None:
        await self.client.write_gatt_char(self._char(uuid), data, response=response)

    async def close(self) -> None:
        await self.client.disconnect()


class BleakTransport(RadioTransport):
    """Scan with BlueZ, connect with bleak; the rest is :class:`RadioTransport`'s (see the module docstring)."""

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
        stable_s: float = link.STABLE_S,
    ) -> None:
        """``connect``, ``sleep``, ``monotonic`` and ``backoff``: the connection loop's boundaries (tests fake
        them); a connection that lasts ``stable_s`` resets the backoff."""
        super().__init__(clock=clock, rate_limiter=rate_limiter, sleep=sleep, monotonic=monotonic, backoff=backoff,
                         stable_s=stable_s)
        self.adapter = adapter
        self.scanning_mode = scanning_mode
        self._connect = connect
        self._seen: dict[str, BLEDevice] = {}

    async def run(self, registry: DeviceRegistry, deliver: Deliver, on_event: OnEvent) -> None:
        tasks = self.start_consumers(registry, deliver)
        tasks += self.start_device_tasks(registry, on_event)
        kwargs: dict[str, Any] = {"bluez": {"adapter": self.adapter}} if self.adapter else {}
        scanner = BleakScanner(
            detection_callback=lambda d, a: self.on_advert(registry, d, a, on_event),
            scanning_mode=self.scanning_mode,  # type: ignore[arg-type]  # a setting: "active" or "passive"
            **kwargs,
        )
        try:
            async with scanner:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def on_advert(
        self, registry: DeviceRegistry, ble_device: BLEDevice, adv: AdvertisementData, on_event: OnEvent
    ) -> None:
        device = registry.get(ble_device.address)
        if device is None:
            return
        self._seen[device.address] = ble_device
        self.on_advert_data(registry, device.address, adv.rssi, adv.service_data, on_event)

    async def _open_link(self, device: RegisteredDevice, on_disconnected: Callable[[], None]) -> BleakLink:
        client = await self._connect(device, lambda: self._seen[device.address], lambda _client: on_disconnected())
        return BleakLink(client)
