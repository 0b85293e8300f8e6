"""Observation scheduling: RCP minimum frequencies adapted for care homes, never less often than the care plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from carewatch.alerts import Severity
from carewatch.scoring.clinical_response import clinical_response
from carewatch.scoring.rules import ResidentFacts
from carewatch.scoring.schedule import (
    CONTINUOUS_RECHECK,
    OVERDUE_GRACE,
    LastObservation,
    care_plan_interval,
    first_obs_due,
    next_obs_due,
    observation_interval,
    overdue_finding,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RES = ResidentFacts("res-1", "home-1", "Mrs A", obs_per_day=2)


@pytest.mark.parametrize(
    ("risk", "score", "complete", "per_day", "expected"),
    [
        ("low", 0, True, 2, timedelta(hours=12)),  # stable: care plan
        ("low", 0, True, 4, timedelta(hours=6)),  # care plan tighter
        ("low", 0, True, 1, timedelta(hours=24)),
        ("low", 2, True, 1, timedelta(hours=4)),  # RCP 1-4: 4-hourly
        ("low-medium", 3, True, 2, timedelta(hours=1)),
        ("medium", 5, True, 2, timedelta(hours=1)),
        ("high", 7, True, 2, CONTINUOUS_RECHECK),
        ("low", 0, False, 2, timedelta(hours=1)),  # partial set: complete it within the hour
    ],
)
def test_interval_by_band(risk: str, score: int, complete: bool, per_day: int, expected: timedelta) -> None:
    missing = () if complete else ("respiration_rate",)
    response = clinical_response(risk, score, missing)
    assert observation_interval(response, score, complete, per_day) == expected  # no time: the average gap
    if per_day != 4:  # four a day runs by day (08/12/16/20): see test_care_plan_rounds_run_by_day
        assert next_obs_due(T0, response, score, complete, per_day) == T0 + expected


LONDON = ZoneInfo("Europe/London")


def _local(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 1, day, hh, mm, tzinfo=LONDON)


@pytest.mark.parametrize(("per_day", "taken", "due"), [
    (4, _local(12, 8, 40), _local(12, 12, 40)),  # 40 min into the 08:00 round -> 40 min into the 12:00 round
    (4, _local(12, 20, 40), _local(13, 8, 40)),  # the 20:00 round is followed by 08:00, not 02:00
    (4, _local(12, 21, 45), _local(13, 9, 30)),  # late: due by the end of the next round (08:00 + 90 min)
    (4, _local(13, 3, 0), _local(13, 9, 30)),  # an extra night check does not push the morning round back
    (2, _local(12, 20, 10), _local(13, 8, 10)),
    (1, _local(12, 8, 20), _local(13, 8, 20)),
    (6, _local(12, 2, 30), _local(12, 6, 30)),  # six a day runs through the night
    (3, _local(12, 14, 5), _local(12, 20, 5)),
])
def test_care_plan_rounds_run_by_day(per_day: int, taken: datetime, due: datetime) -> None:
    """H-OBS-10: routine rounds happen at the care plan's times; 4 a day does not mean every 6 h at night."""
    zero = clinical_response("low", 0, ())
    assert next_obs_due(taken, zero, 0, True, per_day) == due
    # the RCP band still applies through the night: a score of 2 above the usual is due 4 h later
    two = clinical_response("low", 2, ())
    assert next_obs_due(taken, two, 2, True, per_day) == min(due, taken + timedelta(hours=4))


@pytest.mark.parametrize(("score", "risk", "complete", "at_usual", "expected"), [
    (2, "low", True, True, timedelta(hours=12)),  # their known stable score: the care plan (H-OBS-09)
    (2, "low", True, False, timedelta(hours=4)),  # above their usual: RCP 4-hourly
    (2, "low", False, True, timedelta(hours=1)),  # partial: complete it within the hour, whatever is usual
    (3, "low-medium", True, True, timedelta(hours=1)),  # a red 3 is never "usual"
    (5, "medium", True, True, timedelta(hours=1)),
])
def test_stable_usual_score_follows_the_care_plan(score: int, risk: str, complete: bool, at_usual: bool,
                                                   expected: timedelta) -> None:
    response = clinical_response(risk, score, () if complete else ("respiration_rate",))
    assert observation_interval(response, score, complete, 2, at_usual=at_usual) == expected


def test_care_plan_interval_rejects_nonsense() -> None:
    assert care_plan_interval(3) == timedelta(hours=8)
    with pytest.raises(ValueError, match="1-24"):
        care_plan_interval(0)


def test_overdue_only_after_grace() -> None:
    due = T0
    last = LastObservation(T0 - timedelta(hours=1), 5, "medium", True)
    assert overdue_finding(RES, due, last, due + OVERDUE_GRACE).state == "clear"
    late = overdue_finding(RES, due, last, due + OVERDUE_GRACE + timedelta(seconds=1))
    assert late.state == "raise" and late.severity is Severity.MEDIUM
    assert "NEWS2 5" in late.reason


def test_overdue_severity_follows_last_risk_and_never_observed_is_low() -> None:
    """Overdue joins an incident (an alert) only with an open clinical incident or a last set of low-medium or
    worse; otherwise it is a task on the home's list (H-TASK-02)."""
    later = T0 + timedelta(hours=2)
    low = overdue_finding(RES, T0, LastObservation(T0, 1, "low", True), later, open_clinical=True)
    high = overdue_finding(RES, T0, LastObservation(T0, 8, "high", True), later)
    never = overdue_finding(RES, first_obs_due(T0 - timedelta(days=1), 2), None, later, open_clinical=True)
    assert (low.severity, high.severity, never.severity) == (Severity.LOW, Severity.HIGH, Severity.LOW)
    assert "No observations" in never.reason


def test_overdue_after_a_low_set_is_a_task_not_an_alert() -> None:
    later = T0 + timedelta(hours=2)
    task = overdue_finding(RES, T0, LastObservation(T0, 1, "low", True), later)
    assert task.state == "clear" and "task list" in task.reason
    assert overdue_finding(RES, first_obs_due(T0 - timedelta(days=1), 2), None, later).state == "clear"
    red3 = overdue_finding(RES, T0, LastObservation(T0, 3, "low-medium", True), later)
    assert red3.state == "raise" and red3.severity is Severity.MEDIUM
