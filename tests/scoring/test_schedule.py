"""Observation scheduling: RCP minimum frequencies adapted for care homes, never less often than the care plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from carewatch.scoring.clinical_response import clinical_response
from carewatch.scoring.kinds import Severity
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
    assert observation_interval(response, score, complete, per_day) == expected
    assert next_obs_due(T0, response, score, complete, per_day) == T0 + expected


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
    later = T0 + timedelta(hours=2)
    low = overdue_finding(RES, T0, LastObservation(T0, 1, "low", True), later)
    high = overdue_finding(RES, T0, LastObservation(T0, 8, "high", True), later)
    never = overdue_finding(RES, first_obs_due(T0 - timedelta(days=1), 2), None, later)
    assert (low.severity, high.severity, never.severity) == (Severity.LOW, Severity.HIGH, Severity.LOW)
    assert "No observations" in never.reason
