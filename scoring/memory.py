"""Set-history memory in a scorer replica (issue 19, part 0): each resident's observation sets older than
``FULL_SETS`` kept between evaluations, so an evaluation reads only the sets that crossed the 28 h cut since.

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
3. a hit's entry less its sets no longer inside ``HISTORY`` plus the slice are the resident's older sets; every
   resident's result is stored again (with the version read in step 1 and the new cut).

Races (READ COMMITTED: each statement sees what was committed when it started). A writer commits its sets and
its version bump together. If it commits before step 1, the version differs: a reload. If it commits between
steps 1 and 2, this evaluation may take the entry (old version, old sets) and also see the new sets in step 2,
but what it stores carries the version read in step 1, older than the committed one: the next evaluation
reloads. So a race can only cause a reload, never a hit on sets older than what the stored version stands for;
and the writer's own evaluation (the API evaluates after saving a set, the kits route after moving readings)
follows anyway. The one assumption: no evaluation runs with a ``now`` more than an hour before a replica's
load time (the scorer's round plans then stay clear of its cut). The scorer's clock never goes back (wall time,
or a data clock that follows received_at), and the API evaluates at wall time.

Bounded: at most ``max_residents`` entries (least recently used dropped first; ~4-6 kB a resident with 15 days
of sets). A replica drops the entries of the sites of buckets it gives up (``retain_sites``). Callers that pass
no memory (the API, the tick, tests) load as before (``load_light_sets``); ``tests/scoring/test_memory.py`` holds
the two equal over a sequence of evaluations (docs/clinical-safety.md, H-BASE-06).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
from numpy.typing import NDArray

from carewatch.db import text_array
from carewatch.scoring.loading import FULL_SETS, HISTORY, SetColumns, fetch_records, light_columns
from carewatch.scoring.rules import ResidentFacts

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


class SetHistoryMemory:
    """One scorer process's memory of its residents' older sets (see the module docstring). Not thread-safe:
    the evaluation loop alone uses it."""

    def __init__(self, max_residents: int) -> None:
        if max_residents < 0:
            raise ValueError("max_residents must be >= 0")
        self.max_residents = max_residents
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

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

    def forget(self, resident_ids: Iterable[str]) -> None:
        for rid in resident_ids:
            self._entries.pop(rid, None)

    def retain_sites(self, sites: Collection[str]) -> int:
        """Drop the entries of residents of every other site (the buckets this replica gave up). Returns how many
        were dropped."""
        gone = [rid for rid, e in self._entries.items() if e.site_id not in sites]
        self.forget(gone)
        return len(gone)

    def clear(self) -> None:
        self._entries.clear()


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
    kept = [entry.records for entry in hits.values()]
    records = np.concatenate([fresh, *kept]) if kept else fresh
    row = np.concatenate([fresh["row"].astype(np.int64),
                          *(np.full(len(e.records), i, dtype=np.int64) for i, e in hits.items())])
    inside = records["taken_us"] > _micros(oldest)
    records, row = records[inside], row[inside]
    order = np.lexsort((records["obs_id"], records["taken"], row))
    records, row = records[order], row[order]
    bounds = np.searchsorted(row, np.arange(len(ids) + 1))
    for i, r in enumerate(residents):
        memory._put(r.resident_id, _Entry(versions.get(r.resident_id, 0), r.site_id, cut,
                                          records[bounds[i]:bounds[i + 1]].copy()))
    return SetColumns.from_records(records, row)
