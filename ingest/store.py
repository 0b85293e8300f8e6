"""Writing batches to PostgreSQL: idempotent, gap-aware, one transaction per batch.

:func:`store_batch` is the one write path (the MQTT consumer uses it; the simulator's backfill can too). In one
transaction it

1. locks the rows of every gateway in the batch, in gateway_id order (two workers never deadlock on them, and
   the sequence bookkeeping of a gateway is serialised);
2. drops readings whose (gateway_id, seq) is already covered by ``gateway_seq_runs`` or repeated in the batch:
   re-deliveries are counted as duplicates, never stored twice;
3. binary-COPYs the rest straight into ``readings`` (inside a savepoint; should a row collide after all, it
   falls back to a TEMP staging table and ``INSERT ... ON CONFLICT DO NOTHING``), then updates
   ``latest_readings`` (newest per subject and metric) and devices (last_seen, battery) from those rows;
4. merges the new sequence numbers into ``gateway_seq_runs`` and sets ``gateways.last_seq / missing_seqs``;
5. writes dead letters, gateway statuses and events;
6. ``NOTIFY carewatch_readings`` with the subjects that got new data, each as its kind and id (``kind:id``,
   ``carewatch.subjects.subject_key``), delivered when the transaction commits (``notify_payloads``).
"""

from __future__ import annotations

import bisect
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Jsonb

from carewatch.db import one
from carewatch.ingest import kit_sessions
from carewatch.ingest.attribution import SessionWindow, attribute, covering
from carewatch.ingest.validate import (
    Classified,
    DeadLetter,
    DeviceInfo,
    Directory,
    EventRecord,
    ReadingsMessage,
    ReasonClass,
    StagedReading,
    StatusUpdate,
    classify,
    device_problem,
    status_devices,
)
from carewatch.subjects import Subject, SubjectKind, subject_key
from carewatch.wire import (
    DecodedBatch,
    ImplausibleValue,
    SeqRun,
    check_plausible,
    merge_runs,
    runs_from_seqs,
)

NOTIFY_CHANNEL = "carewatch_readings"
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; stay well below.
NOTIFY_MAX_BYTES = 7900

Run = SeqRun  # (first_seq, last_seq), inclusive; runs_from_seqs and merge_runs live in carewatch.wire


# ------------------------------------------------------------------------------------------------------------
# Sequence runs (pure)
# ------------------------------------------------------------------------------------------------------------
def covered(seq: int, runs: Sequence[Run]) -> bool:
    """Is ``seq`` inside one of ``runs`` (sorted, non-overlapping)?"""
    i = bisect.bisect_right(runs, (seq, float("inf"))) - 1
    return i >= 0 and runs[i][0] <= seq <= runs[i][1]


def missing_below(runs: Sequence[Run]) -> int:
    """Sequence numbers in 1..max never stored (sequences start at 1)."""
    if not runs:
        return 0
    return max(last for _, last in runs) - sum(last - first + 1 for first, last in runs)


#: Version of the NOTIFY payload: 2 = subjects as ``kind:id`` (``carewatch.subjects.subject_key``). Payloads without
#: ``v`` (ingest before it) list bare ids; the scorer reads both (scoring/service.py ``parse_payload``), so during a
#: rolling upgrade the scorers go first, then ingest (an old scorer would take a ``kind:id`` for an unknown id).
NOTIFY_VERSION = 2


def notify_payloads(subjects: Iterable[tuple[str, str]], max_received_at: datetime,
                    limit: int = NOTIFY_MAX_BYTES) -> list[str]:
    """``{"v": 2, "subjects": ["resident:r-1", "household:h-2", ...], "max_received_at": iso}`` payloads, split so
    each stays under ``limit`` bytes. Subjects are (kind, id) pairs: ids are unique per kind only, so the scorer
    evaluates a notified resident as the resident and a household as the household, never every kind of an id."""
    stamp = max_received_at.isoformat()
    payloads: list[str] = []
    chunk: list[str] = []

    def render(items: list[str]) -> str:
        return json.dumps({"v": NOTIFY_VERSION, "subjects": items, "max_received_at": stamp}, separators=(",", ":"))

    for pair in subjects:
        subject = subject_key(pair)
        if chunk and len(render([*chunk, subject]).encode()) > limit:
            payloads.append(render(chunk))
            chunk = []
        chunk.append(subject)
    if chunk:
        payloads.append(render(chunk))
    return payloads


# ------------------------------------------------------------------------------------------------------------
# Directory (who is registered where), cached and refreshed
# ------------------------------------------------------------------------------------------------------------
def load_directory(conn: psycopg.Connection) -> Directory:
    gateways: dict[str, Any] = dict(conn.execute("SELECT gateway_id, site_id FROM gateways").fetchall())
    devices = {
        row[0]: DeviceInfo(*row)
        for row in conn.execute(
            """SELECT device_id, site_id, coalesce(resident_id, kit_id, site_id),
                      CASE WHEN resident_id IS NOT NULL THEN 'resident' WHEN kit_id IS NOT NULL THEN 'kit'
                           ELSE carewatch_site_subject_kind(site_id) END,
                      active AND (unbound_at IS NULL OR unbound_at < bound_at), kit_id
               FROM devices"""
        )
    }
    return Directory(gateways, devices)


class DirectoryCache:
    """The registry, reloaded every ``max_age_s`` and sooner (at most every ``miss_refresh_s``) when a message
    names a gateway or device it does not know: new devices appear within seconds, unbindings within max_age_s.
    """

    def __init__(self, max_age_s: float = 30.0, miss_refresh_s: float = 2.0) -> None:
        self.max_age_s = max_age_s
        self.miss_refresh_s = miss_refresh_s
        self._snapshot = Directory()
        self._loaded_at = float("-inf")

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    def get(self, conn: psycopg.Connection, gateway_ids: Iterable[str] = (), device_ids: Iterable[str] = ()
            ) -> Directory:
        age = time.monotonic() - self._loaded_at
        snap = self._snapshot
        missing = any(g not in snap.gateways for g in gateway_ids) or any(d not in snap.devices for d in device_ids)
        if age > self.max_age_s or (missing and age > self.miss_refresh_s):
            self._snapshot = load_directory(conn)
            self._loaded_at = time.monotonic()
        return self._snapshot


# ------------------------------------------------------------------------------------------------------------
# The batch write
# ------------------------------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    """What one committed batch did."""

    messages: int = 0
    readings_in: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    dead_letters_by_class: Counter[str] = field(default_factory=Counter)
    statuses: int = 0
    events: int = 0
    subjects: list[Subject] = field(default_factory=list)  # (kind, id) of every subject that got new readings
    max_received_at: datetime | None = None
    missing_seqs: dict[str, int] = field(default_factory=dict)  # gateway -> missing_seqs after this batch
    new_gaps: dict[str, int] = field(default_factory=dict)  # gateway -> increase in missing_seqs

    def add(self, other: BatchResult) -> None:
        for name in ("messages", "readings_in", "stored", "duplicates", "dead_letters", "statuses", "events"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dead_letters_by_class.update(other.dead_letters_by_class)


_STAGE_COLUMNS = ("measured_at, gateway_id, seq, site_id, subject_id, subject_kind, device_id, metric, value, "
                  "received_at, flags, session_id")
_STAGE_TYPES = ["timestamptz", "text", "int8", "text", "text", "text", "text", "text", "float8", "timestamptz",
                "text[]", "int8"]
_STAGE_DDL = """CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    measured_at timestamptz, gateway_id text, seq bigint, site_id text, subject_id text, subject_kind text,
    device_id text, metric text, value double precision, received_at timestamptz, flags text[], session_id bigint
) ON COMMIT DELETE ROWS"""

# One statement: move staged rows into readings, then maintain latest_readings and devices from what was inserted.
_MOVE_SQL = f"""
WITH ins AS (
    INSERT INTO readings ({_STAGE_COLUMNS})
    SELECT {_STAGE_COLUMNS} FROM ingest_stage ORDER BY gateway_id, seq
    ON CONFLICT DO NOTHING
    RETURNING {_STAGE_COLUMNS}
), newest AS (
    SELECT DISTINCT ON (subject_kind, subject_id, metric) subject_kind, subject_id, metric, site_id, device_id, value,
           measured_at, flags
    FROM ins ORDER BY subject_kind, subject_id, metric, measured_at DESC, seq DESC
), latest AS (
    INSERT INTO latest_readings AS l (subject_kind, subject_id, metric, site_id, device_id, value, measured_at, flags)
    SELECT subject_kind, subject_id, metric, site_id, device_id, value, measured_at, flags FROM newest
    ORDER BY subject_kind, subject_id, metric
    ON CONFLICT (subject_kind, subject_id, metric) DO UPDATE
       SET site_id = EXCLUDED.site_id, device_id = EXCLUDED.device_id, value = EXCLUDED.value,
           measured_at = EXCLUDED.measured_at, flags = EXCLUDED.flags
     WHERE l.measured_at <= EXCLUDED.measured_at
    RETURNING 1
), dev AS (
    UPDATE devices d
       SET last_seen = greatest(d.last_seen, x.seen), battery_pct = coalesce(x.battery, d.battery_pct)
      FROM (SELECT device_id, max(received_at) AS seen,
                   (array_agg(value ORDER BY measured_at DESC) FILTER (WHERE metric = 'battery'))[1] AS battery
              FROM ins GROUP BY device_id ORDER BY device_id) AS x
     WHERE d.device_id = x.device_id
    RETURNING 1
)
SELECT subject_kind, subject_id, count(*), max(received_at) FROM ins GROUP BY subject_kind, subject_id
ORDER BY subject_kind, subject_id
"""


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; untrusted payloads may."""
    return value.replace("\x00", "\\x00") if value is not None else None


def _jsonb_text(obj: Any) -> str:
    """JSON for a jsonb column (jsonb refuses the \\u0000 escape)."""
    return json.dumps(obj, ensure_ascii=False).replace("\\u0000", "\\ufffd").replace("\x00", "\ufffd")


def store_batch(
    conn: psycopg.Connection,
    messages: Sequence[ReadingsMessage | DecodedBatch],
    *,
    directory: Directory | DirectoryCache | None = None,
    statuses: Sequence[StatusUpdate] = (),
    events: Sequence[EventRecord] = (),
    dead_letters: Sequence[DeadLetter] = (),
    notify: bool = True,
) -> BatchResult:
    """Validate and store readings messages (plus statuses, events and ready-made dead letters) in one transaction.

    Safe to call again with the same input: nothing is stored twice. ``directory`` defaults to a fresh load of
    the registry; the consumer passes its :class:`DirectoryCache`. Opens a transaction (a savepoint when the
    caller already has one) and commits it on return.
    """
    wrapped = [m if isinstance(m, ReadingsMessage) else ReadingsMessage(m) for m in messages]
    result = BatchResult(messages=len(wrapped) + len(statuses) + len(events), statuses=len(statuses),
                         events=len(events))
    with conn.transaction():
        if isinstance(directory, DirectoryCache):
            gateway_ids = {m.decoded.gateway_id for m in wrapped if m.decoded}
            device_ids = {r.device_id for m in wrapped if m.decoded for r in m.decoded.good}
            snapshot = directory.get(conn, gateway_ids, device_ids)
        else:
            snapshot = directory if directory is not None else load_directory(conn)
        classified = classify(wrapped, snapshot)
        classified.dead_letters.extend(dead_letters)
        result.readings_in = classified.readings_in

        # 1. lock every gateway we will touch, in a fixed order
        touched = set(classified.gateways_heard) | {s.status.gateway_id for s in statuses} | {
            e.event.gateway_id for e in events}
        locked = _lock_gateways(conn, sorted(touched))
        _drop_unlocked(classified, locked)

        # 2. de-duplicate against what is already stored and within the batch
        fresh, seq_state = _fresh_rows(conn, classified.rows, locked)
        result.duplicates = len(classified.rows) - len(fresh)

        # 3. attribute shared kits' readings to the session covering their measurement time, write the rows
        if fresh:
            fresh = _attribute_kit_rows(conn, fresh, snapshot)
            _write_fresh(conn, fresh, result)

        # 4. sequence bookkeeping and gateway liveness
        _update_gateways(conn, locked, seq_state, classified.gateways_heard, result)

        # 5. dead letters, statuses, events
        _insert_dead_letters(conn, classified.dead_letters)
        result.dead_letters = len(classified.dead_letters)
        result.dead_letters_by_class.update(d.reason_class.value for d in classified.dead_letters)
        _apply_statuses(conn, statuses, snapshot, locked)
        _insert_events(conn, events, locked)

        # 6. tell the scorer (delivered at commit)
        if notify and result.subjects and result.max_received_at is not None:
            for payload in notify_payloads(result.subjects, result.max_received_at):
                conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
    return result


def _write_fresh(conn: psycopg.Connection, fresh: list[StagedReading], result: BatchResult) -> None:
    """COPY rows straight into ``readings``; stage and move with ON CONFLICT only if that hits a stored row.

    ``_fresh_rows`` has already dropped every (gateway_id, seq) that ``gateway_seq_runs`` covers, under the
    gateway locks, so a conflict means the two tables disagree (e.g. runs deleted by hand). The fast path then
    rolls back to its savepoint and the slow path skips the conflicting rows, as it always did.
    """
    newest = _Newest()
    try:
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                f"COPY readings ({_STAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_STAGE_TYPES)
            for r in fresh:
                copy.write_row((r.measured_at, r.gateway_id, r.seq, r.site_id, r.subject_id, r.subject_kind,
                                r.device_id, r.metric, r.value, r.received_at, list(r.flags), r.session_id))
                newest.add(r.subject_kind, r.subject_id, r.metric, r.measured_at, r.seq, r.site_id, r.device_id,
                           r.value, r.flags, r.received_at)
    except psycopg.errors.UniqueViolation:
        _stage_and_move(conn, fresh, result)
        return
    _apply_newest(conn, newest)
    result.stored = len(fresh)
    result.subjects = newest.subjects()
    result.max_received_at = newest.max_received_at


def _stage_and_move(conn: psycopg.Connection, fresh: list[StagedReading], result: BatchResult) -> None:
    """The conflict-tolerant path: COPY into a TEMP staging table, then one INSERT ... ON CONFLICT DO NOTHING."""
    _ensure_stage(conn)
    with conn.cursor() as cur:
        with cur.copy(f"COPY ingest_stage ({_STAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_STAGE_TYPES)
            for r in fresh:
                copy.write_row((r.measured_at, r.gateway_id, r.seq, r.site_id, r.subject_id, r.subject_kind,
                                r.device_id, r.metric, r.value, r.received_at, list(r.flags), r.session_id))
        per_subject = cur.execute(_MOVE_SQL).fetchall()
    result.stored = sum(n for _, _, n, _ in per_subject)
    result.duplicates += len(fresh) - result.stored
    result.subjects = sorted({Subject(k, s) for k, s, _, _ in per_subject})
    result.max_received_at = max((t for *_, t in per_subject), default=None)


def _attribute_kit_rows(conn: psycopg.Connection, rows: list[StagedReading], directory: Directory
                        ) -> list[StagedReading]:
    """Give each shared kit's reading the resident of the session covering its measurement time (see
    ``ingest/attribution.py``); a reading no session covers keeps the kit as its subject (unassigned).

    The kits' rows are locked FOR SHARE first: a session being started or ended right now commits before we read
    the sessions (or waits until we commit, and then sweeps what we stored), so none falls between the two."""
    devices = directory.devices
    kit_rows = [i for i, r in enumerate(rows) if (d := devices.get(r.device_id)) is not None and d.kit_id]
    if not kit_rows:
        return rows
    kits = sorted({kit for i in kit_rows if (kit := devices[rows[i].device_id].kit_id)})
    kit_sessions.lock_kits(conn, kits, share=True)
    times = [rows[i].measured_at for i in kit_rows]
    windows = kit_sessions.load_windows(conn, kits, min(times), max(times))
    chosen = attribute([(devices[rows[i].device_id].kit_id or "", rows[i].measured_at) for i in kit_rows], windows)
    out = list(rows)
    newest: dict[int, Any] = {}
    for i, session in zip(kit_rows, chosen, strict=True):
        if session is not None:
            out[i] = rows[i]._replace(subject_id=session.resident_id, subject_kind=SubjectKind.RESIDENT.value,
                                      session_id=session.session_id)
            newest[session.session_id] = max(newest.get(session.session_id, rows[i].measured_at), rows[i].measured_at)
    kit_sessions.note_readings(conn, newest)
    return out


@dataclass
class _GatewayRow:
    site_id: str
    last_seq: int
    missing_seqs: int


@dataclass
class _SeqState:
    """Per gateway: the runs we loaded (to replace) and the new sequence numbers stored now."""

    loaded: list[Run] = field(default_factory=list)
    new_seqs: list[int] = field(default_factory=list)


def _lock_gateways(conn: psycopg.Connection, gateway_ids: list[str]) -> dict[str, _GatewayRow]:
    if not gateway_ids:
        return {}
    rows = conn.execute(
        """SELECT gateway_id, site_id, last_seq, missing_seqs FROM gateways
           WHERE gateway_id = ANY(%s) ORDER BY gateway_id FOR UPDATE""",
        (gateway_ids,),
    ).fetchall()
    return {g: _GatewayRow(s, last, missing) for g, s, last, missing in rows}


def _drop_unlocked(classified: Classified, locked: dict[str, _GatewayRow]) -> None:
    """Rows whose gateway vanished (or moved site) since the directory snapshot become dead letters."""
    keep: list[StagedReading] = []
    for row in classified.rows:
        gw = locked.get(row.gateway_id)
        if gw is not None and gw.site_id == row.site_id:
            keep.append(row)
            continue
        classified.dead_letters.append(DeadLetter(
            ReasonClass.UNKNOWN_GATEWAY,
            f"gateway {row.gateway_id!r} is no longer registered to site {row.site_id!r}",
            json.dumps({"seq": row.seq, "device_id": row.device_id, "metric": row.metric, "value": row.value,
                        "measured_at": row.measured_at.isoformat()}),
            site_id=row.site_id, gateway_id=row.gateway_id, device_id=row.device_id, seq=row.seq,
        ))
    classified.rows = keep
    for gateway_id in [g for g in classified.gateways_heard if g not in locked]:
        del classified.gateways_heard[gateway_id]


def _fresh_rows(
    conn: psycopg.Connection, rows: list[StagedReading], locked: dict[str, _GatewayRow]
) -> tuple[list[StagedReading], dict[str, _SeqState]]:
    """Rows whose (gateway_id, seq) is neither stored already nor repeated earlier in this batch."""
    by_gateway: dict[str, list[StagedReading]] = {}
    for row in rows:
        by_gateway.setdefault(row.gateway_id, []).append(row)
    state = {g: _SeqState() for g in locked}
    if not by_gateway:
        return [], state
    gws = sorted(by_gateway)
    lows = [min(r.seq for r in by_gateway[g]) for g in gws]
    highs = [max(r.seq for r in by_gateway[g]) for g in gws]
    for gateway_id, first, last in conn.execute(
        """SELECT r.gateway_id, r.first_seq, r.last_seq
           FROM gateway_seq_runs r
           JOIN unnest(%s::text[], %s::int8[], %s::int8[]) AS b(gateway_id, lo, hi)
             ON r.gateway_id = b.gateway_id AND r.first_seq <= b.hi + 1 AND r.last_seq >= b.lo - 1
           ORDER BY r.gateway_id, r.first_seq""",
        (gws, lows, highs),
    ):
        state[gateway_id].loaded.append((first, last))
    fresh: list[StagedReading] = []
    for gateway_id in gws:
        seen: set[int] = set()
        loaded = state[gateway_id].loaded
        for row in by_gateway[gateway_id]:
            if row.seq in seen or covered(row.seq, loaded):
                continue
            seen.add(row.seq)
            fresh.append(row)
        state[gateway_id].new_seqs = sorted(seen)
    return fresh, state


def _update_gateways(
    conn: psycopg.Connection,
    locked: dict[str, _GatewayRow],
    seq_state: dict[str, _SeqState],
    heard: dict[str, datetime],
    result: BatchResult,
) -> None:
    updates: list[tuple[Any, ...]] = []
    for gateway_id, gw in sorted(locked.items()):
        st = seq_state.get(gateway_id, _SeqState())
        last_seq, missing = gw.last_seq, gw.missing_seqs
        if st.new_seqs:
            merged = merge_runs(st.loaded, runs_from_seqs(st.new_seqs))
            if st.loaded:
                conn.execute(
                    "DELETE FROM gateway_seq_runs WHERE gateway_id = %s AND first_seq = ANY(%s)",
                    (gateway_id, [first for first, _ in st.loaded]),
                )
            conn.execute(
                """INSERT INTO gateway_seq_runs (gateway_id, first_seq, last_seq)
                   SELECT %s, f, l FROM unnest(%s::int8[], %s::int8[]) AS t(f, l)""",
                (gateway_id, [f for f, _ in merged], [la for _, la in merged]),
            )
            stored_before = gw.last_seq - gw.missing_seqs
            last_seq = max(gw.last_seq, st.new_seqs[-1])
            missing = last_seq - (stored_before + len(st.new_seqs))
            result.missing_seqs[gateway_id] = missing
            if missing > gw.missing_seqs:
                result.new_gaps[gateway_id] = missing - gw.missing_seqs
        if st.new_seqs or gateway_id in heard:
            updates.append((last_seq, missing, heard.get(gateway_id), gateway_id))
    if updates:
        with conn.cursor() as cur:
            cur.executemany(
                """UPDATE gateways SET last_seq = %s, missing_seqs = %s,
                          last_seen = greatest(last_seen, %s::timestamptz)
                   WHERE gateway_id = %s""",
                updates,
            )


def _ensure_stage(conn: psycopg.Connection) -> None:
    if one(conn.execute("SELECT to_regclass('pg_temp.ingest_stage')"))[0] is None:
        conn.execute(_STAGE_DDL)


def _insert_dead_letters(conn: psycopg.Connection, letters: Sequence[DeadLetter]) -> None:
    if not letters:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO dead_letters
                   (stage, site_id, gateway_id, device_id, seq, topic, reason, raw, reason_class, fingerprint)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (fingerprint) DO NOTHING""",
            [(d.stage, _text(d.site_id), _text(d.gateway_id), _text(d.device_id), d.seq, _text(d.topic),
              _text(d.reason), _text(d.raw), d.reason_class.value, d.fingerprint) for d in letters],
        )


def _apply_statuses(
    conn: psycopg.Connection, updates: Sequence[StatusUpdate], directory: Directory,
    locked: dict[str, _GatewayRow],
) -> None:
    """Gateway state from status messages (in arrival order); device battery/RSSI from their device lists.

    A retained copy (delivered on subscribe) only applies when it is not older than what the row holds; a live
    message always applies, because a last will carries the time it was set up, not the time the gateway died.
    """
    with conn.cursor() as cur:
        for upd in updates:
            st = upd.status
            gw = locked.get(st.gateway_id)
            if gw is None or gw.site_id != st.site_id:
                continue
            cur.execute(
                """UPDATE gateways SET state = %s, status = %s::jsonb, status_at = %s,
                          last_seen = greatest(last_seen, %s::timestamptz)
                   WHERE gateway_id = %s AND (NOT %s OR status_at IS NULL OR status_at <= %s)""",
                (st.state, _jsonb_text(st.model_dump(mode="json")), st.at, upd.received_at, st.gateway_id,
                 upd.retained, st.at),
            )
            rows = sorted(status_devices(upd, directory))
            if rows:
                cur.executemany(
                    """UPDATE devices SET battery_pct = coalesce(%s, battery_pct), rssi_dbm = coalesce(%s, rssi_dbm),
                              last_seen = greatest(last_seen, %s::timestamptz)
                       WHERE device_id = %s AND site_id = %s""",
                    [(b, r, seen, d, st.site_id) for d, b, r, seen in rows],
                )


def record_gateway_events(conn: psycopg.Connection,
                          rows: Sequence[tuple[str, str, str, str | None, datetime, str | None, str, str]]) -> None:
    """The one writer of ``gateway_events``: rows of (site_id, gateway_id, kind, device_id, at, message, detail as
    JSON text, fingerprint). A fingerprint already stored (a retained or re-sent event) is skipped."""
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO gateway_events (site_id, gateway_id, kind, device_id, at, message, detail, fingerprint)
                   VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (fingerprint) DO NOTHING""",
                rows,
            )


def _insert_events(conn: psycopg.Connection, events: Sequence[EventRecord], locked: dict[str, _GatewayRow]) -> None:
    rows = []
    for rec in events:
        ev = rec.event
        gw = locked.get(ev.gateway_id)
        if gw is None or gw.site_id != ev.site_id:
            continue
        rows.append((ev.site_id, ev.gateway_id, ev.kind, _text(ev.device_id), ev.at, _text(ev.message),
                     _jsonb_text(ev.detail), rec.fingerprint))
    if not rows:
        return
    record_gateway_events(conn, rows)
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE gateways SET last_seen = greatest(last_seen, now()) WHERE gateway_id = %s",
            sorted({(r[1],) for r in rows}),
        )


# ------------------------------------------------------------------------------------------------------------
# History loads (backfill): binary COPY straight into readings
# ------------------------------------------------------------------------------------------------------------
#: A history reading's fields as a plain tuple, in ``HistoryReading``'s order: what the simulator's backfill sends
#: between processes (a NamedTuple costs ~3x as much to unpickle, and building one ~1.7 us more per reading).
HistoryRow = tuple[str, int, str, str, str, float, datetime, datetime, tuple[str, ...]]


class HistoryReading(NamedTuple):
    """One reading of a history load, as a gateway would have sent it (the subject comes from the registry). A
    NamedTuple rather than a frozen dataclass: a backfill makes one per reading (millions), and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost ~4x as much to build."""

    gateway_id: str
    seq: int
    site_id: str
    device_id: str
    metric: str
    value: float
    measured_at: datetime
    received_at: datetime
    flags: tuple[str, ...] = ()


class _Newest:
    """Newest row per (subject, metric), newest received_at and battery per device, rows per subject: what
    ``latest_readings`` and ``devices`` need after a COPY straight into ``readings``."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str, str], tuple[datetime, int, str, str, float, tuple[str, ...]]] = {}
        self.devices: dict[str, list[Any]] = {}
        self.per_subject: Counter[tuple[str, str]] = Counter()  # rows per (kind, id)
        self.max_received_at: datetime | None = None

    def add(self, subject_kind: str, subject_id: str, metric: str, measured_at: datetime, seq: int, site_id: str,
            device_id: str, value: float, flags: tuple[str, ...], received_at: datetime) -> None:
        key = (subject_kind, subject_id, metric)
        held = self.latest.get(key)
        if held is None or (measured_at, seq) > held[:2]:
            self.latest[key] = (measured_at, seq, site_id, device_id, value, flags)
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = [received_at, None, None]
        elif received_at > dev[0]:
            dev[0] = received_at
        if metric == "battery" and (dev[2] is None or measured_at >= dev[2]):
            dev[1], dev[2] = value, measured_at
        self.per_subject[subject_kind, subject_id] += 1
        if self.max_received_at is None or received_at > self.max_received_at:
            self.max_received_at = received_at

    def subjects(self) -> list[Subject]:
        return [Subject(*pair) for pair in sorted(self.per_subject)]


#: ``latest_readings`` upserted from one array per column (sent in binary), in the arrays' order. A row's flags
#: travel as jsonb (``unnest`` would flatten a 2-D text array).
_UPSERT_LATEST = """INSERT INTO latest_readings AS l (subject_kind, subject_id, metric, site_id, device_id, value,
                                               measured_at, flags)
    SELECT v.kind, v.subject, v.metric, v.site, v.device, v.value, v.at,
           ARRAY(SELECT jsonb_array_elements_text(v.flags))
    FROM unnest(%(kind)b::text[], %(subject)b::text[], %(metric)b::text[], %(site)b::text[], %(device)b::text[],
                %(value)b::float8[], %(at)b::timestamptz[], %(flags)b::jsonb[])
         WITH ORDINALITY AS v(kind, subject, metric, site, device, value, at, flags, n)
    ORDER BY v.n
    ON CONFLICT (subject_kind, subject_id, metric) DO UPDATE
       SET site_id = EXCLUDED.site_id, device_id = EXCLUDED.device_id, value = EXCLUDED.value,
           measured_at = EXCLUDED.measured_at, flags = EXCLUDED.flags
     WHERE l.measured_at <= EXCLUDED.measured_at"""
#: The devices' rows locked in the order Python sorts their ids (code points: COLLATE "C"), as the statement per
#: device used to; the lock an UPDATE of non-key columns takes.
_LOCK_DEVICES = """SELECT 1 FROM devices WHERE device_id = ANY(%s) ORDER BY device_id COLLATE "C"
                   FOR NO KEY UPDATE"""
_UPDATE_DEVICES = """UPDATE devices d SET last_seen = greatest(d.last_seen, v.seen),
                                         battery_pct = coalesce(v.battery, d.battery_pct)
    FROM unnest(%(device)b::text[], %(seen)b::timestamptz[], %(battery)b::float8[]) AS v(device_id, seen, battery)
    WHERE d.device_id = v.device_id"""


def _apply_newest(conn: psycopg.Connection, newest: _Newest) -> None:
    """Maintain ``latest_readings`` (newest per subject and metric) and devices (last seen, battery), one statement
    each whatever the number of rows: a history load's chunk names thousands of subjects and devices, and a
    statement per row was ~8 s of the full-size backfill. Rows are written in key order, as before, so two
    writers lock them in the same order."""
    latest = sorted(newest.latest.items())
    if latest:
        conn.execute(_UPSERT_LATEST, {
            "kind": [k for (k, _, _), _ in latest], "subject": [s for (_, s, _), _ in latest],
            "metric": [m for (_, _, m), _ in latest], "site": [row[2] for _, row in latest],
            "device": [row[3] for _, row in latest], "value": [float(row[4]) for _, row in latest],
            "at": [row[0] for _, row in latest], "flags": [Jsonb(list(row[5])) for _, row in latest]})
    devices = sorted(newest.devices.items())
    if devices:
        conn.execute(_LOCK_DEVICES, ([d for d, _ in devices],))
        conn.execute(_UPDATE_DEVICES, {
            "device": [d for d, _ in devices], "seen": [seen for _, (seen, _, _) in devices],
            "battery": [None if battery is None else float(battery) for _, (_, battery, _) in devices]})


def load_history(
    conn: psycopg.Connection, gateway_ids: Iterable[str], readings: Iterable[HistoryReading | HistoryRow], *,
    directory: Directory | None = None,
) -> BatchResult:
    """Store a stream of history readings in one transaction with one binary COPY into ``readings``.

    For bulk loads (the simulator's backfill, imports) where :func:`store_batch`'s per-batch staging and
    conflict handling would dominate. The price is a stricter contract: each gateway's sequence numbers must be
    above everything it has stored (``gateways.last_seq``) and strictly increasing within the stream, so no row
    can collide with a stored one; the rows of ``gateway_ids`` (the only gateways the stream may name) stay
    locked for the whole load, so a live writer cannot interleave. A reading that breaks that contract, or that
    ``store_batch`` would refuse (implausible value, unknown or unbound device, gateway of another site), becomes
    a dead letter and the rest still load.
    Sequence runs, gaps, ``latest_readings`` and device last-seen/battery are maintained as ``store_batch``
    does; no NOTIFY is sent (history is rescored in batch).
    """
    result = BatchResult()
    newest = _Newest()
    letters: list[DeadLetter] = []
    runs: dict[str, list[Run]] = {}
    with conn.transaction():
        snapshot = directory if directory is not None else load_directory(conn)
        locked = _lock_gateways(conn, sorted(set(gateway_ids)))
        last_seq = {g: row.last_seq for g, row in locked.items()}
        sites = {row.site_id for row in locked.values()}
        kits = sorted({d.kit_id for d in snapshot.devices.values() if d.kit_id and d.site_id in sites})
        kit_sessions.lock_kits(conn, kits, share=True)
        windows = kit_sessions.load_windows(conn, kits, datetime(1970, 1, 1, tzinfo=UTC),
                                            datetime(9999, 1, 1, tzinfo=UTC))
        session_newest: dict[int, datetime] = {}

        def refuse(r: HistoryReading, reason_class: ReasonClass, reason: str) -> None:
            letters.append(DeadLetter(
                reason_class, reason,
                json.dumps({"seq": r.seq, "device_id": r.device_id, "metric": r.metric, "value": r.value,
                            "measured_at": r.measured_at.isoformat(), "flags": list(r.flags)}),
                stage="load_history", site_id=r.site_id, gateway_id=r.gateway_id, device_id=r.device_id, seq=r.seq))

        with conn.cursor() as cur, cur.copy(f"COPY readings ({_STAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_STAGE_TYPES)
            # (gateway, site, device) -> why it cannot be stored, or its registry entry: checked once per source,
            # not once per reading (the registry snapshot and the locked gateways do not change during the load)
            sources: dict[tuple[str, str, str], tuple[tuple[ReasonClass, str] | None, DeviceInfo | None]] = {}
            for r in readings:
                # (unpacked once: locals, not a NamedTuple attribute per use; a plain tuple unpacks the same)
                gateway_id, seq, site_id, device_id, metric, value, measured_at, received_at, flags = r
                result.readings_in += 1
                key = (gateway_id, site_id, device_id)
                source = sources.get(key)
                if source is None:
                    gw = locked.get(gateway_id)
                    problem = (ReasonClass.UNKNOWN_GATEWAY, f"gateway {gateway_id!r} is not one this load may "
                               f"write for site {site_id!r}") if gw is None or gw.site_id != site_id else (
                        device_problem(snapshot, site_id, device_id))
                    source = sources[key] = (problem, None if problem else snapshot.devices[device_id])
                problem, info = source
                if problem is None and seq <= last_seq[gateway_id]:
                    problem = (ReasonClass.INVALID_READING, f"seq {seq} is not above gateway {gateway_id!r}'s "
                               f"last stored seq {last_seq[gateway_id]}: a history load only appends")
                if problem is None:
                    try:
                        check_plausible(metric, value)
                    except ImplausibleValue as exc:
                        problem = (ReasonClass.INVALID_READING, str(exc))
                if problem is not None:
                    refuse(HistoryReading._make(r), *problem)
                    continue
                assert info is not None  # (no problem: the device is registered)
                subject_id, subject_kind, session_id = info.subject_id, info.subject_kind, None
                if info.kit_id:
                    session = _history_session(windows.get(info.kit_id, ()), measured_at)
                    if session is not None:
                        subject_id, session_id = session.resident_id, session.session_id
                        subject_kind = SubjectKind.RESIDENT.value
                        held = session_newest.get(session_id)
                        session_newest[session_id] = measured_at if held is None else max(held, measured_at)
                copy.write_row((measured_at, gateway_id, seq, site_id, subject_id, subject_kind, device_id,
                                metric, value, received_at, list(flags), session_id))
                last_seq[gateway_id] = seq
                gw_runs = runs.setdefault(gateway_id, [])
                if gw_runs and gw_runs[-1][1] + 1 == seq:
                    gw_runs[-1] = (gw_runs[-1][0], seq)
                else:
                    gw_runs.append((seq, seq))
                newest.add(subject_kind, subject_id, metric, measured_at, seq, site_id, device_id, value, flags,
                           received_at)
        result.stored = sum(newest.per_subject.values())
        kit_sessions.note_readings(conn, session_newest)
        _history_bookkeeping(conn, locked, runs, newest, result)
        _insert_dead_letters(conn, letters)
        result.dead_letters = len(letters)
        result.dead_letters_by_class.update(d.reason_class.value for d in letters)
    result.subjects = newest.subjects()
    return result


def _history_session(sessions: Sequence[SessionWindow], at: datetime) -> SessionWindow | None:
    """The session covering ``at`` in a history load, advancing its idle timer as ingest would."""
    session = covering(sessions, at)
    if session is not None and session.ended_at is None and (
            session.last_reading_at is None or at > session.last_reading_at):
        session.last_reading_at = at
    return session


def _history_bookkeeping(conn: psycopg.Connection, locked: dict[str, _GatewayRow], runs: dict[str, list[Run]],
                         newest: _Newest, result: BatchResult) -> None:
    """Sequence runs, gateway last_seq/missing_seqs, latest_readings and devices after a history COPY."""
    for gateway_id, new_runs in sorted(runs.items()):
        gw = locked[gateway_id]
        adjacent = conn.execute(
            "DELETE FROM gateway_seq_runs WHERE gateway_id = %s AND last_seq = %s RETURNING first_seq, last_seq",
            (gateway_id, new_runs[0][0] - 1)).fetchall()
        merged = merge_runs(adjacent, new_runs)
        conn.execute(
            """INSERT INTO gateway_seq_runs (gateway_id, first_seq, last_seq)
               SELECT %s, f, l FROM unnest(%s::int8[], %s::int8[]) AS t(f, l)""",
            (gateway_id, [f for f, _ in merged], [la for _, la in merged]))
        stored = sum(last - first + 1 for first, last in new_runs)
        last_seq = new_runs[-1][1]
        missing = last_seq - (gw.last_seq - gw.missing_seqs + stored)
        result.missing_seqs[gateway_id] = missing
        if missing > gw.missing_seqs:
            result.new_gaps[gateway_id] = missing - gw.missing_seqs
        conn.execute("UPDATE gateways SET last_seq = %s, missing_seqs = %s WHERE gateway_id = %s",
                     (last_seq, missing, gateway_id))
    _apply_newest(conn, newest)


# ------------------------------------------------------------------------------------------------------------
# Re-attributing stored kit readings: session-start sweep, claim, move (the readings table's one writer)
# ------------------------------------------------------------------------------------------------------------
ReadingKey = tuple[str, int]  # (gateway_id, seq)


@dataclass
class Reassigned:
    """What a re-attribution changed: the readings moved and every subject whose data changed."""

    readings: list[dict[str, Any]] = field(default_factory=list)  # gateway_id, seq, measured_at, metric, from
    subjects: list[str] = field(default_factory=list)


def reassign_readings(conn: psycopg.Connection, keys: Iterable[ReadingKey], *, to_subject: str,
                      session_id: int | None, kind: str, by: str, reason: str | None = None) -> Reassigned:
    """Give stored readings a new subject, the resident ``to_subject`` (and session), one history row each in
    ``reading_assignments``, and bring ``latest_readings`` of the old and new subjects up to date. The new subject
    is always of kind 'resident' (a claim or a session start takes a kit's reading, a move another resident's);
    rows already on that resident are left. The caller checks who may do this and which readings qualify; the
    caller's transaction commits it."""
    pairs = sorted(set(keys))
    out = Reassigned()
    if not pairs:
        return out
    rows = conn.execute(
        """SELECT r.gateway_id, r.seq, r.measured_at, r.metric, r.subject_id, r.subject_kind FROM readings r
           JOIN unnest(%s::text[], %s::int8[]) AS k(gateway_id, seq) ON r.gateway_id = k.gateway_id AND r.seq = k.seq
           WHERE r.subject_kind IN ('resident', 'kit') AND NOT (r.subject_kind = 'resident' AND r.subject_id = %s)
           ORDER BY r.gateway_id, r.seq FOR UPDATE OF r""",
        ([g for g, _ in pairs], [q for _, q in pairs], to_subject)).fetchall()
    if not rows:
        return out
    with conn.cursor() as cur:
        cur.executemany(
            """UPDATE readings SET subject_kind = 'resident', subject_id = %s, session_id = %s
               WHERE gateway_id = %s AND seq = %s AND measured_at = %s""",
            [(to_subject, session_id, g, q, at) for g, q, at, *_ in rows])
        cur.executemany(
            """INSERT INTO reading_assignments (kind, gateway_id, seq, measured_at, from_kind, from_subject, to_kind,
                                                to_subject, session_id, by_user, reason)
               VALUES (%s, %s, %s, %s, %s, %s, 'resident', %s, %s, %s, %s)""",
            [(kind, g, q, at, old_kind, old, to_subject, session_id, by, reason)
             for g, q, at, _, old, old_kind in rows])
    refresh_latest(conn, {(old_kind, old, metric) for _, _, _, metric, old, old_kind in rows}
                   | {(SubjectKind.RESIDENT.value, to_subject, m) for _, _, _, m, _, _ in rows})
    out.readings = [{"gateway_id": g, "seq": q, "measured_at": at, "metric": m, "from": old, "from_kind": old_kind}
                    for g, q, at, m, old, old_kind in rows]
    out.subjects = sorted({old for _, _, _, _, old, _ in rows} | {to_subject})
    return out


def sweep_into_session(conn: psycopg.Connection, session: dict[str, Any], upto: datetime, *, by: str) -> Reassigned:
    """A session just started covers kit readings measured since its start that were stored a moment before the
    session row (unassigned, subject = the kit): they are the session's by its window, not by a guess."""
    keys = conn.execute(
        """SELECT gateway_id, seq FROM readings WHERE subject_kind = 'kit' AND subject_id = %s AND measured_at >= %s
             AND measured_at <= %s""",
        (session["kit_id"], session["started_at"], upto)).fetchall()
    return reassign_readings(conn, [(g, q) for g, q in keys], to_subject=session["resident_id"],
                             session_id=session["session_id"], kind="session_start", by=by,
                             reason="measured inside the session's window, stored just before it started")


def refresh_latest(conn: psycopg.Connection, triples: Iterable[tuple[str, str, str]]) -> None:
    """Recompute ``latest_readings`` for (subject kind, subject, metric) from ``readings`` (after re-attribution)."""
    items = sorted(set(triples))
    if not items:
        return
    params = ([k for k, _, _ in items], [s for _, s, _ in items], [m for _, _, m in items])
    conn.execute("""DELETE FROM latest_readings l
                    USING unnest(%s::text[], %s::text[], %s::text[]) AS p(subject_kind, subject_id, metric)
                    WHERE l.subject_kind = p.subject_kind AND l.subject_id = p.subject_id AND l.metric = p.metric""",
                 params)
    conn.execute(
        """INSERT INTO latest_readings (subject_kind, subject_id, metric, site_id, device_id, value, measured_at, flags)
           SELECT p.subject_kind, p.subject_id, p.metric, r.site_id, r.device_id, r.value, r.measured_at, r.flags
           FROM unnest(%s::text[], %s::text[], %s::text[]) AS p(subject_kind, subject_id, metric)
           JOIN LATERAL (SELECT site_id, device_id, value, measured_at, flags FROM readings x
                         WHERE x.subject_kind = p.subject_kind AND x.subject_id = p.subject_id
                           AND x.metric = p.metric
                         ORDER BY x.measured_at DESC, x.seq DESC LIMIT 1) r ON true""", params)


# ------------------------------------------------------------------------------------------------------------
# Partitions and retention
# ------------------------------------------------------------------------------------------------------------
def ensure_partitions(conn: psycopg.Connection) -> int:
    """Monthly partitions from last month to three months ahead; returns how many were created."""
    with conn.transaction():
        row = conn.execute(
            "SELECT carewatch_ensure_partitions(now() - interval '1 month', now() + interval '3 months')"
        ).fetchone()
    return int(row[0]) if row else 0


def apply_retention(conn: psycopg.Connection, retention_days: int) -> int:
    """Drop months of readings older than ``retention_days``; returns how many partitions were dropped."""
    with conn.transaction():
        row = conn.execute("SELECT carewatch_apply_retention(make_interval(days => %s))", (retention_days,)).fetchone()
    return int(row[0]) if row else 0
