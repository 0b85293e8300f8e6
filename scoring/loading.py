"""Loading what the resident rules need: residents, their observation sets (15 days) and device vitals (26 h).

Reads only; the sets are written by ``scoring/observation_sets.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

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


_SET_COLUMNS = """obs_id, resident_id, taken_at, source, round_key, respiration_rate, spo2, systolic_bp, pulse,
    temperature, consciousness, on_oxygen, spo2_scale, soft_signs, inputs, recorded_by, score, risk, complete,
    missing, subscores, note"""
#: Older sets only feed baselines and trends: their ``inputs`` (provenance JSON) are not loaded and their subscores
#: come as plain integers (JSON decoding 15 days of sets on every evaluation was most of its cost).
_SUBSCORE_COLUMNS = ", ".join(f"(subscores->>'{name}')::int" for name in NEWS2_PARAMETERS)
_LIGHT_SET_COLUMNS = f"""obs_id, resident_id, taken_at, source, round_key, respiration_rate, spo2, systolic_bp,
    pulse, temperature, consciousness, on_oxygen, spo2_scale, soft_signs, NULL, recorded_by, score, risk, complete,
    missing, NULL, note, {_SUBSCORE_COLUMNS}"""
#: Sets younger than this are loaded whole (round planning, soft signs, the newest set's alert text).
FULL_SETS = ROUND_LOOKBACK + timedelta(hours=2)


def _stored_set(row: Sequence[Any]) -> tuple[str, StoredSet]:
    (obs_id, resident_id, taken_at, source, round_key, rr, spo2, sbp, pulse, temp, acvpu, oxygen, scale, soft,
     inputs, by, score, risk, complete, missing, subscores, note) = row[:22]
    if len(row) > 22:  # a light row: subscores as columns
        subscores = dict(zip(NEWS2_PARAMETERS, row[22:], strict=True))
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


def reload_recent_sets(conn: psycopg.Connection, history: dict[str, list[StoredSet]], resident_ids: Sequence[str],
                       now: datetime) -> None:
    """``history`` as ``load_sets`` would load it now, after the scorer wrote these residents' device rounds: only
    their recent sets (loaded whole) are read again. The scorer changes no set older than its round look-back
    (``ROUND_LOOKBACK`` + 1 h < ``FULL_SETS``), so the older, light part is still what is stored."""
    if not resident_ids:
        return
    recent = now - FULL_SETS
    fresh: dict[str, list[StoredSet]] = {rid: [] for rid in resident_ids}
    for row in conn.execute(
        f"SELECT {_SET_COLUMNS} FROM observation_sets WHERE resident_id = ANY(%b) AND taken_at > %s "
        "AND taken_at <= %s ORDER BY taken_at, obs_id",
        (list(resident_ids), recent, now + FUTURE_SLACK),
    ).fetchall():
        rid, stored = _stored_set(row)
        fresh[rid].append(stored)
    for rid, sets in fresh.items():
        history[rid] = [s for s in history.get(rid, []) if s.taken_at <= recent] + sets
    _newest_whole(conn, {rid: history[rid] for rid, sets in fresh.items() if not sets}, recent)


def load_vitals(conn: psycopg.Connection, resident_ids: Sequence[str], now: datetime) -> dict[str, list[VitalReading]]:
    out: dict[str, list[VitalReading]] = {rid: [] for rid in resident_ids}
    rows = conn.execute(
        "SELECT subject_id, metric, value, measured_at, device_id, flags, stored_at FROM readings "
        "WHERE subject_kind = 'resident' AND subject_id = ANY(%b) AND metric = ANY(%b) AND measured_at > %s "
        "AND measured_at <= %s "
        "ORDER BY measured_at",
        (list(resident_ids), list(VITAL_METRICS), now - ROUND_LOOKBACK, now + FUTURE_SLACK),
    ).fetchall()
    for subject, metric, value, measured_at, device_id, flags, stored_at in rows:
        out[subject].append(VitalReading(metric, value, measured_at, device_id, tuple(flags or ()), stored_at))
    return out
