"""Loading what the resident rules need: residents, their observation sets (15 days) and device vitals (26 h).

Reads only; the sets are written by ``scoring/observation_sets.py``. The last ``FULL_SETS`` of sets come as
``StoredSet`` objects (round planning, soft signs, the newest set's alert text); the older ones only feed
baselines and trends, so they come as columns (``SetColumns``): one binary COPY of fixed-width numbers read by
NumPy in one call, no Python object per set (issue 19: that per-set decoding was most of an evaluation's cost).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray

from carewatch.db import one, text_array
from carewatch.scoring.news2 import PARAMETERS as NEWS2_PARAMETERS
from carewatch.scoring.rules import NUMERIC_SET_FIELDS, VITAL_METRICS, ResidentFacts, StoredSet, VitalReading

#: Device readings this far back are (re)grouped into rounds on every evaluation (late uploads included).
ROUND_LOOKBACK = timedelta(hours=26)
#: Observation-set history for baselines and trends.
HISTORY = timedelta(days=15)
#: Readings stamped up to this far after ``now`` still count (device clocks run a little fast).
FUTURE_SLACK = timedelta(minutes=10)


_RESIDENT_COLUMNS = """r.resident_id, r.site_id, r.display_name, r.date_of_birth, r.obs_per_day, r.monitoring,
    r.baseline_confused, r.scale2, r.scale2_reason, r.gp_practice, s.name, r.created_at, r.oxygen_prescribed,
    r.oxygen_flow_lpm"""


def load_residents(conn: psycopg.Connection, where: str, params: Sequence[Any]) -> list[ResidentFacts]:
    rows = conn.execute(
        f"SELECT {_RESIDENT_COLUMNS} FROM residents r JOIN sites s USING (site_id) WHERE {where} "
        "ORDER BY r.site_id, r.resident_id", params,
    ).fetchall()
    return [ResidentFacts(*row) for row in rows]


#: JSON columns come as text for ``json.loads``: psycopg's jsonb loader took ~50 us a set (3x the text and parse).
_SET_COLUMNS = """obs_id, resident_id, taken_at, source, round_key, respiration_rate, spo2, systolic_bp, pulse,
    temperature, consciousness, on_oxygen, spo2_scale, soft_signs, inputs::text, recorded_by, score, risk, complete,
    missing, subscores::text, note"""
#: Older sets only feed baselines and trends: their ``inputs`` (provenance JSON) are not loaded and their subscores
#: come as plain integers (JSON decoding 15 days of sets on every evaluation was most of its cost).
_SUBSCORE_COLUMNS = ", ".join(f"(subscores->>'{name}')::int" for name in NEWS2_PARAMETERS)
_LIGHT_SET_COLUMNS = f"""obs_id, resident_id, taken_at, source, round_key, respiration_rate, spo2, systolic_bp,
    pulse, temperature, consciousness, on_oxygen, spo2_scale, soft_signs, NULL, recorded_by, score, risk, complete,
    missing, NULL, note, {_SUBSCORE_COLUMNS}"""
#: Sets younger than this are loaded whole (round planning, soft signs, the newest set's alert text).
FULL_SETS = ROUND_LOOKBACK + timedelta(hours=2)
#: Whole sets for the evaluation: the subscores, which only the baselines read, as integers rather than JSON.
_RECENT_SET_COLUMNS = _SET_COLUMNS.replace("subscores::text,", "NULL,") + f", {_SUBSCORE_COLUMNS}"
_RECENT_SET_WIDTH = 22 + len(NEWS2_PARAMETERS)


def _stored_set(row: Sequence[Any]) -> tuple[str, StoredSet]:
    (obs_id, resident_id, taken_at, source, round_key, rr, spo2, sbp, pulse, temp, acvpu, oxygen, scale, soft,
     inputs, by, score, risk, complete, missing, subscores, note) = row[:22]
    if len(row) > 22:  # a light row: subscores as columns
        subscores = dict(zip(NEWS2_PARAMETERS, row[22:], strict=True))
    elif subscores is not None:
        subscores = json.loads(subscores)
    if inputs is not None:
        inputs = json.loads(inputs)
    values = dict(zip(NUMERIC_SET_FIELDS, (rr, spo2, sbp, pulse, temp), strict=True))
    return resident_id, StoredSet(
        obs_id, taken_at, source, round_key, values, acvpu.strip() if acvpu else None, bool(oxygen), scale,
        tuple(soft or ()), inputs or {}, by, score, risk, complete, tuple(missing or ()), subscores or {}, note,
    )


def load_sets(conn: psycopg.Connection, resident_ids: Sequence[str], now: datetime) -> dict[str, list[StoredSet]]:
    out: dict[str, list[StoredSet]] = {rid: [] for rid in resident_ids}
    recent = now - FULL_SETS
    rows = conn.execute(
        f"SELECT {_LIGHT_SET_COLUMNS} FROM observation_sets WHERE resident_id = ANY(%b) AND taken_at > %s "
        "AND taken_at <= %s ORDER BY taken_at, obs_id",
        (list(resident_ids), now - HISTORY, recent),
    ).fetchall()
    rows += conn.execute(
        f"SELECT {_SET_COLUMNS} FROM observation_sets WHERE resident_id = ANY(%b) AND taken_at > %s "
        "AND taken_at <= %s ORDER BY taken_at, obs_id",
        (list(resident_ids), recent, now + FUTURE_SLACK),
    ).fetchall()
    for row in rows:
        rid, stored = _stored_set(row)
        out[rid].append(stored)
    _newest_whole(conn, out, recent)
    return out


def _newest_whole(conn: psycopg.Connection, out: dict[str, list[StoredSet]], recent: datetime) -> None:
    """A resident's newest set is loaded whole even when it is old (its alert text names what was set aside)."""
    stale = {sets[-1].obs_id: rid for rid, sets in out.items() if sets and sets[-1].taken_at <= recent}
    if stale:
        for row in conn.execute(f"SELECT {_SET_COLUMNS} FROM observation_sets WHERE obs_id = ANY(%s)",
                                (list(stale),)).fetchall():
            rid, stored = _stored_set(row)
            out[rid][-1] = stored


def recent_set_rows(conn: psycopg.Connection, resident_ids: Sequence[str], now: datetime,
                    extra: str = "") -> list[tuple[Any, ...]]:
    """The rows of these residents' sets of the last ``FULL_SETS`` (to ``now + FUTURE_SLACK``), in (time, id) order,
    as ``_stored_set`` decodes them; ``extra``: more columns after those of ``o`` (``scoring/memory.py``'s digests)."""
    return conn.execute(
        f"SELECT {_RECENT_SET_COLUMNS}{extra} FROM observation_sets o WHERE resident_id = ANY(%s::text[]) "
        "AND taken_at > %s AND taken_at <= %s ORDER BY taken_at, obs_id",
        (text_array(resident_ids), now - FULL_SETS, now + FUTURE_SLACK)).fetchall()


def stored_set(row: Sequence[Any]) -> tuple[str, StoredSet]:
    """A row of ``recent_set_rows`` (its first columns) as (resident, set)."""
    return _stored_set(row[:_RECENT_SET_WIDTH])


def reload_recent_sets(conn: psycopg.Connection, history: dict[str, list[StoredSet]], resident_ids: Sequence[str],
                       now: datetime) -> None:
    """``history`` as ``load_sets`` would load it now, after the scorer wrote these residents' device rounds: only
    their recent sets (loaded whole) are read again. The scorer changes no set older than its round look-back
    (``ROUND_LOOKBACK`` + 1 h < ``FULL_SETS``), so the older, light part is still what is stored."""
    if not resident_ids:
        return
    fresh: dict[str, list[StoredSet]] = {rid: [] for rid in resident_ids}
    for row in recent_set_rows(conn, resident_ids, now):
        rid, stored = _stored_set(row)
        fresh[rid].append(stored)
    replace_recent_sets(conn, history, fresh, now)


def replace_recent_sets(conn: psycopg.Connection, history: dict[str, list[StoredSet]],
                        fresh: dict[str, list[StoredSet]], now: datetime) -> None:
    """``history``'s recent sets of the residents in ``fresh`` replaced by theirs (just read again); a resident left
    with none gets their newest older set whole."""
    recent = now - FULL_SETS
    for rid, sets in fresh.items():
        history[rid] = [s for s in history.get(rid, []) if s.taken_at <= recent] + sets
    _newest_whole(conn, {rid: history[rid] for rid, sets in fresh.items() if not sets}, recent)


#: The readings' columns ``load_vitals`` reads (a ``VitalReading`` each, with the subject first) and its filter.
VITAL_COLUMNS = "subject_id, metric, value, measured_at, device_id, NULLIF(flags, '{}'), stored_at"  # (no flags: NULL,
# not an empty array to parse: most readings have none)
VITALS_WHERE = ("subject_kind = 'resident' AND subject_id = ANY(%s::text[]) AND metric = ANY(%s::text[]) "
                "AND measured_at > %s AND measured_at <= %s")


def vitals_params(resident_ids: Sequence[str], now: datetime) -> tuple[Any, ...]:
    """The parameters of ``VITALS_WHERE``: the residents' vital metrics in ``(now - ROUND_LOOKBACK, now +
    FUTURE_SLACK]``."""
    return (text_array(resident_ids), list(VITAL_METRICS), now - ROUND_LOOKBACK, now + FUTURE_SLACK)


def vital_reading(row: Sequence[Any]) -> VitalReading:
    """A row of ``VITAL_COLUMNS`` (its subject left out) as a ``VitalReading``."""
    _, metric, value, measured_at, device_id, flags, stored_at = row[:7]
    return VitalReading(metric, value, measured_at, device_id, tuple(flags) if flags else (), stored_at)


def load_vitals(conn: psycopg.Connection, resident_ids: Sequence[str], now: datetime) -> dict[str, list[VitalReading]]:
    out: dict[str, list[VitalReading]] = {rid: [] for rid in resident_ids}
    # ordered to the last column of the key: readings measured at the same instant come in one order on every path;
    # in binary (the same values: float8, timestamptz and text[] are exact either way; ~1/3 less client time)
    for row in conn.execute(f"SELECT {VITAL_COLUMNS} FROM readings WHERE {VITALS_WHERE} "
                            "ORDER BY measured_at, gateway_id, seq", vitals_params(resident_ids, now),
                            binary=True).fetchall():
        out[row[0]].append(vital_reading(row))
    return out


# ------------------------------------------------------------------------------------------------------------
# Sets as columns (baselines and trends)
# ------------------------------------------------------------------------------------------------------------
#: NEWS2 parameters that are not numeric set fields (air or oxygen, consciousness): the baselines use their subscores.
SUBSCORE_ONLY: tuple[str, ...] = tuple(name for name in NEWS2_PARAMETERS if name not in NUMERIC_SET_FIELDS)


@dataclass(frozen=True, eq=False)
class SetColumns:
    """Observation sets of a batch of residents as columns, one entry per set, ordered by ``row`` (the resident's
    index in the batch), time and id: what the baselines read, without a Python object per set. Missing values
    (and scores, subscores) are NaN."""

    row: NDArray[np.int64]
    obs_id: NDArray[np.int64]
    taken: NDArray[np.float64]  # seconds since the epoch
    values: dict[str, NDArray[np.float64]]  # NUMERIC_SET_FIELDS
    on_oxygen: NDArray[np.bool_]
    score: NDArray[np.float64]
    complete: NDArray[np.bool_]
    subscores: dict[str, NDArray[np.float64]]  # SUBSCORE_ONLY

    def select(self, keep: NDArray[np.bool_] | NDArray[np.intp]) -> SetColumns:
        """The entries a mask keeps (or an index array picks, in its order)."""
        return SetColumns(self.row[keep], self.obs_id[keep], self.taken[keep],
                          {k: v[keep] for k, v in self.values.items()}, self.on_oxygen[keep], self.score[keep],
                          self.complete[keep], {k: v[keep] for k, v in self.subscores.items()})

    @staticmethod
    def join(parts: Sequence[SetColumns], row: NDArray[np.int64] | None = None) -> SetColumns:
        """The parts together, in (row, time, id) order; ``row``: the rows of the parts' entries, all together, if
        not their own (parts kept with no resident index)."""
        def cat(arrays: Iterable[NDArray[Any]]) -> NDArray[Any]:
            return np.concatenate(list(arrays))

        whole = SetColumns(cat(p.row for p in parts) if row is None else row, cat(p.obs_id for p in parts),
                           cat(p.taken for p in parts),
                           {k: cat(p.values[k] for p in parts) for k in NUMERIC_SET_FIELDS},
                           cat(p.on_oxygen for p in parts), cat(p.score for p in parts),
                           cat(p.complete for p in parts),
                           {k: cat(p.subscores[k] for p in parts) for k in SUBSCORE_ONLY})
        order = np.lexsort((whole.obs_id, whole.taken, whole.row))
        return whole.select(order)

    @staticmethod
    def of_sets(sets: Iterable[tuple[int, StoredSet]]) -> SetColumns:
        """(row, set) pairs as columns (the few recent sets loaded whole)."""
        pairs = list(sets)

        def floats(get: Any) -> NDArray[np.float64]:
            return np.array([np.nan if (v := get(s)) is None else float(v) for _, s in pairs], dtype=np.float64)

        return SetColumns(
            np.array([row for row, _ in pairs], dtype=np.int64),
            np.array([-1 if s.obs_id is None else s.obs_id for _, s in pairs], dtype=np.int64),
            np.array([s.taken_at.timestamp() for _, s in pairs], dtype=np.float64),
            {name: floats(lambda s, n=name: s.values.get(n)) for name in NUMERIC_SET_FIELDS},
            np.array([bool(s.on_oxygen) for _, s in pairs], dtype=bool),
            floats(lambda s: s.score),
            np.array([bool(s.complete) for _, s in pairs], dtype=bool),
            {name: floats(lambda s, n=name: s.subscores.get(n)) for name in SUBSCORE_ONLY},
        )

    @staticmethod
    def from_records(records: NDArray[Any], row: NDArray[np.int64]) -> SetColumns:
        """Packed rows of ``_LIGHT_COLUMNS`` (``fetch_records``) as columns, in their order, ``row`` given."""
        return SetColumns(
            row, records["obs_id"].astype(np.int64), records["taken"].astype(np.float64),
            {name: decimal_floats(records[name]) for name in NUMERIC_SET_FIELDS},
            records["on_oxygen"].astype(bool), records["score"].astype(np.float64), records["complete"].astype(bool),
            {name: records[f"sub_{name}"].astype(np.float64) for name in SUBSCORE_ONLY})

    def padded(self, rows: int, keep: NDArray[np.bool_], *columns: NDArray[Any],
               fill: float | bool = np.nan) -> list[NDArray[Any]]:
        """Each column's kept entries as a 2-D array, one row per resident (``rows``), in time order, padded with
        ``fill``: what ``baselines.pad_rows`` makes of per-resident lists (at least one column wide)."""
        row = self.row[keep]
        counts = np.bincount(row, minlength=rows)
        width = int(counts.max(initial=0)) or 1
        position = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
        out = []
        for column in columns:
            grid = np.full((rows, width), fill, dtype=column.dtype)
            grid[row, position] = column[keep]
            out.append(grid)
        return out


#: Column kinds for ``fetch_records``: the SQL function sending the value in binary, and its NumPy type.
_SEND = {"int8": ("int8send", ">i8"), "float4": ("float4send", ">f4"), "float8": ("float8send", ">f8"),
         "bool": ("boolsend", "?")}


def decimal_floats(values: NDArray[np.float32]) -> NDArray[np.float64]:
    """``real`` values as the text protocol gives them: the double nearest each one's shortest decimal (37.2, not
    37.20000076...), so rules comparing against thresholds see the same numbers on every path. Vectorised for
    values below 512 with up to 4 decimals (every vital sign: a real's rounding interval there is narrower than
    1e-4, so the nearest 4-decimal number is the only one in it); any other value goes through its shortest text,
    one by one."""
    wide = values.astype(np.float64)
    with np.errstate(invalid="ignore"):
        out = np.round(wide, 4)
        exact = ((out.astype(np.float32) == values) & (np.abs(wide) < 512)) | np.isnan(values)
    for i in np.flatnonzero(~exact):
        out[i] = float(str(values[i]))
    return out


def fetch_records(conn: psycopg.Connection, columns: Sequence[tuple[str, str, str]], source: str,
                  params: Sequence[Any]) -> NDArray[Any]:
    """The rows of ``SELECT <columns> FROM <source>`` as a NumPy record array, in one value: the server packs each
    row's fixed-width binary values into one bytea (``string_agg``), read with one ``np.frombuffer`` - no
    Python object per row or per value (a COPY would still hand over one message per row). ``columns``:
    (name, SQL expression, kind: int8 | float8 | bool); every expression must never be NULL (a NULL would drop
    its row: the row count is checked, so that fails loudly)."""
    packed = " || ".join(f"{_SEND[kind][0]}(({expr})::{kind})" for _, expr, kind in columns)
    count, blob = one(conn.execute(f"SELECT count(*), coalesce(string_agg({packed}, ''::bytea), ''::bytea) "
                                   f"FROM {source}", params, binary=True))
    dtype = np.dtype([(name, _SEND[kind][1]) for name, _, kind in columns])
    if len(blob) != count * dtype.itemsize:
        raise ValueError(f"{count} rows but {len(blob)} bytes of {dtype.itemsize} each: a NULL value in {columns}?")
    return np.frombuffer(blob, dtype=dtype)


_LIGHT_COLUMNS: list[tuple[str, str, str]] = [
    ("row", "b.i - 1", "int8"), ("obs_id", "o.obs_id", "int8"), ("taken", "date_part('epoch', o.taken_at)", "float8"),
    # sent as float4 (what is stored); ``decimal_floats`` turns them into the StoredSet path's values
    *((name, f"coalesce(o.{name}, 'NaN')", "float4") for name in NUMERIC_SET_FIELDS),
    ("on_oxygen", "o.on_oxygen", "bool"), ("score", "o.score", "float8"), ("complete", "o.complete", "bool"),
    *((f"sub_{name}", f"coalesce((o.subscores->>'{name}')::float8, 'NaN')", "float8") for name in SUBSCORE_ONLY),
]


def load_light_sets(conn: psycopg.Connection, resident_ids: Sequence[str], now: datetime) -> SetColumns:
    """The sets older than ``FULL_SETS`` (back to ``HISTORY``) of these residents, as columns; ``row`` is the
    resident's index in ``resident_ids``."""
    records = fetch_records(
        conn, _LIGHT_COLUMNS,
        "unnest(%s::text[]) WITH ORDINALITY AS b(rid, i) JOIN observation_sets o ON o.resident_id = b.rid "
        "WHERE o.taken_at > %b AND o.taken_at <= %b",
        (text_array(resident_ids), now - HISTORY, now - FULL_SETS))
    return SetColumns.join([SetColumns.from_records(records, records["row"].astype(np.int64))])


def light_columns() -> list[tuple[str, str, str]]:
    """The packed columns ``load_light_sets`` reads (for ``fetch_records``; ``scoring/memory.py`` adds one)."""
    return list(_LIGHT_COLUMNS)


def load_recent_sets(conn: psycopg.Connection, resident_ids: Sequence[str], now: datetime,
                     older: SetColumns) -> dict[str, list[StoredSet]]:
    """The sets of the last ``FULL_SETS`` loaded whole; a resident with none gets their newest older set (from
    ``older``, the light columns) loaded whole instead (its alert text names what was set aside)."""
    out: dict[str, list[StoredSet]] = {rid: [] for rid in resident_ids}
    for row in recent_set_rows(conn, resident_ids, now):
        rid, stored = _stored_set(row)
        out[rid].append(stored)
    add_newest_older(conn, out, resident_ids, older)
    return out


def add_newest_older(conn: psycopg.Connection, out: dict[str, list[StoredSet]], resident_ids: Sequence[str],
                     older: SetColumns) -> None:
    """Each resident of ``out`` with no recent set gets their newest older set (from ``older``, whose ``row`` is
    the index in ``resident_ids``) loaded whole."""
    if len(older.row):
        last = np.r_[older.row[1:] != older.row[:-1], True]  # the newest older set of each row
        newest = {int(obs): resident_ids[int(row)] for row, obs in zip(older.row[last], older.obs_id[last], strict=True)
                  if not out[resident_ids[int(row)]]}
        if newest:
            for row in conn.execute(f"SELECT {_RECENT_SET_COLUMNS} FROM observation_sets WHERE obs_id = ANY(%b)",
                                    (list(newest),)).fetchall():
                rid, stored = _stored_set(row)
                out[rid].append(stored)
