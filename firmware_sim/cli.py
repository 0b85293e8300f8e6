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
from carewatch.firmware_sim.scenarios import Scenario, ScenarioError, load_scenarios
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.world import World, build_world, site_specs
from carewatch.settings import Settings

MODES = ("realtime", "accelerated", "backfill")
OUTPUTS = ("ble", "mqtt", "jsonl")
#: Residents per care home unless ``--per-home`` says otherwise (the demo's homes, and one device kit each).
PER_HOME = 12


def make_world(*, seed: int, residents: int, households: int, scenarios: list[Scenario], start: datetime,
               per_home: int = PER_HOME, site_ids: list[str] | None = None,
               household_prefix: str = "hh") -> World:
    """``residents`` in all, spread over care homes of ``per_home``, plus ``households`` homes with sensors."""
    return build_world(seed=seed, sites=site_specs(residents, per_home, site_ids=site_ids), households=households,
                       scenarios=scenarios, start=start, household_prefix=household_prefix)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def parse_start(text: str) -> datetime:
    """``--start``: an ISO 8601 date or date-time, UTC unless it carries an offset."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start {text!r} is not an ISO date-time (e.g. 2025-01-06T08:00:00+00:00)") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def run_sim(settings: Settings, *, residents: int, households: int, scenarios: list[str | Path], mode: str,
            accelerate: float, days: float, seed: int, output: str, ground_truth: Path | None,
            per_home: int = PER_HOME, start: datetime | str | None = None, out: Path | None = None,
            kits: bool = True) -> int:
    """``carewatch sim``. Same seed and ``start``, same world, same ground truth and same ``--output jsonl`` bytes.

    Without ``start`` the simulation starts now (backfill: ``days`` before now); backfill covers
    [start, start + days), the other modes run for ``days`` of simulated time."""
    if mode not in MODES:
        return _error(f"--mode must be one of {', '.join(MODES)}")
    if output not in OUTPUTS:
        return _error(f"--output must be one of {', '.join(OUTPUTS)}")
    if output == "jsonl" and out is None:
        return _error("--output jsonl needs --out FILE")
    try:
        if isinstance(start, str):
            start = parse_start(start)
        elif start is not None and start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        specs = [s for ref in scenarios for s in load_scenarios(ref)]
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        if start is None:
            start = now - timedelta(days=days) if mode == "backfill" else now
        world = make_world(seed=seed, residents=residents, per_home=per_home, households=households,
                           scenarios=specs, start=start)
    except (ScenarioError, ValueError) as exc:
        return _error(str(exc))
    end = start + timedelta(days=days)
    if ground_truth:
        world.write_ground_truth(ground_truth)
    if mode == "backfill":
        from carewatch.firmware_sim.backfill import backfill

        return backfill(settings, world, start=start, end=end)
    if output == "jsonl":
        from carewatch.firmware_sim.wire_output import write_jsonl

        assert out is not None
        print(json.dumps(write_jsonl(world, out, start=start, end=end)), flush=True)
        return 0
    speed = 1.0 if mode == "realtime" else accelerate
    if output == "mqtt":
        from carewatch.firmware_sim.wire_output import direct_gateway_id, publish_direct

        if settings.database_url:
            with psycopg.connect(settings.dsn, autocommit=True) as conn:
                seed_world(conn, world, world_devices(world))
                conn.cursor().executemany(
                    "INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    [(direct_gateway_id(s), s) for s in [x.id for x in world.sites] + [h.id for h in world.households]])
        summary = publish_direct(settings, world, start=start, end=end, accelerate=speed, stop=_stop_on_signals())
        print(json.dumps(summary), flush=True)
        return 0
    return _run_fleet(settings, world, accelerate=speed, days=days, kits=kits)


def _api_answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url.rstrip('/')}/healthz", timeout=3).status_code < 500
    except httpx.HTTPError:
        return False


def sim_carers(conn: psycopg.Connection, site_ids: list[str]) -> dict[str, tuple[str, str]]:
    """One simulated care-staff account per home (``simcarer-<home>``), with a fresh password for this run:
    site -> (username, password). The simulated carers sign in and drive the kit sessions as a tablet does."""
    import secrets

    from carewatch.api.users import create_user, get_user, set_password

    out = {}
    for site_id in site_ids:
        username, password = f"simcarer-{site_id}", f"sim {secrets.token_urlsafe(18)}"
        if get_user(conn, username) is None:
            create_user(conn, username, "care_staff", password=password, full_name="Simulated carer",
                        site_id=site_id)
        else:
            set_password(conn, username, password)
        out[site_id] = (username, password)
    conn.commit()
    return out


class SimTablets:
    """The simulated carers' tablets of homes on shared kits: rounds laid out by :class:`KitRounds` (mistakes
    included), performed through the API by :class:`TabletCarer` signed in as each home's simulated carer."""

    def __init__(self, world: World, api_url: str, carers: dict[str, tuple[str, str]], *, send_time: bool) -> None:
        import httpx

        from carewatch.firmware_sim.kit_round import KitRounds, TabletCarer

        self.api_url, self.carers = api_url.rstrip("/"), carers
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpx = httpx
        self.rounds = KitRounds(world, set(carers), seed=world.seed)
        self.carer = TabletCarer(self.api_url, self._token, forget_tokens=self._forget, send_time=send_time)

    def _token(self, site_id: str) -> str | None:
        if site_id not in self.carers:
            return None
        with self._lock:
            if site_id not in self._tokens:
                username, password = self.carers[site_id]
                reply = self._httpx.post(f"{self.api_url}/auth/token",
                                         data={"username": username, "password": password}, timeout=10)
                reply.raise_for_status()
                self._tokens[site_id] = reply.json()["access_token"]
            return self._tokens[site_id]

    def _forget(self) -> None:
        with self._lock:
            self._tokens.clear()

    def attribution(self, conn: psycopg.Connection, ranges: dict[str, tuple[int, int]]) -> dict[str, int]:
        """The kit readings this run published and the platform stored so far, against the ground truth:
        ``readings_attributed_wrong`` must be 0."""
        from carewatch.firmware_sim.kit_round import check_attribution

        kit_ids = [r[0] for r in conn.execute("SELECT kit_id FROM kits WHERE site_id = ANY(%s) AND NOT practice",
                                              (sorted(self.carers),)).fetchall()]
        stored = [row for gw, (lo, hi) in ranges.items() for row in conn.execute(
            """SELECT r.device_id, r.metric, r.measured_at, r.subject_id FROM readings r
               JOIN devices d ON d.device_id = r.device_id
               WHERE r.gateway_id = %s AND r.seq BETWEEN %s AND %s AND d.kit_id = ANY(%s)
                 AND r.metric <> 'battery'""", (gw, lo, hi, kit_ids)).fetchall()]
        check = check_attribution(stored, self.rounds.truth, set(kit_ids))
        return {"kit_readings": check.readings, "readings_attributed_wrong": check.attributed_wrong,
                "readings_unattributed": check.unattributed}

    def summary(self) -> dict[str, Any]:
        c = self.carer.counters
        return {"kit_homes": sorted(self.carers), "kit_sessions": c.sessions, "kit_saved": c.saved,
                "kit_claims": c.claimed, "kit_late_claims": c.claimed_late, "corrections": c.corrections,
                "kit_actions_failed": c.failed,
                "kit_mistakes": dict(self.rounds.mistakes)}


def plan_kit_homes(settings: Settings, world: World, site_ids: list[str] | None, *, kits: bool) -> list[str]:
    """The care homes that measure with a shared kit: by default every care home the fleet runs, when the
    simulated carers can reach the platform (a database for their accounts and an API answering); else none
    (each resident keeps their own devices, and the summary says why)."""
    homes = [s.id for s in world.sites if s.residents and (site_ids is None or s.id in site_ids)]
    if not kits or not homes or not settings.database_url or not _api_answers(settings.api_base_url):
        return []
    return homes


def _run_fleet(settings: Settings, world: World, *, accelerate: float, days: float,
               site_ids: list[str] | None = None, gateway_ids: dict[str, str] | None = None,
               kits: bool = True) -> int:
    kit_homes = plan_kit_homes(settings, world, site_ids, kits=kits)
    tablets = None
    if settings.database_url:
        with psycopg.connect(settings.dsn) as conn:
            seed_world(conn, world, world_devices(world, kit_homes))
            if kit_homes:
                tablets = SimTablets(world, settings.api_base_url, sim_carers(conn, kit_homes),
                                     send_time=accelerate != 1.0)
    if kits and not kit_homes:
        print(json.dumps({"shared_kits": "off: the simulated carers need the database and the API "
                                         f"({settings.api_base_url}) to drive kit sessions; residents keep their "
                                         "own devices"}), file=sys.stderr, flush=True)
    clock = SimClock(world.start, accelerate)
    # In real time, each care home's practice kit is played for trainees (practice mode, firmware_sim/practice.py).
    practice = settings.dsn if settings.database_url and accelerate == 1.0 else None
    fleet = SimFleet(world, settings, mqtt_url=settings.mqtt.url, clock=clock, site_ids=site_ids,
                     gateway_ids=gateway_ids, outbox_dir=settings.state_dir / "sim" / "gateways",
                     practice_dsn=practice, shared_sites=kit_homes)
    stop = _stop_on_signals()
    fleet.start(end=world.start + timedelta(days=days), on_action=tablets.carer if tablets else None,
                wrap_events=tablets.rounds.wrap if tablets else None)
    try:
        assert fleet.driver is not None
        while not stop.is_set() and not fleet.driver.finished.is_set():
            stop.wait(1.0)
        drained = fleet.drain(timeout=60)
        counters = fleet.driver.counters
        summary = _fleet_summary(fleet, counters, drained)
        if tablets is not None:
            summary.update(tablets.summary())
            with psycopg.connect(settings.dsn) as conn:
                summary.update(tablets.attribution(conn, fleet.published_ranges()))
        print(json.dumps(summary), flush=True)
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
    world = make_world(seed=zlib.crc32(settings.site_id.encode()) % 10_000, residents=PER_HOME, households=0,
                       scenarios=[], start=datetime.now(UTC), site_ids=[settings.site_id])
    _run_fleet(settings, world, accelerate=1.0, days=3650, site_ids=[settings.site_id],
               gateway_ids={settings.site_id: settings.gateway_id})
