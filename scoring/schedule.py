"""When a resident's next observations are due, and whether they are overdue.

RCP Chart 4 minimum frequencies, adapted for care homes (docs/clinical-safety.md, H-OBS-06, H-OBS-09, H-OBS-10):

* total 0 on a complete set: the care plan's interval (24 h / obs_per_day; the default 2 a day is RCP's 12 h);
* total 1-4: every 4 h; a single red 3 or 5-6: every hour; 7+: "continuous" - a care home cannot monitor
  continuously, so every 15 minutes while waiting for the ambulance;
* a partial set must be completed within 1 hour (clinical_response.INCOMPLETE_RECHECK);
* never less often than the care plan (obs_per_day).

The band intervals come from ``clinical_response`` (the NEWS2 engineer's wording), so the schedule and the
band's "what to do" text cannot disagree.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache

from carewatch.alerts import AlertKind, Severity
from carewatch.scoring.clinical_response import ClinicalResponse, Risk
from carewatch.scoring.incidents import overdue_joins_incident
from carewatch.scoring.rules import (
    LOCAL_TZ,
    Finding,
    ResidentFacts,
    clear_alert,
    hold,
    local_time,
    raise_alert,
    sbard,
    text_wanted,
)

CONTINUOUS_RECHECK = timedelta(minutes=15)
#: An observation round counts as overdue this long after it was due (a round takes time to get round).
OVERDUE_GRACE = timedelta(minutes=15)

#: When a care plan's routine rounds happen (local hours). Care homes take routine observations by day (four a
#: day is 08/12/16/20, not every 6 h round the clock); six a day is the first plan that runs through the night.
#: Other counts are spread evenly over 24 h. The simulator's staff follow the same table (H-OBS-10).
CARE_PLAN_ROUND_HOURS: dict[int, tuple[float, ...]] = {
    1: (8.0,),
    2: (8.0, 20.0),
    3: (8.0, 14.0, 20.0),
    4: (8.0, 12.0, 16.0, 20.0),
    6: (2.0, 6.0, 10.0, 14.0, 18.0, 22.0),
}
#: A round takes time to get round: a resident's set may be taken up to this long after the round starts.
ROUND_SPREAD = timedelta(minutes=90)


def care_plan_interval(obs_per_day: int) -> timedelta:
    """The care plan's average gap (24 h / rounds a day)."""
    if not 1 <= obs_per_day <= 24:
        raise ValueError(f"obs_per_day must be 1-24, not {obs_per_day}")
    return timedelta(hours=24) / obs_per_day


@lru_cache(maxsize=65_536)  # pure, and asked again for the same newest set at every evaluation
def care_plan_gap(obs_per_day: int, taken_at: datetime | None = None) -> timedelta:
    """How long after a set taken at ``taken_at`` the care plan's next round falls due.

    With round times (CARE_PLAN_ROUND_HOURS): the set belongs to the latest round that started no more than
    ROUND_SPREAD after it; the next set is due as long after it as the next round is after that one (a resident
    seen 40 min into the 20:00 round is due 40 min into the 08:00 round), but never later than ROUND_SPREAD
    into the next round (an extra check at 03:00 does not push the 08:00 round back).
    """
    average = care_plan_interval(obs_per_day)
    hours = CARE_PLAN_ROUND_HOURS.get(obs_per_day)
    if taken_at is None or hours is None:
        return average
    local = taken_at.astimezone(LOCAL_TZ)
    starts = _round_starts(local.date(), hours)
    current = max(r for r in starts if r <= local + ROUND_SPREAD)
    following = min(r for r in starts if r > current)
    due = min(local + (following - current), following + ROUND_SPREAD)
    return max(due - local, timedelta(minutes=30))


@lru_cache(maxsize=1024)
def _round_starts(day: date, hours: tuple[float, ...]) -> tuple[datetime, ...]:
    """The round start times of the day before, the day and the day after (cached: every evaluation asks)."""
    return tuple(datetime.combine(day + timedelta(days=d), time(0), tzinfo=LOCAL_TZ) + timedelta(hours=h)
                 for d in (-1, 0, 1) for h in hours)


def observation_interval(response: ClinicalResponse, score: int, complete: bool, obs_per_day: int, *,
                         at_usual: bool = False, taken_at: datetime | None = None) -> timedelta:
    """Longest allowed gap before the next set, for a set with this response (taken at ``taken_at``: the care
    plan's round times; without it, its average gap).

    ``at_usual``: a complete low (1-4) set in which no parameter scores more than it usually does for this
    resident (``baselines.at_usual``, H-OBS-09): their known stable score, which follows the care plan like a 0.
    """
    return _interval(response, score, complete, care_plan_gap(obs_per_day, taken_at), at_usual)


def _interval(response: ClinicalResponse, score: int, complete: bool, plan: timedelta, at_usual: bool) -> timedelta:
    """``observation_interval`` given the care plan's gap (``plan``)."""
    if response.continuous:
        band = CONTINUOUS_RECHECK
    elif response.risk is Risk.LOW and complete and (score == 0 or at_usual):
        band = plan  # adapted: a stable 0, or the resident's own stable score, follows the care plan
    else:
        band = response.min_interval
    return min(band, plan)


def next_obs_schedule(taken_at: datetime, response: ClinicalResponse, score: int, complete: bool,
                      obs_per_day: int, *, at_usual: bool = False) -> tuple[datetime, bool]:
    """When the next set is due after this one, and whether the NEWS2 band (not the care plan) brought it
    forward: both from one reading of the care plan's round times (the evaluation asks for both)."""
    plan = care_plan_gap(obs_per_day, taken_at)
    interval = _interval(response, score, complete, plan, at_usual)
    return taken_at + interval, interval < plan


def next_obs_due(taken_at: datetime, response: ClinicalResponse, score: int, complete: bool,
                 obs_per_day: int, *, at_usual: bool = False) -> datetime:
    return next_obs_schedule(taken_at, response, score, complete, obs_per_day, at_usual=at_usual)[0]


def first_obs_due(created_at: datetime, obs_per_day: int) -> datetime:
    """A resident never observed is due one care-plan interval after admission to monitoring."""
    return created_at + care_plan_interval(obs_per_day)


@dataclass(frozen=True)
class LastObservation:
    taken_at: datetime
    score: int
    risk: str
    complete: bool
    missing: tuple[str, ...] = ()


OVERDUE_SEVERITY: Mapping[str, Severity] = {
    "low": Severity.LOW,
    "low-medium": Severity.MEDIUM,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
}


def overdue_raises(due: datetime | None, last: LastObservation | None, now: datetime,
                   grace: timedelta = OVERDUE_GRACE, *, open_clinical: bool = False) -> bool:
    """Whether ``overdue_finding`` raises: past ``due`` and the grace, and joining an incident (H-TASK-02)."""
    return (due is not None and now > due + grace
            and overdue_joins_incident(last.risk if last is not None else None, open_clinical))


def overdue_can_change(due: datetime | None, last: LastObservation | None, now: datetime,
                       grace: timedelta = OVERDUE_GRACE, *, open_clinical: bool = False,
                       open_kinds: Container[AlertKind] | None = None) -> bool:
    """Whether ``overdue_finding`` can open, update or resolve anything: it raises, or an obs_overdue alert is open
    (``text_wanted``). Otherwise it is a brief clear or hold (H-ALERT-13), which an evaluation need not build."""
    return (text_wanted(AlertKind.OBS_OVERDUE, open_kinds)
            or overdue_raises(due, last, now, grace, open_clinical=open_clinical))


def overdue_finding(resident: ResidentFacts, due: datetime | None, last: LastObservation | None,
                    now: datetime, grace: timedelta = OVERDUE_GRACE, *, open_clinical: bool = False,
                    open_kinds: Container[AlertKind] | None = None) -> Finding:
    """obs_overdue: raised once ``now`` passes ``due + grace`` when it joins an incident (the last set was
    low-medium or worse, or the resident has an open clinical incident: ``open_clinical``); otherwise overdue
    observations are a task on the home's list, not an alert (H-TASK-01/02). Cleared when the next set moves
    ``due`` on. ``open_kinds``: ``rules.text_wanted``."""
    kind = AlertKind.OBS_OVERDUE
    rid, site = resident.resident_id, resident.site_id
    brief = not text_wanted(kind, open_kinds)
    if due is None:
        return hold(kind, rid, site, resident_id=rid, brief=brief)
    joins = overdue_raises(due, last, now, grace, open_clinical=open_clinical)
    if brief and not joins:
        return clear_alert(kind, rid, site, "", resident_id=rid, brief=True)
    if now <= due + grace:
        return clear_alert(kind, rid, site, f"Next observations due {local_time(due)}.", resident_id=rid)
    if not joins:
        return clear_alert(kind, rid, site, f"Observations due by {local_time(due)} are on the home's task list.",
                           resident_id=rid)
    if last is None:
        reason = f"No observations have been recorded yet; the first set was due by {local_time(due)}."
        severity = Severity.LOW
    else:
        reason = (f"Observations were due by {local_time(due)}. Last set {local_time(last.taken_at)}: NEWS2 "
                  f"{last.score} ({last.risk})" + ("" if last.complete else ", incomplete") + ".")
        if not last.complete and last.missing:
            reason += " Missing from it: " + ", ".join(last.missing) + "."
        severity = OVERDUE_SEVERITY.get(last.risk, Severity.LOW)
    action = "Take a full set of observations now (breathing rate, SpO2, blood pressure, pulse, alertness, " \
             "temperature) and record them."
    data = {
        "due": due.isoformat(),
        "last_taken_at": last.taken_at.isoformat() if last else None,
        "last_risk": last.risk if last else None,
        "sbard": sbard(f"{resident.display_name}: observations overdue since {local_time(due)}.",
                       resident.background(now), [reason], action),
    }
    return raise_alert(kind, rid, site, severity, reason, action, resident_id=rid, data=data)
