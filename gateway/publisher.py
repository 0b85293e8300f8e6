"""Drain the outbox to the broker: QoS 1 batches in sequence order, marked sent only after PUBACK.

Threads, not asyncio: paho runs its network loop in its own thread (``loop_start``), and one drain thread
reads the outbox, publishes within a bounded in-flight window and marks sent what the broker acknowledged.
Nothing here ever blocks the BLE side: the ingest path only writes the outbox and calls :meth:`notify`.

Delivery is at-least-once. An unacknowledged batch stays in paho's session and is re-sent on reconnect
(``clean_session=False``, client id = gateway id); if the process dies, the restarted publisher starts again
from the oldest unsent row in the outbox. Ingest de-duplicates by (gateway_id, seq).

Order across a reconnect: paho calls ``on_connect`` first and re-sends its unacknowledged messages only after
that returns, so a batch published as soon as we hear "connected" could overtake the one that was in flight
when the link failed. After a reconnect no readings batch goes out until every batch from an earlier
connection has been acknowledged (one round trip, once per reconnect); the window is pipelined as usual
otherwise. ``_session`` makes the check and the publish one step against ``on_connect``/``on_disconnect``.

Gap recovery: a PUBACK only says the broker took the message, not that ingest got it (Mosquitto 2.0 drops
what arrives for a shared subscription it has not restored after a restart). Ingest asks for the sequence
numbers it never stored with a :class:`~carewatch.wire.ResendRequest` on this gateway's ``resend`` topic (we
subscribe to it, QoS 1, in our persistent session); the drain thread re-publishes the rows the outbox still
keeps (sent rows stay for the replay window) through the same batches and window, with their original seq, and
reports what it no longer has as a ``replay_unavailable`` event. New readings go first; replays fill the
window when nothing new is waiting.

Why a window: paho accepts any number of publishes and queues them itself; with 100k queued QoS 1 messages
its bookkeeping collapsed to ~68 msg/s. We hand it at most ``inflight`` reading batches at a time.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import structlog
from pydantic import ValidationError

from carewatch.gateway.outbox import Outbox, OutboxRow
from carewatch.gateway.transport import Clock, system_clock
from carewatch.mqtt import MqttTarget, describe_connect_error, make_client
from carewatch.wire import (
    Channel,
    GatewayEvent,
    GatewayStatus,
    Reading,
    ResendRequest,
    SeqRun,
    encode_batch,
    explain,
    merge_runs,
    run_length,
    runs_from_seqs,
    subtract_runs,
    topic,
)

log = structlog.get_logger("carewatch.gateway.publisher")


def encode_rows(site_id: str, gateway_id: str, rows: list[OutboxRow], sent_at: datetime) -> bytes:
    """The readings message for ``rows``: byte-for-byte what ``wire.encode_batch`` gives for these readings.

    The outbox keeps each reading as the wire JSON it was validated into, so a batch is the envelope that
    ``encode_batch`` builds around the first reading, with every row's JSON spliced in. That skips
    re-parsing 200 readings per message (the drain rate is mostly this), and stays tied to the contract:
    any field added to the envelope appears here by itself. Falls back to the full encoder if the stored
    JSON ever differs from what the model would write.
    """
    first = Reading.model_validate_json(rows[0].payload)
    doc = encode_batch(site_id, gateway_id, [first], sent_at)
    at = doc.rfind(rows[0].payload)
    if at < 0:  # pragma: no cover - only if the wire serialisation changed under stored rows
        return encode_batch(
            site_id, gateway_id, [Reading.model_validate_json(r.payload) for r in rows], sent_at
        )
    return doc[:at] + b",".join(r.payload for r in rows) + doc[at + len(rows[0].payload) :]


#: Unavailable ranges named in one replay_unavailable event at most (the count is always complete).
MAX_REPORTED_RANGES = 1000
PRUNE_EVERY_S = 60.0  # how often an idle publisher drops sent rows past the replay window


@dataclass
class _Pending:
    kind: Literal["readings", "replay", "event", "status"]
    first: int = 0
    last: int = 0
    count: int = 0
    connection: int = 0  # which connection it was published on (a batch from an earlier one is being re-sent)


@dataclass
class PublisherCounters:
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0  # TCP/TLS failures and CONNACK refusals (each retry counts)
    batches_sent: int = 0
    readings_sent: int = 0  # handed to paho (re-sends after a restart count again)
    batches_acked: int = 0
    readings_acked: int = 0
    events_sent: int = 0
    events_acked: int = 0
    status_sent: int = 0
    resend_requests: int = 0  # ResendRequests accepted
    resend_refused: int = 0  # malformed, or addressed to another gateway: logged and ignored
    readings_replayed: int = 0  # kept readings published again on request (with their original seq)
    replays_acked: int = 0  # of those, acknowledged by the broker
    replay_unavailable: int = 0  # requested seqs the outbox no longer had (reported as an event)
    extra: dict[str, Any] = field(default_factory=dict)


class Publisher:
    """Own the MQTT session of one gateway and drain its outbox into it."""

    def __init__(
        self,
        outbox: Outbox,
        target: MqttTarget,
        *,
        site_id: str,
        gateway_id: str,
        ca_file: Path | None = None,
        batch_size: int = 200,
        batch_ms: int = 250,
        inflight: int = 32,
        status: Callable[[], GatewayStatus] | None = None,
        status_interval_s: float = 30.0,
        clock: Clock = system_clock,
        keepalive: int = 30,
        reconnect_max_s: int = 60,
    ) -> None:
        self.outbox = outbox
        self.target = target
        self.site_id = site_id
        self.gateway_id = gateway_id
        self.batch_size = max(1, min(batch_size, 1000))
        self.batch_s = batch_ms / 1000
        self.inflight = max(1, inflight)
        self.status_interval_s = status_interval_s
        self.clock = clock
        self._status = status or self._bare_status
        self.topics = {channel: topic(site_id, gateway_id, channel) for channel in Channel}
        self.counters = PublisherCounters()

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flushing = False
        self._connected = threading.Event()
        #: Held while (dis)connecting and while a readings batch is checked and handed to paho: nothing newer
        #: can be published between paho saying "connected" and paho re-sending its unacknowledged messages.
        self._session = threading.Lock()
        self._connection = 0  # connections made so far (changed under _session)
        self._held_on = 0  # the connection whose hold for re-sends was last logged (drain thread)
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._resend_inbox: queue.SimpleQueue[ResendRequest] = queue.SimpleQueue()
        self._replay_plan: list[SeqRun] = []  # kept seqs still to re-publish (drain thread only)
        self._next_prune = 0.0
        self._pending: dict[int, _Pending] = {}
        self._cursor = 0
        self._event_cursor = 0
        self._partial_since: float | None = None
        self._status_due = True
        self._next_status = 0.0
        self._thread: threading.Thread | None = None
        self._uplink = True
        self.ca_file = ca_file
        #: Why the last connection attempt failed, in words (None once connected): TLS trust, credentials, ...
        self.last_connect_error: str | None = None
        self._refused_at_connack = False
        self.connected_at: datetime | None = None  # when the current (or last attempted) connection opened

        # the last will is set per attempt in _on_pre_connect (it carries the time the connection opened)
        self.client = make_client(target, client_id=gateway_id, ca_file=ca_file, clean_session=False,
                                  reconnect=(1, reconnect_max_s),
                                  max_inflight=self.inflight + 16)  # our window, plus events and status
        self.client.max_queued_messages_set(0)
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._keepalive = keepalive

    # --------------------------------------------------------------------------------------------------------
    # life cycle
    # --------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect_async(self.target.host, self.target.port, keepalive=self._keepalive)
        self.client.loop_start()
        self._thread = threading.Thread(
            target=self._drain_forever, name=f"publisher-{self.gateway_id}", daemon=True
        )
        self._thread.start()
        log.info("publisher_started", broker=repr(self.target), gateway_id=self.gateway_id)

    def stop(self, flush_timeout: float = 5.0) -> bool:
        """Send what can be sent within ``flush_timeout`` (when connected), mark the gateway offline, close.

        Returns True when nothing was left unacknowledged. Whatever is left stays in the outbox for next time.
        """
        self._flushing = True
        self._wake.set()
        drained = self.wait_drained(flush_timeout) if self.connected else False
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.connected:
            offline = self._status().model_copy(
                update={"state": "offline", "at": self.clock(), "connected_at": self.connected_at}
            )
            info = self.client.publish(
                self.topics[Channel.STATUS], offline.model_dump_json(), qos=1, retain=True
            )
            with contextlib.suppress(Exception):
                info.wait_for_publish(timeout=2)
        self._process_acks()
        self.client.disconnect()
        self.client.loop_stop()
        log.info("publisher_stopped", drained=drained, **self._counter_fields())
        return drained

    def set_uplink(self, up: bool) -> None:
        """Simulate losing (False) and regaining (True) the network, for the simulator and fault drills.

        Down: the connection is dropped without a DISCONNECT, so the broker publishes the last will as it
        would for a real outage, and nothing reconnects. Up: reconnect (with the usual retries); batches that
        were in flight are re-sent from paho's session, the rest is drained from the outbox.
        """
        if up == self._uplink:
            return
        self._uplink = up
        if not up:
            self.client.loop_stop()
            with self._session:
                self._connected.clear()
            sock = self.client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            log.warning("uplink_down_simulated", in_flight=len(self._pending))
        else:
            with contextlib.suppress(OSError, ConnectionError):
                self.client.reconnect()
            self.client.loop_start()
            log.info("uplink_up_simulated")
        self._wake.set()

    def notify(self, *, urgent: bool = False) -> None:
        """New rows are in the outbox (urgent ones go out without waiting for a full batch)."""
        if urgent:
            self._partial_since = float("-inf")
        self._wake.set()

    def request_status(self) -> None:
        self._status_due = True
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def in_flight(self) -> int:
        return len(self._pending)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every stored reading, event and requested replay has been acknowledged (True) or
        ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (not self._pending and not self._replay_plan and self._resend_inbox.empty()
                    and not self.outbox.peek_rows(1) and not self.outbox.peek_events(1)):
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    # --------------------------------------------------------------------------------------------------------
    # paho callbacks (network thread): record and wake, nothing else
    # --------------------------------------------------------------------------------------------------------
    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        """Before every connection attempt: register a last will that is true whenever the broker sends it."""
        self.connected_at = self.clock()
        will = self.last_will(self.connected_at)
        client.will_set(self.topics[Channel.STATUS], will.model_dump_json(), qos=1, retain=True)

    def last_will(self, connected_at: datetime) -> GatewayStatus:
        """``offline``, written at ``connected_at``, and nothing else: a snapshot (uptime, outbox depth, devices)
        taken now would be stale by the time the broker publishes the will, hours or days later."""
        return GatewayStatus(site_id=self.site_id, gateway_id=self.gateway_id, state="offline", at=connected_at,
                             connected_at=connected_at)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._refused_at_connack = True
            self._connect_failed(f"the broker refused the connection: {reason_code} (check the gateway's MQTT "
                                 "username/password in CAREWATCH_MQTT_URL and the broker's ACL)")
            return
        self.last_connect_error = None
        self.counters.connects += 1
        # Our own resend topic, every time: the session keeps it, but a broker that lost its state has not.
        client.subscribe(self.topics[Channel.RESEND], qos=1)
        with self._session:
            self._connection += 1
            self._connected.set()
        self._status_due = True
        self._wake.set()
        log.info("mqtt_connected", session_present=getattr(flags, "session_present", None))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError`, so the exception is still at hand
        exc = sys.exc_info()[1]
        self._connect_failed(self.describe_connect_error(exc) if exc is not None else "connection failed")

    def describe_connect_error(self, exc: BaseException) -> str:
        """Why a TCP/TLS connection attempt failed, saying what to check."""
        return describe_connect_error(self.target, exc, self.ca_file)

    def _connect_failed(self, message: str) -> None:
        self.counters.connect_failures += 1
        if message != self.last_connect_error:  # say it once per kind of failure, not on every retry
            log.error("mqtt_connect_failed", broker=repr(self.target), error=message)
        self.last_connect_error = message

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if self._connected.is_set():
            self.counters.disconnects += 1
            say = log.info if self._stopping.is_set() else log.warning
            say("mqtt_disconnected", reason=str(reason_code), in_flight=len(self._pending))
        elif self._refused_at_connack:
            self._refused_at_connack = False  # already explained by _on_connect
        elif not self._stopping.is_set():
            self._connect_failed(
                f"{self.target.host}:{self.target.port} closed the connection before accepting it ({reason_code}): "
                "a TLS-only listener reached with mqtt:// (use mqtts://), or a broker dropping this client"
            )
        with self._session:
            self._connected.clear()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        if any(getattr(rc, "is_failure", False) for rc in reason_codes):
            log.error("resend_subscribe_refused", topic=self.topics[Channel.RESEND],
                      reason="the broker's ACL must let this gateway read its own resend topic (gateway_acl): "
                             "until then ingest cannot ask for gaps to be filled; readings still go out")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """A resend request (network thread): validate and hand it to the drain thread. Never raises."""
        try:
            if msg.topic != self.topics[Channel.RESEND]:
                return
            try:
                request = ResendRequest.model_validate_json(msg.payload)
            except ValidationError as exc:
                self._refuse_resend(f"not a valid resend request: {explain(exc)}")
                return
            if (request.site_id, request.gateway_id) != (self.site_id, self.gateway_id):
                self._refuse_resend(f"addressed to {request.site_id}/{request.gateway_id}, not to this gateway")
                return
            self._resend_inbox.put(request)
            self._wake.set()
        except Exception:  # a bad request must never take the network thread down
            log.exception("resend_request_failed")

    def _refuse_resend(self, reason: str) -> None:
        self.counters.resend_refused += 1
        log.warning("resend_request_refused", reason=reason[:500])

    # --------------------------------------------------------------------------------------------------------
    # the drain thread
    # --------------------------------------------------------------------------------------------------------
    def _drain_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                timeout = self._drain_once()
            except Exception:  # never let the drain thread die: log, back off, retry
                log.exception("publisher_drain_error")
                timeout = 1.0
            if timeout > 0:
                self._wake.wait(timeout)
            self._wake.clear()

    def _drain_once(self) -> float:
        """One pass: apply acks, publish what the window allows. Returns how long to sleep (0: go again)."""
        self._process_acks()
        self._take_resend_requests()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            self.outbox.prune_sent()
        if not self.connected:
            return 1.0
        now = time.monotonic()
        if self._status_due or now >= self._next_status:
            self._publish_status()
            self._next_status = now + self.status_interval_s
        self._publish_events()
        sleep = min(1.0, max(0.0, self._next_status - now))
        while len(self._pending) < self.inflight + 8 and self._readings_in_flight() < self.inflight:
            if self._awaiting_resends():
                return sleep  # their PUBACKs wake us
            wait = self._publish_readings()
            if wait is None:
                continue  # sent one: try to fill the window
            if self._publish_replay():
                continue  # nothing new is ready: a requested replay used the room
            return min(sleep, wait)
        return sleep

    def _readings_in_flight(self) -> int:
        return sum(1 for p in self._pending.values() if p.kind in ("readings", "replay"))

    def _awaiting_resends(self) -> bool:
        """Whether a readings batch from an earlier connection is still unacknowledged (paho re-sends it; nothing
        newer may go before it). Logged once per connection."""
        older = sum(1 for p in self._pending.values()
                    if p.kind in ("readings", "replay") and p.connection < self._connection)
        if older and self._held_on != self._connection:
            self._held_on = self._connection
            log.info("publish_held_for_resend", batches=older)
        return older > 0

    def _publish_batch(self, rows: list[OutboxRow], kind: Literal["readings", "replay"]) -> bool:
        """Hand one readings message to paho, unless the connection is down or a batch from an earlier connection
        is still to be acknowledged (then False: the caller tries again when woken)."""
        payload = encode_rows(self.site_id, self.gateway_id, rows, self.clock())
        with self._session:
            if not self._connected.is_set() or self._awaiting_resends():
                return False
            info = self.client.publish(self.topics[Channel.READINGS], payload, qos=1)
            self._pending[info.mid] = _Pending(kind, rows[0].seq, rows[-1].seq, len(rows), self._connection)
        return True

    def _take_resend_requests(self) -> None:
        """Turn received resend requests into the replay plan; report what the outbox no longer has."""
        while True:
            try:
                request = self._resend_inbox.get_nowait()
            except queue.Empty:
                return
            self.counters.resend_requests += 1
            kept = self.outbox.kept_runs(request.ranges)
            gone = subtract_runs(request.ranges, kept)
            self._replay_plan = merge_runs(self._replay_plan, kept)
            log.info("resend_requested", ranges=len(request.ranges), asked=run_length(request.ranges),
                     kept=run_length(kept), unavailable=run_length(gone))
            if gone:
                self._report_unavailable(request, gone)

    def _report_unavailable(self, request: ResendRequest, gone: list[SeqRun]) -> None:
        count = run_length(gone)
        self.counters.replay_unavailable += count
        shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in gone[:5]) + (", ..." if len(gone) > 5 else "")
        message = (f"asked to resend {count} readings this gateway no longer keeps (seq {shown}): acknowledged "
                   f"longer ago than the replay window ({self.outbox.replay_retention_s:g} s), pruned early for "
                   "disk room, or evicted by the disk budget")
        log.warning("replay_unavailable", readings=count, ranges=gone[:20])
        self.outbox.add_events([GatewayEvent(
            site_id=self.site_id, gateway_id=self.gateway_id, at=self.clock(), kind="replay_unavailable",
            message=message,
            detail={"ranges": [list(r) for r in gone[:MAX_REPORTED_RANGES]], "readings": count,
                    "requested_at": request.requested_at.isoformat(),
                    "replay_retention_s": self.outbox.replay_retention_s},
        )])

    def _publish_replay(self) -> bool:
        """Publish one batch of requested, still kept, sent readings (original seqs, in order). False if none."""
        rows: list[OutboxRow] = []
        while self._replay_plan and len(rows) < self.batch_size:
            first, last = self._replay_plan[0]
            want = self.batch_size - len(rows)
            got = self.outbox.sent_rows(first, last, want)
            rows.extend(got)
            if len(got) < want or got[-1].seq >= last:
                self._replay_plan.pop(0)  # this range is done (rows pruned meanwhile are simply not there)
            else:
                self._replay_plan[0] = (got[-1].seq + 1, last)
        if not rows:
            return False
        if not self._publish_batch(rows, "replay"):
            self._replay_plan = merge_runs(runs_from_seqs(r.seq for r in rows), self._replay_plan)  # next time
            return False
        self.counters.readings_replayed += len(rows)
        return True

    def _publish_readings(self) -> float | None:
        """Publish one batch if one is ready: None when sent, else seconds until one may be ready."""
        rows = self.outbox.peek_rows(self.batch_size, after_seq=self._cursor)
        if not rows:
            self._partial_since = None
            return 1.0
        now = time.monotonic()
        if len(rows) < self.batch_size and not self._flushing and not any(r.urgent for r in rows):
            if self._partial_since is None:
                self._partial_since = now
            remaining = self._partial_since + self.batch_s - now
            if remaining > 0:
                return remaining
        if not self._publish_batch(rows, "readings"):
            return 1.0  # the link went down, or re-sends are due: a (re)connect or their PUBACKs wake us
        self._cursor = rows[-1].seq
        self._partial_since = None
        self.counters.batches_sent += 1
        self.counters.readings_sent += len(rows)
        return None

    def _publish_events(self) -> None:
        room = max(0, 8 - sum(1 for p in self._pending.values() if p.kind == "event"))
        if not room:
            return
        for row in self.outbox.peek_events(room, after_id=self._event_cursor):
            info = self.client.publish(self.topics[Channel.EVENTS], row.payload, qos=1)
            self._pending[info.mid] = _Pending("event", row.id, row.id, 1)
            self._event_cursor = row.id
            self.counters.events_sent += 1

    def _publish_status(self) -> None:
        self._status_due = False
        status = self._status().model_copy(update={"state": "online", "connected_at": self.connected_at})
        info = self.client.publish(self.topics[Channel.STATUS], status.model_dump_json(), qos=1, retain=True)
        self._pending[info.mid] = _Pending("status")
        self.counters.status_sent += 1

    def _process_acks(self) -> None:
        acked: list[int] = []
        while True:
            try:
                acked.append(self._acks.get_nowait())
            except queue.Empty:
                break
        if not acked:
            return
        seqs: list[int] = []
        event_ids: list[int] = []
        for mid in acked:
            pending = self._pending.pop(mid, None)
            if pending is None:
                # Not ours to settle (the offline status sent while stopping). A PUBACK cannot overtake our
                # bookkeeping: the mid is registered in this thread before this thread reads the ack queue.
                continue
            if pending.kind == "readings":
                seqs.extend(range(pending.first, pending.last + 1))
                self.counters.batches_acked += 1
                self.counters.readings_acked += pending.count
            elif pending.kind == "replay":
                self.counters.replays_acked += pending.count  # already marked sent: nothing to change
            elif pending.kind == "event":
                event_ids.append(pending.first)
                self.counters.events_acked += 1
        if seqs:
            self.outbox.mark_sent(seqs)
        if event_ids:
            self.outbox.delete_events(event_ids)

    # --------------------------------------------------------------------------------------------------------
    def _bare_status(self) -> GatewayStatus:
        return GatewayStatus(
            site_id=self.site_id, gateway_id=self.gateway_id, state="online", at=self.clock()
        )

    def _counter_fields(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self.counters).items() if k != "extra"}
