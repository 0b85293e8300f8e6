"""The gateway process: transport → pipeline → outbox → publisher.

Concurrency: the transport, the pipeline and the outbox writer run in one asyncio event loop (bleak is
asyncio); the publisher runs in threads (paho's network thread plus one drain thread). They meet only at the
SQLite outbox, so a broker that is down for days never slows the radio side.

``deliver`` (what the transport calls for each notification) returns once the notification's readings are
committed to the outbox: notifications that arrive together are decoded in arrival order and committed in
one transaction (group commit), so fsync costs are shared while no reading is acknowledged before it is on
disk.

Run it in-process with :class:`Gateway` (``start()``/``stop()``, counters) or ``await run_gateway(...)``;
``carewatch gateway`` calls :func:`main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from carewatch.gateway.outbox import Outbox
from carewatch.gateway.pipeline import DeadLetter, Pipeline, PipelineResult
from carewatch.gateway.publisher import Publisher
from carewatch.gateway.registry import RegistrySource, load_registry, refresh_registry_file
from carewatch.gateway.transport import Clock, Notification, Transport, TransportEvent, system_clock
from carewatch.registry import DeviceRegistry, RegistryError
from carewatch.settings import Settings
from carewatch.wire import DeviceStatus, GatewayEvent, GatewayStatus, Metric

log = structlog.get_logger("carewatch.gateway")

WRITE_BATCH_MAX = 1000  # notifications committed together at most
QUEUE_MAX = 10_000  # notifications waiting for the writer before deliver() applies back-pressure
REGISTRY_POLL_S = 5.0
#: Transport events the platform hears about (as GatewayEvents), beside the device status.
LINK_EVENTS = {"fault": "device_fault", "silent": "device_silent", "back": "device_back"}
TRANSPORT_RESTART_S = 5.0


@dataclass
class GatewayCounters:
    frames_in: int = 0  # notifications delivered by the transport
    readings_accepted: int = 0  # readings committed to the outbox
    readings_flagged: int = 0  # of those, ones the device distrusts (stored with their flags, scored never)
    dead_letters: int = 0
    duplicates: int = 0  # BTHome re-broadcasts ignored
    urgent: int = 0
    published: int = 0  # readings handed to the broker (re-sends count again)
    acked: int = 0  # readings acknowledged by the broker (then kept for the replay window)
    batches_acked: int = 0
    outbox_depth: int = 0  # unsent readings
    replay_kept: int = 0  # acknowledged readings still kept in case ingest asks for them again
    resend_requests: int = 0  # resend requests received from ingest
    replayed: int = 0  # readings published again on request
    replay_unavailable: int = 0  # requested readings no longer kept (reported as replay_unavailable events)
    last_seq: int = 0
    registry_fetches: int = 0  # successful fetches from the API (changed or not)
    registry_fetch_failures: int = 0  # API unreachable or refusing: the registry file was kept


@dataclass
class _DeviceHealth:
    battery_pct: float | None = None
    rssi_dbm: int | None = None
    last_seen: datetime | None = None
    connected: bool | None = None


class Gateway:
    """One gateway, runnable in-process: ``start()`` spawns its event loop in a thread, ``stop()`` ends it."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        *,
        registry: DeviceRegistry | None = None,
        clock: Clock | None = None,
        status_interval_s: float = 30.0,
        flush_timeout_s: float = 5.0,
        reconnect_max_s: int = 60,
        registry_source: RegistrySource | None = None,
    ) -> None:
        """``registry``: a fixed registry (the simulator). Otherwise the registry file (``settings.registry_file``)
        is used and watched, and, when ``registry_url`` is set (or ``registry_source`` given), refreshed from the
        API at start and every ``registry_fetch_s``."""
        self.settings = settings
        self.reconnect_max_s = reconnect_max_s
        self.transport = transport
        self.clock = clock or system_clock
        self.status_interval_s = status_interval_s
        self.flush_timeout_s = flush_timeout_s
        self._registry_file: Path | None = None if registry is not None else settings.registry_file
        self.registry_source = (
            None if registry is not None else registry_source or RegistrySource.from_settings(settings)
        )
        if self.registry_source is not None and self._registry_file is None:
            raise RegistryError("fetching the registry from the API needs a registry file to keep it in")
        self._registry_mtime: float | None = None
        self.registry = registry if registry is not None else self._load_registry_file() or DeviceRegistry()
        self.pipeline = Pipeline(self.registry)
        self._counters = GatewayCounters()
        self._health: dict[str, _DeviceHealth] = {}
        self._started_at: datetime | None = None
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        self._queue: asyncio.Queue[tuple[Notification, asyncio.Future[None]]] | None = None
        self._transport_task: asyncio.Task[None] | None = None
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None

    # --------------------------------------------------------------------------------------------------------
    # in-process control
    # --------------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Gateway:
        """Run the gateway in a background thread; returns once the outbox is open and the transport runs."""
        ready = threading.Event()

        def runner() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.run(ready=ready))
            except BaseException as exc:
                self._startup_error = exc
                ready.set()
                log.exception("gateway_crashed")
            finally:
                loop.close()

        self._thread = threading.Thread(
            target=runner, name=f"gateway-{self.settings.gateway_id}", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("gateway did not start in time")
        if self._startup_error is not None:
            raise RuntimeError(f"gateway failed to start: {self._startup_error}") from self._startup_error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the transport, commit what it delivered, flush what the broker will take, close the outbox."""
        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def counters(self) -> GatewayCounters:
        counters = GatewayCounters(**asdict(self._counters))
        if self.publisher is not None:
            counters.published = self.publisher.counters.readings_sent
            counters.acked = self.publisher.counters.readings_acked
            counters.batches_acked = self.publisher.counters.batches_acked
            counters.resend_requests = self.publisher.counters.resend_requests
            counters.replayed = self.publisher.counters.readings_replayed
            counters.replay_unavailable = self.publisher.counters.replay_unavailable
        if self.outbox is not None:
            with contextlib.suppress(Exception):
                counters.outbox_depth = self.outbox.depth()
                counters.last_seq = self.outbox.last_seq()
                counters.replay_kept = self.outbox.kept_sent()
        return counters

    def set_uplink(self, up: bool) -> None:
        """Simulate a network outage (False) and its end (True); the radio side keeps going throughout."""
        if self.publisher is not None:
            self.publisher.set_uplink(up)

    def set_registry(self, registry: DeviceRegistry) -> None:
        """Use a new registry (thread-safe): the pipeline swaps at once and the transport is restarted."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._apply_registry, registry)
        else:
            self._apply_registry(registry)

    # --------------------------------------------------------------------------------------------------------
    # the event loop side
    # --------------------------------------------------------------------------------------------------------
    async def run(
        self, stop_event: asyncio.Event | None = None, *, ready: threading.Event | None = None
    ) -> None:
        """Run until ``stop_event`` is set (or the task is cancelled), then shut down gracefully."""
        settings = self.settings
        self._stop_event = stop_event or asyncio.Event()
        self._started_at = self.clock()
        common: dict[str, Any] = {
            "site_id": settings.site_id,
            "gateway_id": settings.gateway_id,
            "max_bytes": settings.outbox_max_mb * 1024 * 1024,
            "clock": self.clock,
            "replay_retention_s": settings.replay_retention_s,
        }
        self.outbox = Outbox(settings.outbox_file, **common)
        publisher_outbox = Outbox(settings.outbox_file, **common)
        self.publisher = Publisher(
            publisher_outbox,
            settings.mqtt,
            site_id=settings.site_id,
            gateway_id=settings.gateway_id,
            ca_file=settings.mqtt_ca_file,
            batch_size=settings.publish_batch_size,
            batch_ms=settings.publish_batch_ms,
            inflight=settings.publish_inflight,
            status=self.status,
            status_interval_s=self.status_interval_s,
            clock=self.clock,
            reconnect_max_s=self.reconnect_max_s,
        )
        self._queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self.publisher.start()
        writer = asyncio.create_task(self._writer(), name="outbox-writer")
        self._start_transport()
        watcher = asyncio.create_task(self._watch_registry(), name="registry-watch")
        fetcher = asyncio.create_task(self._fetch_registry_forever(), name="registry-fetch")
        log.info(
            "gateway_started",
            gateway_id=settings.gateway_id,
            site_id=settings.site_id,
            devices=len(self.registry),
            outbox=str(settings.outbox_file),
            backlog=self.outbox.depth(),
        )
        if ready is not None:
            ready.set()
        try:
            await self._stop_event.wait()
        finally:
            log.info("gateway_stopping")
            watcher.cancel()
            fetcher.cancel()
            await self._stop_transport()
            await self._queue.join()  # everything delivered is committed
            writer.cancel()
            await asyncio.gather(writer, watcher, fetcher, return_exceptions=True)
            drained = await asyncio.to_thread(self.publisher.stop, self.flush_timeout_s)
            counters = self.counters
            self.outbox.close()
            publisher_outbox.close()
            log.info("gateway_stopped", drained=drained, **asdict(counters))

    async def deliver(self, note: Notification) -> None:
        """Called by the transport; returns when the notification's readings are committed to the outbox."""
        assert self._queue is not None
        self._counters.frames_in += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((note, done))
        await done

    async def on_transport_event(self, event: TransportEvent) -> None:
        health = self._health.setdefault(event.address, _DeviceHealth())
        changed = False
        if event.rssi is not None:
            health.rssi_dbm = event.rssi
        if event.kind in ("connected", "disconnected"):
            connected = event.kind == "connected"
            changed = health.connected != connected
            health.connected = connected
        if event.kind in ("connected", "seen"):
            health.last_seen = event.at
        if event.kind == "silent":
            changed = health.connected is not False
            health.connected = False
        if event.kind in ("rate_limited", "error", "fault", "silent"):
            log.warning("transport_" + event.kind, address=event.address, detail=event.detail)
        else:
            log.debug("transport_event", address=event.address, kind=event.kind, detail=event.detail)
        if event.kind in LINK_EVENTS:
            await self._link_event(event)
        if changed and self.publisher is not None:
            self.publisher.request_status()

    async def _link_event(self, event: TransportEvent) -> None:
        """A device fault (keys or pairing refused), a device gone silent or back: a GatewayEvent for the platform,
        stored in the outbox like any other (so it survives an outage)."""
        assert self.outbox is not None
        device = self.registry.get(event.address)
        gateway_event = GatewayEvent(
            site_id=self.settings.site_id, gateway_id=self.settings.gateway_id, at=event.at,
            kind=LINK_EVENTS[event.kind], device_id=device.device_id if device else None,
            message=event.detail or event.kind, detail={"address": event.address},
        )
        try:
            await asyncio.to_thread(self.outbox.add_events, [gateway_event])
            if self.publisher is not None:
                self.publisher.notify(urgent=False)
        except (sqlite3.Error, OSError) as exc:  # an event is worth less than a reading: log, never stall the radio
            log.error("link_event_not_stored", kind=event.kind, error=str(exc))

    async def _writer(self) -> None:
        assert self._queue is not None and self.outbox is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < WRITE_BATCH_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception:  # never let the writer die; _commit already keeps what it can
                log.exception("writer_error", notifications=len(batch))
            finally:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
                    queue.task_done()

    async def _commit(self, batch: list[tuple[Notification, asyncio.Future[None]]]) -> None:
        assert self.outbox is not None
        results: list[tuple[Notification, PipelineResult]] = [
            (note, self.pipeline.process(note)) for note, _ in batch
        ]
        drafts = [d for _, r in results for d in r.drafts]
        dead = [d for _, r in results for d in r.dead_letters]
        events = [self._dead_letter_event(d) for d in dead]
        delay = 0.1
        while True:  # a failing disk must not drop readings: retry until it works (deliver() waits meanwhile)
            try:
                stored = await asyncio.to_thread(self.outbox.append, drafts, dead_letters=dead, events=events)
                break
            except (sqlite3.Error, OSError) as exc:
                log.error("outbox_write_failed", error=str(exc), readings=len(drafts), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception as exc:
                # a draft the wire model rejects (a bug): keep the frames as dead letters, never lose them
                log.exception("outbox_rejected_batch", readings=len(drafts))
                dead = dead + [
                    replace(d, reason=f"could not store readings: {exc}") for d in _as_dead(results)
                ]
                events = [self._dead_letter_event(d) for d in dead]
                drafts = []
        self._counters.readings_accepted += len(stored)
        self._counters.readings_flagged += sum(1 for d in drafts if not d.trusted)
        self._counters.dead_letters += len(dead)
        self._counters.duplicates += sum(r.duplicates for _, r in results)
        urgent = sum(1 for d in drafts if d.urgent)
        self._counters.urgent += urgent
        for letter in dead:
            log.warning(
                "dead_letter",
                address=letter.address,
                source=letter.source,
                device_id=letter.device_id,
                reason=letter.reason,
                raw_hex=letter.raw_hex[:64],
            )
        status_changed = self._update_health(results)
        if self.publisher is not None:
            if stored or events:
                self.publisher.notify(urgent=urgent > 0)
            if status_changed:
                self.publisher.request_status()

    def _update_health(self, results: list[tuple[Notification, PipelineResult]]) -> bool:
        changed = False
        for note, result in results:
            if result.device is None:
                continue
            health = self._health.setdefault(note.address, _DeviceHealth())
            if health.last_seen is None:
                changed = True
            health.last_seen = max(health.last_seen or note.received_at, note.received_at)
            if note.rssi is not None:
                health.rssi_dbm = note.rssi
            for draft in result.drafts:
                if draft.metric is Metric.BATTERY:
                    changed = changed or health.battery_pct != draft.value
                    health.battery_pct = draft.value
        return changed

    def _dead_letter_event(self, letter: DeadLetter) -> GatewayEvent:
        return GatewayEvent(
            site_id=self.settings.site_id,
            gateway_id=self.settings.gateway_id,
            at=letter.received_at,
            kind="dead_letter",
            device_id=letter.device_id,
            message=letter.reason,
            raw_hex=letter.raw_hex,
            detail={"address": letter.address, "source": letter.source, **letter.detail},
        )

    def status(self) -> GatewayStatus:
        """The gateway's status message (called by the publisher thread; reads its own outbox connection)."""
        now = self.clock()
        stats = self.publisher.outbox.stats() if self.publisher is not None else None
        devices = []
        for device in self.registry:
            health = self._health.get(device.address, _DeviceHealth())
            devices.append(
                DeviceStatus(
                    device_id=device.device_id,
                    battery_pct=health.battery_pct,
                    rssi_dbm=health.rssi_dbm,
                    last_seen=health.last_seen,
                    connected=health.connected,
                )
            )
        return GatewayStatus(
            site_id=self.settings.site_id,
            gateway_id=self.settings.gateway_id,
            state="online",
            at=now,
            uptime_s=(now - self._started_at).total_seconds() if self._started_at else None,
            outbox_depth=stats.depth if stats else None,
            outbox_bytes=stats.used_bytes if stats else None,
            outbox_budget_pct=stats.budget_pct if stats else None,
            oldest_unsent=stats.oldest_unsent if stats else None,
            last_seq=stats.last_seq if stats else None,
            devices=devices,
        )

    # --------------------------------------------------------------------------------------------------------
    # transport and registry
    # --------------------------------------------------------------------------------------------------------
    def _start_transport(self) -> None:
        self._transport_task = asyncio.create_task(self._run_transport(self.registry), name="transport")

    async def _stop_transport(self) -> None:
        task = self._transport_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run_transport(self, registry: DeviceRegistry) -> None:
        """Run the transport; if it crashes, log and start it again (a radio hiccup must not stop us)."""
        while True:
            try:
                await self.transport.run(registry, self.deliver, self.on_transport_event)
                log.info("transport_finished")
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("transport_crashed", restart_in_s=TRANSPORT_RESTART_S)
                await asyncio.sleep(TRANSPORT_RESTART_S)

    def _apply_registry(self, registry: DeviceRegistry) -> None:
        self.registry = registry
        self.pipeline.set_registry(registry)
        log.info("registry_applied", devices=len(registry))
        if self._transport_task is not None:
            restart = asyncio.get_running_loop().create_task(self._restart_transport())
            restart.add_done_callback(lambda t: None)
        if self.publisher is not None:
            self.publisher.request_status()

    async def _restart_transport(self) -> None:
        await self._stop_transport()
        if self._stop_event is not None and not self._stop_event.is_set():
            self._start_transport()

    def _load_registry_file(self) -> DeviceRegistry | None:
        path = self._registry_file
        if path is None:
            return None
        try:
            self._registry_mtime = path.stat().st_mtime if path.exists() else None
            return load_registry(path)
        except (OSError, RegistryError) as exc:
            log.error("registry_unreadable", path=str(path), error=str(exc))
            return None

    async def refresh_registry(self) -> bool:
        """Fetch the registry from the API now; save and apply it when it changed. False when the fetch failed:
        the file and the registry in use are kept, so an unreachable API never stops the gateway listening."""
        source, path = self.registry_source, self._registry_file
        if source is None or path is None:
            return False
        try:
            registry, changed = await asyncio.to_thread(refresh_registry_file, source, path)
        except (RegistryError, OSError) as exc:  # unreachable, refused, a bad answer, or the disk
            self._counters.registry_fetch_failures += 1
            log.warning("registry_fetch_failed", error=str(exc), kept=str(path), devices=len(self.registry))
            return False
        self._counters.registry_fetches += 1
        if changed:
            with contextlib.suppress(OSError):
                self._registry_mtime = path.stat().st_mtime  # the file watcher need not re-read our own save
            log.info("registry_fetched", devices=len(registry), saved=str(path), url=source.api_url)
            if len(registry) == 0:
                log.warning("registry_fetched_empty", gateway_id=self.settings.gateway_id, url=source.api_url)
            self._apply_registry(registry)
        return True

    async def _fetch_registry_forever(self) -> None:
        if self.registry_source is None:
            return
        while True:
            await self.refresh_registry()
            await asyncio.sleep(self.settings.registry_fetch_s)

    async def _watch_registry(self) -> None:
        """Pick up `carewatch pair` edits to the registry file without a restart."""
        path = self._registry_file
        if path is None:
            return
        while True:
            await asyncio.sleep(REGISTRY_POLL_S)
            with contextlib.suppress(OSError):
                mtime = path.stat().st_mtime if path.exists() else None
                if mtime != self._registry_mtime:
                    registry = self._load_registry_file()
                    if registry is not None:  # a broken file keeps the registry we have
                        self._apply_registry(registry)


def _as_dead(results: list[tuple[Notification, PipelineResult]]) -> list[DeadLetter]:
    """Every notification that produced readings, as a dead letter (reason filled in by the caller)."""
    return [
        DeadLetter(
            address=note.address,
            source=note.source,
            raw_hex=note.data.hex(),
            reason="",
            received_at=note.received_at,
            device_id=result.device.device_id if result.device else None,
        )
        for note, result in results
        if result.drafts
    ]


async def run_gateway(
    settings: Settings,
    transport: Transport,
    *,
    clock: Clock | None = None,
    stop_event: asyncio.Event | None = None,
    registry: DeviceRegistry | None = None,
    status_interval_s: float = 30.0,
) -> GatewayCounters:
    """Run a gateway in the current event loop until ``stop_event`` is set; returns its final counters."""
    gateway = Gateway(
        settings, transport, registry=registry, clock=clock, status_interval_s=status_interval_s
    )
    await gateway.run(stop_event)
    return gateway.counters


def radio_transport(settings: Settings, *, clock: Clock | None = None) -> Transport:
    """The Bluetooth transport ``settings.ble_backend`` names: bleak on BlueZ (default), or Bumble over
    ``settings.bumble_transport`` (a USB dongle, or the virtual radio) with its bonds in ``bumble_keystore_file``."""
    if settings.ble_backend == "bumble":
        from carewatch.gateway.bumble_ble import BumbleTransport

        return BumbleTransport(settings.bumble_transport, keystore=settings.bumble_keystore_file,
                               clock=clock or system_clock)
    from carewatch.gateway.ble import BleakTransport

    return BleakTransport(clock=clock or system_clock)


def main(
    settings: Settings, *, simulate: bool = False, transport_factory: Callable[[], Transport] | None = None
) -> None:
    """``carewatch gateway``: run until SIGINT/SIGTERM with the BLE radio (or the simulator's transport)."""
    try:
        RegistrySource.from_settings(settings)  # a registry URL without the account to use it: say so, and stop
    except RegistryError as exc:
        raise SystemExit(f"error: {exc}") from None
    if transport_factory is not None:
        transport = transport_factory()
    elif simulate:
        # The simulator owns its gateways (firmware_sim.fleet.SimFleet builds them with a SimTransport and
        # a simulated clock); the CLI should route --simulate there or pass transport_factory.
        raise SystemExit(
            "--simulate: run the simulator (`carewatch sim --output ble`), which starts its gateways"
        )
    else:
        transport = radio_transport(settings)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_gateway(settings, transport, stop_event=stop)

    asyncio.run(_main())
