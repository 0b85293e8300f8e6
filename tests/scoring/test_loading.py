"""The scorer's columnar history (scoring/loading.py): the same numbers as the set-by-set path, on real rows.

The baselines read 15 days of observation sets. Older sets come as columns (``load_light_sets``: one packed
binary value per batch), the last ``FULL_SETS`` as whole ``StoredSet`` objects. These tests hold the columns to
what ``load_sets`` (every set as an object, the reference) gives, value for value and in the same order.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carewatch.scoring.baselines import pad_rows
from carewatch.scoring.loading import (
    FULL_SETS,
    HISTORY,
    NUMERIC_SET_FIELDS,
    SUBSCORE_ONLY,
    SetColumns,
    decimal_floats,
    fetch_records,
    load_light_sets,
    load_recent_sets,
    load_sets,
)
from carewatch.scoring.residents import _history_columns
from carewatch.scoring.rules import ResidentFacts, StoredSet

from .test_engine import add_resident, add_site

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_decimal_floats_are_what_the_text_protocol_gives(value: float) -> None:
    """A real read through the text protocol is float(its shortest decimal); the vectorised path must agree."""
    as_real = np.array([value], dtype=np.float32)
    assert decimal_floats(as_real)[0] == float(str(as_real[0]))


def test_decimal_floats_of_vital_signs_and_nan() -> None:
    values = np.array([37.2, 36.85, 97.0, 88.5, 12.0, 512.25, 0.1, np.nan], dtype=np.float32)
    out = decimal_floats(values)
    assert out[:-1].tolist() == [37.2, 36.85, 97.0, 88.5, 12.0, 512.25, 0.1]
    assert np.isnan(out[-1])


def test_fetch_records_refuses_a_null_instead_of_dropping_its_row(db: psycopg.Connection) -> None:
    fields = [("a", "x", "int8")]
    ok = fetch_records(db, fields, "(VALUES (1), (2)) AS t(x)", ())
    assert ok["a"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="NULL"):
        fetch_records(db, fields, "(VALUES (1), (NULL)) AS t(x)", ())


def _add_set(db: psycopg.Connection, site: str, rid: str, at: datetime, rng: random.Random) -> int:
    values = {
        "respiration_rate": rng.choice([None, 12, 16, 22.0]),
        "spo2": rng.choice([None, 88, 93.5, 96, 97]),
        "systolic_bp": rng.choice([None, 95, 128.5, 150]),
        "pulse": rng.choice([None, 58, 72, 111]),
        "temperature": rng.choice([None, 36.2, 36.85, 37.2, 38.4]),
    }
    complete = all(v is not None for v in values.values())
    subscores = {"air_or_oxygen": rng.choice([0, 2]), "consciousness": rng.choice([0, 3])}
    if rng.random() < 0.2:
        subscores.pop("consciousness")  # a subscore missing from the JSON reads as missing, not 0
    return db.execute(
        """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, respiration_rate, spo2,
               systolic_bp, pulse, consciousness, temperature, on_oxygen, score, risk, subscores, complete)
           VALUES (%s, %s, %s, 'carer1', 'manual', %s, %s, %s, %s, 'A', %s, %s, %s, 'low', %s, %s) RETURNING obs_id""",
        (rid, site, at, values["respiration_rate"], values["spo2"], values["systolic_bp"], values["pulse"],
         values["temperature"], rng.random() < 0.2, rng.randint(0, 9), psycopg.types.json.Jsonb(subscores),
         complete),
    ).fetchone()[0]


def _reference(history: dict[str, list[StoredSet]], ids: list[str]) -> dict[str, list[list[float]]]:
    """What the set-by-set path builds for each baseline column (the code before the columns, kept as the oracle)."""
    out: dict[str, list[list[float]]] = {"spo2": [], "spo2_t": [], "complete_t": [], "score": []}
    for name in (*NUMERIC_SET_FIELDS, *SUBSCORE_ONLY):
        out[f"usual_{name}"] = []
    for rid in ids:
        sets = history[rid]
        out["spo2"].append([v for s in sets if (v := s.values.get("spo2")) is not None and not s.on_oxygen])
        out["spo2_t"].append([s.taken_at.timestamp() for s in sets
                              if s.values.get("spo2") is not None and not s.on_oxygen])
        out["score"].append([float(s.score) for s in sets if s.score is not None])
        complete = [s for s in sets if s.complete]
        out["complete_t"].append([s.taken_at.timestamp() for s in complete])
        for name in NUMERIC_SET_FIELDS:
            out[f"usual_{name}"].append([np.nan if (v := s.values.get(name)) is None else float(v) for s in complete])
        for name in SUBSCORE_ONLY:
            out[f"usual_{name}"].append([np.nan if (v := s.subscores.get(name)) is None else float(v)
                                         for s in complete])
    return out


def _columns(sets: SetColumns, rows: int) -> dict[str, list[np.ndarray]]:
    spo2 = sets.values["spo2"]
    keep = ~np.isnan(spo2) & ~sets.on_oxygen
    out = dict(zip(("spo2", "spo2_t"), sets.padded(rows, keep, spo2, sets.taken), strict=True))
    (out["score"],) = sets.padded(rows, ~np.isnan(sets.score), sets.score)
    (out["complete_t"],) = sets.padded(rows, sets.complete, sets.taken)
    for name in NUMERIC_SET_FIELDS:
        (out[f"usual_{name}"],) = sets.padded(rows, sets.complete, sets.values[name])
    for name in SUBSCORE_ONLY:
        (out[f"usual_{name}"],) = sets.padded(rows, sets.complete, sets.subscores[name])
    return out


def test_columns_hold_the_same_sets_in_the_same_order_as_the_whole_sets(db: psycopg.Connection, uid: str) -> None:
    """Residents with 15 days of random sets (missing values, oxygen, incomplete sets, subscores missing), one with
    only old sets (their newest comes whole), one with none: every baseline column equals the reference."""
    rng = random.Random(7)
    site = add_site(db, f"load-{uid}")
    ids = [add_resident(db, site, f"load-{uid}-{i}") for i in range(6)]
    for i, rid in enumerate(ids[:-1]):
        newest = NOW - (FULL_SETS + timedelta(hours=5) if i == 0 else timedelta(minutes=rng.randint(1, 600)))
        at = NOW - HISTORY - timedelta(hours=6)  # the first few fall outside the window
        while at <= newest:
            _add_set(db, site, rid, at, rng)
            at += timedelta(hours=rng.choice([2, 4, 7, 11]), minutes=rng.randint(0, 59))
        _add_set(db, site, rid, at - timedelta(seconds=1) if at - timedelta(seconds=1) <= newest else newest, rng)
    db.commit()

    light = load_light_sets(db, ids, NOW)
    recent = load_recent_sets(db, ids, NOW, light)
    assert not recent[ids[-1]]
    assert len(recent[ids[0]]) == 1 and recent[ids[0]][0].taken_at <= NOW - FULL_SETS  # the newest, loaded whole
    whole = load_sets(db, ids, NOW)
    assert [s.obs_id for s in recent[ids[0]]] == [whole[ids[0]][-1].obs_id]
    facts = [ResidentFacts(rid, site, rid, None, 2, "active", False, False, None, None, site, NOW, False, None)
             for rid in ids]
    got = _columns(_history_columns(facts, light, recent, set(), NOW), len(ids))
    expected = _reference(whole, ids)
    for name, rows in expected.items():
        assert np.array_equal(got[name], pad_rows(rows), equal_nan=True), name


def test_a_set_aside_set_leaves_the_columns(db: psycopg.Connection, uid: str) -> None:
    """A set that cannot be scored is set aside (H-DATA-01): it must not feed the baselines either."""
    rng = random.Random(3)
    site = add_site(db, f"aside-{uid}")
    rid = add_resident(db, site, f"aside-{uid}")
    old = [_add_set(db, site, rid, NOW - timedelta(days=d), rng) for d in (9, 5, 3)]
    db.commit()
    light = load_light_sets(db, [rid], NOW)
    recent = load_recent_sets(db, [rid], NOW, light)
    resident = ResidentFacts(rid, site, rid, None, 2, "active", False, False, None, None, site, NOW, False, None)
    columns = _history_columns([resident], light, recent, {old[1]}, NOW)
    assert columns.obs_id.tolist() == [old[0], old[2]]
