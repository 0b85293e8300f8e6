"""What a radio (real or simulated) hands the gateway: notifications and connection events.

The transport is the only part of the gateway that touches Bluetooth. It knows nothing about parsing,
storage or MQTT: it turns radio traffic into :class:`Notification` objects and awaits ``deliver`` for each,
so the same bytes flow through the same code whether they come from BlueZ (:mod:`carewatch.gateway.ble`) or
from the device simulator's ``SimTransport``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from carewatch.registry import DeviceRegistry

#: ``Notification.source`` for GATT characteristics is the 16-bit UUID in lower-case hex ("2a5e"); for
#: proprietary oximeters it is the format name from ``carewatch.gateway.oximeters.FORMATS``; for BTHome
#: advertisements it is "bthome".
BTHOME_SOURCE = "bthome"

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The gateway's wall clock (aware UTC); tests and the simulator pass their own."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Notification:
    """One value heard from one device: a characteristic notification/indication or BTHome service data."""

    address: str  # BLE MAC, upper-case, colon separated
    source: str
    data: bytes
    received_at: datetime  # gateway clock, aware UTC
    rssi: int | None = None
    #: (from, until): the radio could not hear the device then, before the connection this came on
    #: (``gateway/link.py``); a device time in that gap is a stored measurement (its time is used), not a wrong
    #: clock. None: no gap known (adverts, the byte-level path).
    unheard: tuple[datetime, datetime] | None = None


#: ``silent``: a registered device not heard for 10 minutes (``gateway/link.py``); ``back``: heard again;
#: ``fault``: the device refused our keys or pairing (a device fault, reported to the platform).
TransportEventKind = Literal["connected", "disconnected", "seen", "rate_limited", "error", "silent", "back", "fault"]


@dataclass(frozen=True)
class TransportEvent:
    """Something about a device's link rather than its data (feeds the status message and the logs)."""

    address: str
    kind: TransportEventKind
    at: datetime
    rssi: int | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Deliver = Callable[[Notification], Awaitable[None]]
OnEvent = Callable[[TransportEvent], Awaitable[None]]


@runtime_checkable
class Transport(Protocol):
    """A source of notifications. ``run`` returns when cancelled (or when a finite source is exhausted).

    ``deliver`` returns once the notification's readings are durably in the outbox (or dead-lettered):
    a transport that awaits it before acknowledging anything upstream never loses a reading. The registry
    says which devices to connect to; a transport should re-read it on reconnect, as pairing can change it.
    """

    async def run(self, registry: DeviceRegistry, deliver: Deliver, on_event: OnEvent) -> None: ...


class ReplayTransport:
    """Deliver a fixed list of notifications, then return. For tests, benchmarks and the kill -9 fault test.

    ``concurrency`` > 1 delivers that many notifications at once (as several radios would), which lets the
    gateway commit them to the outbox together. ``pause_s`` > 0 waits that long after each such chunk (a trickle
    of traffic that goes on for a while, e.g. through a broker outage).
    """

    def __init__(self, notifications: Iterable[Notification], *, concurrency: int = 1, pause_s: float = 0.0) -> None:
        self.notifications = list(notifications)
        self.concurrency = max(1, concurrency)
        self.pause_s = pause_s
        self.delivered = 0

    async def run(self, registry: DeviceRegistry, deliver: Deliver, on_event: OnEvent) -> None:
        import asyncio

        for start in range(0, len(self.notifications), self.concurrency):
            chunk = self.notifications[start : start + self.concurrency]
            await asyncio.gather(*(deliver(n) for n in chunk))
            self.delivered += len(chunk)
            if self.pause_s > 0:
                await asyncio.sleep(self.pause_s)


# ------------------------------------------------------------------------------------------------------------
# Pure helpers for radio transports (kept here, outside ble.py, so they are tested without a radio)
# ------------------------------------------------------------------------------------------------------------
class RateLimiter:
    """A token bucket per device: a device that floods (a stuck sensor, a hostile advertiser) is cut down to
    ``rate_per_s`` sustained with bursts of ``burst``, so it cannot starve the others or fill the outbox."""

    def __init__(
        self, rate_per_s: float = 50.0, burst: float = 200.0, *, monotonic: Callable[[], float] | None = None
    ):
        import time

        self.rate = rate_per_s
        self.burst = burst
        self._now = monotonic or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self.dropped: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = self._now()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return True
        self._buckets[key] = (tokens, now)
        self.dropped[key] = self.dropped.get(key, 0) + 1
        return False


class Backoff:
    """Exponential reconnect delays with full jitter: first ``base`` s, doubling up to ``cap`` s."""

    def __init__(
        self, base: float = 1.0, cap: float = 120.0, *, rand: Callable[[], float] | None = None
    ) -> None:
        import random

        self.base = base
        self.cap = cap
        self._rand = rand or random.random
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempts))
        self.attempts += 1
        return ceiling * (0.5 + 0.5 * self._rand())

    def reset(self) -> None:
        self.attempts = 0


def uuid128(uuid: str) -> str:
    """'2a5e' → the full Bluetooth SIG 128-bit UUID; a 128-bit UUID is returned lower-cased."""
    text = uuid.strip().lower().removeprefix("0x")
    if len(text) == 4:
        return f"0000{text}-0000-1000-8000-00805f9b34fb"
    return text


def short_uuid(uuid: str) -> str:
    """The 16-bit form of a SIG UUID ('00002a5e-0000-1000-8000-00805f9b34fb' → '2a5e'); others unchanged."""
    text = uuid.strip().lower()
    if len(text) == 36 and text.startswith("0000") and text.endswith("-0000-1000-8000-00805f9b34fb"):
        return text[4:8]
    return text.removeprefix("0x")
