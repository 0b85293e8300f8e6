"""The gateway service end to end against real Mosquitto, including the fault tests.

Every fault test ends the same way: each reading the outbox accepted reaches the subscriber, exactly once
after de-duplication by sequence number, first arrivals in sequence order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from carewatch.gateway import service
from carewatch.gateway.outbox import Outbox
from carewatch.gateway.registry import pair
from carewatch.gateway.service import Gateway
from carewatch.gateway.transport import Deliver, Notification, OnEvent, ReplayTransport, TransportEvent
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.wire import DeviceKind

OX = "A4:C1:38:00:00:01"
PIR = "A4:C1:38:00:00:03"
REGISTRY = DeviceRegistry(
    [
        RegisteredDevice(address=OX, device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER, resident_id="r-1"),
        RegisteredDevice(address=PIR, device_id="pir-1", kind=DeviceKind.MOTION_SENSOR, room="lounge"),
    ]
)

def spot_checks(gw: Any, n: int) -> list[Notification]:
    now = datetime.now(UTC)
    return [Notification(OX, "2a5e", gw.plx_spot_check(90 + i % 10, 60 + i % 30), now) for i in range(n)]


class QueueTransport:
    """Notifications pushed by the test, delivered as they come (survives transport restarts)."""

    def __init__(self) -> None:
        self.pending: list[Notification] = []
        self.lock = threading.Lock()
        self.events: list[TransportEvent] = []

    def push(self, *notes: Notification) -> None:
        with self.lock:
            self.pending.extend(notes)

    async def run(self, registry: DeviceRegistry, deliver: Deliver, on_event: OnEvent) -> None:
        while True:
            with self.lock:
                batch, self.pending = self.pending, []
            for note in batch:
                await deliver(note)
            for event in self.events:
                await on_event(event)
            self.events = []
            await asyncio.sleep(0.01)


def _settings_and_collector(gw: Any, collector_factory: Any, scratch_dir: Path, uid: str, broker_url: str,
                            **overrides: Any) -> tuple[Any, Any]:
    """A gateway's settings on this broker, and a collector subscribed to that gateway's readings."""
    settings = gw.make_settings(scratch_dir, uid, broker_url, **overrides)
    return settings, collector_factory(broker_url, settings.site_id, settings.gateway_id, f"sub-{uid}")


# ------------------------------------------------------------------------------------------------------------
def test_gateway_end_to_end(
    scratch_dir: Path, uid: str, mqtt_url: str, gw: Any, collector_factory: Any
) -> None:
    settings, collector = _settings_and_collector(gw, collector_factory, scratch_dir, uid, mqtt_url)
    transport = QueueTransport()
    with Gateway(settings, transport, registry=REGISTRY) as gateway:
        transport.events.append(TransportEvent(OX, "connected", datetime.now(UTC), rssi=-61))
        transport.push(*spot_checks(gw, 100))
        transport.push(
            Notification(PIR, "bthome", gw.bthome(1, battery=77, motion=1), datetime.now(UTC), -70)
        )
        transport.push(Notification(OX, "2a5e", b"\x00\x61", datetime.now(UTC)))  # truncated
        transport.push(Notification("A4:C1:38:00:00:99", "2a5e", b"\x00", datetime.now(UTC)))  # stranger
        collector.wait_for(lambda: collector.unique() == 202, 20, "all readings")
        wait_until(lambda: len(collector.events) == 2, 10, "dead-letter events")
        counters = gateway.counters
        assert (counters.frames_in, counters.readings_accepted, counters.dead_letters) == (103, 202, 2)
        wait_until(lambda: gateway.counters.acked == 202, 10, "acks")
        wait_until(
            lambda: any(s.get("devices", [{}])[0].get("connected") for _, s in collector.statuses),
            10,
            "a status saying the oximeter is connected",
        )
    collector.assert_exactly_once_in_order(202)
    assert {e["kind"] for e in collector.events} == {"dead_letter"}
    assert {e["raw_hex"] for e in collector.events} == {"0061", "00"}
    final = collector.statuses[-1][1]
    assert final["state"] == "offline" and final["outbox_depth"] == 0 and final["last_seq"] == 202
    devices = {d["device_id"]: d for d in final["devices"]}
    assert devices["pir-1"]["battery_pct"] == 77 and devices["pir-1"]["rssi_dbm"] == -70
    assert devices["ox-1"]["connected"] is True and devices["ox-1"]["rssi_dbm"] == -61


def test_registry_file_changes_are_picked_up(
    scratch_dir: Path, uid: str, mqtt_url: str, gw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "REGISTRY_POLL_S", 0.1)
    registry_file = scratch_dir / f"registry-{uid}.yaml"
    pair(registry_file, PIR, "motion_sensor", "pir-1")
    settings = gw.make_settings(scratch_dir, uid, mqtt_url, device_registry=registry_file)
    transport = QueueTransport()
    with Gateway(settings, transport) as gateway:
        transport.push(*spot_checks(gw, 1))
        wait_until(lambda: gateway.counters.dead_letters == 1, 5, "the unpaired oximeter's dead letter")
        time.sleep(0.05)
        pair(registry_file, OX, "pulse_oximeter", "ox-1")
        os.utime(registry_file, (time.time() + 5, time.time() + 5))  # coarse mtimes: make the change visible
        wait_until(lambda: gateway.registry.get(OX) is not None, 5, "the new registry")
        transport.push(*spot_checks(gw, 1))
        wait_until(lambda: gateway.counters.readings_accepted == 2, 5, "readings from the paired oximeter")


# ------------------------------------------------------------------------------------------------------------
# Fault tests
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_broker_outage_then_restart(
    scratch_dir: Path, uid: str, private_broker: Any, gw: Any, collector_factory: Any
) -> None:
    settings, collector = _settings_and_collector(gw, collector_factory, scratch_dir, uid, private_broker.url)
    frames = 1500
    transport = ReplayTransport(spot_checks(gw, frames), concurrency=50, pause_s=0.1)  # ~3 s of traffic
    gateway = Gateway(settings, transport, registry=REGISTRY, reconnect_max_s=2).start()
    try:
        wait_until(lambda: collector.unique() > 0, 10, "the first readings")
        private_broker.stop()
        accepted_at_outage = gateway.counters.readings_accepted
        time.sleep(2.5)
        assert gateway.counters.readings_accepted > accepted_at_outage, "the BLE side kept going"
        assert gateway.counters.outbox_depth > 0
        private_broker.start()
        wait_until(lambda: transport.delivered == frames, 30, "the transport to finish")
        collector.wait_for(lambda: collector.unique() == 2 * frames, 60, "every reading after the restart")
        wait_until(lambda: gateway.counters.outbox_depth == 0, 10, "the outbox to empty")
    finally:
        gateway.stop()
    collector.assert_exactly_once_in_order(2 * frames)


@pytest.mark.slow
def test_ten_thousand_readings_offline_then_reconnect(
    scratch_dir: Path, uid: str, private_broker: Any, gw: Any, collector_factory: Any
) -> None:
    settings, collector = _settings_and_collector(gw, collector_factory, scratch_dir, uid, private_broker.url)
    private_broker.stop()
    transport = ReplayTransport(spot_checks(gw, 5000), concurrency=100)
    gateway = Gateway(settings, transport, registry=REGISTRY, reconnect_max_s=2).start()
    try:
        wait_until(lambda: gateway.counters.readings_accepted == 10_000, 60, "10k readings in the outbox")
        counters = gateway.counters
        assert counters.outbox_depth == 10_000 and counters.acked == 0
        private_broker.start()
        collector.wait_for(lambda: collector.unique() == 10_000, 90, "the backlog")
        wait_until(lambda: gateway.counters.outbox_depth == 0, 10, "the outbox to empty")
    finally:
        gateway.stop()
    collector.assert_exactly_once_in_order(10_000)


RUNNER = textwrap.dedent("""
    import json, sys, time
    from datetime import UTC, datetime
    import structlog
    # stdout is how the runner talks to the test: logs go to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    from carewatch.gateway.registry import DeviceRegistry, RegisteredDevice
    from carewatch.gateway.service import Gateway
    from carewatch.gateway.transport import Notification, ReplayTransport
    from carewatch.settings import Settings

    cfg = json.loads(sys.argv[1])
    oximeter = RegisteredDevice(address=cfg["mac"], device_id="ox-1", kind="pulse_oximeter")
    registry = DeviceRegistry([oximeter])
    now = datetime.now(UTC)
    frame = bytes.fromhex(cfg["frame_hex"])
    notes = [Notification(cfg["mac"], "2a5e", frame, now)] * cfg["frames"]
    transport = ReplayTransport(notes, concurrency=50)
    gateway = Gateway(Settings(**cfg["settings"]), transport, registry=registry, reconnect_max_s=2).start()
    while transport.delivered < cfg["frames"]:
        time.sleep(0.01)
    print("delivered", flush=True)
    while True:
        time.sleep(0.1)
        counters = gateway.counters
        print("depth", counters.outbox_depth, "acked", counters.acked, flush=True)
        if cfg["exit_when_drained"] and counters.outbox_depth == 0:
            gateway.stop()
            print("done", flush=True)
            break
""")


@pytest.mark.slow
def test_kill_9_mid_drain_then_restart(
    scratch_dir: Path, uid: str, private_broker: Any, gw: Any, collector_factory: Any
) -> None:
    # A broker configured as deployed (deploy/mosquitto: no cap on a subscriber's queue): a stock Mosquitto drops
    # QoS 1 messages for a subscriber more than 1,000 behind ("Outgoing messages are being dropped"), which on a
    # loaded machine is the test's collector during the restart's burst, not the gateway losing anything.
    mqtt_url = private_broker.url
    # small batches, one in flight: 4,000 round trips, so a loaded machine still kills it mid-drain
    settings, collector = _settings_and_collector(gw, collector_factory, scratch_dir, uid, mqtt_url,
                                                  publish_batch_size=5, publish_inflight=1)
    cfg: dict[str, Any] = {
        "mac": OX,
        "frame_hex": gw.plx_spot_check(96, 70).hex(),
        "frames": 10_000,
        "exit_when_drained": False,
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in settings.model_dump(
                include={
                    "mqtt_url",
                    "site_id",
                    "gateway_id",
                    "outbox_path",
                    "state_dir",
                    "publish_batch_size",
                    "publish_inflight",
                    "publish_batch_ms",
                }
            ).items()
        },
    }
    log = (scratch_dir / f"runner-{uid}.log").open("w")
    child = subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(cfg)], stdout=subprocess.PIPE, stderr=log, text=True
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "delivered"
        collector.wait_for(lambda: collector.unique() >= 100, 60, "the drain to be under way")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        log.close()
    received_at_kill = collector.unique()
    with Outbox(settings.outbox_file, site_id=settings.site_id, gateway_id=settings.gateway_id) as outbox:
        total = outbox.last_seq()
        left = outbox.depth()
    assert total == 20_000, "everything delivered before the kill was committed"
    assert received_at_kill < total and left > 0, (
        "the kill must land mid-drain for this test to mean anything"
    )

    cfg.update(frames=0, exit_when_drained=True)
    again = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cfg)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip().endswith("done")
    collector.wait_for(lambda: collector.unique() == total, 30, "the rest of the backlog")
    collector.assert_exactly_once_in_order(total)


def test_simulated_uplink_outage(
    scratch_dir: Path, uid: str, mqtt_url: str, gw: Any, collector_factory: Any
) -> None:
    settings, collector = _settings_and_collector(gw, collector_factory, scratch_dir, uid, mqtt_url)
    transport = QueueTransport()
    with Gateway(settings, transport, registry=REGISTRY, reconnect_max_s=2) as gateway:
        transport.push(*spot_checks(gw, 50))
        collector.wait_for(lambda: collector.unique() == 100, 10, "readings before the outage")
        gateway.set_uplink(False)
        collector.wait_for(
            lambda: any(s["state"] == "offline" for _, s in collector.statuses), 10, "last will"
        )
        transport.push(*spot_checks(gw, 50))
        wait_until(lambda: gateway.counters.readings_accepted == 200, 10, "readings during the outage")
        time.sleep(0.5)
        assert collector.unique() == 100 and gateway.counters.outbox_depth == 100
        gateway.set_uplink(True)
        collector.wait_for(lambda: collector.unique() == 200, 20, "the backlog after the outage")
        collector.wait_for(lambda: collector.statuses[-1][1]["state"] == "online", 10, "online again")
    collector.assert_exactly_once_in_order(200)
