"""Alert evaluation (issue 6): a simulated month through the real store and scoring engine, against ground truth.

    .venv/bin/python bench/bench_evaluation.py [--residents 500 --households 50 --days 30 --history-days 14]
                                               [--seed 7 --start 2025-01-06 --step-minutes 15 --slow-step-minutes 60]
                                               [--report docs/evaluation.md] [--dsn postgresql://...]

1. **Population and scenarios.** ``build_world`` draws care-home residents (homes of ``--per-home``) and households.
   Scenarios are written as a scenario file (``ScenarioFile``, the same machinery and validation as
   ``firmware_sim/scenarios/*.yaml``) with a realistic number of each kind for the population (``INCIDENCE``:
   monthly incidence, with a floor so each kind can be measured), targets and onsets drawn from ``--seed``. Most
   people stay healthy. The world's ground truth (``World.ground_truth()``) is what the alerts are scored against.
2. **Data.** Every value-level event goes through ingest's ``store_batch`` (validation, binary COPY,
   de-duplication, latest values, device last-seen and battery) as ``gw-<site>`` would deliver it, with the
   simulated delivery time as ``received_at``; gateways send a status every step; a gateway outage holds its
   site's readings and delivers them at the end (and the broker's last will marks it offline). What staff type
   on rounds (respiration rate, ACVPU, soft signs) is stored as the API stores a tablet entry (``manual`` set).
   ``--history-days`` before the month give baselines; only the month is scored against ground truth.
3. **Scoring.** The real engine steps through simulated time: every ``--step-minutes`` it evaluates the residents
   with new data (``evaluate_subjects``, as the service does on NOTIFY) and runs the fast tick (escalations,
   overdue observations) and the gateway pass; every ``--slow-step-minutes`` the slow tick (every household,
   every device). The live service does the same every few seconds (fast) and 30 s (slow); the step sets the
   time-to-detect resolution.
4. **Matching** (also written into the report): see ``match()``.

Writes the report (markdown) to ``--report`` and prints it. Exits 0 whatever the figures are.
Not evaluated here: device faults acted out by the byte layer (garbage frames, disconnect storms, duplicate
notifications, clocks) and kit-device batteries (reported in gateway status messages, not as readings); the
value level cannot show them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import psycopg
from scratch import scratch_database

from carewatch.firmware_sim.devices import ID_PREFIX, world_devices
from carewatch.firmware_sim.fleet import gateway_id_for
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import Condition, ManualObservation, VitalSample
from carewatch.firmware_sim.scenarios import (
    KINDS,
    DeviceFault,
    GatewayOutage,
    ScenarioFile,
    ScenarioKind,
    parse_duration,
)
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.wire_output import event_reading
from carewatch.firmware_sim.world import SiteSpec, World, build_world
from carewatch.ingest.store import store_batch
from carewatch.ingest.validate import ReadingsMessage, StatusUpdate
from carewatch.scoring import households
from carewatch.scoring.engine import evaluate_subjects, tick
from carewatch.scoring.kinds import SEVERITY_RANK, AlertKind, Severity
from carewatch.scoring.news2 import score_observation
from carewatch.scoring.observation_sets import ObservationSetRow, record_observation_set
from carewatch.wire import DecodedBatch, GatewayStatus, Reading

SEED = 7
#: Monday 6 January 2025: winter, when cold homes and chest infections matter most (and the heating model is busiest).
DEFAULT_START = "2025-01-06"
REPORT = Path(__file__).resolve().parent.parent / "docs" / "evaluation.md"
TARGET_MINUTES = 10.0

#: Monthly incidence per eligible subject (and a floor so each kind has enough cases to measure), with why.
INCIDENCE: dict[str, tuple[float, int, str]] = {
    "infection": (0.04, 8, "care-home residents: infections 1-13 per 1000 resident-days (~3-40 % a month); 4 % "
                            "kept it a minority"),
    "copd_exacerbation": (0.10, 4, "residents with COPD: 1-2 exacerbations a year"),
    "uti": (0.02, 4, "people living alone: UTI ~10-25 % a year over 85"),
    "not_eating": (0.02, 4, "living alone: intake failing (illness, low mood) a few % a month"),
    "long_lie": (0.01, 4, "living alone: falls 30 %/year, long lies ~10 % of falls (floor dominates)"),
    "cold_home": (0.03, 4, "winter heating failure or rationing (fuel poverty)"),
    "hot_home": (0.01, 4, "heating stuck on full: rare in January (floor dominates)"),
    "improving_nights": (0.02, 4, "households with waking-night care whose nights settle"),
    "flat_battery": (0.04, 4, "household sensors: a battery runs flat unnoticed"),
    "outage_long": (0.01, 3, "sites: broadband down for hours"),
    "outage_short": (0.01, 3, "sites: a router reboot (must NOT alert)"),
}
#: Household sensors a flat battery is injected into (they report battery level as readings).
BATTERY_ROLES = ("bathroom", "kitchen_motion", "fridge_door", "front_door", "bedroom_motion", "living_climate")


# ------------------------------------------------------------------------------------------------------------
# Population and scenarios
# ------------------------------------------------------------------------------------------------------------
def site_specs(residents: int, per_home: int) -> list[SiteSpec]:
    sizes = [per_home] * (residents // per_home) + ([residents % per_home] if residents % per_home else [])
    return [SiteSpec(id=f"home-{i + 1:02d}", residents=n) for i, n in enumerate(sizes)]


def _count(kind: str, eligible: int) -> int:
    rate, floor, _ = INCIDENCE[kind]
    return min(eligible, max(floor, round(rate * eligible))) if eligible else 0


def scenario_doc(world: World, *, seed: int, history_days: int, days: int) -> dict[str, Any]:
    """A scenario file (as YAML would hold it) for ``world``'s population: kinds, targets and onsets drawn
    from ``seed``. Onsets fall inside the scored month, early enough for each expectation to fall due in it."""
    rng = np.random.default_rng([seed, 0xE7A1])
    first_day = history_days + 1  # 'day N' counts from the world start (day 1)
    scenarios: list[dict[str, Any]] = []

    def onset(kind_within: timedelta, *, hour: float | None = None) -> str:
        latest = days * 24.0 - kind_within.total_seconds() / 3600 - 2.0
        at_h = float(rng.uniform(2.0, max(3.0, latest)))
        day = first_day + int(at_h // 24)
        h = hour if hour is not None else at_h % 24
        minutes = int(h * 60)
        return f"day {day} {minutes // 60:02d}:{minutes % 60:02d}"

    def within(kind: ScenarioKind) -> timedelta:
        return max((parse_duration(w) for _, w in KINDS[kind].expect), default=timedelta(hours=6))

    residents = list(world.residents)
    order = rng.permutation(len(residents))
    copd = [residents[i] for i in order if Condition.COPD in residents[i].conditions]
    others = [residents[i] for i in order if Condition.COPD not in residents[i].conditions]
    for n, r in enumerate(copd[:_count("copd_exacerbation", len(copd))]):
        scenarios.append({"id": f"copd-{n + 1}", "kind": "copd_exacerbation", "target": {"resident": r.id},
                          "onset": onset(within(ScenarioKind.COPD_EXACERBATION))})
    for n, r in enumerate(others[:_count("infection", len(residents))]):
        doc: dict[str, Any] = {"id": f"infection-{n + 1}", "kind": "infection", "target": {"resident": r.id}}
        if n % 3 == 2:  # a third are the slower, lower-grade course (as month.yaml's infection-2)
            doc |= {"description": "slower infection, lower fever, new confusion late",
                    "progression": {"duration": "72h", "params": {
                        "temperature": {"to": 1.9, "over": "48h"},
                        "new_confusion": {"to": 0.9, "start": "40h", "over": "24h"}}},
                    "expect": [{"alert": "news2", "within": "72h"}]}
        doc["onset"] = onset(parse_duration(doc.get("expect", [{"within": "48h"}])[0]["within"]))
        scenarios.append(doc)

    households = list(world.households)
    h_order = [households[i] for i in rng.permutation(len(households))]
    alone = [h for h in h_order if h.people == 1]
    free = list(alone)

    def take(pool: list[Any], n: int) -> list[Any]:
        picked = pool[:n]
        del pool[:n]
        return picked

    review_within = parse_duration(KINDS[ScenarioKind.IMPROVING_NIGHTS].expect[0][1])
    for kind in ("uti", "not_eating", "long_lie", "improving_nights"):
        k = ScenarioKind(kind)
        if k is ScenarioKind.IMPROVING_NIGHTS and timedelta(days=days - 1) < review_within:
            continue  # its evidence takes 17 days to build: not in a shorter run
        for n, h in enumerate(take(free, _count(kind, len(alone)))):
            doc = {"id": f"{kind.replace('_', '-')}-{n + 1}", "kind": kind, "target": {"household": h.id}}
            if k is ScenarioKind.LONG_LIE:  # most falls with a long lie happen at night or early morning
                doc |= {"onset": onset(timedelta(hours=8), hour=float(rng.choice([1.5, 3.0, 5.5, 7.0, 14.0]))),
                        "progression": {"duration": f"{int(rng.integers(3, 8))}h"}}
            elif k is ScenarioKind.IMPROVING_NIGHTS:
                doc["onset"] = f"day {first_day} {int(rng.integers(10, 16)):02d}:00"
            else:
                doc["onset"] = onset(within(k))
            scenarios.append(doc)
    env_pool = [h for h in h_order if h.id not in {s["target"]["household"] for s in scenarios
                                                    if "household" in s["target"]}]
    for kind in ("cold_home", "hot_home"):
        for n, h in enumerate(take(env_pool, _count(kind, len(households)))):
            scenarios.append({"id": f"{kind.replace('_', '-')}-{n + 1}", "kind": kind, "target": {"household": h.id},
                              "onset": onset(within(ScenarioKind(kind)))})
    for n, h in enumerate(h_order[:_count("flat_battery", len(households))]):
        role = BATTERY_ROLES[n % len(BATTERY_ROLES)]
        hours = float(rng.uniform(20, 40))
        scenarios.append({"id": f"battery-{n + 1}", "kind": "device_fault",
                          "target": {"household": h.id, "device": role}, "onset": onset(timedelta(hours=hours + 12)),
                          "fault": {"kind": "flat_battery",
                                    "params": {"start_pct": float(rng.uniform(24, 32)), "hours_to_flat": hours},
                                    "replaced_after": f"{int(rng.integers(8, 30))}h"}})
    sites = [s.id for s in world.sites if s.residents] + [h.id for h in households]
    s_order = [sites[i] for i in rng.permutation(len(sites))]
    for kind, length in (("outage_long", "4h"), ("outage_short", "5m")):
        for n, site in enumerate(take(s_order, _count(kind, len(sites)))):
            target = {"household": site} if site.startswith("hh-") else {"site": site}
            scenarios.append({"id": f"{kind.replace('_', '-')}-{n + 1}", "kind": "gateway_outage", "target": target,
                              "onset": onset(timedelta(hours=5)), "progression": {"duration": length}})
    return {"name": "evaluation", "description": f"generated by bench_evaluation.py, seed {seed}",
            "scenarios": scenarios}


# ------------------------------------------------------------------------------------------------------------
# The feed: world events -> ingest's store, as gateways and the tablet would deliver them
# ------------------------------------------------------------------------------------------------------------
LAST_WILL_AFTER = timedelta(seconds=90)
HISTORY_STEP = timedelta(hours=1)  # the broker publishes a dead gateway's last will after ~1.5 keep-alives


@dataclass
class StepInput:
    """What one step delivered: subjects with new data, counts."""

    subjects: set[str] = field(default_factory=set)
    readings: int = 0
    staff_entries: int = 0


class Feed:
    """Consumes ``world.events`` in time order and stores everything up to a time, through ``store_batch``."""

    def __init__(self, conn: psycopg.Connection, world: World, start: datetime, end: datetime) -> None:
        self.conn = conn
        self.world = world
        self.events: Iterator[Any] = world.events(start, end)
        self.peeked: Any = None
        self.sites = [s.id for s in world.sites if s.residents] + [h.id for h in world.households]
        self.seq = {s: 0 for s in self.sites}
        self.scale2 = {r.id: r.scale2 for r in world.residents}
        self.outages: dict[str, GatewayOutage] = {}
        self.held: dict[str, list[Reading]] = defaultdict(list)
        self.totals = Counter[str]()

    def _next(self) -> Any:
        if self.peeked is None:
            self.peeked = next(self.events, None)
        return self.peeked

    def advance(self, until: datetime) -> StepInput:
        """Store every event before ``until``; heartbeats from every gateway that is up."""
        step = StepInput()
        pending: dict[str, list[Reading]] = defaultdict(list)
        manual: list[ManualObservation] = []
        statuses: list[StatusUpdate] = []
        while (event := self._next()) is not None and event.at < until:
            self.peeked = None
            for site, outage in list(self.outages.items()):  # outages that ended: deliver what was held
                if outage.end <= event.at:
                    self._end_outage(site, outage, pending, statuses)
            if isinstance(event, VitalSample | SensorEvent):
                site = event.site_id if isinstance(event, VitalSample) else event.household_id
                self.seq[site] += 1
                _, reading = event_reading(event, self.seq[site])
                (self.held[site] if site in self.outages else pending[site]).append(reading)
            elif isinstance(event, ManualObservation):
                manual.append(event)
            elif isinstance(event, GatewayOutage):
                self.outages[event.site_id] = event
                statuses.append(self._status(event.site_id, "offline", event.start, event.start + LAST_WILL_AFTER))
            elif isinstance(event, DeviceFault):
                self.totals["device_faults_seen"] += 1  # flat batteries are in the value level already
        for site, outage in list(self.outages.items()):
            if outage.end <= until:
                self._end_outage(site, outage, pending, statuses)
        heartbeat = until - timedelta(seconds=1)
        statuses += [self._status(s, "online", heartbeat, heartbeat) for s in self.sites if s not in self.outages]
        messages = []
        for site, readings in pending.items():
            gw = gateway_id_for(site)
            for i in range(0, len(readings), 1000):
                chunk = readings[i:i + 1000]
                last = max(r.received_at for r in chunk)
                messages.append(ReadingsMessage(DecodedBatch(site, gw, last, chunk, []), received_at=last))
        result = store_batch(self.conn, messages, statuses=statuses, notify=False)
        self.totals["readings"] += result.stored
        self.totals["dead_letters"] += result.dead_letters
        step.readings = result.stored
        step.subjects.update(result.subjects)
        for obs in manual:
            record_staff_entry(self.conn, obs, scale2=self.scale2[obs.resident_id])
            step.subjects.add(obs.resident_id)
        step.staff_entries = len(manual)
        self.totals["staff_entries"] += len(manual)
        return step

    def _end_outage(self, site: str, outage: GatewayOutage, pending: dict[str, list[Reading]],
                    statuses: list[StatusUpdate]) -> None:
        for reading in self.held.pop(site, []):  # the gateway's outbox drains when the link is back
            pending[site].append(reading.model_copy(update={"received_at": outage.end}))
        statuses.append(self._status(site, "online", outage.end, outage.end))
        del self.outages[site]

    @staticmethod
    def _status(site: str, state: str, at: datetime, received: datetime) -> StatusUpdate:
        status = GatewayStatus(site_id=site, gateway_id=gateway_id_for(site), state=state, at=at)  # type: ignore[arg-type]
        return StatusUpdate(status, status.model_dump_json(), received_at=received)


def record_staff_entry(conn: psycopg.Connection, obs: ManualObservation, *, scale2: bool) -> None:
    """What staff type on the tablet, stored as the API's observation entry stores it (source 'manual'; the
    engine then completes the set with the round's device readings)."""
    values = {"respiration_rate": obs.respiration_rate, "consciousness": obs.consciousness,
              "on_oxygen": obs.supplemental_oxygen, "spo2_scale": 2 if scale2 else 1}
    result = score_observation(values)
    typed = {"source": "manual", "by": "evaluation", "at": obs.at.isoformat()}
    inputs = {"respiration_rate": typed, "consciousness": typed, "on_oxygen": typed}
    record_observation_set(conn, ObservationSetRow(
        resident_id=obs.resident_id, site_id=obs.site_id, taken_at=obs.at, recorded_by="evaluation",
        source="manual", values={"respiration_rate": obs.respiration_rate}, result=result,
        spo2_scale=values["spo2_scale"], on_oxygen=obs.supplemental_oxygen, consciousness=obs.consciousness,
        soft_signs=obs.soft_signs, note=obs.note, inputs=inputs))


# ------------------------------------------------------------------------------------------------------------
# Running the month
# ------------------------------------------------------------------------------------------------------------
@dataclass
class RunStats:
    steps: int = 0
    slow_steps: int = 0
    store_s: float = 0.0
    score_s: float = 0.0
    slow_s: float = 0.0
    readings: int = 0


def run(conn: psycopg.Connection, world: World, *, history_start: datetime, eval_start: datetime, end: datetime,
        step: timedelta, slow_step: timedelta, progress: bool = True, label: str = "") -> RunStats:
    """History (residents scored as data arrives, to build observation sets and baselines; nothing else), then
    the month with every rule. Returns timings."""
    stats = RunStats()
    feed = Feed(conn, world, history_start, end)
    t = history_start
    slow_every = max(1, round(slow_step / step))
    wall0 = time.monotonic()
    while t < end:
        # history needs no fine steps: residents' rounds become observation sets either way
        t = min(t + (step if t >= eval_start else max(step, HISTORY_STEP)), end)
        t0 = time.monotonic()
        got = feed.advance(t)
        t1 = time.monotonic()
        residents = sorted(s for s in got.subjects if s.startswith("res-"))
        if residents:
            evaluate_subjects(conn, residents, t)
        if t > eval_start:
            stats.steps += 1
            slow = stats.steps % slow_every == 0
            ts = time.monotonic()
            tick(conn, t, slow=slow, gateways=True)
            if slow:
                stats.slow_steps += 1
                stats.slow_s += time.monotonic() - ts
        stats.store_s += t1 - t0
        stats.score_s += time.monotonic() - t1
        stats.readings += got.readings
        if progress:
            done = (t - history_start) / (end - history_start)
            phase = "month" if t > eval_start else "history"
            print(f"\r{label} {phase:7} {t:%Y-%m-%d %H:%M} {done:6.1%}  {stats.readings:,} readings  "
                  f"store {stats.store_s:5.0f}s  score {stats.score_s:5.0f}s  wall {time.monotonic() - wall0:5.0f}s",
                  end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return stats


# ------------------------------------------------------------------------------------------------------------
# Matching alerts to ground truth
# ------------------------------------------------------------------------------------------------------------
#: After a scenario is over, alerts on its subjects are still its consequences for this long (e.g. a NEWS2 alert
#: resolving at the next complete set, a device silent until the battery is changed and it reports again).
AFTERMATH = timedelta(hours=24)
#: Before onset: a scenario's subject may already be (invisibly) affected.
LEAD = timedelta(hours=1)


@dataclass
class Alert:
    alert_id: int
    subject: str
    kind: str
    severity: str
    opened_at: datetime
    raised: list[tuple[datetime, str]]  # (time, 'opened' | 'rose') events that (re)raised it


@dataclass
class Truth:
    row: dict[str, Any]
    subjects: frozenset[str]  # alert subjects this scenario is about (resident, household, devices, gateway)
    onset: datetime
    window_end: datetime  # expected_by
    over: datetime  # when its consequences may end

    @property
    def expected(self) -> str | None:
        return self.row["expected_alert"]


def truth_subjects(world: World, row: dict[str, Any]) -> frozenset[str]:
    """Which alert subjects a ground-truth row is about."""
    target, kind = row["target"], row["target_type"]
    if kind in ("resident", "household"):
        return frozenset({target})
    if kind == "device":
        site, device_kind, role = target.split("/")
        if site.startswith("hh-"):
            return frozenset({f"{site}-{role.replace('_', '-')}", site})
        prefix = ID_PREFIX[device_kind]  # a care-home kit: each resident using it has their own device id
        return frozenset(f"{prefix}-{r.id}" for r in world.residents_at(site) if r.kit == role)
    site = target  # a gateway outage: the gateway, the site, its devices and its people
    ids = {gateway_id_for(site), site}
    ids |= {d.device_id for d in world_devices(world) if d.site_id == site}
    ids |= {r.id for r in world.residents if r.site_id == site}
    return frozenset(ids)


def load_truth(world: World) -> list[Truth]:
    out = []
    for row in world.ground_truth():
        onset = datetime.fromisoformat(row["onset"])
        ends = [datetime.fromisoformat(row[k]) for k in ("expected_by", "progression_end", "resolved_at") if row[k]]
        out.append(Truth(row, truth_subjects(world, row), onset, datetime.fromisoformat(row["expected_by"]),
                         max(ends) + AFTERMATH))
    return out


def load_alerts(conn: psycopg.Connection, since: datetime) -> list[Alert]:
    """Alerts raised in the month, with the times they were opened or rose in severity."""
    alerts: dict[int, Alert] = {}
    for alert_id, subject, kind, severity, opened_at in conn.execute(
            "SELECT alert_id, subject_id, kind, severity, opened_at FROM alerts ORDER BY alert_id"):
        alerts[alert_id] = Alert(alert_id, subject, kind, severity, opened_at, [])
    for alert_id, at, action, detail in conn.execute(
            "SELECT alert_id, at, action, detail FROM alert_events WHERE action IN ('opened', 'updated') "
            "ORDER BY at, event_id"):
        if action == "opened":
            alerts[alert_id].raised.append((at, "opened"))
        elif SEVERITY_RANK[Severity(detail["to_severity"])] > SEVERITY_RANK[Severity(detail["from_severity"])]:
            alerts[alert_id].raised.append((at, "rose"))
    return [a for a in alerts.values() if any(t > since for t, _ in a.raised)]


@dataclass
class Outcome:
    detected: dict[str, datetime | None]  # truth id -> first matching raise (None: missed)
    classes: dict[int, str]  # alert id -> expected | related | false
    must_not_violations: list[str]


MATCHING_RULES = (
    "A ground-truth row is **detected** when an alert of its expected kind, on one of its subjects, was opened - "
    "or, already open, rose in severity - between onset and the row's `expected_by` (onset + the scenario's "
    "`within`). Time to detect runs from onset to that moment.",
    "An alert raised in the month is **expected** when it detected a row; **related** when it is any other alert on "
    "a scenario's subjects raised between 1 h before onset and 24 h after the scenario is over (a true alert about "
    "a real problem, e.g. `soft_signs` or `obs_overdue` during an infection, `household_silent` during an outage); "
    "otherwise **false**.",
    "A row with `must_not` (a short outage) is violated by a forbidden alert on its subjects between onset and "
    "`expected_by`.",
)


def match(truths: Sequence[Truth], alerts: Sequence[Alert], since: datetime) -> Outcome:
    """Match alerts to ground truth by ``MATCHING_RULES`` (also written into the report)."""
    by_subject: dict[str, list[Alert]] = defaultdict(list)
    for a in alerts:
        by_subject[a.subject].append(a)
    detected: dict[str, datetime | None] = {}
    classes: dict[int, str] = {}
    violations = []
    for t in truths:
        first: tuple[datetime, int] | None = None
        if t.expected:
            for subject in t.subjects:
                for a in by_subject.get(subject, ()):
                    if a.kind != t.expected:
                        continue
                    for at, _ in a.raised:
                        if t.onset <= at <= t.window_end and (first is None or at < first[0]):
                            first = (at, a.alert_id)
            detected[t.row["id"]] = first[0] if first else None
            if first:
                classes[first[1]] = "expected"
        for subject in t.subjects:
            for a in by_subject.get(subject, ()):
                if any(t.onset - LEAD <= at <= t.over for at, _ in a.raised):
                    classes.setdefault(a.alert_id, "related")
                    if a.kind in t.row["must_not"] and any(t.onset <= at <= t.window_end for at, _ in a.raised):
                        violations.append(f"{t.row['id']}: {a.kind} on {a.subject}")
    for a in alerts:
        classes.setdefault(a.alert_id, "false")
    return Outcome(detected, classes, violations)


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------
RESIDENT_KINDS = {k.value for k in (AlertKind.NEWS2, AlertKind.NEWS2_RISING, AlertKind.SPO2_BELOW_BASELINE,
                                    AlertKind.TEMPERATURE_ABOVE_BASELINE, AlertKind.SOFT_SIGNS,
                                    AlertKind.OBS_OVERDUE)}
HOUSEHOLD_KINDS = {k.value for k in (AlertKind.NIGHT_BATHROOM, AlertKind.KITCHEN_INACTIVITY,
                                     AlertKind.NO_MORNING_ACTIVITY, AlertKind.LONG_BATHROOM_STAY, AlertKind.ROOM_COLD,
                                     AlertKind.ROOM_HOT, AlertKind.CARE_REVIEW, AlertKind.HOUSEHOLD_SILENT)}


def _fmt_h(td: timedelta | None) -> str:
    if td is None:
        return "–"
    hours = td.total_seconds() / 3600
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"


def report(*, args: argparse.Namespace, world: World, truths: Sequence[Truth], alerts: Sequence[Alert],
           outcome: Outcome, stats: RunStats, totals: Counter[str], wall_s: float, where: str,
           eval_start: datetime, end: datetime, scenario_counts: Counter[str]) -> str:
    days = (end - eval_start).total_seconds() / 86400
    n_res, n_hh = len(world.residents), len(world.households)
    sites = len([s for s in world.sites if s.residents]) + n_hh
    lines = [
        "# Alert evaluation: a simulated month against ground truth",
        "",
        f"Generated by `bench/bench_evaluation.py` (seed {args.seed}) from commit `{code_version()}`; re-run it to "
        "refresh this page (the hand-written notes at the end are kept). "
        "The figures are from the simulator, not from people: they show whether the rules find the deteriorations "
        "the simulator plays out, and how noisy they are on a simulated population. They are not clinical "
        "validation.",
        "",
        "## Run",
        "",
        f"- Population: **{n_res} care-home residents** in {len(world.sites)} homes of up to {args.per_home} "
        f"(conditions drawn per resident: dementia ~70 %, hypertension ~55 %, AF ~20 %, COPD ~14 %; care plans of "
        f"1, 2 or 4 observation rounds a day) and **{n_hh} households** "
        f"({sum(h.people == 1 for h in world.households)} living alone) with home sensors.",
        f"- Time: {args.history_days} days of history (baselines), then **{days:.0f} scored days** from "
        f"{eval_start:%a %d %b %Y} (UK winter); seed {args.seed}.",
        f"- Data: {totals['readings']:,} readings stored through ingest's `store_batch` (gateway statuses every "
        f"step, outages buffered and delivered late), {totals['staff_entries']:,} tablet entries stored as the API "
        f"stores them; {totals['dead_letters']} dead letters.",
        f"- Scoring: the real engine (`carewatch.scoring.engine`) stepping through simulated time: every "
        f"{args.step_minutes} min the residents with new data (`evaluate_subjects`), escalations, overdue "
        f"observations and gateways (`tick`); every {args.slow_step_minutes} min every household and device "
        f"(`tick(slow=True)`). Time to detect is therefore resolved to about one step.",
        f"- Machine: {where}; wall time {wall_s / 60:.1f} min (store {stats.store_s:.0f} s, scoring "
        f"{stats.score_s:.0f} s, of which slow ticks {stats.slow_s:.0f} s).",
        "",
        "## Scenarios injected",
        "",
        "Written as a scenario file with the simulator's scenario machinery (`ScenarioFile`), targets and onsets "
        "drawn from the seed; everyone else stays well. Counts follow a monthly incidence with a floor so each "
        "kind can be measured:",
        "",
        "| kind | count | incidence used | why |",
        "|---|---:|---:|---|",
    ]
    for key, (rate, floor, why) in INCIDENCE.items():
        lines.append(f"| `{key}` | {scenario_counts.get(key, 0)} | {rate:.0%} a month (at least {floor}) | {why} |")
    lines += [
        "",
        "## Sensitivity and time to detect",
        "",
        "| scenario kind | expected alert | rows | detected | sensitivity | median time to detect | range |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[Truth]] = defaultdict(list)
    for t in truths:
        if t.expected:
            label = t.row["kind"]
            if label == "device_fault":
                label = f"device_fault ({t.row['detail'].get('fault')})"
            groups[(label, t.expected)].append(t)
    for (label, expected), rows in sorted(groups.items()):
        times = [outcome.detected[t.row["id"]] - t.onset for t in rows if outcome.detected[t.row["id"]]]
        hit = len(times)
        rng_text = f"{_fmt_h(min(times))} – {_fmt_h(max(times))}" if times else "–"
        lines.append(f"| {label} | `{expected}` | {len(rows)} | {hit} | {hit / len(rows):.0%} | "
                     f"{_fmt_h(median(times)) if times else '–'} | {rng_text} |")
    must_not = [t for t in truths if t.row["must_not"]]
    if must_not:
        lines.append("")
        lines.append(f"Short outages that must **not** raise `{must_not[0].row['must_not'][0]}`: {len(must_not)}, "
                     f"violations: {len(outcome.must_not_violations)}"
                     + (f" ({'; '.join(outcome.must_not_violations)})" if outcome.must_not_violations else "") + ".")
    missed = [t for t in truths if t.expected and outcome.detected.get(t.row["id"]) is None]
    if missed:
        lines += ["", "Missed rows: " + ", ".join(f"`{t.row['id']}` ({t.row['target']})" for t in missed) + "."]

    per_kind = Counter[tuple[str, str]]()
    for a in alerts:
        per_kind[(a.kind, outcome.classes[a.alert_id])] += 1
    lines += [
        "",
        "## Alerts raised in the month, and false alerts",
        "",
        "An alert counts once per opening (a re-opened alert counts again) and once more when it rises in severity "
        "after the month began only if it was opened before the month. Denominators: resident-days for residents' "
        f"clinical alerts ({n_res * days:,.0f}), household-days for home alerts ({n_hh * days:,.0f}), "
        f"site-days for gateways ({sites * days:,.0f}) and resident- plus household-days for devices "
        f"({(n_res + n_hh) * days:,.0f}).",
        "",
        "| alert kind | raised | expected | related | false | false per 100 subject-days |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    false_total = 0
    for kind in sorted({k for k, _ in per_kind}):
        exp, rel, fal = (per_kind[(kind, c)] for c in ("expected", "related", "false"))
        false_total += fal
        if kind in RESIDENT_KINDS:
            denom = n_res * days
        elif kind in HOUSEHOLD_KINDS:
            denom = n_hh * days
        elif kind == AlertKind.GATEWAY_OFFLINE.value:
            denom = sites * days
        else:
            denom = (n_res + n_hh) * days
        lines.append(f"| `{kind}` | {exp + rel + fal} | {exp} | {rel} | {fal} | {100 * fal / denom:.2f} |")
    lines += [
        "",
        f"All kinds: **{false_total} false alerts**, {false_total / ((n_res + n_hh) * days):.3f} per monitored "
        f"person-day (residents + households).",
        "",
        "## How matching is defined",
        "",
        *[f"- {rule}" for rule in MATCHING_RULES],
        "- Subjects of a scenario: the resident or household; for a household sensor's flat battery the device and "
        "its household; for a care-home kit the bedside devices of every resident using that kit; for a gateway "
        "outage the gateway, the site, its devices and residents.",
        f"- Scored alerts are those raised after {eval_start:%d %b %Y %H:%M} UTC (the end of the history).",
        "- \"False\" means *not explained by an injected scenario*. The simulated population is not perfectly well: "
        "some homes really are below 16 °C at night, some residents really score 1-4 above their usual, device "
        "artefacts really read low. Those alerts are correct by the rules and still count as false here.",
    ]
    return "\n".join(lines)


#: The report is generated above this line; what follows it (what the figures mean, what was changed because of
#: them) is written by people and kept as it is when the bench rewrites the report.
HANDWRITTEN_MARKER = ("<!-- Everything below this line is written by people; bench/bench_evaluation.py keeps it "
                      "when it rewrites the report above. -->")


def write_report(path: Path, generated: str) -> None:
    """Replace the generated part of ``path`` and keep the hand-written part after HANDWRITTEN_MARKER."""
    kept = ""
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if HANDWRITTEN_MARKER in old:
            kept = old.split(HANDWRITTEN_MARKER, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{generated}\n\n{HANDWRITTEN_MARKER}{kept or chr(10)}", encoding="utf-8")


def code_version() -> str:
    """The commit the figures come from (``git describe --always --dirty``), or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


# ------------------------------------------------------------------------------------------------------------
# Shards: care homes and households share nothing, so they run as two worlds in two processes (two cores)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Shard:
    """Part of the population (whole care homes, or households) with the scenarios that target it."""

    label: str
    site_ids: list[str]
    household_ids: list[str]
    scenarios: list[dict[str, Any]]


@dataclass
class ShardResult:
    label: str
    truths: list[Truth]
    alerts: list[Alert]
    stats: RunStats
    totals: Counter[str]
    where: str


def split(doc: dict[str, Any], world: World, parts: int) -> list[Shard]:
    """Care homes (whole sites) and households in ``parts`` groups each, every scenario with the group holding its
    target. Care homes and households share nothing, so each shard is the same people as the whole world."""
    home_ids = [s.id for s in world.sites if s.residents]
    hh_ids = [h.id for h in world.households]
    shards = [Shard(f"homes-{k + 1}", home_ids[k::parts], [], []) for k in range(parts)]
    size = -(-len(hh_ids) // parts) if hh_ids else 0
    shards += [Shard(f"households-{k + 1}", [], hh_ids[k * size:(k + 1) * size], []) for k in range(parts)]
    owner = {site: sh for sh in shards for site in (*sh.site_ids, *sh.household_ids)}
    site_of = {r.id: r.site_id for r in world.residents}
    for sc in doc["scenarios"]:
        t = sc["target"]
        place = site_of[t["resident"]] if "resident" in t else t.get("household", t.get("site"))
        owner[place].scenarios.append(sc)
    # households first: they take longest, so two processes finish together
    return sorted((sh for sh in shards if sh.site_ids or sh.household_ids), key=lambda sh: not sh.household_ids)


def shard_world(shard: Shard, args: argparse.Namespace, history_start: datetime,
                scenarios: Sequence[Any]) -> World:
    """The shard's part of the population (drawn exactly as in the whole world) with its scenarios."""
    whole = build_world(seed=args.seed, sites=site_specs(args.residents, args.per_home),
                        households=args.households, scenarios=[], start=history_start)
    sites = [s for s in whole.sites if s.id in shard.site_ids]
    return World(seed=args.seed, start=history_start, tz=whole.tz, sites=sites,
                 residents=[r for r in whole.residents if r.site_id in shard.site_ids],
                 households=[h for h in whole.households if h.id in shard.household_ids],
                 scenarios=scenarios, household_options=whole.household_options)


def run_shard(shard: Shard, args: argparse.Namespace) -> ShardResult:
    # One synchronous writer per database and nothing else writing: no ingest transaction can be in flight while
    # the scorer reads, so the incremental re-derivation needs no stored_at slack (its results are the same either
    # way: tests/scoring/test_engine.py::test_incremental_rederivation_matches_a_full_one_and_takes_late_readings).
    households.STORED_AT_SLACK = timedelta(0)
    history_start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    eval_start = history_start + timedelta(days=args.history_days)
    end = eval_start + timedelta(days=args.days)
    spec = ScenarioFile.model_validate({"name": f"evaluation-{shard.label}", "scenarios": shard.scenarios})
    world = shard_world(shard, args, history_start, spec.scenarios)
    with scratch_database(args.dsn, prefix=f"carewatch_eval_{shard.label}", keep=args.keep_db) as (dsn, where), \
            psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT carewatch_ensure_partitions(%s, %s)",
                     (history_start - timedelta(days=31), end + timedelta(days=31)))
        seed_world(conn, world, world_devices(world))
        # in service since the history began (not since the wall-clock moment the rows were inserted)
        conn.execute("UPDATE residents SET created_at = %s", (history_start,))
        conn.execute("UPDATE devices SET bound_at = %s", (history_start,))
        stats = run(conn, world, history_start=history_start, eval_start=eval_start, end=end,
                    step=timedelta(minutes=args.step_minutes), slow_step=timedelta(minutes=args.slow_step_minutes),
                    progress=not args.quiet, label=f"[{shard.label}]")
        alerts = load_alerts(conn, eval_start)
        totals = Counter({"readings": stats.readings})
        totals["staff_entries"] = conn.execute(
            "SELECT count(*) FROM observation_sets WHERE recorded_by = 'evaluation'").fetchone()[0]
        totals["dead_letters"] = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return ShardResult(shard.label, load_truth(world), alerts, stats, totals, where)


# ------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=500)
    parser.add_argument("--households", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--history-days", type=int, default=14)
    parser.add_argument("--per-home", type=int, default=50)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--start", default=DEFAULT_START, help="first history day (UTC date)")
    parser.add_argument("--step-minutes", type=int, default=15)
    parser.add_argument("--slow-step-minutes", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=2,
                        help="processes; the care homes and the households are each split in this many shards")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--dsn", help="server to create the scratch databases on (default: as the tests)")
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch databases to look into")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    wall0 = time.monotonic()
    history_start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    eval_start = history_start + timedelta(days=args.history_days)
    end = eval_start + timedelta(days=args.days)
    sites = site_specs(args.residents, args.per_home)
    population = build_world(seed=args.seed, sites=sites, households=args.households, scenarios=[],
                             start=history_start)
    doc = scenario_doc(population, seed=args.seed, history_days=args.history_days, days=args.days)
    spec = ScenarioFile.model_validate(doc)  # the whole file validates as one, as a YAML file would
    scenario_counts = Counter[str]()
    for s in spec.scenarios:
        key = s.kind.value
        if s.kind is ScenarioKind.DEVICE_FAULT:
            key = "flat_battery"
        elif s.kind is ScenarioKind.GATEWAY_OUTAGE:
            key = "outage_long" if s.duration >= timedelta(hours=1) else "outage_short"
        scenario_counts[key] += 1
    shards = split(doc, population, max(1, args.jobs))
    if args.jobs > 1 and len(shards) > 1:
        with ProcessPoolExecutor(max_workers=min(args.jobs, len(shards)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(run_shard, shards, [args] * len(shards)))
    else:
        results = [run_shard(sh, args) for sh in shards]
    truths = [t for r in results for t in r.truths]
    alerts = [a for r in results for a in r.alerts]
    stats = RunStats(store_s=sum(r.stats.store_s for r in results), score_s=sum(r.stats.score_s for r in results),
                     slow_s=sum(r.stats.slow_s for r in results), readings=sum(r.stats.readings for r in results))
    totals = sum((r.totals for r in results), Counter[str]())
    outcome = match(truths, alerts, eval_start)
    wall_s = time.monotonic() - wall0
    where = f"{results[0].where.split(', database')[0]}; {len(results)} shard(s) in {min(args.jobs, len(results))} " \
            f"process(es): " + ", ".join(f"{r.label} {r.stats.store_s + r.stats.score_s:.0f} s" for r in results)
    text = report(args=args, world=population, truths=truths, alerts=alerts, outcome=outcome, stats=stats,
                  totals=totals, wall_s=wall_s, where=where, eval_start=eval_start, end=end,
                  scenario_counts=scenario_counts)
    write_report(args.report, text)
    print(text)
    verdict = "MET" if wall_s <= TARGET_MINUTES * 60 else "NOT MET"
    print(f"\nwall time {wall_s / 60:.1f} min (target < {TARGET_MINUTES:g} min on 2 cores): {verdict}; "
          f"report written to {args.report}")
    print(json.dumps({"rows": sum(1 for t in truths if t.expected),
                      "detected": sum(1 for v in outcome.detected.values() if v),
                      "alerts": len(alerts), "false": sum(1 for c in outcome.classes.values() if c == "false")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
