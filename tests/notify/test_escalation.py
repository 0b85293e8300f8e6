"""Escalation on real PostgreSQL with real receivers and a test clock: level 1, 2, 3 at the configured windows;
no outcome after acknowledgement escalates again; nobody on the rota or every channel down moves on at once;
every attempt is in the delivery log."""

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
from carewatch.scoring import lifecycle

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
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


def make_alert(db: psycopg.Connection, uid: str, site: str, severity: str = "high", kind: str = "news2",
               score: int = 8) -> int:
    alert_id = db.execute(
        """INSERT INTO alerts (site_id, resident_id, subject_id, kind, severity, reason, action, data, score,
                               opened_at, updated_at)
           VALUES (%s, %s, %s, %s, %s, 'NEWS2 8 (high risk)', 'Call 999 now.', %s, %s, %s, %s) RETURNING alert_id""",
        (site, f"r-{uid}", f"r-{uid}", kind, severity, '{"risk": "high"}' if score >= 7 else '{"risk": "medium"}',
         score, T0, T0)).fetchone()[0]
    db.commit()
    return alert_id


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


def alert_row(db: psycopg.Connection, alert_id: int) -> dict[str, Any]:
    cur = db.execute("SELECT * FROM alerts WHERE alert_id = %s", (alert_id,))
    row = dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
    db.commit()
    return row


def events(db: psycopg.Connection, alert_id: int) -> list[tuple[str, str]]:
    rows = db.execute("SELECT action, actor FROM alert_events WHERE alert_id = %s ORDER BY event_id",
                      (alert_id,)).fetchall()
    db.commit()
    return rows


def log_rows(db: psycopg.Connection, alert_id: int) -> list[tuple[int, str, str, str, str]]:
    rows = [(d["level"], d["reason"], d["channel"], d["recipient"], d["result"])
            for d in deliveries.for_target(db, "alert", alert_id)]
    db.commit()
    return rows


def step(database: str, channels: dict[str, Channel], at: datetime, site: str) -> list[tuple[int, str]]:
    with psycopg.connect(database, autocommit=True) as conn:
        return [(p.level, p.reason) for p in run_once(conn, channels, at, timeout=3, site_ids=[site])]


def test_unacknowledged_reaches_level_2_then_3_at_the_configured_windows(
        db: psycopg.Connection, database: str, uid: str, receivers: tuple[SmtpServer, NotifyServer, WebhookReceiver],
) -> None:
    smtp, notify, hook = receivers
    site = make_site(db, uid, full_policy(hook.url + "/hook"))
    alert_id = make_alert(db, uid, site)
    channels = channels_for(smtp.port, notify)
    minute = timedelta(minutes=1)

    assert step(database, channels, T0, site) == [(1, "unacknowledged")]
    assert alert_row(db, alert_id)["status"] == "open"  # level 1 is not an escalation
    assert len(hook.received) == 1 and hook.received[0].verified and hook.received[0].json["level"] == 1
    assert step(database, channels, T0 + 4 * minute, site) == []
    assert step(database, channels, T0 + 5 * minute, site) == [(2, "unacknowledged")]
    row = alert_row(db, alert_id)
    assert (row["status"], row["notify_level"], row["escalation_level"]) == ("auto_escalated", 2, 0)
    assert [m.recipient for m in smtp.received] == ["senior@home.test"]
    assert "Nobody has acknowledged it for 5 min: you are level 2 (Senior on shift)" in (smtp.received[0].text or "")
    assert "Call 999 now" in (smtp.received[0].text or "")
    assert step(database, channels, T0 + 11 * minute, site) == []
    assert notify.received == []
    assert step(database, channels, T0 + 12 * minute, site) == [(3, "unacknowledged")]
    assert [r.json["phone_number"] for r in notify.received] == ["07700900123"]
    assert notify.received[0].verified
    assert step(database, channels, T0 + 90 * minute, site) == []  # level 3 is the last
    assert log_rows(db, alert_id) == [
        (1, "unacknowledged", "dashboard", "tablets", "delivered"),
        (1, "unacknowledged", "webhook", hook.url + "/hook", "delivered"),
        (2, "unacknowledged", "email", "senior@home.test", "delivered"),
        (3, "unacknowledged", "sms", "07700900123", "delivered"),
    ]
    assert [a for a, _ in events(db, alert_id)] == ["notified", "auto_escalated", "auto_escalated"]
    assert {actor for _, actor in events(db, alert_id)} == {"escalation"}
    # a person acknowledging ends it: the status is theirs again
    lifecycle.acknowledge(db, alert_id, "carer1", at=T0 + 95 * minute)
    db.commit()
    assert alert_row(db, alert_id)["acknowledged_by"] == "carer1"


def test_after_acknowledgement_no_outcome_within_the_window_escalates_again(
        db: psycopg.Connection, database: str, uid: str, receivers: tuple[SmtpServer, NotifyServer, WebhookReceiver],
) -> None:
    smtp, notify, hook = receivers
    site = make_site(db, uid, full_policy(hook.url + "/hook"))
    alert_id = make_alert(db, uid, site, severity="medium", score=5)
    channels = channels_for(smtp.port, notify)
    minute = timedelta(minutes=1)
    assert step(database, channels, T0, site) == [(1, "unacknowledged")]
    lifecycle.acknowledge(db, alert_id, "carer1", "with her now", at=T0 + 2 * minute)
    db.commit()
    assert step(database, channels, T0 + 2 * minute, site) == []  # the outcome clock starts: nobody is told
    assert alert_row(db, alert_id)["notify_due_at"] == T0 + 62 * minute
    assert step(database, channels, T0 + 61 * minute, site) == []  # 60 min after the acknowledgement
    assert step(database, channels, T0 + 62 * minute, site) == [(2, "no_outcome")]
    assert [m.recipient for m in smtp.received] == ["senior@home.test"]
    assert "no outcome (monitoring plan, GP, 111, 999, admitted) was recorded within 60 min" in (
        smtp.received[0].text or "")
    assert "GP or NHS 111" in (smtp.received[0].text or "")  # NEWS2 5: the route its response gives
    assert alert_row(db, alert_id)["status"] == "auto_escalated"
    lifecycle.record_outcome(db, alert_id, "senior1", "gp_called", "GP visiting at 10", at=T0 + 70 * minute)
    db.commit()
    row = alert_row(db, alert_id)
    assert (row["status"], row["outcome"], row["outcome_by"], row["notify_due_at"]) == (
        "acknowledged", "gp_called", "senior1", None)
    assert step(database, channels, T0 + 600 * minute, site) == []
    assert notify.received == []  # level 3 never needed


def test_nobody_on_the_rota_and_a_channel_down_move_on_at_once(db: psycopg.Connection, database: str, uid: str,
                                                                receivers: Any) -> None:
    smtp, notify, _ = receivers
    site = make_site(db, uid, None)  # the default policy: tablets only, levels 2 and 3 empty
    alert_id = make_alert(db, uid, site)
    channels = channels_for(smtp.port, notify)
    assert step(database, channels, T0, site) == [(1, "unacknowledged")]
    assert step(database, channels, T0 + timedelta(minutes=15), site) == [(2, "unacknowledged")]
    assert step(database, channels, T0 + timedelta(minutes=15), site) == [(3, "unacknowledged")]  # at once
    assert [(lv, ch, res) for lv, _, ch, _, res in log_rows(db, alert_id)] == [
        (1, "dashboard", "delivered"), (2, "none", "no_recipient"), (3, "none", "no_recipient")]
    assert "notify_failed" in [a for a, _ in events(db, alert_id)]

    # level 2's only channel is down: level 3 is told at once, not after the window
    policy = default_policy()
    policy.levels[1].contacts = [Contact(channel=ChannelName.EMAIL, recipient="senior@home.test")]
    policy.levels[2].contacts = [Contact(channel=ChannelName.SMS, recipient="07700900123")]
    site2 = make_site(db, uid + "b", policy)
    alert2 = make_alert(db, uid + "b", site2)
    down = channels_for(free_port(), notify)
    assert step(database, down, T0, site2) == [(1, "unacknowledged")]
    assert step(database, down, T0 + timedelta(minutes=15), site2) == [(2, "unacknowledged")]
    assert step(database, down, T0 + timedelta(minutes=15), site2) == [(3, "unacknowledged")]
    assert [(lv, ch, res) for lv, _, ch, _, res in log_rows(db, alert2)] == [
        (1, "dashboard", "delivered"), (2, "email", "failed"), (3, "sms", "delivered")]
    assert [r.json["phone_number"] for r in notify.received] == ["07700900123"]
