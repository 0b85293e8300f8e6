"""Care-package review ("rightsizing"): the benefit calculator and the CSV export of a household's evidence.

Pure functions over a ``BehaviourReport`` (``carewatch.api.household_report``). The benefit is plain
arithmetic a council reviewer can check by hand: hours of paid care per week that the evidence suggests are no
longer needed, times the hourly rate, for this person and for everyone in the caseload on the same package.
The reviewer chooses the hours; Carewatch never decides that a package should change.
"""

from __future__ import annotations

import csv
import io

from pydantic import BaseModel, Field

from carewatch.api.household_report import BehaviourReport

WEEKS_PER_YEAR = 52


class Benefit(BaseModel):
    """Money and hours released if the reviewer's change is made, per person and across the caseload."""

    hours_released_per_week: float
    hourly_rate_gbp: float
    weekly_per_person_gbp: float
    annual_per_person_gbp: float = Field(description=f"{WEEKS_PER_YEAR} weeks.")
    caseload: int = Field(description="People the calculation is repeated for (this person included).")
    caseload_basis: str = Field(description="Where the caseload number came from.")
    weekly_caseload_gbp: float
    annual_caseload_gbp: float
    hours_released_caseload_per_week: float
    sentence: str


class RightsizingReport(BaseModel):
    report: BehaviourReport
    benefit: Benefit | None = Field(description="null when no hourly rate is known or given.")
    note: str | None = Field(default=None, description="Why there is no benefit figure, when there is none.")


def _money(value: float) -> str:
    return f"£{value:,.2f}" if value != int(value) else f"£{value:,.0f}"


def _hours(value: float) -> str:
    return f"{value:g} hour{'' if value == 1 else 's'}"


def benefit(hours_released: float, hourly_rate: float, caseload: int, caseload_basis: str) -> Benefit:
    """Hours per week released × hourly rate, per person and for ``caseload`` people (at least this one)."""
    if hours_released < 0 or hourly_rate < 0:
        raise ValueError("hours released and hourly rate cannot be negative")
    caseload = max(caseload, 1)
    weekly = round(hours_released * hourly_rate, 2)
    annual = round(weekly * WEEKS_PER_YEAR, 2)
    weekly_all = round(weekly * caseload, 2)
    annual_all = round(annual * caseload, 2)
    sentence = (f"Releasing {_hours(hours_released)} a week at {_money(hourly_rate)} an hour frees "
                f"{_money(weekly)} a week ({_money(annual)} a year) for this person")
    if caseload > 1:
        sentence += (f"; for {caseload} people ({caseload_basis}) that is {_money(weekly_all)} a week "
                     f"({_money(annual_all)} a year) and {_hours(round(hours_released * caseload, 1))} of care "
                     "a week")
    return Benefit(hours_released_per_week=hours_released, hourly_rate_gbp=hourly_rate,
                   weekly_per_person_gbp=weekly, annual_per_person_gbp=annual, caseload=caseload,
                   caseload_basis=caseload_basis, weekly_caseload_gbp=weekly_all, annual_caseload_gbp=annual_all,
                   hours_released_caseload_per_week=round(hours_released * caseload, 1), sentence=sentence + ".")


CSV_COLUMNS = ("date", "night_activity", "night_bathroom_visits", "night_other_activity", "kitchen_events",
               "kitchen_sessions", "minutes_out", *(f"events_{h:02d}h" for h in range(24)))


def evidence_csv(report: BehaviourReport) -> str:
    """One row per local date: the night that ended that morning, the day's kitchen use and time out, and the
    activity heatmap row (events starting in each hour). Times are UK local time."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    days = {d.day: d for d in report.daily}
    heat = dict(zip(report.heatmap.days, report.heatmap.counts, strict=True))
    for night in report.nights:
        day = days.get(night.night)
        writer.writerow([night.night.isoformat(), night.activity, night.bathroom_visits, night.other_activity,
                         day.kitchen_events if day else "", day.kitchen_sessions if day else "",
                         day.minutes_out if day else "", *heat.get(night.night, [""] * 24)])
    return out.getvalue()
