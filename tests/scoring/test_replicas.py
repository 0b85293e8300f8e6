"""Scorer replicas: the bucket plan (pure), and real ``carewatch score`` processes taking over a killed replica's
sites, racing without duplicating alerts, and the watchdog raising scoring_stalled for a site nobody scores."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import waiting
from children import Service
from databases import fresh_database
from fastapi.testclient import TestClient

from carewatch.alerts import AlertKind
from carewatch.api.app import create_app
from carewatch.embedded import free_port
from carewatch.ingest.store import notify_payloads
from carewatch.notify import deliveries
from carewatch.notify.escalation import escalation_pass
from carewatch.scoring.devices import gateway_pass
from carewatch.scoring.engine import EvaluationSummary
from carewatch.scoring.replicas import BUCKETS, LOCK_CLASS, fair_share, plan_leases, stalled_findings
from carewatch.settings import Settings, process_env
from carewatch.subjects import Subject

#: polls the database
wait_until = functools.partial(waiting.wait_until, interval=0.25)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------------------------
# Pure: the lease plan and the stalled rule
# ------------------------------------------------------------------------------------------------------------
def test_a_lone_replica_takes_every_bucket() -> None:
    take, release = plan_leases(set(), set(range(BUCKETS)), set(), [])
    assert sorted(take) == list(range(BUCKETS)) and release == []


def test_a_second_replica_gets_half_and_the_first_releases_only_for_it() -> None:
    everything = set(range(BUCKETS))
    # the first holds all; a second is live with none: the first gives back the excess
    take, release = plan_leases(everything, set(), set(), [0])
    assert take == [] and len(release) == BUCKETS - fair_share(BUCKETS, 2)
    # the second takes up to its share of what is free
    take, _ = plan_leases(set(), set(release), set(), [BUCKETS - len(release)], offset=7)
    assert sorted(take) == sorted(release)
    # balanced: nobody releases, nobody takes
    half = set(range(BUCKETS // 2))
    assert plan_leases(half, set(), set(), [BUCKETS // 2]) == ([], [])


def test_free_buckets_are_taken_beyond_the_share_when_nobody_took_them_for_a_round() -> None:
    mine = set(range(32))
    orphaned = set(range(32, 64))  # their holder died; a stale heartbeat still counts it as live
    take, _ = plan_leases(mine, orphaned, set(), [32])
    assert take == []  # first sight: leave them to a replica under its share
    take, _ = plan_leases(mine, orphaned, orphaned, [32])
    assert sorted(take) == sorted(orphaned)  # still free a round later: owned beats balanced


def test_a_replica_above_its_share_keeps_its_buckets_when_nobody_is_short() -> None:
    # three replicas holding 30/30/4 of 64: the share is 22, the third is short, so the first two release
    take, release = plan_leases(set(range(30)), set(), set(), [30, 4])
    assert take == [] and len(release) == 30 - fair_share(BUCKETS, 3)
    # nobody short (22/21/21): no churn
    assert plan_leases(set(range(22)), set(), set(), [21, 21]) == ([], [])


# ------------------------------------------------------------------------------------------------------------
# The tick's statements given a replica's share of sites
# ------------------------------------------------------------------------------------------------------------
def test_the_statements_given_a_replica_s_share_are_never_prepared(db, uid) -> None:
    """The escalation candidates, the gateway pass and the notify loop's claim take the share (thousands of sites)
    as one list and run on one connection for ever: prepared (psycopg does so from a statement's 6th execution),
    the server switched to a generic plan from about the 11th call that compares every row with the whole list
    (gateway_pass 0.2 -> 6-9 s at 22,000 sites; docs/scaling.md). Called as the tick and the notify loop call them,
    none of the three is ever prepared on the connection."""
    share = [f"site-{uid}-{i}" for i in range(50)]
    for _ in range(12):
        escalation_pass(db, T0, site_ids=share)
        gateway_pass(db, T0, EvaluationSummary(), share)
        deliveries.claim(db, f"test-{uid}", site_ids=share)
    prepared = [row[0] for row in db.execute("SELECT statement FROM pg_prepared_statements")]
    for statement in ("FROM incidents i JOIN sites s", "FROM gateways g JOIN sites s",
                      "UPDATE notification_deliveries d SET claimed_by"):
        assert not [s for s in prepared if statement in s], (statement, prepared)


def test_stalled_findings_raise_after_the_limit_and_clear_once_scored() -> None:
    now = T0
    found = stalled_findings([("a", "Home A", now - timedelta(minutes=3)),
                              ("b", "Home B", now - timedelta(seconds=30))],
                             now)
    by_site = {f.subject_id: f for f in found}
    assert by_site["a"].state == "raise" and by_site["a"].kind is AlertKind.SCORING_STALLED
    assert by_site["a"].severity.value == "high" and "Home A" in by_site["a"].reason
    assert by_site["b"].state == "clear"
    # the text does not change while the stall lasts (no alert update every pass)
    later = stalled_findings([("a", "Home A", now - timedelta(minutes=3))], now + timedelta(minutes=10))
    assert later[0].reason == by_site["a"].reason


# ------------------------------------------------------------------------------------------------------------
# Real replicas
# ------------------------------------------------------------------------------------------------------------
class Replica(Service):
    """One ``carewatch score`` process with its own log file."""

    def __init__(self, dsn: str, name: str, log_dir: Path, **settings: str) -> None:
        env = process_env(drop_prefixes=("CAREWATCH_",), CAREWATCH_DATABASE_URL=dsn, CAREWATCH_LOG_JSON="true",
                          **{f"CAREWATCH_{k.upper()}": v for k, v in settings.items()})
        super().__init__(name, ["score", "--replica-id", name], env, log_dir, log_name=f"scorer-{name}")


@pytest.fixture
def own_db(pg_server: str) -> Iterator[str]:
    """A database of its own: bucket locks and tables are per database, and no other test's sites to score."""
    with fresh_database(pg_server, prefix="carewatch_replicas") as dsn:
        yield dsn


def seed(dsn: str, sites: int, residents_per_site: int) -> dict[str, list[str]]:
    """Care homes with residents; returns site -> resident ids."""
    out: dict[str, list[str]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(sites):
            site = f"home-{i:02d}"
            conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', %s)", (site, f"Home {i}"))
            out[site] = []
            for j in range(residents_per_site):
                rid = f"res-{i:02d}-{j}"
                conn.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                             "VALUES (%s, %s, %s, %s)", (rid, site, f"Resident {i}/{j}", date(1940, 1, 1)))
                out[site].append(rid)
    return out


_seq = iter(range(1, 10**9))


def deteriorate(dsn: str, residents: dict[str, str], spo2: float) -> None:
    """SpO2 ``spo2`` and pulse 135 for each resident (resident -> site), stored and notified as ingest does."""
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for rid, site in residents.items():
            for metric, value in (("spo2", spo2), ("pulse_rate", 135.0)):
                conn.execute(
                    "INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, "
                    "value, received_at, subject_kind) "
                    "VALUES (%s, 'gw-test', %s, %s, %s, 'ox', %s, %s, %s, 'resident')",
                    (now, next(_seq), site, rid, metric, value, now))
        for payload in notify_payloads([Subject("resident", rid) for rid in sorted(residents)], now):
            conn.execute("SELECT pg_notify('carewatch_readings', %s)", (payload,))


def holdings(dsn: str) -> dict[str, list[int]]:
    """Live replica -> buckets, as the replicas report them."""
    with psycopg.connect(dsn) as conn:
        return {r: b for r, b in conn.execute(
            "SELECT replica_id, buckets FROM scorer_replicas r "
            "WHERE EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.lease_pid)")}


def bucket_of(dsn: str, site_ids: list[str]) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT s, carewatch_site_bucket(s, %s) FROM unnest(%s::text[]) AS s",
                                 (BUCKETS, site_ids)).fetchall())


def news2_alerts(dsn: str) -> dict[str, list[tuple[int, str]]]:
    with psycopg.connect(dsn) as conn:
        out: dict[str, list[tuple[int, str]]] = {}
        for subject, alert_id, status in conn.execute(
                "SELECT subject_id, alert_id, status FROM alerts WHERE kind = 'news2' ORDER BY alert_id"):
            out.setdefault(subject, []).append((alert_id, status))
        return out


def test_killed_replica_sites_are_scored_by_the_other_within_30s_without_lost_or_duplicate_alerts(
        own_db: str, tmp_path: Path) -> None:
    homes = seed(own_db, sites=16, residents_per_site=2)
    first = {rs[0]: site for site, rs in homes.items()}    # alerted before the kill
    second = {rs[1]: site for site, rs in homes.items()}   # first readings only after the kill
    buckets = bucket_of(own_db, list(homes))
    a = Replica(own_db, "a", tmp_path, scorer_lease_s="1")
    b = Replica(own_db, "b", tmp_path, scorer_lease_s="1")
    replicas = [a, b]
    try:
        held = wait_until(lambda: (h := holdings(own_db)) and len(h) == 2 and all(h.values())
                          and sum(map(len, h.values())) == BUCKETS and h, 60, "two replicas sharing 64 buckets")
        assert set(held["a"]).isdisjoint(held["b"])
        b_sites = {s for s, k in buckets.items() if k in held["b"]}
        assert b_sites and b_sites != set(homes), "the sites should fall to both replicas"

        deteriorate(own_db, first, 90.0)
        wait_until(lambda: set(news2_alerts(own_db)) >= set(first), 30, "alerts from both replicas")

        b.kill()
        killed_at = time.monotonic()
        # Readings notified while b's buckets have no holder: nobody acts on the NOTIFY; the new holder's
        # catch-up must still alert on them.
        deteriorate(own_db, second, 90.0)
        deteriorate(own_db, first, 86.0)
        taken = wait_until(lambda: set(news2_alerts(own_db)) >= set(second) and
                           len(holdings(own_db).get("a", [])) == BUCKETS, 30,
                           "the surviving replica to take b's buckets and alert on its sites")
        took_s = time.monotonic() - killed_at
        assert taken and took_s < 30

        # a new replica joins while readings keep coming: buckets move between two racing replicas
        c = Replica(own_db, "c", tmp_path, scorer_lease_s="1")
        replicas.append(c)
        for spo2 in (85.0, 84.0, 83.0, 82.0):
            deteriorate(own_db, {**first, **second}, spo2)
            time.sleep(1.0)
        wait_until(lambda: (h := holdings(own_db)) and len(h) == 2 and all(h.values())
                   and sum(map(len, h.values())) == BUCKETS, 30, "a and c sharing the buckets")
        time.sleep(3)  # let the last evaluations finish
    finally:
        for r in replicas:
            r.stop()
    alerts = news2_alerts(own_db)
    assert set(alerts) == set(first) | set(second), "every resident alerted, nobody else"
    duplicated = {s: rows for s, rows in alerts.items() if len(rows) != 1}
    assert not duplicated, f"one news2 alert per resident, updated in place: {duplicated}"
    with psycopg.connect(own_db) as conn:
        opened = conn.execute("SELECT alert_id, count(*) FROM alert_events WHERE action = 'opened' "
                              "GROUP BY alert_id HAVING count(*) <> 1").fetchall()
        assert opened == []
        # the last wave (SpO2 82) reached every alert, whichever replica held the site by then
        stale = conn.execute("SELECT subject_id, score FROM alerts WHERE kind = 'news2' AND score < 6").fetchall()
        assert stale == []
    print(f"\ntakeover: b's {len(b_sites)} sites scored by a {took_s:.1f} s after kill -9")


def test_watchdog_raises_scoring_stalled_for_a_site_nobody_scores_and_clears_it(
        own_db: str, tmp_path: Path) -> None:
    homes = seed(own_db, sites=8, residents_per_site=1)
    buckets = bucket_of(own_db, list(homes))
    stuck = buckets["home-00"]
    stuck_sites = {s for s, k in buckets.items() if k == stuck}
    port = free_port()
    # A "hung replica": a session that holds one bucket and never scores it.
    with psycopg.connect(own_db, autocommit=True, application_name="a hung replica") as hung:
        hung.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, stuck))
        a = Replica(own_db, "a", tmp_path, scorer_lease_s="1", scorer_stall_after_s="4", scorer_watchdog_s="1",
                    metrics_port=str(port))
        try:
            def stalled() -> list[tuple[str, str, str]]:
                with psycopg.connect(own_db) as conn:
                    return conn.execute("SELECT subject_id, severity, status FROM alerts "
                                        "WHERE kind = 'scoring_stalled' AND status <> 'resolved'").fetchall()

            rows = wait_until(stalled, 40, "a scoring_stalled alert")
            time.sleep(2.5)  # more watchdog passes: still one alert per site
            rows = stalled()
            assert sorted(r[0] for r in rows) == sorted(stuck_sites)
            assert {r[1] for r in rows} == {"high"}

            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert f"carewatch_scoring_stalled_sites {float(len(stuck_sites))}" in metrics
            assert "carewatch_scoring_live_replicas 1.0" in metrics
            settings = Settings(database_url=own_db, scorer_stall_after_s=4, jwt_secret="x" * 40)
            with TestClient(create_app(settings)) as client:
                health = client.get("/healthz")
            assert health.status_code == 200
            assert health.json()["status"] == "degraded"
            assert health.json()["scoring"]["stalled_sites"] == len(stuck_sites)
            assert health.json()["scoring"]["buckets_held"] == BUCKETS - 1

            hung.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, stuck))
            wait_until(lambda: not stalled(), 30, "scoring_stalled to clear once the bucket is scored again")
        finally:
            a.stop()
    with psycopg.connect(own_db) as conn:
        per_site = conn.execute("SELECT subject_id, count(*), bool_and(status = 'resolved') FROM alerts "
                                "WHERE kind = 'scoring_stalled' GROUP BY subject_id").fetchall()
    assert sorted(r[0] for r in per_site) == sorted(stuck_sites)
    assert all(n == 1 and resolved for _, n, resolved in per_site)
