"""The Bluetooth LE transport on Google's Bumble: a Bluetooth host in Python that drives a controller over HCI,
without BlueZ. ``hci`` is any Bumble transport: ``usb:0`` (a USB dongle, e.g. on a Raspberry Pi-class gateway
where BlueZ is unwanted) or ``tcp-client:127.0.0.1:<port>`` (the simulator's virtual radio,
``firmware_sim/radio.py``, whose devices are Bumble peripherals on a virtual link). A thin shell, like
``gateway/ble.py``: what it decides is ``gateway/link.py``'s and the connection loop is
:class:`~carewatch.gateway.radio.RadioTransport`'s.

- **Scan** passively (BTHome sensors are read from their adverts, GATT devices noticed by them) and match by the
  registry.
- **Connect** one device at a time (a controller has one connection attempt at a time), discover services and
  characteristics, subscribe to notifications and indications, write start commands.
- **Bond**: a device that answers a subscription with "insufficient encryption/authentication" is paired with
  (Just Works, bonding) and its keys are kept on disk in Bumble's JSON key store (``keystore``); on later
  connections the link is encrypted with the stored key before anything else. A device that refuses the stored
  key (it lost or replaced its bond) or refuses to pair raises :class:`~carewatch.gateway.link.PairingError`:
  a device fault, retried a few times and then given up (``link.Reconnect``); keys are never thrown away
  automatically, as re-pairing whatever answers would let an impostor in.

Needs ``pip install 'carewatch[bumble]'``; a USB dongle also needs libusb and access to the device
(see README, "Running the gateway on a USB dongle with Bumble").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, Unpack

import structlog
from bumble import att, hci
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import Characteristic
from bumble.gatt_client import CharacteristicProxy
from bumble.keys import JsonKeyStore
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport

from carewatch.gateway.link import PairingError, SubscribeRefused
from carewatch.gateway.radio import RadioOptions, RadioTransport, stop
from carewatch.gateway.transport import Deliver, OnEvent, uuid128
from carewatch.registry import DeviceRegistry, RegisteredDevice

log = structlog.get_logger("carewatch.gateway.bumble")
T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
DISCONNECT_TIMEOUT_S = 5.0
# Bumble waits for the controller's events without a timeout (an encryption change, a pairing's end, a command's
# status); a dongle that loses one would stall the gateway silently, so every such await is bounded here.
START_TIMEOUT_S = 30.0  # open the HCI transport, reset the controller, start scanning
SECURITY_TIMEOUT_S = 30.0  # encrypt with a stored key, or pair (SMP's own transaction timeout is 30 s)
CANCEL_GRACE_S = 5.0  # after its own connect timeout Bumble cancels the attempt and waits for the controller to say so
STOP_TIMEOUT_S = 10.0  # the connection loops must end this soon once cancelled
GATEWAY_ADDRESS = "F0:CA:4E:00:00:01"  # the gateway's own static random address (top bits 11)
_SECURITY_ERRORS = {att.ErrorCode.INSUFFICIENT_ENCRYPTION, att.ErrorCode.INSUFFICIENT_AUTHENTICATION}
_PROPERTIES = {
    Characteristic.Properties.READ: "read",
    Characteristic.Properties.WRITE: "write",
    Characteristic.Properties.WRITE_WITHOUT_RESPONSE: "write-without-response",
    Characteristic.Properties.NOTIFY: "notify",
    Characteristic.Properties.INDICATE: "indicate",
}


def bumble_address(address: Any) -> str:
    """A Bumble address as the registry spells MACs (upper case, no '/P' type suffix)."""
    return str(address.to_string(with_type_qualifier=False)).upper()


def uuid_text(uuid: Any) -> str:
    """A Bumble UUID in the 128-bit lower-case form the rest of the gateway uses."""
    return uuid128(uuid.to_hex_str("-"))


def service_data(advertisement: Advertisement) -> dict[str, bytes]:
    """The advert's 16-bit service data keyed by 128-bit UUID (as bleak gives it)."""
    out: dict[str, bytes] = {}
    for uuid, data in advertisement.data.get_all(AdvertisingData.Type.SERVICE_DATA_16_BIT_UUID):
        out[uuid_text(uuid)] = bytes(data)
    return out


async def disconnect(connection: Connection) -> None:
    """Disconnect unless the link is already gone (Bumble would wait for a disconnection that never comes)."""
    if connection.device.connections.get(connection.handle) is not connection:
        return
    with contextlib.suppress(Exception):  # TimeoutError included: the link is given up on either way
        await asyncio.wait_for(connection.disconnect(), DISCONNECT_TIMEOUT_S)


async def _bounded(awaitable: Awaitable[T], timeout: float, what: str) -> T:
    """``awaitable`` within ``timeout`` seconds, or a TimeoutError saying what never came."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}") from None


def _stack(task: asyncio.Task[Any]) -> list[str]:
    out: list[str] = []
    for frame in task.get_stack():
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}\n")
    return out


class BumbleLink:
    """A Bumble connection as the shared connection loop sees it (:class:`~carewatch.gateway.radio.GattLink`)."""

    def __init__(self, transport: BumbleTransport, device: RegisteredDevice, connection: Connection,
                 peer: Peer) -> None:
        self.transport = transport
        self.device = device
        self.connection = connection
        self.peer = peer
        self._chars: dict[str, list[CharacteristicProxy]] = {}
        for service in peer.services:
            for char in service.characteristics:
                self._chars.setdefault(uuid_text(char.uuid), []).append(char)

    def _char(self, uuid: str) -> CharacteristicProxy | None:
        found = self._chars.get(uuid128(uuid), [])
        if len(found) > 1:
            raise SubscribeRefused(f"{uuid} is offered by {len(found)} services")
        return found[0] if found else None

    def properties(self, uuid: str) -> frozenset[str] | None:
        char = self._char(uuid)
        if char is None:
            return None
        return frozenset(name for flag, name in _PROPERTIES.items() if char.properties & flag)

    async def subscribe(self, uuid: str, on_value: Callable[[bytes], None]) -> None:
        char = self._char(uuid)
        assert char is not None
        def subscriber(value: bytes) -> None:
            on_value(bytes(value))

        try:  # indications when offered (confirmed: a measurement the device stores is not lost to a drop)
            await char.subscribe(subscriber, prefer_notify=False)
        except att.ATT_Error as exc:
            if exc.error_code not in _SECURITY_ERRORS or self.connection.is_encrypted:
                raise SubscribeRefused(f"subscribe failed: {exc.error_name}") from exc
            await self.transport.secure(self.device, self.connection, why=exc.error_name)
            await char.subscribe(subscriber, prefer_notify=False)  # the same subscriber: registered once

    async def read(self, uuid: str) -> bytes:
        char = self._char(uuid)
        assert char is not None
        return bytes(await char.read_value())

    async def write(self, uuid: str, data: bytes, *, response: bool) -> None:
        char = self._char(uuid)
        assert char is not None
        await char.write_value(data, with_response=response)

    async def close(self) -> None:
        await disconnect(self.connection)


class BumbleTransport(RadioTransport):
    """Scan, connect, bond and subscribe through Bumble over ``hci``; see the module docstring."""

    def __init__(
        self,
        hci_transport: str,
        *,
        keystore: Path | None = None,
        address: str = GATEWAY_ADDRESS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        **options: Unpack[RadioOptions],
    ) -> None:
        """``hci_transport``: a Bumble transport name (``usb:0``, ``tcp-client:host:port``...); ``keystore``: the
        JSON file bonds are kept in (None: in memory only, forgotten at exit); ``options``: the connection loop's
        (clock, rate limiter, sleep, backoff...: see :class:`RadioTransport`)."""
        super().__init__(**options)
        self.hci_transport = hci_transport
        self.keystore_path = keystore
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.device: Device | None = None
        self._advertised: dict[str, hci.Address] = {}  # registry MAC -> the address (with its type) it advertised
        self._connect_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.bonded: set[str] = set()  # devices paired with during this run
        self.stuck: list[str] = []  # tasks that did not stop when the transport stopped (name and stack)

    def _pairing_config(self, _connection: Connection) -> PairingConfig:
        # Just Works with bonding: a gateway has no display or keyboard (devices that insist on a passkey are not
        # supported yet); our identity is our static random address.
        return PairingConfig(sc=True, mitm=False, bonding=True, delegate=PairingDelegate(),
                             identity_address_type=PairingConfig.AddressType.RANDOM)

    async def run(self, registry: DeviceRegistry, deliver: Deliver, on_event: OnEvent) -> None:
        self.ready.clear()
        self._connect_lock = asyncio.Lock()
        transport = await _bounded(open_transport(self.hci_transport), START_TIMEOUT_S,
                                   f"opening the HCI transport {self.hci_transport}")
        tasks: list[asyncio.Task[Any]] = []
        try:
            device = Device.with_hci("carewatch-gateway", hci.Address(self.address), transport.source,
                                     transport.sink)
            if self.keystore_path is not None:
                self.keystore_path.parent.mkdir(parents=True, exist_ok=True)
                device.keystore = JsonKeyStore(namespace=None, filename=str(self.keystore_path))
            device.pairing_config_factory = self._pairing_config
            await _bounded(device.power_on(), START_TIMEOUT_S, "the controller's power-on (HCI reset and setup)")
            self.device = device
            device.on("advertisement", lambda adv: self._on_advertisement(registry, adv, on_event))
            tasks = self.start_consumers(registry, deliver)
            tasks += self.start_device_tasks(registry, on_event)
            await _bounded(device.start_scanning(active=False, filter_duplicates=False), START_TIMEOUT_S,
                           "the controller to start scanning")
            self.ready.set()
            await asyncio.gather(*tasks)
        finally:
            # a stop must not hang: say where a task is stuck and go on closing the transport
            for task in await stop(*tasks, within=STOP_TIMEOUT_S):
                self.stuck.append(f"{task.get_name()}:\n{''.join(_stack(task))}")
                log.error("task_did_not_stop", task=task.get_name(), stack=self.stuck[-1])
            self.device = None
            with contextlib.suppress(Exception):
                await transport.close()

    def _on_advertisement(self, registry: DeviceRegistry, advertisement: Advertisement, on_event: OnEvent) -> None:
        if advertisement.is_scan_response:  # scanning is passive: nothing asked for it (the emulator sends it)
            return
        mac = bumble_address(advertisement.address)
        device = registry.get(mac)
        if device is None:
            return
        self._advertised[device.address] = advertisement.address
        self.on_advert_data(registry, device.address, advertisement.rssi, service_data(advertisement), on_event)

    async def _open_link(self, device: RegisteredDevice, on_disconnected: Callable[[], None]) -> BumbleLink:
        assert self.device is not None
        address = self._advertised[device.address]
        async with self._connect_lock:  # one LE Create Connection at a time per controller
            stale = self.device.find_connection_by_bd_addr(address)
            if stale is not None:  # a connection completed after we gave up on it: nobody serves it, end it
                await disconnect(stale)
            connection = await _bounded(self.device.connect(address, timeout=self.connect_timeout_s),
                                        self.connect_timeout_s + CANCEL_GRACE_S,
                                        f"the connection to {device.device_id}")
        connection.on("disconnection", lambda _reason: on_disconnected())
        try:
            if await self._has_keys(connection):
                await self._encrypt(device, connection)
            peer = Peer(connection)
            await peer.discover_services()
            for service in peer.services:
                await service.discover_characteristics()
            return BumbleLink(self, device, connection, peer)
        except BaseException:
            await disconnect(connection)
            raise

    async def _has_keys(self, connection: Connection) -> bool:
        keystore = self.device.keystore if self.device is not None else None
        return keystore is not None and await keystore.get(str(connection.peer_address)) is not None

    async def _encrypt(self, device: RegisteredDevice, connection: Connection) -> None:
        """Encrypt with the stored key; a device that refuses it (lost bond, reset, paired elsewhere) is a fault."""
        reasons: list[int] = []
        connection.on("disconnection", reasons.append)
        try:
            await _bounded(connection.encrypt(), SECURITY_TIMEOUT_S,
                           f"{device.device_id}'s link to be encrypted with the stored key")
        except TimeoutError:
            raise  # no answer is not a refusal: an ordinary failure, retried
        except Exception as exc:
            code = getattr(exc, "error_code", None)
            if reasons and reasons[0] != hci.HCI_ErrorCode.CONNECTION_TERMINATED_DUE_TO_MIC_FAILURE_ERROR:
                raise  # the link dropped for another reason: an ordinary failure, retried
            what = hci.HCI_Constant.error_name(reasons[0] if reasons else code) if (reasons or code) else f"{exc}"
            raise PairingError(
                f"{device.device_id} refused the stored bond key ({what}): the device has lost or replaced its "
                "bond (reset, or paired with something else); re-pair it with the gateway"
            ) from exc

    async def secure(self, device: RegisteredDevice, connection: Connection, *, why: str) -> None:
        """The device wants an encrypted link: encrypt with its stored key, or pair (and bond) the first time."""
        if await self._has_keys(connection):
            await self._encrypt(device, connection)
            return
        log.info("pairing", device_id=device.device_id, why=why)
        try:
            await _bounded(connection.pair(), SECURITY_TIMEOUT_S, f"pairing with {device.device_id} to complete")
        except TimeoutError:
            if not connection.is_encrypted:
                raise  # no answer is not a refusal: an ordinary failure, retried
        except Exception as exc:
            if not connection.is_encrypted:
                raise PairingError(
                    f"{device.device_id} requires pairing and refused to pair ({exc}): put it in pairing mode, "
                    "or remove its old bond, then re-pair it with the gateway"
                ) from exc
        self.bonded.add(device.address)
        log.info("paired", device_id=device.device_id, keystore=str(self.keystore_path or "memory"))

    async def forget(self, address: str) -> None:
        """Delete the stored bond of ``address`` (before re-pairing a device that was reset)."""
        if self.device is not None and self.device.keystore is not None:
            with contextlib.suppress(KeyError):
                await self.device.keystore.delete(str(self._advertised.get(address, address)))
