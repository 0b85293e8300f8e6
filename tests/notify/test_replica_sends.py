"""No duplicate sends with several scorer replicas, on real PostgreSQL (H-ESC-11): two replicas' escalation passes
and deliveries racing over the same incidents take each step once and send each attempt once (the claim is one
atomic ``UPDATE ... RETURNING`` over ``FOR UPDATE SKIP LOCKED`` rows); each replica sends only for the sites of
its buckets; the estate's admins hear of stalled scoring once, from whichever replica (H-ESC-12)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from databases import fresh_database

from carewatch.notify import deliveries, store
from carewatch.notify.channels import Result
from carewatch.notify.escalation import deliver_pending, escalation_pass, estate_pass
from carewatch.notify.policy import ChannelName, Contact, Message, default_policy
from carewatch.notify.service import estate_contacts, notify_round
from carewatch.scoring import incident_store
from carewatch.scoring.replicas import BUCKETS, LeaseKeeper, SubjectMap
from carewatch.settings import Settings

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


class SlowChannel:
    """Records every send; slow enough that two replicas' deliveries overlap."""

    def __init__(self, name: ChannelName) -> None:
        self.name = name
        self.sent: list[tuple[int, str, int]] = []
        self._lock = threading.Lock()

    def send(self, message: Message, recipient: str, timeout: float) -> Result:
        time.sleep(0.05)
        with self._lock:
            self.sent.append((message.target_id, recipient, message.level))
        return Result("delivered", "ok")


def _estate(db: psycopg.Connection, uid: str, homes: int, names: list[str] | None = None) -> list[str]:
    """``homes`` care homes, each with a resident whose high NEWS2 opened an incident, and a policy telling the
    tablets and a webhook at level 1."""
    sites = []
    policy = default_policy()
    policy.levels[0].contacts.append(Contact(channel=ChannelName.WEBHOOK, recipient="https://hooks.test/nurse-call"))
    for n in range(homes):
        site, resident = (names[n] if names else f"race-{uid}-{n}"), f"race-r-{uid}-{n}"
        db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', %s)", (site, f"Home {n}"))
        db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                   "VALUES (%s, %s, 'Mrs Race', '1935-01-01')", (resident, site))
        store.save(db, site, policy, "manager-test")
        db.execute(
            """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action,
                                   data, score, opened_at, updated_at)
               VALUES (%s, %s, 'resident', %s, 'news2', 'high', 'NEWS2 8', 'Call 999.', '{"risk": "high"}', 8,
                       %s, %s)""",
            (site, resident, resident, T0, T0))
        incident_store.sync_incidents(db, [("resident", resident)], T0)
        sites.append(site)
    db.commit()
    return sites


def _race(database: str, work: list) -> list:
    """Run each callable(conn) in its own thread and connection, released together."""
    barrier = threading.Barrier(len(work))
    out: list = [None] * len(work)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with psycopg.connect(database, autocommit=True) as conn:
                barrier.wait()
                out[i] = work[i](conn)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return out


@pytest.mark.parametrize("rounds", [3])
def test_two_replicas_racing_take_each_step_once_and_send_each_attempt_once(database: str, db: psycopg.Connection,
                                                                           uid: str, rounds: int) -> None:
    sites = _estate(db, uid, 12)
    tablets, hook = SlowChannel(ChannelName.DASHBOARD), SlowChannel(ChannelName.WEBHOOK)
    channels = {"dashboard": tablets, "webhook": hook}
    for r in range(rounds):  # level 1 at T0; 2 and 3 (nobody on the rota) at the high window, twice over
        now = T0 + timedelta(minutes=15 * r)
        planned = _race(database, [lambda c, now=now: escalation_pass(c, now, site_ids=sites)] * 2)
        steps = [(p.target_id, p.level) for replica in planned for p in replica]
        assert len(steps) == len(set(steps)) == 12, steps  # every incident stepped once, by one replica
        sent = _race(database, [
            lambda c, now=now, me=me: deliver_pending(c, channels, now, site_ids=sites, claimant=me)
            for me in ("replica-a", "replica-b")])
        assert not set(sent[0]) & set(sent[1])  # no attempt claimed by both
    assert len(hook.sent) == len(set(hook.sent)) == 12  # one webhook per incident: level 1 only has it
    assert len(tablets.sent) == 12
    claimed = Counter(c for (c,) in db.execute(
        "SELECT claimed_by FROM notification_deliveries WHERE site_id = ANY(%s) AND channel <> 'none'", (sites,)))
    db.commit()
    assert sum(claimed.values()) == 24 and set(claimed) <= {"replica-a", "replica-b"}
    levels = db.execute(
        "SELECT count(*) FILTER (WHERE level = 1), count(*) FILTER (WHERE level = 2), count(*) FILTER (WHERE level = 3)"
        " FROM notification_deliveries WHERE site_id = ANY(%s)", (sites,)).fetchone()
    db.commit()
    assert levels == (24, 12, 12)  # tablets+webhook at 1; nobody on the rota at 2 and 3, once each


def test_a_replica_sends_only_for_its_own_sites_and_a_claim_is_taken_once(database: str, db: psycopg.Connection,
                                                                          uid: str) -> None:
    mine, theirs = _estate(db, uid, 2)
    with psycopg.connect(database, autocommit=True) as conn:
        escalation_pass(conn, T0, site_ids=[mine, theirs])
        tablets, hook = SlowChannel(ChannelName.DASHBOARD), SlowChannel(ChannelName.WEBHOOK)
        assert deliver_pending(conn, {"dashboard": tablets, "webhook": hook}, T0, site_ids=[], claimant="idle") == {}
        sent = deliver_pending(conn, {"dashboard": tablets, "webhook": hook}, T0, site_ids=[mine], claimant="a")
        assert len(sent) == 2
        assert {p.site_id for p in deliveries.pending(conn, site_ids=[mine, theirs])} == {theirs}
        # a claim in flight (another replica sending) is not taken again; a stale one (that replica died) is
        with conn.transaction():
            first = deliveries.claim(conn, "b", site_ids=[theirs])
        assert len(first) == 2
        assert deliveries.claim(conn, "c", site_ids=[theirs]) == []
        assert {p.delivery_id for p in deliveries.claim(conn, "c", site_ids=[theirs], stale=timedelta(0))} == {
            p.delivery_id for p in first}
        # the replica that lost its claim cannot complete the attempt
        deliveries.record_results(conn, {first[0].delivery_id: Result("delivered", "late")}, "b")
        assert conn.execute("SELECT result FROM notification_deliveries WHERE delivery_id = %s",
                            (first[0].delivery_id,)).fetchone()[0] == "pending"


def test_scoring_stalled_reaches_the_estate_admins_once_whichever_replica(database: str, db: psycopg.Connection,
                                                                          uid: str) -> None:
    [site] = _estate(db, uid, 1)
    alert_id = db.execute(
        """INSERT INTO alerts (site_id, subject_kind, subject_id, kind, severity, reason, action, data, opened_at,
                               updated_at)
           VALUES (%s, 'site', %s, 'scoring_stalled', 'high', 'No Carewatch scorer has evaluated it since 03:00.',
                   'Take observations by hand.', '{}', %s, %s) RETURNING alert_id""",
        (site, site, T0, T0)).fetchone()[0]
    db.commit()
    contacts = estate_contacts(Settings(notify_estate_contacts="email:oncall@estate.test, webhook:https://ops.test/h"))
    assert contacts == [("email", "oncall@estate.test"), ("webhook", "https://ops.test/h")]
    told = _race(database, [lambda c: estate_pass(c, contacts, T0)] * 2)
    assert sorted(a for t in told for a in t if a == alert_id) == [alert_id]  # told once, by one replica
    email, hook = SlowChannel(ChannelName.EMAIL), SlowChannel(ChannelName.WEBHOOK)
    # neither replica holds the stalled site's bucket (that is why it stalled): the estate's notices go anyway
    _race(database, [lambda c, me=me: deliver_pending(c, {"email": email, "webhook": hook}, T0, site_ids=[],
                                                      claimant=me) for me in ("a", "b")])
    # the database is shared with other tests, whose stalled sites may be told in the same rounds: look at ours
    assert [s for s in email.sent if s[0] == alert_id] == [(alert_id, "oncall@estate.test", 1)]
    assert [s for s in hook.sent if s[0] == alert_id] == [(alert_id, "https://ops.test/h", 1)]
    rows = [(d["channel"], d["recipient"], d["reason"], d["result"]) for d in deliveries.for_target(db, "alert",
                                                                                                      alert_id)]
    db.commit()
    assert rows == [("email", "oncall@estate.test", "estate", "delivered"),
                    ("webhook", "https://ops.test/h", "estate", "delivered")]
    with psycopg.connect(database, autocommit=True) as conn:
        assert alert_id not in estate_pass(conn, contacts, T0 + timedelta(minutes=5))  # once per stall


def test_each_replica_sends_for_the_sites_of_the_buckets_it_holds(pg_server: str, uid: str) -> None:
    """Two real lease keepers share the 64 buckets; each one's notify round sends only its own sites' attempts, so
    every attempt is sent once, by the replica holding its site."""
    with fresh_database(pg_server, prefix="carewatch_notify_replicas") as dsn, psycopg.connect(dsn) as db:
        a, b = LeaseKeeper(dsn, replica_id=f"a-{uid}"), LeaseKeeper(dsn, replica_id=f"b-{uid}")
        try:
            for keeper in (a, b, a, b):  # a takes all, b asks, a releases half, b takes them
                keeper.round()
            assert a.buckets and b.buckets and not a.buckets & b.buckets and len(a.buckets | b.buckets) == BUCKETS
            names = [f"split-{uid}-{n}" for n in range(40)]
            buckets = dict(db.execute("SELECT s, carewatch_site_bucket(s, %s) FROM unnest(%s::text[]) AS s",
                                      (BUCKETS, names)).fetchall())
            mine = next(s for s in names if buckets[s] in a.buckets)
            theirs = next(s for s in names if buckets[s] in b.buckets)
            _estate(db, uid, 2, [mine, theirs])
            with psycopg.connect(dsn, autocommit=True) as conn:
                escalation_pass(conn, T0)
                sent = {}
                for keeper in (a, b):
                    tablets, hook = SlowChannel(ChannelName.DASHBOARD), SlowChannel(ChannelName.WEBHOOK)
                    notify_round(conn, {"dashboard": tablets, "webhook": hook}, T0, keeper=keeper,
                                 subjects=SubjectMap(), contacts=[], claimant=keeper.replica_id, timeout=3)
                    sent[keeper.replica_id] = {site for site, in conn.execute(
                        "SELECT site_id FROM notification_deliveries WHERE claimed_by = %s", (keeper.replica_id,))}
                    assert len(tablets.sent) == len(hook.sent) == 1
            assert sent == {a.replica_id: {mine}, b.replica_id: {theirs}}
        finally:
            a.release_all()
            b.release_all()
