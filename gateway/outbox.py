"""The durable outbox: every accepted reading is on disk, with its sequence number, before anything else.

One SQLite file in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is fsynced, so a
reading the outbox has accepted survives kill -9 *and* a power cut (see docs/gateway.md for the measured cost
and the NORMAL alternative). Sequence numbers come from a counter row updated in the same transaction as the
rows, so they are never reused, even after every row is deleted and the gateway restarts.

``readings`` holds the unsent readings. One the broker has acknowledged is not forgotten but moved to ``sent``
(:meth:`Outbox.mark_sent`) and kept for a replay window (``replay_retention_s``, default 24 h): ingest may find
a gap (a broker that dropped what it had acknowledged, e.g. after a restart) and ask for those sequence numbers
again. Sent rows are pruned when they are older than the window, or earlier when the disk budget needs their
room: they always go before any unsent reading is at risk, and never count towards the 80 % alarm (see
:meth:`Outbox.append`). Unsent readings leave only when acknowledged, or when the disk budget forces it
(oldest home-sensor readings first, counted and alarmed). A separate table, not a flag, so that everything
about unsent readings (depth, oldest unsent, the drain, eviction) reads exactly the rows it did before the
replay window existed, without extra indexes to maintain on every append.

An ``Outbox`` is one connection guarded by a lock, so it may be shared between threads; the gateway opens one
for the ingest side and one for the publisher, and SQLite's WAL lets their reads run beside each other's
writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from carewatch.gateway.pipeline import DeadLetter, ReadingDraft
from carewatch.gateway.transport import Clock, system_clock
from carewatch.wire import METRICS, GatewayEvent, Metric, Reading, SeqRun, merge_runs, runs_from_seqs

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

ALARM_PCT = 80.0  # budget use that raises the first alarm
ALARM_REARM_PCT = 70.0  # fall below this before the 80% alarm can fire again
VITAL_RESERVE = 0.25  # vital signs may use this much beyond the budget once home readings are gone
EVICT_TARGET = 0.95  # evict down to this fraction of the limit, so eviction does not run on every append
EVICT_ALARM_EVERY_S = 60.0  # at most one eviction/refusal alarm per minute (counts are cumulative)
MAX_EVENTS = 10_000  # unsent events kept (dead letters from a flooding device must not fill the disk)
MAX_DEAD_LETTERS = 10_000  # local dead-letter log kept for inspection
SENT_PRUNE_PCT = 60.0  # budget use at which sent rows (kept for replay) start to go, oldest first ...
SENT_PRUNE_TO_PCT = 50.0  # ... until use is below this or none is left: at 80 % every row is unsent
PRUNE_CHUNK = 5000  # sent rows deleted per statement (a large expiry is spread over several transactions)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq         INTEGER PRIMARY KEY,           -- per-gateway sequence number (from counters.last_seq)
    keep        INTEGER NOT NULL,              -- 1: vital sign / call button (evicted last), 0: home sensor
    urgent      INTEGER NOT NULL,              -- 1: flush at once
    received_at TEXT    NOT NULL,
    payload     BLOB    NOT NULL               -- the Reading as wire JSON
);
CREATE TABLE IF NOT EXISTS sent (
    seq      INTEGER PRIMARY KEY,              -- a reading the broker acknowledged, kept for replay
    acked_at REAL    NOT NULL,                 -- gateway clock (epoch s) of its PUBACK
    payload  BLOB    NOT NULL                  -- the Reading as wire JSON, as it was sent
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name  TEXT PRIMARY KEY,                    -- alarm states shared by every connection and every restart
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL                      -- a GatewayEvent as wire JSON, deleted after PUBACK
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    address     TEXT NOT NULL,
    source      TEXT NOT NULL,
    device_id   TEXT,
    reason      TEXT NOT NULL,
    raw_hex     TEXT NOT NULL,
    detail      TEXT NOT NULL
);
"""

#: Durable counters (all survive restarts).
COUNTERS = (
    "last_seq",
    "accepted",
    "evicted_home",
    "evicted_vital",
    "refused_home",
    "dead_letters",
    "events_dropped",
    "pruned_sent",  # sent rows dropped at the end of the replay window
    "pruned_sent_early",  # sent rows dropped before the end of the window to make room (nothing lost)
)


#: Durable alarm state: 1 while the 80 % alarm may fire (reset below ALARM_REARM_PCT), 0 once it has fired.
#: In the file, not in an ``Outbox`` object, so the gateway's two connections and a restarted gateway agree.
ALARM_ARMED = "budget_alarm_armed"


@dataclass(frozen=True)
class OutboxRow:
    """A stored reading as the publisher needs it: no parsing, just the bytes to send."""

    seq: int
    urgent: bool
    payload: bytes


@dataclass(frozen=True)
class EventRow:
    id: int
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # unsent readings
    last_seq: int
    oldest_unsent: datetime | None
    used_bytes: int
    budget_pct: float
    counters: dict[str, int]
    kept_sent: int = 0  # acknowledged readings still kept for replay


def keeps(metric: Metric) -> bool:
    """Readings evicted last when the disk budget is full: vital signs and call-button presses."""
    return METRICS[metric].vital or metric is Metric.BUTTON


class Outbox:
    """Store-and-forward queue of readings and events in one SQLite file."""

    def __init__(
        self,
        path: Path | str,
        *,
        site_id: str,
        gateway_id: str,
        max_bytes: int = 512 * 1024 * 1024,
        synchronous: Synchronous = "FULL",
        clock: Clock = system_clock,
        replay_retention_s: float = 24 * 3600.0,
    ) -> None:
        """``replay_retention_s``: how long an acknowledged reading is kept for replay (0: deleted at once)."""
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.site_id = site_id
        self.gateway_id = gateway_id
        self.max_bytes = max_bytes
        self.clock = clock
        self.replay_retention_s = replay_retention_s
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        with self._tx():
            for statement in _statements(SCHEMA):
                self._db.execute(statement)
            self._db.executemany(
                "INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", [(c,) for c in COUNTERS]
            )
            self._db.execute("INSERT OR IGNORE INTO state(name, value) VALUES (?, 1)", (ALARM_ARMED,))
        self._last_evict_alarm: datetime | None = None
        self._last_evict_level = ""
        self._unreported: dict[str, int] = {}

    # --------------------------------------------------------------------------------------------------------
    # plumbing
    # --------------------------------------------------------------------------------------------------------
    class _Tx:
        def __init__(self, outbox: Outbox) -> None:
            self.outbox = outbox

        def __enter__(self) -> sqlite3.Connection:
            self.outbox._lock.acquire()
            try:
                self.outbox._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.outbox._lock.release()
                raise
            return self.outbox._db

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                self.outbox._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.outbox._lock.release()

    def _tx(self) -> Outbox._Tx:
        return Outbox._Tx(self)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bump(self, db: sqlite3.Connection, name: str, by: int) -> None:
        if by:
            db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    def _set_state(self, db: sqlite3.Connection, name: str, value: int) -> None:
        db.execute("UPDATE state SET value = ? WHERE name = ?", (value, name))

    def alarm_armed(self) -> bool:
        """Whether the 80 % budget alarm would fire now (False from its firing until use falls below 70 %)."""
        return bool(self._read("SELECT value FROM state WHERE name = ?", (ALARM_ARMED,))[0][0])

    def _used(self, db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size

    # --------------------------------------------------------------------------------------------------------
    # writing
    # --------------------------------------------------------------------------------------------------------
    def append(
        self,
        drafts: Iterable[ReadingDraft],
        *,
        dead_letters: Iterable[DeadLetter] = (),
        events: Iterable[GatewayEvent] = (),
    ) -> list[Reading]:
        """Durably store readings (assigning sequence numbers), dead letters and events in one transaction.

        Returns the stored readings. Sent rows kept for replay make room first: from SENT_PRUNE_PCT of the
        budget they are pruned, oldest first, down to SENT_PRUNE_TO_PCT or until none is left, so at the 80 %
        alarm and beyond every byte is unsent readings. When the budget is full, the oldest unsent home-sensor
        readings are evicted to make room; once none are left, new home-sensor readings are refused while
        vital signs are still accepted into a reserve of VITAL_RESERVE × budget; past that, the oldest vital
        signs are evicted. Each of these is counted (``counters()``) and raises an ``outbox_alarm`` event —
        never silent.
        """
        drafts = list(drafts)
        dead_letters = list(dead_letters)
        events = list(events)
        now = self.clock()
        with self._tx() as db:
            used = self._prune_for_room(db, self._used(db))
            if used >= self.max_bytes:
                drafts = self._make_room(db, drafts, used)
            last = db.execute("SELECT value FROM counters WHERE name = 'last_seq'").fetchone()[0]
            stored: list[Reading] = []
            rows = []
            for offset, draft in enumerate(drafts, start=1):
                reading = Reading(
                    seq=last + offset,
                    device_id=draft.device_id,
                    device_kind=draft.device_kind,
                    metric=draft.metric,
                    value=draft.value,
                    unit=draft.unit,
                    measured_at=draft.measured_at,
                    received_at=draft.received_at,
                    flags=draft.flags,
                )
                stored.append(reading)
                rows.append(
                    (
                        reading.seq,
                        int(keeps(draft.metric)),
                        int(draft.urgent),
                        draft.received_at.isoformat(),
                        reading.model_dump_json().encode(),
                    )
                )
            if rows:
                db.executemany(
                    "INSERT INTO readings(seq, keep, urgent, received_at, payload) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute("UPDATE counters SET value = ? WHERE name = 'last_seq'", (last + len(rows),))
                self._bump(db, "accepted", len(rows))
            if dead_letters:
                db.executemany(
                    "INSERT INTO dead_letters(received_at, address, source, device_id, reason, raw_hex, "
                    "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            d.received_at.isoformat(),
                            d.address,
                            d.source,
                            d.device_id,
                            d.reason,
                            d.raw_hex,
                            json.dumps(d.detail, default=str),
                        )
                        for d in dead_letters
                    ],
                )
                self._bump(db, "dead_letters", len(dead_letters))
                db.execute(
                    "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                    (MAX_DEAD_LETTERS,),
                )
            events.extend(self._alarms(db, now))
            if events:
                db.executemany(
                    "INSERT INTO events(payload) VALUES (?)",
                    [(e.model_dump_json().encode(),) for e in events],
                )
                over = db.execute("SELECT COUNT(*) - ? FROM events", (MAX_EVENTS,)).fetchone()[0]
                if over > 0:
                    db.execute(
                        "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)", (over,)
                    )
                    self._bump(db, "events_dropped", over)
        return stored

    def _delete_down_to(self, db: sqlite3.Connection, used: int, target: float, delete_chunk_sql: str,
                        chunk: int) -> tuple[int, int]:
        """Delete ``chunk`` rows at a time (``delete_chunk_sql``, oldest first) while ``used`` bytes are at or above
        ``target`` and rows are left. Returns (rows deleted, bytes in use afterwards)."""
        deleted = 0
        while used >= target:
            gone = db.execute(delete_chunk_sql, (chunk,)).rowcount
            if not gone:
                break
            deleted += gone
            used = self._used(db)
        return deleted, used

    def _make_room(self, db: sqlite3.Connection, drafts: list[ReadingDraft], used: int) -> list[ReadingDraft]:
        """Called inside append's transaction when the budget is full (see append for the policy)."""
        target = int(self.max_bytes * EVICT_TARGET)
        chunk = max(256, 4 * len(drafts))
        evicted_home, used = self._delete_down_to(
            db, used, target, "DELETE FROM readings WHERE seq IN "
            "(SELECT seq FROM readings WHERE keep = 0 ORDER BY seq LIMIT ?)", chunk)
        self._bump(db, "evicted_home", evicted_home)
        self._note("evicted_home", evicted_home)
        if used < self.max_bytes:
            return drafts
        # Nothing left to evict among home readings: refuse new ones, keep vital signs in the reserve.
        kept = [d for d in drafts if keeps(d.metric)]
        self._bump(db, "refused_home", len(drafts) - len(kept))
        self._note("refused_home", len(drafts) - len(kept))
        hard = int(self.max_bytes * (1 + VITAL_RESERVE))
        evicted_vital, used = self._delete_down_to(
            db, used, hard, "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings ORDER BY seq LIMIT ?)", chunk)
        self._bump(db, "evicted_vital", evicted_vital)
        self._note("evicted_vital", evicted_vital)
        return kept

    def _prune_for_room(self, db: sqlite3.Connection, used: int) -> int:
        """From SENT_PRUNE_PCT of the budget, drop the oldest sent rows until SENT_PRUNE_TO_PCT or none left.

        Returns the bytes in use afterwards. Nothing is lost (the broker acknowledged these readings); only
        the replay window gets shorter, counted in ``pruned_sent_early``.
        """
        if used < self.max_bytes * SENT_PRUNE_PCT / 100:
            return used
        target = self.max_bytes * SENT_PRUNE_TO_PCT / 100
        pruned, used = self._delete_down_to(
            db, used, target, "DELETE FROM sent WHERE seq IN (SELECT seq FROM sent ORDER BY seq LIMIT ?)",
            PRUNE_CHUNK // 10)
        self._bump(db, "pruned_sent_early", pruned)
        return used

    def _prune_expired(self, db: sqlite3.Connection, now: float, limit: int = 4 * PRUNE_CHUNK) -> int:
        """Drop sent rows acknowledged more than ``replay_retention_s`` ago (at most ``limit`` per call).

        Readings are acknowledged in sequence order (give or take the in-flight window), so the expired rows
        are the lowest seqs: walk from the lowest and stop at the first one still inside the window. That costs
        one row when nothing has expired, and needs no index on ``acked_at``.
        """
        cutoff = now - self.replay_retention_s
        upto = None
        cursor = db.execute("SELECT seq, acked_at FROM sent ORDER BY seq LIMIT ?", (limit,))
        try:
            for seq, acked_at in cursor:
                if acked_at >= cutoff:
                    break
                upto = seq
        finally:
            cursor.close()
        if upto is None:
            return 0
        pruned = db.execute("DELETE FROM sent WHERE seq <= ? AND acked_at < ?", (upto, cutoff)).rowcount
        self._bump(db, "pruned_sent", pruned)
        return pruned

    def _note(self, name: str, count: int) -> None:
        if count:
            self._unreported[name] = self._unreported.get(name, 0) + count

    def _alarms(self, db: sqlite3.Connection, now: datetime) -> list[GatewayEvent]:
        alarms = []
        pct = 100.0 * self._used(db) / self.max_bytes
        armed = bool(db.execute("SELECT value FROM state WHERE name = ?", (ALARM_ARMED,)).fetchone()[0])
        if pct >= ALARM_PCT and armed:
            self._set_state(db, ALARM_ARMED, 0)  # in the same transaction as the alarm event itself
            alarms.append(
                self._event(
                    now,
                    "outbox_alarm",
                    f"outbox at {pct:.0f}% of its {self.max_bytes // 1024} KiB budget",
                    {"budget_pct": round(pct, 1), "level": "warning"},
                )
            )
        elif pct < ALARM_REARM_PCT and not armed:
            self._set_state(db, ALARM_ARMED, 1)
        level = "critical" if self._unreported.get("evicted_vital") else "error"
        due = (
            self._last_evict_alarm is None
            or (now - self._last_evict_alarm).total_seconds() >= EVICT_ALARM_EVERY_S
            or (level == "critical" and self._last_evict_level != "critical")  # escalation is never held back
        )
        if self._unreported and due:
            lost = dict(self._unreported)
            self._unreported.clear()
            self._last_evict_alarm = now
            self._last_evict_level = level
            totals = dict(db.execute("SELECT name, value FROM counters").fetchall())
            parts = ", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in sorted(lost.items()))
            alarms.append(
                self._event(
                    now,
                    "outbox_alarm",
                    f"outbox budget full, readings dropped ({parts})",
                    {
                        "level": level,
                        "budget_pct": round(pct, 1),
                        "since_last_alarm": lost,
                        "totals": {k: totals[k] for k in ("evicted_home", "evicted_vital", "refused_home")},
                    },
                )
            )
        return alarms

    def _event(self, at: datetime, kind: str, message: str, detail: dict[str, Any]) -> GatewayEvent:
        return GatewayEvent(
            site_id=self.site_id,
            gateway_id=self.gateway_id,
            at=at,
            kind=kind,
            message=message,
            detail=detail,
        )

    def add_events(self, events: Iterable[GatewayEvent]) -> None:
        self.append((), events=events)

    def mark_sent(self, seqs: Iterable[int]) -> int:
        """The broker acknowledged these readings: move them from ``readings`` to ``sent`` for the replay window.

        Returns how many unsent rows became sent. Expired sent rows are pruned in the same transaction. With
        ``replay_retention_s=0`` acknowledged rows are deleted at once (no replay).
        """
        ranges = runs_from_seqs(seqs)
        if not ranges:
            return 0
        now = self.clock().timestamp()
        moved = 0
        with self._tx() as db:
            for first, last in ranges:
                if self.replay_retention_s > 0:
                    db.execute(
                        "INSERT OR IGNORE INTO sent (seq, acked_at, payload) "
                        "SELECT seq, ?, payload FROM readings WHERE seq BETWEEN ? AND ?",
                        (now, first, last),
                    )
                moved += db.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (first, last)).rowcount
            if self.replay_retention_s > 0:
                self._prune_expired(db, now)
        return moved

    def prune_sent(self) -> int:
        """Drop sent rows past the replay window now (the publisher calls this when idle). Returns how many."""
        with self._tx() as db:
            return self._prune_expired(db, self.clock().timestamp())

    def delete(self, seqs: Iterable[int]) -> int:
        """Forget readings outright, sent or not (they cannot be replayed). Returns how many rows went."""
        ranges = runs_from_seqs(seqs)
        if not ranges:
            return 0
        with self._tx() as db:
            return sum(
                db.execute(f"DELETE FROM {table} WHERE seq BETWEEN ? AND ?", r).rowcount
                for r in ranges
                for table in ("readings", "sent")
            )

    def delete_events(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            with self._tx() as db:
                db.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in ids])

    # --------------------------------------------------------------------------------------------------------
    # reading
    # --------------------------------------------------------------------------------------------------------
    def peek(self, limit: int, *, after_seq: int = 0) -> list[Reading]:
        """The oldest unacknowledged readings (seq > after_seq), in sequence order."""
        return [
            Reading.model_validate_json(row.payload) for row in self.peek_rows(limit, after_seq=after_seq)
        ]

    def peek_rows(self, limit: int, *, after_seq: int = 0) -> list[OutboxRow]:
        """The oldest unsent rows (seq > after_seq), in sequence order, as the publisher sends them."""
        rows = self._read(
            "SELECT seq, urgent, payload FROM readings WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        )
        return [OutboxRow(seq, bool(urgent), bytes(payload)) for seq, urgent, payload in rows]

    def has_urgent(self, *, after_seq: int = 0) -> bool:
        return bool(self._read("SELECT 1 FROM readings WHERE seq > ? AND urgent = 1 LIMIT 1", (after_seq,)))

    def sent_rows(self, first: int, last: int, limit: int) -> list[OutboxRow]:
        """Acknowledged rows still kept with first <= seq <= last, in sequence order (what a replay sends)."""
        rows = self._read(
            "SELECT seq, payload FROM sent WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?", (first, last, limit)
        )
        return [OutboxRow(seq, False, bytes(payload)) for seq, payload in rows]

    def kept_runs(self, ranges: Iterable[SeqRun]) -> list[SeqRun]:
        """Which sequence numbers of ``ranges`` the outbox still holds (sent or not), as runs."""
        seqs: list[int] = []
        for first, last in merge_runs(ranges):
            for table in ("readings", "sent"):
                seqs.extend(
                    row[0]
                    for row in self._read(f"SELECT seq FROM {table} WHERE seq BETWEEN ? AND ?", (first, last))
                )
        return runs_from_seqs(seqs)

    def peek_events(self, limit: int, *, after_id: int = 0) -> list[EventRow]:
        rows = self._read(
            "SELECT id, payload FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        return [EventRow(i, bytes(p)) for i, p in rows]

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters, newest first (local diagnostics; they are also published as events)."""
        rows = self._read(
            "SELECT id, received_at, address, source, device_id, reason, raw_hex, detail FROM dead_letters "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        keys = ("id", "received_at", "address", "source", "device_id", "reason", "raw_hex", "detail")
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for item in out:
            item["detail"] = json.loads(item["detail"])
        return out

    def depth(self) -> int:
        """Unsent readings."""
        return int(self._read("SELECT COUNT(*) FROM readings")[0][0])

    def kept_sent(self) -> int:
        """Acknowledged readings still kept for replay."""
        return int(self._read("SELECT COUNT(*) FROM sent")[0][0])

    def events_depth(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM events")[0][0])

    def last_seq(self) -> int:
        return int(self._read("SELECT value FROM counters WHERE name = 'last_seq'")[0][0])

    def oldest_unsent(self) -> datetime | None:
        """When the oldest unacknowledged reading reached the gateway."""
        row = self._read("SELECT received_at FROM readings ORDER BY seq LIMIT 1")
        return datetime.fromisoformat(row[0][0]).astimezone(UTC) if row else None

    def size_bytes(self) -> int:
        """Bytes in use in the file (free pages left by deleted rows are reused, so they do not count)."""
        with self._lock:
            return self._used(self._db)

    def budget_pct(self) -> float:
        return 100.0 * self.size_bytes() / self.max_bytes

    def counters(self) -> dict[str, int]:
        return {name: int(value) for name, value in self._read("SELECT name, value FROM counters")}

    def stats(self) -> OutboxStats:
        return OutboxStats(
            self.depth(),
            self.last_seq(),
            self.oldest_unsent(),
            self.size_bytes(),
            round(self.budget_pct(), 2),
            self.counters(),
            self.kept_sent(),
        )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
