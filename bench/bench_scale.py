"""Scale (issue 19, part 3): 100,000 residents and 20,000 households on this machine, beside a 10,000 baseline.

    .venv/bin/python bench/bench_scale.py [--residents 100000 --baseline-residents 10000 --history-days 14]

The output starts with the date, the commit and the command line (what a README row quotes).

Phase 0, **storage** (one small world, a whole simulated day through ingest's bulk load): readings per
resident-day and per household-day, and bytes per stored reading (heap + indexes of the native monthly
partitions) -> storage per resident-year and household-year. TimescaleDB compression cannot run here: its figure is
an *estimate* (a ratio, printed as such).

**The template** (built once, copied for each population): a simulated world of ``--template-residents`` (500, in
homes of 50) and one household per 5 of them, seeded with devices and ``--history-days`` (14) of history up to
now backfilled through ingest's bulk load (readings, and the observation sets staff and kit made of each round),
then evaluated once by the scorer (``evaluate_subjects``) as a scorer running all along would have: behaviour
events derived from the households' readings, the residents' device-round sets, ``resident_state``, alerts.
So the template holds what the scorer reads per evaluation at its real size: 15 days of observation sets for the
baselines (``scoring/loading.py``), a day of rounds, 16 days of behaviour events (``scoring/households.py``).

Then for each population (the baseline first; homes of 50, one household per 5 residents):

1. **world**: a file-level copy of the template database, grown ``residents / template`` -fold in SQL
   (:func:`replicate`; the simulator is far too slow to write 100,000 people's history), every copy of a site,
   person, device and gateway under ids suffixed ``-xk``:

   * copied whole: ``sites``, ``residents``, ``gateways``, ``devices``, ``latest_readings``, ``resident_state``,
     ``observation_sets`` (every set of the history; new ``obs_id``), ``behaviour_events`` (new ``event_id``);
   * ``readings`` copied only within what an evaluation reads them for: a resident's last ``ROUND_LOOKBACK``
     (``scoring/loading.py``: regrouped into rounds on every evaluation), a household's (and any other
     subject's) last ``BEHAVIOUR_LOOKBACK`` (``scoring/households.py``: re-derived into behaviour events on a
     process's first evaluation of it, as when a replica takes buckets over), both imported from scoring/. The
     whole history of 100,000 residents and 20,000 households (~25M rows a day, 92 % household sensors; ~350M in
     14 days) is far too slow to copy here (the windows are ~37M rows at that size); the storage figures come from
     phase 0 instead. The household rules' longer look-backs (first motion of each of 16 days, nights heard, the
     room temperature at this hour of the past 7 days) are a few index probes per metric and day: older than
     ``BEHAVIOUR_LOOKBACK`` they find no rows in a copy (the probes cost about the same; the room-temperature read
     returns fewer rows than in a real estate);
   * not copied: ``alerts`` (and their events and incidents): a copy's first evaluation opens the alerts its
     template has open, writes a running estate would not make again (``write_s`` is pessimistic there);
   * the indexes of ``readings``, ``observation_sets`` and ``behaviour_events`` that back no constraint are dropped
     for the copy and built again after it (much faster than tens of millions of random index inserts);
2. **scorer throughput**: what a replica does with the buckets it holds at start or takes over
   (``evaluate_subjects`` in slices of ``scoring.service.CATCH_UP_SLICE``, in a fresh process: households are
   re-derived over their whole ``BEHAVIOUR_LOOKBACK``): one process over ``--sample-subjects`` random subjects,
   then two processes over another sample split between them; resident evaluations/s and household
   evaluations/s (each process evaluates its residents' slices, then its households'), the residents' load /
   rules / write split (``EvaluationSummary``), and the load average before and after. A sample, because a full
   rescore of 120,000 subjects would take longer than this machine can give the bench;
3. **stored-to-alert** with two real ``carewatch score`` replicas running, which are then still in their start-up
   catch-up (every subject of their buckets, slice by slice; fresh readings go first at every slice):
   ``--probes`` SpO2 80 % readings (3 NEWS2 points: a news2 alert) for random residents, 2 a second, beside the
   morning round at real time (residents / 2 h a second, 4 readings each), stored and NOTIFYed in 200 ms batches
   as ingest does; latency = the replicas' own ``alert_latency`` (reading ``stored_at`` to alert commit);
4. **API**: ``carewatch api``; 8 clients GET ``/sites/{home}/overview`` of random homes for ``--api-seconds``.

Every step's wall time is printed (to predict a full run). The machine is shared (2 cores, other jobs): figures
move by tens of percent between runs; the load average is printed beside each measurement. Exits 0 whatever the
figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import psycopg
from feeding import loadavg, run_header, terminate
from scratch import clone_database, scratch_database

from carewatch.api.users import create_user
from carewatch.embedded import free_port
from carewatch.firmware_sim.backfill import backfill_world
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.world import World, build_world, site_specs
from carewatch.scoring.households import BEHAVIOUR_LOOKBACK
from carewatch.scoring.loading import ROUND_LOOKBACK
from carewatch.subjects import Subject

SEED = 19
LONDON = ZoneInfo("Europe/London")
ROOT = Path(__file__).resolve().parent.parent
#: Estimated, not measured (TimescaleDB cannot run here): compressed chunks of narrow sensor time series segmented
#: by subject and metric typically shrink 10-20x in Timescale's published figures; we take the low end.
TIMESCALE_RATIO_ESTIMATE = 10.0
PASSWORD = "bench-scale-password"
#: Subjects per evaluate_subjects call when the template is evaluated once (what rescore_all does at start-up).
SETTLE_SLICE = 200


def morning(now: datetime) -> datetime:
    """08:30 local on the most recent morning before ``now``."""
    local = now.astimezone(LONDON).replace(hour=8, minute=30, second=0, microsecond=0)
    if local > now:
        local -= timedelta(days=1)
    return local.astimezone(UTC)


def make_world(residents: int, households: int, start: datetime, per_home: int = 50) -> World:
    return build_world(seed=SEED, sites=site_specs(residents, per_home), households=households, scenarios=[],
                       start=start)


def seed(dsn: str, world: World, start: datetime, end: datetime) -> dict[str, float]:
    """The world's records, its history [start, end) through ingest's bulk load, and the API's admin."""
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT carewatch_ensure_partitions(%s, %s)", (start - timedelta(days=31),
                                                                     end + timedelta(days=31)))
        seed_world(conn, world, world_devices(world))
        # monitored (and their devices bound) since before the history: no rule sees them as new
        conn.execute("UPDATE residents SET created_at = %s", (start,))
        conn.execute("UPDATE devices SET bound_at = %s", (start,))
        seeded = time.monotonic() - t0
        counts = backfill_world(conn, world, start=start, end=end, progress=False)
        create_user(conn, "bench-admin", "admin", password=PASSWORD, full_name="Bench admin")
    return {"seed_s": seeded, "backfill_s": time.monotonic() - t0 - seeded, "readings": counts["readings"]}


def settle(dsn: str, now: datetime) -> float:
    """Evaluate every subject of the world once as of ``now``, as a scorer running all along would have: the
    households' behaviour events, the residents' device-round sets and state, the alerts."""
    from carewatch.scoring.engine import evaluate_subjects

    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [Subject(*row) for row in conn.execute(
            "SELECT 'resident', resident_id FROM residents WHERE monitoring = 'active' "
            "UNION ALL SELECT 'household', site_id FROM sites WHERE kind = 'household' ORDER BY 2, 1")]
        for start in range(0, len(ids), SETTLE_SLICE):
            evaluate_subjects(conn, ids[start:start + SETTLE_SLICE], now)
        conn.execute("VACUUM ANALYZE")
    return time.monotonic() - t0


@dataclass
class Template:
    dsn: str
    residents: int
    households: int
    end: datetime  # the history runs up to here
    setup: dict[str, float]
    counts: dict[str, int]


@contextlib.contextmanager
def template_world(args: argparse.Namespace) -> Iterator[Template]:
    """The simulated template with ``--history-days`` of history up to now, evaluated once (kept until exit)."""
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=args.history_days)
    households = args.template_residents // 5
    print(f"\n== template: {args.template_residents} residents, {households} households, {args.history_days:g} days "
          "of history", flush=True)
    t0 = time.monotonic()
    world = make_world(args.template_residents, households, start - timedelta(days=1))
    build_s = time.monotonic() - t0
    with scratch_database(prefix="carewatch_scale_template") as (dsn, where):
        setup = {"build_s": build_s, **seed(dsn, world, start, end)}
        setup["settle_s"] = settle(dsn, end)
        with psycopg.connect(dsn) as conn:
            counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]  # count(*): one row
                      for table in ("readings", "observation_sets", "behaviour_events", "resident_state", "alerts")}
        print(f"   in {where}: {counts}; {', '.join(f'{k} {v:.0f}' for k, v in setup.items())}", flush=True)
        yield Template(dsn, args.template_residents, households, end, setup, counts)


#: Tables copied to grow a template world k-fold, and the columns that name a site, person, device or gateway.
_COPIED = ("sites", "residents", "gateways", "devices", "readings", "latest_readings", "resident_state",
           "observation_sets", "behaviour_events")
_IDS = {"site_id", "resident_id", "subject_id", "device_id", "gateway_id"}


#: Copied tables whose indexes (those backing no constraint) are dropped for the copy and built again after it.
_REINDEXED = ("readings", "observation_sets", "behaviour_events")


def _drop_indexes(conn: psycopg.Connection, table: str) -> list[str]:
    """Drop ``table``'s indexes that back no constraint; returns the statements that make them again (tens of
    millions of rows go in several times faster without them, and an index is built from sorted rows rather than
    from as many random inserts)."""
    rows = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = %s::regclass "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        (table,)).fetchall()
    for name, _ in rows:
        conn.execute(f"DROP INDEX {name}")
    # a partitioned table's own definition says ON ONLY; made on the table, it is made on every partition too
    return [definition.replace(" ON ONLY ", " ON ") for _, definition in rows]


def replicate(dsn: str, factor: int, end: datetime) -> dict[str, float]:
    """Grow the template ``factor``-fold in SQL: copy k of every site (with its residents, gateways, devices,
    newest readings, resident state, observation sets and behaviour events, and the readings an evaluation reads:
    a resident's last ``ROUND_LOOKBACK``, a household's or other subject's last ``BEHAVIOUR_LOOKBACK`` before
    ``end``) under ids suffixed ``-xk``; serial ids (``obs_id``, ``event_id``) are new. The simulator is far too
    slow to write 100,000 residents' history, and their 14 days of readings (~350M rows with the households) too
    slow to copy here: copies of a simulated template keep the data realistic (real device mix, rounds, household
    patterns) at the price of repeating it. Alerts are not copied. Returns seconds and rows per table."""
    t0 = time.monotonic()
    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE template_sites AS SELECT site_id FROM sites")
        for table in _COPIED:
            cols = [row[0] for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s AND is_generated = 'NEVER' AND coalesce(column_default, '') NOT LIKE 'nextval(%%' "
                "ORDER BY ordinal_position", (table,))]
            exprs = [f"{c} || '-x' || k" if c in _IDS else ("NULL" if c == "nhs_number" else c) for c in cols]
            where, params = "site_id IN (SELECT site_id FROM template_sites)", [factor - 1]
            if table == "readings":
                where += (" AND measured_at > CASE WHEN subject_kind = 'resident' THEN %s::timestamptz "
                          "ELSE %s::timestamptz END")
                params += [end - ROUND_LOOKBACK, end - BEHAVIOUR_LOOKBACK]
            t = time.monotonic()
            indexes = _drop_indexes(conn, table) if table in _REINDEXED else []
            out[table] = conn.execute(f"""INSERT INTO {table} ({', '.join(cols)})
                             SELECT {', '.join(exprs)} FROM {table} CROSS JOIN generate_series(1, %s) AS k
                             WHERE {where}""", params).rowcount
            out[f"{table}_s"] = time.monotonic() - t
            if indexes:
                t = time.monotonic()
                conn.execute("SET maintenance_work_mem = '256MB'")
                for definition in indexes:
                    conn.execute(definition)
                out[f"{table}_indexes_s"] = time.monotonic() - t
        t = time.monotonic()
        conn.execute("ANALYZE")
        out["analyze_s"] = time.monotonic() - t
    out["replicate_s"] = time.monotonic() - t0
    return out


# ------------------------------------------------------------------------------------------------------------
# Storage
# ------------------------------------------------------------------------------------------------------------
def readings_bytes(conn: psycopg.Connection) -> tuple[int, int]:
    """(rows, bytes of every readings partition with its indexes)."""
    rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    size = conn.execute("""SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i
                           WHERE i.inhparent = 'readings'::regclass""").fetchone()[0]
    return int(rows), int(size)


def storage_sample(residents: int) -> dict[str, float]:
    end = morning(datetime.now(UTC))
    start = end - timedelta(days=1)
    world = make_world(residents, residents // 5, start - timedelta(days=1))
    with scratch_database(prefix="carewatch_scale_storage") as (dsn, _):
        seed(dsn, world, start, end)
        with psycopg.connect(dsn) as conn:
            rows, size = readings_bytes(conn)
            by_kind = dict(conn.execute("SELECT s.kind, count(*) FROM readings r JOIN sites s USING (site_id) "
                                        "GROUP BY s.kind").fetchall())
    per_row = size / max(rows, 1)
    resident_day = by_kind.get("care_home", 0) / residents
    household_day = by_kind.get("household", 0) / max(residents // 5, 1)
    return {"rows": rows, "bytes_per_row": per_row, "resident_day": resident_day, "household_day": household_day,
            "resident_year_mb": resident_day * 365 * per_row / 1e6,
            "household_year_mb": household_day * 365 * per_row / 1e6}


# ------------------------------------------------------------------------------------------------------------
# Scorer replicas
# ------------------------------------------------------------------------------------------------------------
class Replica:
    def __init__(self, dsn: str, name: str, log_dir: Path) -> None:
        env = {**os.environ, "CAREWATCH_DATABASE_URL": dsn, "CAREWATCH_LOG_JSON": "true", "CAREWATCH_LOG_LEVEL": "INFO"}
        self.log = log_dir / f"scorer-{name}.log"
        self.handle = self.log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "carewatch", "score", "--replica-id", name], env=env,
                                     stdout=self.handle, stderr=subprocess.STDOUT, cwd=ROOT)

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{name}"' in line:
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            terminate(self.proc, 60)
        self.handle.close()


def subject_count(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        residents = conn.execute("SELECT count(*) FROM residents WHERE monitoring = 'active'").fetchone()[0]
        households = conn.execute("SELECT count(*) FROM sites WHERE kind = 'household'").fetchone()[0]
    return residents, households


def evaluate_slices(dsn: str, residents: list[str], households: list[str], out: Any) -> None:
    """What a replica does with the subjects of buckets it takes over: evaluate_subjects in slices of
    CATCH_UP_SLICE; the residents' slices, then the households', each kind timed on its own."""
    from carewatch.scoring.engine import EvaluationSummary, evaluate_subjects
    from carewatch.scoring.service import CATCH_UP_SLICE

    result: dict[str, float] = {"slice": CATCH_UP_SLICE}
    summary = EvaluationSummary()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # named with their kinds, as a replica's catch-up names them (scoring/replicas.py subjects_of)
        for kind, ids in (("residents", [Subject("resident", r) for r in residents]),
                          ("households", [Subject("household", h) for h in households])):
            t0 = time.monotonic()
            for start in range(0, len(ids), CATCH_UP_SLICE):
                summary.merge(evaluate_subjects(conn, ids[start:start + CATCH_UP_SLICE], datetime.now(UTC)))
            result[f"{kind}_s"] = time.monotonic() - t0
    result.update(residents=summary.residents, households=summary.households, errors=len(summary.errors),
                  load_s=summary.load_s, rules_s=summary.rules_s, write_s=summary.write_s)
    out.put(result)


@dataclass
class Throughput:
    """One sample: each process's result (evaluate_slices), wall seconds, and the load average around it."""

    processes: list[dict[str, float]]
    wall_s: float
    load_before: str
    load_after: str

    def total(self, key: str) -> float:
        return sum(p[key] for p in self.processes)

    def per_s(self, kind: str) -> float:
        """Evaluations of ``kind`` (residents, households) per second, the processes together (each process's
        rate over the time it spent on that kind, summed: they run side by side)."""
        return sum(p[kind] / p[f"{kind}_s"] for p in self.processes if p[f"{kind}_s"] > 0)

    def subjects_per_s(self) -> float:
        return (self.total("residents") + self.total("households")) / self.wall_s if self.wall_s else 0.0

    def cells(self) -> tuple[str, str, str]:
        """(subjects/s, residents/s and households/s, the residents' load / rules / write split) as table cells."""
        n = int(self.total("residents") + self.total("households"))
        busy = self.total("load_s") + self.total("rules_s") + self.total("write_s")
        res = self.total("residents")
        split = (f"{self.total('load_s'):.1f} / {self.total('rules_s'):.1f} / {self.total('write_s'):.1f} s "
                 f"({busy * 1000 / res if res else 0:.1f} ms per resident)")
        errors = f", {self.total('errors'):.0f} errors" if self.total("errors") else ""
        return (f"{self.subjects_per_s():,.0f} ({n:,} in {self.wall_s:.0f} s{errors}; load {self.load_before} -> "
                f"{self.load_after})",
                f"{self.per_s('residents'):,.0f} / {self.per_s('households'):,.0f} ({res:,.0f} / "
                f"{self.total('households'):,.0f})", split)


def sample_throughput(dsn: str, sample: int) -> tuple[Throughput, Throughput]:
    """One scorer process over ``sample`` random subjects, then two processes over another ``sample`` split
    between them (as two replicas split the buckets), each in a fresh process (a replica taking buckets over)."""
    with psycopg.connect(dsn) as conn:
        ids = [tuple(row) for row in conn.execute(
            "SELECT resident_id, 'resident' FROM residents WHERE monitoring = 'active' "
            "UNION ALL SELECT site_id, 'household' FROM sites WHERE kind = 'household'")]
    rng = random.Random(SEED)
    picked = rng.sample(ids, min(len(ids), 2 * sample))
    first, second = picked[:sample], picked[sample:]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()

    def split(group: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
        return (sorted(i for i, kind in group if kind == "resident"),
                sorted(i for i, kind in group if kind == "household"))

    def run(groups: list[list[tuple[str, str]]]) -> Throughput:
        before = loadavg()
        procs = [ctx.Process(target=evaluate_slices, args=(dsn, *split(g), out)) for g in groups]
        for proc in procs:
            proc.start()
        results = [out.get() for _ in procs]
        for proc in procs:
            proc.join()
        # wall: the slowest process's own evaluating time (not its start-up and imports)
        return Throughput(results, max(r["residents_s"] + r["households_s"] for r in results), before, loadavg())

    one = run([first])
    two = run([second[0::2], second[1::2]])
    return one, two


# ------------------------------------------------------------------------------------------------------------
# Load and probes while two replicas run
# ------------------------------------------------------------------------------------------------------------
ROUND = (("spo2", 96.0), ("pulse_rate", 74.0), ("temperature", 36.7), ("systolic_bp", 128.0))


def stream_probes(dsn: str, residents: Sequence[tuple[str, str]], probes: int, rate_per_s: float,
                  background_per_s: float) -> list[str]:
    """Store rounds and probes in 200 ms batches with a NOTIFY each (as ingest does); returns the probed residents
    once every probe is stored."""
    rng = random.Random(SEED)
    seq = 0
    probed = rng.sample(range(len(residents)), min(probes, len(residents)))
    interval = 0.2
    started = time.monotonic()
    sent = 0
    background_due = 0.0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while sent < len(probed):
            tick = time.monotonic()
            rows: list[tuple] = []
            subjects: set[str] = set()
            due = int((tick - started) * rate_per_s) + 1 - sent
            for i in probed[sent:sent + max(0, due)]:
                rid, site = residents[i]
                rows.append((rid, site, "spo2", 80.0))
                subjects.add(rid)
            sent += max(0, due)
            background_due += background_per_s * interval
            while background_due >= 1:
                background_due -= 1
                rid, site = residents[rng.randrange(len(residents))]
                rows += [(rid, site, m, v) for m, v in ROUND]
                subjects.add(rid)
            if rows:
                now = datetime.now(UTC)
                with conn.transaction(), conn.cursor() as cur:
                    params = []
                    for rid, site, metric, value in rows:
                        seq += 1
                        params.append((now, seq, site, rid, metric, value, now))
                    cur.executemany(
                        "INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, "
                        "value, received_at, subject_kind) "
                        "VALUES (%s, 'bench-scale', %s, %s, %s, 'bench-ox', %s, %s, %s, 'resident')", params)
                    conn.execute("SELECT pg_notify('carewatch_readings', %s)",
                                 (json.dumps({"subjects": sorted(subjects), "max_received_at": now.isoformat()}),))
            time.sleep(max(0.0, interval - (time.monotonic() - tick)))
    return [residents[i][0] for i in probed]


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ------------------------------------------------------------------------------------------------------------
# API
# ------------------------------------------------------------------------------------------------------------
def api_overview(dsn: str, homes: Sequence[str], seconds: float, clients: int, log_dir: Path) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "CAREWATCH_DATABASE_URL": dsn, "CAREWATCH_API_PORT": str(port),
           "CAREWATCH_API_HOST": "127.0.0.1", "CAREWATCH_JWT_SECRET": "s" * 48, "CAREWATCH_LOG_LEVEL": "WARNING"}
    handle = (log_dir / "api.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "carewatch", "api"], env=env, stdout=handle,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        token = httpx.post(f"{base}/auth/token", data={"username": "bench-admin", "password": PASSWORD},
                           timeout=30).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        times: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def client(k: int) -> None:
            rng = random.Random(k)
            with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
                http.get(f"/sites/{homes[0]}/overview")  # warm the connection
                while time.monotonic() < stop_at:
                    t = time.perf_counter()
                    reply = http.get(f"/sites/{rng.choice(homes)}/overview")
                    took = time.perf_counter() - t
                    with lock:
                        if reply.status_code == 200:
                            times.append(took)
                        else:
                            errors[0] += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"requests": len(times), "errors": errors[0], "p50_ms": pct(times, 50) * 1000,
                "p95_ms": pct(times, 95) * 1000, "per_s": len(times) / seconds}
    finally:
        proc.terminate()
        proc.wait(30)
        handle.close()


# ------------------------------------------------------------------------------------------------------------
# One population
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Phase:
    residents: int
    households: int
    factor: int
    copied: dict[str, float]
    one_replica: Throughput
    two_replicas: Throughput
    latencies: list[float]
    probes_sent: int
    background_per_s: float
    storage: tuple[int, int]
    api: dict[str, float]
    #: wall seconds of each step, and the load average around the replicas' and the API's steps
    steps: dict[str, float] = field(default_factory=dict)
    loads: dict[str, str] = field(default_factory=dict)


def run_phase(residents: int, template: Template, args: argparse.Namespace, log_dir: Path) -> Phase:
    households = residents // 5
    factor = max(1, residents // template.residents)
    print(f"\n== {residents:,} residents, {households:,} households: the template x {factor}", flush=True)
    steps: dict[str, float] = {}
    loads: dict[str, str] = {}
    t0 = time.monotonic()
    with clone_database(template.dsn, prefix="carewatch_scale") as dsn:
        steps["clone_s"] = time.monotonic() - t0
        copied = replicate(dsn, factor, template.end)
        steps["replicate_s"] = copied["replicate_s"]
        print(f"   copied: {', '.join(f'{k} {v:,.0f}' for k, v in copied.items())}", flush=True)
        n_res, n_hh = subject_count(dsn)
        subjects = n_res + n_hh
        phase_dir = log_dir / f"r{residents}"
        phase_dir.mkdir(parents=True, exist_ok=True)

        t = time.monotonic()
        one, two = sample_throughput(dsn, args.sample_subjects)
        steps["throughput_s"] = time.monotonic() - t
        for name, sample in (("1 scorer", one), ("2 scorers", two)):
            cells = sample.cells()
            print(f"   {name}: subjects/s {cells[0]}; residents/s / households/s {cells[1]}; load / rules / "
                  f"write {cells[2]} ({subjects:,} subjects in the estate)", flush=True)

        t = time.monotonic()
        loads["replicas_before"] = loadavg()
        pair = [Replica(dsn, "a", phase_dir), Replica(dsn, "b", phase_dir)]
        try:
            time.sleep(args.settle_s * 2)  # both hold their buckets and are rescoring them (start-up catch-up)
            with psycopg.connect(dsn) as conn:
                res = conn.execute("SELECT resident_id, site_id FROM residents ORDER BY resident_id").fetchall()
            background = residents / 7200.0 * args.round_accelerate
            probe_start = datetime.now(UTC)
            probed = stream_probes(dsn, res, args.probes, 2.0, background)

            def probe_alerts() -> set[int]:
                with psycopg.connect(dsn) as conn:
                    return {row[0] for row in conn.execute(
                        "SELECT alert_id FROM alerts WHERE kind = 'news2' AND subject_id = ANY(%s) "
                        "AND updated_at >= %s", (probed, probe_start))}  # opened, or updated by the probe

            deadline = time.monotonic() + args.probe_timeout_s
            while len(probe_alerts()) < len(probed) and time.monotonic() < deadline:
                time.sleep(1.0)
            time.sleep(args.settle_s)  # the last alert_latency lines
            alerted = probe_alerts()
            latencies = []
            for r in pair:
                for e in r.events("alert_latency"):
                    at = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
                    if at >= probe_start and e["alert_id"] in alerted:
                        latencies.append(e["stored_to_alert_ms"] / 1000)
            loads["replicas_after"] = loadavg()
        finally:
            for r in pair:
                r.stop()
        steps["replicas_s"] = time.monotonic() - t
        with psycopg.connect(dsn) as conn:
            storage = readings_bytes(conn)
            homes = [row[0] for row in conn.execute("SELECT site_id FROM sites WHERE kind = 'care_home'")]
        t = time.monotonic()
        loads["api_before"] = loadavg()
        api = api_overview(dsn, homes, args.api_seconds, 8, phase_dir)
        loads["api_after"] = loadavg()
        steps["api_s"] = time.monotonic() - t
        print(f"   API overview: {api}", flush=True)
        t = time.monotonic()
    steps["drop_s"] = time.monotonic() - t
    print(f"   steps (s): {', '.join(f'{k} {v:.0f}' for k, v in steps.items())}", flush=True)
    return Phase(residents, households, factor, copied, one, two, latencies, args.probes, background, storage, api,
                 steps, loads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=100_000)
    parser.add_argument("--baseline-residents", type=int, default=10_000)
    parser.add_argument("--history-days", type=float, default=14.0,
                        help="days of simulated history in the template (the baselines read 15 days of sets)")
    parser.add_argument("--template-residents", type=int, default=500,
                        help="simulated world copied up to the population (with one household per 5 residents)")
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--sample-subjects", type=int, default=1000,
                        help="random subjects evaluated for the throughput figures (each of the 1- and 2-process runs)")
    parser.add_argument("--round-accelerate", type=float, default=1.0,
                        help="the morning round's background: residents / 2 h per second, times this")
    parser.add_argument("--sample-residents", type=int, default=500, help="world of the storage phase")
    parser.add_argument("--api-seconds", type=float, default=15.0)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--probe-timeout-s", type=float, default=120.0, help="longest wait for the probes' alerts")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/carewatch-bench-scale"))
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    header = run_header(ROOT)
    for line in header:
        print(line, flush=True)
    started = time.monotonic()
    steps: dict[str, float] = {}

    print(f"\nstorage sample: {args.sample_residents} residents + {args.sample_residents // 5} households, one day",
          flush=True)
    storage = storage_sample(args.sample_residents)
    steps["storage_s"] = time.monotonic() - started
    t = time.monotonic()
    with template_world(args) as template:
        steps["template_s"] = time.monotonic() - t
        phases = [run_phase(n, template, args, args.log_dir) for n in (args.baseline_residents, args.residents)]

    print("\n## Scale: figures (this machine, shared; noisy)\n")
    for line in header:
        print(f"- {line}")
    print(f"- machine: {os.cpu_count()} CPUs; template: {template.residents} residents + {template.households} "
          f"households, {args.history_days:g} days of history ({template.counts['readings']:,} readings, "
          f"{template.counts['observation_sets']:,} observation sets, {template.counts['behaviour_events']:,} "
          f"behaviour events; evaluated once)\n")
    print("| | " + " | ".join(f"{p.residents:,} residents + {p.households:,} households" for p in phases) + " |")
    print("|---|" + "---:|" * len(phases))

    def row(name: str, cells: list[str]) -> None:
        print(f"| {name} | " + " | ".join(cells) + " |")

    row("copies of the template; rows copied: readings / observation sets / behaviour events", [
        f"{p.factor} in {p.steps['replicate_s']:.0f} s; {p.copied['readings']:,.0f} / "
        f"{p.copied['observation_sets']:,.0f} / {p.copied['behaviour_events']:,.0f}" for p in phases])
    slice_ = int(phases[0].one_replica.processes[0]["slice"]) if phases else 0
    for name, get in (("1 process", lambda p: p.one_replica), ("2 processes together", lambda p: p.two_replicas)):
        row(f"scorer, {name}: subjects/s (random sample, first evaluation in a fresh process, slices of {slice_}; "
            "load average before -> after)", [get(p).cells()[0] for p in phases])
        row(f"scorer, {name}: resident / household evaluations/s (how many)", [get(p).cells()[1] for p in phases])
        row(f"scorer, {name}: load / rules / write (EvaluationSummary: residents and devices; households are not "
            "split; ms per resident evaluated)", [get(p).cells()[2] for p in phases])
    row("stored-to-alert p50 / p95 / p99 (s), 2 replicas in their start-up catch-up", [
        f"{pct(p.latencies, 50):.2f} / {pct(p.latencies, 95):.2f} / {pct(p.latencies, 99):.2f} "
        f"({len(p.latencies)} of {p.probes_sent} probes alerted; round {p.background_per_s:.1f} residents/s; load "
        f"{p.loads['replicas_before']} -> {p.loads.get('replicas_after', 'n/a')})" for p in phases])
    row("readings stored: bytes per row incl. indexes (the template's history and the copied windows)", [
        f"{p.storage[1] / max(p.storage[0], 1):.0f} ({p.storage[0]:,} rows)" for p in phases])
    row("API home overview p50 / p95 (ms), 8 clients", [
        f"{p.api['p50_ms']:.0f} / {p.api['p95_ms']:.0f} ({p.api['per_s']:.0f} req/s, {p.api['errors']} errors; load "
        f"{p.loads['api_before']} -> {p.loads['api_after']})" for p in phases])
    row("wall time (s): clone / copy / throughput / replicas / API", [
        " / ".join(f"{p.steps[k]:.0f}" for k in ("clone_s", "replicate_s", "throughput_s", "replicas_s", "api_s"))
        for p in phases])
    print(f"\nStorage (a simulated day of {args.sample_residents} residents, {args.sample_residents // 5} households; "
          "native monthly partitions, measured):")
    print(f"  {storage['resident_day']:.1f} readings per resident-day, {storage['household_day']:.0f} per "
          f"household-day, {storage['bytes_per_row']:.0f} bytes per stored reading (heap + indexes)")
    print(f"  per resident-year: {storage['resident_year_mb']:.1f} MB; per household-year: "
          f"{storage['household_year_mb']:.0f} MB")
    print(f"  TimescaleDB with compression (ESTIMATE, x{TIMESCALE_RATIO_ESTIMATE:g}, not measured here): "
          f"{storage['resident_year_mb'] / TIMESCALE_RATIO_ESTIMATE:.2f} MB per resident-year, "
          f"{storage['household_year_mb'] / TIMESCALE_RATIO_ESTIMATE:.1f} MB per household-year")
    ts = template.setup
    print(f"\nWall time: storage {steps['storage_s']:.0f} s; template {steps['template_s']:.0f} s (world "
          f"{ts['build_s']:.0f}, seed {ts['seed_s']:.0f}, backfill {ts['backfill_s']:.0f}, evaluated once "
          f"{ts['settle_s']:.0f}); phases " + ", ".join(f"{p.residents:,}: {sum(p.steps.values()):.0f} s"
                                                        for p in phases)
          + f"; total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
