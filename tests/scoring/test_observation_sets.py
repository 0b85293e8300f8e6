"""``record_observation_sets`` (history backfills: one multi-row statement) stores exactly what
``record_observation_set`` stores one by one: every column, device rounds updated in place."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from carewatch.scoring.news2 import score_observation
from carewatch.scoring.observation_sets import ObservationSetRow, record_observation_set, record_observation_sets

AT = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
_COLUMNS = """resident_id, site_id, taken_at, recorded_by, source, round_key, respiration_rate, spo2, spo2_scale,
    on_oxygen, systolic_bp, pulse, consciousness, temperature, soft_signs, note, inputs, score, risk, subscores,
    complete, missing"""


def _rows(resident: str, site: str) -> list[ObservationSetRow]:
    out = []
    for i, (values, extra) in enumerate((
        ({"respiration_rate": 18, "spo2": 96.0, "systolic_bp": 128.0, "pulse": 72.0, "temperature": 36.8},
         {"consciousness": "A", "soft_signs": ("eating less",), "note": "settled",
          "inputs": {"respiration_rate": {"source": "manual", "by": "backfill", "at": AT}}}),
        ({"respiration_rate": None, "spo2": 91.0, "systolic_bp": None, "pulse": 118.5, "temperature": 38.4},
         {"consciousness": "C", "on_oxygen": True, "spo2_scale": 2, "round_key": "r-1"}),
        ({"respiration_rate": 24, "spo2": None, "systolic_bp": 95.0, "pulse": None, "temperature": None},
         {"round_key": "r-2", "inputs": {}}),
    )):
        result = score_observation({**values, "consciousness": extra.get("consciousness"),
                                    "on_oxygen": extra.get("on_oxygen", False),
                                    "spo2_scale": extra.get("spo2_scale", 1)})
        out.append(ObservationSetRow(resident_id=resident, site_id=site, taken_at=AT + timedelta(hours=i),
                                     recorded_by="backfill", source="mixed", values=values, result=result, **extra))
    return out


def _stored(db: psycopg.Connection, resident: str) -> list[tuple[Any, ...]]:
    return db.execute(f"SELECT {_COLUMNS} FROM observation_sets WHERE resident_id = %s ORDER BY taken_at",
                      (resident,)).fetchall()


def test_many_sets_are_stored_as_one_by_one(db: psycopg.Connection, uid: str) -> None:
    site = f"os-{uid}"
    db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Sets')", (site,))
    for rid in (f"one-{uid}", f"many-{uid}", f"again-{uid}"):
        db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                   "VALUES (%s, %s, 'R', '1938-04-02')", (rid, site))
    for row in _rows(f"one-{uid}", site):
        record_observation_set(db, row)
    assert record_observation_sets(db, _rows(f"many-{uid}", site)) == 3
    one, many = _stored(db, f"one-{uid}"), _stored(db, f"many-{uid}")
    assert len(one) == 3 and [r[1:] for r in many] == [r[1:] for r in one]

    # a device round stored again updates its row; twice in one batch: row by row, the later one wins
    rows = _rows(f"again-{uid}", site)
    later = replace(rows[1], taken_at=AT + timedelta(hours=5))
    assert record_observation_sets(db, [*rows, later]) == 4
    record_observation_sets(db, [rows[2]])
    again = _stored(db, f"again-{uid}")
    assert len(again) == 3 and again[-1][2] == AT + timedelta(hours=5)
    db.rollback()


def test_new_sets_copied_are_stored_as_one_by_one(db: psycopg.Connection, uid: str) -> None:
    """No device round in the batch (the backfill's staff rounds): the COPY path stores every column as the
    one-by-one INSERT does, floats rounded to real the same way, soft signs and missing parameters as arrays."""
    site = f"oc-{uid}"
    db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Sets')", (site,))
    for rid in (f"one-{uid}", f"copy-{uid}"):
        db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                   "VALUES (%s, %s, 'R', '1938-04-02')", (rid, site))

    def rows(resident: str) -> list[ObservationSetRow]:
        return [replace(row, resident_id=resident, round_key=None,
                        soft_signs=("eating less", "more confused") if i == 1 else row.soft_signs,
                        values={**row.values, "temperature": 36.83 + i / 3, "spo2": 94.1 + i / 7})
                for i, row in enumerate(_rows(resident, site))]

    for row in rows(f"one-{uid}"):
        record_observation_set(db, row)
    assert record_observation_sets(db, rows(f"copy-{uid}")) == 3
    one, copied = _stored(db, f"one-{uid}"), _stored(db, f"copy-{uid}")
    assert len(one) == 3 and [r[1:] for r in copied] == [r[1:] for r in one]
    assert copied[1][14] == ["eating less", "more confused"] and copied[0][21] == []
    versions = dict(db.execute("SELECT resident_id, version FROM observation_set_versions WHERE resident_id = ANY(%s)",
                               ([f"one-{uid}", f"copy-{uid}"],)).fetchall())
    assert versions == {f"one-{uid}": 3, f"copy-{uid}": 1}
    db.rollback()
