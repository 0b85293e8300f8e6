"""Set-history memory in a scorer replica (issue 19, part 0): each resident's observation sets older than
``FULL_SETS`` kept between evaluations, so an evaluation reads only the sets that crossed the 28 h cut since; and
their readings of the last 26 h, recent sets and round plans, re-read and re-planned only where they changed
("Inputs" below).

The sets older than ``FULL_SETS`` feed only the baselines and trends (``SetColumns``), and the scorer itself never
changes a set that old: its round plans touch only sets of the last ``ROUND_LOOKBACK`` + 1 h (see
``reload_recent_sets``). Every other writer of observation_sets (a staff set saved through the API, a correction,
a set deleted or its readings moved, a backfill) goes through ``scoring/observation_sets.py``, which bumps the
resident's ``observation_set_versions`` row in the writer's own transaction (``bump_set_versions``).

An entry holds a resident's sets in ``(now - HISTORY, cut]`` as the packed records ``fetch_records`` reads, the
``cut`` (``now - FULL_SETS`` of the evaluation that stored it) and the version read *before* those sets. A batch:

1. reads the versions of its residents (one indexed query), **before** any set;
2. one query reads, per resident, the sets in ``(lo, now - FULL_SETS]``: ``lo`` is a hit's cut (only the slice that
   crossed the cut since), or ``now - HISTORY`` for a miss (an unknown resident, another version, or a ``now``
   whose cut is earlier than the entry's: a clock gone back);
3. a hit's entry less its sets no longer inside ``HISTORY`` plus the slice are the resident's older sets (the
   entries' records joined as they are, with one concatenate of their bytes); a resident's result is stored again
   (with the version read in step 1 and the new cut) unless it is a hit with no set gone and none new, whose entry
   just takes the new cut: its records are then exactly the sets in ``(now - HISTORY, cut]``.

Races (READ COMMITTED: each statement sees what was committed when it started). A writer commits its sets and
its version bump together. If it commits before step 1, the version differs: a reload. If it commits between
steps 1 and 2, this evaluation may take the entry (old version, old sets) and also see the new sets in step 2,
but what it stores carries the version read in step 1, older than the committed one: the next evaluation
reloads. So a race can only cause a reload, never a hit on sets older than what the stored version stands for;
and the writer's own evaluation (the API evaluates after saving a set, the kits route after moving readings)
follows anyway. The one assumption: no evaluation runs with a ``now`` more than an hour before a replica's
load time (the scorer's round plans then stay clear of its cut). The scorer's clock never goes back (wall time,
or a data clock that follows received_at), and the API evaluates at wall time.

Inputs (H-BASE-07): with ``inputs`` (the default), each resident's readings of the round window (``load_vitals``)
and sets of the last ``FULL_SETS`` (whole, ``load_recent_sets``) are kept too, each row with a 128-bit digest of
its row version (``_DIGEST``). No version covers them: the scorer's own round plans rewrite recent sets, and so
does any other evaluator (the API after a staff set or a moved reading), and readings are written by ingest and
re-attributed by the kits routes. So a batch reads, per resident, the fingerprint of the rows now in each window
(count and summed digests: one query for the readings, one for the sets); the remembered rows less those that left
the window must give the same, else the resident's rows are read again (``load_inputs``). A hit stands for the
rows as the fingerprint's statement saw them, the same snapshot a plain read would have taken; any change by any
writer is a new row version, which changes the fingerprint. What the scorer writes is read back in its own
transaction (``reload_remembered_sets``); a batch rolled back is forgotten by the engine. The round plans made
from the inputs are kept with them, keyed by the rows' digests in order and the resident's scale 2, oxygen
prescription and the planning mode (``plan_key``): ``rules.build_rounds`` and ``rules.plan_observation_sets`` read
nothing else (no clock), so the same key gives the same plans.

Bounded: at most ``max_residents`` residents' entries of each kind (least recently used dropped first; ~4-6 kB a
resident with 15 days of sets, plus the inputs as Python objects: ~20 readings and ~4 whole sets). A replica drops
the entries of the sites of buckets it gives up (``retain_sites``). Callers that pass no memory (the API, the tick,
tests) load as before (``load_light_sets``, ``load_vitals``, ``load_recent_sets``); ``tests/scoring/test_memory.py``
holds the two equal over a sequence of evaluations (docs/clinical-safety.md, H-BASE-06, H-BASE-07).
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import numpy as np
import psycopg
from numpy.typing import NDArray

from carewatch.db import text_array
from carewatch.scoring.loading import (
    FULL_SETS,
    FUTURE_SLACK,
    HISTORY,
    ROUND_LOOKBACK,
    VITAL_COLUMNS,
    VITALS_WHERE,
    SetColumns,
    add_newest_older,
    fetch_records,
    light_columns,
    recent_set_rows,
    replace_recent_sets,
    stored_set,
    vital_reading,
    vitals_params,
)
from carewatch.scoring.rules import ResidentFacts, SetPlan, StoredSet, VitalReading

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The light columns and ``taken_at`` in whole microseconds (exact: what the ``HISTORY`` cut is compared with).
_MEMORY_COLUMNS = [*light_columns(), ("taken_us", "(extract(epoch FROM o.taken_at) * 1000000)::int8", "int8")]


def _micros(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


@dataclass
class _Entry:
    version: int
    site_id: str
    cut: datetime
    records: NDArray[np.void]  # packed rows of _MEMORY_COLUMNS, in (taken, obs_id) order; "row" is meaningless


#: A row version's digest: its table, place and writing transaction (``tableoid``, ``ctid``, ``xmin``) hashed with
#: two seeds (128 bits). PostgreSQL writes every insert and every update (of any column, by any writer) as a new row
#: version with a new (ctid, xmin): summed per resident with the row count, the digests are the fingerprint of a
#: window of rows. (Hashing the rows' whole text did the same at ~10x the cost: jsonb and timestamps as text.)
_DIGEST = ("hashtextextended({row}.tableoid::text || {row}.ctid::text || {row}.xmin::text, 0), "
           "hashtextextended({row}.tableoid::text || {row}.ctid::text || {row}.xmin::text, 1)")
#: The columns added to a remembered row: its time in whole microseconds (what the windows are cut by), its digest.
_EXTRA = ", (extract(epoch FROM {row}.{time}) * 1000000)::int8, " + _DIGEST
Digest = tuple[int, int]
Fingerprint = tuple[int, int, int]
T = TypeVar("T")


@dataclass
class _Rows(Generic[T]):
    """Remembered rows in time order, each with its time (microseconds) and digest."""
    items: list[T] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    digests: list[Digest] = field(default_factory=list)
    _fingerprint: Fingerprint | None = None  # computed once: most rows stay the same for many evaluations
    columns: SetColumns | None = None  # of sets: their columns (``row`` 0), built once, dropped with any change

    def add(self, item: T, row: Sequence[Any]) -> None:
        """``item`` read from ``row``, whose last columns are ``_EXTRA``'s."""
        self._fingerprint = self.columns = None
        self.items.append(item)
        self.times.append(int(row[-3]))
        self.digests.append((int(row[-2]), int(row[-1])))

    def after(self, low: int, high: int | None = None) -> _Rows[T]:
        """The rows with a time in ``(low, high]`` (a slice: they are in time order)."""
        i = bisect_right(self.times, low)
        j = len(self.times) if high is None else bisect_right(self.times, high)
        if i == 0 and j == len(self.times):
            return self
        return _Rows(self.items[i:j], self.times[i:j], self.digests[i:j])

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            self._fingerprint = (len(self.digests), sum(d[0] for d in self.digests), sum(d[1] for d in self.digests))
        return self._fingerprint


@dataclass
class _Inputs:
    """A resident's evaluation inputs as last read: the vital readings of the round window and the recent sets
    (whole), and the round plans made from them (``plan_key`` -> ``plans``)."""
    site_id: str
    readings: _Rows[VitalReading]
    sets: _Rows[StoredSet]
    plan_key: tuple[object, ...] | None = None
    plans: list[SetPlan] | None = None
    newest_stored: datetime | None = None


class SetHistoryMemory:
    """One scorer process's memory of its residents' older sets and, with ``inputs``, of their readings and recent
    sets (see the module docstring). Not thread-safe: the evaluation loop alone uses it."""

    def __init__(self, max_residents: int, *, inputs: bool = True) -> None:
        if max_residents < 0:
            raise ValueError("max_residents must be >= 0")
        self.max_residents = max_residents
        self.inputs = inputs
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inputs: OrderedDict[str, _Inputs] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.readings_reloaded = 0
        self.sets_reloaded = 0
        self.plans_reused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, resident_id: object) -> bool:
        return resident_id in self._entries

    def _get(self, resident_id: str) -> _Entry | None:
        entry = self._entries.get(resident_id)
        if entry is not None:
            self._entries.move_to_end(resident_id)
        return entry

    def _put(self, resident_id: str, entry: _Entry) -> None:
        self._entries[resident_id] = entry
        self._entries.move_to_end(resident_id)
        while len(self._entries) > self.max_residents:
            self._entries.popitem(last=False)

    def _put_inputs(self, resident_id: str, entry: _Inputs) -> None:
        self._inputs[resident_id] = entry
        self._inputs.move_to_end(resident_id)
        while len(self._inputs) > self.max_residents:
            self._inputs.popitem(last=False)

    def forget(self, resident_ids: Iterable[str]) -> None:
        for rid in resident_ids:
            self._entries.pop(rid, None)
            self._inputs.pop(rid, None)

    def retain_sites(self, sites: Collection[str]) -> int:
        """Drop the entries of residents of every other site (the buckets this replica gave up). Returns how many
        were dropped."""
        gone = {rid for rid, e in self._entries.items() if e.site_id not in sites}
        gone |= {rid for rid, e in self._inputs.items() if e.site_id not in sites}
        self.forget(gone)
        return len(gone)

    def clear(self) -> None:
        self._entries.clear()
        self._inputs.clear()

    def known_plans(self, resident_id: str, key: tuple[object, ...]) -> tuple[list[SetPlan], datetime | None] | None:
        """The round plans (and newest stored_at of the rounds' readings) made for this resident from exactly the
        inputs ``plan_key`` names, if this replica made them; else None."""
        entry = self._inputs.get(resident_id)
        if entry is None or entry.plans is None or entry.plan_key != key:
            return None
        self.plans_reused += 1
        return entry.plans, entry.newest_stored

    def remember_plans(self, resident_id: str, key: tuple[object, ...], plans: list[SetPlan],
                       newest_stored: datetime | None) -> None:
        entry = self._inputs.get(resident_id)
        if entry is not None:
            entry.plan_key, entry.plans, entry.newest_stored = key, plans, newest_stored

    def recent_columns(self, resident_id: str, sets: Sequence[StoredSet]) -> SetColumns | None:
        """``SetColumns.of_sets`` of ``sets`` (``row`` 0) if they are the very recent sets this memory holds for the
        resident (the same objects, in order: ``StoredSet`` is frozen), built once for as long as those rows stay;
        else None."""
        entry = self._inputs.get(resident_id)
        if entry is None:
            return None
        remembered = entry.sets
        if len(remembered.items) != len(sets) or not all(map(operator.is_, remembered.items, sets)):
            return None
        if remembered.columns is None:
            remembered.columns = SetColumns.of_sets((0, s) for s in remembered.items)
        return remembered.columns

    def plan_key(self, resident_id: str, now: datetime, *extra: object) -> tuple[object, ...] | None:
        """What a resident's round plans are made from (``rules.build_rounds`` of the readings of the round window,
        ``rules.plan_observation_sets`` of those rounds and the sets of the last ``ROUND_LOOKBACK`` + 1 h), as the
        digests of those rows in their order, plus ``extra`` (the resident's scale 2 and oxygen, ...): equal keys,
        equal plans. None when the memory holds no inputs for the resident."""
        entry = self._inputs.get(resident_id)
        if entry is None:
            return None
        since = _micros(now - ROUND_LOOKBACK - timedelta(hours=1))
        return (tuple(entry.readings.digests), tuple(entry.sets.after(since).digests), *extra)


def read_set_versions(conn: psycopg.Connection, resident_ids: Sequence[str]) -> dict[str, int]:
    """Each resident's ``observation_set_versions`` (0 when no row: nothing but round plans ever wrote)."""
    return dict(conn.execute(
        "SELECT resident_id, version FROM observation_set_versions WHERE resident_id = ANY(%s::text[])",
        (text_array(resident_ids),)).fetchall())


def load_older_sets(conn: psycopg.Connection, residents: Sequence[ResidentFacts], now: datetime,
                    memory: SetHistoryMemory) -> SetColumns:
    """What ``load_light_sets(conn, [r.resident_id for r in residents], now)`` returns, from ``memory`` where it
    is current, plus the sets that crossed the cut since (one query for the batch); see the module docstring."""
    ids = [r.resident_id for r in residents]
    versions = read_set_versions(conn, ids)  # before the sets: a race can only cause a reload
    cut, oldest = now - FULL_SETS, now - HISTORY
    hits: dict[int, _Entry] = {}
    lows: list[datetime] = []
    for i, rid in enumerate(ids):
        entry = memory._get(rid)
        if entry is not None and entry.version == versions.get(rid, 0) and entry.cut <= cut:
            hits[i] = entry
            lows.append(max(entry.cut, oldest))
        else:
            lows.append(oldest)
    memory.hits += len(hits)
    memory.misses += len(ids) - len(hits)
    fresh = fetch_records(
        conn, _MEMORY_COLUMNS,
        "unnest(%s::text[], %s::timestamptz[]) WITH ORDINALITY AS b(rid, lo, i) "
        "JOIN observation_sets o ON o.resident_id = b.rid WHERE o.taken_at > b.lo AND o.taken_at <= %b",
        (text_array(ids), lows, cut))
    fresh_row = fresh["row"].astype(np.int64)
    fresh_counts = np.bincount(fresh_row, minlength=len(ids))
    oldest_us = _micros(oldest)
    # hits' records as they are (no repacking); only the entries that changed are stored again
    kept: list[NDArray[np.void]] = []
    kept_rows: list[int] = []
    unchanged: set[int] = set()
    for i, entry in hits.items():
        inside = entry.records["taken_us"] > oldest_us
        if inside.all():
            kept.append(entry.records)
            if not fresh_counts[i]:  # the same sets: the entry stays as it is (no copy), with the new cut
                unchanged.add(i)
                entry.cut, entry.site_id = cut, residents[i].site_id
        else:
            kept.append(entry.records[inside])
        kept_rows.append(i)
    records = _concatenate(fresh, kept)
    row = np.concatenate([fresh_row, np.repeat(np.array(kept_rows, dtype=np.int64), [len(k) for k in kept])])
    order = np.lexsort((records["obs_id"], records["taken"], row))
    records, row = records[order], row[order]
    bounds = np.searchsorted(row, np.arange(len(ids) + 1))
    for i, r in enumerate(residents):
        if i not in unchanged:
            memory._put(r.resident_id, _Entry(versions.get(r.resident_id, 0), r.site_id, cut,
                                              records[bounds[i]:bounds[i + 1]].copy()))
    return SetColumns.from_records(records, row)


def _concatenate(first: NDArray[np.void], rest: Sequence[NDArray[np.void]]) -> NDArray[np.void]:
    """``np.concatenate([first, *rest])`` of packed records of one dtype, as raw bytes: NumPy would otherwise
    promote the structured dtype field by field for every array (~30 us each, per resident of a batch)."""
    if not rest:
        return first
    raw = np.dtype((np.void, first.dtype.itemsize))
    joined = np.concatenate([np.ascontiguousarray(a).view(raw) for a in (first, *rest)])
    return joined.view(first.dtype)


# ------------------------------------------------------------------------------------------------------------
# Readings and recent sets (the evaluation's inputs)
# ------------------------------------------------------------------------------------------------------------
def _fingerprints(conn: psycopg.Connection, sql: str, params: Sequence[object]) -> dict[str, Fingerprint]:
    return {rid: (count, int(a), int(b)) for rid, count, a, b in conn.execute(sql, params).fetchall()}


def load_inputs(conn: psycopg.Connection, residents: Sequence[ResidentFacts], now: datetime,
                memory: SetHistoryMemory, older: SetColumns
                ) -> tuple[dict[str, list[VitalReading]], dict[str, list[StoredSet]]]:
    """What ``load_vitals`` and ``load_recent_sets`` return, from ``memory`` where its rows are still those in the
    database: one query a batch reads, per resident, the fingerprint (row count and summed 128-bit digests of
    the row versions) of the readings in the round window, one more that of the recent sets; a resident whose
    remembered rows, less those that left the window, have another fingerprint is read again (see the module
    docstring). ``older``: the batch's older sets (``load_older_sets``), for a resident with no recent set."""
    ids = [r.resident_id for r in residents]
    readings_now = _fingerprints(
        conn, f"SELECT subject_id, count(*), sum(h0), sum(h1) FROM (SELECT subject_id, {_DIGEST.format(row='r')} "
        f"FROM readings r WHERE {VITALS_WHERE}) AS d(subject_id, h0, h1) GROUP BY subject_id",
        vitals_params(ids, now))
    sets_now = _fingerprints(
        conn, f"SELECT resident_id, count(*), sum(h0), sum(h1) FROM (SELECT resident_id, {_DIGEST.format(row='o')} "
        "FROM observation_sets o WHERE resident_id = ANY(%s::text[]) AND taken_at > %s AND taken_at <= %s) "
        "AS d(resident_id, h0, h1) GROUP BY resident_id",
        (text_array(ids), now - FULL_SETS, now + FUTURE_SLACK))
    low, high, recent = _micros(now - ROUND_LOOKBACK), _micros(now + FUTURE_SLACK), _micros(now - FULL_SETS)
    none = (0, 0, 0)
    stale_readings: list[str] = []
    stale_sets: list[str] = []
    entries: dict[str, _Inputs] = {}
    for r in residents:
        rid = r.resident_id
        old = memory._inputs.get(rid)
        if old is None:
            entries[rid] = _Inputs(r.site_id, _Rows(), _Rows())
            stale_readings.append(rid)
            stale_sets.append(rid)
            continue
        # the plans made before stay with the entry: they are reused only for a key of the same rows (``plan_key``)
        entry = entries[rid] = _Inputs(r.site_id, old.readings.after(low, high), old.sets.after(recent, high),
                                       old.plan_key, old.plans, old.newest_stored)
        if entry.readings.fingerprint() != readings_now.get(rid, none):
            entry.readings = _Rows()
            stale_readings.append(rid)
        if entry.sets.fingerprint() != sets_now.get(rid, none):
            entry.sets = _Rows()
            stale_sets.append(rid)
    memory.readings_reloaded += len(stale_readings)
    memory.sets_reloaded += len(stale_sets)
    if stale_readings:
        for row in conn.execute(
                f"SELECT {VITAL_COLUMNS}{_EXTRA.format(row='r', time='measured_at')} FROM readings r "
                f"WHERE {VITALS_WHERE} ORDER BY measured_at, gateway_id, seq",
                vitals_params(stale_readings, now), binary=True).fetchall():  # (as load_vitals reads them)
            entries[row[0]].readings.add(vital_reading(row), row)
    if stale_sets:
        for row in recent_set_rows(conn, stale_sets, now, extra=_EXTRA.format(row="o", time="taken_at")):
            rid, stored = stored_set(row)
            entries[rid].sets.add(stored, row)
    for rid, entry in entries.items():
        memory._put_inputs(rid, entry)
    vitals = {rid: list(entries[rid].readings.items) for rid in ids}
    history = {rid: list(entries[rid].sets.items) for rid in ids}
    add_newest_older(conn, history, ids, older)
    return vitals, history


def reload_remembered_sets(conn: psycopg.Connection, history: dict[str, list[StoredSet]],
                           resident_ids: Sequence[str], now: datetime, memory: SetHistoryMemory) -> None:
    """``loading.reload_recent_sets`` (after the scorer wrote these residents' rounds), keeping what it reads in
    ``memory`` too."""
    if not resident_ids:
        return
    remembered: dict[str, _Rows[StoredSet]] = {rid: _Rows() for rid in resident_ids}
    for row in recent_set_rows(conn, resident_ids, now, extra=_EXTRA.format(row="o", time="taken_at")):
        rid, stored = stored_set(row)
        remembered[rid].add(stored, row)
    for rid, sets in remembered.items():
        entry = memory._inputs.get(rid)
        if entry is not None:
            entry.sets = sets
    replace_recent_sets(conn, history, {rid: list(sets.items) for rid, sets in remembered.items()}, now)
