"""How much each care home uses Carewatch: observations per resident per day, alert response times, and homes
whose use is dropping. Pure functions over rows the route has already loaded (and scope-checked).

* **Observations** count sets that staff recorded (``source`` manual or mixed); device rounds the scorer built on
  its own are counted apart, because they say nothing about whether staff use the tablet.
* **Acknowledge time** is opened -> acknowledged; **response time** is opened -> the first escalation or
  resolution by a person (automatic escalations and auto-resolutions by the scorer do not count).
* **Dropping**: staff observations per resident per day in the last ``RECENT_DAYS`` days are below
  ``DROP_RATIO`` of the rate in the days before (needs at least ``MIN_EARLIER_DAYS`` earlier days).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
from pydantic import BaseModel, Field

RECENT_DAYS = 7
MIN_EARLIER_DAYS = 7
DROP_RATIO = 0.75


@dataclass(frozen=True)
class DayCount:
    site_id: str
    day: date
    staff: int
    device: int


@dataclass(frozen=True)
class AlertTiming:
    site_id: str
    opened_at: datetime
    acknowledged_at: datetime | None
    responded_at: datetime | None
    resolved: bool


class AdoptionDay(BaseModel):
    site_id: str
    day: date
    staff_observations: int
    device_observations: int
    per_resident: float | None = Field(description="Staff observations per resident that day.")


class HomeAdoption(BaseModel):
    site_id: str
    name: str
    residents: int = Field(description="Residents monitored now (active).")
    staff_observations: int
    device_observations: int
    obs_per_resident_per_day: float | None
    recent_per_resident_per_day: float | None
    earlier_per_resident_per_day: float | None
    dropping: bool
    trend: str = Field(description="Plain words: rising, steady, dropping, or why it cannot be said.")
    alerts: int
    acknowledged: int
    median_minutes_to_acknowledge: float | None
    p90_minutes_to_acknowledge: float | None
    responded: int
    median_minutes_to_response: float | None
    open_not_acknowledged: int


class AdoptionReport(BaseModel):
    start: date
    end: date
    days: int
    recent_days: int
    homes: list[HomeAdoption]
    daily: list[AdoptionDay]
    dropping: list[str] = Field(description="site_id of every home whose use is dropping.")
    summary: str


def _rate(total: int, residents: int, days: int) -> float | None:
    return round(total / residents / days, 2) if residents and days else None


def _minutes(spans: Sequence[timedelta], q: float) -> float | None:
    if not spans:
        return None
    return round(float(np.percentile([s.total_seconds() / 60 for s in spans], q)), 1)


def _trend(recent: float | None, earlier: float | None, earlier_days: int) -> tuple[bool, str]:
    if earlier_days < MIN_EARLIER_DAYS:
        return False, f"period too short to compare (choose at least {RECENT_DAYS + MIN_EARLIER_DAYS} days)"
    if recent is None or earlier is None:
        return False, "no residents monitored"
    if earlier == 0:
        return False, "rising" if recent > 0 else "no staff observations recorded"
    ratio = recent / earlier
    if ratio < DROP_RATIO:
        return True, f"dropping: {recent:g} a day per resident in the last {RECENT_DAYS} days, {earlier:g} before"
    return False, "rising" if ratio > 1 / DROP_RATIO else "steady"


def adoption_report(homes: Mapping[str, tuple[str, int]], counts: Sequence[DayCount], alerts: Sequence[AlertTiming],
                    *, start: date, end: date) -> AdoptionReport:
    """``homes``: site_id -> (name, active residents); ``counts``: observation sets per site and local day in
    [start, end]; ``alerts``: alerts opened in the period."""
    days = (end - start).days + 1
    recent_start = end - timedelta(days=RECENT_DAYS - 1)
    earlier_days = max(days - RECENT_DAYS, 0)
    by_site: dict[str, dict[date, DayCount]] = defaultdict(dict)
    for c in counts:
        if c.site_id in homes and start <= c.day <= end:
            by_site[c.site_id][c.day] = c
    alerts_by_site: dict[str, list[AlertTiming]] = defaultdict(list)
    for a in alerts:
        alerts_by_site[a.site_id].append(a)
    out: list[HomeAdoption] = []
    daily: list[AdoptionDay] = []
    for site_id, (name, residents) in sorted(homes.items(), key=lambda kv: kv[1][0]):
        rows = by_site[site_id]
        for i in range(days):
            day = start + timedelta(days=i)
            counted = rows.get(day)
            staff, device = (counted.staff, counted.device) if counted else (0, 0)
            daily.append(AdoptionDay(site_id=site_id, day=day, staff_observations=staff, device_observations=device,
                                     per_resident=_rate(staff, residents, 1)))
        staff_total = sum(c.staff for c in rows.values())
        recent_total = sum(c.staff for d, c in rows.items() if d >= recent_start)
        recent = _rate(recent_total, residents, min(RECENT_DAYS, days))
        earlier = _rate(staff_total - recent_total, residents, earlier_days) if earlier_days else None
        dropping, trend = _trend(recent, earlier, earlier_days)
        site_alerts = alerts_by_site[site_id]
        ack = [a.acknowledged_at - a.opened_at for a in site_alerts if a.acknowledged_at is not None]
        response = [a.responded_at - a.opened_at for a in site_alerts if a.responded_at is not None]
        out.append(HomeAdoption(
            site_id=site_id, name=name, residents=residents, staff_observations=staff_total,
            device_observations=sum(c.device for c in rows.values()),
            obs_per_resident_per_day=_rate(staff_total, residents, days), recent_per_resident_per_day=recent,
            earlier_per_resident_per_day=earlier, dropping=dropping, trend=trend, alerts=len(site_alerts),
            acknowledged=len(ack), median_minutes_to_acknowledge=_minutes(ack, 50),
            p90_minutes_to_acknowledge=_minutes(ack, 90), responded=len(response),
            median_minutes_to_response=_minutes(response, 50),
            open_not_acknowledged=sum(a.acknowledged_at is None and not a.resolved for a in site_alerts)))
    dropping_homes = [h for h in out if h.dropping]
    if not out:
        summary = "No care homes to report on."
    elif dropping_homes:
        names = "; ".join(f"{h.name} ({h.earlier_per_resident_per_day:g} -> {h.recent_per_resident_per_day:g} "
                          "observations a day per resident)" for h in dropping_homes)
        summary = (f"{len(dropping_homes)} of {len(out)} homes recorded fewer observations in the last "
                   f"{RECENT_DAYS} days than before: {names}.")
    else:
        summary = f"No home's use is dropping: {len(out)} homes compared over {days} days."
    return AdoptionReport(start=start, end=end, days=days, recent_days=RECENT_DAYS, homes=out, daily=daily,
                          dropping=[h.site_id for h in dropping_homes], summary=summary)
