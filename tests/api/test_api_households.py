"""Household behaviour summaries: the pure report and the endpoint on real behaviour events."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

import psycopg
from behaviour_seed import local, seed_quiet_nights
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from carewatch.api.household_report import (
    Event,
    HourlyTemperature,
    behaviour_report,
    classify_night,
    kitchen_sessions,
    minutes_out_by_day,
)

if TYPE_CHECKING:
    from conftest import World


def test_classify_night() -> None:
    assert classify_night(False, 0, 0) == "no_data"
    assert classify_night(True, 0, 0) == "none"
    assert classify_night(True, 1, 0) == "none"
    assert classify_night(True, 2, 0) == "low"
    assert classify_night(True, 1, 2) == "low"
    assert classify_night(True, 3, 0) == "high"
    assert classify_night(True, 0, 3) == "high"


def test_kitchen_sessions_and_time_out() -> None:
    day = date(2024, 3, 5)
    starts = [local(day, 8, 0), local(day, 8, 10), local(day, 8, 35), local(day, 12, 30), local(day, 18, 0)]
    assert kitchen_sessions(starts) == 3
    doors = [Event("front_door", local(day, 10, 0), local(day, 10, 1), {"direction": "exit"}),
             Event("front_door", local(day, 11, 30), local(day, 11, 31), {"direction": "return"}),
             Event("front_door", local(day, 23, 0), local(day, 23, 1), {"direction": "exit"})]
    out = minutes_out_by_day(doors, [day, day + timedelta(days=1)], now=local(day + timedelta(days=1), 1, 0))
    assert out[day] == 89 + 59  # 10:01-11:30, then 23:01-midnight
    assert out[day + timedelta(days=1)] == 60  # still out at 01:00


def test_report_counts_and_sentence() -> None:
    last = date(2024, 3, 28)
    days = 7
    nights = [last - timedelta(days=i) for i in range(days)]
    events = [Event("bathroom_visit", local(n, 2), local(n, 2, 5), {}) for n in nights]
    busy = nights[0]
    events += [Event("night_activity", local(busy, h), local(busy, h, 20), {"bathroom_trip": False}) for h in (1, 3, 4)]
    events += [Event("night_activity", local(nights[1], 2), local(nights[1], 2, 6), {"bathroom_trip": True})]
    events += [Event("kettle_use", local(busy, 8), local(busy, 8, 3), {})]
    heard = set(nights) - {nights[6]}
    temps = [HourlyTemperature("lounge", local(busy, 14), 17.0, 16.5, 17.5),
             HourlyTemperature("lounge", local(busy, 15), 19.0, 18.0, 20.0)]
    site = {"site_id": "h1", "name": "Elm", "care_package": "waking nights", "package_hours_per_week": 70,
            "hourly_rate_gbp": 25.5}
    report = behaviour_report(site, events, heard, temps, last_day=last, days=days, now=local(last, 12))
    assert report.night_counts == {"none": 5, "low": 0, "high": 1, "no_data": 1}
    assert report.nights[-1].activity == "high" and report.nights[-1].other_activity == 3
    assert report.summary.startswith("In the last 7 nights, 5 had no activity between 00:00 and 06:00 other than "
                                     "at most one bathroom visit.")
    assert "1 night was busy" in report.summary and "1 night has no sensor data" in report.summary
    assert report.bathroom_visits_per_night == 1.0
    assert report.heatmap.counts[-1][2] == 1 and report.heatmap.counts[-1][1] == 1 and report.heatmap.counts[-1][8] == 1
    assert report.daily[-1].kitchen_sessions == 1
    (lounge,) = report.room_temperatures
    assert (lounge.min, lounge.max, lounge.hours_below_18) == (16.5, 20.0, 1)
    assert report.care_package.weekly_cost_gbp == 1785.0


def test_behaviour_endpoint(client: TestClient, world: World, db: psycopg.Connection) -> None:
    nights = seed_quiet_nights(db, world, first_seq=50_000)
    with db.cursor() as cur:
        for hour in (1, 3, 4):
            at = local(nights[0], hour)
            cur.execute("""INSERT INTO behaviour_events (site_id, kind, started_at, ended_at, detail)
                           VALUES (%s, 'night_activity', %s, %s, %s)""",
                        (world.household_a, at, at + timedelta(minutes=10), Jsonb({"bathroom_trip": False})))
    db.commit()
    response = client.get(f"/households/{world.household_a}/behaviour", params={"days": 28},
                          headers=world.headers(client, "council"))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["night_counts"] == {"none": 27, "low": 0, "high": 1, "no_data": 0}
    assert report["summary"].startswith("In the last 28 nights, 27 had no activity between 00:00 and 06:00")
    assert len(report["heatmap"]["counts"]) == 28 and len(report["heatmap"]["counts"][0]) == 24
    assert report["care_package"]["hours_per_week"] == 70
    assert client.get(f"/households/{world.home_a}/behaviour",
                      headers=world.headers(client, "admin")).status_code == 404  # a care home is not a household
    assert client.get(f"/households/{world.household_a}/behaviour", params={"days": 400},
                      headers=world.headers(client, "council")).status_code == 422
