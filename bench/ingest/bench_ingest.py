"""Ingest throughput (issue 5): publisher -> Mosquitto -> ingest workers -> PostgreSQL, beside two baselines.

    .venv/bin/python bench/ingest/bench_ingest.py [--readings 200000] [--workers 1,2]

In one run, against a private PostgreSQL and a private Mosquitto (both in a temp dir, removed at the end):

* **ingest, N workers**: the simulator's MQTT output (``firmware_sim``: a world of care homes and households,
  its vital-sign and home-sensor events turned into wire readings by ``wire_output.event_reading`` and batched
  200 to a message per gateway, as ``carewatch sim --output mqtt`` sends them) published with QoS 1, consumed by
  N ``python -m carewatch ingest`` subprocesses sharing ``$share/ingest/...``, timed from the first publish until
  every reading is committed. Messages are generated and encoded before the clock starts. Each worker count gets
  a fresh broker and its own gateways (sequences from 1).
* **raw COPY**: the same rows binary-COPYed straight into ``readings`` in one transaction: the ceiling.
* **naive consumer**: a paho subscriber that decodes each message and INSERTs reading by reading in autocommit,
  on a small sample: the floor.

Targets: >= 50k readings/s sustained, >= 40% of raw COPY, >= 20x the naive consumer. The real figures are
printed whether or not they are met; the exit status is 0 either way (it is a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg

from carewatch.db.migrate import migrate
from carewatch.embedded import EmbeddedBroker, EmbeddedPostgres, free_port, wait_for
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import VitalSample
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.wire_output import event_reading, event_source
from carewatch.firmware_sim.world import SiteSpec, World, build_world
from carewatch.mqtt import make_client
from carewatch.wire import Channel, Reading, decode_batch, encode_batch, topic, topic_filter

BATCH = 200  # readings per wire message, as the simulator and the gateway publisher send them
HOMES = 20  # care homes of RESIDENTS_PER_HOME, plus HOUSEHOLDS with home sensors: one gateway each per scenario
RESIDENTS_PER_HOME = 20
HOUSEHOLDS = 80
SEED = 5
PUBLISH_INFLIGHT = 64  # as firmware_sim/wire_output.py
NAIVE_SAMPLE = 5_000

TARGET_READINGS_PER_S = 50_000
TARGET_SHARE_OF_COPY = 0.40
TARGET_TIMES_NAIVE = 20.0

COLUMNS = ("measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value, received_at, flags, "
           "subject_kind")
COLUMN_TYPES = ["timestamptz", "text", "int8", "text", "text", "text", "text", "float8", "timestamptz", "text[]",
                "text"]
Row = tuple[datetime, str, int, str, str, str, str, float, datetime, list[str], str]


# ------------------------------------------------------------------------------------------------------------
# The estate and its readings: a simulated world
# ------------------------------------------------------------------------------------------------------------
def sim_world() -> World:
    """Care homes and households over the last month (so readings land in existing partitions)."""
    start = (datetime.now(UTC) - timedelta(days=31)).replace(hour=0, minute=0, second=0, microsecond=0)
    homes = [SiteSpec(id=f"bench-home-{i:02d}", residents=RESIDENTS_PER_HOME) for i in range(HOMES)]
    return build_world(seed=SEED, sites=homes, households=HOUSEHOLDS, scenarios=[], start=start)


def site_ids(world: World) -> list[str]:
    return [s.id for s in world.sites if s.residents] + [h.id for h in world.households]


def gateway_id(site: str, scenario: str) -> str:
    return f"gw-{site}-{scenario}"


def register_estate(dsn: str, world: World, scenarios: list[str]) -> None:
    """The world's sites, residents and devices (as the simulator seeds them), and one gateway per site for each
    scenario."""
    with psycopg.connect(dsn) as conn:
        seed_world(conn, world, world_devices(world))
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s)",
                            [(gateway_id(site, name), site) for site in site_ids(world) for name in scenarios])


@dataclass(frozen=True)
class Workload:
    """One scenario's readings: wire messages (topic, payload) in the order the simulator would send them, and
    the same readings as ``readings`` rows."""

    messages: list[tuple[str, bytes]]
    rows: list[Row]
    gateways: list[str]

    @property
    def readings(self) -> int:
        return len(self.rows)


def make_workload(world: World, scenario: str, readings: int) -> Workload:
    """The world's first ``readings`` vital-sign and home-sensor readings, as this scenario's gateways."""
    seqs: dict[str, int] = {}
    pending: dict[str, list[Reading]] = {}
    messages: list[tuple[str, bytes]] = []
    rows: list[Row] = []

    def flush(site: str) -> None:
        batch = pending.pop(site, [])
        if batch:
            gw = gateway_id(site, scenario)
            messages.append((topic(site, gw, Channel.READINGS), encode_batch(site, gw, batch)))

    for event in world.events(world.start, world.start + timedelta(days=31)):
        if not isinstance(event, VitalSample | SensorEvent):
            continue
        site = event_source(event)[0]
        gw = gateway_id(site, scenario)
        seqs[gw] = seqs.get(gw, 0) + 1
        _, reading = event_reading(event, seqs[gw])
        vital = isinstance(event, VitalSample)
        subject = event.resident_id if vital else event.household_id
        rows.append((reading.measured_at, gw, reading.seq, site, subject, reading.device_id, reading.metric.value,
                     reading.value, reading.received_at, [f.value for f in reading.flags],
                     "resident" if vital else "household"))
        pending.setdefault(site, []).append(reading)
        if len(pending[site]) >= BATCH:
            flush(site)
        if len(rows) >= readings:
            break
    for site in list(pending):
        flush(site)
    if len(rows) < readings:
        raise SystemExit(f"the simulated month holds only {len(rows):,} readings; ask for fewer")
    return Workload(messages, rows, sorted({gateway_id(site, scenario) for site in pending} | set(seqs)))


# ------------------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------------------
def checkpoint(dsn: str) -> None:
    """Start each measurement with a clean WAL so one does not pay for the previous one's checkpoint."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def committed(conn: psycopg.Connection, gateways: list[str]) -> int:
    """Readings committed for these gateways, from the sequence runs store_batch keeps in the same transaction
    (cheap to poll, unlike counting a growing table)."""
    row = conn.execute("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM gateway_seq_runs "
                       "WHERE gateway_id = ANY(%s)", (gateways,)).fetchone()
    return int(row[0]) if row else 0


def stored_rows(dsn: str, gateways: list[str]) -> tuple[int, int]:
    """(rows, distinct (gateway, seq)) in ``readings`` for these gateways: the final check."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT (gateway_id, seq)) FROM readings "
                           "WHERE gateway_id = ANY(%s)", (gateways,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


class Publisher:
    """A paho QoS 1 publisher with the simulator's in-flight window."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = make_client(f"mqtt://127.0.0.1:{port}", client_id=client_id, max_inflight=PUBLISH_INFLIGHT)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish_all(self, messages: list[tuple[str, bytes]]) -> list[mqtt.MQTTMessageInfo]:
        return [self.client.publish(name, payload, qos=1) for name, payload in messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def broker(root: Path, name: str) -> Iterator[EmbeddedBroker]:
    """A fresh Mosquitto per scenario: no sessions or queued messages left over from the one before."""
    server = EmbeddedBroker(root / f"mqtt-{name}", free_port())
    if not server.supports_shared:
        raise SystemExit("this benchmark needs Mosquitto (shared subscriptions); install the mosquitto package")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def ingest_workers(count: int, root: Path, name: str, dsn: str, mqtt_port: int) -> Iterator[None]:
    """``count`` × ``python -m carewatch ingest`` subprocesses (separate processes: no shared GIL), returning
    once each has subscribed; stopped with SIGTERM (commit, ack, disconnect) on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAREWATCH_", "PG"))}
    env.update(CAREWATCH_DATABASE_URL=dsn, CAREWATCH_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
               CAREWATCH_INGEST_SHARED="true", CAREWATCH_LOG_JSON="true", CAREWATCH_STATE_DIR=str(root / "state"))
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i in range(1, count + 1):
            log = root / f"ingest-{name}-{i}.log"
            with open(log, "wb") as out:
                procs.append((subprocess.Popen(
                    [sys.executable, "-m", "carewatch", "ingest", "--worker-id", f"bench-{name}-{i}"],
                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,  # cwd: no stray .env file
                ), log))
        for proc, log in procs:
            wait_for(lambda p=proc, f=log: p.poll() is not None or "mqtt_subscribed" in f.read_text(errors="replace"),
                     60, f"{log.name} to subscribe")
            if proc.poll() is not None:
                raise RuntimeError(f"ingest worker exited ({proc.returncode}): {log.read_text()[-2000:]}")
        yield
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class IngestResult:
    workers: int
    readings: int
    seconds: float
    publish_seconds: float
    rows: int
    distinct: int

    @property
    def rate(self) -> float:
        return self.readings / self.seconds


def bench_ingest(world: World, workers: int, readings: int, dsn: str, root: Path, timeout: float) -> IngestResult:
    name = f"w{workers}"
    work = make_workload(world, name, readings)
    checkpoint(dsn)
    with broker(root, name) as server, ingest_workers(workers, root, name, dsn, server.port), \
            psycopg.connect(dsn, autocommit=True) as poll:
        publisher = Publisher(server.port, f"bench-publisher-{name}")
        try:
            started = time.perf_counter()
            infos = publisher.publish_all(work.messages)
            for info in infos:
                info.wait_for_publish(timeout=timeout)
            published = time.perf_counter() - started
            while committed(poll, work.gateways) < work.readings:
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"{name}: only {committed(poll, work.gateways)} of {work.readings} readings "
                                       f"committed after {timeout:.0f}s; see {root}/ingest-{name}-*.log")
                time.sleep(0.02)
            seconds = time.perf_counter() - started
        finally:
            publisher.close()
    rows, distinct = stored_rows(dsn, work.gateways)
    return IngestResult(workers, work.readings, seconds, published, rows, distinct)


def bench_copy(world: World, readings: int, dsn: str) -> float:
    """Binary COPY of the same rows into ``readings``, one transaction, commit included. Returns readings/s."""
    rows = make_workload(world, "copy", readings).rows
    checkpoint(dsn)
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY readings ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(COLUMN_TYPES)
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return readings / (time.perf_counter() - started)


def bench_naive(world: World, readings: int, dsn: str, root: Path, timeout: float) -> float:
    """Subscribe, decode each message, INSERT each reading in autocommit. Returns readings/s."""
    work = make_workload(world, "naive", readings)
    with psycopg.connect(dsn) as conn:
        subject_of = {d: (s, k) for d, s, k in conn.execute(
            "SELECT device_id, coalesce(resident_id, site_id), CASE WHEN resident_id IS NOT NULL THEN 'resident' "
            "ELSE carewatch_site_subject_kind(site_id) END FROM devices")}
    checkpoint(dsn)
    inserted = [0]
    done = threading.Event()
    with broker(root, "naive") as server, psycopg.connect(dsn, autocommit=True) as conn:

        def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
            batch = decode_batch(msg.payload)
            for r in batch.good:
                conn.execute(
                    f"INSERT INTO readings ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (r.measured_at, batch.gateway_id, r.seq, batch.site_id, subject_of[r.device_id][0], r.device_id,
                     r.metric.value, r.value, r.received_at, [f.value for f in r.flags], subject_of[r.device_id][1]),
                )
                inserted[0] += 1
            if inserted[0] >= work.readings:
                done.set()

        subscribed = threading.Event()
        consumer = make_client(f"mqtt://127.0.0.1:{server.port}", client_id="bench-naive")
        consumer.on_message = on_message
        consumer.on_subscribe = lambda *_: subscribed.set()
        consumer.connect("127.0.0.1", server.port)
        consumer.loop_start()
        publisher = Publisher(server.port, "bench-publisher-naive")
        try:
            consumer.subscribe(topic_filter(Channel.READINGS), qos=1)
            if not subscribed.wait(10):
                raise RuntimeError("naive consumer: no SUBACK")
            started = time.perf_counter()
            publisher.publish_all(work.messages)
            if not done.wait(timeout):
                raise RuntimeError(f"naive consumer: {inserted[0]} of {work.readings} after {timeout:.0f}s")
            seconds = time.perf_counter() - started
        finally:
            publisher.close()
            consumer.disconnect()
            consumer.loop_stop()
    return work.readings / seconds


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def report(ingest: list[IngestResult], copy_rate: float, naive_rate: float, naive_sample: int) -> None:
    print()
    print(f"{'path':<34}{'readings':>10}{'seconds':>10}{'readings/s':>13}{'of COPY':>10}{'x naive':>10}")
    for r in ingest:
        label = f"ingest, {r.workers} worker{'s' if r.workers > 1 else ''} (end to end)"
        print(f"{label:<34}{r.readings:>10,}{r.seconds:>10.2f}{r.rate:>13,.0f}"
              f"{r.rate / copy_rate:>10.0%}{r.rate / naive_rate:>10.1f}")
    print(f"{'raw binary COPY (ceiling)':<34}{ingest[0].readings:>10,}{ingest[0].readings / copy_rate:>10.2f}"
          f"{copy_rate:>13,.0f}{1:>10.0%}{copy_rate / naive_rate:>10.1f}")
    print(f"{'naive INSERT per reading (floor)':<34}{naive_sample:>10,}{naive_sample / naive_rate:>10.2f}"
          f"{naive_rate:>13,.0f}{naive_rate / copy_rate:>10.0%}{1:>10.1f}")
    print()
    for r in ingest:
        check = "ok" if r.rows == r.distinct == r.readings else "MISMATCH"
        print(f"  {r.workers} worker(s): {r.rows:,} rows, {r.distinct:,} distinct (gateway, seq) of {r.readings:,} "
              f"published [{check}]; publisher done after {r.publish_seconds:.2f}s "
              f"({r.readings / r.publish_seconds:,.0f} readings/s into the broker)")
    best = max(ingest, key=lambda r: r.rate)
    print()
    print(f"targets (best: {best.workers} worker(s), {best.rate:,.0f} readings/s):")
    print(f"  >= {TARGET_READINGS_PER_S:,} readings/s sustained: {verdict(best.rate >= TARGET_READINGS_PER_S)}")
    print(f"  >= {TARGET_SHARE_OF_COPY:.0%} of raw COPY: {best.rate / copy_rate:.0%} "
          f"{verdict(best.rate >= TARGET_SHARE_OF_COPY * copy_rate)}")
    print(f"  >= {TARGET_TIMES_NAIVE:.0f}x the naive consumer: {best.rate / naive_rate:.1f}x "
          f"{verdict(best.rate >= TARGET_TIMES_NAIVE * naive_rate)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000, help="readings per ingest run and for COPY")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure")
    parser.add_argument("--naive-readings", type=int, default=NAIVE_SAMPLE, help="sample for the naive consumer")
    parser.add_argument("--timeout", type=float, default=300, help="give up on a run after this many seconds")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]

    with ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="carewatch-bench-ingest-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        root.chmod(0o755)  # we may be root; postgres then runs as another account and must reach its data dir
        pg = EmbeddedPostgres(root / "pg", free_port())
        stack.callback(pg.stop)
        dsn = pg.start()
        migrate(dsn)
        world = sim_world()
        register_estate(dsn, world, [f"w{n}" for n in worker_counts] + ["copy", "naive"])
        print(f"PostgreSQL {pg.bin.parent.name} and Mosquitto in {root}; {os.cpu_count()} cores; the simulator's "
              f"readings of {len(world.residents)} residents in {HOMES} homes and {HOUSEHOLDS} households, "
              f"batches of {BATCH}, QoS 1, {len(site_ids(world))} gateways per run")

        ingest = []
        for workers in worker_counts:
            print(f"ingest with {workers} worker(s), {args.readings:,} readings ...", flush=True)
            ingest.append(bench_ingest(world, workers, args.readings, dsn, root, args.timeout))
        print(f"raw binary COPY, {args.readings:,} readings ...", flush=True)
        copy_rate = bench_copy(world, args.readings, dsn)
        print(f"naive consumer, {args.naive_readings:,} readings ...", flush=True)
        naive_rate = bench_naive(world, args.naive_readings, dsn, root, args.timeout)
        report(ingest, copy_rate, naive_rate, args.naive_readings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
