"""Transport protocol, replay transport and the pure helpers radio transports use."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest

from carewatch.gateway.transport import (
    Backoff,
    Notification,
    RateLimiter,
    ReplayTransport,
    Transport,
    TransportEvent,
    short_uuid,
    uuid128,
)
from carewatch.registry import DeviceRegistry

AT = datetime(2025, 1, 1, tzinfo=UTC)


def test_notification_is_immutable() -> None:
    note = Notification("AA:BB:CC:DD:EE:FF", "2a5e", b"\x00", AT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        note.data = b"x"  # type: ignore[misc]
    assert note.rssi is None


def test_replay_transport_delivers_everything_in_order() -> None:
    notes = [Notification("AA:BB:CC:DD:EE:FF", "2a5e", bytes([i]), AT) for i in range(25)]
    got: list[int] = []

    async def deliver(note: Notification) -> None:
        got.append(note.data[0])

    async def on_event(event: TransportEvent) -> None:
        raise AssertionError("replay sends no events")

    transport = ReplayTransport(notes, concurrency=4)
    assert isinstance(transport, Transport)
    asyncio.run(transport.run(DeviceRegistry(), deliver, on_event))
    assert got == list(range(25))
    assert transport.delivered == 25


def test_rate_limiter_allows_burst_then_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=10, burst=5, monotonic=lambda: now[0])
    assert [limiter.allow("a") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("b"), "one device's flood must not cost another device anything"
    now[0] += 0.1  # one token back
    assert limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.dropped == {"a": 3}
    now[0] += 100  # refills only up to the burst
    assert sum(limiter.allow("a") for _ in range(10)) == 5


def test_backoff_grows_caps_and_resets() -> None:
    backoff = Backoff(base=1, cap=8, rand=lambda: 1.0)  # no jitter: the ceiling itself
    assert [backoff.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    backoff.reset()
    assert backoff.next() == 1
    jittered = Backoff(base=4, cap=4, rand=lambda: 0.0)
    assert jittered.next() == 2  # full jitter keeps at least half the delay


def test_uuid_forms() -> None:
    assert uuid128("2A5E") == "00002a5e-0000-1000-8000-00805f9b34fb"
    assert short_uuid("00002A5E-0000-1000-8000-00805F9B34FB") == "2a5e"
    custom = "49535343-1e4d-4bd9-ba61-23c647249616"
    assert uuid128(custom) == custom and short_uuid(custom) == custom


def test_ble_transport_imports_and_fits_the_protocol() -> None:
    pytest.importorskip("bleak", reason="bleak is the edge-only extra: pip install 'carewatch[gateway]'")
    from carewatch.gateway.ble import BleakTransport

    assert isinstance(BleakTransport(), Transport)
