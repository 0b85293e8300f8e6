"""Simulated care: when staff check a resident, and why, as a care home works (not as the platform expects).

The platform's evaluation is only fair if the simulated staff do not know the detector. So nothing here comes from
``carewatch.scoring`` except the NEWS2 chart itself (which staff use on paper too): no round table, no alert
threshold, no schedule rule. What staff do comes from three sources:

* **the home's own care plans** (:class:`HomeCare`): each home has its own round times (a morning round somewhere
  between 07:00 and 09:00, an evening one between 18:00 and 20:30...), and its rounds drift, run late, are missed,
  and often leave the respiration rate uncounted (the parameter most often missing from NEWS2 charts);
* **staff concern** (:func:`concern_rate`): staff who see soft signs (the person is quieter, confused, off their
  food, has fallen) check them; families worry and ask; and staff sometimes check someone for no recorded reason;
* **the NEWS2 chart's own response** (:func:`follow_up_after`): after a set, staff who score it follow RCP's
  minimum frequencies (and RESTORE2's "know the resident's usual score"), with a home-specific compliance.

Everything is a pure function of its arguments and a numpy generator, so tests can pin each behaviour.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

#: Plans with routine rounds (rounds a day). Homes write care plans as 1, 2, 3, 4 or 6 checks a day.
PLAN_SIZES = (1, 2, 3, 4, 6)
DAY_S = 86_400.0
#: A check in the last quarter hour of a day belongs to the next day's plan (days are planned on their own).
LAST_CHECK_S = DAY_S - 900.0


class CheckReason(StrEnum):
    """Why staff took a set: what the NEWS2 literature separates as routine and concern-prompted readings."""

    ROUND = "round"  # the care plan's routine round
    CONCERN = "concern"  # staff saw something, a family asked, or a carer had a feeling
    FOLLOW_UP = "follow_up"  # the chart said to re-check sooner


@dataclass(frozen=True, slots=True)
class HomeCare:
    """One care home's way of working: its round times and how reliably they happen.

    ``round_hours[n]`` are the local hours of the rounds of an n-a-day care plan in this home. ``jitter_min`` is the
    spread (SD, minutes) of when a resident is seen around their slot; a round is ``late`` with
    ``late_probability`` (by ``late_by_h``), missed with ``missed_probability``; the respiration rate is not
    counted at a routine round with ``rr_missing_probability`` (half that at a concern or follow-up check, when
    staff are looking for trouble). ``concern_per_h`` is the rate of concern checks an hour for someone whose soft
    signs are fully visible; ``family_worry_per_day`` and ``random_check_per_day`` add checks for everyone.
    ``follow_up_compliance`` is the chance staff re-check when the chart says so.
    """

    round_hours: Mapping[int, tuple[float, ...]]
    jitter_min: float = 15.0
    late_probability: float = 0.08
    late_by_h: tuple[float, float] = (0.5, 2.0)
    missed_probability: float = 0.04
    rr_missing_probability: float = 0.2
    concern_per_h: float = 0.25
    family_worry_per_day: float = 0.01
    random_check_per_day: float = 0.01
    follow_up_compliance: float = 0.75

    @classmethod
    def textbook(cls, *, missed_probability: float = 0.0) -> HomeCare:
        """A home that runs rounds at 08/12/16/20 on the dot, counts every RR and has no concern checks: for tests
        that need the routine alone."""
        return cls(round_hours=plan_round_hours(8.0, 20.0), jitter_min=0.0, late_probability=0.0,
                   missed_probability=missed_probability, rr_missing_probability=0.0, concern_per_h=0.0,
                   family_worry_per_day=0.0, random_check_per_day=0.0, follow_up_compliance=0.0)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> HomeCare:
        """A plausible home. Ranges are judgement from UK care-home practice (handover 07:00-08:00 and 19:00-20:00;
        RR the parameter most often left out of charts), not measured figures: see docs/scenarios.md."""
        morning = float(np.round(rng.uniform(7.0, 9.0) * 4) / 4)
        evening = float(np.round(rng.uniform(18.0, 20.5) * 4) / 4)
        return cls(
            round_hours=plan_round_hours(morning, evening),
            jitter_min=float(rng.uniform(8.0, 25.0)),
            late_probability=float(rng.uniform(0.03, 0.15)),
            late_by_h=(0.5, float(rng.uniform(1.5, 3.0))),
            missed_probability=float(rng.uniform(0.01, 0.08)),
            rr_missing_probability=float(rng.uniform(0.05, 0.4)),
            concern_per_h=float(rng.uniform(0.1, 0.4)),
            family_worry_per_day=float(rng.uniform(0.003, 0.02)),
            random_check_per_day=float(rng.uniform(0.003, 0.02)),
            follow_up_compliance=float(rng.uniform(0.5, 0.95)),
        )


def plan_round_hours(morning: float, evening: float) -> dict[int, tuple[float, ...]]:
    """A home's round times for every plan size, from its morning and evening round: the day's rounds spread
    evenly between them; six a day runs round the clock every 4 h from the morning round."""
    if not 0.0 <= morning < evening < 24.0:
        raise ValueError(f"the morning round ({morning}) must come before the evening round ({evening})")
    span = evening - morning
    return {
        1: (morning,),
        2: (morning, evening),
        3: (morning, morning + span / 2, evening),
        4: (morning, morning + span / 3, morning + 2 * span / 3, evening),
        6: tuple(sorted((morning + 4.0 * k) % 24.0 for k in range(6))),
    }


def routine_checks(rng: np.random.Generator, care: HomeCare, obs_per_day: int, slot_s: float) -> np.ndarray:
    """Wall-clock seconds (from local midnight) of the day's routine rounds that happen for one resident.

    ``slot_s`` is the resident's usual place in the round (staff go round residents in order)."""
    if obs_per_day not in care.round_hours:
        raise ValueError(f"obs_per_day must be one of {sorted(care.round_hours)}, not {obs_per_day}")
    hours = np.asarray(care.round_hours[obs_per_day], dtype=float)
    n = len(hours)
    u = rng.random((3, n))
    z = rng.standard_normal(n)
    times = hours * 3600.0 + slot_s + care.jitter_min * 60.0 * z
    late = u[0] < care.late_probability
    times = times + np.where(late, 3600.0 * (care.late_by_h[0] + (care.late_by_h[1] - care.late_by_h[0]) * u[1]), 0.0)
    kept = u[2] >= care.missed_probability
    return np.sort(times[kept])


def concern_rate(care: HomeCare, visibility: np.ndarray) -> np.ndarray:
    """Concern checks an hour, per hour of the day, for soft-sign ``visibility`` 0..1 (how plainly unwell the person
    looks: their scenario's soft signs and new confusion). Families worry more about someone who is off colour."""
    v = np.clip(np.asarray(visibility, dtype=float), 0.0, 1.0)
    everyone = care.random_check_per_day / 24.0 + care.family_worry_per_day / 24.0 * (1.0 + 4.0 * v)
    return everyone + care.concern_per_h * v


def concern_checks(rng: np.random.Generator, care: HomeCare, visibility: np.ndarray) -> np.ndarray:
    """Wall-clock seconds of the day's concern-prompted checks, for hourly ``visibility`` (24 values)."""
    rate = concern_rate(care, visibility)
    happen = rng.random(len(rate)) < 1.0 - np.exp(-rate)
    return np.flatnonzero(happen) * 3600.0 + rng.uniform(0.0, 3600.0, len(rate))[happen]


#: RCP Chart 4 minimum observation frequency by what the set scored, as staff read it off the chart (hours until the
#: next set; None: the care plan's rounds are enough). A total of 1-4 is re-checked 4-hourly only when it is above
#: the resident's usual score (RESTORE2: know the resident's normal), which is how homes use it for frail people who
#: live at a score of 2.
def follow_up_after(score: int, red: bool, usual: int) -> float | None:
    """Hours until staff re-check after a set scoring ``score`` (``red``: a single parameter scored 3)."""
    if score >= 5 or red:
        return 1.0
    if score > usual:
        return 4.0
    return None


def plan_checks(
    rng: np.random.Generator,
    care: HomeCare,
    obs_per_day: int,
    slot_s: float,
    visibility: np.ndarray,
    chart: Callable[[float], tuple[int, bool]],
    usual: int,
) -> list[tuple[float, CheckReason]]:
    """The day's checks for one resident, in time order: routine rounds, concern checks and the chart's follow-ups.

    ``chart(wall_s)`` is what staff would score on a set taken then (total, any single 3), ``usual`` the resident's
    usual total. A concern check within 45 min of a round is done with the round. Follow-ups are planned one at a
    time from each set's score, so a worsening resident is checked more and more often.
    """
    rounds = routine_checks(rng, care, obs_per_day, slot_s)
    concern = concern_checks(rng, care, visibility)
    if len(rounds) and len(concern):
        concern = concern[np.min(np.abs(concern[:, None] - rounds[None, :]), axis=1) > 2700.0]
    queue: list[tuple[float, str]] = [(float(t), CheckReason.ROUND) for t in rounds]
    queue += [(float(t), CheckReason.CONCERN) for t in concern]
    heapq.heapify(queue)
    out: list[tuple[float, CheckReason]] = []
    follow_draws = iter(rng.random(64).tolist())
    jitter = iter(rng.uniform(-600.0, 900.0, 64).tolist())
    while queue:
        t, reason = heapq.heappop(queue)
        if not 0.0 <= t < LAST_CHECK_S:
            continue
        if out and t - out[-1][0] < 600.0:
            continue  # two reasons for one visit
        out.append((t, CheckReason(reason)))
        score, red = chart(t)
        hours = follow_up_after(score, red, usual)
        if hours is None or next(follow_draws, 1.0) >= care.follow_up_compliance:
            continue
        due = t + hours * 3600.0 + next(jitter, 0.0)
        if not any(abs(q - due) < 1800.0 or (0.0 < q - t < hours * 3600.0) for q, _ in queue):
            heapq.heappush(queue, (due, CheckReason.FOLLOW_UP))
    return out
