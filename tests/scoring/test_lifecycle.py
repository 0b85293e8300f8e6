"""Staff actions on alerts: valid transitions change the row and append events; invalid ones say why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from carewatch.scoring import lifecycle
from carewatch.scoring.lifecycle import AlertLifecycleError, AlertNotFound
from carewatch.subjects import Subject

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def alert(db: psycopg.Connection, uid: str) -> int:
    return _alert(db, uid, "medium")


def _alert(db: psycopg.Connection, uid: str, severity: str, kind: str = "news2") -> int:
    site = f"lc-{uid}-{severity}"
    db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'LC') ON CONFLICT DO NOTHING",
               (site,))
    db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
               "VALUES (%s, %s, 'LC resident', '1940-01-01') ON CONFLICT DO NOTHING", (f"subj-{uid}", site))
    alert_id = db.execute(
        "INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action, data, "
        "opened_at, ack_due_at) "
        "VALUES (%s, %s, 'resident', %s, %s, %s, 'r', 'a', '{\"sbard\": {\"decision\": null}}', %s, %s) "
        "RETURNING alert_id",
        (site, f"subj-{uid}", f"subj-{uid}", kind, severity, NOW, NOW + timedelta(minutes=60)),
    ).fetchone()[0]
    return alert_id


def _row(db: psycopg.Connection, alert_id: int) -> dict:
    cur = db.execute("SELECT * FROM alerts WHERE alert_id = %s", (alert_id,))
    return dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))


def _events(db: psycopg.Connection, alert_id: int) -> list[tuple]:
    return db.execute("SELECT action, actor, outcome, comment FROM alert_events WHERE alert_id = %s "
                      "ORDER BY event_id", (alert_id,)).fetchall()


def test_acknowledge_then_resolve(db, alert) -> None:
    lifecycle.acknowledge(db, alert, "carer1", "on my way", at=NOW)
    row = _row(db, alert)
    assert (row["status"], row["acknowledged_by"], row["ack_due_at"]) == ("acknowledged", "carer1", None)
    with pytest.raises(AlertLifecycleError, match="already acknowledged by carer1"):
        lifecycle.acknowledge(db, alert, "carer2")
    lifecycle.resolve(db, alert, "nurse1", "GP reviewed: chest infection, antibiotics")
    assert _row(db, alert)["status"] == "resolved"
    assert [e[0] for e in _events(db, alert)] == ["acknowledged", "resolved"]


def test_actions_on_a_resolved_alert_are_refused_but_comments_allowed(db, alert) -> None:
    lifecycle.resolve(db, alert, "nurse1", "false alarm: probe on cold fingers")
    for call in (lambda: lifecycle.acknowledge(db, alert, "x"),
                 lambda: lifecycle.escalate(db, alert, "x", "gp_called"),
                 lambda: lifecycle.resolve(db, alert, "x", "again")):
        with pytest.raises(AlertLifecycleError, match="resolved by nurse1"):
            call()
    lifecycle.comment(db, alert, "manager", "discussed at handover")
    assert [e[0] for e in _events(db, alert)] == ["resolved", "commented"]


def test_escalate_records_outcome_and_sbard_decision(db, alert) -> None:
    lifecycle.escalate(db, alert, "nurse1", "gp_called", "GP visiting at 3pm", at=NOW)
    row = _row(db, alert)
    assert row["status"] == "escalated" and row["escalation_level"] == 1
    assert row["acknowledged_by"] == "nurse1" and row["ack_due_at"] is None
    assert row["data"]["sbard"]["decision"] == "gp_called: GP visiting at 3pm"
    assert _events(db, alert) == [("escalated", "nurse1", "gp_called", "GP visiting at 3pm")]


@pytest.mark.parametrize(("outcome", "comment", "message"), [("phoned_mum", None, "unknown escalation outcome"),
                                                             ("other", None, "needs a comment")])
def test_escalate_rejects_bad_outcomes(db, alert, outcome, comment, message) -> None:
    with pytest.raises(AlertLifecycleError, match=message):
        lifecycle.escalate(db, alert, "nurse1", outcome, comment)


def test_missing_alert_actor_and_text(db, alert) -> None:
    with pytest.raises(AlertNotFound, match="does not exist"):
        lifecycle.acknowledge(db, 10**12, "carer1")
    with pytest.raises(AlertLifecycleError, match="actor"):
        lifecycle.acknowledge(db, alert, "  ")
    with pytest.raises(AlertLifecycleError, match="empty"):
        lifecycle.comment(db, alert, "carer1", "")
    with pytest.raises(AlertLifecycleError, match="how the alert was resolved"):
        lifecycle.resolve(db, alert, "carer1", " ")


def test_snooze_never_defers_escalation_and_records_event(db, alert, uid) -> None:
    """H-ALERT-07: a snooze is recorded on the alert but its escalation deadline stays; clinical kinds 24 h at most."""
    due = _row(db, alert)["ack_due_at"]
    until = NOW + timedelta(hours=3)
    subject, site = Subject("resident", f"subj-{uid}"), _row(db, alert)["site_id"]
    sid = lifecycle.snooze(db, subject, site, "news2", "nurse1", "GP aware", until, at=NOW)
    assert db.execute("SELECT reason, until FROM alert_suppressions WHERE suppression_id = %s",
                      (sid,)).fetchone() == ("GP aware", until)
    assert _row(db, alert)["ack_due_at"] == due
    assert _events(db, alert)[-1][0] == "snoozed"
    with pytest.raises(AlertLifecycleError, match="at most 24 hours"):
        lifecycle.snooze(db, subject, site, "news2", "nurse1", "GP aware", NOW + timedelta(hours=25), at=NOW)


def test_snooze_refuses_high_unknown_kind_past_time_and_no_reason(db, uid) -> None:
    site = _row(db, _alert(db, uid, "high", "news2_rising"))["site_id"]
    subject = Subject("resident", f"subj-{uid}")
    with pytest.raises(AlertLifecycleError, match="high severity"):
        lifecycle.snooze(db, subject, site, "news2_rising", "x", "busy", NOW + timedelta(hours=1), at=NOW)
    with pytest.raises(AlertLifecycleError, match="unknown alert kind"):
        lifecycle.snooze(db, subject, site, "bananas", "x", "r", NOW + timedelta(hours=1))
    with pytest.raises(AlertLifecycleError, match="future"):
        lifecycle.snooze(db, subject, site, "battery_low", "x", "r", NOW - timedelta(hours=1), at=NOW)
    with pytest.raises(AlertLifecycleError, match="reason"):
        lifecycle.snooze(db, subject, site, "battery_low", "x", "", NOW + timedelta(hours=1))
