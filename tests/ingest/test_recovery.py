"""Gap recovery planning: the pure range computation and policy, then one planning pass against PostgreSQL."""

from __future__ import annotations

import json

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from carewatch.ingest.recovery import (
    REQUESTED_KIND,
    HoleAges,
    ResendPolicy,
    cap_ranges,
    missing_ranges,
    plan_request,
    plan_resends,
)
from carewatch.ingest.store import store_batch
from carewatch.wire import ResendRequest, decode_batch, merge_runs, runs_from_seqs, subtract_runs

from .conftest import Estate

POLICY = ResendPolicy(grace_s=30, interval_s=60, max_attempts=3, backoff_cap_s=1000)


# ------------------------------------------------------------------------------------------------------------
# pure
# ------------------------------------------------------------------------------------------------------------
def test_missing_ranges_are_the_holes_below_the_highest_stored_seq() -> None:
    assert missing_ranges([]) == []
    assert missing_ranges([(1, 10)]) == []
    assert missing_ranges([(1, 3), (7, 8), (10, 12)]) == [(4, 6), (9, 9)]
    assert missing_ranges([(5, 6)]) == [(1, 4)], "sequences start at 1"
    assert missing_ranges([(7, 8), (1, 3), (2, 4)]) == [(5, 6)], "any order, overlaps allowed"


@given(st.sets(st.integers(min_value=1, max_value=300), max_size=120))
def test_missing_ranges_are_exactly_the_unstored_seqs(stored: set[int]) -> None:
    holes = missing_ranges(runs_from_seqs(stored))
    expected = set(range(1, max(stored, default=0) + 1)) - stored
    assert {s for first, last in holes for s in range(first, last + 1)} == expected
    assert holes == merge_runs(holes), "ascending, disjoint, not adjacent"


@given(st.sets(st.integers(1, 200), max_size=80), st.sets(st.integers(1, 200), max_size=80))
def test_subtract_runs_is_set_difference(a: set[int], b: set[int]) -> None:
    assert subtract_runs(runs_from_seqs(a), runs_from_seqs(b)) == runs_from_seqs(a - b)


def test_cap_ranges_keeps_the_oldest_within_both_limits() -> None:
    ranges = [(1, 5), (10, 10), (20, 29), (40, 49)]
    assert cap_ranges(ranges, max_ranges=2, max_readings=100) == [(1, 5), (10, 10)]
    assert cap_ranges(ranges, max_ranges=10, max_readings=9) == [(1, 5), (10, 10), (20, 22)]
    assert cap_ranges(ranges, max_ranges=10, max_readings=6) == [(1, 5), (10, 10)]
    capped = cap_ranges([(i * 10, i * 10 + 1) for i in range(1, 500)], 100, 100_000)
    ResendRequest(site_id="s", gateway_id="g", requested_at="2026-01-01T00:00:00Z", ranges=capped)  # fits the wire


def test_hole_age_survives_shrinking_and_splitting_and_new_holes_start_now() -> None:
    ages = HoleAges()
    assert ages.observe("g", [(10, 20)], now=100.0) == [((10, 20), 100.0)]
    # late readings 13-15 arrived: the hole split; a new hole 40-41 opened above
    assert ages.observe("g", [(10, 12), (16, 20), (40, 41)], now=130.0) == [
        ((10, 12), 100.0), ((16, 20), 100.0), ((40, 41), 130.0)]
    ages.keep_only([])
    assert ages.observe("g", [(10, 12)], now=200.0) == [((10, 12), 200.0)], "forgotten once the gateway had none"


def test_plan_waits_for_the_grace_period() -> None:
    holes = [((5, 9), 100.0), ((20, 20), 125.0)]
    assert plan_request(holes, [], now=129.0, policy=POLICY).ranges == []
    assert plan_request(holes, [], now=130.0, policy=POLICY).ranges == [(5, 9)]
    assert plan_request(holes, [], now=155.0, policy=POLICY).ranges == [(5, 9), (20, 20)]


def test_plan_rate_limits_per_gateway_backs_off_per_hole_and_gives_up() -> None:
    holes = [((5, 9), 0.0)]
    asked_once = [(100.0, [(5, 9)])]
    assert plan_request(holes, asked_once, now=159.0, policy=POLICY).ranges == [], "one request per interval"
    assert plan_request(holes, asked_once, now=160.0, policy=POLICY).ranges == [(5, 9)], "1st retry after 60 s"
    asked_twice = [*asked_once, (160.0, [(1, 9)])]
    assert plan_request(holes, asked_twice, now=279.0, policy=POLICY).ranges == [], "2nd retry waits 120 s"
    assert plan_request(holes, asked_twice, now=280.0, policy=POLICY).ranges == [(5, 9)]
    # a new hole is not held back by an old one's back-off, only by the per-gateway interval
    both = [((5, 9), 0.0), ((30, 31), 100.0)]
    assert plan_request(both, asked_twice, now=230.0, policy=POLICY).ranges == [(30, 31)]
    asked_thrice = [*asked_twice, (280.0, [(5, 9)])]
    plan = plan_request(holes, asked_thrice, now=10_000.0, policy=POLICY)
    assert plan.ranges == [] and plan.exhausted == [(5, 9)], "left alone after max_attempts"


# ------------------------------------------------------------------------------------------------------------
# one planning pass against the real database
# ------------------------------------------------------------------------------------------------------------
def store(db: psycopg.Connection, estate: Estate, seqs: list[int]) -> None:
    store_batch(db, [decode_batch(estate.batch(seqs))])


def requests_recorded(db: psycopg.Connection, gateway_id: str) -> list[dict]:
    return [row[0] for row in db.execute(
        "SELECT detail FROM gateway_events WHERE gateway_id = %s AND kind = %s ORDER BY event_id",
        (gateway_id, REQUESTED_KIND))]


def test_plan_resends_asks_for_real_holes_only_and_records_the_request(db: psycopg.Connection,
                                                                      estate: Estate) -> None:
    store(db, estate, [1, 2, 6, 7, 12])  # holes 3-5 and 8-11
    # seq 9 arrived but was refused (implausible): a replay would be refused again, so it is not asked for
    bad = json.loads(estate.batch([9]))
    bad["readings"][0]["value"] = 12
    store_batch(db, [decode_batch(json.dumps(bad))])
    # the gateway already said it no longer has 3-4
    db.execute("""INSERT INTO gateway_events (site_id, gateway_id, kind, at, message, detail, fingerprint)
                  VALUES (%s, %s, 'replay_unavailable', now(), 'gone', '{"ranges": [[3, 4]]}', %s)""",
               (estate.site_id, estate.gateway_id, f"gone-{estate.gateway_id}"))
    db.commit()
    ages = HoleAges()
    policy = ResendPolicy(grace_s=0, interval_s=3600)
    plan = plan_resends(db, ages, policy)
    assert plan.planned
    [request] = [r for r in plan.requests if r.gateway_id == estate.gateway_id]
    assert (request.site_id, request.ranges) == (estate.site_id, [(5, 5), (8, 8), (10, 11)])
    assert requests_recorded(db, estate.gateway_id) == [{"ranges": [[5, 5], [8, 8], [10, 11]], "readings": 4}]
    # the per-gateway interval holds across workers: a second worker (its own ages) asks nothing now
    again = plan_resends(db, HoleAges(), policy)
    assert [r for r in again.requests if r.gateway_id == estate.gateway_id] == []
    assert len(requests_recorded(db, estate.gateway_id)) == 1


def test_plan_resends_waits_for_the_grace_period(db: psycopg.Connection, estate: Estate) -> None:
    store(db, estate, [1, 5])
    db.commit()
    ages = HoleAges()
    patient = ResendPolicy(grace_s=3600, interval_s=1)
    assert [r for r in plan_resends(db, ages, patient).requests if r.gateway_id == estate.gateway_id] == []
    eager = ResendPolicy(grace_s=0, interval_s=1)
    [request] = [r for r in plan_resends(db, ages, eager).requests if r.gateway_id == estate.gateway_id]
    assert request.ranges == [(2, 4)]


def test_only_one_worker_plans_at_a_time(database: str, db: psycopg.Connection, estate: Estate) -> None:
    store(db, estate, [1, 3])
    db.commit()
    with psycopg.connect(database) as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s)", (0x43575253,))
        plan = plan_resends(db, HoleAges(), ResendPolicy(grace_s=0))
        assert not plan.planned and plan.requests == []
