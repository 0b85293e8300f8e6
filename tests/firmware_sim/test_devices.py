"""The device layer acts faults out at byte level, on the kit the scenario names and with its declared parameters."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from carewatch.firmware_sim.devices import DeviceLayer, notifications, world_devices
from carewatch.firmware_sim.physiology import VitalSample
from carewatch.firmware_sim.scenarios import parse_scenario_file
from carewatch.firmware_sim.world import SiteSpec, build_world
from carewatch.gateway.frames import FrameError
from carewatch.gateway.gatt import decode_characteristic
from carewatch.gateway.transport import Notification, TransportEvent

from carewatch.wire import DeviceKind

START = datetime(2025, 1, 6, tzinfo=UTC)
FAULTS = """name: kit faults
scenarios:
  - id: garbage
    kind: device_fault
    target: {site: 0, device: kit-01, device_kind: pulse_oximeter}
    onset: 1h
    progression: {duration: 2d}
    fault: {kind: garbage_frames, params: {fraction: 1.0}}
  - id: dups
    kind: device_fault
    target: {site: 0, device: kit-02, device_kind: thermometer}
    onset: 1h
    progression: {duration: 2d}
    fault: {kind: duplicate_notifications, params: {copies: 3}}
  - id: storm
    kind: device_fault
    target: {site: 0, device: kit-02, device_kind: pulse_oximeter}
    onset: 1h
    progression: {duration: 2d}
    fault: {kind: disconnect_storm, params: {per_minute: 2}}
  - id: battery
    kind: device_fault
    target: {site: 0, device: kit-01, device_kind: bp_cuff}
    onset: 1h
    fault: {kind: flat_battery, params: {start_pct: 40, hours_to_flat: 30}}
"""


@pytest.fixture(scope="module")
def acted() -> tuple[object, list[object], list[tuple[str, object]]]:
    world = build_world(seed=5, sites=[SiteSpec("oak", 24, obs_per_day=4)], households=0, start=START,
                        scenarios=parse_scenario_file(FAULTS).scenarios)
    events = list(world.events(START, START + timedelta(days=2)))
    layer = DeviceLayer(world_devices(world), seed=world.seed)
    return world, events, list(notifications(layer, events))


def _kit_of(world: object) -> dict[str, tuple[str, DeviceKind]]:
    """Device address -> (the kit its resident is measured with, device kind)."""
    kits = {r.id: r.kit for r in world.residents}  # type: ignore[attr-defined]
    return {d.address: (kits[d.resident_id], d.kind) for d in world_devices(world) if d.resident_id}


def test_a_kit_fault_only_touches_measurements_taken_with_that_kit(acted: tuple) -> None:
    world, _, routed = acted
    kit_of = _kit_of(world)
    outcome: Counter[tuple[str, str]] = Counter()
    for _, item in routed:
        if not isinstance(item, Notification) or item.source != "2a5e":
            continue
        kit, _ = kit_of[item.address]
        try:
            decode_characteristic(item.source, item.data)
            outcome[kit, "ok"] += 1
        except FrameError:
            outcome[kit, "garbage"] += 1
    # fraction 1.0 on kit-01's oximeter: every frame after onset is mangled (cut short, or random bytes that
    # sometimes still parse, into nonsense that plausibility checks catch later)
    assert outcome["kit-01", "garbage"] > 2 * outcome["kit-01", "ok"]
    assert outcome["kit-02", "garbage"] == 0 and outcome["kit-02", "ok"] > 50


def test_duplicates_arrive_the_declared_number_of_times(acted: tuple) -> None:
    world, _, routed = acted
    kit_of = _kit_of(world)
    copies = Counter((item.address, item.data, item.received_at) for _, item in routed
                     if isinstance(item, Notification) and kit_of.get(item.address, ("", None))[1]
                     == DeviceKind.THERMOMETER)
    by_kit: dict[str, set[int]] = {}
    for (address, _, _), n in copies.items():
        by_kit.setdefault(kit_of[address][0], set()).add(n)
    assert by_kit["kit-02"] == {3} and by_kit["kit-01"] == {1}


def test_disconnect_storm_flaps_at_the_declared_rate(acted: tuple) -> None:
    world, _, routed = acted
    kit_of = _kit_of(world)
    flaps = Counter(kit_of[item.address][0] for _, item in routed
                    if isinstance(item, TransportEvent) and item.kind == "disconnected")
    oximeter_frames = Counter(kit_of[item.address][0] for _, item in routed
                              if isinstance(item, Notification) and item.source == "2a5e")
    assert flaps["kit-01"] == 0
    # 2 a minute between a device's frames (hours apart): far more flaps than frames, capped at an hour's worth
    assert oximeter_frames["kit-02"] < flaps["kit-02"] <= oximeter_frames["kit-02"] * 120


def test_a_draining_kit_notifies_its_battery_level_until_it_goes_silent(acted: tuple) -> None:
    world, events, routed = acted
    kit_of = _kit_of(world)
    levels = sorted((item.received_at, decode_characteristic("2a19", item.data).fields["battery_pct"])
                    for _, item in routed if isinstance(item, Notification) and item.source == "2a19")
    assert levels, "the draining cuff must report its battery"
    assert all(kit_of[item.address] == ("kit-01", DeviceKind.BP_CUFF) for _, item in routed
               if isinstance(item, Notification) and item.source == "2a19")
    values = [v for _, v in levels]
    assert values == sorted(values, reverse=True) and values[0] <= 40 and values[-1] < 20
    dead_at = START + timedelta(hours=31)
    assert all(at < dead_at for at, _ in levels)
    cuff_samples_after = [e for e in events if isinstance(e, VitalSample) and e.device == "kit-01"
                          and e.device_kind == DeviceKind.BP_CUFF and e.at >= dead_at]
    assert cuff_samples_after == []
