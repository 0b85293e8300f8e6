"""The backfill's readings, row for row: what ``backfill_world`` stores through ingest's history load is the wire
reading a perfect gateway would have sent for each event (``wire_output.event_reading``, an independent path),
numbered per site under the site's backfill gateway, attributed to the device's resident or household."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databases import fresh_database

from carewatch.firmware_sim.backfill import BackfillWorkerError, backfill_gateway_id, backfill_world
from carewatch.firmware_sim.cli import make_world
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.kit_round import write_history_sessions
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


# ------------------------------------------------------------------------------------------------------------
# The parallel path (events generated in a worker process) against the serial one
# ------------------------------------------------------------------------------------------------------------
def table_contents(dsn: str, simulated_end: datetime) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table, sorted; times after the simulated period are when a row was written (the wall
    clock of the run), not what it says, so they read as ``"wall clock"``."""

    def cell(value: Any) -> str:
        return "wall clock" if isinstance(value, datetime) and value > simulated_end else repr(value)

    with psycopg.connect(dsn) as conn:
        tables = [t for (t,) in conn.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
        return {t: sorted(tuple(map(cell, row)) for row in conn.execute(f'SELECT * FROM "{t}"')) for t in tables}


SHARED = ("bp-kit",)  # a home measured with shared kits: readings attributed through kit sessions


def backfilled(pg_server: str, *, parallel: bool, chunk: int
               ) -> tuple[dict[str, int], tuple[int, ...], dict[str, list[Any]]]:
    """A fresh database, seeded with a world that has a shared-kit home and households, backfilled two days:
    the totals, what kinds of reading were stored, and every table."""
    start = datetime(2026, 10, 5, tzinfo=UTC)
    end = start + timedelta(days=2)
    world = make_world(seed=23, residents=8, per_home=4, households=2, scenarios=[], start=start,
                       site_ids=["bp-a", "bp-kit"], household_prefix="bph")
    with fresh_database(pg_server, "carewatch_backfill") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed_world(conn, world, world_devices(world, SHARED))
            write_history_sessions(conn, world, SHARED, start=start, end=end)
            totals = backfill_world(conn, world, start=start, end=end, progress=False, chunk=chunk,
                                    shared_kits=SHARED, parallel=parallel)
            kinds = conn.execute(
                """SELECT count(*) FILTER (WHERE subject_kind = 'household'),
                          count(*) FILTER (WHERE session_id IS NOT NULL), count(*) FILTER (WHERE flags <> '{}')
                   FROM readings""").fetchone()
        assert kinds is not None
        return totals, tuple(kinds), table_contents(dsn, end)


def test_the_parallel_backfill_stores_every_table_as_the_serial_one_does(pg_server: str) -> None:
    serial, kinds, serial_rows = backfilled(pg_server, parallel=False, chunk=900)
    parallel, _, parallel_rows = backfilled(pg_server, parallel=True, chunk=900)
    assert parallel == serial
    # several loads, staff rounds, and readings of households, of the shared kits (in sessions) and flagged ones
    assert serial["readings"] > 3 * 900 and serial["dead_letters"] == 0 and serial["observation_sets"] > 8
    assert all(kinds) and len(serial_rows["readings"]) == serial["stored"]
    assert serial_rows["kit_sessions"] and serial_rows["gateway_seq_runs"] and serial_rows["latest_readings"]
    assert parallel_rows.keys() == serial_rows.keys()
    for table, rows in serial_rows.items():
        assert parallel_rows[table] == rows, table


class WorldThatFails:
    """A world whose event stream breaks after its first day (it pickles: it is sent to the worker process)."""

    def __init__(self, world: Any) -> None:
        self.world = world
        self.sites, self.households = world.sites, world.households

    def events(self, start: datetime, end: datetime) -> Iterator[Any]:
        for event in self.world.events(start, end):
            if event.at >= start + timedelta(days=1):
                raise RuntimeError("the simulated world broke on its second day")
            yield event


def spawned_children() -> list[int]:
    """The pids of this process's living children started by multiprocessing's spawn (a worker left behind
    would be one; the resource tracker multiprocessing keeps for the whole run is not)."""
    children = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes()
        except OSError:  # (a process that ended while we looked)
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"spawn_main" in command:
            children.append(int(proc.name))
    return children


def test_a_failure_in_the_worker_is_raised_here_with_its_message_and_leaves_no_process(
        database: str, uid: str) -> None:
    start = datetime(2026, 10, 5, tzinfo=UTC)
    world = make_world(seed=71, residents=4, households=1, scenarios=[], start=start, site_ids=[f"bx-{uid}"],
                       household_prefix=f"bxh-{uid}")
    before = spawned_children()
    with psycopg.connect(database, autocommit=True) as conn:
        seed_world(conn, world, world_devices(world))
        with pytest.raises(BackfillWorkerError, match="the simulated world broke on its second day"):
            backfill_world(conn, WorldThatFails(world), start=start, end=start + timedelta(days=3), progress=False,
                           chunk=500, parallel=True)
        # the loads before the failure were committed; nothing of the broken day was
        last = conn.execute("SELECT max(measured_at) FROM readings WHERE site_id = %s", (f"bx-{uid}",)).fetchone()
    assert last is not None and last[0] is not None and last[0] < start + timedelta(days=1)
    assert spawned_children() == before


def test_a_failure_in_the_writer_ends_the_worker(database: str, uid: str) -> None:
    start = datetime(2026, 10, 5, tzinfo=UTC)
    world = make_world(seed=72, residents=4, households=1, scenarios=[], start=start, site_ids=[f"by-{uid}"],
                       household_prefix=f"byh-{uid}")
    before = spawned_children()
    with psycopg.connect(database, autocommit=True) as conn, psycopg.connect(database) as holder:
        seed_world(conn, world, world_devices(world))
        backfill_world(conn, world, start=start, end=start + timedelta(hours=1), progress=False,
                       parallel=True)  # its gateway row
        # another session holds the backfill gateway's row: the history load's lock gives up at once
        holder.execute("SELECT 1 FROM gateways WHERE gateway_id = %s FOR UPDATE", (backfill_gateway_id(f"by-{uid}"),))
        conn.execute("SET lock_timeout = '50ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            backfill_world(conn, world, start=start + timedelta(hours=1), end=start + timedelta(days=30),
                           progress=False, parallel=True)
    assert spawned_children() == before
