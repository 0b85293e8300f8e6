"""The simulated staff (firmware_sim/care.py): the home's own rounds, their failures, concern and the chart."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch.firmware_sim.care import (
    LAST_CHECK_S,
    CheckReason,
    HomeCare,
    concern_rate,
    follow_up_after,
    plan_checks,
    plan_round_hours,
    routine_checks,
)


@given(st.floats(0.0, 11.0), st.floats(12.0, 23.5))
def test_every_plan_has_its_rounds_in_order_between_the_homes_morning_and_evening(morning: float,
                                                                                  evening: float) -> None:
    hours = plan_round_hours(morning, evening)
    for n, rounds in hours.items():
        assert len(rounds) == n
        assert list(rounds) == sorted(rounds)
        assert all(0.0 <= h < 24.0 for h in rounds)
        if n <= 4:
            assert rounds[0] == morning and rounds[-1] == (evening if n > 1 else morning)


def test_round_times_need_a_morning_before_the_evening() -> None:
    with pytest.raises(ValueError, match="before the evening"):
        plan_round_hours(20.0, 8.0)


def test_homes_differ_and_none_is_the_platforms_textbook() -> None:
    homes = [HomeCare.draw(np.random.default_rng([9, k])) for k in range(40)]
    mornings = {h.round_hours[4][0] for h in homes}
    assert len(mornings) > 4 and all(7.0 <= m <= 9.0 for m in mornings)
    assert sum(h.round_hours[4] == (8.0, 12.0, 16.0, 20.0) for h in homes) < 5
    assert all(0.0 < h.rr_missing_probability < 0.5 and 0.0 < h.missed_probability < 0.1 for h in homes)


def test_rounds_jitter_run_late_and_are_missed_at_the_homes_rates() -> None:
    care = replace(HomeCare.textbook(), jitter_min=15.0, late_probability=0.2, late_by_h=(1.0, 2.0),
                   missed_probability=0.1)
    rng = np.random.default_rng(1)
    days = [routine_checks(rng, care, 4, 0.0) for _ in range(2000)]
    assert 0.88 < np.mean([len(d) for d in days]) / 4 < 0.92
    first = np.array([d[0] for d in days if len(d)]) / 3600.0
    on_time = first[first < 9.0]
    assert abs(np.median(on_time) - 8.0) < 0.05 and 0.2 < np.std(on_time) < 0.3  # 15 min SD around 08:00
    late = np.mean((first >= 9.0) & (first < 10.5))
    assert 0.12 < late < 0.28


def test_concern_rises_with_what_staff_can_see_and_is_never_zero() -> None:
    care = HomeCare.draw(np.random.default_rng(3))
    rate = concern_rate(care, np.array([0.0, 0.5, 1.0]))
    assert 0.0 < rate[0] < rate[1] < rate[2]
    assert rate[0] * 24 < 0.1  # a well resident: a concern check every few weeks at most


@given(st.integers(0, 20), st.booleans(), st.integers(0, 6))
def test_follow_up_follows_the_chart_and_the_residents_usual(score: int, red: bool, usual: int) -> None:
    hours = follow_up_after(score, red, usual)
    if score >= 5 or red:
        assert hours == 1.0
    elif score > usual:
        assert hours == 4.0
    else:
        assert hours is None


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3, 4, 6]), st.floats(0.0, 1.0), st.integers(0, 9))
def test_a_days_checks_are_ordered_spaced_and_inside_the_day(seed: int, obs: int, seen: float, score: int) -> None:
    care = HomeCare.draw(np.random.default_rng(seed))
    checks = plan_checks(np.random.default_rng(seed + 1), care, obs, 600.0, np.full(24, seen),
                         lambda _t: (score, False), usual=2)
    times = [t for t, _ in checks]
    assert times == sorted(times)
    assert all(0.0 <= t < LAST_CHECK_S for t in times)
    assert all(b - a >= 600.0 for a, b in itertools.pairwise(times))
    assert {r for _, r in checks} <= set(CheckReason)


def test_a_high_score_brings_hourly_follow_ups_and_a_usual_one_none() -> None:
    care = replace(HomeCare.textbook(), follow_up_compliance=1.0)
    sick = plan_checks(np.random.default_rng(1), care, 2, 0.0, np.zeros(24), lambda _t: (6, False), usual=1)
    well = plan_checks(np.random.default_rng(1), care, 2, 0.0, np.zeros(24), lambda _t: (1, False), usual=1)
    assert [r for _, r in well] == [CheckReason.ROUND, CheckReason.ROUND]
    assert sum(r is CheckReason.FOLLOW_UP for _, r in sick) >= 10
    gaps = np.diff([t for t, _ in sick]) / 3600.0
    assert np.median(gaps) < 1.3


def test_staff_who_never_follow_up_only_do_their_rounds() -> None:
    care = replace(HomeCare.textbook(), follow_up_compliance=0.0)
    checks = plan_checks(np.random.default_rng(1), care, 4, 0.0, np.zeros(24), lambda _t: (9, True), usual=0)
    assert [r for _, r in checks] == [CheckReason.ROUND] * 4
