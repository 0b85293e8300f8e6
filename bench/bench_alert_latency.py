"""Alert latency (issue 6): from a reading committed by the ingest store to its alert committed by the scorer.

    .venv/bin/python bench/bench_alert_latency.py [--residents 10000 --baseline-residents 100]
                                                  [--accelerate 60 --window-minutes 120 --probes 300]

Each phase (a 100-resident baseline, then the full population) runs in a fresh database on a private PostgreSQL
cluster started with ``track_commit_timestamp = on``, so both ends of the measurement are the server's own commit
times of the two rows - no client clock, no polling:

* **load**: every care-home resident's morning round from 08:00 local - the busiest stretch, everyone's first round
  (``World.events``: oximeter, cuff and thermometer readings, and what staff type) - at ``--accelerate`` simulated
  seconds per wall second: one ``store_batch`` (binary COPY, NOTIFY) every 200 ms as one ingest worker commits
  (``CAREWATCH_INGEST_BATCH_MS``); staff entries stored as the API stores them, with a NOTIFY standing in for the
  API's own evaluation of the resident (so that work lands on the scorer); a status from every gateway every 5
  simulated minutes;
* **scorer**: ``carewatch score`` as its own process with a data clock, LISTENing as deployed
  (``scoring/service.py``); the stream starts once its start-up rescore of every subject is done (``caught_up``),
  as in a morning when it has been running all night;
* **probes**: ``--probes`` readings of SpO2 80 % (3 NEWS2 points on either scale: a low-medium alert) injected into
  the stream at random times for random residents, each at least 31 min (one round window) away from that
  resident's other readings, so each must open exactly one ``news2`` alert. Latency = commit time of the
  ``alert_events`` row that opened it minus commit time of the probe reading's row. A probe without an alert is
  reported as missed.

Also printed: the scorer's own ``alert_latency`` log (an upper bound, see the note it prints), and from its
``evaluation_batch`` log lines the time split of every batch (load: the set-based reads; rules: planning,
NEWS2 and every rule over the batch; write: the batched writes, alert lifecycle and incidents) and the resident
evaluations per second of busy time, with the load average before and after each phase (on a shared machine
the figures are pessimistic: compare with the baseline of the same run). Targets (issue 19): probes' p99 <= 1 s
and >= 10,000 resident evaluations/s for the full population. Exits 0 whatever the figures; the private cluster
is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from feeding import loadavg, record_staff_entry, terminate

from carewatch.db.migrate import migrate
from carewatch.embedded import EmbeddedPostgres, free_port
from carewatch.firmware_sim.backfill import backfill_world
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.fleet import gateway_id_for
from carewatch.firmware_sim.physiology import ManualObservation, VitalSample
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.wire_output import event_reading
from carewatch.firmware_sim.world import SiteSpec, World, build_world
from carewatch.ingest.store import NOTIFY_CHANNEL, notify_payloads, store_batch
from carewatch.ingest.validate import ReadingsMessage, StatusUpdate
from carewatch.subjects import Subject, SubjectKind
from carewatch.wire import DecodedBatch, DeviceKind, GatewayStatus, Metric, Reading

SEED = 11
TARGET_P99_S = 1.0
TARGET_EVALUATIONS_S = 10_000  # resident evaluations per second of the scorer's busy time, one process (issue 19)
BATCH_S = 0.2  # ingest commits every 200 ms (CAREWATCH_INGEST_BATCH_MS)
PROBE_SPO2 = 80.0  # 3 NEWS2 points on Scale 1 and on Scale 2 (<= 83)
ROUND_GAP = timedelta(minutes=31)  # readings further apart than a round window (30 min) form separate rounds
#: Gateways report every 30 s of wall time; at x60 that would be a status every simulated 0.5 s per gateway. One
#: every 5 simulated minutes keeps every hub inside gateway_offline's 10 min, at a rate the writer can keep up.
STATUS_EVERY = timedelta(minutes=5)
LONDON = ZoneInfo("Europe/London")
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------------------
# A private cluster that records commit timestamps
# ------------------------------------------------------------------------------------------------------------
class Cluster:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="carewatch-latency-"))
        self.tmp.chmod(0o755)
        self.pg = EmbeddedPostgres(self.tmp / "pg", free_port())

    def __enter__(self) -> Cluster:
        self.pg.start()
        with psycopg.connect(self.pg.admin_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        self.pg.restart()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pg.stop(mode="immediate")
        shutil.rmtree(self.tmp, ignore_errors=True)

    def database(self, name: str) -> str:
        self.pg.create_database(name)
        dsn = self.pg.dsn.rsplit("/", 1)[0] + f"/{name}"
        migrate(dsn)
        return dsn


# ------------------------------------------------------------------------------------------------------------
# Load and probes
# ------------------------------------------------------------------------------------------------------------
@dataclass(order=True)
class Due:
    at: datetime  # simulated time it is measured (and delivered)
    site: str = field(compare=False)
    reading: Reading | None = field(default=None, compare=False)
    probe: str | None = field(default=None, compare=False)  # resident id for a probe
    staff: ManualObservation | None = field(default=None, compare=False)  # what staff typed on the tablet


def window_start(now: datetime) -> datetime:
    """08:00 local on the most recent morning before ``now`` (the data clock then sits near the wall clock)."""
    local = now.astimezone(LONDON).replace(hour=8, minute=0, second=0, microsecond=0)
    if local > now:
        local -= timedelta(days=1)
    return local.astimezone(UTC)


def make_world(residents: int, per_home: int, start: datetime, history_days: float) -> World:
    sizes = [per_home] * (residents // per_home) + ([residents % per_home] if residents % per_home else [])
    sites = [SiteSpec(id=f"home-{i + 1:03d}", residents=n) for i, n in enumerate(sizes)]
    return build_world(seed=SEED, sites=sites, households=0, scenarios=[],
                       start=start - timedelta(days=history_days + 1))


def plan_load(world: World, start: datetime, end: datetime, probes: int) -> list[Due]:
    """The window's device readings and staff entries in time order, plus probe readings placed away from each
    resident's round."""
    seqs: dict[str, int] = defaultdict(int)
    load: list[Due] = []
    spans: dict[str, list[datetime]] = defaultdict(list)
    for event in world.events(start, end):
        if isinstance(event, VitalSample):
            spans[event.resident_id].append(event.at)
            load.append(Due(event.at, event.site_id, event_reading(event, 1)[1]))  # seq set below
        elif isinstance(event, ManualObservation):
            spans[event.resident_id].append(event.at)
            load.append(Due(event.at, event.site_id, staff=event))
    rng = np.random.default_rng([SEED, probes])
    residents = [world.residents[i] for i in rng.permutation(len(world.residents))]
    placed = 0
    for r in residents:
        if placed >= probes:
            break
        times = spans.get(r.id, [])
        for _ in range(20):  # a random time at least a round window away from this resident's round
            at = start + timedelta(seconds=float(rng.uniform(60, (end - start).total_seconds() - 60)))
            if all(abs(at - t) >= ROUND_GAP for t in times):
                break
        else:
            continue
        reading = Reading(seq=1, device_id=f"oxi-{r.id}", device_kind=DeviceKind.PULSE_OXIMETER, metric=Metric.SPO2,
                          value=PROBE_SPO2, unit="%", measured_at=at, received_at=at)
        load.append(Due(at, r.site_id, reading, probe=r.id))
        placed += 1
    load.sort()
    for due in load:  # sequence numbers in delivery order, per site gateway
        if due.reading is not None:
            seqs[due.site] += 1
            due.reading = due.reading.model_copy(update={"seq": seqs[due.site]})
    return load


def stream(dsn: str, load: Sequence[Due], start: datetime, accelerate: float, sites: Sequence[str],
           scale2: dict[str, bool], after_first: Callable[[], None] | None = None) -> dict[str, float]:
    """Deliver ``load`` on schedule: every BATCH_S one ``store_batch`` (as one ingest worker commits), then the
    staff entries due (stored as the API stores them; the API would then evaluate the resident itself - here a
    NOTIFY asks the scorer to, so that work lands on the scorer too), and a status from every gateway each
    STATUS_EVERY of simulated time. ``after_first``: called once the first readings are stored (the scorer's
    data clock starts on them), the schedule resuming where it was. Returns how far behind schedule the writer fell."""
    lag_max = 0.0
    next_status = start
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        i = 0
        first = True
        while i < len(load):
            if not first and after_first is not None:
                paused = time.monotonic()
                after_first()
                t0 += time.monotonic() - paused
                after_first = None
            tick_end = time.monotonic() + BATCH_S
            sim_now = start + timedelta(seconds=(time.monotonic() - t0) * accelerate)
            batch: dict[str, list[Reading]] = defaultdict(list)
            staff: list[ManualObservation] = []
            while i < len(load) and load[i].at <= sim_now:
                due = load[i]
                if first and after_first is not None and due.probe and batch:
                    break  # no probe in the batch stored before the pause (it would wait out the rescore)
                if due.reading is not None:
                    batch[due.site].append(due.reading)
                elif due.staff is not None:
                    staff.append(due.staff)
                lag_max = max(lag_max, (sim_now - due.at).total_seconds() / accelerate)
                i += 1
            statuses = []
            if sim_now >= next_status:
                statuses = [status(site, sim_now) for site in sites]
                next_status = sim_now + STATUS_EVERY
            first = first and not batch  # the first readings stored: the scorer's data clock starts
            if batch or statuses:
                messages = [ReadingsMessage(DecodedBatch(site, gateway_id_for(site), rs[-1].received_at, rs, []),
                                            received_at=rs[-1].received_at) for site, rs in batch.items()]
                store_batch(conn, messages, statuses=statuses, notify=True)
            if staff:
                with conn.transaction():
                    for obs in staff:
                        record_staff_entry(conn, obs, scale2=scale2[obs.resident_id])
                    entered = sorted({Subject(SubjectKind.RESIDENT, o.resident_id) for o in staff})
                    for payload in notify_payloads(entered, max(o.at for o in staff)):
                        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
            time.sleep(max(0.0, tick_end - time.monotonic()))
    return {"lag_max_s": lag_max, "wall_s": time.monotonic() - t0}


def status(site: str, at: datetime) -> StatusUpdate:
    gw = GatewayStatus(site_id=site, gateway_id=gateway_id_for(site), state="online", at=at)
    return StatusUpdate(gw, gw.model_dump_json(), received_at=at)


# ------------------------------------------------------------------------------------------------------------
# The scorer process
# ------------------------------------------------------------------------------------------------------------
class Scorer:
    """``carewatch score`` against ``dsn`` with a data clock; its JSON log is kept for the latency lines."""

    def __init__(self, dsn: str, log: Path) -> None:
        env = {**os.environ, "CAREWATCH_DATABASE_URL": dsn, "CAREWATCH_CLOCK": "data", "CAREWATCH_LOG_JSON": "true",
               "CAREWATCH_LOG_LEVEL": "INFO"}
        self.log = log
        self.rescore_batches = 0  # evaluation_batch lines of the start-up rescore (not the round)
        self.handle = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "carewatch", "score"], env=env, stdout=self.handle,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        self.wait_for("scorer_started", 60)

    def wait_for(self, event: str, timeout: float) -> float:
        """Seconds until the scorer logs ``event`` (or ``timeout``)."""
        started = time.monotonic()
        while time.monotonic() < started + timeout and f'"{event}"' not in self.log.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"scorer exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self) -> None:
        terminate(self.proc, 30)
        self.handle.close()

    def batches(self) -> list[dict[str, float]]:
        """The scorer's ``evaluation_batch`` lines: each batch's size and its load / rules / write time."""
        out = []
        for line in self.log.read_text().splitlines():
            if '"evaluation_batch"' in line:
                doc = json.loads(line)
                out.append({k: float(doc.get(k) or 0) for k in ("subjects", "residents", "load_ms", "rules_ms",
                                                                  "write_ms", "elapsed_ms")})
        return out

    def logged_latencies(self) -> list[float]:
        out = []
        for line in self.log.read_text().splitlines():
            if '"alert_latency"' in line:
                out.append(json.loads(line)["stored_to_alert_ms"] / 1000)
        return out


# ------------------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------------------
def probe_latencies(dsn: str, load: Sequence[Due]) -> tuple[list[float], int]:
    probes = [(d.probe, gateway_id_for(d.site), d.reading.seq) for d in load if d.probe]
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """WITH p AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::int8[]) AS p(resident_id, gateway_id, seq)),
                    r AS (SELECT p.resident_id, pg_xact_commit_timestamp(x.xmin) AS stored FROM p
                          JOIN readings x ON x.gateway_id = p.gateway_id AND x.seq = p.seq)
               SELECT r.resident_id, extract(epoch FROM min(pg_xact_commit_timestamp(e.xmin)) - r.stored)
               FROM r LEFT JOIN alerts a ON a.subject_kind = 'resident' AND a.subject_id = r.resident_id
                                        AND a.kind = 'news2'
               LEFT JOIN alert_events e ON e.alert_id = a.alert_id AND e.action IN ('opened', 'updated')
                                       AND pg_xact_commit_timestamp(e.xmin) >= r.stored
               GROUP BY r.resident_id, r.stored""",
            ([p[0] for p in probes], [p[1] for p in probes], [p[2] for p in probes])).fetchall()
    found = [float(s) for _, s in rows if s is not None]
    return found, len(probes) - len(found)


def pct(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return (f"p50 {p50 * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms   p99 {p99 * 1000:6.0f} ms   "
            f"max {max(values) * 1000:6.0f} ms")


@dataclass
class Phase:
    name: str
    residents: int
    readings: int
    probes: list[float]
    missed: int
    logged: list[float]
    stream: dict[str, float]
    batches: list[dict[str, float]] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    backlog: list[dict[str, float]] = field(default_factory=list)
    backlog_wall_s: float = 0.0
    history: str = ""

    def evaluations_per_s(self, backlog: bool = False) -> float:
        """Resident evaluations per second of evaluating (the scorer's busy time, not the idle time between
        notifications): during the round, or (``backlog``) for every resident notified at once."""
        batches = self.backlog if backlog else self.batches
        busy = sum(b["elapsed_ms"] for b in batches) / 1000
        return sum(b["residents"] for b in batches) / busy if busy else 0.0


def print_batches(ph: Phase, top: int) -> None:
    """Where the scorer's time went, per batch: percentiles over the batches, then the ``top`` largest."""
    bs = ph.batches
    if not bs:
        print("  scorer batches: none logged")
        return
    busy = sum(b["elapsed_ms"] for b in bs) / 1000
    total = {k: sum(b[k] for b in bs) for k in ("residents", "load_ms", "rules_ms", "write_ms", "elapsed_ms")}
    print(f"  scorer: {len(bs)} batches, {total['residents']:,.0f} resident evaluations in {busy:.1f} s busy -> "
          f"{ph.evaluations_per_s():,.0f} resident evaluations/s; time split load {total['load_ms'] / 1000:.1f} s, "
          f"rules {total['rules_ms'] / 1000:.1f} s, write {total['write_ms'] / 1000:.1f} s, other "
          f"{(total['elapsed_ms'] - total['load_ms'] - total['rules_ms'] - total['write_ms']) / 1000:.1f} s")
    sizes = np.array([b["residents"] for b in bs])
    print(f"  batch size (residents) p50 {np.percentile(sizes, 50):.0f}, p95 {np.percentile(sizes, 95):.0f}, "
          f"max {sizes.max():.0f}; per batch (ms):")
    print(f"    {'':>8} {'residents':>9} {'load':>8} {'rules':>8} {'write':>8} {'total':>8} {'us/resident':>11}")
    for q in (50, 95, 100):
        row = {k: float(np.percentile([b[k] for b in bs], q)) for k in bs[0]}
        print(f"    {'p' + str(q) if q < 100 else 'max':>8} {row['residents']:>9.0f} {row['load_ms']:>8.1f} "
              f"{row['rules_ms']:>8.1f} {row['write_ms']:>8.1f} {row['elapsed_ms']:>8.1f} {'':>11}")
    print(f"    the {min(top, len(bs))} largest batches:")
    for b in sorted(bs, key=lambda b: -b["residents"])[:top]:
        per = b["elapsed_ms"] * 1000 / b["residents"] if b["residents"] else 0.0
        print(f"    {'':>8} {b['residents']:>9.0f} {b['load_ms']:>8.1f} {b['rules_ms']:>8.1f} {b['write_ms']:>8.1f} "
              f"{b['elapsed_ms']:>8.1f} {per:>11.0f}")


def run_phase(cluster: Cluster, name: str, residents: int, args: argparse.Namespace, start: datetime) -> Phase:
    end = start + timedelta(minutes=args.window_minutes)
    world = make_world(residents, args.per_home, start, args.history_days)
    t = time.monotonic()
    load = plan_load(world, start, end, min(args.probes, residents))
    print(f"[{name}] {residents} residents: {len(load):,} readings planned in {time.monotonic() - t:.1f} s",
          file=sys.stderr, flush=True)
    dsn = cluster.database(f"latency_{name}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT carewatch_ensure_partitions(%s, %s)",
                     (start - timedelta(days=31), end + timedelta(days=31)))
        seed_world(conn, world, world_devices(world))
        conn.execute("UPDATE residents SET created_at = %s", (start - timedelta(days=args.history_days),))
        conn.execute("UPDATE devices SET bound_at = %s", (start - timedelta(days=args.history_days),))
        history = "none"
        if args.history_days:
            # the baselines read 15 days of sets: without them every evaluation would load next to nothing
            t = time.monotonic()
            counts = backfill_world(conn, world, start=start - timedelta(days=args.history_days), end=start,
                                    progress=False)
            sets = conn.execute("SELECT count(*) FROM observation_sets").fetchone()[0]  # type: ignore[index]  # count(*): one row
            history = (f"{args.history_days:g} days backfilled: {counts['readings']:,} readings, {sets:,} observation "
                       f"sets ({sets / residents:.0f} per resident)")
            print(f"[{name}] {history} in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
        conn.execute("VACUUM ANALYZE")
    scorer = Scorer(dsn, cluster.tmp / f"scorer-{name}.log")
    loads: list[str] = []

    def caught_up() -> None:
        # A scorer that starts rescores every subject of its buckets once its data clock has a time (the first
        # batch stored: no probe is that early); the morning round meets a scorer that has been running all
        # night, so the stream goes on once that start-up rescore is done.
        rescore_s = scorer.wait_for("caught_up", args.catch_up_timeout_s)
        scorer.rescore_batches = len(scorer.batches())
        print(f"[{name}] scorer's start-up rescore of {residents:,} residents took {rescore_s:.0f} s",
              file=sys.stderr, flush=True)
        loads.append(loadavg())

    try:
        streamed = stream(dsn, load, start, args.accelerate, [s.id for s in world.sites],
                          {r.id: r.scale2 for r in world.residents}, caught_up)
        time.sleep(args.settle_s)  # let the scorer finish what was notified last
        round_batches = len(scorer.batches())
        backlog_wall_s = notify_everyone(dsn, [r.id for r in world.residents], end, scorer, args.catch_up_timeout_s)
        backlog = scorer.batches()[round_batches:]
    finally:
        scorer.stop()
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(scorer.log, args.log_dir / scorer.log.name)
    load_after = loadavg()
    probes, missed = probe_latencies(dsn, load)
    return Phase(name, residents, sum(1 for d in load if d.reading is not None), probes, missed,
                 scorer.logged_latencies(), streamed, scorer.batches()[scorer.rescore_batches:round_batches],
                 loads[0] if loads else "n/a", load_after, backlog, backlog_wall_s, history)


def notify_everyone(dsn: str, residents: Sequence[str], stamp: datetime, scorer: Scorer, timeout: float) -> float:
    """Capacity: every resident notified in one commit (as when a replica takes over buckets, or after an outage),
    so the scorer evaluates them in batches as large as it takes. Returns the wall seconds until its
    ``evaluation_batch`` lines account for all of them."""
    before = len(scorer.batches())
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for payload in notify_payloads([Subject(SubjectKind.RESIDENT, r) for r in sorted(residents)], stamp):
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
    while time.monotonic() < started + timeout:
        if sum(b["residents"] for b in scorer.batches()[before:]) >= len(residents):
            break
        time.sleep(0.2)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=10_000)
    parser.add_argument("--baseline-residents", type=int, default=100)
    parser.add_argument("--per-home", type=int, default=50)
    parser.add_argument("--accelerate", type=float, default=60.0)
    parser.add_argument("--window-minutes", type=int, default=120)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--history-days", type=float, default=14.0,
                        help="days of device history backfilled before the round (the baselines read 15 days)")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--log-dir", type=Path, help="keep the scorers' JSON logs here")
    parser.add_argument("--catch-up-timeout-s", type=float, default=900.0,
                        help="how long to wait for the scorer's start-up rescore before streaming")
    parser.add_argument("--top-batches", type=int, default=5, help="print this many of the largest batches")
    args = parser.parse_args()
    start = window_start(datetime.now(UTC))
    phases = []
    with Cluster() as cluster:
        for name, n in (("baseline", args.baseline_residents), ("full", args.residents)):
            phases.append(run_phase(cluster, name, n, args, start))
    print(f"\nAlert latency: reading committed (ingest store_batch) -> alert event committed (scorer), server commit "
          f"timestamps. Load: device readings of every resident from 08:00 local, x{args.accelerate:g}, "
          f"{args.window_minutes} simulated min; scorer `carewatch score` (LISTEN/NOTIFY, data clock).")
    for ph in phases:
        print(f"\n[{ph.name}] {ph.residents:,} residents, {ph.readings:,} readings in {ph.stream['wall_s']:.0f} s "
              f"({ph.readings / ph.stream['wall_s']:,.0f}/s; writer at most {ph.stream['lag_max_s']:.2f} s behind)")
        print(f"  probes ({len(ph.probes)} alerts, {ph.missed} missed):   {pct(ph.probes)}")
        print(f"  scorer's own log ({len(ph.logged)}):       {pct(ph.logged)}  (*)")
        print(f"  load average (1/5/15 min) before {ph.load_before}, after {ph.load_after} "
              f"({os.cpu_count()} CPUs)")
        print(f"  history: {ph.history}")
        print_batches(ph, args.top_batches)
        spent = {k: sum(b[k] for b in ph.backlog) / 1000 for k in ("elapsed_ms", "load_ms", "rules_ms", "write_ms")}
        print(f"  backlog (every resident notified at once): {sum(b['residents'] for b in ph.backlog):,.0f} resident "
              f"evaluations in {len(ph.backlog)} batches, {spent['elapsed_ms']:.1f} s busy, {ph.backlog_wall_s:.1f} s "
              f"wall -> {ph.evaluations_per_s(backlog=True):,.0f}/s; load {spent['load_ms']:.1f} s, rules "
              f"{spent['rules_ms']:.1f} s, write {spent['write_ms']:.1f} s")
    print("\n(*) the scorer logs, for every alert it opens or updates, the time from the newest contributing reading's "
          "stored_at (its ingest transaction's start) to its own commit; for a set completed by a staff entry that "
          "includes the minutes (seconds at x60) until staff typed it, so it is an upper bound, not the latency.")
    base, full = phases[0], phases[-1]
    p99 = float(np.percentile(full.probes, 99)) if full.probes else float("inf")
    base_p99 = float(np.percentile(base.probes, 99)) if base.probes else float("nan")
    verdict = "MET" if p99 <= TARGET_P99_S and not full.missed else "NOT MET"
    rate, base_rate = full.evaluations_per_s(backlog=True), base.evaluations_per_s(backlog=True)
    print(f"\ntarget: p99 <= {TARGET_P99_S:g} s with {full.residents:,} residents streaming (probes): "
          f"{p99 * 1000:.0f} ms (baseline {base.residents:,}: {base_p99 * 1000:.0f} ms, x{p99 / base_p99:.1f}) "
          f"-> {verdict}")
    print(f"target: >= {TARGET_EVALUATIONS_S:,} resident evaluations/s in one process (the backlog; during the round "
          f"{full.evaluations_per_s():,.0f}/s of busy time, in batches as small as the notifications): {rate:,.0f}/s "
          f"(baseline {base.residents:,}: {base_rate:,.0f}/s, x{rate / base_rate if base_rate else float('nan'):.1f}) "
          f"-> {'MET' if rate >= TARGET_EVALUATIONS_S else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda a: print(a, file=sys.stderr)
    sys.exit(main())
