"""Incidents (pure): grouping a subject's alerts, NEWS2 band rises, and what a snooze may hide."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from carewatch.alerts import BAND_ACK_WINDOW, Severity
from carewatch.scoring.incidents import (
    Component,
    OpenIncident,
    overdue_joins_incident,
    plan_incident,
    snooze_hides,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def news2(alert_id: int, risk: str, severity: Severity = Severity.MEDIUM, score: int = 5) -> Component:
    return Component(alert_id, "news2", severity, f"NEWS2 {score} ({risk})", "call the GP",
                     {"risk": risk, "score": score})


def comp(alert_id: int, kind: str, severity: Severity = Severity.LOW, **data: object) -> Component:
    return Component(alert_id, kind, severity, f"{kind} reason", f"{kind} action", data)


def stored(plan, incident_id: int = 7, acknowledged: bool = True) -> OpenIncident:
    return OpenIncident(incident_id, plan.severity, plan.band, "acknowledged" if acknowledged else "open",
                        NOW if acknowledged else None, None if acknowledged else plan.ack_due_at, plan.headline,
                        plan.action_text, frozenset(c.alert_id for c in plan.components))


def test_one_incident_takes_headline_and_severity_from_its_worst_component() -> None:
    """The demo's infection: 8 alerts for one resident become one incident headed by NEWS2."""
    parts = [comp(1, "soft_signs", Severity.MEDIUM, soft_signs=["new_confusion"]), comp(2, "spo2_below_baseline"),
             comp(3, "temperature_above_baseline"), comp(4, "news2_rising"), news2(5, "medium"),
             comp(6, "obs_overdue", Severity.MEDIUM, last_risk="medium")]
    plan = plan_incident(None, parts, NOW)
    assert plan.action == "open" and plan.realert
    assert plan.severity is Severity.MEDIUM and plan.band == "medium" and plan.category == "clinical"
    assert plan.headline == "NEWS2 5 (medium)" and plan.action_text == "call the GP"
    assert [c.alert_id for c in plan.components][:2] == [5, 1]  # worst first: NEWS2, then soft signs
    assert len(plan.components) == 6
    assert plan.ack_due_at == NOW + BAND_ACK_WINDOW["medium"]


def test_info_findings_never_open_an_incident_and_no_components_resolve_it() -> None:
    assert plan_incident(None, [comp(1, "care_review", Severity.INFO)], NOW).action == "none"
    opened = plan_incident(None, [comp(1, "battery_low")], NOW)
    assert opened.category == "device"
    assert plan_incident(stored(opened), [], NOW).action == "resolve"


def test_new_components_update_without_re_alerting() -> None:
    first = plan_incident(None, [news2(1, "medium")], NOW)
    later = plan_incident(stored(first), [news2(1, "medium"), comp(2, "spo2_below_baseline")], NOW)
    assert later.action == "update" and not later.realert
    assert ("components_added", {"alerts": [2], "kinds": ["spo2_below_baseline"]}) in later.events
    same = plan_incident(stored(later), [news2(1, "medium"), comp(2, "spo2_below_baseline")], NOW)
    assert same.action == "none"


def test_band_rise_re_alerts_even_when_the_severity_enum_does_not_change() -> None:
    """A red 3 (low-medium) that becomes a total of 5-6 (medium) is 'medium' severity both times."""
    red3 = plan_incident(None, [news2(1, "low-medium", score=3)], NOW)
    assert red3.band == "low-medium" and red3.severity is Severity.MEDIUM
    later = NOW + timedelta(minutes=20)
    rose = plan_incident(stored(red3), [news2(1, "medium", score=6)], later)
    assert rose.action == "update" and rose.realert and rose.severity is Severity.MEDIUM
    assert rose.ack_due_at == later + BAND_ACK_WINDOW["medium"]
    assert rose.events[0][0] == "band_rose" and rose.events[0][1]["needs_acknowledging_again"]
    high = plan_incident(stored(rose), [news2(1, "high", Severity.HIGH, 7)], later)
    assert high.realert and high.ack_due_at == later + BAND_ACK_WINDOW["high"]


def test_each_step_low_to_high_re_alerts_and_a_fall_does_not() -> None:
    soft = comp(9, "soft_signs", Severity.MEDIUM, soft_signs=["drowsy"])
    plan = plan_incident(None, [soft], NOW)
    assert plan.band == "low"  # a clinical incident without a NEWS2 alert: the low band
    for risk, severity in (("low-medium", Severity.MEDIUM), ("medium", Severity.MEDIUM), ("high", Severity.HIGH)):
        plan = plan_incident(stored(plan), [soft, news2(1, risk, severity)], NOW)
        assert plan.realert, risk
    fell = plan_incident(stored(plan), [soft, news2(1, "medium")], NOW)
    assert fell.action == "update" and not fell.realert and fell.band == "medium"


def test_a_rise_never_postpones_a_running_deadline() -> None:
    first = plan_incident(None, [news2(1, "low-medium", score=3)], NOW)
    unacked = stored(first, acknowledged=False)
    rose = plan_incident(unacked, [news2(1, "medium", score=5)], NOW + timedelta(minutes=50))
    assert rose.ack_due_at == first.ack_due_at  # 60 min from NOW, not 60 min from the rise


def test_overdue_is_a_task_unless_the_last_set_was_low_medium_or_there_is_an_open_clinical_incident() -> None:
    assert not overdue_joins_incident("low", False)
    assert not overdue_joins_incident(None, False)
    assert overdue_joins_incident("low-medium", False)
    assert overdue_joins_incident("high", False)
    assert overdue_joins_incident("low", True)


def test_snooze_never_hides_a_band_rise_new_soft_signs_or_high() -> None:
    # a refresh at the same band, or the same soft signs: hidden
    assert snooze_hides("news2", Severity.MEDIUM, {"risk": "medium"}, {"risk": "medium"}, Severity.MEDIUM)
    assert snooze_hides("soft_signs", Severity.MEDIUM, {"soft_signs": ["drowsy"]},
                        {"soft_signs": ["drowsy", "new_pain"]}, Severity.MEDIUM)
    assert snooze_hides("spo2_below_baseline", Severity.LOW, {}, None, None)
    # a band rise (also from no open alert, i.e. from low), new soft signs, high, a severity rise: never
    assert not snooze_hides("news2", Severity.MEDIUM, {"risk": "medium"}, {"risk": "low-medium"}, Severity.MEDIUM)
    assert not snooze_hides("news2", Severity.MEDIUM, {"risk": "low-medium"}, None, None)
    assert not snooze_hides("soft_signs", Severity.MEDIUM, {"soft_signs": ["drowsy", "new_cough"]},
                            {"soft_signs": ["drowsy"]}, Severity.MEDIUM)
    assert not snooze_hides("soft_signs", Severity.MEDIUM, {"soft_signs": ["drowsy"]}, None, None)
    assert not snooze_hides("long_lie", Severity.HIGH, {}, None, None)
    assert not snooze_hides("battery_low", Severity.MEDIUM, {}, {}, Severity.LOW)


def test_headline_ties_follow_kind_priority_then_age() -> None:
    plan = plan_incident(None, [comp(4, "news2_rising"), comp(2, "spo2_below_baseline"),
                                comp(3, "temperature_above_baseline")], NOW)
    assert plan.headline == "news2_rising reason"
    plan = plan_incident(None, [replace(comp(4, "battery_low"), severity=Severity.LOW),
                                comp(2, "device_silent")], NOW)
    assert plan.headline == "device_silent reason"
