"""Escalation on real PostgreSQL with real receivers and a test clock, per INCIDENT (one person's problem, one
ladder): level 1, 2, 3 at the configured windows; no outcome after acknowledgement escalates again; nobody on the
rota or every channel down moves on at once; every attempt is in the delivery log; a second alert folding into the
incident sends nothing more; a band rise tells the level last told again; a person's escalation is kept apart from
the ladder's own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from carewatch.embedded import free_port
from carewatch.notify import deliveries, store
from carewatch.notify.channels import Channel, DashboardChannel, EmailChannel, SmsChannel, WebhookChannel
from carewatch.notify.escalation import run_once
from carewatch.notify.policy import ChannelName, Contact, EscalationPolicy, Level, default_policy
from carewatch.notify.receivers import NotifyServer, SmtpServer, WebhookReceiver
from carewatch.scoring import incident_store
from carewatch.subjects import alert_subject_kind

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SECRET = "escalation-test-secret"


@pytest.fixture
def receivers() -> Iterator[tuple[SmtpServer, NotifyServer, WebhookReceiver]]:
    with SmtpServer() as smtp, NotifyServer() as notify, WebhookReceiver(SECRET) as hook:
        yield smtp, notify, hook


def channels_for(smtp_port: int, notify: NotifyServer) -> dict[str, Channel]:
    return {"dashboard": DashboardChannel(), "email": EmailChannel("127.0.0.1", smtp_port, "cw@carewatch.test"),
            "sms": SmsChannel(notify.api_key, notify.template_id, base_url=notify.url),
            "webhook": WebhookChannel(SECRET)}


def make_site(db: psycopg.Connection, uid: str, policy: EscalationPolicy | None) -> str:
    site = f"esc-{uid}"
    db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Escalation Home')", (site,))
    db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
               "VALUES (%s, %s, 'Mrs Test', '1935-01-01')", (f"r-{uid}", site))
    if policy is not None:
        store.save(db, site, policy, "manager-test")
    db.commit()
    return site


def add_alert(db: psycopg.Connection, uid: str, site: str, severity: str = "high", kind: str = "news2",
              score: int | None = 8, at: datetime = T0) -> int:
    """An alert of the resident, grouped into her incident as the engine does (``sync_incidents``)."""
    risk = {"high": "high", "medium": "medium"}.get(severity, "low")
    alert_id = db.execute(
        """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action, data,
                               score, opened_at, updated_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, 'Call 999 now.', %s, %s, %s, %s) RETURNING alert_id""",
        (site, f"r-{uid}", alert_subject_kind(kind), f"r-{uid}", kind, severity, f"{kind} ({severity})",
         f'{{"risk": "{risk}"}}' if kind == "news2" else "{}", score if kind == "news2" else None, at, at),
    ).fetchone()[0]
    incident_store.sync_incidents(db, [(alert_subject_kind(kind), f"r-{uid}")], at)
    db.commit()
    return alert_id


def make_incident(db: psycopg.Connection, uid: str, site: str, severity: str = "high", kind: str = "news2",
                  score: int = 8) -> int:
    """A NEWS2 alert and the incident it opens: returns the incident's id."""
    alert_id = add_alert(db, uid, site, severity, kind, score)
    incident_id = db.execute("SELECT incident_id FROM alerts WHERE alert_id = %s", (alert_id,)).fetchone()[0]
    db.commit()
    assert incident_id is not None
    return incident_id


def full_policy(webhook_url: str) -> EscalationPolicy:
    return EscalationPolicy(levels=[
        Level(level=1, name="Staff on shift", window_minutes={"high": 5, "medium": 30},
              contacts=[Contact(channel=ChannelName.DASHBOARD, recipient="tablets"),
                        Contact(channel=ChannelName.WEBHOOK, recipient=webhook_url, name="Nurse call system")]),
        Level(level=2, name="Senior on shift", window_minutes={"high": 7, "medium": 40},
              contacts=[Contact(channel=ChannelName.EMAIL, recipient="senior@home.test", name="Senior")]),
        Level(level=3, name="Manager on call",
              contacts=[Contact(channel=ChannelName.SMS, recipient="07700900123", name="Manager")]),
    ], outcome_minutes={"high": 15, "medium": 60})


def incident_row(db: psycopg.Connection, incident_id: int) -> dict[str, Any]:
    cur = db.execute("SELECT * FROM incidents WHERE incident_id = %s", (incident_id,))
    row = dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
    db.commit()
    return row


def events(db: psycopg.Connection, incident_id: int) -> list[tuple[str, str]]:
    rows = db.execute("SELECT action, actor FROM incident_events WHERE incident_id = %s AND action <> 'opened' "
                      "ORDER BY event_id", (incident_id,)).fetchall()
    db.commit()
    return rows


def log_rows(db: psycopg.Connection, incident_id: int) -> list[tuple[int, str, str, str, str]]:
    rows = [(d["level"], d["reason"], d["channel"], d["recipient"], d["result"])
            for d in deliveries.for_target(db, "incident", incident_id)]
    db.commit()
    return rows


def step(database: str, channels: dict[str, Channel], at: datetime, site: str) -> list[tuple[int, str]]:
    with psycopg.connect(database, autocommit=True) as conn:
        return [(p.level, p.reason) for p in run_once(conn, channels, at, timeout=3, site_ids=[site])]


def told_level_1(db: psycopg.Connection, database: str, uid: str,
                 receivers: tuple[SmtpServer, NotifyServer, WebhookReceiver], severity: str = "high",
                 score: int = 8) -> tuple[str, int, dict[str, Channel]]:
    """A home with the full policy and a NEWS2 incident, told to level 1 at T0: (site, incident id, channels)."""
    smtp, notify, hook = receivers
    site = make_site(db, uid, full_policy(hook.url + "/hook"))
    incident_id = make_incident(db, uid, site, severity=severity, score=score)
    channels = channels_for(smtp.port, notify)
    assert step(database, channels, T0, site) == [(1, "unacknowledged")]
    return site, incident_id, channels


def test_unacknowledged_reaches_level_2_then_3_at_the_configured_windows(
        db: psycopg.Connection, database: str, uid: str, receivers: tuple[SmtpServer, NotifyServer, WebhookReceiver],
) -> None:
    smtp, notify, hook = receivers
    site = make_site(db, uid, full_policy(hook.url + "/hook"))
    incident_id = make_incident(db, uid, site)
    channels = channels_for(smtp.port, notify)

    assert step(database, channels, T0, site) == [(1, "unacknowledged")]
    assert incident_row(db, incident_id)["status"] == "open"  # level 1 is not an escalation
    assert len(hook.received) == 1 and hook.received[0].verified and hook.received[0].json["level"] == 1
    assert step(database, channels, T0 + 4 * MINUTE, site) == []
    assert step(database, channels, T0 + 5 * MINUTE, site) == [(2, "unacknowledged")]
    row = incident_row(db, incident_id)
    assert (row["status"], row["notify_level"], row["escalation_level"]) == ("auto_escalated", 2, 0)
    assert [m.recipient for m in smtp.received] == ["senior@home.test"]
    assert "Nobody has acknowledged it for 5 min: you are level 2 (Senior on shift)" in (smtp.received[0].text or "")
    assert "Call 999 now" in (smtp.received[0].text or "")
    assert step(database, channels, T0 + 11 * MINUTE, site) == []
    assert notify.received == []
    assert step(database, channels, T0 + 12 * MINUTE, site) == [(3, "unacknowledged")]
    assert [r.json["phone_number"] for r in notify.received] == ["07700900123"]
    assert notify.received[0].verified
    assert step(database, channels, T0 + 90 * MINUTE, site) == []  # level 3 is the last
    assert log_rows(db, incident_id) == [
        (1, "unacknowledged", "dashboard", "tablets", "delivered"),
        (1, "unacknowledged", "webhook", hook.url + "/hook", "delivered"),
        (2, "unacknowledged", "email", "senior@home.test", "delivered"),
        (3, "unacknowledged", "sms", "07700900123", "delivered"),
    ]
    assert [a for a, _ in events(db, incident_id)] == ["notified", "auto_escalated", "auto_escalated"]
    assert {actor for _, actor in events(db, incident_id)} == {"escalation"}
    # a person acknowledging ends it: the status is theirs again
    incident_store.acknowledge(db, incident_id, "carer1", at=T0 + 95 * MINUTE)
    db.commit()
    assert incident_row(db, incident_id)["acknowledged_by"] == "carer1"


def test_after_acknowledgement_no_outcome_within_the_window_escalates_again(
        db: psycopg.Connection, database: str, uid: str, receivers: tuple[SmtpServer, NotifyServer, WebhookReceiver],
) -> None:
    smtp, notify, _ = receivers
    site, incident_id, channels = told_level_1(db, database, uid, receivers, severity="medium", score=5)
    incident_store.acknowledge(db, incident_id, "carer1", "with her now", at=T0 + 2 * MINUTE)
    db.commit()
    assert step(database, channels, T0 + 2 * MINUTE, site) == []  # the outcome clock starts: nobody is told
    assert incident_row(db, incident_id)["notify_due_at"] == T0 + 62 * MINUTE
    assert step(database, channels, T0 + 61 * MINUTE, site) == []  # 60 min after the acknowledgement
    assert step(database, channels, T0 + 62 * MINUTE, site) == [(2, "no_outcome")]
    assert [m.recipient for m in smtp.received] == ["senior@home.test"]
    assert "no outcome (monitoring plan, GP, 111, 999, admitted) was recorded within 60 min" in (
        smtp.received[0].text or "")
    assert "GP or NHS 111" in (smtp.received[0].text or "")  # NEWS2 5: the route its response gives
    assert incident_row(db, incident_id)["status"] == "auto_escalated"
    incident_store.record_outcome(db, incident_id, "senior1", "gp_called", "GP visiting at 10", at=T0 + 70 * MINUTE)
    db.commit()
    row = incident_row(db, incident_id)
    assert (row["status"], row["outcome"], row["outcome_by"], row["notify_due_at"]) == (
        "acknowledged", "gp_called", "senior1", None)
    assert step(database, channels, T0 + 600 * MINUTE, site) == []
    assert notify.received == []  # level 3 never needed


def test_nobody_on_the_rota_and_a_channel_down_move_on_at_once(db: psycopg.Connection, database: str, uid: str,
                                                                receivers: Any) -> None:
    smtp, notify, _ = receivers
    site = make_site(db, uid, None)  # the default policy: tablets only, levels 2 and 3 empty
    incident_id = make_incident(db, uid, site)
    channels = channels_for(smtp.port, notify)
    assert step(database, channels, T0, site) == [(1, "unacknowledged")]
    assert step(database, channels, T0 + timedelta(minutes=15), site) == [(2, "unacknowledged")]
    assert step(database, channels, T0 + timedelta(minutes=15), site) == [(3, "unacknowledged")]  # at once
    assert [(lv, ch, res) for lv, _, ch, _, res in log_rows(db, incident_id)] == [
        (1, "dashboard", "delivered"), (2, "none", "no_recipient"), (3, "none", "no_recipient")]
    assert "notify_failed" in [a for a, _ in events(db, incident_id)]

    # level 2's only channel is down: level 3 is told at once, not after the window
    policy = default_policy()
    policy.levels[1].contacts = [Contact(channel=ChannelName.EMAIL, recipient="senior@home.test")]
    policy.levels[2].contacts = [Contact(channel=ChannelName.SMS, recipient="07700900123")]
    site2 = make_site(db, uid + "b", policy)
    incident2 = make_incident(db, uid + "b", site2)
    down = channels_for(free_port(), notify)
    assert step(database, down, T0, site2) == [(1, "unacknowledged")]
    assert step(database, down, T0 + timedelta(minutes=15), site2) == [(2, "unacknowledged")]
    assert step(database, down, T0 + timedelta(minutes=15), site2) == [(3, "unacknowledged")]
    assert [(lv, ch, res) for lv, _, ch, _, res in log_rows(db, incident2)] == [
        (1, "dashboard", "delivered"), (2, "email", "failed"), (3, "sms", "delivered")]
    assert [r.json["phone_number"] for r in notify.received] == ["07700900123"]


def test_one_incident_one_ladder_a_second_alert_folding_in_sends_nothing_more(
        db: psycopg.Connection, database: str, uid: str, receivers: tuple[SmtpServer, NotifyServer, WebhookReceiver],
) -> None:
    smtp, _, hook = receivers
    site, incident_id, channels = told_level_1(db, database, uid, receivers, severity="medium", score=5)
    # soft signs and a rising trend of the same resident fold into her incident: nobody is told again
    for kind in ("soft_signs", "news2_rising"):
        second = add_alert(db, uid, site, severity="medium", kind=kind, at=T0 + MINUTE)
        assert db.execute("SELECT incident_id FROM alerts WHERE alert_id = %s", (second,)).fetchone()[0] == incident_id
        db.commit()
        assert step(database, channels, T0 + 2 * MINUTE, site) == []
    assert len(hook.received) == 1
    assert [lv for lv, *_ in log_rows(db, incident_id)] == [1, 1]  # the tablets and the webhook, once
    assert deliveries.for_target(db, "alert", incident_id) == []  # no alert-level ladder beside it
    db.commit()
    # its own ladder goes on at the medium window (30 min): level 2 once, for the incident
    assert step(database, channels, T0 + 30 * MINUTE, site) == [(2, "unacknowledged")]
    assert [m.recipient for m in smtp.received] == ["senior@home.test"]
    # a rise to high (a new, worse NEWS2 component) re-alerts: the level last told hears it at once
    db.execute("UPDATE alerts SET severity = 'high', score = 8, data = '{\"risk\": \"high\"}' "
               "WHERE incident_id = %s AND kind = 'news2'", (incident_id,))
    incident_store.sync_incidents(db, [("resident", f"r-{uid}")], T0 + 31 * MINUTE)
    db.commit()
    assert incident_row(db, incident_id)["notify_reason"] == "risen"
    assert step(database, channels, T0 + 31 * MINUTE, site) == [(2, "unacknowledged")]
    assert [m.recipient for m in smtp.received] == ["senior@home.test", "senior@home.test"]
    assert "Carewatch HIGH" in (smtp.received[1].text or "")


def test_a_person_escalating_is_not_the_ladder_escalating(
        db: psycopg.Connection, database: str, uid: str, receivers: tuple[SmtpServer, NotifyServer, WebhookReceiver],
) -> None:
    _, notify, _ = receivers
    site, incident_id, channels = told_level_1(db, database, uid, receivers)
    assert step(database, channels, T0 + timedelta(minutes=5), site) == [(2, "unacknowledged")]
    row = incident_row(db, incident_id)
    assert (row["status"], row["notify_level"], row["escalation_level"], row["escalated_by"]) == (
        "auto_escalated", 2, 0, None)
    incident_store.escalate(db, incident_id, "senior1", "called_999", "ambulance on its way",
                            at=T0 + timedelta(minutes=6))
    db.commit()
    row = incident_row(db, incident_id)
    assert (row["status"], row["escalation_level"], row["escalated_by"], row["outcome"], row["acknowledged_by"]) == (
        "escalated", 1, "senior1", "called_999", "senior1")
    assert [(a, actor) for a, actor in events(db, incident_id)] == [
        ("notified", "escalation"), ("auto_escalated", "escalation"), ("escalated", "senior1")]
    detail = db.execute("SELECT detail FROM incident_events WHERE incident_id = %s AND action = 'escalated'",
                        (incident_id,)).fetchone()[0]
    db.commit()
    assert detail == {"automatic": False}
    # its components carry the person's decision; the ladder stops (acknowledged, outcome recorded)
    assert {s for (s,) in db.execute("SELECT status FROM alerts WHERE incident_id = %s", (incident_id,))} == {
        "escalated"}
    db.commit()
    assert step(database, channels, T0 + timedelta(hours=5), site) == []
    assert notify.received == []
