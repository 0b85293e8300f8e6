"""Fault tests: whatever dies mid-stream, every reading the broker accepted is stored exactly once.

Each test publishes a simulated household's readings (firmware_sim: its home sensors' events as wire readings, the
ground truth) through a publisher that records which messages the broker acknowledged, breaks something while
ingest is busy, and finally checks, by (gateway_id, seq), that every acknowledged reading is stored, none is
stored twice, nothing was stored that was never published, and each stored row holds the simulated reading's
device, metric, time and value. The broker restart with the
shared subscription needs the gateway's side of the contract too (a broker that acknowledged and dropped
readings): that test runs a real gateway, whose replay window lets ingest's gap recovery fill the hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from carewatch.db.migrate import migrate
from carewatch.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.frames import encode_plx_spot_check
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.wire_output import event_reading
from carewatch.firmware_sim.world import build_world
from carewatch.gateway.service import Gateway
from carewatch.gateway.transport import Deliver, Notification, OnEvent
from carewatch.ingest.consumer import IngestWorker
from carewatch.mqtt import MqttTarget
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.settings import Settings
from carewatch.wire import Channel, DeviceKind, Reading, encode_batch, topic

from .conftest import Estate, stored_seqs, worker_settings

pytestmark = pytest.mark.slow

PER_MESSAGE = 20


@dataclass(frozen=True)
class SimSource:
    """A simulated household's home-sensor readings under one gateway, seq i at ``readings[i - 1]``."""

    site_id: str
    gateway_id: str
    readings: list[Reading]

    def batch(self, seqs: Iterable[int]) -> bytes:
        return encode_batch(self.site_id, self.gateway_id, [self.readings[s - 1] for s in seqs])

    def readings_topic(self) -> str:
        return topic(self.site_id, self.gateway_id, Channel.READINGS)


def sim_source(conn: psycopg.Connection, uid: str, count: int) -> SimSource:
    """Seed a one-household world (its site, person and sensors, as the simulator seeds them) and take its first
    ``count`` readings, numbered from 1 for a gateway of this test."""
    start = (datetime.now(UTC) - timedelta(days=8)).replace(hour=0, minute=0, second=0, microsecond=0)
    world = build_world(seed=3, sites=[], households=1, scenarios=[], start=start, household_prefix=f"f{uid}")
    seed_world(conn, world, world_devices(world))
    site, gateway = world.households[0].id, f"gw-sim-{uid}"
    with conn.transaction():
        conn.execute("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s)", (gateway, site))
    readings: list[Reading] = []
    for event in world.events(start, start + timedelta(days=8)):
        if isinstance(event, SensorEvent):
            readings.append(event_reading(event, len(readings) + 1)[1])
            if len(readings) == count:
                return SimSource(site, gateway, readings)
    raise AssertionError(f"the simulated household made only {len(readings)} readings")


def assert_stored_as_simulated(dsn: str, source: SimSource) -> None:
    """Every stored row is the simulated reading its seq numbers: same device, metric, time and value."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT seq, device_id, metric, measured_at, value FROM readings WHERE gateway_id = %s",
                            (source.gateway_id,)).fetchall()
    wrong = [row for row in rows if (row[1], row[2], row[3], row[4]) != (
        (r := source.readings[row[0] - 1]).device_id, r.metric.value, r.measured_at, r.value)]
    assert rows and not wrong, f"{len(wrong)} stored rows differ from the simulation, e.g. {wrong[:3]}"


class StreamPublisher(threading.Thread):
    """Publishes ``messages`` readings messages of PER_MESSAGE readings each, retrying until acknowledged."""

    def __init__(self, url: str, estate: Estate | SimSource, messages: int, pace_s: float, client_id: str) -> None:
        super().__init__(daemon=True)
        self.estate, self.messages, self.pace_s = estate, messages, pace_s
        self.acked: set[int] = set()
        self.attempted: set[int] = set()
        target = MqttTarget(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)
        self.client.connect_async(target.host, target.port, keepalive=10)
        self.client.loop_start()
        self.sent = threading.Event()

    def run(self) -> None:
        for i in range(self.messages):
            seqs = range(i * PER_MESSAGE + 1, (i + 1) * PER_MESSAGE + 1)
            self._publish(self.estate.batch(seqs), seqs)
            time.sleep(self.pace_s)
        self.sent.set()

    def _publish(self, payload: bytes, seqs: range) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if not self.client.is_connected():
                time.sleep(0.05)
                continue
            self.attempted.update(seqs)
            info = self.client.publish(self.estate.readings_topic(), payload, qos=1)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=3)
            if info.is_published():
                self.acked.update(seqs)
                return
            # not acknowledged (broker went away): publish again; ingest must drop the copy if both arrive
        raise TimeoutError("could not publish for 90 s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def exactly_once(dsn: str, gateway_id: str, pub: StreamPublisher, timeout: float = 60) -> list[int]:
    """Wait until every acknowledged reading is stored; then check nothing is stored twice or out of thin air."""
    assert pub.sent.wait(120), "publisher did not finish"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pub.acked <= set(stored_seqs(dsn, gateway_id)):
        time.sleep(0.25)
    time.sleep(1.0)  # late re-deliveries would show up as doubles now
    stored = stored_seqs(dsn, gateway_id)
    lost = sorted(pub.acked - set(stored))
    assert not lost, f"{len(lost)} acknowledged readings lost, e.g. {lost[:10]}"
    assert len(stored) == len(set(stored)), "a reading was stored twice"
    assert set(stored) <= pub.attempted
    if isinstance(pub.estate, SimSource):
        assert_stored_as_simulated(dsn, pub.estate)
    return stored


def spawn_worker(dsn: str, url: str, worker_id: str, log_dir: Path, batch_ms: int = 100, **settings: str
                 ) -> subprocess.Popen[bytes]:
    env = Settings().child_env(database_url=dsn, mqtt_url=url, ingest_batch_ms=str(batch_ms), metrics_port="0",
                               log_level="INFO", **settings)
    env.pop("CAREWATCH_INGEST_SHARED", None)
    log = open(log_dir / f"worker-{worker_id}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "carewatch.ingest.service", "--worker-id", worker_id, "--shared"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def wait_stored(dsn: str, gateway_id: str, at_least: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(stored_seqs(dsn, gateway_id))
        if n >= at_least:
            return n
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} readings stored after {timeout}s")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def start_session(proc_list: list, dsn: str, url: str, worker_id: str, log_dir: Path, batch_ms: int = 100,
                  **settings: str) -> subprocess.Popen[bytes]:
    proc = spawn_worker(dsn, url, worker_id, log_dir, batch_ms, **settings)
    proc_list.append(proc)
    return proc


def test_kill_9_worker_mid_batch_then_restart(database: str, db: psycopg.Connection, estate: Estate,
                                             private_broker: EmbeddedBroker, uid: str, scratch_dir: Path,
                                             procs: list) -> None:
    url = private_broker.url
    # 1.5 s batches (messages arrive every 10 ms, so they never idle-close): the kill lands inside an open batch
    source = sim_source(db, uid, 300 * PER_MESSAGE)
    worker = start_session(procs, database, url, f"k{uid}", scratch_dir, batch_ms=1500)
    _wait_session(scratch_dir, f"k{uid}", worker)
    pub = StreamPublisher(url, source, messages=300, pace_s=0.01, client_id=f"pub-{uid}")
    pub.start()
    wait_stored(database, source.gateway_id, 400)
    time.sleep(0.7)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    time.sleep(0.5)  # publishing goes on while no worker runs: the broker queues for the session
    start_session(procs, database, url, f"k{uid}", scratch_dir)
    stored = exactly_once(database, source.gateway_id, pub)
    assert len(stored) == 300 * PER_MESSAGE
    pub.close()


def test_two_workers_kill_one(database: str, db: psycopg.Connection, estate: Estate,
                              private_broker: EmbeddedBroker, uid: str, scratch_dir: Path, procs: list) -> None:
    url = private_broker.url
    first = start_session(procs, database, url, f"a{uid}", scratch_dir)
    second = start_session(procs, database, url, f"b{uid}", scratch_dir)
    _wait_session(scratch_dir, f"a{uid}", first)
    _wait_session(scratch_dir, f"b{uid}", second)
    source = sim_source(db, uid, 200 * PER_MESSAGE)
    pub = StreamPublisher(url, source, messages=200, pace_s=0.01, client_id=f"pub-{uid}")
    pub.start()
    wait_stored(database, source.gateway_id, 400)
    second.send_signal(signal.SIGKILL)
    second.wait(10)
    # the survivor keeps going on its share while the other is down ...
    before = len(stored_seqs(database, source.gateway_id))
    wait_stored(database, source.gateway_id, before + 200)
    # ... and the killed worker's session (its unacknowledged and queued share) is drained when it comes back.
    start_session(procs, database, url, f"b{uid}", scratch_dir)
    stored = exactly_once(database, source.gateway_id, pub)
    assert len(stored) == 200 * PER_MESSAGE
    pub.close()


def test_mosquitto_restart_during_ingest(database: str, db: psycopg.Connection, estate: Estate,
                                         private_broker: EmbeddedBroker, uid: str) -> None:
    """A plain persistent subscription survives a broker restart: the broker restores it and queues for it."""
    url = private_broker.url
    worker = IngestWorker(worker_settings(database, url), worker_id=f"m{uid}", shared=False, batch_ms=100)
    worker.start()
    try:
        assert worker.subscribed.wait(10)
        source = sim_source(db, uid, 150 * PER_MESSAGE)
        pub = StreamPublisher(url, source, messages=150, pace_s=0.01, client_id=f"pub-{uid}")
        pub.start()
        wait_stored(database, source.gateway_id, 400)
        private_broker.restart()
        stored = exactly_once(database, source.gateway_id, pub)
        assert len(stored) >= len(pub.acked) > 0
        assert worker.counters.stored == len(stored)
        pub.close()
    finally:
        worker.stop()


class OximeterTransport:
    """A simulated pulse oximeter at a steady rate (two readings per frame), until told to stop."""

    def __init__(self, address: str, frames_per_tick: int = 5, tick_s: float = 0.02) -> None:
        self.address, self.frames_per_tick, self.tick_s = address, frames_per_tick, tick_s
        self.delivered = 0
        self.running = True

    async def run(self, registry: object, deliver: Deliver, on_event: OnEvent) -> None:
        while self.running:
            now = datetime.now(UTC)
            frames = [encode_plx_spot_check(spo2=94 + i % 4, pulse_rate=70 + i % 9)
                      for i in range(self.delivered, self.delivered + self.frames_per_tick)]
            await asyncio.gather(*(deliver(Notification(self.address, "2a5e", f, now)) for f in frames))
            self.delivered += len(frames)
            await asyncio.sleep(self.tick_s)


def test_mosquitto_restart_with_shared_subscription_recovers_every_gap(
        database: str, db: psycopg.Connection, estate: Estate, private_broker: EmbeddedBroker, uid: str,
        scratch_dir: Path, procs: list) -> None:
    """Mosquitto 2.0 does not restore *shared* subscriptions from its persistence file: what a gateway
    publishes between the broker's restart and the workers' re-subscription is acknowledged and dropped. Here
    the worker (the production shared subscription) is paused across the restart, so that window is certain and
    long; a real gateway (outbox, publisher) streams through it. Ingest sees the hole, asks the gateway to
    resend it, and ends with every reading the gateway numbered stored exactly once and no gap left."""
    url = private_broker.url
    worker = start_session(procs, database, url, f"s{uid}", scratch_dir, ingest_resend_after_s="0.5",
                           ingest_resend_grace_s="1", ingest_resend_interval_s="2")
    _wait_session(scratch_dir, f"s{uid}", worker)
    oximeter = "A4:C1:38:00:00:01"
    registry = DeviceRegistry([RegisteredDevice(address=oximeter, device_id=estate.oximeter,
                                                kind=DeviceKind.PULSE_OXIMETER, resident_id=estate.resident_id)])
    settings = Settings(mqtt_url=url, site_id=estate.site_id, gateway_id=estate.gateway_id,
                        outbox_path=scratch_dir / f"outbox-{uid}.sqlite", state_dir=scratch_dir / f"state-{uid}",
                        publish_batch_ms=20)
    transport = OximeterTransport(oximeter)  # ~500 readings/s
    gateway = Gateway(settings, transport, registry=registry, reconnect_max_s=1).start()
    try:
        wait_stored(database, estate.gateway_id, 400)
        worker.send_signal(signal.SIGSTOP)  # a worker slow to come back after the broker restart
        try:
            private_broker.restart()
            acked = gateway.counters.acked
            deadline = time.monotonic() + 30
            while gateway.counters.acked < acked + 300 and time.monotonic() < deadline:
                time.sleep(0.05)
            dropped_window = gateway.counters.acked - acked
        finally:
            worker.send_signal(signal.SIGCONT)
        assert dropped_window >= 300, "the gateway published into the restarted broker before ingest subscribed"
        time.sleep(2.0)
        transport.running = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            last = gateway.counters.last_seq
            if gateway.counters.outbox_depth == 0 and set(stored_seqs(database, estate.gateway_id)) == set(
                    range(1, last + 1)):
                break
            time.sleep(0.25)
        time.sleep(1.0)  # late re-deliveries or a second replay would show up as doubles now
        counters = gateway.counters
    finally:
        gateway.stop()
    stored = stored_seqs(database, estate.gateway_id)
    assert len(stored) == len(set(stored)), "a reading was stored twice"
    lost = sorted(set(range(1, counters.last_seq + 1)) - set(stored))
    assert not lost, f"{len(lost)} readings lost, e.g. {lost[:10]}"
    assert set(stored) == set(range(1, counters.last_seq + 1)) and counters.last_seq > 1000
    last_seq, missing = db.execute("SELECT last_seq, missing_seqs FROM gateways WHERE gateway_id = %s",
                                   (estate.gateway_id,)).fetchone()
    assert (last_seq, missing) == (counters.last_seq, 0)
    # the gap was real and recovery filled it (not luck): ingest asked, the gateway replayed
    asked = db.execute("SELECT detail FROM gateway_events WHERE gateway_id = %s AND kind = 'resend_requested'",
                       (estate.gateway_id,)).fetchall()
    assert asked and counters.resend_requests >= 1 and counters.replayed >= 300
    assert counters.replay_unavailable == 0


def test_postgres_restart_during_ingest(scratch_dir: Path, private_broker: EmbeddedBroker, uid: str) -> None:
    pg = EmbeddedPostgres(scratch_dir / f"pg-{uid}", free_port())
    pg.start()
    try:
        migrate(pg.dsn)
        with psycopg.connect(pg.dsn) as conn:
            source = sim_source(conn, uid, 150 * PER_MESSAGE)
        url = private_broker.url
        worker = IngestWorker(worker_settings(pg.dsn, url), worker_id=f"p{uid}", shared=True, batch_ms=100)
        worker.start()
        try:
            assert worker.subscribed.wait(10)
            pub = StreamPublisher(url, source, messages=150, pace_s=0.01, client_id=f"pub-{uid}")
            pub.start()
            wait_stored(pg.dsn, source.gateway_id, 400)
            pg.stop(mode="fast")
            time.sleep(1.5)  # messages pile up; commits fail and are retried, nothing is acknowledged
            pg.start()
            stored = exactly_once(pg.dsn, source.gateway_id, pub, timeout=90)
            assert len(stored) == 150 * PER_MESSAGE
            assert worker.counters.db_errors > 0  # the outage was really felt
            pub.close()
        finally:
            worker.stop()
    finally:
        pg.stop(mode="immediate")


def _wait_session(log_dir: Path, worker_id: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until a worker process has subscribed: from then on the broker keeps its share for its session."""
    log = log_dir / f"worker-{worker_id}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ingest worker exited at start: {log.read_text(errors='replace')[-2000:]}"
        if log.exists() and "mqtt_subscribed" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {worker_id} did not subscribe within {timeout}s")
