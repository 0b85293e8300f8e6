"""What the gateway decides about a Bluetooth link, for every radio backend (bleak on BlueZ, Bumble on a USB
dongle or the virtual radio). Pure: no Bluetooth stack, no I/O, no clock of its own.

- **What to do with each characteristic** (:func:`plan_characteristic`, :func:`after_refusal`,
  :func:`check_usable`): subscribe to what notifies or indicates, read the battery level when it cannot notify,
  skip (and say why) what is absent or refused, and give up on a link with nothing to listen to.
- **Start commands** (:data:`LINK_COMMANDS`): what the oximeters that stream only when asked must be sent.
- **Retry, back off, give up** (:class:`Reconnect`): exponential backoff with jitter, reset by a connection that
  lasted; a device that refuses our keys or pairing is not a transient failure: it is a device fault, retried a
  few times with backoff, then given up until the registry changes (someone re-pairs it).
- **Silent devices** (:class:`SilenceWatch`): a registered device not heard for :data:`SILENT_AFTER_S` is silent
  until it is heard again.

The radio shells (``gateway/radio.py`` and its backends) carry these decisions out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from carewatch.gateway.oximeters import CONTEC_BLE_COMMANDS, O2RING_LEGACY_REALTIME_REQUEST, contec_ble_command
from carewatch.gateway.transport import Backoff, short_uuid
from carewatch.registry import GATT, RegisteredDevice

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
SILENT_AFTER_S = 600.0  # a registered device not heard for 10 minutes is silent
SILENCE_CHECK_S = 30.0
PAIRING_FAILURES_BEFORE_GIVING_UP = 3
#: Before its first connection since the transport started, a device counts as unheard for this long: the gateway
#: may have been down (a restart, a power cut) and the device kept what it measured meanwhile.
FIRST_GAP_S = 24 * 3600.0


class DeviceLinkError(Exception):
    """The device connected but cannot be used as registered (nothing to subscribe, no command channel)."""


class PairingError(DeviceLinkError):
    """The device refused our stored keys, or refused to pair: not a radio hiccup but a device fault (it lost
    its bond, was reset or paired elsewhere, or is not in pairing mode). The message says what to do."""


class SubscribeRefused(Exception):
    """The device (or the stack) refused one subscription; the message is the skip reason."""


def characteristics_for(device: RegisteredDevice) -> tuple[str, ...]:
    """What to subscribe on ``device``: its registry entry's list, its kind's defaults, or its UART format's."""
    return device.gatt_characteristics or UART_CHARACTERISTICS.get(device.source, ())


Action = Literal["subscribe", "read", "skip"]


def can_read_instead(device: RegisteredDevice, uuid: str, properties: frozenset[str]) -> bool:
    return device.source == GATT and short_uuid(uuid) in READ_WHEN_NO_NOTIFY and "read" in properties


def plan_characteristic(device: RegisteredDevice, uuid: str, properties: frozenset[str] | None) -> tuple[Action, str]:
    """What to do with one characteristic the device offers with ``properties`` (None: it lacks it)."""
    if properties is None:  # optional ones (e.g. battery level 0x2A19) are absent on many devices
        return "skip", "absent"
    if properties & {"notify", "indicate"}:
        return "subscribe", ""
    reason = f"cannot notify (properties: {', '.join(sorted(properties)) or 'none'})"
    if can_read_instead(device, uuid, properties):
        return "read", f"{reason}; read every {READ_EVERY_S:g} s instead"
    return "skip", reason


def after_refusal(device: RegisteredDevice, uuid: str, properties: frozenset[str], reason: str) -> tuple[Action, str]:
    """A subscription the device refused: read it instead when that is allowed, else skip it."""
    if can_read_instead(device, uuid, properties):
        return "read", f"{reason}; read every {READ_EVERY_S:g} s instead"
    return "skip", reason


def check_usable(device: RegisteredDevice, characteristics: Iterable[str], subscribed: int, readable: int) -> None:
    """A link with nothing subscribed and nothing to read is of no use: an error, then backoff."""
    if not subscribed and not readable:
        raise DeviceLinkError(f"{device.device_id}: none of {', '.join(characteristics)} can be subscribed")


def commands_for(device: RegisteredDevice) -> LinkCommands | None:
    return LINK_COMMANDS.get(device.source)


def missing_command_channel(device: RegisteredDevice, commands: LinkCommands) -> DeviceLinkError:
    return DeviceLinkError(
        f"{device.device_id}: no characteristic {commands.write_uuid} to send the {device.source} start command to"
    )


@dataclass(frozen=True)
class Decision:
    """After a session ended: wait ``delay_s`` and try again, or give up (``retry`` False); ``fault`` is the
    device-fault message to report, if any."""

    retry: bool
    delay_s: float
    fault: str | None = None


class Reconnect:
    """One device's reconnect policy: call :meth:`connected` when a session starts and :meth:`closed` when it
    ends (with the error, if any); the answer says how long to wait, whether to try again, and what to report."""

    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        stable_s: float = STABLE_S,
        give_up_after: int = PAIRING_FAILURES_BEFORE_GIVING_UP,
    ) -> None:
        self.backoff = backoff or Backoff()
        self.stable_s = stable_s
        self.give_up_after = give_up_after
        self.pairing_failures = 0
        self._up_since: float | None = None

    def connected(self, now: float) -> None:
        self._up_since = now

    def closed(self, now: float, error: BaseException | None = None) -> Decision:
        up_since, self._up_since = self._up_since, None
        if up_since is not None and now - up_since >= self.stable_s:
            self.backoff.reset()  # it worked for a while: a drop now is ordinary, retry soon
        if isinstance(error, PairingError):
            self.pairing_failures += 1
            if self.pairing_failures >= self.give_up_after:
                return Decision(False, 0.0, f"{error} (gave up after {self.pairing_failures} attempts; re-pair the "
                                            "device, then update the registry)")
            return Decision(True, self.backoff.next(), str(error))
        if up_since is not None:
            self.pairing_failures = 0  # a session that got going: the keys (if any) worked
        return Decision(True, self.backoff.next())


class SilenceWatch:
    """Which registered devices have not been heard (advert, connection or notification) for ``after_s``.

    ``heard`` returns True when a silent device comes back; ``check`` returns the devices that just became
    silent (each once, until heard again). A device never heard counts from when the watch started."""

    def __init__(self, addresses: Iterable[str], now: float, *, after_s: float = SILENT_AFTER_S) -> None:
        self.after_s = after_s
        self.last_heard: dict[str, float] = dict.fromkeys(addresses, now)
        self.silent: set[str] = set()

    def heard(self, address: str, now: float) -> bool:
        if address not in self.last_heard:
            return False
        self.last_heard[address] = max(now, self.last_heard[address])
        if address in self.silent:
            self.silent.discard(address)
            return True
        return False

    def check(self, now: float) -> list[str]:
        newly = [a for a, at in self.last_heard.items() if a not in self.silent and now - at >= self.after_s]
        self.silent.update(newly)
        return newly

    def quiet_for(self, address: str, now: float) -> float:
        return now - self.last_heard.get(address, now)


#: Where a GATT measurement carries its Time Stamp: characteristic -> (flags bit, offset of the year).
_TIME_STAMP = {"2a35": (0x02, 7), "2a1c": (0x02, 5), "2a5e": (0x01, 5)}
REPEAT_MEMORY = 32


def time_stamped(source: str, data: bytes) -> bool:
    """Whether a frame is a measurement with a set device Time Stamp (so the same bytes twice are one measurement)."""
    where = _TIME_STAMP.get(source)
    if where is None or not data or not data[0] & where[0] or len(data) < where[1] + 7:
        return False
    return int.from_bytes(data[where[1] : where[1] + 2], "little") != 0


class RepeatGuard:
    """A device re-sends an indication whose confirmation the link lost (it dropped just after we got it): the
    same time-stamped measurement again. Seen before (among a device's last :data:`REPEAT_MEMORY`), it is a
    repeat, not a second measurement. Frames without a set Time Stamp are never judged repeats."""

    def __init__(self, memory: int = REPEAT_MEMORY) -> None:
        self.memory = memory
        self._seen: dict[str, dict[tuple[str, bytes], None]] = {}
        self.repeats = 0

    def is_repeat(self, address: str, source: str, data: bytes) -> bool:
        if not time_stamped(source, data):
            return False
        seen = self._seen.setdefault(address, {})
        if (source, data) in seen:
            self.repeats += 1
            return True
        seen[(source, data)] = None
        if len(seen) > self.memory:
            del seen[next(iter(seen))]
        return False


def unheard_gap(last_session_end: datetime | None, started_at: datetime, connected_at: datetime,
                ) -> tuple[datetime, datetime]:
    """When the device could not be heard before the session that starts at ``connected_at``: since its last
    session ended, or (first session since start) :data:`FIRST_GAP_S` before the transport started."""
    since = last_session_end if last_session_end is not None else started_at - timedelta(seconds=FIRST_GAP_S)
    return min(since, connected_at), connected_at


Monotonic = Callable[[], float]
