"""Households: behaviour summaries and care-package review data, from home sensors."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from psycopg.rows import dict_row

from carewatch.api.deps import ReportContext, ReportRoute
from carewatch.api.household_report import BehaviourReport, Event, HourlyTemperature, behaviour_report
from carewatch.api.scope import Permission
from carewatch.scoring.behaviour import last_complete_night
from carewatch.scoring.rules import LOCAL_TZ
from carewatch.wire import UNTRUSTED_FLAGS, Metric

router = APIRouter(tags=["households"], route_class=ReportRoute)  # its reports: see ReportRoute


@router.get("/households/{site_id}/behaviour", response_model=BehaviourReport,
            summary="Behaviour summary and care-package review data (nights, bathroom, kitchen, time out, rooms)")
def household_behaviour(ctx: ReportContext, site_id: str,
                        days: Annotated[int, Query(ge=1, le=90, description="Nights/days to cover.")] = 28,
                        ) -> BehaviourReport:
    ctx.require(Permission.READ_BEHAVIOUR)
    site = ctx.household(site_id, days=days)
    now = datetime.now(UTC)
    last_day = last_complete_night(now)
    first_day = last_day - timedelta(days=days - 1)
    start = datetime.combine(first_day, time(0), tzinfo=LOCAL_TZ)
    end = datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=LOCAL_TZ)
    values = {"site": site_id, "start": start, "end": min(end, now), "tz": "Europe/London",
              "untrusted": [f.value for f in UNTRUSTED_FLAGS], "metric": Metric.ROOM_TEMPERATURE.value}
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        events = cur.execute(
            """SELECT kind, started_at, ended_at, detail FROM behaviour_events
               WHERE site_id = %(site)s AND started_at >= %(start)s - interval '1 day' AND started_at < %(end)s
               ORDER BY started_at""", values).fetchall()
        heard = cur.execute(
            """SELECT DISTINCT (measured_at AT TIME ZONE %(tz)s)::date AS night FROM readings
               WHERE site_id = %(site)s AND measured_at >= %(start)s AND measured_at < %(end)s
                 AND extract(hour FROM measured_at AT TIME ZONE %(tz)s) < 6""", values).fetchall()
        temps = cur.execute(
            """SELECT coalesce(d.room, d.role, r.device_id) AS room, date_trunc('hour', r.measured_at) AS hour,
                      avg(r.value) AS mean, min(r.value) AS low, max(r.value) AS high
               FROM readings r LEFT JOIN devices d ON d.device_id = r.device_id
               WHERE r.site_id = %(site)s AND r.metric = %(metric)s AND r.measured_at >= %(start)s
                 AND r.measured_at < %(end)s AND NOT (r.flags && %(untrusted)s::text[])
               GROUP BY 1, 2""", values).fetchall()
    return behaviour_report(
        site,
        [Event(e["kind"], e["started_at"], e["ended_at"], e["detail"] or {}) for e in events],
        {h["night"] for h in heard},
        [HourlyTemperature(t["room"], t["hour"], t["mean"], t["low"], t["high"]) for t in temps],
        last_day=last_day, days=days, now=now,
    )
