"""Household behaviour summary and the data of a care-package ("rightsizing") report. Pure functions.

Input is what the scorer already derived (``behaviour_events``: bathroom_visit, kitchen_activity, fridge_open,
kettle_use, front_door with detail.direction, night_activity with detail.bathroom_trip; see
``carewatch.scoring.behaviour``), the local nights on which the household's sensors were heard at all, and hourly
room temperatures. Nights (00:00-06:00) and days are UK local time. A night is *none* (settled: no activity
other than at most one bathroom visit, the scorer's own care-review rule), *low* (at most two other activity
episodes and two bathroom visits) or *high*; a night with no sensor data is *no_data*, never "settled".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from carewatch.scoring.behaviour import KITCHEN_KINDS, SETTLED_MAX_BATHROOM_VISITS, night_of
from carewatch.scoring.rules import LOCAL_TZ

LOW_MAX_OTHER = 2
LOW_MAX_BATHROOM = 2
KITCHEN_SESSION_GAP = timedelta(minutes=30)  # kitchen events closer than this are one session (e.g. a meal)
ROOM_COLD_BELOW = 18.0
ROOM_HOT_ABOVE = 26.0

NightActivity = Literal["none", "low", "high", "no_data"]


@dataclass(frozen=True)
class Event:
    kind: str
    started_at: datetime
    ended_at: datetime | None
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class HourlyTemperature:
    room: str
    hour: datetime
    mean: float
    low: float
    high: float


class NightSummary(BaseModel):
    night: date
    activity: NightActivity
    bathroom_visits: int
    other_activity: int


class DaySummary(BaseModel):
    day: date
    kitchen_events: int
    kitchen_sessions: int = Field(description="Kitchen use grouped into sessions (a proxy for meals/drinks).")
    minutes_out: float = Field(description="Minutes out of the home (front door exit to return).")


class RoomTemperatureSummary(BaseModel):
    room: str
    min: float
    mean: float
    max: float
    hours_below_18: int
    hours_above_26: int


class Heatmap(BaseModel):
    days: list[date]
    hours: list[int]
    counts: list[list[int]] = Field(description="counts[day][hour]: activity events starting in that hour.")


class CarePackage(BaseModel):
    description: str | None
    hours_per_week: float | None
    hourly_rate_gbp: float | None
    weekly_cost_gbp: float | None


class BehaviourReport(BaseModel):
    site_id: str
    name: str
    start: date
    end: date
    days: int
    timezone: str = "Europe/London"
    nights: list[NightSummary]
    night_counts: dict[str, int]
    bathroom_visits_per_night: float | None
    max_bathroom_visits: int | None
    daily: list[DaySummary]
    mean_kitchen_sessions_per_day: float | None
    mean_minutes_out_per_day: float | None
    room_temperatures: list[RoomTemperatureSummary]
    heatmap: Heatmap
    care_package: CarePackage
    summary: str


def _local_day(at: datetime) -> date:
    return at.astimezone(LOCAL_TZ).date()


def classify_night(heard: bool, bathroom_visits: int, other: int) -> NightActivity:
    if not heard:
        return "no_data"
    if bathroom_visits <= SETTLED_MAX_BATHROOM_VISITS and other == 0:
        return "none"
    if bathroom_visits <= LOW_MAX_BATHROOM and other <= LOW_MAX_OTHER:
        return "low"
    return "high"


def kitchen_sessions(starts: Sequence[datetime]) -> int:
    sessions, last = 0, None
    for at in sorted(starts):
        if last is None or at - last > KITCHEN_SESSION_GAP:
            sessions += 1
        last = at
    return sessions


def minutes_out_by_day(doors: Sequence[Event], days: Sequence[date], now: datetime) -> dict[date, float]:
    """Minutes between each exit and the next return, split across local days (an open exit runs to now)."""
    out: dict[date, float] = dict.fromkeys(days, 0.0)
    ordered = sorted((e for e in doors if e.detail.get("direction") in ("exit", "return")),
                     key=lambda e: e.started_at)
    leaving: datetime | None = None
    spans: list[tuple[datetime, datetime]] = []
    for e in ordered:
        if e.detail["direction"] == "exit" and leaving is None:
            leaving = e.ended_at or e.started_at
        elif e.detail["direction"] == "return" and leaving is not None:
            spans.append((leaving, e.started_at))
            leaving = None
    if leaving is not None:
        spans.append((leaving, now))
    for start, end in spans:
        day = _local_day(start)
        while day <= _local_day(end):
            lo = max(start, datetime.combine(day, datetime.min.time(), tzinfo=LOCAL_TZ))
            hi = min(end, datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=LOCAL_TZ))
            if day in out and hi > lo:
                out[day] += (hi - lo).total_seconds() / 60
            day += timedelta(days=1)
    return out


def summarise_rooms(temps: Sequence[HourlyTemperature]) -> list[RoomTemperatureSummary]:
    by_room: dict[str, list[HourlyTemperature]] = defaultdict(list)
    for t in temps:
        by_room[t.room].append(t)
    return [
        RoomTemperatureSummary(
            room=room, min=round(min(t.low for t in rows), 1), max=round(max(t.high for t in rows), 1),
            mean=round(sum(t.mean for t in rows) / len(rows), 1),
            hours_below_18=sum(t.mean < ROOM_COLD_BELOW for t in rows),
            hours_above_26=sum(t.mean > ROOM_HOT_ABOVE for t in rows))
        for room, rows in sorted(by_room.items())
    ]


def summary_sentence(nights: Sequence[NightSummary]) -> str:
    heard = [n for n in nights if n.activity != "no_data"]
    total = len(nights)
    if not heard:
        return f"In the last {total} nights there was no sensor data between 00:00 and 06:00."
    settled = sum(n.activity == "none" for n in heard)
    visits_word = "one bathroom visit" if SETTLED_MAX_BATHROOM_VISITS == 1 else \
        f"{SETTLED_MAX_BATHROOM_VISITS} bathroom visits"
    sentence = (f"In the last {total} nights, {settled} had no activity between 00:00 and 06:00 other than at most "
                f"{visits_word}.")
    high = sum(n.activity == "high" for n in heard)
    if high:
        sentence += f" {high} {'night was' if high == 1 else 'nights were'} busy."
    missing = total - len(heard)
    if missing:
        sentence += f" {missing} {'night has' if missing == 1 else 'nights have'} no sensor data."
    return sentence


def behaviour_report(
    site: Mapping[str, Any],
    events: Sequence[Event],
    nights_heard: set[date],
    temperatures: Sequence[HourlyTemperature],
    *,
    last_day: date,
    days: int,
    now: datetime,
) -> BehaviourReport:
    """The report for the ``days`` local days/nights ending with ``last_day`` (oldest first)."""
    day_list = [last_day - timedelta(days=i) for i in range(days - 1, -1, -1)]
    index = {d: i for i, d in enumerate(day_list)}
    bathroom = [0] * days
    other = [0] * days
    kitchen_starts: dict[date, list[datetime]] = defaultdict(list)
    heat = [[0] * 24 for _ in day_list]
    for e in events:
        night = night_of(e.started_at)
        if night in index:
            if e.kind == "bathroom_visit":
                bathroom[index[night]] += 1
            elif e.kind == "night_activity" and not e.detail.get("bathroom_trip"):
                other[index[night]] += 1
        local = e.started_at.astimezone(LOCAL_TZ)
        if e.kind in KITCHEN_KINDS and local.date() in index:
            kitchen_starts[local.date()].append(e.started_at)
        if e.kind != "front_door" and local.date() in index:
            heat[index[local.date()]][local.hour] += 1
    nights = [NightSummary(night=d, activity=classify_night(d in nights_heard, bathroom[i], other[i]),
                           bathroom_visits=bathroom[i], other_activity=other[i]) for i, d in enumerate(day_list)]
    counts = {k: sum(n.activity == k for n in nights) for k in ("none", "low", "high", "no_data")}
    heard_visits = [n.bathroom_visits for n in nights if n.activity != "no_data"]
    out_minutes = minutes_out_by_day([e for e in events if e.kind == "front_door"], day_list, now)
    daily = [DaySummary(day=d, kitchen_events=len(kitchen_starts[d]), kitchen_sessions=kitchen_sessions(
        kitchen_starts[d]), minutes_out=round(out_minutes[d], 1)) for d in day_list]
    hours = site.get("package_hours_per_week")
    rate = site.get("hourly_rate_gbp")
    return BehaviourReport(
        site_id=site["site_id"], name=site["name"], start=day_list[0], end=last_day, days=days, nights=nights,
        night_counts=counts,
        bathroom_visits_per_night=round(sum(heard_visits) / len(heard_visits), 2) if heard_visits else None,
        max_bathroom_visits=max(heard_visits) if heard_visits else None,
        daily=daily,
        mean_kitchen_sessions_per_day=round(sum(d.kitchen_sessions for d in daily) / days, 2) if days else None,
        mean_minutes_out_per_day=round(sum(d.minutes_out for d in daily) / days, 1) if days else None,
        room_temperatures=summarise_rooms(temperatures),
        heatmap=Heatmap(days=day_list, hours=list(range(24)), counts=heat),
        care_package=CarePackage(
            description=site.get("care_package"),
            hours_per_week=float(hours) if hours is not None else None,
            hourly_rate_gbp=float(rate) if rate is not None else None,
            weekly_cost_gbp=round(float(hours) * float(rate), 2) if hours is not None and rate is not None else None),
        summary=summary_sentence(nights),
    )
