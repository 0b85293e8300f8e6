"""`carewatch sim`: the CLI contract, byte-identical file output for a seed and start, wire messages to a real
Mosquitto, and backfill straight to the database through ingest's store."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from typer.testing import CliRunner

from carewatch.cli import app
from carewatch.firmware_sim.backfill import backfill_gateway_id, backfill_world
from carewatch.firmware_sim.cli import make_world, run_sim
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.wire_output import (
    device_events,
    direct_gateway_id,
    event_reading,
    publish_direct,
)
from carewatch.mqtt import MqttTarget
from carewatch.settings import Settings
from carewatch.wire import Channel, ReadingBatch, topic

START = "2025-01-06T07:50:00+00:00"  # a Monday, just before the 08:00 round


def test_backfill_stores_every_reading_once_and_the_rounds_staff_recorded(
        database: str, uid: str, capsys: pytest.CaptureFixture[str]) -> None:
    start = datetime(2026, 10, 1, tzinfo=UTC)
    # site and household ids are this test's own, so the shared test database never holds them already
    world = make_world(seed=11, residents=4, households=1, scenarios=[], start=start, site_ids=[f"bf-{uid}"],
                       household_prefix=f"bfh-{uid}")
    with psycopg.connect(database, autocommit=True) as conn:
        seed_world(conn, world, world_devices(world))
        first = backfill_world(conn, world, start=start, end=start + timedelta(days=2), progress_every=500)
        again = backfill_world(conn, world, start=start, end=start + timedelta(days=2), progress=False)
        gateways = [backfill_gateway_id(f"bf-{uid}"), backfill_gateway_id(world.households[0].id)]
        stored = conn.execute("SELECT count(*) FROM readings WHERE gateway_id = ANY(%s)", (gateways,)).fetchone()[0]
        sets = conn.execute("SELECT count(*), bool_and(recorded_by = 'backfill') FROM observation_sets "
                            "WHERE site_id = %s", (f"bf-{uid}",)).fetchone()
    assert first["readings"] > 1000 and first["stored"] == first["readings"] and first["dead_letters"] == 0
    # a second backfill continues the backfill gateway's sequence: nothing is mistaken for a duplicate
    assert again["stored"] == again["readings"]
    assert stored == first["stored"] + again["stored"]
    assert sets[0] >= 4 * 2 and sets[1] is True  # at least one staff round a day per resident
    # the progress bar: redrawn as it goes, ending at 100 % with the total (the second run drew none)
    bar = capsys.readouterr().err
    redraws = [line for line in bar.split("\r") if line.startswith("backfill [")]
    assert len(redraws) == first["readings"] // 500 + 1
    assert redraws[-1].startswith(f"backfill [{'#' * 30}] 100.0%  {first['readings']:,} readings")


def test_sim_refuses_unknown_modes_and_bad_arguments_with_a_reason(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    def run(**changes: object) -> str:
        args: dict = {"residents": 1, "households": 0, "scenarios": [], "mode": "accelerated", "accelerate": 1,
                      "days": 1, "seed": 1, "output": "ble", "ground_truth": None, **changes}
        assert run_sim(Settings(state_dir=tmp_path), **args) == 2
        return capsys.readouterr().err

    assert "--mode must be one of" in run(mode="warp")
    assert "--output jsonl needs --out" in run(output="jsonl")
    assert "not an ISO date-time" in run(start="yesterday")
    assert "no scenario file" in run(scenarios=["nope.yaml"])
    assert "use larger homes" in run(residents=5000, per_home=1)


def test_ground_truth_is_written_as_json_lines(tmp_path: Path) -> None:
    from carewatch.firmware_sim.scenarios import load_scenarios

    world = make_world(seed=1, residents=24, households=3, scenarios=load_scenarios("demo"),
                       start=datetime(2026, 11, 20, 21, tzinfo=UTC))
    assert [(s.id, s.residents) for s in world.sites] == [("home-01", 12), ("home-02", 12)]
    path = world.write_ground_truth(tmp_path / "truth.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["expected_alert"] for r in rows} == {"news2", "night_bathroom"}
    assert all({"id", "target", "kind", "onset", "expected_alert"} <= set(r) for r in rows)


def _cli_sim(tmp_path: Path, name: str, *args: str) -> tuple[bytes, bytes]:
    out, truth = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.truth.jsonl"
    result = CliRunner().invoke(app, ["sim", "--residents", "5", "--per-home", "3", "--households", "2",
                                      "--scenario", "demo", "--days", "0.125", "--start", START, "--output",
                                      "jsonl", "--out", str(out), "--ground-truth", str(truth), *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["messages"] == len(out.read_bytes().splitlines())
    return out.read_bytes(), truth.read_bytes()


def test_the_cli_gives_byte_identical_output_for_a_seed_and_start(tmp_path: Path) -> None:
    """`carewatch sim --residents 5 --per-home 3 --scenario demo --seed S --start T --output jsonl`, twice."""
    first, truth = _cli_sim(tmp_path, "a", "--seed", "3")
    again, truth_again = _cli_sim(tmp_path, "b", "--seed", "3")
    other, _ = _cli_sim(tmp_path, "c", "--seed", "4")
    assert first == again and truth == truth_again
    assert first != other
    batches = [ReadingBatch.model_validate_json(line) for line in first.splitlines()]
    # 5 residents in all: homes of 3 and 2, each its own gateway, as are the 2 households
    assert {(b.site_id, b.gateway_id) for b in batches} == {(s, direct_gateway_id(s)) for s in
                                                            ("home-01", "home-02", "hh-01", "hh-02")}
    residents = {r.device_id.split("-", 1)[1] for b in batches for r in b.readings if r.device_id.startswith("oxi-")}
    assert residents == {f"res-home-01-0{i}" for i in (1, 2, 3)} | {"res-home-02-01", "res-home-02-02"}
    # the built-in demo scenario was found by name and its ground truth written
    assert {json.loads(line)["scenario"] for line in truth.splitlines()} == {"demo-infection", "demo-night-bathroom"}
    # each gateway's sequence runs 1, 2, 3... and every message is stamped with simulated time
    seqs: dict[str, list[int]] = {}
    for b in batches:
        seqs.setdefault(b.gateway_id, []).extend(r.seq for r in b.readings)
        assert b.sent_at == b.readings[-1].received_at and len(b.readings) <= 200
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())


# ------------------------------------------------------------------------------------------------------------
# --output mqtt against the real broker
# ------------------------------------------------------------------------------------------------------------
class Collector:
    """Subscribes to the readings topics of some sites and keeps every message, with its topic."""

    def __init__(self, url: str, sites: list[str]) -> None:
        target = MqttTarget(url)
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"collect-{sites[0]}")
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(target.host, target.port)
        self.client.loop_start()
        self.client.subscribe([(f"carewatch/v1/{site}/+/readings", 1) for site in sites])
        assert self._subscribed.wait(10), "broker did not acknowledge the subscription"

    def wait_for(self, readings: int, timeout: float = 20) -> list[ReadingBatch]:
        for _ in range(int(timeout * 10)):
            batches = [ReadingBatch.model_validate_json(payload) for _, payload in self.messages]
            if sum(len(b.readings) for b in batches) >= readings:
                return batches
            time.sleep(0.1)
        raise AssertionError(f"only {len(self.messages)} messages arrived")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_direct_mqtt_output_publishes_valid_wire_messages_as_the_sims_own_gateways(
        mqtt_url: str, uid: str, tmp_path: Path) -> None:
    start = datetime.fromisoformat(START)
    end = start + timedelta(hours=3)
    world = make_world(seed=9, residents=5, per_home=3, households=2, scenarios=[], start=start,
                       site_ids=[f"dm-{uid}-1", f"dm-{uid}-2"], household_prefix=f"dh-{uid}")
    sites = [s.id for s in world.sites] + [h.id for h in world.households]
    settings = Settings(mqtt_url=mqtt_url, state_dir=tmp_path)
    collector = Collector(mqtt_url, sites)
    try:
        summary = publish_direct(settings, world, start=start, end=end, accelerate=None, stop=threading.Event())
        batches = collector.wait_for(summary["readings_published"])
        topics = [t for t, _ in collector.messages]
    finally:
        collector.close()
    assert summary["readings_published"] > 300 and summary["messages"] == len(batches)
    # every message is a valid version-1 readings message from the sim's own gateway, on that gateway's topic
    assert [topic(b.site_id, b.gateway_id, Channel.READINGS) for b in batches] == topics
    assert {b.gateway_id for b in batches} == {direct_gateway_id(s) for s in sites}
    assert all(b.gateway_id == direct_gateway_id(b.site_id) for b in batches)
    # ...carrying exactly the simulated readings, each gateway's sequence 1, 2, 3...
    def key(r: object) -> tuple:
        return r.device_id, r.metric, r.value, r.measured_at, r.flags  # type: ignore[attr-defined]
    sent = Counter(key(r) for b in batches for r in b.readings)
    simulated = Counter(key(event_reading(e, 1)[1]) for e in device_events(world.events(start, end)))
    assert sent == simulated
    by_gateway: dict[str, list[int]] = {}
    for b in batches:
        by_gateway.setdefault(b.gateway_id, []).extend(r.seq for r in b.readings)
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_gateway.values())
    assert summary["sequence"] == {gw: len(seqs) for gw, seqs in by_gateway.items()}


def test_direct_mqtt_output_is_paced_and_continues_its_sequence_across_runs(
        mqtt_url: str, uid: str, tmp_path: Path) -> None:
    start = datetime.fromisoformat(START)
    end = start + timedelta(hours=1)
    world = make_world(seed=9, residents=3, per_home=3, households=1, scenarios=[], start=start,
                       site_ids=[f"dp-{uid}"], household_prefix=f"dq-{uid}")
    settings = Settings(mqtt_url=mqtt_url, state_dir=tmp_path)
    first = publish_direct(settings, world, start=start, end=end, accelerate=None, stop=threading.Event())
    paced = publish_direct(settings, world, start=start, end=end, accelerate=7200, stop=threading.Event())
    reached = (datetime.fromisoformat(paced["sim_reached"]) - start).total_seconds()
    assert paced["wall_s"] >= 0.9 * reached / 7200 and reached > 1800  # x7200: an hour in half a second
    assert paced["readings_published"] == first["readings_published"]
    # the second run went on from where the first stopped (kept in the state dir): no seq is reused
    assert paced["sequence"] == {gw: 2 * n for gw, n in first["sequence"].items()}


def test_sim_care_homes_use_shared_kits_by_default_driven_through_the_api(
        database: str, mqtt_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Outside the demo too, a simulated care home measures with a shared kit: its simulated carer signs in, and
    the rounds (mistakes included) start, claim, correct and save sessions through the API on a data clock while
    the kit's readings go through the real gateway, MQTT and ingest. Nothing lands on the wrong resident."""
    import socket
    import uuid

    import uvicorn

    from carewatch.api.app import create_app
    from carewatch.firmware_sim.cli import _run_fleet, plan_kit_homes
    from carewatch.ingest.consumer import IngestWorker

    uid = uuid.uuid4().hex[:6]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(database_url=database, mqtt_url=mqtt_url, state_dir=tmp_path, clock="data",
                        jwt_secret="sim-kits-" + "k" * 40, api_url=f"http://127.0.0.1:{port}", publish_batch_ms=50,
                        ingest_batch_ms=50, ingest_shared=False)
    start = (datetime.now(UTC) - timedelta(days=1)).replace(hour=7, minute=40, second=0, microsecond=0)
    # a seed of its own: the world's NHS numbers follow the seed, and a resident whose number another test's world
    # already stored would not be seeded (the run's database is shared)
    world = make_world(seed=90217, residents=5, per_home=5, households=0, scenarios=[], start=start,
                       site_ids=[f"simkit-{uid}"])
    assert plan_kit_homes(settings, world, None, kits=True) == []  # no API answering: own devices, said so
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    worker = IngestWorker(settings, worker_id=f"simkit-{uid}", shared=False)
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.start()
        assert plan_kit_homes(settings, world, None, kits=True) == [f"simkit-{uid}"]
        assert plan_kit_homes(settings, world, None, kits=False) == []
        capsys.readouterr()
        assert _run_fleet(settings, world, accelerate=1800, days=6 / 24) == 0
        summary = next(json.loads(line) for line in reversed(capsys.readouterr().out.splitlines())
                       if line.startswith('{"events"'))
    finally:
        worker.stop(timeout=15)
        server.should_exit = True
        thread.join(timeout=10)
    assert summary["kit_homes"] == [f"simkit-{uid}"]
    assert summary["kit_sessions"] >= 2 and summary["kit_actions_failed"] == 0, summary
    assert summary["kit_readings"] > 0 and summary["readings_attributed_wrong"] == 0, summary
    with psycopg.connect(database) as conn:
        bound = conn.execute("SELECT count(*) FROM devices WHERE site_id = %s AND resident_id IS NOT NULL",
                             (f"simkit-{uid}",)).fetchone()[0]
        seeded = conn.execute("SELECT count(*) FROM residents WHERE site_id = %s", (f"simkit-{uid}",)).fetchone()[0]
    assert bound == 0 and seeded == 5  # the home's residents share its kit
