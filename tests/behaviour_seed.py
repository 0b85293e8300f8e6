"""Seeding behaviour data for the household report tests (API behaviour endpoint and right-sizing reports)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING

import psycopg
from psycopg.types.json import Jsonb

from carewatch.scoring.behaviour import last_complete_night
from carewatch.scoring.rules import LOCAL_TZ

if TYPE_CHECKING:
    from conftest import World


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=LOCAL_TZ)


def seed_quiet_nights(db: psycopg.Connection, world: World, first_seq: int, nights: int = 28) -> list[date]:
    """Household A's last `nights` complete nights, newest first: each with one bathroom visit at 02:30 and the motion
    reading behind it (readings numbered from `first_seq` on gateway A). Committed."""
    last = last_complete_night(datetime.now(UTC))
    days = [last - timedelta(days=i) for i in range(nights)]
    with db.cursor() as cur:
        for i, night in enumerate(days):
            at = local(night, 2, 30)
            cur.execute("""INSERT INTO behaviour_events (site_id, kind, started_at, ended_at, detail)
                           VALUES (%s, 'bathroom_visit', %s, %s, %s)""",
                        (world.household_a, at, at + timedelta(minutes=6), Jsonb({"role": "bathroom"})))
            cur.execute("""INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_kind, subject_id,
                                                 device_id, metric, value, received_at)
                           VALUES (%s, %s, %s, %s, 'household', %s, 'motion-1', 'motion', 1, %s)""",
                        (at, world.gateway_a, first_seq + i, world.household_a, world.household_a, at))
    db.commit()
    return days
