"""`carewatch sim`: backfill straight to the database through ingest's store, deterministic for a seed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from carewatch.firmware_sim.backfill import backfill_gateway_id, backfill_world
from carewatch.firmware_sim.cli import make_world, run_sim
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.seed import seed_world

from carewatch.settings import Settings


def test_backfill_stores_every_reading_once_and_the_rounds_staff_recorded(database: str, uid: str) -> None:
    start = datetime(2026, 10, 1, tzinfo=UTC)
    world = make_world(seed=11, homes=1, residents=4, households=1, scenarios=[], start=start,
                       site_ids=[f"bf-{uid}"])
    # household ids are per world: make them unique in the shared test database
    with psycopg.connect(database, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM sites WHERE site_id = %s", (world.households[0].id,)).fetchone():
            pytest.skip("household id already used by another test in this database")
        seed_world(conn, world, world_devices(world))
        first = backfill_world(conn, world, start=start, end=start + timedelta(days=2), progress=False)
        again = backfill_world(conn, world, start=start, end=start + timedelta(days=2), progress=False)
        gateways = [backfill_gateway_id(f"bf-{uid}"), backfill_gateway_id(world.households[0].id)]
        stored = conn.execute("SELECT count(*) FROM readings WHERE gateway_id = ANY(%s)", (gateways,)).fetchone()[0]
        sets = conn.execute("SELECT count(*), bool_and(recorded_by = 'backfill') FROM observation_sets "
                            "WHERE site_id = %s", (f"bf-{uid}",)).fetchone()
    assert first["readings"] > 100 and first["stored"] == first["readings"] and first["dead_letters"] == 0
    # a second backfill continues the backfill gateway's sequence: nothing is mistaken for a duplicate
    assert again["stored"] == again["readings"]
    assert stored == first["stored"] + again["stored"]
    assert sets[0] >= 4 * 2 and sets[1] is True  # at least one staff round a day per resident


def test_sim_refuses_unknown_modes_with_a_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = run_sim(Settings(state_dir=tmp_path), residents=1, homes=1, households=0, scenarios=[], mode="warp",
                   accelerate=1, days=1, seed=1, output="ble", ground_truth=None)
    assert code == 2 and "--mode must be one of" in capsys.readouterr().err


def test_ground_truth_is_written_as_json_lines(tmp_path: Path) -> None:
    from carewatch.firmware_sim.scenarios import load_scenarios

    world = make_world(seed=1, homes=2, residents=12, households=3, scenarios=load_scenarios("demo"),
                       start=datetime(2026, 11, 20, 21, tzinfo=UTC))
    path = world.write_ground_truth(tmp_path / "truth.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["expected_alert"] for r in rows} == {"news2", "night_bathroom"}
    assert all({"id", "target", "kind", "onset", "expected_alert"} <= set(r) for r in rows)
