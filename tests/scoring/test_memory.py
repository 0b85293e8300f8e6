"""The scorer replica's set-history memory (scoring/memory.py, docs/clinical-safety.md H-BASE-06).

The bar is equivalence: a sequence of evaluations over the same world, one database evaluated with a memory kept
across the whole sequence and a twin without, must leave identical alerts, alert_events, resident_state and
observation_sets. Plus the memory's own rules: a version bump reloads, the LRU bound holds, buckets given up are
dropped, every writer of observation_sets but the round plans bumps the version, and a reading or recent set
changed in any column is read again (H-BASE-07).
"""

from __future__ import annotations

import ast
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from databases import fresh_database
from test_table_writers import sql_writes

from carewatch.ingest.store import reassign_readings
from carewatch.scoring.engine import evaluate_subjects, withdraw_device_values
from carewatch.scoring.loading import (
    FULL_SETS,
    HISTORY,
    NUMERIC_SET_FIELDS,
    SUBSCORE_ONLY,
    SetColumns,
    load_light_sets,
    load_recent_sets,
    load_vitals,
)
from carewatch.scoring.memory import SetHistoryMemory, load_inputs, load_older_sets
from carewatch.scoring.news2 import score_observation
from carewatch.scoring.observation_sets import (
    ObservationSetRow,
    delete_device_set,
    delete_device_sets_built_from,
    record_observation_set,
    record_observation_sets,
    update_observation_set,
)
from carewatch.scoring.rules import ResidentFacts

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
SITE = "home-mem"
RESIDENTS = [f"res-{i}" for i in range(6)]


# ------------------------------------------------------------------------------------------------------------
# A small world, built the same way in each database
# ------------------------------------------------------------------------------------------------------------
def _set_row(rid: str, at: datetime, rng: random.Random, *, by: str, fever: bool = False) -> ObservationSetRow:
    values: dict[str, float | None] = {
        "respiration_rate": float(rng.choice([14, 16, 18])), "spo2": float(rng.choice([94, 95, 96, 97])),
              "systolic_bp": float(rng.randint(110, 140)), "pulse": float(rng.randint(62, 90)),
              "temperature": round(rng.uniform(36.2, 36.9) + (1.6 if fever else 0.0), 1)}
    if by == "scorer":
        values["respiration_rate"] = None  # a device round has no RR
    result = score_observation({**values, "spo2_scale": 1, "on_oxygen": False,
                                "consciousness": "A" if by != "scorer" else None})
    inputs = ({"spo2": {"source": "device", "device_id": f"ox-{rid}", "at": at.isoformat()}} if by == "scorer"
              else {"spo2": {"source": "manual", "by": by, "at": at.isoformat()}})
    return ObservationSetRow(resident_id=rid, site_id=SITE, taken_at=at, recorded_by=by,
                             source="device" if by == "scorer" else "manual", values=values, result=result,
                             consciousness="A" if by != "scorer" else None, inputs=inputs,
                             round_key=f"dev:{rid}:{at.isoformat()}" if by == "scorer" else None)


def _build(conn: psycopg.Connection) -> None:
    rng = random.Random(19)
    conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Memory Home')", (SITE,))
    conn.execute("INSERT INTO gateways (gateway_id, site_id, state, last_seen) VALUES (%s, %s, 'online', %s)",
                 (f"gw-{SITE}", SITE, T0))
    rows = []
    for n, rid in enumerate(RESIDENTS):
        conn.execute(
            """INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, obs_per_day, monitoring,
                   created_at) VALUES (%s, %s, %s, %s, 2, 'active', %s)""",
            (rid, SITE, f"Resident {n}", date(1938, 4, 2), T0 - timedelta(days=60)))
        conn.execute(
            """INSERT INTO devices (device_id, site_id, gateway_id, kind, resident_id, last_seen, bound_at)
               VALUES (%s, %s, %s, 'pulse_oximeter', %s, %s, %s)""",
            (f"ox-{rid}", SITE, f"gw-{SITE}", rid, T0, T0 - timedelta(days=60)))
        at = T0 - timedelta(days=17)
        while at < T0 - timedelta(hours=1):
            by = "scorer" if rng.random() < 0.4 else "carer1"
            rows.append(_set_row(rid, at, rng, by=by, fever=n == 1 and at > T0 - timedelta(hours=40)))
            at += timedelta(hours=rng.choice([6, 8, 11, 12]), minutes=rng.randint(0, 59))
    record_observation_sets(conn, rows)


_seq = iter(range(1, 10**9))


def _readings(conn: psycopg.Connection, rid: str, at: datetime, spo2: float, pulse: float) -> None:
    """An oximeter's SpO2 and pulse measured at ``at`` (stored now: a late upload when ``at`` is long past)."""
    for metric, value in (("spo2", spo2), ("pulse_rate", pulse)):
        conn.execute(
            """INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value,
                   received_at, flags, subject_kind) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, '{}', 'resident')""",
            (at, f"gw-{SITE}", next(_seq), SITE, rid, f"ox-{rid}", metric, value, at))


def _snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """The tables the evaluation writes, every column but the database's own wall-clock stamps."""
    out = {}
    for table, order in (("alerts", "alert_id"), ("alert_events", "event_id"), ("resident_state", "resident_id"),
                         ("observation_sets", "obs_id"), ("observation_set_versions", "resident_id")):
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = 'public' "
            "AND column_default IS DISTINCT FROM 'now()' ORDER BY ordinal_position", (table,))]
        out[table] = conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()
    return out


@pytest.fixture
def twins(pg_server: str) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    with fresh_database(pg_server, "carewatch_mem") as a, fresh_database(pg_server, "carewatch_mem") as b, \
            psycopg.connect(a, autocommit=True) as ca, psycopg.connect(b, autocommit=True) as cb:
        for conn in (ca, cb):
            with conn.transaction():
                _build(conn)
        yield ca, cb


def test_evaluations_with_the_memory_leave_what_evaluations_without_it_leave(twins) -> None:
    remembering, plain = twins
    memory = SetHistoryMemory(1000)
    rng = random.Random(7)

    def both(step: Callable[[psycopg.Connection], None]) -> None:
        for conn in (remembering, plain):
            with conn.transaction():
                step(conn)

    def evaluate(now: datetime, who: list[str] = RESIDENTS) -> None:
        a = evaluate_subjects(remembering, list(who), now, memory)
        b = evaluate_subjects(plain, list(who), now)
        assert a.errors == b.errors == {}
        assert _snapshot(remembering) == _snapshot(plain), f"differ after the evaluation at {now}"
        ids = list(who)
        facts = [ResidentFacts(*r) for r in remembering.execute(
            "SELECT r.resident_id, r.site_id, r.display_name, r.date_of_birth, r.obs_per_day, r.monitoring, "
            "r.baseline_confused, r.scale2, r.scale2_reason, r.gp_practice, s.name, r.created_at, "
            "r.oxygen_prescribed, r.oxygen_flow_lpm FROM residents r JOIN sites s USING (site_id) "
            "WHERE r.resident_id = ANY(%s) ORDER BY array_position(%s, r.resident_id)", (ids, ids))]
        probe = SetHistoryMemory(1000)  # the columns too, on a copy of the memory (not to disturb the sequence)
        probe._entries = OrderedDict(memory._entries)
        _assert_same(load_older_sets(remembering, facts, now, probe), load_light_sets(remembering, ids, now))

    def readings(now: datetime) -> Callable[[psycopg.Connection], None]:
        values = [(rid, now - timedelta(minutes=rng.randint(5, 40)), float(rng.choice([90, 93, 96])),
                   float(rng.randint(60, 110))) for rid in RESIDENTS[:4]]

        def add(conn: psycopg.Connection) -> None:
            for v in values:
                _readings(conn, *v)
        return add

    now = T0
    evaluate(now)                                            # cold: every resident loaded and remembered
    assert len(memory) == len(RESIDENTS) and memory.hits == 0
    now += timedelta(minutes=30)
    both(readings(now))
    evaluate(now)                                            # warm: device rounds written by the plans
    assert memory.hits == len(RESIDENTS)
    # a staff set saved through the API's writer, which then evaluates without a memory (as the API does)
    staff = _set_row("res-2", now - timedelta(minutes=5), random.Random(3), by="carer7")
    both(lambda conn: (record_observation_set(conn, staff), evaluate_subjects(conn, ["res-2"], now)))
    now += timedelta(minutes=10)
    evaluate(now)
    # a correction of a staff set 5 days old (a low SpO2 typed as 97)
    def correct(conn: psycopg.Connection) -> None:
        obs_id, at = conn.execute(
            "SELECT obs_id, taken_at FROM observation_sets WHERE resident_id = 'res-3' AND recorded_by = 'carer1' "
            "AND taken_at < %s ORDER BY taken_at DESC LIMIT 1", (now - timedelta(days=5),)).fetchone()
        row = _set_row("res-3", at, random.Random(4), by="carer1")
        values = {**row.values, "spo2": 89.0}
        result = score_observation({**values, "spo2_scale": 1, "on_oxygen": False, "consciousness": "A"})
        update_observation_set(conn, obs_id, replace(row, values=values, result=result))
    both(correct)
    evaluate(now)
    # an old device set deleted, and the device sets built from readings moved to another resident
    def delete(conn: psycopg.Connection) -> None:
        obs_id, = conn.execute("SELECT obs_id FROM observation_sets WHERE resident_id = 'res-4' AND "
                               "recorded_by = 'scorer' AND taken_at < %s ORDER BY taken_at DESC LIMIT 1",
                               (now - timedelta(days=3),)).fetchone()
        delete_device_set(conn, obs_id)
        moved = conn.execute("SELECT taken_at FROM observation_sets WHERE resident_id = 'res-5' AND "
                             "recorded_by = 'scorer' AND taken_at < %s ORDER BY taken_at LIMIT 3",
                             (now - timedelta(days=2),)).fetchall()
        assert delete_device_sets_built_from(conn, "res-5", [("ox-res-5", at) for at, in moved])
    both(delete)
    evaluate(now)
    # late uploads: readings measured before the last evaluations, stored only now (a gateway back online)
    late = [(rid, now - timedelta(hours=3, minutes=i), 88.0, 104.0) for i, rid in enumerate(RESIDENTS[:3])]
    both(lambda conn: [_readings(conn, *v) for v in late])
    evaluate(now)
    # the newest measurement of res-0 moved to res-1 as the kits route does it (the readings re-attributed, the sets
    # built from them withdrawn, both residents evaluated without a memory)
    def move(conn: psycopg.Connection) -> None:
        at, = conn.execute("SELECT max(measured_at) FROM readings WHERE subject_id = 'res-0'").fetchone()
        keys = conn.execute("SELECT gateway_id, seq FROM readings WHERE subject_id = 'res-0' AND measured_at = %s",
                            (at,)).fetchall()
        assert reassign_readings(conn, keys, to_subject="res-1", session_id=None, kind="move", by="test").readings
        withdraw_device_values(conn, "res-0", [("ox-res-0", at)], now)
        evaluate_subjects(conn, ["res-0", "res-1"], now)
    both(move)
    evaluate(now)
    reloaded = memory.readings_reloaded
    evaluate(now + timedelta(minutes=2))                     # nothing new: every resident's inputs from the memory
    assert memory.readings_reloaded == reloaded
    # scale 2 prescribed: the same readings and sets, planned again for that resident (the plans' key holds it)
    both(lambda conn: conn.execute(
        "UPDATE residents SET scale2 = true, scale2_reason = 'COPD', scale2_set_by = 'nurse1', scale2_set_at = %s "
        "WHERE resident_id = 'res-2'", (now,)))
    evaluate(now + timedelta(minutes=4))
    now += timedelta(minutes=4)
    # time passes: across the 28 h cut (the sets written above become "older"), then out of the 15-day window
    for step in (timedelta(hours=6), timedelta(hours=20), timedelta(hours=4), timedelta(days=2), timedelta(days=6),
                 timedelta(days=7)):
        now += step
        both(readings(now))
        evaluate(now)
        evaluate(now + timedelta(minutes=7), RESIDENTS[::2])  # part of the residents, a few minutes on
    assert memory.hits > 6 * len(RESIDENTS)
    assert memory.plans_reused > 6 * len(RESIDENTS)
    kinds = {k for k, in remembering.execute("SELECT DISTINCT kind FROM alerts")}
    assert {"news2", "temperature_above_baseline"} <= kinds, kinds  # the baselines did decide something
    evaluate(now - timedelta(hours=3))                       # a clock gone back: reloaded, not served stale


def _assert_same(a: SetColumns, b: SetColumns) -> None:
    for name in ("row", "obs_id", "taken", "on_oxygen", "score", "complete"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in NUMERIC_SET_FIELDS:
        np.testing.assert_array_equal(a.values[name], b.values[name], err_msg=name)
    for name in SUBSCORE_ONLY:
        np.testing.assert_array_equal(a.subscores[name], b.subscores[name], err_msg=name)


# ------------------------------------------------------------------------------------------------------------
# The memory's own rules
# ------------------------------------------------------------------------------------------------------------
def test_a_reading_or_recent_set_changed_in_any_column_is_read_again(pg_server: str) -> None:
    """The readings' and recent sets' fingerprints cover every column of every row in the window: a change no
    writer makes (an update in place, by SQL only tests may run) is still seen, by that resident alone."""
    with fresh_database(pg_server, "carewatch_mem") as dsn, psycopg.connect(dsn, autocommit=True) as world:
        with world.transaction():
            _build(world)
        memory = SetHistoryMemory(100)
        facts = _facts(world, RESIDENTS)
        now = T0 + timedelta(hours=1)
        for rid in RESIDENTS:
            _readings(world, rid, now - timedelta(hours=2), 95.0, 70.0)

        def same() -> None:
            older = load_older_sets(world, facts, now, memory)
            assert load_inputs(world, facts, now, memory, older) == (
                load_vitals(world, RESIDENTS, now), load_recent_sets(world, RESIDENTS, now, older))

        same()
        assert (memory.readings_reloaded, memory.sets_reloaded) == (len(RESIDENTS), len(RESIDENTS))
        world.execute("UPDATE readings SET flags = '{questionable}' WHERE subject_id = 'res-0' AND metric = 'spo2'")
        world.execute("UPDATE observation_sets SET note = 'typed again' WHERE resident_id = 'res-1' AND taken_at = "
                      "(SELECT max(taken_at) FROM observation_sets WHERE resident_id = 'res-1')")
        same()
        assert (memory.readings_reloaded, memory.sets_reloaded) == (len(RESIDENTS) + 1, len(RESIDENTS) + 1)
        now += timedelta(hours=24)  # the readings leave the round window: dropped from the memory, nothing read
        same()
        assert memory.readings_reloaded == len(RESIDENTS) + 1



def _facts(conn: psycopg.Connection, ids: list[str]) -> list[ResidentFacts]:
    return [ResidentFacts(rid, SITE, rid, date(1938, 4, 2), 2, "active", False, False, None, None, "Memory Home",
                          T0 - timedelta(days=60), False, None) for rid in ids]


@pytest.fixture
def world(pg_server: str) -> Iterator[psycopg.Connection]:
    with fresh_database(pg_server, "carewatch_mem") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            _build(conn)
        yield conn


def test_a_version_bump_reloads_and_a_write_that_skips_it_would_be_served_stale(world) -> None:
    memory = SetHistoryMemory(100)
    facts = _facts(world, RESIDENTS)
    _assert_same(load_older_sets(world, facts, T0, memory), load_light_sets(world, RESIDENTS, T0))
    old = world.execute("SELECT obs_id FROM observation_sets WHERE resident_id = 'res-0' AND taken_at < %s "
                        "ORDER BY taken_at DESC LIMIT 1", (T0 - timedelta(days=3),)).fetchone()[0]
    # a write without the bump (what no code outside tests may do: test_table_writers) is not seen...
    world.execute("UPDATE observation_sets SET temperature = 39.9 WHERE obs_id = %s", (old,))
    stale = load_older_sets(world, facts, T0, memory)
    assert 39.9 not in stale.values["temperature"]
    # ...while the one writer's bump reloads the resident (and only them)
    hits = memory.hits
    delete_device_sets_built_from(world, "res-0", [("ox-res-0", T0 - timedelta(days=30))])  # deletes none, bumps
    fresh = load_older_sets(world, facts, T0, memory)
    assert memory.hits - hits == len(RESIDENTS) - 1
    assert 39.9 in fresh.values["temperature"]
    _assert_same(fresh, load_light_sets(world, RESIDENTS, T0))


def test_an_unchanged_entry_is_kept_as_it_is_and_a_changed_one_stored_anew(world) -> None:
    """A hit with no set crossing the cut and none leaving the 15 days keeps its records (no copy), with the new
    cut; every other resident is stored anew; both give what the plain path reads."""
    memory = SetHistoryMemory(100)
    facts = _facts(world, RESIDENTS)
    load_older_sets(world, facts, T0, memory)
    kept = stored = 0
    for later in (T0 + timedelta(minutes=2), T0 + timedelta(hours=6), T0 + timedelta(days=1)):
        before = {rid: memory._entries[rid] for rid in RESIDENTS}
        previous_cut = before[RESIDENTS[0]].cut
        moved = {rid for (rid,) in world.execute(
            "SELECT DISTINCT resident_id FROM observation_sets WHERE resident_id = ANY(%s) AND "
            "((taken_at > %s AND taken_at <= %s) OR (taken_at > %s AND taken_at <= %s))",
            (RESIDENTS, previous_cut, later - FULL_SETS, previous_cut + FULL_SETS - HISTORY, later - HISTORY))}
        _assert_same(load_older_sets(world, facts, later, memory), load_light_sets(world, RESIDENTS, later))
        for rid in RESIDENTS:
            entry = memory._entries[rid]
            assert entry.cut == later - FULL_SETS
            assert (entry is before[rid]) == (rid not in moved), rid
        kept, stored = kept + len(RESIDENTS) - len(moved), stored + len(moved)
    assert kept and stored  # the sequence has both kinds


def test_the_recent_sets_columns_are_kept_only_for_the_very_sets_remembered(world) -> None:
    """``recent_columns``: the columns of the remembered recent sets, built once, and None for any other list (a
    set taken out because it cannot be scored, or another object however equal)."""
    memory = SetHistoryMemory(100)
    facts = _facts(world, RESIDENTS)
    _, history = load_inputs(world, facts, T0, memory, load_older_sets(world, facts, T0, memory))
    rid = next(r for r in RESIDENTS if len(history[r]) >= 2 and history[r][0].taken_at > T0 - FULL_SETS)
    recent = history[rid]
    columns = memory.recent_columns(rid, recent)
    assert columns is not None
    _assert_same(columns, SetColumns.of_sets((0, s) for s in recent))
    assert memory.recent_columns(rid, list(recent)) is columns  # built once
    assert memory.recent_columns(rid, recent[:-1]) is None
    assert memory.recent_columns(rid, [*recent[:-1], replace(recent[-1])]) is None
    assert memory.recent_columns("res-unknown", recent) is None


def test_the_memory_is_bounded_least_recently_used_first(world) -> None:
    memory = SetHistoryMemory(4)
    load_older_sets(world, _facts(world, RESIDENTS[:4]), T0, memory)
    load_older_sets(world, _facts(world, RESIDENTS[:1]), T0, memory)  # res-0 used again
    load_older_sets(world, _facts(world, RESIDENTS[4:6]), T0, memory)  # two more: res-1, res-2 go
    assert sorted(memory._entries) == ["res-0", "res-3", "res-4", "res-5"]
    assert len(memory) == 4
    _assert_same(load_older_sets(world, _facts(world, RESIDENTS), T0, memory), load_light_sets(world, RESIDENTS, T0))
    with pytest.raises(ValueError):
        SetHistoryMemory(-1)
    off = SetHistoryMemory(0)
    _assert_same(load_older_sets(world, _facts(world, RESIDENTS), T0, off), load_light_sets(world, RESIDENTS, T0))
    assert len(off) == 0


def test_residents_of_buckets_given_up_are_dropped(world) -> None:
    memory = SetHistoryMemory(100)
    load_older_sets(world, _facts(world, RESIDENTS), T0, memory)
    assert memory.retain_sites({SITE, "elsewhere"}) == 0 and len(memory) == len(RESIDENTS)
    assert memory.retain_sites({"elsewhere"}) == len(RESIDENTS) and len(memory) == 0


def test_every_writer_of_observation_sets_but_the_round_plans_bumps_the_version() -> None:
    """By construction: each function of scoring/observation_sets.py that writes observation_sets calls
    ``bump_set_versions``, except ``write_planned_sets`` (the scorer's own plans, which never touch a set older
    than its round look-back)."""
    from conformance import REPO_ROOT

    source = (REPO_ROOT / "scoring/observation_sets.py").read_text(encoding="utf-8")
    writers = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        body = ast.get_source_segment(source, node) or ""
        called = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        if any(t == "observation_sets" for _, _, t in sql_writes(body)) or names & {"_INSERT", "_INSERT_MANY",
                                                                                     "_insert_many"}:
            writers.append(node.name)
            if node.name not in ("write_planned_sets", "_insert_many"):
                assert "bump_set_versions" in called, f"{node.name} writes observation_sets without the bump"
    assert {"record_observation_set", "record_observation_sets", "update_observation_set", "delete_device_set",
            "delete_device_sets_built_from", "correct_staff_sets_built_from", "write_planned_sets"} <= set(writers)


def test_the_api_and_other_callers_pass_no_memory() -> None:
    assert evaluate_subjects.__defaults__ == (None,)
