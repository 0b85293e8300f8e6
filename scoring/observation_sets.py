"""The one writer of ``observation_sets``: staff entries (API), device rounds (scorer), backfilled and benchmark
history all store a set the same way, with the NEWS2 result it was scored with.

A set with a ``round_key`` is a device round: one per resident and round, so storing it again updates the row
(``ON CONFLICT (resident_id, round_key)``); a staff entry has none and is always a new row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from carewatch.db import one
from carewatch.scoring.batches import jsonb_safe
from carewatch.scoring.news2 import News2Result

#: A device round stored again (same resident and round key): its values, provenance and score replace the old.
_ON_ROUND_CONFLICT = """ON CONFLICT (resident_id, round_key) DO UPDATE SET taken_at = EXCLUDED.taken_at,
        source = EXCLUDED.source, respiration_rate = EXCLUDED.respiration_rate,
        spo2 = EXCLUDED.spo2, spo2_scale = EXCLUDED.spo2_scale, systolic_bp = EXCLUDED.systolic_bp,
        pulse = EXCLUDED.pulse, temperature = EXCLUDED.temperature, inputs = EXCLUDED.inputs,
        score = EXCLUDED.score, risk = EXCLUDED.risk, subscores = EXCLUDED.subscores,
        complete = EXCLUDED.complete, missing = EXCLUDED.missing"""
_INSERT = """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, round_key,
        respiration_rate, spo2, spo2_scale, on_oxygen, systolic_bp, pulse, consciousness, temperature, soft_signs,
        note, inputs, score, risk, subscores, complete, missing)
    VALUES (%(resident_id)s, %(site_id)s, %(taken_at)s, %(recorded_by)s, %(source)s, %(round_key)s, %(rr)s,
        %(spo2)s, %(scale)s, %(on_oxygen)s, %(sbp)s, %(pulse)s, %(consciousness)s, %(temp)s, %(soft_signs)s,
        %(note)s, %(inputs)s, %(score)s, %(risk)s, %(subscores)s, %(complete)s, %(missing)s)
    """ + _ON_ROUND_CONFLICT


@dataclass(frozen=True)
class ObservationSetRow:
    """One observation set as stored: who took it, its values and its NEWS2 result. Defaults are the columns'."""

    resident_id: str
    site_id: str
    taken_at: datetime
    recorded_by: str  # a username, 'scorer' for device rounds, 'backfill' / 'evaluation' for simulated history
    source: str  # manual | device | mixed
    values: Mapping[str, float | None]  # respiration_rate, spo2, systolic_bp, pulse, temperature
    result: News2Result
    spo2_scale: int = 1
    on_oxygen: bool = False
    consciousness: str | None = None
    soft_signs: Sequence[str] = ()
    note: str | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)  # per parameter: which device or person, when
    round_key: str | None = None

    def params(self) -> dict[str, Any]:
        v, r = self.values, self.result
        return {
            "resident_id": self.resident_id, "site_id": self.site_id, "taken_at": self.taken_at,
            "recorded_by": self.recorded_by, "source": self.source, "round_key": self.round_key,
            "rr": v.get("respiration_rate"), "spo2": v.get("spo2"), "scale": self.spo2_scale,
            "on_oxygen": self.on_oxygen, "sbp": v.get("systolic_bp"), "pulse": v.get("pulse"),
            "consciousness": self.consciousness, "temp": v.get("temperature"), "soft_signs": list(self.soft_signs),
            "note": self.note, "inputs": jsonb_safe(dict(self.inputs)), "score": r.score,
            "risk": r.risk.value, "subscores": Jsonb(dict(r.subscores)), "complete": r.complete,
            "missing": list(r.missing),
        }


def bump_set_versions(conn: psycopg.Connection, resident_ids: Iterable[str]) -> None:
    """These residents' sets changed other than by the scorer's own round plans: their ``observation_set_versions``
    go up, so a scorer replica's set-history memory (``scoring/memory.py``) loads them again. Called by every write
    here except ``write_planned_sets``, in the writer's transaction (the version and the sets commit together);
    ``tests/scoring/test_memory.py`` holds every other writer of observation_sets here to it."""
    ids = sorted(set(resident_ids))
    if ids:
        conn.execute("""INSERT INTO observation_set_versions AS v (resident_id) SELECT unnest(%s::text[])
                        ON CONFLICT (resident_id) DO UPDATE SET version = v.version + 1""", (ids,))


def record_observation_set(conn: psycopg.Connection, row: ObservationSetRow) -> int:
    """Store one set (a device round again: its row updated). Returns its obs_id."""
    bump_set_versions(conn, [row.resident_id])
    return one(conn.execute(_INSERT + " RETURNING obs_id", row.params()))[0]


#: The columns a re-planned set changes (``update_observation_set``), and their array types for ``unnest``.
_PLANNED = (("taken_at", "timestamptz"), ("source", "text"), ("round_key", "text"), ("rr", "float8"),
            ("spo2", "float8"), ("scale", "int"), ("sbp", "float8"), ("pulse", "float8"), ("temp", "float8"),
            ("inputs", "jsonb"), ("score", "int"), ("risk", "text"), ("subscores", "jsonb"), ("complete", "bool"),
            ("missing", "jsonb"))
_INSERTED = (("resident_id", "text"), ("site_id", "text"), ("recorded_by", "text"), ("on_oxygen", "bool"),
             ("consciousness", "text"), ("soft_signs", "jsonb"), ("note", "text"))


_CASTS: dict[str, Any] = {"float8": float, "int": int, "int8": int}


def _columns(rows: Sequence[dict[str, Any]], names: Sequence[tuple[str, str]]) -> dict[str, list[Any]]:
    """One list per column, each of one Python type (a binary array dump wants that: ints and floats mixed in a
    respiration rate column would not be)."""
    out = {}
    for name, kind in names:
        values = [r[name] for r in rows]
        if name in ("missing", "soft_signs"):  # text[] per row: as jsonb (unnest would flatten a 2-D array)
            values = [Jsonb(list(v)) for v in values]
        elif kind in _CASTS:
            values = [None if v is None else _CASTS[kind](v) for v in values]
        out[name] = values
    return out


def _unnest(names: Sequence[tuple[str, str]]) -> str:
    """``unnest`` of one array per column, sent in binary (no per-element text escaping)."""
    return (f"unnest({', '.join(f'%({n})b::{t}[]' for n, t in names)}) AS v({', '.join(n for n, _ in names)})")


def _text_array(column: str) -> str:
    return f"ARRAY(SELECT jsonb_array_elements_text(v.{column}))"


def write_planned_sets(conn: psycopg.Connection, superseded: Sequence[int],
                       updates: Sequence[tuple[int, ObservationSetRow]], inserts: Sequence[ObservationSetRow]) -> None:
    """A scorer batch's device rounds in three statements, whatever the batch size: the device-only sets folded
    into a staff set deleted (``delete_device_set``), the re-planned sets updated (``update_observation_set``),
    then the new ones stored (``record_observation_set``). Per resident that is the order the plans need (a
    superseded set's round_key moves to the staff set, then new rounds take keys of their own)."""
    if superseded:
        conn.execute("DELETE FROM observation_sets WHERE obs_id = ANY(%s) AND recorded_by = 'scorer'",
                     (list(superseded),))
    if updates:
        rows = [{**row.params(), "obs_id": obs_id} for obs_id, row in updates]
        conn.execute(
            f"""UPDATE observation_sets o SET taken_at = v.taken_at, source = v.source, round_key = v.round_key,
                   respiration_rate = v.rr, spo2 = v.spo2, spo2_scale = v.scale, systolic_bp = v.sbp,
                   pulse = v.pulse, temperature = v.temp, inputs = v.inputs, score = v.score, risk = v.risk,
                   subscores = v.subscores, complete = v.complete, missing = {_text_array("missing")}
               FROM {_unnest((("obs_id", "int8"), *_PLANNED))} WHERE o.obs_id = v.obs_id""",
            _columns(rows, (("obs_id", "int8"), *_PLANNED)))
    if inserts:
        _insert_many(conn, [row.params() for row in inserts])


#: ``_INSERT`` for many rows at once: one ``unnest`` of binary arrays (``_columns``), whatever the number of rows.
_INSERT_MANY_NAMES = (*_INSERTED, *_PLANNED)
_INSERT_MANY = f"""INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, round_key,
        respiration_rate, spo2, spo2_scale, on_oxygen, systolic_bp, pulse, consciousness, temperature,
        soft_signs, note, inputs, score, risk, subscores, complete, missing)
    SELECT v.resident_id, v.site_id, v.taken_at, v.recorded_by, v.source, v.round_key, v.rr, v.spo2,
        v.scale, v.on_oxygen, v.sbp, v.pulse, v.consciousness, v.temp, {_text_array("soft_signs")}, v.note,
        v.inputs, v.score, v.risk, v.subscores, v.complete, {_text_array("missing")}
    FROM {_unnest(_INSERT_MANY_NAMES)}
    {_ON_ROUND_CONFLICT}"""
#: Rows per multi-row statement of ``record_observation_sets`` (bounds one statement's arrays).
_INSERT_MANY_ROWS = 5000


def _insert_many(conn: psycopg.Connection, params: Sequence[dict[str, Any]]) -> None:
    conn.execute(_INSERT_MANY, _columns(params, _INSERT_MANY_NAMES))


#: ``record_observation_sets``' COPY of new sets (none a device round): each parameter of ``params()`` with the
#: column it fills and the binary type the column receives (real is float4, smallint int2; char(1) is sent as
#: text, the same bytes). ``float`` first: a respiration rate typed as an int dumps as float4 all the same.
_COPY_PARAMS = (("resident_id", "resident_id", "text"), ("site_id", "site_id", "text"),
                ("taken_at", "taken_at", "timestamptz"), ("recorded_by", "recorded_by", "text"),
                ("source", "source", "text"), ("rr", "respiration_rate", "float4"), ("spo2", "spo2", "float4"),
                ("scale", "spo2_scale", "int2"), ("on_oxygen", "on_oxygen", "bool"),
                ("sbp", "systolic_bp", "float4"), ("pulse", "pulse", "float4"),
                ("consciousness", "consciousness", "text"), ("temp", "temperature", "float4"),
                ("soft_signs", "soft_signs", "text[]"), ("note", "note", "text"), ("inputs", "inputs", "jsonb"),
                ("score", "score", "int2"), ("risk", "risk", "text"), ("subscores", "subscores", "jsonb"),
                ("complete", "complete", "bool"), ("missing", "missing", "text[]"))
_COPY_NEW_SETS = (f"COPY observation_sets ({', '.join(column for _, column, _ in _COPY_PARAMS)}) "
                  "FROM STDIN (FORMAT BINARY)")
_FLOAT4 = frozenset(name for name, _, kind in _COPY_PARAMS if kind == "float4")


def record_observation_sets(conn: psycopg.Connection, rows: Iterable[ObservationSetRow]) -> int:
    """Store many sets (history backfills) with one multi-row statement per ``_INSERT_MANY_ROWS`` sets, as
    ``record_observation_set`` would one by one. Returns how many were given.

    One statement cannot update one row twice (``ON CONFLICT``): a batch naming a device round (resident,
    round_key) more than once is stored row by row instead, as it always was (the later storing updates the row)."""
    params = [row.params() for row in rows]
    bump_set_versions(conn, (p["resident_id"] for p in params))
    keys = [(p["resident_id"], p["round_key"]) for p in params if p["round_key"] is not None]
    if not keys:
        # No device round: every set is a new row (a NULL round_key never conflicts), so one binary COPY stores
        # what the INSERT would, streamed while the rows are encoded (the INSERT's unnest built every column's
        # array first, then the server unpacked them: the backfill waited on both, ~10 % of its time).
        with conn.cursor() as cur, cur.copy(_COPY_NEW_SETS) as copy:
            copy.set_types([kind for _, _, kind in _COPY_PARAMS])
            for p in params:
                copy.write_row([None if (v := p[name]) is None else float(v) if name in _FLOAT4 else v
                                for name, _, _ in _COPY_PARAMS])
        return len(params)
    if len(keys) != len(set(keys)):
        with conn.cursor() as cur:
            cur.executemany(_INSERT, params)
        return len(params)
    for start in range(0, len(params), _INSERT_MANY_ROWS):
        _insert_many(conn, params[start:start + _INSERT_MANY_ROWS])
    return len(params)


def update_observation_set(conn: psycopg.Connection, obs_id: int, row: ObservationSetRow) -> None:
    """A stored set re-planned: a device round completes a staff set, a late reading changes a round. Who
    recorded it, the soft signs, consciousness, oxygen and note stay as they were."""
    owner = conn.execute("SELECT resident_id FROM observation_sets WHERE obs_id = %s", (obs_id,)).fetchall()
    bump_set_versions(conn, [row.resident_id, *(r[0] for r in owner)])
    conn.execute(
        """UPDATE observation_sets SET taken_at = %(taken_at)s, source = %(source)s,
               round_key = %(round_key)s, respiration_rate = %(rr)s, spo2 = %(spo2)s,
               spo2_scale = %(scale)s, systolic_bp = %(sbp)s, pulse = %(pulse)s, temperature = %(temp)s,
               inputs = %(inputs)s, score = %(score)s, risk = %(risk)s, subscores = %(subscores)s,
               complete = %(complete)s, missing = %(missing)s
           WHERE obs_id = %(obs_id)s""",
        {**row.params(), "obs_id": obs_id},
    )


def delete_device_set(conn: psycopg.Connection, obs_id: int) -> None:
    """A device-only set folded into the staff set of the same round (one round, one set); staff sets are never
    deleted."""
    deleted = conn.execute("DELETE FROM observation_sets WHERE obs_id = %s AND recorded_by = 'scorer' "
                           "RETURNING resident_id", (obs_id,)).fetchall()
    bump_set_versions(conn, [row[0] for row in deleted])


def delete_device_sets_built_from(conn: psycopg.Connection, resident_id: str,
                                  readings: Sequence[tuple[str, datetime]]) -> list[int]:
    """Delete the device-round sets of ``resident_id`` that took a value from one of these (device_id,
    measured_at) readings: the readings were moved to another resident. Staff sets are never deleted. Returns
    the obs_ids deleted."""
    if not readings:
        return []
    bump_set_versions(conn, [resident_id])
    return [row[0] for row in conn.execute(
        """DELETE FROM observation_sets o WHERE o.resident_id = %s AND o.recorded_by = 'scorer' AND EXISTS (
               SELECT 1 FROM jsonb_each(o.inputs) e, unnest(%s::text[], %s::timestamptz[]) AS m(device_id, at)
               WHERE jsonb_typeof(e.value) = 'object' AND e.value->>'device_id' = m.device_id
                 AND (e.value->>'at')::timestamptz = m.at)
           RETURNING o.obs_id""",
        (resident_id, [d for d, _ in readings], [t for _, t in readings])).fetchall()]


#: Set columns a kit reading can fill (the parameter names of a set's ``inputs``).
_DEVICE_COLUMNS = ("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature")


def correct_staff_sets_built_from(conn: psycopg.Connection, resident_id: str,
                                  readings: Sequence[tuple[str, datetime]], *, by: str) -> list[int]:
    """Staff-saved sets of ``resident_id`` that took a device value from one of these (device_id, measured_at)
    readings, which were moved to another resident: each such value is taken out of the set (its input keeps
    what it was, marked ``moved``), and the set is scored again on what the carer still recorded. The set stays
    (it is the carer's record); the readings and their scores now count for the right resident. Returns the
    obs_ids corrected."""
    from carewatch.scoring.news2 import ObservationSet, score_observation

    if not readings:
        return []
    bump_set_versions(conn, [resident_id])
    moved = {(d, t) for d, t in readings}
    rows = conn.execute(
        """SELECT obs_id, inputs, respiration_rate, spo2, spo2_scale, on_oxygen, systolic_bp, pulse, consciousness,
                  temperature FROM observation_sets o
           WHERE o.resident_id = %s AND o.recorded_by <> 'scorer' AND EXISTS (
               SELECT 1 FROM jsonb_each(o.inputs) e, unnest(%s::text[], %s::timestamptz[]) AS m(device_id, at)
               WHERE jsonb_typeof(e.value) = 'object' AND e.value->>'source' = 'device'
                 AND e.value->>'device_id' = m.device_id
                 AND coalesce(e.value->>'measured_at', e.value->>'at')::timestamptz = m.at)
           ORDER BY obs_id FOR UPDATE""",
        (resident_id, [d for d, _ in readings], [t for _, t in readings])).fetchall()
    corrected = []
    for obs_id, inputs, rr, spo2, scale, on_oxygen, sbp, pulse, consciousness, temp in rows:
        values = {"respiration_rate": rr, "spo2": spo2, "systolic_bp": sbp, "pulse": pulse, "temperature": temp}
        inputs = dict(inputs)
        for param in _DEVICE_COLUMNS:
            given = inputs.get(param)
            if not isinstance(given, dict) or given.get("source") != "device":
                continue
            at = datetime.fromisoformat(given.get("measured_at") or given["at"])
            if (given.get("device_id"), at) in moved:
                inputs[param] = {**given, "source": "moved", "value": values[param], "moved_by": by}
                values[param] = None
        result = score_observation(ObservationSet(**values, spo2_scale=scale, on_oxygen=on_oxygen,
                                                  consciousness=consciousness))
        conn.execute(
            """UPDATE observation_sets SET respiration_rate = %(respiration_rate)s, spo2 = %(spo2)s,
                   systolic_bp = %(systolic_bp)s, pulse = %(pulse)s, temperature = %(temperature)s,
                   inputs = %(inputs)s, score = %(score)s, risk = %(risk)s, subscores = %(subscores)s,
                   complete = %(complete)s, missing = %(missing)s
               WHERE obs_id = %(obs_id)s""",
            {**values, "inputs": jsonb_safe(inputs), "score": result.score, "risk": result.risk.value,
             "subscores": Jsonb(dict(result.subscores)), "complete": result.complete,
             "missing": list(result.missing), "obs_id": obs_id})
        corrected.append(obs_id)
    return corrected
