"""The part of a Bluetooth transport that does not depend on the Bluetooth stack: per-device queues, the advert and
notification callbacks, and the connection loop that carries out ``gateway/link.py``'s decisions.

A backend (``gateway/ble.py`` for bleak on BlueZ, ``gateway/bumble_ble.py`` for Bumble on a USB dongle or the
virtual radio) subclasses :class:`RadioTransport`: it scans, calls :meth:`RadioTransport.on_advert_data` for each
advert of a registered device, and provides ``connect`` returning a :class:`GattLink` (its stack's connection,
adapted). Everything else is here, once.

- Per-device token bucket (:class:`~carewatch.gateway.transport.RateLimiter`) and a bounded per-device queue:
  a flooding device loses its own excess (reported as a ``rate_limited`` event), nobody else's data.
- Each device's notifications are delivered in order by one consumer task (stream formats need order).
- One task per registered GATT/UART device (:meth:`RadioTransport.maintain`): wait until it advertises, connect,
  subscribe each characteristic on its own, read what can only be read, send start commands, stay until it
  disconnects, then back off and try again (or give up on a device that refuses our keys, see ``link.py``).
- A watch for silent devices: a ``silent`` event when one has not been heard for 10 minutes, ``back`` when it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, Protocol, TypedDict

import structlog

from carewatch.gateway import link
from carewatch.gateway.link import LinkCommands, Reconnect, RepeatGuard, SilenceWatch, SubscribeRefused
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
from carewatch.registry import BTHOME, GATT, DeviceRegistry, RegisteredDevice

log = structlog.get_logger("carewatch.gateway.radio")

BTHOME_UUIDS = {uuid128("fcd2"): "fcd2", uuid128("181c"): "181c", uuid128("181e"): "181e"}
DEVICE_QUEUE_MAX = 1000
SEEN_EVENT_EVERY_S = 30.0

Sleep = Callable[[float], Awaitable[None]]
OnValue = Callable[[bytes], None]


RECANCEL_EVERY_S = 1.0


async def stop(*tasks: asyncio.Task[Any], within: float | None = None) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait until they end, cancelling again those still running every second (a
    cancellation can be lost: see :func:`_raise_if_stopped`); give up after ``within`` seconds (None: never) and
    return those still running."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    running = {t for t in tasks if not t.done()}
    while running:
        for task in running:
            task.cancel()
        wait = RECANCEL_EVERY_S if deadline is None else min(RECANCEL_EVERY_S, deadline - loop.time())
        if wait <= 0:
            break
        _, running = await asyncio.wait(running, timeout=wait)
    return running


def _raise_if_stopped() -> None:
    """Raise the cancellation of this task if it was lost: Python 3.11's ``asyncio.wait_for`` (which the stacks
    await with) returns the result instead when a cancellation lands as its awaitable completes (gh-86296), and
    the connection loop would then serve the new link with nobody left to stop it (a stop that hangs)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class GattLink(Protocol):
    """One connected device, as the connection loop sees it (each backend adapts its stack's connection)."""

    def properties(self, uuid: str) -> frozenset[str] | None:
        """The properties ("notify", "indicate", "read", "write", "write-without-response") of characteristic
        ``uuid`` (any form), None when the device lacks it; raises :class:`SubscribeRefused` when ambiguous."""
        ...

    async def subscribe(self, uuid: str, on_value: OnValue) -> None:
        """Notifications or indications of ``uuid`` to ``on_value``; raises :class:`SubscribeRefused` (skip it)
        or :class:`~carewatch.gateway.link.PairingError` (the session is over)."""
        ...

    async def read(self, uuid: str) -> bytes: ...

    async def write(self, uuid: str, data: bytes, *, response: bool) -> None: ...

    async def close(self) -> None: ...


class RadioOptions(TypedDict, total=False):
    """:class:`RadioTransport`'s keyword options, as a backend passes them on (the defaults are RadioTransport's)."""

    clock: Clock
    rate_limiter: RateLimiter | None
    sleep: Sleep
    monotonic: Callable[[], float]
    backoff: Callable[[], Backoff]
    stable_s: float
    silent_after_s: float


class RadioTransport:
    """Queues, callbacks and the connection loop; a backend adds scanning and ``_open_link``."""

    def __init__(
        self,
        *,
        clock: Clock = system_clock,
        rate_limiter: RateLimiter | None = None,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        backoff: Callable[[], Backoff] = Backoff,
        stable_s: float = link.STABLE_S,
        silent_after_s: float = link.SILENT_AFTER_S,
    ) -> None:
        """``sleep``, ``monotonic`` and ``backoff``: the connection loop's time (tests pass a virtual or scaled
        clock); a connection that lasts ``stable_s`` resets the backoff."""
        self.clock = clock
        self.limiter = rate_limiter or RateLimiter()
        self._sleep = sleep
        self._monotonic = monotonic
        self._backoff = backoff
        self.stable_s = stable_s
        self.silent_after_s = silent_after_s
        self._seen_event: dict[str, asyncio.Event] = {}
        self._last_seen_report: dict[str, datetime] = {}
        self._queues: dict[str, asyncio.Queue[Notification]] = {}
        self._told: set[tuple[str, str]] = set()  # (address, uuid) already logged as skipped
        self.silence: SilenceWatch | None = None
        self.gave_up: set[str] = set()  # devices that refused our keys too often (until the registry changes)
        self._started_at: datetime | None = None
        self._session_end: dict[str, datetime] = {}  # when each device's last session ended
        self._gap: dict[str, tuple[datetime, datetime]] = {}  # the unheard gap before each device's session
        self.repeats = RepeatGuard()

    # --------------------------------------------------------------------------------------------------------
    # What the backend must provide
    # --------------------------------------------------------------------------------------------------------
    async def _open_link(self, device: RegisteredDevice, on_disconnected: Callable[[], None]) -> GattLink:
        raise NotImplementedError

    # --------------------------------------------------------------------------------------------------------
    # Queues and callbacks
    # --------------------------------------------------------------------------------------------------------
    def start_consumers(self, registry: DeviceRegistry, deliver: Deliver) -> list[asyncio.Task[Any]]:
        """One bounded queue and one in-order consumer task per registered device (call inside the loop)."""
        tasks = []
        for device in registry:
            self._queues[device.address] = asyncio.Queue(maxsize=DEVICE_QUEUE_MAX)
            self._seen_event[device.address] = asyncio.Event()
            tasks.append(asyncio.create_task(self._consume(device.address, deliver)))
        return tasks

    def start_device_tasks(self, registry: DeviceRegistry, on_event: OnEvent) -> list[asyncio.Task[Any]]:
        """The connection loop of each GATT/UART device and the silence watch (call inside the loop)."""
        self._started_at = self.clock()
        self.silence = SilenceWatch((d.address for d in registry), self._monotonic(), after_s=self.silent_after_s)
        tasks = [asyncio.create_task(self.maintain(d, on_event)) for d in registry if d.source != BTHOME]
        tasks.append(asyncio.create_task(self._watch_silence(registry, on_event)))
        return tasks

    def backlog(self) -> int:
        """Notifications heard and not yet handed to ``deliver``."""
        return sum(q.qsize() for q in self._queues.values())

    def _enqueue(self, note: Notification, on_event: OnEvent) -> None:
        queue = self._queues.get(note.address)
        if queue is None:
            return
        self._heard(note.address, on_event)
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
        task = asyncio.ensure_future(on_event(event))  # (on the running loop)
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _heard(self, address: str, on_event: OnEvent) -> None:
        if self.silence is not None and self.silence.heard(address, self._monotonic()):
            self._event(on_event, TransportEvent(address, "back", self.clock(), detail="heard again"))

    def on_advert_data(
        self,
        registry: DeviceRegistry,
        address: str,
        rssi: int | None,
        service_data: Mapping[str, bytes],
        on_event: OnEvent,
    ) -> None:
        """An advert from ``address`` (any MAC form) with its service data keyed by 128-bit UUID."""
        device = registry.get(address)
        if device is None or device.address not in self._seen_event:
            return
        now = self.clock()
        self._seen_event[device.address].set()
        self._heard(device.address, on_event)
        last = self._last_seen_report.get(device.address)
        if last is None or (now - last).total_seconds() >= SEEN_EVENT_EVERY_S:
            self._last_seen_report[device.address] = now
            self._event(on_event, TransportEvent(device.address, "seen", now, rssi=rssi))
        if device.source != BTHOME:
            return
        for uuid, data in service_data.items():
            if uuid.lower() in BTHOME_UUIDS:
                note = Notification(device.address, BTHOME_SOURCE, bytes(data), now, rssi)
                self._enqueue(note, on_event)

    def notification_handler(
        self, device: RegisteredDevice, uuid: str, on_event: OnEvent
    ) -> Callable[[Any, bytearray], None]:
        """The callback with each notification of ``uuid`` (bleak's signature); GATT ones are named by short
        UUID, proprietary ones by their format."""
        source = short_uuid(uuid) if device.source == GATT else device.source

        def on_notify(_characteristic: Any, data: bytearray) -> None:
            if self.repeats.is_repeat(device.address, source, bytes(data)):
                log.info("measurement_repeated", device_id=device.device_id, source=source)
                return
            gap = self._gap.get(device.address)
            note = Notification(device.address, source, bytes(data), self.clock(), unheard=gap)
            self._enqueue(note, on_event)

        return on_notify

    # --------------------------------------------------------------------------------------------------------
    # The connection loop
    # --------------------------------------------------------------------------------------------------------
    async def maintain(self, device: RegisteredDevice, on_event: OnEvent) -> None:
        """Keep one GATT/UART device connected: connect when it advertises, serve it until it disconnects, back
        off, again. Only cancellation ends this loop, or a device that keeps refusing our keys (``link.py``)."""
        policy = Reconnect(self._backoff(), stable_s=self.stable_s)
        characteristics = link.characteristics_for(device)
        if not characteristics:
            log.error("no_characteristics", device_id=device.device_id, source=device.source)
            return
        while True:
            await self._seen_event[device.address].wait()
            _raise_if_stopped()
            disconnected = asyncio.Event()
            gatt: GattLink | None = None
            error: BaseException | None = None
            try:
                gatt = await self._open_link(device, disconnected.set)
                _raise_if_stopped()
                policy.connected(self._monotonic())
                self._gap[device.address] = link.unheard_gap(
                    self._session_end.get(device.address), self._started_at or self.clock(), self.clock())
                self._heard(device.address, on_event)
                await on_event(TransportEvent(device.address, "connected", self.clock()))
                await self._serve_until_gone(self._serve(device, gatt, characteristics, disconnected, on_event),
                                             disconnected)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # we are being stopped
                # a stack (Bumble) cancels the requests pending on a link that dropped: a lost link, not a stop
                error = ConnectionError("the link dropped during a request")
                await on_event(TransportEvent(device.address, "error", self.clock(), detail=str(error)))
            except Exception as exc:  # the stack's errors, TimeoutError, OSError, DeviceLinkError, nonsense
                error = exc
                await on_event(TransportEvent(device.address, "error", self.clock(), detail=f"{exc}"[:500]))
            finally:
                if gatt is not None:
                    self._session_end[device.address] = self.clock()
                    with contextlib.suppress(Exception):
                        await gatt.close()
                    await on_event(TransportEvent(device.address, "disconnected", self.clock()))
            decision = policy.closed(self._monotonic(), error)
            if decision.fault is not None:
                log.error("device_fault", device_id=device.device_id, detail=decision.fault)
                await on_event(TransportEvent(device.address, "fault", self.clock(), detail=decision.fault[:500]))
            if not decision.retry:
                self.gave_up.add(device.address)
                return
            self._seen_event[device.address].clear()  # wait for a fresh advert before trying again
            await self._sleep(decision.delay_s)

    @staticmethod
    async def _serve_until_gone(session: Coroutine[Any, Any, None], disconnected: asyncio.Event) -> None:
        """Run a session (``_serve``); a disconnection ends it at once, even mid-request (a stack may otherwise
        wait out its request timeout on a link that is gone)."""
        serving = asyncio.create_task(session)
        gone = asyncio.create_task(disconnected.wait())
        try:
            await asyncio.wait({serving, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            ours = not serving.done()
            if ours:
                await stop(serving)
            [outcome] = await asyncio.gather(serving, return_exceptions=True)
        if ours:
            return  # the link went away: an ordinary end of a session
        if isinstance(outcome, asyncio.CancelledError):
            raise ConnectionError("the link dropped during a request")
        if isinstance(outcome, BaseException):
            raise outcome

    async def _serve(
        self,
        device: RegisteredDevice,
        gatt: GattLink,
        characteristics: tuple[str, ...],
        disconnected: asyncio.Event,
        on_event: OnEvent,
    ) -> None:
        """Subscribe each characteristic on its own, read what can only be read, send the format's start
        commands; return when the device disconnects (raise when the link is of no use or a command fails)."""
        subscribed, readable = 0, []
        for uuid in characteristics:
            try:
                properties = gatt.properties(uuid)
            except SubscribeRefused as exc:  # the same UUID in two services
                self._skip(device, uuid, f"ambiguous: {exc}")
                continue
            action, reason = link.plan_characteristic(device, uuid, properties)
            if action == "subscribe":
                assert properties is not None
                handler = self.notification_handler(device, uuid, on_event)
                try:
                    def forward(data: bytes, on: Callable[[Any, bytearray], None] = handler) -> None:
                        on(None, bytearray(data))

                    await gatt.subscribe(uuid, forward)
                    subscribed += 1
                    continue
                except SubscribeRefused as exc:
                    action, reason = link.after_refusal(device, uuid, properties, str(exc))
            if action == "read":
                readable.append(uuid)
            self._skip(device, uuid, reason)
        link.check_usable(device, characteristics, subscribed, len(readable))
        jobs: list[Coroutine[Any, Any, None]] = [self._keep_reading(device, gatt, u, on_event) for u in readable]
        commands = link.commands_for(device)
        if commands is not None:
            jobs.append(self._drive(device, gatt, commands))
        gone = asyncio.create_task(disconnected.wait())
        pending: set[asyncio.Task[Any]] = {gone, *(asyncio.create_task(job) for job in jobs)}
        try:
            while gone in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {gone}:  # a read or command that failed ends the session (then backoff)
                    if (error := task.exception()) is not None:
                        raise error
        finally:
            await stop(*pending)
            await asyncio.gather(*pending, return_exceptions=True)

    def _skip(self, device: RegisteredDevice, uuid: str, reason: str) -> None:
        """Log a characteristic we cannot subscribe, once per device and characteristic (not per reconnect)."""
        if (device.address, uuid) in self._told:
            return
        self._told.add((device.address, uuid))
        say = log.info if reason == "absent" else log.warning
        say("characteristic_skipped", device_id=device.device_id, uuid=uuid, reason=reason)

    async def _keep_reading(self, device: RegisteredDevice, gatt: GattLink, uuid: str, on_event: OnEvent) -> None:
        handler = self.notification_handler(device, uuid, on_event)
        while True:
            handler(None, bytearray(await gatt.read(uuid)))
            await self._sleep(link.READ_EVERY_S)

    async def _drive(self, device: RegisteredDevice, gatt: GattLink, commands: LinkCommands) -> None:
        """Write the start commands, then the keep-alive/poll, with a response when the characteristic has one."""
        properties = gatt.properties(commands.write_uuid)
        if properties is None:
            raise link.missing_command_channel(device, commands)
        response = "write" in properties
        for command in commands.start:
            await gatt.write(commands.write_uuid, command, response=response)
        if commands.repeat is None:
            return
        while True:
            await self._sleep(commands.every_s)
            await gatt.write(commands.write_uuid, commands.repeat, response=response)

    async def _watch_silence(self, registry: DeviceRegistry, on_event: OnEvent) -> None:
        """A ``silent`` event for each device not heard for ``silent_after_s`` (once, until it is heard again)."""
        assert self.silence is not None
        while True:
            await self._sleep(min(link.SILENCE_CHECK_S, self.silent_after_s / 4))
            now = self._monotonic()
            for address in self.silence.check(now):
                quiet = self.silence.quiet_for(address, now)
                await on_event(TransportEvent(address, "silent", self.clock(), detail=f"not heard for {quiet:.0f} s"))
