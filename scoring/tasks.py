"""Observation tasks: who is due for observations, by when and why. Pure (the API reads resident_state).

Due and overdue observations are a *task list* per home and per shift, not alerts (H-TASK-01): a carer sees
"Mrs A, due 14:00, NEWS2 frequency (last 5, medium)". Overdue observations become part of an incident only when
the last set was low-medium or worse, or the resident already has an open clinical incident
(``incidents.overdue_joins_incident``, H-TASK-02).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal

from carewatch.scoring.clinical_response import ClinicalResponse, Risk
from carewatch.scoring.incidents import overdue_joins_incident
from carewatch.scoring.rules import LOCAL_TZ, local_time
from carewatch.scoring.schedule import OVERDUE_GRACE, next_obs_schedule

#: Care-home shifts (local time): the task list shows what falls due before the current shift ends.
SHIFTS: tuple[tuple[str, time], ...] = (("day", time(8)), ("night", time(20)))

Why = Literal["care_plan", "news2", "first_set", "incomplete"]
TaskStatus = Literal["overdue", "due", "upcoming"]
WHY_TEXT: dict[str, str] = {
    "care_plan": "care plan",
    "news2": "NEWS2 frequency",
    "first_set": "first observations since monitoring began",
    "incomplete": "last set was incomplete: complete it",
}


def due_reason(response: ClinicalResponse, score: int, complete: bool, obs_per_day: int, taken_at: datetime, *,
               at_usual: bool = False) -> Why:
    """Why the next set is due when it is: the NEWS2 band's frequency when it is shorter than the care plan."""
    return next_obs_and_reason(response, score, complete, obs_per_day, taken_at, at_usual=at_usual)[1]


def next_obs_and_reason(response: ClinicalResponse, score: int, complete: bool, obs_per_day: int,
                        taken_at: datetime, *, at_usual: bool = False) -> tuple[datetime, Why]:
    """``schedule.next_obs_due`` and ``due_reason`` together, from one look at the care plan (what the
    evaluation records in ``resident_state`` for every resident)."""
    due, banded = next_obs_schedule(taken_at, response, score, complete, obs_per_day, at_usual=at_usual)
    return due, "incomplete" if not complete else "news2" if banded else "care_plan"


def shift_bounds(now: datetime) -> tuple[str, datetime, datetime]:
    """(name, start, end) of the shift ``now`` falls in (08:00-20:00 day, 20:00-08:00 night, local)."""
    local = now.astimezone(LOCAL_TZ)
    day_start = datetime.combine(local.date(), SHIFTS[0][1], tzinfo=LOCAL_TZ)
    night_start = datetime.combine(local.date(), SHIFTS[1][1], tzinfo=LOCAL_TZ)
    if day_start <= local < night_start:
        return "day", day_start, night_start
    if local >= night_start:
        return "night", night_start, day_start + timedelta(days=1)
    return "night", night_start - timedelta(days=1), day_start


@dataclass(frozen=True)
class TaskInput:
    resident_id: str
    display_name: str
    site_id: str
    due_at: datetime | None
    why: str | None  # resident_state.next_obs_why (None: not recorded, e.g. before the scorer ran)
    last_at: datetime | None
    last_score: int | None
    last_risk: str | None
    last_complete: bool | None
    open_clinical_incident: bool = False


@dataclass(frozen=True)
class Task:
    resident_id: str
    display_name: str
    site_id: str
    due_at: datetime
    status: TaskStatus
    why: str
    why_text: str
    last_at: datetime | None
    last_score: int | None
    last_risk: str | None
    #: True: overdue and part of the resident's incident (escalates); False: a task only
    in_incident: bool

    @property
    def text(self) -> str:
        last = (f"last NEWS2 {self.last_score} ({self.last_risk}) at {local_time(self.last_at)}"
                if self.last_at is not None and self.last_score is not None else "no observations yet")
        return f"{self.display_name}: due {local_time(self.due_at)} ({self.why_text}; {last})"


def build_tasks(rows: Sequence[TaskInput], now: datetime, until: datetime | None = None) -> list[Task]:
    """Residents due for observations by ``until`` (default: the end of the current shift), overdue first, then
    by due time. ``due`` from the moment the set falls due; ``overdue`` after the 15-minute grace."""
    if until is None:
        until = shift_bounds(now)[2]
    tasks = []
    for row in rows:
        if row.due_at is None or row.due_at > until:
            continue
        if now > row.due_at + OVERDUE_GRACE:
            status: TaskStatus = "overdue"
        elif now >= row.due_at:
            status = "due"
        else:
            status = "upcoming"
        why = row.why or ("first_set" if row.last_at is None else
                          "incomplete" if row.last_complete is False else
                          "news2" if row.last_risk in (Risk.LOW_MEDIUM, Risk.MEDIUM, Risk.HIGH) else "care_plan")
        tasks.append(Task(row.resident_id, row.display_name, row.site_id, row.due_at, status, why,
                          WHY_TEXT.get(why, why), row.last_at, row.last_score, row.last_risk,
                          status == "overdue" and overdue_joins_incident(row.last_risk, row.open_clinical_incident)))
    order = {"overdue": 0, "due": 1, "upcoming": 2}
    return sorted(tasks, key=lambda t: (order[t.status], t.due_at, t.display_name))
