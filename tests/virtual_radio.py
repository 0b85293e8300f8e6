"""Helpers for the tests that run the gateway's Bumble backend against the virtual radio (importable by test
modules: ``pythonpath = ["tests"]``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carewatch.firmware_sim.radio import VirtualRadio
from carewatch.gateway.bumble_ble import BumbleTransport
from carewatch.gateway.pipeline import Pipeline, ReadingDraft
from carewatch.gateway.registry import DeviceRegistry
from carewatch.gateway.transport import Backoff, Notification, TransportEvent

AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class ScaledClock:
    """The transport's ``sleep``/``monotonic`` running ``factor`` times faster than real time: ten minutes of
    silence pass in 600/factor real seconds, while Bumble's own protocol timers run in real time."""

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor
        self._t0 = time.monotonic()

    def monotonic(self) -> float:
        return (time.monotonic() - self._t0) * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.factor)


class Sink:
    """deliver/on_event for a transport: each notification through the real pipeline, in arrival order."""

    def __init__(self, registry: DeviceRegistry) -> None:
        self.pipeline = Pipeline(registry)
        self.notes: list[Notification] = []
        self.drafts: list[ReadingDraft] = []
        self.dead: list[tuple[str, str]] = []  # (address, reason)
        self.events: list[TransportEvent] = []

    async def deliver(self, note: Notification) -> None:
        self.notes.append(note)
        result = self.pipeline.process(note)
        self.drafts.extend(result.drafts)
        self.dead.extend((d.address, d.reason) for d in result.dead_letters)

    async def on_event(self, event: TransportEvent) -> None:
        self.events.append(event)

    def kinds(self, address: str) -> list[str]:
        return [e.kind for e in self.events if e.address == address and e.kind != "seen"]

    def values(self, device_id: str) -> list[tuple[str, float]]:
        return [(d.metric.value, d.value) for d in self.drafts if d.device_id == device_id]


def transport_for(radio: VirtualRadio, *, keystore: Path | None = None, clock: ScaledClock | None = None,
                  **kw: Any) -> BumbleTransport:
    clock = clock or ScaledClock()
    kw.setdefault("backoff", lambda: Backoff(base=0.2, cap=1.0))
    return BumbleTransport(radio.hci_transport, keystore=keystore, clock=lambda: AT, sleep=clock.sleep,
                           monotonic=clock.monotonic, **kw)


async def until(done: Callable[[], bool], timeout: float = 15.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Running:
    """``async with Running(transport, registry, sink):`` runs the transport until the block ends."""

    def __init__(self, transport: BumbleTransport, registry: DeviceRegistry, sink: Sink) -> None:
        self.transport, self.registry, self.sink = transport, registry, sink
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BumbleTransport:
        self.task = asyncio.create_task(self.transport.run(self.registry, self.sink.deliver, self.sink.on_event))
        ready = asyncio.create_task(self.transport.ready.wait())
        done, _ = await asyncio.wait({self.task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        assert ready in done, "the Bumble transport did not start"
        return self.transport

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def in_radio(radio: VirtualRadio, action: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
    """Run a peripheral's coroutine in the radio's loop, awaitable from the test's loop."""
    return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(action(), radio._loop))  # type: ignore[arg-type]
