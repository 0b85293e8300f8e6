"""Helpers for the tests that run the gateway's Bumble backend against the virtual radio (importable by test
modules: ``pythonpath = ["tests"]``)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from carewatch.firmware_sim import frames
from carewatch.firmware_sim.radio import VirtualRadio
from carewatch.gateway.bumble_ble import BumbleTransport
from carewatch.gateway.pipeline import Pipeline, ReadingDraft
from carewatch.gateway.transport import Backoff, Notification, TransportEvent
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.wire import DeviceKind

AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
STOP_TIMEOUT_S = 20.0  # a transport must stop this soon after cancellation (its radio awaits are all bounded)


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
        """Stop the transport; one that does not stop (an await on the radio that never returns) fails the test
        here, with where it is stuck, instead of hanging it."""
        assert self.task is not None
        self.task.cancel()
        done, _ = await asyncio.wait({self.task}, timeout=STOP_TIMEOUT_S)
        if not done:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            raise AssertionError(f"the Bumble transport did not stop within {STOP_TIMEOUT_S} s of being cancelled; "
                                 f"stuck in:\n{stacks(others)}")
        if not self.task.cancelled():
            self.task.exception()  # retrieved (as gather(return_exceptions=True) did): the block's own checks judge
        assert not self.transport.stuck, f"the transport stopped with tasks still running: {self.transport.stuck}"


def stacks(tasks: Iterable[asyncio.Task[Any]]) -> str:
    """Where each task is suspended (for a failure message)."""
    out = io.StringIO()
    for task in tasks:
        task.print_stack(file=out)
    return out.getvalue()


async def in_radio(radio: VirtualRadio, action: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Run a peripheral's coroutine in the radio's loop and wait for it from the test's loop, at most ``timeout``
    seconds: an action that never ends fails the test, saying which and where it waited."""
    assert radio._loop is not None
    started: list[asyncio.Task[Any]] = []

    async def run() -> Any:
        task = asyncio.current_task()
        assert task is not None
        started.append(task)
        return await action()

    future = asyncio.run_coroutine_threadsafe(run(), radio._loop)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        where = stacks(started)  # read before the cancellation unwinds it
        future.cancel()
        name = getattr(action, "__qualname__", repr(action))
        raise AssertionError(f"timed out after {timeout} s waiting for the radio to run {name}; stuck in:\n"
                             f"{where}") from None


# Every device kind the virtual radio simulates, and one frame (or advert) from each
STAMP = AT.replace(tzinfo=None)  # the devices' clocks (UTC, as the gateway sets them)
OX, THERMO, CUFF, STRAP, BCI, PC60, EMAY, RING, MOTION, SEALED, WRONG = (
    f"C0:5E:00:00:00:{i:02X}" for i in range(1, 12))
KEY, OTHER_KEY = "231d39c1d7cc1ab1aee224cd096db932", "00112233445566778899aabbccddeeff"


def every_kind() -> DeviceRegistry:
    def gatt(address: str, device_id: str, kind: DeviceKind, **kw: object) -> RegisteredDevice:
        return RegisteredDevice(address=address, device_id=device_id, kind=kind, resident_id="r-1", **kw)  # type: ignore[arg-type]

    ox = DeviceKind.PULSE_OXIMETER
    return DeviceRegistry([
        gatt(OX, "ox-1", ox),
        gatt(THERMO, "thermo-1", DeviceKind.THERMOMETER),
        gatt(CUFF, "bp-1", DeviceKind.BP_CUFF),
        gatt(STRAP, "hr-1", DeviceKind.HEART_RATE),
        gatt(BCI, "ox-bci", ox, source="berrymed"),
        gatt(PC60, "ox-pc60", ox, source="pc60fw"),
        gatt(EMAY, "ox-emay", ox, source="emay"),
        gatt(RING, "ox-ring", ox, source="o2ring"),
        RegisteredDevice(address=MOTION, device_id="motion-1", kind=DeviceKind.MOTION_SENSOR, room="hall"),
        RegisteredDevice(address=SEALED, device_id="bath-1", kind=DeviceKind.BATHROOM_SENSOR, room="bathroom",
                         bind_key=KEY),
        # registered with a key that is not the one the sensor encrypts with
        RegisteredDevice(address=WRONG, device_id="door-1", kind=DeviceKind.DOOR_SENSOR, room="front",
                         bind_key=OTHER_KEY),
    ])


def frames_of_every_kind() -> list[Notification]:
    def note(address: str, source: str, data: bytes) -> Notification:
        return Notification(address, source, data, AT)

    t = [STAMP + timedelta(minutes=i) for i in range(4)]
    return [
        note(OX, "2a5e", frames.encode_plx_spot_check(96, 71, timestamp=t[0])),
        note(OX, "2a5f", frames.encode_plx_continuous(95, 70)),
        note(OX, "2a19", frames.encode_battery_level(64)),
        note(THERMO, "2a1c", frames.encode_temperature(37.25, timestamp=t[1], temp_type=6)),
        note(CUFF, "2a35", frames.encode_blood_pressure(132, 84, 100, timestamp=t[2], pulse_rate=66)),
        note(STRAP, "2a37", frames.encode_heart_rate(64, sensor_contact=True)),
        note(BCI, "berrymed", frames.encode_berrymed(97, 74)),
        note(PC60, "pc60fw", frames.encode_pc60fw_params(98, 61, 2.5)),
        note(EMAY, "emay", frames.encode_emay(94, 88)),
        note(RING, "o2ring", frames.encode_o2ring(93, 77, battery=55)),
        note(MOTION, "bthome", frames.encode_bthome({"motion": True, "battery_pct": 90}, packet_id=7, mac=MOTION)),
        note(SEALED, "bthome", frames.encode_bthome({"occupancy": True}, packet_id=3, bindkey=bytes.fromhex(KEY),
                                                   mac=SEALED, counter=11)),
        note(WRONG, "bthome", frames.encode_bthome({"door_open": True}, packet_id=4, bindkey=bytes.fromhex(KEY),
                                                  mac=WRONG, counter=12)),
    ]
