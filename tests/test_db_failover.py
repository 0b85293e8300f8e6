"""Database failover with pg_auto_failover, real at every boundary:

simulator -> real gateway -> Mosquitto -> ``carewatch ingest`` -> PostgreSQL (primary + synchronous standby,
monitor) -> ``carewatch score`` -> ``carewatch api``. Every service has the multi-host connection string
(``target_session_attrs=read-write``). The primary is killed with SIGKILL (keeper and postmaster) while the
simulator streams and a resident deteriorates; after the standby is promoted every gateway sequence number must
be stored exactly once, the deterioration must be alerted, and the API must answer again within 60 s.

Gap recovery (ingest asking gateways to resend) is switched off here, so a reading that ingest acknowledged but
the promoted standby did not have would stay missing: only synchronous replication keeps the count exact.
"""

from __future__ import annotations

import functools
import os
import pwd
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
import waiting
from children import Service
from deterioration import infection, seed_with_nurse
from ha_cluster import Formation, pg_autoctl

from carewatch.db.migrate import migrate
from carewatch.embedded import EmbeddedBroker, free_port
from carewatch.firmware_sim.care import HomeCare
from carewatch.firmware_sim.driver import SimClock
from carewatch.firmware_sim.fleet import SimFleet
from carewatch.firmware_sim.world import SiteSpec, build_world
from carewatch.settings import Settings, process_env

#: polls the API and the database: twice a second is enough
wait_until = functools.partial(waiting.wait_until, interval=0.5)

# Rounds every 4 h (02, 06, 10, 14, 18, 22 local). The simulation starts at 09:00, so the 10:00 round is normal and
# the 14:00 round (NEWS2 >= 5) falls while the database fails over.
PASSWORD = "failover-password-1"
ACCELERATE = 1200.0  # 20 simulated minutes per second: the 6 simulated hours stream for 18 s
KILL_AT = timedelta(hours=1, minutes=10)  # after the normal 10:00 round; the 14:00 round comes ~12 s later
SIM_HOURS = 6


def _skip_reason() -> str | None:
    if pg_autoctl() is None:
        return ("pg_auto_failover is not installed (Debian: apt-get install postgresql-15-auto-failover; "
                "scripts/ensure-test-services.sh does it as root)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' account to run the PostgreSQL nodes as"
    return None


@pytest.fixture
def formation(scratch_dir: Path, uid: str) -> Iterator[Formation]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    f = Formation(scratch_dir / f"paf-{uid}")
    try:
        f.start_monitor()
        f.add_node()
        f.add_node()
        yield f
    except Exception:
        print(f.log_tail())
        raise
    finally:
        f.stop()


def sim_start(now: datetime) -> datetime:
    """09:00 local, two days ago (the simulation must stay in the past)."""
    local = (now - timedelta(days=2)).astimezone(ZoneInfo("Europe/London"))
    return local.replace(hour=9, minute=0, second=0, microsecond=0).astimezone(UTC)


@pytest.mark.slow
def test_primary_killed_mid_stream_loses_nothing_and_alerts_still_come(
        formation: Formation, scratch_dir: Path, uid: str) -> None:
    dsn = formation.dsn
    migrate(dsn)
    # the monitor turns synchronous replication on once the standby reports itself caught up: wait for it
    deadline = time.monotonic() + 90
    while True:
        with psycopg.connect(dsn) as conn:
            sync_names, sync_commit = conn.execute(
                "SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit')"
            ).fetchone()
        if (sync_names and sync_commit in ("on", "remote_apply")) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sync_names and sync_commit in ("on", "remote_apply"), "commits must wait for the standby"

    broker = EmbeddedBroker(scratch_dir / f"mqtt-failover-{uid}", free_port())
    if broker.kind != "mosquitto":
        pytest.skip("needs the mosquitto broker (shared subscriptions, persistence)")
    broker.start()
    site = f"fo-{uid}"
    start = sim_start(datetime.now(UTC))
    # a home that never misses a round and re-checks as the chart says (as in the end-to-end test)
    care = replace(HomeCare.textbook(), follow_up_compliance=1.0)
    world = build_world(seed=5, sites=[SiteSpec(id=site, residents=3, obs_per_day=6, care=care)],
                        households=1, household_prefix=f"fohh-{uid}",
                        scenarios=infection("failover", onset="1h", within="6h"), start=start)
    resident = world.residents[0].id
    # small batches, often: many MQTT messages (and ingest commits) in flight when the primary dies
    settings = Settings(database_url=dsn, mqtt_url=broker.url, state_dir=scratch_dir / f"state-fo-{uid}",
                        publish_batch_size=10, publish_batch_ms=50)
    fleet = SimFleet(world, settings, mqtt_url=broker.url, outbox_dir=scratch_dir / f"outbox-fo-{uid}",
                     clock=SimClock(start, accelerate=ACCELERATE))
    seed_with_nurse(dsn, world, fleet.devices, site=site, nurse=f"nurse-{uid}", password=PASSWORD)

    api_port = free_port()
    env = process_env(
        drop_prefixes=("CAREWATCH_",), CAREWATCH_DATABASE_URL=dsn, CAREWATCH_MQTT_URL=broker.url,
        CAREWATCH_STATE_DIR=str(scratch_dir / f"state-fo-{uid}"), CAREWATCH_CLOCK="data",
        CAREWATCH_INGEST_SHARED="true", CAREWATCH_INGEST_BATCH_MS="50",
        CAREWATCH_INGEST_RESEND_GRACE_S="100000",  # no gap recovery: a lost acknowledged reading stays lost
        CAREWATCH_API_HOST="127.0.0.1", CAREWATCH_API_PORT=str(api_port), CAREWATCH_JWT_SECRET="f" * 48,
        CAREWATCH_LOG_JSON="true")
    logs = scratch_dir / f"logs-fo-{uid}"
    logs.mkdir()
    services = [Service("ingest", ["ingest", "--worker-id", f"fo-{uid}"], env, logs),
                Service("scorer", ["score", "--replica-id", f"fo-{uid}"], env, logs),
                Service("api", ["api"], env, logs)]
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_until(lambda: _get(f"{api}/healthz") == 200, 60, "the API to start")
        wait_until(lambda: "mqtt_subscribed" in services[0].log.read_text(errors="replace"), 60,
                   "ingest to subscribe")
        token = httpx.post(f"{api}/auth/token", data={"username": f"nurse-{uid}", "password": PASSWORD},
                           timeout=10).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        fleet.clock = sim_clock = SimClock(start, accelerate=ACCELERATE)  # simulated time starts now
        fleet.start(end=start + timedelta(hours=SIM_HOURS))

        def stored() -> int:
            with psycopg.connect(dsn) as conn:
                return conn.execute("SELECT count(*) FROM readings").fetchone()[0]

        wait_until(lambda: stored() > 20, 60, "readings flowing into the database")
        wait_until(lambda: sim_clock() >= start + KILL_AT, 60, "the simulation to pass the first round")
        assert sim_clock() < start + timedelta(hours=4, minutes=30), "too slow: the deteriorated round came already"
        primary = formation.primary()
        assert primary == "node1"
        formation.kill(primary)
        killed = time.monotonic()
        sim_killed = sim_clock()

        # the API answers again (a signed-in read of the alerts) within 60 s of the kill
        def api_answers() -> bool:
            return _get(f"{api}/alerts?site={site}", headers) == 200

        wait_until(api_answers, 60, "the API to answer after the failover", interval=0.25)
        api_back_s = time.monotonic() - killed
        promoted = wait_until(lambda: formation.primary() == "node2", 60, "node2 to be promoted")
        promoted_s = time.monotonic() - killed
        sim_promoted = sim_clock()
        assert promoted

        assert fleet.driver is not None
        wait_until(fleet.driver.finished.is_set, 120, "the simulator to play its hours")
        assert fleet.drain(timeout=60), "a gateway could not empty its outbox"
        ranges = fleet.published_ranges()
        expected = {gw: hi - lo + 1 for gw, (lo, hi) in ranges.items()}
        assert sum(expected.values()) > 300

        def counts() -> dict[str, tuple[int, int]]:
            with psycopg.connect(dsn) as conn:
                return {gw: conn.execute(
                    "SELECT count(*), count(DISTINCT seq) FROM readings WHERE gateway_id = %s AND seq BETWEEN %s "
                    "AND %s", (gw, lo, hi)).fetchone() for gw, (lo, hi) in ranges.items()}

        try:
            wait_until(lambda: all(c[1] == expected[gw] for gw, c in counts().items()), 90,
                       "ingest to store every published reading")
        finally:
            final = counts()
        assert {gw: c[1] for gw, c in final.items()} == expected, "a sequence number is missing"
        assert all(total == distinct for total, distinct in final.values()), f"stored twice: {final}"

        def news2_alert() -> dict | None:
            reply = httpx.get(f"{api}/alerts", params={"resident": resident, "kind": "news2"}, headers=headers,
                              timeout=10)
            items = reply.json()["items"] if reply.status_code == 200 else []
            return items[0] if items else None

        alert = wait_until(news2_alert, 60, "the scorer to alert on the deterioration during the failover")
        assert alert["score"] >= 5 and alert["severity"] in ("medium", "high")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone()[0] == formation.nodes[1].port
            first_bad = conn.execute("SELECT min(taken_at) FROM observation_sets WHERE resident_id = %s AND score >= 5",
                                     (resident,)).fetchone()[0]
        # the round that alerted was measured after the kill (and published while the database failed over or
        # just after)
        assert first_bad is not None and first_bad > sim_killed, (first_bad, sim_killed, sim_promoted)
        print(f"\nfailover: API answering {api_back_s:.1f} s after kill -9 of the primary, standby promoted after "
              f"{promoted_s:.1f} s; {sum(expected.values())} readings stored exactly once; NEWS2 {alert['score']} "
              f"from the round at {first_bad:%H:%M} (simulated; primary killed at {sim_killed:%H:%M}, standby promoted "
              f"at {sim_promoted:%H:%M})")
    except BaseException:
        for s in services:
            print(s.tail())
        print(formation.log_tail(1500))
        raise
    finally:
        fleet.stop()
        for s in services:
            s.stop()
        broker.stop()


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code
    except httpx.HTTPError:
        return 0
