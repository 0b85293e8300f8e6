"""Scale (issue 19, part 3): 100,000 residents and 20,000 households on this machine, beside a 10,000 baseline.

    .venv/bin/python bench/bench_scale.py [--residents 100000 --baseline-residents 10000 --history-minutes 30]

Phase 0, **storage** (one small world, a whole simulated day through ingest's bulk load): readings per
resident-day and per household-day, and bytes per stored reading (heap + indexes of the native monthly
partitions) -> storage per resident-year and household-year. TimescaleDB compression cannot run here: its figure is
an *estimate* (a ratio, printed as such).

Then for each population (the baseline first; homes of 50, one household per 5 residents):

1. **world**: a simulated template (``--template-residents``, 500, and 100 households) seeded with devices and the
   last ``--history-minutes`` before 08:30 local (the morning round under way) backfilled through ingest's bulk
   load, then copied in SQL up to the population (:func:`replicate`: the simulator writes ~200 readings/s here,
   far too slow for 100,000 people), so evaluations load real rows;
2. **scorer throughput**: what a replica does with the buckets it holds at start or takes over
   (``evaluate_subjects`` in slices of 200): one process over ``--sample-subjects`` random subjects, then two
   processes over another sample split between them; subjects/s. A sample, because a full rescore of 120,000
   subjects at the rates measured here would take longer than this machine can give the bench;
3. **stored-to-alert** with two real ``carewatch score`` replicas running, which are then still in their start-up
   catch-up (every subject of their buckets, slice by slice; fresh readings go first at every slice):
   ``--probes`` SpO2 80 % readings (3 NEWS2 points: a news2 alert) for random residents, 2 a second, beside the
   morning round at real time (residents / 2 h a second, 4 readings each), stored and NOTIFYed in 200 ms batches
   as ingest does; latency = the replicas' own ``alert_latency`` (reading ``stored_at`` to alert commit);
4. **API**: ``carewatch api``; 8 clients GET ``/sites/{home}/overview`` of random homes for ``--api-seconds``.

The machine is shared (2 cores, other jobs): figures move by tens of percent between runs. Exits 0 whatever the
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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import psycopg
from feeding import terminate
from scratch import scratch_database

from carewatch.api.users import create_user
from carewatch.embedded import free_port
from carewatch.firmware_sim.backfill import backfill_world
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.world import World, build_world, site_specs

SEED = 19
LONDON = ZoneInfo("Europe/London")
ROOT = Path(__file__).resolve().parent.parent
#: Estimated, not measured (TimescaleDB cannot run here): compressed chunks of narrow sensor time series segmented
#: by subject and metric typically shrink 10-20x in Timescale's published figures; we take the low end.
TIMESCALE_RATIO_ESTIMATE = 10.0
PASSWORD = "bench-scale-password"


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
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_world(conn, world, world_devices(world))
        seeded = time.monotonic() - t0
        counts = backfill_world(conn, world, start=start, end=end, progress=False)
        create_user(conn, "bench-admin", "admin", password=PASSWORD, full_name="Bench admin")
    return {"seed_s": seeded, "backfill_s": time.monotonic() - t0 - seeded, "readings": counts["readings"]}


#: Tables copied to grow a template world k-fold, and the columns that name a site, person, device or gateway.
_COPIED = ("sites", "residents", "gateways", "devices", "readings", "latest_readings")
_IDS = {"site_id", "resident_id", "subject_id", "device_id", "gateway_id"}


def replicate(dsn: str, factor: int) -> float:
    """Grow the seeded template ``factor``-fold in SQL: copy k of every site (with its residents, gateways,
    devices, readings and newest readings) under ids suffixed ``-xk``. The simulator generates about 200 readings
    a second here, far too slow to write 100,000 residents' history; copies of a simulated template keep the data
    realistic (real device mix, rounds and household patterns) at the price of repeating it."""
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE template_sites AS SELECT site_id FROM sites")
        for table in _COPIED:
            cols = [row[0] for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s AND is_generated = 'NEVER' ORDER BY ordinal_position", (table,))]
            exprs = [f"{c} || '-x' || k" if c in _IDS else ("NULL" if c == "nhs_number" else c) for c in cols]
            conn.execute(f"""INSERT INTO {table} ({', '.join(cols)})
                             SELECT {', '.join(exprs)} FROM {table} CROSS JOIN generate_series(1, %s) AS k
                             WHERE site_id IN (SELECT site_id FROM template_sites)""", (factor - 1,))
        conn.execute("ANALYZE")
    return time.monotonic() - t0


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


def evaluate_slices(dsn: str, subjects: list[str], out: Any) -> None:
    """What a replica does with the subjects of buckets it takes over: evaluate_subjects in slices of 200."""
    from carewatch.scoring.engine import evaluate_subjects
    from carewatch.scoring.service import CATCH_UP_SLICE

    now = datetime.now(UTC)
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, len(subjects), CATCH_UP_SLICE):
            evaluate_subjects(conn, subjects[start:start + CATCH_UP_SLICE], now)
    out.put(time.monotonic() - t0)


def sample_throughput(dsn: str, sample: int) -> tuple[tuple[float, int], tuple[float, int]]:
    """Subjects/s of one scorer process over ``sample`` random subjects, then of two processes over another
    ``sample`` split between them (as two replicas split the buckets): ((seconds, n), (seconds, n))."""
    with psycopg.connect(dsn) as conn:
        ids = [row[0] for row in conn.execute(
            "SELECT resident_id FROM residents WHERE monitoring = 'active' "
            "UNION ALL SELECT site_id FROM sites WHERE kind = 'household'")]
    rng = random.Random(SEED)
    picked = rng.sample(ids, min(len(ids), 2 * sample))
    first, second = sorted(picked[:sample]), picked[sample:]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()

    def run(groups: list[list[str]]) -> float:
        procs = [ctx.Process(target=evaluate_slices, args=(dsn, g, out)) for g in groups]
        for proc in procs:
            proc.start()
        times = [out.get() for _ in procs]
        for proc in procs:
            proc.join()
        return max(times)

    one = run([first])
    two = run([sorted(second[0::2]), sorted(second[1::2])])
    return (one, len(first)), (two, len(second))


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
    setup: dict[str, float]
    one_replica: tuple[float, int]
    two_replicas: tuple[float, int]
    latencies: list[float]
    probes_sent: int
    background_per_s: float
    storage: tuple[int, int]
    api: dict[str, float]


def run_phase(residents: int, args: argparse.Namespace, log_dir: Path) -> Phase:
    households = residents // 5
    factor = max(1, residents // args.template_residents)
    end = morning(datetime.now(UTC))
    start = end - timedelta(minutes=args.history_minutes)
    print(f"\n== {residents:,} residents, {households:,} households: a simulated template of "
          f"{args.template_residents} x {factor}", flush=True)
    t0 = time.monotonic()
    world = make_world(args.template_residents, args.template_residents // 5, start - timedelta(days=1))
    build_s = time.monotonic() - t0
    with scratch_database(prefix="carewatch_scale") as (dsn, where):
        setup = {"build_s": build_s, **seed(dsn, world, start, end)}
        setup["replicate_s"] = replicate(dsn, factor)
        print(f"   seeded in {where}: {setup}", flush=True)
        n_res, n_hh = subject_count(dsn)
        subjects = n_res + n_hh
        phase_dir = log_dir / f"r{residents}"
        phase_dir.mkdir(parents=True, exist_ok=True)

        one_result, two_result = sample_throughput(dsn, args.sample_subjects)
        print(f"   1 scorer: {one_result[1]:,} subjects in {one_result[0]:.1f} s; 2 scorers: {two_result[1]:,} in "
              f"{two_result[0]:.1f} s ({subjects:,} subjects in the estate)", flush=True)

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
                        "SELECT alert_id FROM alerts WHERE kind = 'news2' AND subject_id = ANY(%s)", (probed,))}

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
        finally:
            for r in pair:
                r.stop()
        with psycopg.connect(dsn) as conn:
            storage = readings_bytes(conn)
            homes = [row[0] for row in conn.execute("SELECT site_id FROM sites WHERE kind = 'care_home'")]
        api = api_overview(dsn, homes, args.api_seconds, 8, phase_dir)
        print(f"   API overview: {api}", flush=True)
    return Phase(residents, households, setup, one_result, two_result, latencies, args.probes, background, storage,
                 api)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=100_000)
    parser.add_argument("--baseline-residents", type=int, default=10_000)
    parser.add_argument("--history-minutes", type=int, default=30)
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
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/carewatch-bench-scale"))
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)

    print(f"storage sample: {args.sample_residents} residents + {args.sample_residents // 5} households, one day",
          flush=True)
    storage = storage_sample(args.sample_residents)
    phases = [run_phase(n, args, args.log_dir) for n in (args.baseline_residents, args.residents)]

    print("\n## Scale: figures (this machine, shared; noisy)\n")
    print("| | " + " | ".join(f"{p.residents:,} residents + {p.households:,} households" for p in phases) + " |")
    print("|---|" + "---:|" * len(phases))

    def row(name: str, cells: list[str]) -> None:
        print(f"| {name} | " + " | ".join(cells) + " |")

    row("template build / seed / backfill / copies (s)", [
        f"{p.setup['build_s']:.0f} / {p.setup['seed_s']:.0f} / {p.setup['backfill_s']:.0f} / "
        f"{p.setup['replicate_s']:.0f}" for p in phases])
    row("scorer, 1 process: subjects/s (random sample, first evaluation)", [
        f"{p.one_replica[1] / p.one_replica[0]:,.0f} ({p.one_replica[1]:,} in {p.one_replica[0]:.0f} s)"
        for p in phases])
    row("scorer, 2 processes: subjects/s together", [
        f"{p.two_replicas[1] / p.two_replicas[0]:,.0f} ({p.two_replicas[1]:,} in {p.two_replicas[0]:.0f} s)"
        for p in phases])
    row("stored-to-alert p50 / p95 / p99 (s), 2 replicas in their start-up catch-up", [
        f"{pct(p.latencies, 50):.2f} / {pct(p.latencies, 95):.2f} / {pct(p.latencies, 99):.2f} "
        f"({len(p.latencies)} of {p.probes_sent} probes alerted; round {p.background_per_s:.1f} residents/s)"
        for p in phases])
    row("readings stored: bytes per row incl. indexes", [f"{p.storage[1] / max(p.storage[0], 1):.0f} "
                                                         f"({p.storage[0]:,} rows)" for p in phases])
    row("API home overview p50 / p95 (ms), 8 clients", [
        f"{p.api['p50_ms']:.0f} / {p.api['p95_ms']:.0f} ({p.api['per_s']:.0f} req/s, {p.api['errors']} errors)"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
