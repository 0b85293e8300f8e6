"""Seeding: the platform's sites carry what the simulated world's records say (issue 13, finding 13)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from carewatch.firmware_sim.cli import make_world
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.seed import seed_world


def test_seeded_consent_comes_from_the_household_record(database: str, uid: str) -> None:
    """Vitals consent is the household's own, not granted to every household (the seed used to read a key the
    record never had, and so gave everyone consent)."""
    world = make_world(seed=4242, residents=2, per_home=2, households=4, scenarios=[],  # NHS numbers of its own
                       start=datetime(2025, 3, 1, tzinfo=UTC), site_ids=[f"sd-{uid}"], household_prefix=f"sdh-{uid}")
    records = {h["id"]: h for h in world.records()["households"]}
    assert {r["consent_vitals"] for r in records.values()} == {True, False}  # the estate has both kinds
    with psycopg.connect(database, autocommit=True) as conn:
        seed_world(conn, world, world_devices(world))
        stored = dict(conn.execute("SELECT site_id, consent_vitals FROM sites WHERE site_id = ANY(%s)",
                                   (list(records),)).fetchall())
    assert stored == {hid: r["consent_vitals"] for hid, r in records.items()}
