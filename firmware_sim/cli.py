"""``carewatch sim`` and ``carewatch gateway --simulate``: the simulator's command-line shell."""

from __future__ import annotations

import json
import signal
import sys
import threading
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.driver import SimClock
from carewatch.firmware_sim.fleet import SimFleet
from carewatch.firmware_sim.scenarios import Scenario, load_scenarios
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.world import SiteSpec, World, build_world

from carewatch.settings import Settings

MODES = ("realtime", "accelerated", "backfill")
OUTPUTS = ("ble", "mqtt")


def make_world(*, seed: int, homes: int, residents: int, households: int, scenarios: list[Scenario],
               start: datetime, site_ids: list[str] | None = None) -> World:
    ids = site_ids or [f"home-{i + 1:02d}" for i in range(homes)]
    sites = [SiteSpec(id=site, residents=residents) for site in ids]
    return build_world(seed=seed, sites=sites, households=households, scenarios=scenarios, start=start)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_sim(settings: Settings, *, residents: int, homes: int, households: int, scenarios: list[Path],
            mode: str, accelerate: float, days: float, seed: int, output: str, ground_truth: Path | None) -> int:
    if mode not in MODES:
        print(f"error: --mode must be one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    if output not in OUTPUTS:
        print(f"error: --output must be one of {', '.join(OUTPUTS)}", file=sys.stderr)
        return 2
    specs = [s for path in scenarios for s in load_scenarios(path)]
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(days=days) if mode == "backfill" else now
    world = make_world(seed=seed, homes=homes, residents=residents, households=households, scenarios=specs,
                       start=start)
    if ground_truth:
        world.write_ground_truth(ground_truth)
    if mode == "backfill":
        from carewatch.firmware_sim.backfill import backfill

        return backfill(settings, world, start=start, end=now)
    if output == "mqtt":
        from carewatch.firmware_sim.wire_output import direct_gateway_id, publish_direct

        if settings.database_url:
            with psycopg.connect(settings.dsn, autocommit=True) as conn:
                seed_world(conn, world, world_devices(world))
                conn.cursor().executemany(
                    "INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    [(direct_gateway_id(s), s) for s in [x.id for x in world.sites] + [h.id for h in world.households]])

        return publish_direct(settings, world, start=start, days=days,
                              accelerate=1.0 if mode == "realtime" else accelerate, stop=_stop_on_signals())
    return _run_fleet(settings, world, accelerate=1.0 if mode == "realtime" else accelerate, days=days)


def _run_fleet(settings: Settings, world: World, *, accelerate: float, days: float,
               site_ids: list[str] | None = None, gateway_ids: dict[str, str] | None = None) -> int:
    if settings.database_url:
        with psycopg.connect(settings.dsn) as conn:
            seed_world(conn, world, world_devices(world))
    clock = SimClock(world.start, accelerate)
    fleet = SimFleet(world, settings, mqtt_url=settings.mqtt.url, clock=clock, site_ids=site_ids,
                     gateway_ids=gateway_ids, outbox_dir=settings.state_dir / "sim" / "gateways")
    stop = _stop_on_signals()
    fleet.start(end=world.start + timedelta(days=days))
    try:
        assert fleet.driver is not None
        while not stop.is_set() and not fleet.driver.finished.is_set():
            stop.wait(1.0)
        drained = fleet.drain(timeout=60)
        counters = fleet.driver.counters
        print(json.dumps(_fleet_summary(fleet, counters, drained)), flush=True)
        return 0 if drained else 1
    finally:
        fleet.stop()


def _fleet_summary(fleet: SimFleet, counters: Any, drained: bool) -> dict[str, Any]:
    return {
        "events": counters.events,
        "notifications": counters.notifications,
        "sim_time": counters.sim_time.isoformat() if counters.sim_time else None,
        "published_seq_ranges": {gw: list(r) for gw, r in fleet.published_ranges().items()},
        "drained": drained,
    }


def run_simulated_gateway(settings: Settings) -> None:
    """``carewatch gateway --simulate``: one care home of simulated residents behind this gateway, in real time."""
    world = make_world(seed=zlib.crc32(settings.site_id.encode()) % 10_000, homes=1, residents=12, households=0,
                       scenarios=[], start=datetime.now(UTC), site_ids=[settings.site_id])
    _run_fleet(settings, world, accelerate=1.0, days=3650, site_ids=[settings.site_id],
               gateway_ids={settings.site_id: settings.gateway_id})
