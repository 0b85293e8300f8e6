"""Observation tasks (pure): due and overdue per shift, why, and when overdue joins an incident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch.alerts import CLINICAL_SNOOZE_MAX, OTHER_SNOOZE_MAX, snooze_limit
from carewatch.scoring.clinical_response import Risk, clinical_response
from carewatch.scoring.schedule import care_plan_gap, observation_interval
from carewatch.scoring.tasks import TaskInput, build_tasks, due_reason, next_obs_and_reason, shift_bounds

# 2026-01-15 is in GMT: local time == UTC
NOW = datetime(2026, 1, 15, 14, 0, tzinfo=UTC)


def row(rid: str, due_minutes: float | None, risk: str | None = "low", **kw: object) -> TaskInput:
    base = dict(resident_id=rid, display_name=f"Name {rid}", site_id="home",
                due_at=None if due_minutes is None else NOW + timedelta(minutes=due_minutes), why=None,
                last_at=NOW - timedelta(hours=4), last_score=1 if risk == "low" else 5, last_risk=risk,
                last_complete=True)
    base.update(kw)
    return TaskInput(**base)  # type: ignore[arg-type]


def test_shifts_are_day_08_to_20_and_night_20_to_08() -> None:
    assert shift_bounds(NOW)[0] == "day"
    name, start, end = shift_bounds(datetime(2026, 1, 15, 3, 0, tzinfo=UTC))
    assert (name, start.hour, end.hour, start.day, end.day) == ("night", 20, 8, 14, 15)
    name, start, end = shift_bounds(datetime(2026, 1, 15, 21, 0, tzinfo=UTC))
    assert (name, start.day, end.day) == ("night", 15, 16)


def test_task_list_is_this_shift_overdue_first_with_why() -> None:
    tasks = build_tasks([
        row("later", 60), row("now", -5), row("late", -30), row("tomorrow", 60 * 10), row("never", None),
        row("sick", -20, risk="medium", why="news2"),
    ], NOW)
    assert [t.resident_id for t in tasks] == ["late", "sick", "now", "later"]
    assert [t.status for t in tasks] == ["overdue", "overdue", "due", "upcoming"]
    late, sick = tasks[0], tasks[1]
    assert not late.in_incident  # a task, not an alert: the last set was low
    assert sick.in_incident and sick.why_text == "NEWS2 frequency"
    assert late.why == "care_plan" and "due" in late.text and "Name late" in late.text


def test_overdue_joins_an_open_clinical_incident() -> None:
    tasks = build_tasks([row("a", -30, open_clinical_incident=True)], NOW)
    assert tasks[0].in_incident


def test_due_reason_says_news2_frequency_only_when_the_band_is_more_often_than_the_care_plan() -> None:
    low0 = clinical_response(Risk.LOW, 0, ())
    assert due_reason(low0, 0, True, 2, NOW) == "care_plan"
    low2 = clinical_response(Risk.LOW, 2, ())
    assert due_reason(low2, 2, True, 2, NOW) == "news2"
    assert due_reason(low2, 2, True, 2, NOW, at_usual=True) == "care_plan"
    medium = clinical_response(Risk.MEDIUM, 5, ())
    assert due_reason(medium, 5, True, 4, NOW) == "news2"
    assert due_reason(medium, 5, False, 4, NOW) == "incomplete"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(Risk)), st.integers(0, 20), st.booleans(), st.sampled_from([1, 2, 3, 4, 5, 6, 12, 24]),
       st.integers(0, 400 * 24 * 60), st.booleans())
def test_next_obs_and_reason_is_the_due_time_and_reason_computed_apart(
        risk: Risk, score: int, complete: bool, per_day: int, minutes: int, at_usual: bool) -> None:
    """The evaluation's one look at the care plan gives what the interval and the plan's gap give separately,
    through a year of round times, both clock changes included."""
    response = clinical_response(risk, score, () if complete else ("pulse",))
    taken = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    interval = observation_interval(response, score, complete, per_day, at_usual=at_usual, taken_at=taken)
    why = "incomplete" if not complete else "news2" if interval < care_plan_gap(per_day, taken) else "care_plan"
    assert next_obs_and_reason(response, score, complete, per_day, taken, at_usual=at_usual) == (taken + interval, why)


def test_snooze_limit_is_24_hours_for_clinical_kinds() -> None:
    assert snooze_limit("news2") == CLINICAL_SNOOZE_MAX == timedelta(hours=24)
    assert snooze_limit(None) == CLINICAL_SNOOZE_MAX
    assert snooze_limit("battery_low") == OTHER_SNOOZE_MAX
