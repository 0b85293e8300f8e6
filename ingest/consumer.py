"""The MQTT side of ingest: receive, batch, commit, then acknowledge.

Threads and flow::

    paho network thread --on_message--> bounded queue --> writer thread --store_batch--> PostgreSQL
                        <------------------- client.ack(mid) after commit ----------------'

* Persistent session (clean_session=False, stable client id) and QoS 1 with ``manual_ack=True``: a message is
  acknowledged only after the transaction holding it has committed. A worker killed at any point loses nothing:
  the broker re-delivers what was not acknowledged, and :func:`store_batch` drops what was already stored.
* Backpressure: when the queue is full, ``on_message`` blocks the paho network thread, so the client stops
  reading its socket; TCP flow control then holds the broker, which keeps queueing for our persistent session.
  The broker's in-flight window (Mosquitto ``max_inflight_messages``) bounds unacknowledged messages too. If the
  writer stalls longer than 1.5 x keepalive the broker drops the connection; nothing is lost (see above).
* Acknowledgements carry the connection generation: a message received on an earlier connection is not acked on
  the new one (its packet id means something else there); the broker re-delivers it and it counts as a duplicate.
* Batches close at ``batch_size`` readings, after ``batch_ms``, or when the queue stays empty for
  ``idle_close_ms`` (the broker has nothing more for us, or its in-flight window is full and waits for acks).
* Gap recovery: every ``ingest_resend_after_s`` the writer thread looks for sequence gaps older than the grace
  period and publishes resend requests to the gateways concerned (:mod:`carewatch.ingest.recovery`); the
  replayed readings come back on the readings topic like any others.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import psycopg
import structlog
from psycopg_pool import ConnectionPool, PoolTimeout

from carewatch.ingest import metrics
from carewatch.ingest.recovery import HoleAges, ResendPolicy, plan_resends
from carewatch.ingest.store import (
    BatchResult,
    DirectoryCache,
    apply_retention,
    ensure_partitions,
    store_batch,
)
from carewatch.ingest.validate import (
    DeadLetter,
    EventRecord,
    ReadingsMessage,
    ReasonClass,
    StatusUpdate,
    classify_event,
    classify_status,
    raw_text,
)
from carewatch.mqtt import make_client
from carewatch.settings import Settings
from carewatch.wire import Channel, parse_topic, run_length, topic, topic_filter

log = structlog.get_logger("carewatch.ingest")

SHARE_GROUP = "ingest"
CHANNELS = (Channel.READINGS, Channel.STATUS, Channel.EVENTS)


@dataclass(frozen=True)
class Inbound:
    """One MQTT message waiting in the queue."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    generation: int
    received_at: datetime


@dataclass
class WorkerCounters:
    """Totals since start (committed batches only)."""

    received: int = 0  # messages taken off the socket (committed or not)
    messages: int = 0
    readings_in: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    acked: int = 0
    db_errors: int = 0
    resend_requests: int = 0  # resend requests published to gateways
    resend_readings: int = 0  # readings asked for in them
    missing_seqs: dict[str, int] = field(default_factory=dict)


def default_client_id(worker_id: str) -> str:
    return f"ingest-{socket.gethostname()}-{worker_id}"


def broker_delivers_shared(settings: Settings, timeout: float = 3.0) -> bool | None:
    """Does the broker deliver through ``$share/...`` subscriptions? None when it cannot be reached.

    amqtt grants a ``$share`` subscription but never delivers on it, so the SUBACK proves nothing: we subscribe
    with a throw-away clean session to a private probe topic (outside ``carewatch/v1``) and see if a message
    published there comes back.
    """
    target = settings.mqtt
    probe = f"carewatch-probe/{uuid.uuid4().hex}"
    arrived = threading.Event()
    subscribed = threading.Event()
    client = make_client(target, client_id=f"probe-{uuid.uuid4().hex[:12]}", ca_file=settings.mqtt_ca_file)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda *_: arrived.set()
    try:
        client.connect(target.host, target.port, keepalive=10)
    except OSError:
        return None
    client.loop_start()
    try:
        client.subscribe(f"$share/probe/{probe}", qos=1)
        if not subscribed.wait(timeout):
            return None
        client.publish(probe, b"probe", qos=1)
        return arrived.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()


class IngestWorker:
    """One ingest worker: an MQTT client, a bounded queue and a writer thread with a connection pool."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str = "1",
        shared: bool | None = None,
        share_group: str = SHARE_GROUP,
        client_id: str | None = None,
        batch_size: int | None = None,
        batch_ms: int | None = None,
        idle_close_ms: int = 25,
        queue_size: int = 1000,
        keepalive: int = 30,
        directory_max_age_s: float = 30.0,
        maintenance_interval_s: float = 24 * 3600.0,
        resend: bool = True,
    ) -> None:
        """``resend``: ask gateways to fill sequence gaps (settings ``ingest_resend_*``); off only for tests that
        need a gap to stay open."""
        self.settings = settings
        self.worker_id = worker_id
        self.shared_pref = shared if shared is not None else settings.ingest_shared
        self.share_group = share_group
        self.client_id = client_id or default_client_id(worker_id)
        self.batch_size = batch_size or settings.ingest_batch_size
        self.batch_s = (batch_ms or settings.ingest_batch_ms) / 1000
        self.idle_close_s = idle_close_ms / 1000
        self.keepalive = keepalive
        self.maintenance_interval_s = maintenance_interval_s
        self.directory = DirectoryCache(max_age_s=directory_max_age_s)
        self.connected = threading.Event()
        self.subscribed = threading.Event()

        self._queue: queue.Queue[Inbound] = queue.Queue(maxsize=queue_size)
        self._in_hand: list[Inbound] = []  # the batch the writer is committing (not in the queue any more)
        # Read at scrape time, so they keep moving while the writer is stuck retrying a commit.
        metrics.QUEUE_DEPTH.labels(worker_id).set_function(self.pending_messages)
        metrics.OLDEST_PENDING.labels(worker_id).set_function(self.oldest_pending_seconds)
        self._stopping = threading.Event()
        self._abandon = threading.Event()  # stop retrying a failing commit (shutdown deadline passed)
        self._ack_lock = threading.Lock()
        self._generation = 0
        self._use_shared = self.shared_pref is not False
        self._counters = WorkerCounters()
        self._counters_lock = threading.Lock()
        self._next_maintenance = 0.0
        self.resend = resend
        self.resend_policy = ResendPolicy(grace_s=settings.ingest_resend_grace_s,
                                          interval_s=settings.ingest_resend_interval_s)
        self._hole_ages = HoleAges()
        self._next_resend = time.monotonic() + settings.ingest_resend_after_s
        self._unrecoverable_logged: set[tuple[str, int, int]] = set()
        self._pool: ConnectionPool | None = None
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None
        self._log = log.bind(worker=worker_id, client_id=self.client_id)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the pool, prepare partitions, start the writer and connect (retrying in the background)."""
        self._pool = ConnectionPool(
            self.settings.dsn, min_size=1, max_size=2, kwargs={"autocommit": True},
            check=ConnectionPool.check_connection, open=False, name=f"ingest-{self.worker_id}",
            reconnect_timeout=0,  # keep trying for ever: the database may be down for a while
        )
        self._pool.open(wait=False)
        self._writer = threading.Thread(target=self._run_writer, name=f"ingest-writer-{self.worker_id}", daemon=True)
        self._writer.start()
        if self.shared_pref is None and broker_delivers_shared(self.settings) is False:
            self._log.warning("broker_ignores_shared_subscriptions_using_plain")  # amqtt: run one worker only
            self._use_shared = False
        self._client = self._make_client()
        target = self.settings.mqtt
        self._client.connect_async(target.host, target.port, keepalive=self.keepalive)
        self._client.loop_start()
        self._log.info("ingest_started", broker=repr(target), shared=self.shared_pref,
                       batch_size=self.batch_size, batch_ms=int(self.batch_s * 1000))

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: take no new messages, commit what was received, acknowledge it, then disconnect."""
        self._stopping.set()
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():  # the database is unreachable: leave the rest to re-delivery
                self._abandon.set()
                self._writer.join(10)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.disconnect()
            self._client.loop_stop()
        if self._pool is not None:
            self._pool.close(timeout=5)
        self._log.info("ingest_stopped", **self.counters.__dict__)

    def __enter__(self) -> IngestWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def counters(self) -> WorkerCounters:
        with self._counters_lock:
            return WorkerCounters(**{**asdict(self._counters), "missing_seqs": dict(self._counters.missing_seqs)})

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def wait_until(self, predicate: Callable[[WorkerCounters], object], timeout: float = 30.0) -> bool:
        """Poll ``predicate(counters)`` until true or timeout (tests, demo)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.counters):
                return True
            time.sleep(0.05)
        return False

    # -- MQTT ---------------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        client = make_client(self.settings.mqtt, client_id=self.client_id, ca_file=self.settings.mqtt_ca_file,
                             clean_session=False, manual_ack=True,
                             reconnect=(0.25, 5))  # re-subscribe soon after a broker restart
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _filters(self) -> list[str]:
        group = self.share_group if self._use_shared else None
        return [topic_filter(channel, share_group=group) for channel in CHANNELS]

    def _on_connect(self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: mqtt.ReasonCode, _properties: object) -> None:
        if reason_code.is_failure:
            self._log.warning("mqtt_connect_refused", reason=str(reason_code))
            return
        with self._ack_lock:
            self._generation += 1
        # Subscribing again is harmless with a persistent session and needed after the broker lost its state.
        client.subscribe([(f, 1) for f in self._filters()])
        self.connected.set()
        self._log.info("mqtt_connected", session_present=flags.session_present, generation=self._generation)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object,
                       reason_code: mqtt.ReasonCode, _properties: object) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            self._log.warning("mqtt_disconnected", reason=str(reason_code))

    def _on_subscribe(self, client: mqtt.Client, _userdata: object, _mid: int,
                      reason_codes: list[mqtt.ReasonCode], _properties: object) -> None:
        if any(rc.is_failure for rc in reason_codes):
            if self._use_shared and self.shared_pref is None:
                self._log.warning("shared_subscription_refused_falling_back_to_plain")
                self._use_shared = False
                client.subscribe([(f, 1) for f in self._filters()])
                return
            self._log.error("mqtt_subscribe_refused", filters=self._filters())
            return
        self.subscribed.set()
        self._log.info("mqtt_subscribed", filters=self._filters())

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        """Runs on the paho thread. Blocks while the queue is full: that is the backpressure."""
        if self._stopping.is_set():
            return  # not acknowledged: the broker delivers it again
        item = Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain), self._generation,
                       datetime.now(UTC))
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                with self._counters_lock:
                    self._counters.received += 1
                return
            except queue.Full:
                if self._stopping.is_set():
                    return
                self._log.debug("ingest_queue_full", depth=self._queue.qsize())

    def _ack(self, items: list[Inbound]) -> int:
        acked = 0
        with self._ack_lock:
            client = self._client
            for item in items:
                if item.qos > 0 and item.generation == self._generation and client is not None:
                    client.ack(item.mid, item.qos)
                    acked += 1
        return acked

    # -- consumer lag -------------------------------------------------------------------------------------
    def pending_messages(self) -> int:
        """Messages received but not yet committed: the queue plus the batch in hand."""
        return self._queue.qsize() + len(self._in_hand)

    def oldest_pending_seconds(self) -> float:
        """How long the oldest uncommitted message has waited (0 when none): the consumer's lag behind the broker."""
        in_hand = self._in_hand
        oldest = in_hand[0].received_at if in_hand else None
        if oldest is None:
            with self._queue.mutex:
                oldest = self._queue.queue[0].received_at if self._queue.queue else None
        return max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest is not None else 0.0

    # -- writer -------------------------------------------------------------------------------------------
    def _run_writer(self) -> None:
        while True:
            self._maybe_maintain()
            self._maybe_request_resends()
            items = self._collect()
            if not items:
                if self._stopping.is_set() and self._queue.empty():
                    return
                continue
            self._in_hand = items
            try:
                result = self._commit(items)
            except Exception:  # a bug must not kill the writer silently; nothing is acked, so nothing is lost
                self._log.exception("ingest_batch_crashed_retrying")
                if self._abandon.wait(1.0):
                    return
                self._requeue(items)
                self._in_hand = []
                continue
            if result is None:
                return  # abandoned at shutdown: not acknowledged, so re-delivered later
            acked = self._ack(items)
            self._in_hand = []
            with self._counters_lock:
                self._counters.acked += acked

    def _requeue(self, items: list[Inbound]) -> None:
        """Put a failed batch back at the head of the line (the writer is the only consumer)."""
        with self._queue.mutex:
            self._queue.queue.extendleft(reversed(items))
            self._queue.unfinished_tasks += len(items)
            self._queue.not_empty.notify()

    def _collect(self) -> list[Inbound]:
        """One batch: closes at batch_size readings, after batch_ms, when the queue idles, or at shutdown."""
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        items, readings = [first], _estimate_readings(first)
        deadline = time.monotonic() + self.batch_s
        last_arrival = time.monotonic()
        while readings < self.batch_size:
            now = time.monotonic()
            stopping = self._stopping.is_set()
            if now >= deadline or now - last_arrival >= self.idle_close_s:
                break
            try:
                item = self._queue.get_nowait() if stopping else self._queue.get(
                    timeout=min(deadline - now, self.idle_close_s, 0.1))
            except queue.Empty:
                if stopping:
                    break
                continue
            items.append(item)
            readings += _estimate_readings(item)
            last_arrival = time.monotonic()
        return items

    def _commit(self, items: list[Inbound]) -> BatchResult | None:
        """Write a batch, retrying while the database is unavailable. None when abandoned at shutdown."""
        delay = 0.2
        while True:
            try:
                return self._write(items)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                metrics.DB_ERRORS.labels(self.worker_id).inc()
                with self._counters_lock:
                    self._counters.db_errors += 1
                self._log.warning("ingest_commit_failed_retrying", error=str(exc).strip()[:300], retry_in=delay)
            except psycopg.errors.DeadlockDetected:
                self._log.info("ingest_deadlock_retrying")
                delay = 0.05
            except psycopg.Error as exc:  # the data itself is refused: store message by message
                self._log.error("ingest_batch_refused_storing_one_by_one", error=str(exc).strip()[:300])
                return self._write_one_by_one(items)
            if self._abandon.wait(delay):
                return None
            delay = min(delay * 2, 5.0)

    def _write(self, items: list[Inbound], extra_dead: list[DeadLetter] | None = None) -> BatchResult:
        assert self._pool is not None
        readings: list[ReadingsMessage] = []
        statuses: list[StatusUpdate] = []
        events: list[EventRecord] = []
        dead: list[DeadLetter] = list(extra_dead or [])
        started = time.monotonic()
        with self._pool.connection(timeout=10) as conn:
            directory = None
            for item in items:
                channel = _channel(item.topic)
                if channel is Channel.READINGS:
                    readings.append(ReadingsMessage.from_payload(item.topic, item.payload, item.received_at))
                    continue
                if directory is None:
                    directory = self.directory.get(conn)
                outcome: StatusUpdate | EventRecord | DeadLetter | None
                if channel is Channel.STATUS:
                    outcome = classify_status(item.topic, item.payload, directory, retained=item.retain,
                                              received_at=item.received_at)
                elif channel is Channel.EVENTS:
                    outcome = classify_event(item.topic, item.payload, directory)
                else:
                    outcome = DeadLetter(ReasonClass.BAD_MESSAGE, f"not a carewatch topic: {item.topic!r}",
                                         raw_text(item.payload), topic=item.topic)
                if isinstance(outcome, StatusUpdate):
                    statuses.append(outcome)
                elif isinstance(outcome, EventRecord):
                    events.append(outcome)
                    self._log.info("gateway_event", kind=outcome.event.kind, gateway=outcome.event.gateway_id,
                                   device=outcome.event.device_id, message=outcome.event.message[:200])
                elif isinstance(outcome, DeadLetter):
                    dead.append(outcome)
            result = store_batch(conn, readings, directory=self.directory, statuses=statuses, events=events,
                                 dead_letters=dead)
        elapsed = time.monotonic() - started
        self._account(items, result, elapsed)
        return result

    def _write_one_by_one(self, items: list[Inbound]) -> BatchResult | None:
        total = BatchResult()
        for item in items:
            try:
                total.add(self._write([item]))
            except (psycopg.OperationalError, PoolTimeout):
                return self._commit(items)  # the database went away: retry the whole batch (idempotent)
            except psycopg.Error as exc:
                letter = DeadLetter(ReasonClass.STORE_ERROR, f"the database refused this message: {exc}"[:1000],
                                    raw_text(item.payload), topic=item.topic)
                total.add(self._write([], extra_dead=[letter]))
        return total

    def _account(self, items: list[Inbound], result: BatchResult, elapsed: float) -> None:
        lag = (datetime.now(UTC) - result.max_received_at).total_seconds() if result.max_received_at else None
        metrics.record_batch(self.worker_id, result, elapsed, lag)
        for item in items:
            channel = _channel(item.topic)
            metrics.MESSAGES.labels(self.worker_id, channel.value if channel else "other").inc()
        with self._counters_lock:
            c = self._counters
            c.messages += len(items)
            c.readings_in += result.readings_in
            c.stored += result.stored
            c.duplicates += result.duplicates
            c.dead_letters += result.dead_letters
            c.batches += 1
            c.missing_seqs.update(result.missing_seqs)
        if result.new_gaps:
            self._log.warning("sequence_gap", gaps=result.new_gaps, missing_seqs=result.missing_seqs)
        if result.dead_letters:
            self._log.info("dead_lettered", **dict(result.dead_letters_by_class))
        self._log.debug("batch_committed", messages=len(items), stored=result.stored,
                        duplicates=result.duplicates, seconds=round(elapsed, 4))

    def _maybe_maintain(self) -> None:
        """Partitions ahead and retention behind, at start and then daily."""
        if time.monotonic() < self._next_maintenance or self._pool is None:
            return
        try:
            with self._pool.connection(timeout=5) as conn:
                made = ensure_partitions(conn)
                dropped = apply_retention(conn, self.settings.retention_days)
            self._next_maintenance = time.monotonic() + self.maintenance_interval_s
            self._log.info("partitions_maintained", created=made, dropped=dropped)
        except (psycopg.Error, PoolTimeout) as exc:
            self._next_maintenance = time.monotonic() + 30  # try again soon; ingest goes on meanwhile
            self._log.warning("partition_maintenance_failed", error=str(exc).strip()[:300])


    def _maybe_request_resends(self) -> None:
        """Every ``ingest_resend_after_s``: ask gateways to publish again what we never stored (see recovery)."""
        if not self.resend or time.monotonic() < self._next_resend or self._pool is None:
            return
        self._next_resend = time.monotonic() + self.settings.ingest_resend_after_s
        client = self._client
        if client is None or not self.connected.is_set() or self._stopping.is_set():
            return  # a request could not go out now; try again next time
        try:
            with self._pool.connection(timeout=5) as conn:
                plan = plan_resends(conn, self._hole_ages, self.resend_policy)
        except (psycopg.Error, PoolTimeout) as exc:
            self._log.warning("resend_planning_failed", error=str(exc).strip()[:300])
            return
        for request in plan.requests:
            readings = run_length(request.ranges)
            client.publish(topic(request.site_id, request.gateway_id, Channel.RESEND),
                           request.model_dump_json().encode(), qos=1)
            metrics.RESEND_REQUESTS.labels(self.worker_id).inc()
            metrics.RESEND_READINGS.labels(self.worker_id).inc(readings)
            with self._counters_lock:
                self._counters.resend_requests += 1
                self._counters.resend_readings += readings
            self._log.info("resend_requested", gateway=request.gateway_id, readings=readings,
                           ranges=[list(r) for r in request.ranges[:10]], range_count=len(request.ranges))
        for gateway_id, holes in plan.exhausted.items():
            fresh = [h for h in holes if (gateway_id, *h) not in self._unrecoverable_logged]
            if fresh:
                self._unrecoverable_logged.update((gateway_id, *h) for h in fresh)
                self._log.error("sequence_gap_unrecoverable", gateway=gateway_id, readings=run_length(fresh),
                                ranges=[list(h) for h in fresh[:10]],
                                reason=f"asked {self.resend_policy.max_attempts} times without an answer")


def _channel(topic_name: str) -> Channel | None:
    try:
        return parse_topic(topic_name)[2]
    except ValueError:
        return None


def _estimate_readings(item: Inbound) -> int:
    """Cheap size estimate without parsing: readings are ~200 bytes of JSON each."""
    return max(1, len(item.payload) // 200) if item.topic.endswith("/readings") else 1
