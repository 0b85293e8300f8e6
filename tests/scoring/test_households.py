"""scoring/households.py against real PostgreSQL: what the household evaluation reads, and when it runs."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from importlib import resources

import psycopg

from carewatch.scoring import households
from carewatch.scoring.engine import evaluate_subjects, tick
from carewatch.scoring.rules import LOCAL_TZ


def test_the_look_back_reads_use_their_partial_indexes(db: psycopg.Connection) -> None:
    """The night events and the newest kitchen event are read through migration 0028's partial indexes, whose
    predicates the planner proves only from the literals the query sends: the two must stay the same text."""
    sql = (resources.files("carewatch.db") / "migrations" / "0028_behaviour_lookback_indexes.sql").read_text()
    assert f"kind IN ({households._KITCHEN_SQL})" in sql
    flat = " ".join(sql.split())
    assert " ".join(households._NIGHT_EVENTS_SQL.split()) in flat
    db.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in db.execute(
        f"EXPLAIN SELECT 1 FROM behaviour_events WHERE site_id = 'x' AND {households._NIGHT_EVENTS_SQL}"))
    assert "behaviour_events_night" in plan
    plan = "\n".join(r[0] for r in db.execute(
        f"EXPLAIN SELECT 1 FROM behaviour_events WHERE site_id = 'x' AND kind IN ({households._KITCHEN_SQL}) "
        "ORDER BY ended_at DESC NULLS LAST LIMIT 1"))
    assert "behaviour_events_kitchen_end" in plan


# ------------------------------------------------------------------------------------------------------------
# The slow tick evaluates only the households that can have changed (H-HOME-11)
# ------------------------------------------------------------------------------------------------------------
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
_seq = itertools.count(1)


def _flat(db: psycopg.Connection, uid: str) -> str:
    site = f"hh-{uid}"
    db.execute("INSERT INTO sites (site_id, kind, name, long_lie_minutes) VALUES (%s, 'household', %s, 45)",
               (site, f"Flat {uid}"))
    db.execute("INSERT INTO gateways (gateway_id, site_id, state, last_seen) VALUES (%s, %s, 'online', NULL)",
               (f"gw-{site}", site))
    db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, monitoring) "
               "VALUES (%s, %s, 'Person', '1938-04-02', 'active')", (f"p-{uid}", site))
    for device, kind, role in (("hall", "motion_sensor", "hallway"), ("bath", "motion_sensor", "bathroom"),
                               ("fridge", "door_sensor", "fridge_door")):
        db.execute("INSERT INTO devices (device_id, site_id, gateway_id, kind, role, bound_at) "
                   "VALUES (%s, %s, %s, %s, %s, %s)", (f"{device}-{uid}", site, f"gw-{site}", kind, role,
                                                       NOW - timedelta(days=30)))
    return site


def _reading(db: psycopg.Connection, site: str, device: str, metric: str, value: float, at: datetime) -> None:
    """A household reading as ingest stores it: the reading and the household's latest value of the metric."""
    db.execute("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value, "
               "received_at, subject_kind) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'household')",
               (at, f"gw-{site}", next(_seq), site, site, device, metric, value, at))
    db.execute("INSERT INTO latest_readings AS l (subject_kind, subject_id, metric, site_id, device_id, value, "
               "measured_at) VALUES ('household', %s, %s, %s, %s, %s, %s) ON CONFLICT (subject_kind, subject_id, "
               "metric) DO UPDATE SET value = EXCLUDED.value, measured_at = EXCLUDED.measured_at "
               "WHERE l.measured_at <= EXCLUDED.measured_at", (site, metric, site, device, value, at))


def _long_lies(db: psycopg.Connection, site: str) -> list[tuple[str, datetime]]:
    return db.execute("SELECT status, opened_at FROM alerts WHERE subject_kind = 'household' AND subject_id = %s "
                      "AND kind = 'long_lie'", (site,)).fetchall()


def test_a_long_lie_crossed_without_new_readings_is_alerted_by_the_next_slow_tick(db, uid) -> None:
    """H-HOME-11: the slow tick skips a household nothing can have changed, but not past a rule's deadline. Motion
    in the hall at T0, nothing since (long_lie_minutes 45, waking hours): ticks every minute evaluate the household
    only when its recheck time, the 5-minute cadence or a new reading says so, and the one at T0 + 45 min raises
    the long lie (the 5-minute cadence alone would raise it a minute late, at T0 + 46 min)."""
    site = _flat(db, uid)
    t0 = (NOW - timedelta(days=1)).astimezone(LOCAL_TZ).replace(hour=11, minute=0).astimezone(UTC)
    _reading(db, site, f"hall-{uid}", "motion", 1, t0)
    assert evaluate_subjects(db, [site], t0 + timedelta(minutes=1)).households == 1  # NOTIFY path
    evaluated = []
    for minute in range(2, 53):
        summary = tick(db, t0 + timedelta(minutes=minute), slow=True, site_ids=[site])
        evaluated += [minute] * summary.households
        if minute < 45:
            assert _long_lies(db, site) == []
    assert _long_lies(db, site) == [("open", t0 + timedelta(minutes=45))]
    # unchanged between: only the bounded cadence (every 5 minutes) and the deadline ran it; once raised, the
    # cadence (T0 + 50) and its text: "0.8 waking hours" becomes "0.9" just after 0.85 h (0.85 is 0.8499... in
    # binary), at the tick of T0 + 52 min
    assert evaluated == [6, 11, 16, 21, 26, 31, 36, 41, 45, 50, 52]
    [reason] = db.execute("SELECT reason FROM alerts WHERE subject_id = %s AND kind = 'long_lie'", (site,)).fetchone()
    assert "0.9 waking hours" in reason


def test_a_household_never_evaluated_or_with_a_clock_gone_back_is_due(db, uid) -> None:
    site = _flat(db, uid)
    assert households.households_due(db, NOW, [site]) == [site]  # never evaluated
    tick(db, NOW, slow=True, site_ids=[site])
    assert households.households_due(db, NOW + timedelta(seconds=30), [site]) == []
    assert households.households_due(db, NOW - timedelta(minutes=1), [site]) == [site]  # a clock gone back
    assert households.households_due(db, NOW + households.HOUSEHOLD_RECHECK_MAX, [site]) == [site]
    # a reading the NOTIFY path did not evaluate (a missed notification) is news: the next tick evaluates it
    _reading(db, site, f"fridge-{uid}", "door_open", 1, NOW + timedelta(seconds=10))
    assert households.households_due(db, NOW + timedelta(seconds=30), [site]) == [site]
    assert tick(db, NOW + timedelta(seconds=30), slow=True, site_ids=[site]).households == 1
    assert households.households_due(db, NOW + timedelta(seconds=60), [site]) == []
