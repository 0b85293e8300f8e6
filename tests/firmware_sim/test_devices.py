"""The device layer acts faults out at byte level, on the kit the scenario names and with its declared parameters."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from carewatch.firmware_sim.care import HomeCare
from carewatch.firmware_sim.devices import DeviceLayer, notifications, world_devices
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import VitalSample
from carewatch.firmware_sim.scenarios import parse_scenario_file
from carewatch.firmware_sim.wire_output import event_source
from carewatch.firmware_sim.world import SiteSpec, build_world, site_specs
from carewatch.gateway.frames import FrameError
from carewatch.gateway.gatt import decode_characteristic
from carewatch.gateway.pipeline import Pipeline, PipelineResult
from carewatch.gateway.transport import Notification, TransportEvent
from carewatch.wire import DeviceKind, Metric, QualityFlag

START = datetime(2025, 1, 6, tzinfo=UTC)
# (scenario id, device, its kind, the fault, its params, lasts 2 days); one device_fault scenario each from 1h
_KIT_FAULTS = [
    ("garbage", "kit-01", "pulse_oximeter", "garbage_frames", "{fraction: 1.0}", True),
    ("dups", "kit-02", "thermometer", "duplicate_notifications", "{copies: 3}", True),
    ("storm", "kit-02", "pulse_oximeter", "disconnect_storm", "{per_minute: 2}", True),
    ("battery", "kit-01", "bp_cuff", "flat_battery", "{start_pct: 40, hours_to_flat: 30}", False),
]
FAULTS = "name: kit faults\nscenarios:\n" + "".join(
    f"  - id: {sid}\n    kind: device_fault\n    target: {{site: 0, device: {device}, device_kind: {kind}}}\n"
    f"    onset: 1h\n" + ("    progression: {duration: 2d}\n" if two_days else "")
    + f"    fault: {{kind: {fault}, params: {params}}}\n"
    for sid, device, kind, fault, params, two_days in _KIT_FAULTS)


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
    # fraction 1.0 on kit-01's oximeter: every frame after onset is mangled: cut short (never parses) or random
    # bytes, which parse whenever their random flags ask for no more bytes than there are (into nonsense that
    # plausibility checks catch later)
    assert outcome["kit-01", "garbage"] > 1.5 * outcome["kit-01", "ok"]
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


# ------------------------------------------------------------------------------------------------------------
# Bytes decode with the gateway's own code to the simulated values
# ------------------------------------------------------------------------------------------------------------
MORNING = datetime(2025, 1, 6, 7, 0, tzinfo=UTC)  # a Monday: observation rounds, breakfasts, kettles, heating
#: The encoding's resolution per metric (whole units otherwise: SpO2, pulse, pressures, battery, on/off).
RESOLUTION = {Metric.TEMPERATURE: 0.01, Metric.ROOM_TEMPERATURE: 0.01, Metric.HUMIDITY: 0.01, Metric.POWER: 0.01}


def _through_gateways(world: object, events: list, layer: DeviceLayer) -> list[tuple[Notification, PipelineResult]]:
    """Every notification the device layer makes of ``events``, through a real gateway Pipeline per site."""
    pipelines: dict[str, Pipeline] = {}
    out = []
    for site, note in notifications(layer, events):
        if isinstance(note, Notification):
            pipeline = pipelines.setdefault(site, Pipeline(layer.registry(site)))
            out.append((note, pipeline.process(note)))
    return out


@pytest.fixture(scope="module")
def decoded() -> tuple[object, list, list[tuple[Notification, PipelineResult]]]:
    """Twelve residents in three homes (4 rounds a day) and three households (two bind-key encrypted sensors each),
    26 simulated hours, fault-free. Seed 1 draws every artefact: low perfusion, an oximeter's erratic signal and a
    cuff's body movement."""
    world = build_world(seed=1, sites=site_specs(12, 4, obs_per_day=4), households=3, scenarios=[], start=MORNING)
    events = [e for e in world.events(MORNING, MORNING + timedelta(hours=26))
              if isinstance(e, VitalSample | SensorEvent)]
    return world, events, _through_gateways(world, events, DeviceLayer(world_devices(world), seed=world.seed))


def _expected_readings(events: list) -> tuple[dict[tuple, tuple], int]:
    """(device id, metric, time) -> (value, flags, measured_at) a perfect gateway makes of the simulated events,
    and how many oximeter samples had motion artefact (a PLX device says "erratic signal": questionable)."""
    expected: dict[tuple, tuple] = {}
    erratic = 0
    cuffs: dict[tuple, dict[Metric, float]] = {}
    for e in events:
        _, device_id, kind = event_source(e)
        if isinstance(e, SensorEvent):  # BTHome carries no time: measured when heard
            expected[device_id, e.metric, e.at] = (e.value, (), e.at)
            continue
        if e.metric is Metric.PERFUSION_INDEX:
            continue  # sent as the PLX Pulse Amplitude Index, which the gateway makes no reading of (checked below)
        flags = set(e.flags)
        if kind is DeviceKind.PULSE_OXIMETER and QualityFlag.MOTION_ARTEFACT in flags:
            flags = flags - {QualityFlag.MOTION_ARTEFACT} | {QualityFlag.QUESTIONABLE}
            erratic += 1
        ordered = tuple(sorted(flags, key=lambda f: f.value))
        expected[device_id, e.metric, e.at] = (e.value, ordered, e.at.replace(microsecond=0))  # Date Time: whole s
        if kind is DeviceKind.BP_CUFF:
            cuffs.setdefault((device_id, e.at, ordered), {})[e.metric] = e.value
    for (device_id, at, flags), values in cuffs.items():  # the cuff also reports the mean pressure it computed
        sbp, dbp = values[Metric.SYSTOLIC_BP], values[Metric.DIASTOLIC_BP]
        expected[device_id, Metric.MEAN_ARTERIAL_PRESSURE, at] = (round(dbp + (sbp - dbp) / 3), flags,
                                                                   at.replace(microsecond=0))
    return expected, erratic


def test_byte_output_decodes_with_the_gateway_parsers_to_the_simulated_values(decoded: tuple) -> None:
    _, events, results = decoded
    assert not [d for _, r in results for d in r.dead_letters]
    got = {}
    for _, result in results:
        for d in result.drafts:
            key = (d.device_id, d.metric, d.received_at)
            assert key not in got, f"two readings for {key}"
            got[key] = d
    expected, erratic = _expected_readings(events)
    kinds = {k[1] for k in expected}
    assert {Metric.SPO2, Metric.SYSTOLIC_BP, Metric.TEMPERATURE, Metric.MOTION, Metric.DOOR_OPEN, Metric.POWER,
            Metric.ROOM_TEMPERATURE, Metric.HUMIDITY, Metric.BATTERY} <= kinds
    assert len(expected) > 3000 and erratic
    assert {QualityFlag.LOW_PERFUSION, QualityFlag.MOTION_ARTEFACT} <= {f for _, flags, _ in expected.values()
                                                                      for f in flags}
    assert set(got) == set(expected)
    for key, (value, flags, measured_at) in expected.items():
        draft = got[key]
        assert abs(draft.value - value) <= RESOLUTION.get(key[1], 1.0) / 2 + 1e-9, (key, draft.value, value)
        assert draft.flags == flags and draft.measured_at == measured_at, key


def test_oximeter_frames_carry_the_perfusion_index_and_motion_as_an_erratic_signal(decoded: tuple) -> None:
    world, events, results = decoded
    device_of = {d.address: d.device_id for d in world_devices(world)}
    samples = {(event_source(e)[1], e.at, e.metric): e for e in events if isinstance(e, VitalSample)
               and e.device_kind is DeviceKind.PULSE_OXIMETER}
    erratic = 0
    for note, _ in results:
        if note.source != "2a5e":
            continue
        frame = decode_characteristic(note.source, note.data)
        pi = samples[device_of[note.address], note.received_at, Metric.PERFUSION_INDEX]
        assert frame.fields["pulse_amplitude_index"] == pytest.approx(pi.value, abs=0.05)
        assert frame.fields["spo2"] == samples[device_of[note.address], note.received_at, Metric.SPO2].value
        if QualityFlag.MOTION_ARTEFACT in pi.flags:
            erratic += 1
            assert QualityFlag.QUESTIONABLE in frame.flags
            assert "erratic_signal_detected" in frame.details["device_and_sensor_status"]["bits"]
        assert (QualityFlag.LOW_PERFUSION in frame.flags) == (QualityFlag.LOW_PERFUSION in pi.flags)
    assert erratic


# ------------------------------------------------------------------------------------------------------------
# Device clocks: the gateway flags what an unset or wrong clock sends
# ------------------------------------------------------------------------------------------------------------
CLOCKS = """name: clocks
scenarios:
  - {id: unset-thermo, kind: device_fault, target: {site: 0, device: kit-01, device_kind: thermometer},
     onset: day 1 07:55, progression: {duration: 24h}, fault: {kind: clock_unset}}
  - {id: unset-oxi, kind: device_fault, target: {site: 0, device: kit-01, device_kind: pulse_oximeter},
     onset: day 1 07:55, progression: {duration: 24h}, fault: {kind: clock_unset}}
  - {id: wrong-cuff, kind: device_fault, target: {site: 0, device: kit-01, device_kind: bp_cuff},
     onset: day 1 07:55, progression: {duration: 24h}, fault: {kind: clock_wrong}}
  - {id: wrong-thermo, kind: device_fault, target: {site: 0, device: kit-02, device_kind: thermometer},
     onset: day 1 07:55, progression: {duration: 24h}, fault: {kind: clock_wrong, params: {skew_s: 3600}}}
  - {id: wrong-oxi, kind: device_fault, target: {site: 0, device: kit-02, device_kind: pulse_oximeter},
     onset: day 1 07:55, progression: {duration: 24h}, fault: {kind: clock_wrong, params: {skew_s: -900}}}
  - {id: unset-cuff, kind: device_fault, target: {site: 0, device: kit-02, device_kind: bp_cuff},
     onset: day 1 07:55, progression: {duration: 24h}, fault: {kind: clock_unset}}
"""


@pytest.fixture(scope="module")
def clocked() -> tuple[object, list[tuple[Notification, PipelineResult]]]:
    """Every kit device of a 24-resident home (two kits) with an unset or wrong clock for the first day. The home runs
    its rounds on the dot from 08:00, so the faults (from 07:55) cover whole rounds."""
    world = build_world(seed=6, sites=[SiteSpec("oak", 24, obs_per_day=4, care=HomeCare.textbook())], households=0,
                        start=START,
                        scenarios=parse_scenario_file(CLOCKS).scenarios)
    events = list(world.events(START, START + timedelta(days=2)))
    return world, _through_gateways(world, events, DeviceLayer(world_devices(world), seed=world.seed))


def test_unset_and_wrong_device_clocks_give_flagged_readings_at_the_gateway_time(clocked: tuple) -> None:
    world, results = clocked
    kit_of = _kit_of(world)
    fault_end = START + timedelta(hours=7, minutes=55) + timedelta(hours=24)
    wanted = {("kit-01", DeviceKind.THERMOMETER): QualityFlag.CLOCK_NOT_SET,
              ("kit-01", DeviceKind.PULSE_OXIMETER): QualityFlag.CLOCK_NOT_SET,
              ("kit-01", DeviceKind.BP_CUFF): QualityFlag.CLOCK_SKEWED,
              ("kit-02", DeviceKind.THERMOMETER): QualityFlag.CLOCK_SKEWED,
              ("kit-02", DeviceKind.PULSE_OXIMETER): QualityFlag.CLOCK_SKEWED,
              ("kit-02", DeviceKind.BP_CUFF): QualityFlag.CLOCK_NOT_SET}
    seen: Counter[tuple[str, DeviceKind, QualityFlag | None]] = Counter()
    for note, result in results:
        assert not result.dead_letters
        for d in result.drafts:
            kit, kind = kit_of[note.address]
            clock_flags = {QualityFlag.CLOCK_NOT_SET, QualityFlag.CLOCK_SKEWED} & set(d.flags)
            if note.received_at < fault_end:
                assert clock_flags == {wanted[kit, kind]}, (kit, kind, d)
                assert d.measured_at == d.received_at  # the device's clock is not used: the gateway's is
                seen[kit, kind, wanted[kit, kind]] += 1
            else:
                assert not clock_flags and d.measured_at == d.received_at.replace(microsecond=0)
                seen[kit, kind, None] += 1
    assert all(seen[kit, kind, flag] > 10 and seen[kit, kind, None] > 10 for (kit, kind), flag in wanted.items())


def test_a_cuff_clock_fault_is_detectable_within_the_hour_its_ground_truth_expects(clocked: tuple) -> None:
    """One cuff measurement is four readings (systolic, diastolic, mean, pulse), so its first flagged measurement
    already reaches the platform's device_fault threshold: month.yaml's clock faults target a cuff for this."""
    from carewatch.scoring.rules import CLOCK_FLAGS_FAULT_COUNT

    world, results = clocked
    truth = {r["scenario"]: r for r in world.ground_truth()}  # type: ignore[attr-defined]
    device_of = {d.address: d.device_id for d in world_devices(world)}
    kit_of = _kit_of(world)
    for scenario, kit in (("wrong-cuff", "kit-01"), ("unset-cuff", "kit-02")):
        assert truth[scenario]["expected_alert"] == "device_fault"
        by = datetime.fromisoformat(truth[scenario]["expected_by"])
        flagged = Counter(device_of[note.address] for note, r in results for d in r.drafts
                          if note.received_at <= by and kit_of[note.address] == (kit, DeviceKind.BP_CUFF)
                          and {QualityFlag.CLOCK_NOT_SET, QualityFlag.CLOCK_SKEWED} & set(d.flags))
        assert flagged and max(flagged.values()) >= CLOCK_FLAGS_FAULT_COUNT, scenario
