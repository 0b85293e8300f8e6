"""Simulated devices as Bluetooth LE peripherals (Google's Bumble) on a virtual link.

Each GATT or UART device is a Bumble :class:`~bumble.device.Device` with its own emulated controller on the
link: it advertises while unconnected, serves the GATT table of its kind (below) and sends the frames the
simulator's device layer encodes (``firmware_sim/frames.py``) as notifications or indications:

- ``plx`` (pulse oximeter): 0x1822 with 0x2A5E Spot-Check (indicated), 0x2A5F Continuous (notified), 0x2A60
  Features; Battery 0x180F with 0x2A19 (read, notified);
- ``thermometer``: 0x1809 with 0x2A1C Temperature Measurement (indicated); 0x180F;
- ``bp`` (cuff): 0x1810 with 0x2A35 Blood Pressure Measurement (indicated), 0x2A36 Intermediate Cuff Pressure
  (notified), 0x2A49 Feature; 0x180F. **Encryption required** to subscribe, so the gateway must pair and bond;
  it accepts pairing only in pairing mode (``pairing_mode``);
- ``heart_rate``: 0x180D with 0x2A37 (notified); 0x180F;
- ``berrymed``, ``pc60fw``: their vendor UART service, a notify and a write characteristic;
- ``emay``: 0xFF12 with FF02 (notify) and FF01 (write); streams only after the START_REALTIME command;
- ``o2ring``: 14839ac4-… with 0734594a-… (notify) and 8b00ace7-… (write); one frame per real-time request.

A device stores what it measured until it can send it: while nobody is connected or subscribed (as blood-pressure
cuffs and thermometers keep their measurements until a collector connects), frames wait in the device's memory in
order. An indication leaves the memory only once the gateway confirmed it, so a link that drops mid-transfer
loses nothing; a notification has no confirmation, so it is gone once sent (as on a real device).

BTHome sensors never connect: they are broadcasters (:class:`Broadcaster`) putting each packet on the link as
legacy advertising PDUs (the same PDU an advertising controller sends), ``repeats`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bumble import att, hci, ll
from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.host import Host
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport.common import AsyncPipeSink

from carewatch.firmware_sim import frames
from carewatch.gateway.link import LINK_COMMANDS, O2RING_WRITE_UUID, UART_CHARACTERISTICS
from carewatch.gateway.oximeters import CONTEC_BLE_COMMANDS, contec_ble_command
from carewatch.gateway.transport import short_uuid, uuid128
from carewatch.registry import BTHOME, GATT, RegisteredDevice
from carewatch.wire import DeviceKind

NOTIFY = Characteristic.Properties.NOTIFY
INDICATE = Characteristic.Properties.INDICATE
READ = Characteristic.Properties.READ
WRITE = Characteristic.Properties.WRITE
WRITE_NR = Characteristic.Properties.WRITE_WITHOUT_RESPONSE
ADVERTISING_INTERVAL_MS = 50.0
INDICATION_TIMEOUT_S = 5.0
DISCONNECT_TIMEOUT_S = 10.0
START_REALTIME = contec_ble_command(*CONTEC_BLE_COMMANDS["START_REALTIME"])


@dataclass(frozen=True)
class CharSpec:
    uuid: str
    properties: Characteristic.Properties
    value: bytes = b""
    writable: bool = False


@dataclass(frozen=True)
class Profile:
    """What a kind of device looks like over the air."""

    name: str
    services: tuple[tuple[str, tuple[CharSpec, ...]], ...]
    pairing_required: tuple[str, ...] = ()  # characteristics whose subscription needs an encrypted link
    advertised: tuple[str, ...] = ()  # 16-bit service UUIDs in the advert
    start: str | None = None  # "emay": wait for START_REALTIME; "o2ring": one frame per request


BATTERY = ("180f", (CharSpec("2a19", READ | NOTIFY, frames.encode_battery_level(100)),))
PLX_FEATURES = bytes.fromhex("0000")  # no optional features
BP_FEATURES = bytes.fromhex("0000")


def _uart(service: str, notify: str, write: str, *, start: str | None = None, name: str) -> Profile:
    return Profile(name, ((service, (CharSpec(notify, NOTIFY), CharSpec(write, WRITE | WRITE_NR, writable=True))),),
                   start=start)


PROFILES: dict[str, Profile] = {
    "plx": Profile("plx", (("1822", (CharSpec("2a5e", INDICATE), CharSpec("2a5f", NOTIFY),
                                     CharSpec("2a60", READ, PLX_FEATURES))), BATTERY), advertised=("1822",)),
    "thermometer": Profile("thermometer", (("1809", (CharSpec("2a1c", INDICATE),)), BATTERY), advertised=("1809",)),
    "bp": Profile("bp", (("1810", (CharSpec("2a35", INDICATE), CharSpec("2a36", NOTIFY),
                                   CharSpec("2a49", READ, BP_FEATURES))), BATTERY),
                  pairing_required=("2a35", "2a36"), advertised=("1810",)),
    "heart_rate": Profile("heart_rate", (("180d", (CharSpec("2a37", NOTIFY),)), BATTERY), advertised=("180d",)),
    "berrymed": _uart("49535343-fe7d-4ae5-8fa9-9fafd205e455", UART_CHARACTERISTICS["berrymed"][0],
                      "49535343-8841-43f4-a8d4-ecbe34729bb3", name="berrymed"),
    "pc60fw": _uart("6e400001-b5a3-f393-e0a9-e50e24dcca9e", UART_CHARACTERISTICS["pc60fw"][0],
                    "6e400002-b5a3-f393-e0a9-e50e24dcca9e", name="pc60fw"),
    "emay": _uart("ff12", UART_CHARACTERISTICS["emay"][0], LINK_COMMANDS["emay"].write_uuid, start="emay",
                  name="emay"),
    "o2ring": _uart("14839ac4-7d7e-415c-9a42-167340cf2339", UART_CHARACTERISTICS["o2ring"][0], O2RING_WRITE_UUID,
                    start="o2ring", name="o2ring"),
}
GATT_PROFILE = {DeviceKind.PULSE_OXIMETER: "plx", DeviceKind.THERMOMETER: "thermometer", DeviceKind.BP_CUFF: "bp",
                DeviceKind.HEART_RATE: "heart_rate"}


def profile_for(device: RegisteredDevice) -> Profile:
    if device.source == GATT:
        if device.kind not in GATT_PROFILE:
            raise ValueError(f"no simulated GATT profile for a {device.kind.value}")
        return PROFILES[GATT_PROFILE[device.kind]]
    if device.source not in PROFILES:
        raise ValueError(f"no simulated peripheral for format {device.source!r}")
    return PROFILES[device.source]


def _uuid(text: str) -> str:
    """Bumble's spelling of a UUID: 16-bit ones as 4 hex digits, others in full."""
    short = short_uuid(uuid128(text))
    return short.upper() if len(short) == 4 else short


class _Delegate(PairingDelegate):
    """Accepts pairing while the device is in pairing mode (as cuffs do when their pairing button is held)."""

    def __init__(self, peripheral: Peripheral) -> None:
        super().__init__()
        self.peripheral = peripheral

    async def accept(self) -> bool:
        return self.peripheral.pairing_mode


class _Radio(Controller):
    """An emulated controller whose advertising can be out of range (``muted``): nobody hears it."""

    muted = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # legacy advertising, like the bedside devices it stands for (and Bumble restarts it after a disconnection
        # from its connection handler, without the extended sets' race)
        self.le_features = self.le_features & ~hci.LeFeatureMask.LE_EXTENDED_ADVERTISING

    def send_advertising_pdu(self, packet: ll.AdvertisingPdu) -> None:
        if not self.muted:
            super().send_advertising_pdu(packet)


@dataclass
class _Stream:
    """One characteristic's frames waiting to be sent, in order."""

    char: Characteristic
    indicate: bool
    waiting: deque[bytes] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Peripheral:
    """One simulated GATT/UART device on the link (create, then ``await start()`` in the link's event loop)."""

    def __init__(self, link: LocalLink, device: RegisteredDevice, *, pairing_mode: bool = True) -> None:
        self.registered = device
        self.address = device.address
        self.profile = profile_for(device)
        self.pairing_mode = pairing_mode
        self.in_range = True
        self.controller = _Radio(f"sim-{device.device_id}", link=link)
        self.device = Device(name=device.device_id, address=hci.Address(device.address),
                             host=Host(self.controller, AsyncPipeSink(self.controller)))
        self.device.pairing_config_factory = lambda _c: PairingConfig(
            sc=True, mitm=False, bonding=True, delegate=_Delegate(self),
            identity_address_type=PairingConfig.AddressType.RANDOM)
        self.streams: dict[str, _Stream] = {}
        self.chars: dict[str, Characteristic] = {}
        self.subscribed: set[str] = set()
        self.connection: Connection | None = None
        self.writes: list[tuple[str, bytes]] = []
        self.credits = 0  # o2ring: frames requested and not yet sent
        self.started = self.profile.start is None
        self.sent = 0
        self.connections = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        services = []
        for service_uuid, specs in self.profile.services:
            chars = []
            for spec in specs:
                value: Any = spec.value
                permissions = att.Attribute.READABLE
                if spec.writable:
                    value = CharacteristicValue(write=lambda _conn, data, uuid=spec.uuid: self._on_write(uuid, data))
                    permissions |= att.Attribute.WRITEABLE
                char = Characteristic(_uuid(spec.uuid), spec.properties, permissions, value)
                self.chars[short_uuid(uuid128(spec.uuid))] = char
                chars.append(char)
                if spec.properties & (NOTIFY | INDICATE):
                    self.streams[short_uuid(uuid128(spec.uuid))] = _Stream(char, bool(spec.properties & INDICATE))
            services.append(Service(_uuid(service_uuid), chars))
        self.device.add_services(services)
        self._require_encryption()
        self.device.on("connection", self._on_connection)
        self.device.on("characteristic_subscription", self._on_subscription)

    def _require_encryption(self) -> None:
        """The cuff's measurement CCCDs can only be written on an encrypted link (so the gateway must pair)."""
        protected = {self.chars[short_uuid(uuid128(u))].handle for u in self.profile.pairing_required}
        attributes = self.device.gatt_server.attributes
        for index, attribute in enumerate(attributes):
            if attribute.handle in protected:
                for descriptor in attributes[index + 1 : index + 3]:
                    if descriptor.type.to_hex_str() == "2902":
                        descriptor.permissions |= att.Attribute.WRITE_REQUIRES_ENCRYPTION

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.device.power_on()
        self._tasks = [asyncio.create_task(self._pump(uuid, s)) for uuid, s in self.streams.items()]
        await self._advertise()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.device.stop_advertising()
        with contextlib.suppress(Exception):
            await self._disconnect(hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR)

    async def _advertise(self) -> None:
        """Connectable advertising, restarted by Bumble after each disconnection (heard only while in range)."""
        items: list[Any] = [(AdvertisingData.FLAGS, bytes([0x06]))]
        if self.profile.advertised:
            uuids = b"".join(bytes.fromhex(u)[::-1] for u in self.profile.advertised)
            items.append((AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, uuids))
        items.append((AdvertisingData.SHORTENED_LOCAL_NAME, self.registered.device_id[:8].encode()))
        await self.device.start_advertising(advertising_data=bytes(AdvertisingData(items)), auto_restart=True,
                                            advertising_interval_min=ADVERTISING_INTERVAL_MS,
                                            advertising_interval_max=ADVERTISING_INTERVAL_MS)

    def _on_connection(self, connection: Connection) -> None:
        self.connection = connection
        self.connections += 1
        self.subscribed.clear()
        self.started = self.profile.start is None
        self.credits = 0
        connection.on("disconnection", lambda _reason: self._on_disconnection(connection))
        self._kick()

    def _on_disconnection(self, connection: Connection) -> None:
        if self.connection is connection:
            self.connection = None
            self.subscribed.clear()
        self._kick()

    def _on_subscription(self, _bearer: Any, char: Characteristic, notify: bool, indicate: bool) -> None:
        uuid = short_uuid(uuid128(char.uuid.to_hex_str("-")))
        if notify or indicate:
            self.subscribed.add(uuid)
        else:
            self.subscribed.discard(uuid)
        self._kick()

    def _on_write(self, uuid: str, data: bytes) -> None:
        self.writes.append((short_uuid(uuid128(uuid)), bytes(data)))
        if self.profile.start == "emay" and bytes(data) == START_REALTIME:
            self.started = True
        elif self.profile.start == "o2ring" and bytes(data) == LINK_COMMANDS["o2ring"].start[0]:
            self.started = True
            self.credits += 1
        self._kick()

    def _kick(self) -> None:
        for stream in self.streams.values():
            stream.wake.set()

    # -- what the simulator feeds --------------------------------------------------------------------------
    def send(self, source: str, data: bytes) -> None:
        """Queue one frame: ``source`` is the characteristic's short UUID, or the device's proprietary format."""
        uuid = UART_CHARACTERISTICS[source][0] if source in UART_CHARACTERISTICS else source
        stream = self.streams.get(short_uuid(uuid128(uuid)))
        if stream is None:
            raise ValueError(f"{self.registered.device_id} has no characteristic for {source!r}")
        stream.waiting.append(data)
        stream.wake.set()

    def waiting(self) -> int:
        return sum(len(s.waiting) for s in self.streams.values())

    def _ready(self, uuid: str) -> bool:
        if self.connection is None or uuid not in self.subscribed:
            return False
        if uuid == "2a19":  # the battery is not gated by the start command
            return True
        if not self.started:
            return False
        return self.profile.start != "o2ring" or self.credits > 0

    async def _pump(self, uuid: str, stream: _Stream) -> None:
        """Send this characteristic's frames in order whenever the link allows; an indication leaves the device's
        memory once confirmed, a notification once sent."""
        while True:
            while not (stream.waiting and self._ready(uuid)):
                stream.wake.clear()
                await stream.wake.wait()
            connection = self.connection
            assert connection is not None
            data = stream.waiting[0]
            if stream.indicate:
                send = self.device.indicate_subscriber(connection, stream.char, data)
                if not await _survived(asyncio.wait_for(connection.cancel_on_disconnection(send),
                                                        INDICATION_TIMEOUT_S)):
                    continue  # the link dropped (or timed out) before the confirmation: keep it, send again
                if self.connection is not connection:
                    continue  # disconnected before we could know it arrived: send again on the next connection
            elif not await _survived(self.device.notify_subscriber(connection, stream.char, data)):
                continue
            stream.waiting.popleft()
            self.sent += 1
            if self.profile.start == "o2ring" and uuid != "2a19":
                self.credits -= 1

    # -- what tests and scenarios do to it -----------------------------------------------------------------
    async def drop(self) -> None:
        """The link is lost (interference, walked out of range for a moment); it advertises again at once."""
        await self._disconnect(hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR)

    async def _disconnect(self, reason: int) -> None:
        """Disconnect, waiting at most ``DISCONNECT_TIMEOUT_S`` for the stack to report it: Bumble waits for a
        Disconnection Complete event without a timeout, and a lost one would hang the caller (a test) silently."""
        connection = self.connection
        if connection is None:
            return
        try:
            await asyncio.wait_for(connection.disconnect(reason), DISCONNECT_TIMEOUT_S)
        except TimeoutError:
            if self.connection is connection:  # still connected as far as the device knows
                raise TimeoutError(
                    f"{self.registered.device_id}: the stack did not report the disconnection of handle "
                    f"0x{connection.handle:04X} within {DISCONNECT_TIMEOUT_S} s") from None
        except Exception:  # the link was already going (an HCI error for a handle just gone): dropped all the same
            return

    async def leave(self) -> None:
        """Out of range: the link drops and nobody hears its adverts until :meth:`come_back`."""
        self.in_range = False
        self.controller.muted = True
        await self.drop()

    async def come_back(self) -> None:
        self.in_range = True
        self.controller.muted = False

    async def forget_bonds(self) -> None:
        """A factory reset: the device no longer knows the gateway's key."""
        keystore = self.device.keystore
        if keystore is not None:
            await keystore.delete_all()


async def _survived(sending: Awaitable[Any]) -> bool:
    """Whether a notification or indication went out; Bumble cancels what is pending on a link that drops
    (a CancelledError that is not ours: only a real cancellation of this task propagates)."""
    try:
        await sending
        return True
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
    except Exception:
        pass
    await asyncio.sleep(0.01)
    return False


class Broadcaster:
    """A BTHome sensor: each packet goes on the link as a legacy advertising PDU from its address, ``repeats`` times
    ``spacing_s`` apart (as sensors repeat a packet until the next), packets one after the other, never interleaved
    (a repeat of an older packet after a newer one would look like a replayed encryption counter)."""

    def __init__(self, link: LocalLink, device: RegisteredDevice, *, repeats: int = 2,
                 spacing_s: float = 0.005) -> None:
        self.link = link
        self.registered = device
        self.address = hci.Address(device.address)
        self.repeats = repeats
        self.spacing_s = spacing_s
        self.sent = 0
        self.in_range = True
        self._packets: deque[bytes] = deque()
        self._task: asyncio.Task[None] | None = None

    def send(self, source: str, data: bytes) -> None:
        if source != BTHOME or not self.in_range:
            return
        self._packets.append(bytes(AdvertisingData([
            (AdvertisingData.FLAGS, bytes([0x06])),
            (AdvertisingData.SERVICE_DATA_16_BIT_UUID, frames.BTHOME_UUID16_LE + data)])))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._advertise())

    async def _advertise(self) -> None:
        while self._packets:
            advert = self._packets[0]
            for i in range(self.repeats):
                if i:
                    await asyncio.sleep(self.spacing_s)
                # bumble's LocalLink accepts no sender controller for a broadcast; its annotation says Controller
                self.link.send_advertising_pdu(None, ll.AdvInd(advertiser_address=self.address, data=advert))  # type: ignore[arg-type]
                self.sent += 1
            self._packets.popleft()
            await asyncio.sleep(self.spacing_s)

    def waiting(self) -> int:
        return len(self._packets)


Node = Peripheral | Broadcaster
NodeFactory = Callable[[LocalLink, RegisteredDevice], Node]


def node_for(link: LocalLink, device: RegisteredDevice, *, pairing_mode: bool = True) -> Node:
    return Broadcaster(link, device) if device.source == BTHOME else Peripheral(link, device,
                                                                                pairing_mode=pairing_mode)
