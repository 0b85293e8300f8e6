"""The simulator's radio: a :class:`~carewatch.gateway.transport.Transport` that hands notifications pushed from
any thread to the real gateway code.

Kept apart from ``devices.py`` (which needs numpy to act out device faults) so that a gateway process fed by the
simulator imports no more than a gateway on a real radio does (``bench/bench_gateway_rss.py`` measures it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from carewatch.gateway.transport import Deliver, Notification, OnEvent, TransportEvent
from carewatch.registry import DeviceRegistry


class SimTransport:
    """A Transport whose radio is the simulator: notifications pushed from any thread reach ``deliver``.

    ``deliver`` resolves once the readings are in the gateway's outbox, so a notification is never lost; up to
    ``concurrency`` deliveries are in flight so the gateway can commit them together.
    """

    def __init__(self, concurrency: int = 64) -> None:
        self.concurrency = concurrency
        self._queue: asyncio.Queue[Notification | TransportEvent | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self.delivered = 0

    def wait_ready(self, timeout: float = 30) -> bool:
        return self._ready.wait(timeout)

    def push(self, items: Iterable[Notification | TransportEvent]) -> None:
        if self._loop is None or self._queue is None:
            raise RuntimeError("SimTransport is not running yet (start the gateway first)")
        for item in items:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def close(self) -> None:
        if self._loop is not None and self._queue is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    def backlog(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def run(self, registry: DeviceRegistry, deliver: Deliver, on_event: OnEvent) -> None:
        self._loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._ready.set()
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def one(note: Notification) -> None:
            try:
                await deliver(note)
                self.delivered += 1
            finally:
                slots.release()

        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    break
                if isinstance(item, TransportEvent):
                    await on_event(item)
                    continue
                await slots.acquire()
                task = asyncio.create_task(one(item))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
