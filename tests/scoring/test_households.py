"""scoring/households.py against real PostgreSQL: what the household evaluation reads, and when it runs."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from importlib import resources

import psycopg
import pytest

from carewatch.scoring import engine, households, lifecycle
from carewatch.scoring.engine import evaluate_subjects, tick
from carewatch.scoring.rules import GATEWAY_SILENT_AFTER, LOCAL_TZ


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
    """A household set up a month ago (its rows' ``changed_at`` then): a hall, a bathroom, a fridge door."""
    site, month_ago = f"hh-{uid}", NOW - timedelta(days=30)
    db.execute("INSERT INTO sites (site_id, kind, name, long_lie_minutes, changed_at) "
               "VALUES (%s, 'household', %s, 45, %s)", (site, f"Flat {uid}", month_ago))
    db.execute("INSERT INTO gateways (gateway_id, site_id, state, last_seen, changed_at) "
               "VALUES (%s, %s, 'online', NULL, %s)", (f"gw-{site}", site, month_ago))
    db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, monitoring, changed_at) "
               "VALUES (%s, %s, 'Person', '1938-04-02', 'active', %s)", (f"p-{uid}", site, month_ago))
    for device, kind, role in (("hall", "motion_sensor", "hallway"), ("bath", "motion_sensor", "bathroom"),
                               ("fridge", "door_sensor", "fridge_door")):
        db.execute("INSERT INTO devices (device_id, site_id, gateway_id, kind, role, bound_at, changed_at) "
                   "VALUES (%s, %s, %s, %s, %s, %s, %s)", (f"{device}-{uid}", site, f"gw-{site}", kind, role,
                                                           month_ago, month_ago))
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


def test_a_reading_newer_than_the_newest_evaluated_is_urgent(db, uid) -> None:
    """The catch-all for a missed NOTIFY (H-HOME-11): a household whose latest values hold one newer than the newest
    reading its last evaluation had is urgent, by a microsecond; a late value older than that is not news (the
    NOTIFY path's alone); a household outside the replica's share is not returned."""
    site, other = _flat(db, uid), _flat(db, f"{uid}-b")
    t0 = (NOW - timedelta(days=1)).astimezone(LOCAL_TZ).replace(hour=11, minute=0).astimezone(UTC)
    _reading(db, site, f"hall-{uid}", "motion", 1, t0)
    _reading(db, other, f"hall-{uid}-b", "motion", 1, t0)
    evaluate_subjects(db, [site, other], t0 + timedelta(seconds=10))
    at = t0 + timedelta(minutes=1)
    assert households.due_by_urgency(db, at, [site, other]) == ([], [])
    _reading(db, site, f"fridge-{uid}", "door_open", 1, t0 - timedelta(minutes=5))
    assert households.due_by_urgency(db, at, [site, other]) == ([], [])
    _reading(db, site, f"fridge-{uid}", "door_open", 0, t0 + timedelta(microseconds=1))
    assert households.due_by_urgency(db, at, [site, other]) == ([site], [])
    assert households.due_by_urgency(db, at, [other]) == ([], [])
    urgent, routine = households.due_by_urgency(db, at, None)  # the whole estate (other tests' households too)
    assert site in urgent and other not in urgent + routine


class _Recording:
    """A connection that records the queries it is given."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn, self.queries = conn, []

    def execute(self, query, params=None, **kwargs):
        self.queries.append((query, params))
        return self.conn.execute(query, params, **kwargs)

    def transaction(self):
        return self.conn.transaction()


def test_the_newer_reading_catch_all_is_read_by_its_index(db) -> None:
    """The catch-all is one descent of migration 0033's partial index per household (no heap visit when nothing
    is newer), whose predicate the planner proves only from the literal the query sends."""
    sql = (resources.files("carewatch.db") / "migrations" / "0033_latest_readings_household_newest.sql").read_text()
    assert "WHERE subject_kind = 'household'" in sql
    recording = _Recording(db)
    households.due_by_urgency(recording, NOW, None)  # type: ignore[arg-type]  # a test double
    query, params = recording.queries[-1]
    assert "l.subject_kind = 'household'" in query
    db.execute("SET LOCAL enable_seqscan = off")
    plan = "\n".join(r[0] for r in db.execute(f"EXPLAIN {query}", params))
    assert "Index Only Scan using latest_readings_household_newest" in plan, plan


# ------------------------------------------------------------------------------------------------------------
# Changes that are not readings make a household due at once, not at the cadence (H-HOME-11)
# ------------------------------------------------------------------------------------------------------------
def _db_now(db: psycopg.Connection) -> datetime:
    """The test transaction's start: the ``changed_at`` the triggers of migration 0032 write in it."""
    [at] = db.execute("SELECT now()").fetchone()
    return at


def _evaluated_at(db: psycopg.Connection, site: str) -> datetime:
    [at] = db.execute("SELECT evaluated_at FROM household_state WHERE site_id = %s", (site,)).fetchone()
    return at


def _hub_back_from_silence(db: psycopg.Connection, site: str, at: datetime) -> None:
    db.execute("UPDATE gateways SET last_seen = greatest(last_seen, %s) WHERE site_id = %s", (at, site))


def _snooze(db: psycopg.Connection, site: str, until: datetime) -> None:
    db.execute("INSERT INTO alert_suppressions (subject_kind, subject_id, site_id, kind, reason, until, created_by, "
               "created_at) VALUES ('household', %s, %s, NULL, 'family visiting', %s, 'nurse', %s)",
               (site, site, until, until - timedelta(hours=3)))


_CHANGES = {
    "a setting": lambda db, site, at: db.execute("UPDATE sites SET long_lie_minutes = 60 WHERE site_id = %s", (site,)),
    "a device bound": lambda db, site, at: db.execute(
        "INSERT INTO devices (device_id, site_id, gateway_id, kind, role) VALUES (%s, %s, %s, 'motion_sensor', "
        "'kitchen')", (f"new-{site}", site, f"gw-{site}")),
    "a device unbound": lambda db, site, at: db.execute(
        "UPDATE devices SET active = false, unbound_at = now() WHERE site_id = %s AND role = 'hallway'", (site,)),
    "monitoring paused": lambda db, site, at: db.execute(
        "UPDATE residents SET monitoring = 'paused' WHERE site_id = %s", (site,)),
    "a hub back from silence": lambda db, site, at: _hub_back_from_silence(db, site, at),
    "a hub reporting itself offline": lambda db, site, at: db.execute(
        "UPDATE gateways SET state = 'offline' WHERE site_id = %s", (site,)),
    "a snooze ended early": lambda db, site, at: db.execute(
        "UPDATE alert_suppressions SET until = %s WHERE subject_id = %s", (at, site)),
}


@pytest.mark.parametrize("change", sorted(_CHANGES))
def test_a_change_that_is_not_a_reading_makes_the_household_due_at_the_next_tick(db, uid, change: str) -> None:
    """Evaluated 2 minutes before the change and nothing due 30 s after it (the cadence is 3 minutes away); then
    the change: due at once, as urgent. Re-evaluated, it stays due while the change is within CHANGE_SLACK of the
    evaluation (a transaction that began before the evaluation read may commit after it), then not."""
    site = _flat(db, uid)
    at = _db_now(db)
    _hub_back_from_silence(db, site, at - timedelta(minutes=20))  # heard 20 min ago: offline by silence
    _snooze(db, site, at + timedelta(hours=2))
    db.execute("UPDATE gateways SET changed_at = '-infinity' WHERE site_id = %s", (site,))
    tick(db, at - timedelta(minutes=2), slow=True, site_ids=[site])
    assert households.due_by_urgency(db, at + timedelta(seconds=30), [site]) == ([], [])
    _CHANGES[change](db, site, at)
    assert households.due_by_urgency(db, at + timedelta(seconds=30), [site]) == ([site], [])
    for seconds in (30, 61):  # the second within CHANGE_SLACK of the change
        tick(db, at + timedelta(seconds=seconds), slow=True, site_ids=[site])
        assert _evaluated_at(db, site) == at + timedelta(seconds=seconds)
    assert households.households_due(db, at + timedelta(seconds=91), [site]) == []


def test_what_the_rules_do_not_read_changes_nothing(db, uid) -> None:
    """The triggers mark only what the household rules read: a device's battery and last_seen (ingest, every
    status message) and a hub's heartbeat leave ``changed_at`` alone; a return from silence is marked with a
    margin below GATEWAY_SILENT_AFTER, the 10 minutes after which the rules count a hub as offline."""
    sql = (resources.files("carewatch.db") / "migrations" / "0032_household_changes.sql").read_text()
    [margin] = re.findall(r"NEW\.last_seen > OLD\.last_seen \+ interval '(\d+) minutes'", sql)
    assert timedelta(minutes=int(margin)) < GATEWAY_SILENT_AFTER
    site = _flat(db, uid)
    at = _db_now(db)
    db.execute("UPDATE devices SET battery_pct = 80, last_seen = %s WHERE site_id = %s", (at, site))
    _hub_back_from_silence(db, site, at - timedelta(minutes=3))
    db.execute("UPDATE gateways SET changed_at = '-infinity' WHERE site_id = %s", (site,))
    _hub_back_from_silence(db, site, at)  # 3 minutes on: a heartbeat, not a return
    assert db.execute("SELECT (SELECT max(changed_at) FROM devices WHERE site_id = %s), "
                      "(SELECT changed_at = '-infinity' FROM gateways WHERE site_id = %s)",
                      (site, site)).fetchone() == (NOW - timedelta(days=30), True)


def test_an_alert_a_person_closes_is_raised_again_by_the_next_tick(db, uid) -> None:
    """The long lie is raised at T0 + 45 min; a nurse closes it at T0 + 47 (nobody went: the person is still not
    moving); the tick 30 s later raises it again, not the cadence's at T0 + 50. The scorer's own resolutions are
    not news."""
    site = _flat(db, uid)
    t0 = (NOW - timedelta(days=1)).astimezone(LOCAL_TZ).replace(hour=11, minute=0).astimezone(UTC)
    _reading(db, site, f"hall-{uid}", "motion", 1, t0)
    evaluate_subjects(db, [site], t0 + timedelta(minutes=1))
    tick(db, t0 + timedelta(minutes=45), slow=True, site_ids=[site])
    [(alert_id, status)] = db.execute("SELECT alert_id, status FROM alerts WHERE subject_id = %s AND kind = "
                                      "'long_lie'", (site,)).fetchall()
    assert status == "open"
    assert households.households_due(db, t0 + timedelta(minutes=46), [site]) == []
    lifecycle.resolve(db, alert_id, "nurse.jones", "Rang: no answer, closed by mistake", at=t0 + timedelta(minutes=47))
    assert households.due_by_urgency(db, t0 + timedelta(minutes=47, seconds=30), [site]) == ([site], [])
    tick(db, t0 + timedelta(minutes=47, seconds=30), slow=True, site_ids=[site])
    assert sorted(_long_lies(db, site), key=lambda row: row[1]) == [
        ("resolved", t0 + timedelta(minutes=45)), ("open", t0 + timedelta(minutes=47, seconds=30))]


def test_the_change_sources_are_read_by_index(db) -> None:
    """Each source of changes is an index range over the last few minutes, not a scan of the estate."""
    db.execute("SET LOCAL enable_seqscan = off")
    plan = "\n".join(r[0] for r in db.execute(
        f"EXPLAIN {households._CHANGED_SQL}", households._due_parameters(NOW)))
    for index in ("sites_changed_at", "devices_changed_at", "residents_changed_at", "gateways_changed_at",
                  "alerts_household_resolved", "alert_suppressions_household_until"):
        assert index in plan, plan


# ------------------------------------------------------------------------------------------------------------
# The 06:00 burst: urgent households first, and looked for again between slices of the rest (H-HOME-11)
# ------------------------------------------------------------------------------------------------------------
def test_a_deadline_crossed_during_a_long_pass_is_evaluated_between_its_slices(db, uid, monkeypatch) -> None:
    """61 households due by the cadence only (routine). One of them, first in the pass, reaches its long-lie
    deadline 1 ms after the tick's time: the first slice evaluates it before the deadline; the urgent re-check
    after that slice (every slice here) finds it and raises the long lie at the time the pass has reached,
    within the same tick, where a pass evaluating every household at the tick's time would leave it to the next
    tick."""
    monkeypatch.setattr(engine, "URGENT_RECHECK_EVERY", timedelta(0))
    t0 = (NOW - timedelta(days=1)).astimezone(LOCAL_TZ).replace(hour=11, minute=0).astimezone(UTC)
    lying = _flat(db, f"{uid}-0")
    others = [_flat(db, f"{uid}-r{i:02}") for i in range(60)]
    motion_at = t0 + timedelta(milliseconds=1) - timedelta(minutes=45)
    _reading(db, lying, f"hall-{uid}-0", "motion", 1, motion_at)
    evaluate_subjects(db, [lying, *others], motion_at + timedelta(minutes=1))
    assert households.due_by_urgency(db, t0, [lying, *others]) == ([], [lying, *others])
    summary = tick(db, t0, slow=True, site_ids=[lying, *others])
    assert summary.households == 62  # the 61, and the lying one again
    [(status, opened_at)] = _long_lies(db, lying)
    assert status == "open" and t0 < opened_at < t0 + timedelta(seconds=30)
    # urgent first: a deadline reached is put before the cadence's households
    later = t0 + timedelta(minutes=7)  # the others by the cadence; the raised long lie's text ("0.9 waking hours")
    urgent, routine = households.due_by_urgency(db, later, [lying, *others])
    assert urgent == [lying] and sorted(routine) == others
    assert households.households_due(db, later, [lying, *others])[0] == lying
