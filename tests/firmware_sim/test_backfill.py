"""The backfill's readings, row for row: what ``backfill_world`` stores through ingest's history load is the wire
reading a perfect gateway would have sent for each event (``wire_output.event_reading``, an independent path),
numbered per site under the site's backfill gateway, attributed to the device's resident or household."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from carewatch.firmware_sim.backfill import backfill_gateway_id, backfill_world
from carewatch.firmware_sim.cli import make_world
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import VitalSample
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.wire_output import event_reading


def test_backfill_stores_each_event_as_the_wire_reading_a_gateway_would_send(database: str, uid: str) -> None:
    start = datetime(2026, 10, 5, tzinfo=UTC)
    end = start + timedelta(days=2)
    world = make_world(seed=23, residents=6, households=2, scenarios=[], start=start, site_ids=[f"bw-{uid}"],
                       household_prefix=f"bwh-{uid}")
    devices = world_devices(world)
    subject = {d.device_id: ("resident", d.resident_id) if d.resident_id else ("household", d.site_id)
               for d in devices}
    seqs: Counter[str] = Counter()
    expected: list[tuple[Any, ...]] = []
    for event in world.events(start, end):
        if not isinstance(event, VitalSample | SensorEvent):
            continue
        site = event_reading(event, 1)[0]
        seqs[site] += 1
        reading = event_reading(event, seqs[site])[1]
        expected.append((backfill_gateway_id(site), reading.seq, site, *subject[reading.device_id],
                         reading.device_id, reading.metric.value, reading.value, reading.measured_at,
                         reading.received_at, sorted(f.value for f in reading.flags), None))
    with psycopg.connect(database, autocommit=True) as conn:
        seed_world(conn, world, devices)
        totals = backfill_world(conn, world, start=start, end=end, progress=False, chunk=700)
        stored = conn.execute(
            """SELECT gateway_id, seq, site_id, subject_kind, subject_id, device_id, metric, value, measured_at,
                      received_at, ARRAY(SELECT unnest(flags) ORDER BY 1), session_id
               FROM readings WHERE gateway_id = ANY(%s) ORDER BY gateway_id, seq""",
            ([backfill_gateway_id(s) for s in seqs],)).fetchall()
    # several history loads (chunk), both kinds of subject, and flagged readings among them: every path is taken
    assert totals["readings"] > 3 * 700 and totals["dead_letters"] == 0
    assert {row[3] for row in expected} == {"resident", "household"}
    assert any(row[10] for row in expected)
    assert [tuple(row) for row in stored] == sorted(expected, key=lambda row: (row[0], row[1]))
