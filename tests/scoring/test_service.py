"""The scorer service end to end: run_scorer in a thread, store readings + NOTIFY, see the alert appear."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from carewatch.ingest.store import notify_payloads
from carewatch.scoring.batches import EvaluationSummary
from carewatch.scoring.clock import Clock
from carewatch.scoring.service import CatchUpPacer, HeapFreezer, parse_payload, run_scorer
from carewatch.settings import Settings
from carewatch.subjects import Subject


def test_parse_payload() -> None:
    """A payload from ingest before v2 (bare ids, a rolling upgrade): the ids, as strings."""
    subjects, stamp = parse_payload('{"subjects": ["a", "", 3, "b"], "max_received_at": "2026-01-01T10:00:00Z"}')
    assert subjects == ["a", "b"] and stamp == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert parse_payload("not json") == ([], None)
    assert parse_payload('["a"]') == ([], None)


def test_parse_payload_reads_kind_qualified_subjects_into_subjects() -> None:
    """Ingest's payloads (v2) name each subject's kind: the scorer gets Subjects, so a household's readings are
    evaluated as the household only and a resident's as the resident only. An entry that names no known kind is
    dropped (in a v2 payload every entry is qualified; a bare id there is a fault, never guessed)."""
    stamp = datetime(2026, 1, 1, 10, tzinfo=UTC)
    subjects = [Subject("resident", "flat-7"), Subject("household", "flat-7"), Subject("site", "oakview"),
                Subject("kit", "oakview:kit-01")]
    (payload,) = notify_payloads(subjects, stamp)  # what ingest sends
    assert parse_payload(payload) == (subjects, stamp)
    got, _ = parse_payload(json.dumps({"v": 2, "subjects": ["household:flat-7", "flat-8", "person:x", "resident:", 5],
                                       "max_received_at": stamp.isoformat()}))
    assert got == [Subject("household", "flat-7")]
    assert all(isinstance(s, Subject) for s in parse_payload(payload)[0])


def test_data_clock_is_monotonic_and_wall_clock_ignores_data() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    clock = Clock.data(t)
    clock.observe(t - timedelta(hours=1))
    assert clock.now() == t
    clock.observe(t + timedelta(minutes=5))
    assert clock.now() == t + timedelta(minutes=5)
    wall = Clock.wall()
    wall.observe(t)
    assert abs(wall.now() - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(ValueError, match="timezone"):
        clock.observe(datetime(2026, 1, 1))


def _wait_for(predicate, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    return None


@pytest.mark.parametrize("mode", ["wall", "data"])
def test_alert_appears_within_seconds_of_notify(database: str, uid: str, mode: str) -> None:
    site, rid = f"svc-{uid}", f"svc-res-{uid}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Service test')", (site,))
        conn.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                     "VALUES (%s, %s, 'Mr S', %s)", (rid, site, date(1940, 1, 1)))
    stop = threading.Event()
    now = datetime.now(UTC) - (timedelta(0) if mode == "wall" else timedelta(days=3))
    # A data clock given its start ignores newer data other tests left in the shared database.
    clock = Clock.wall() if mode == "wall" else Clock.data(start=now)
    thread = threading.Thread(target=run_scorer, args=(Settings(database_url=database),),
                              kwargs={"stop_event": stop, "clock": clock, "tick_s": 1.0}, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # let it LISTEN and rescore
        with psycopg.connect(database, autocommit=True) as conn, conn.transaction():
            for seq, (metric, value) in enumerate((("spo2", 90.0), ("pulse_rate", 135.0)), start=1):
                conn.execute(
                    "INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, "
                    "value, received_at, subject_kind) VALUES (%s, %s, %s, %s, %s, 'ox', %s, %s, %s, 'resident')",
                    (now, f"gw-{uid}", seq, site, rid, metric, value, now))
            # ingest's payload (v2: kind-qualified subjects); in data mode one from ingest before v2 (bare ids), as
            # a scorer meets during a rolling upgrade
            payload = (notify_payloads([Subject("resident", rid)], now)[0] if mode == "wall"
                       else json.dumps({"subjects": [rid], "max_received_at": now.isoformat()}))
            conn.execute("SELECT pg_notify('carewatch_readings', %s)", (payload,))

        def alert_exists() -> bool:
            with psycopg.connect(database) as conn:
                row = conn.execute("SELECT severity, opened_at FROM alerts WHERE subject_id = %s AND kind = 'news2'",
                                   (rid,)).fetchone()
            return row is not None and row[0] == "medium"

        waited = _wait_for(alert_exists, 10.0)
        assert waited is not None, "no news2 alert within 10 s of NOTIFY"
        assert waited < 5.0
        if mode == "data":  # simulated time: the alert is stamped with the data's time, not the wall clock
            with psycopg.connect(database) as conn:
                opened = conn.execute("SELECT opened_at FROM alerts WHERE subject_id = %s", (rid,)).fetchone()[0]
            assert opened == now
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_catch_up_slices_fit_the_budget_at_each_kinds_measured_cost() -> None:
    """A takeover's catch-up goes beside fresh readings in slices cut to a time budget (H-HA-05): hundreds of
    residents, a handful of households, never none, and the estimate follows what the batches really cost."""
    pacer = CatchUpPacer(budget_s=0.3005, most=200)
    residents = [Subject("resident", f"res-{i:04d}") for i in range(1000)]
    households = [Subject("household", f"hh-{i:04d}") for i in range(1000)]
    assert pacer.take(residents) == 100  # 0.3 s at a first guess of 3 ms
    assert pacer.take(households) == 3  # 80 ms each: 200 of them held fresh readings up for ~50 s (bench_scale)
    assert pacer.take(households[:2] + residents) == 2 + 46
    assert pacer.take([]) == 0
    # slow households measured: fewer per slice, but never none
    pacer.observe(EvaluationSummary(households=3), elapsed_s=3.0)
    assert pacer.cost_s["household"] == pytest.approx(0.5 * 0.08 + 0.5 * 1.0)
    assert pacer.take(households) == 1
    # warm residents measured (their laps are the summary's load, rules and write): up to the slice's maximum
    pacer.observe(EvaluationSummary(residents=200, load_s=0.05, rules_s=0.04, write_s=0.01), elapsed_s=0.1)
    pacer.observe(EvaluationSummary(residents=200, load_s=0.05, rules_s=0.04, write_s=0.01), elapsed_s=0.1)
    assert pacer.cost_s["resident"] < 0.0013
    assert pacer.take(residents) == 200
    # a batch's households are its wall time less the residents' laps
    before = pacer.cost_s["household"]
    pacer.observe(EvaluationSummary(residents=100, households=2, load_s=0.1, rules_s=0.1, write_s=0.0),
                  elapsed_s=0.4)
    assert pacer.cost_s["household"] == pytest.approx(0.5 * before + 0.5 * 0.1)


def test_the_heap_freezer_collects_then_freezes_what_survived_on_its_cadence() -> None:
    """H-HA-06: the scorer's remembered objects are frozen out of the collector's full passes, after a collection
    (so cyclic garbage is not frozen with them), once per cadence or when forced."""
    import gc
    import weakref

    class Node:
        pass

    ticks = iter([0.0, 10.0, 61.0, 70.0])
    freezer = HeapFreezer(every_s=60.0, clock=lambda: next(ticks))  # created at t=0
    try:
        cycle = Node()
        cycle.self = cycle  # type: ignore[attr-defined]  # a reference cycle: only the collector frees it
        dead = weakref.ref(cycle)
        del cycle
        kept = [Node() for _ in range(1000)]
        assert not freezer.maybe_freeze()  # t=10: too soon
        assert freezer.maybe_freeze()  # t=61
        assert dead() is None  # collected before the freeze, not frozen
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        assert freezer.maybe_freeze(force=True)  # t=70: forced (a catch-up just finished)
    finally:
        gc.unfreeze()
