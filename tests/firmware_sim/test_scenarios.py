"""Scenario files: validation with clear errors, trajectories, and that each scenario does what it declares."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from carewatch.alerts import AlertKind
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import Condition, ManualObservation, VitalSample
from carewatch.firmware_sim.scenarios import (
    CLOCK_DEVICE_KINDS,
    CLOCK_FAULTS,
    KINDS,
    DeviceFault,
    GatewayOutage,
    Onset,
    ScenarioError,
    ScenarioKind,
    Shape,
    Trajectory,
    load_scenario_file,
    parse_duration,
    parse_onset,
    parse_scenario_file,
    shape_fraction,
)
from carewatch.firmware_sim.world import SiteSpec, build_world
from carewatch.wire import DeviceKind, Metric

LONDON = ZoneInfo("Europe/London")
START = datetime(2025, 1, 6, tzinfo=UTC)  # Monday; local time = UTC in January


# ------------------------------------------------------------------------------------------------------------
# Parsing and validation
# ------------------------------------------------------------------------------------------------------------
def test_durations_and_onsets() -> None:
    assert parse_duration("36h") == timedelta(hours=36)
    assert parse_duration("1d12h30m") == timedelta(days=1, hours=12, minutes=30)
    assert parse_duration("90s") == timedelta(seconds=90)
    for bad in ("36", 36, "three hours", "", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_onset("2h").resolve(START, LONDON) == START + timedelta(hours=2)
    assert parse_onset("day 3 22:00").resolve(START, LONDON) == datetime(2025, 1, 8, 22, tzinfo=LONDON)
    later = START + timedelta(hours=23)
    assert parse_onset("next 22:00").resolve(later, LONDON) == datetime(2025, 1, 7, 22, tzinfo=LONDON)
    with pytest.raises(ScenarioError, match="before the sim start"):
        Onset(day=1, clock=datetime(2025, 1, 1, 8).time()).resolve(START + timedelta(hours=10), LONDON)
    for bad in ("day 0 10:00", "day 2 25:00", "tomorrow"):
        with pytest.raises(ValueError):
            parse_onset(bad)


def test_shapes_start_at_zero_end_at_one_and_never_go_backwards() -> None:
    x = np.linspace(-0.5, 1.5, 201)
    for shape in (Shape.LINEAR, Shape.LOGISTIC):
        y = shape_fraction(x, shape)
        assert y[0] == 0.0 and y[-1] == pytest.approx(1.0)
        assert np.all(np.diff(y) >= -1e-12)
    t = Trajectory(t0=100.0, over=100.0, from_=1.0, to=3.0, shape=Shape.LINEAR, hold_end=300.0, recovery=100.0)
    assert t.at(np.array([0.0, 150.0, 200.0, 250.0, 350.0, 500.0])).tolist() == [1.0, 2.0, 3.0, 3.0, 2.0, 1.0]
    step = Trajectory(t0=10.0, over=0.0, from_=0.0, to=1.0, shape=Shape.STEP)
    assert step.at(np.array([9.9, 10.0, 1e9])).tolist() == [0.0, 1.0, 1.0]


def _yaml(body: str) -> str:
    return f"name: t\nscenarios:\n{body}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("  - {id: a, kind: infection, onset: 2h, progression: {params: {temprature: 2}}}",
         "infection has no parameter temprature"),
        ("  - {id: a, kind: infection, onset: 2h, target: {household: 1}}", "care-home resident"),
        ("  - {id: a, kind: uti, onset: 2h, target: {resident: 1}}", "household"),
        ("  - {id: a, kind: infection, onset: 36}", "cannot read onset"),
        ("  - {id: a, kind: infection, onset: 2h, progression: {duration: 36}}", "has no unit"),
        ("  - {id: a, kind: sneezing, onset: 2h}", "kind"),
        ("  - {id: a, kind: device_fault, onset: 2h, target: {household: 1, device: bathroom}}", "needs a fault"),
        ("  - {id: a, kind: device_fault, onset: 2h, target: {site: 0, device: kit-01},"
         " fault: {kind: clock_unset}}", "device_kind"),
        ("  - {id: a, kind: device_fault, onset: 2h, target: {household: 0, device: kettle},"
         " fault: {kind: flat_battery, params: {volts: 3}}}", "flat_battery has no parameter volts"),
        # BTHome advertisements carry no time: a clock fault there could never show
        ("  - {id: a, kind: device_fault, onset: 2h, target: {household: 4, device: living_climate},"
         " fault: {kind: clock_wrong}}", "clock_wrong needs a device whose frames carry a Date Time"),
        ("  - {id: a, kind: device_fault, onset: 2h, target: {household: 0, device: bathroom},"
         " fault: {kind: clock_unset}}", "BTHome advertisements carry no time"),
        ("  - {id: a, kind: device_fault, onset: 2h, target: {site: 0, device: kit-01, device_kind: thermometer},"
         " fault: {kind: clock_wrong, params: {skew_s: 120}}}", "within the 600 s the gateway accepts"),
        ("  - {id: a, kind: infection, onset: 2h, progression: {params: {new_confusion: 3}}}", "0..1"),
        ("  - {id: a, kind: infection, onset: 2h}\n  - {id: a, kind: uti, onset: 2h}", "used twice"),
        ("  - {id: a, kind: infection, onset: 2h, surprise: 1}", "Extra inputs"),
    ],
)
def test_bad_scenarios_are_refused_with_a_clear_reason(body: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario_file(_yaml(body), source="test.yaml")
    assert "test.yaml" in str(err.value)
    assert message in str(err.value)
    if "id: a" in body and "used twice" not in message:
        assert "scenarios.0(a)" in str(err.value)  # says which scenario


def test_builtin_files_load_and_month_covers_every_kind() -> None:
    demo = load_scenario_file("demo")
    assert {s.kind for s in demo.scenarios} == {ScenarioKind.INFECTION, ScenarioKind.UTI}
    assert all(s.onset.offset is not None and s.onset.offset <= timedelta(minutes=10) for s in demo.scenarios)
    assert all(s.duration <= timedelta(hours=6) for s in demo.scenarios)
    month = load_scenario_file("month")
    assert {s.kind for s in month.scenarios} == set(ScenarioKind)
    faults = {s.fault.kind for s in month.scenarios if s.fault}
    assert len(faults) == 6
    for spec in month.scenarios + demo.scenarios:
        for exp in spec.expectations():
            assert exp.alert is None or exp.alert in AlertKind
    with pytest.raises(ScenarioError, match="no scenario file"):
        load_scenario_file("/nonexistent/x.yaml")
    # a built-in name arrives as a Path from the CLI; a file by that name would win
    assert load_scenario_file(Path("demo")) == demo
    clock_faults = [s for s in month.scenarios if s.fault and s.fault.kind in CLOCK_FAULTS]
    assert clock_faults and all(s.target.device_kind in CLOCK_DEVICE_KINDS for s in clock_faults)


def test_every_kind_has_a_documented_default() -> None:
    for kind, info in KINDS.items():
        assert info.target in ("resident", "household", "device", "site")
        if kind not in (ScenarioKind.DEVICE_FAULT, ScenarioKind.GATEWAY_OUTAGE):
            assert info.expect, kind


# ------------------------------------------------------------------------------------------------------------
# Scenarios do what they declare
# ------------------------------------------------------------------------------------------------------------
SCENARIOS = """
name: effects
scenarios:
  - {id: inf, kind: infection, target: {resident: 0}, onset: day 3 08:00}
  - {id: copd, kind: copd_exacerbation, target: {condition: copd}, onset: day 3 08:00}
  - {id: uti, kind: uti, target: {living_alone: true}, onset: day 6 12:00}
  - {id: food, kind: not_eating, target: {living_alone: true}, onset: day 6 08:00}
  - {id: fall, kind: long_lie, target: {living_alone: true}, onset: day 5 02:40, progression: {duration: 6h}}
  - {id: cold, kind: cold_home, target: {living_alone: true}, onset: day 4 16:00}
  - {id: hot, kind: hot_home, target: {living_alone: true}, onset: day 4 10:00}
  - {id: better, kind: improving_nights, target: {living_alone: true}, onset: day 2 12:00}
  - id: batt
    kind: device_fault
    target: {household: 0, device: bathroom}
    onset: day 3 12:00
    fault: {kind: flat_battery, params: {start_pct: 30, hours_to_flat: 36}, replaced_after: 30h}
  - id: kitbatt
    kind: device_fault
    target: {site: 0, device: kit-01, device_kind: pulse_oximeter}
    onset: day 8 06:00
    fault: {kind: flat_battery, params: {hours_to_flat: 20}, replaced_after: 10h}
  - id: clock
    kind: device_fault
    target: {site: 0, device: kit-01, device_kind: thermometer}
    onset: day 2 00:00
    progression: {duration: 24h}
    fault: {kind: clock_wrong}
  - {id: down, kind: gateway_outage, target: {site: 0}, onset: day 4 01:00, progression: {duration: 4h}}
  - {id: blip, kind: gateway_outage, target: {household: 2}, onset: day 4 13:00, progression: {duration: 5m}}
"""
DAYS = 18


@pytest.fixture(scope="module")
def world_and_events() -> tuple[object, list]:
    scenarios = parse_scenario_file(SCENARIOS).scenarios
    world = build_world(seed=3, sites=[SiteSpec("ash", 30)], households=12, scenarios=scenarios, start=START)
    return world, list(world.events(START, START + timedelta(days=DAYS)))


def _target(world: object, scenario_id: str) -> str:
    return next(r["target"] for r in world.ground_truth() if r["scenario"] == scenario_id)  # type: ignore[attr-defined]


def _onset(world: object, scenario_id: str) -> datetime:
    return datetime.fromisoformat(next(r["onset"] for r in world.ground_truth()  # type: ignore[attr-defined]
                                       if r["scenario"] == scenario_id))


def _sensor(events: list, household: str) -> list[SensorEvent]:
    return [e for e in events if isinstance(e, SensorEvent) and e.household_id == household]


def _night_of(at: datetime) -> date | None:
    """The date of the evening a night-time (23:00-06:00 local) event belongs to; None by day."""
    local = at.astimezone(LONDON)
    if local.hour >= 23:
        return local.date()
    if local.hour < 6:
        return local.date() - timedelta(days=1)
    return None


def test_infection_raises_temperature_then_pulse_rr_and_confusion(world_and_events: tuple) -> None:
    world, events = world_and_events
    rid = _target(world, "inf")
    onset = _onset(world, "inf")
    resident = world.resident(rid)
    end = onset + timedelta(hours=48)
    mine = [e for e in events if isinstance(e, VitalSample | ManualObservation) and e.resident_id == rid]
    temps = [e.value for e in mine if isinstance(e, VitalSample) and e.metric is Metric.TEMPERATURE
             and end - timedelta(hours=12) <= e.at <= end]
    assert len(temps) >= 4
    assert np.mean(temps) >= resident.baseline.temperature + 1.5
    before = [e for e in mine if e.at < onset]
    late = [e for e in mine if end - timedelta(hours=12) <= e.at <= end]
    pulse = [e.value for e in late if isinstance(e, VitalSample) and e.metric is Metric.PULSE_RATE and not e.flags]
    assert np.mean(pulse) >= resident.baseline.pulse_rate + 15
    sbp = [e.value for e in late if isinstance(e, VitalSample) and e.metric is Metric.SYSTOLIC_BP]
    assert np.mean(sbp) <= resident.baseline.systolic_bp - 15
    manual_late = [e for e in late if isinstance(e, ManualObservation)]
    assert np.mean([e.respiration_rate for e in manual_late if e.respiration_rate is not None]) >= \
        resident.baseline.respiration_rate + 4
    assert sum(e.consciousness != "A" for e in manual_late) >= len(manual_late) / 2
    assert all(e.consciousness == "A" for e in before if isinstance(e, ManualObservation))
    # checked more often while unwell (concern, and the chart's follow-ups as far as the home keeps to them)
    per_day_before = sum(isinstance(e, ManualObservation) for e in before) / 2
    assert len(manual_late) / 0.5 > 1.5 * per_day_before
    assert {e.reason for e in manual_late} - {"round"}


def test_copd_exacerbation_drops_spo2_below_the_residents_band(world_and_events: tuple) -> None:
    world, events = world_and_events
    rid = _target(world, "copd")
    resident = world.resident(rid)
    assert Condition.COPD in resident.conditions
    onset = _onset(world, "copd")
    spo2 = [(e.at, e.value) for e in events if isinstance(e, VitalSample) and e.resident_id == rid
            and e.metric is Metric.SPO2 and not e.flags]
    before = [v for t, v in spo2 if t < onset]
    late = [v for t, v in spo2 if onset + timedelta(hours=18) <= t <= onset + timedelta(hours=48)]
    assert abs(np.median(before) - resident.baseline.spo2) <= 2.5  # the resident's own band (88-92% on Scale 2)
    assert np.mean(late) <= resident.baseline.spo2 - 4


def test_uti_doubles_night_bathroom_visits(world_and_events: tuple) -> None:
    world, events = world_and_events
    hid = _target(world, "uti")
    visits: dict[date, int] = defaultdict(int)
    for e in _sensor(events, hid):
        if e.sensor == "bathroom" and e.metric is Metric.MOTION and e.value == 1 and (n := _night_of(e.at)):
            visits[n] += 1
    baseline = np.mean([visits[date(2025, 1, d)] for d in range(6, 11)])  # nights before onset (day 6)
    during = np.mean([visits[date(2025, 1, d)] for d in (13, 14, 15)])  # nights in the hold
    assert during >= 3
    assert during >= 2 * baseline


def test_not_eating_empties_the_kitchen(world_and_events: tuple) -> None:
    world, events = world_and_events
    hid = _target(world, "food")
    per_day: dict[date, int] = defaultdict(int)
    for e in _sensor(events, hid):
        if e.value == 1 and (e.sensor == "fridge_door" or (e.sensor == "kettle" and e.metric is Metric.POWER_ON)):
            per_day[e.at.astimezone(LONDON).date()] += 1
    before = np.mean([per_day[date(2025, 1, d)] for d in range(7, 11)])
    during = np.mean([per_day[date(2025, 1, d)] for d in (14, 15)])
    assert before >= 4
    assert during <= 0.3 * before


def test_long_lie_means_no_motion_for_hours_after_entering_the_bathroom(world_and_events: tuple) -> None:
    world, events = world_and_events
    hid = _target(world, "fall")
    onset = _onset(world, "fall")
    motion = [e for e in _sensor(events, hid) if e.metric is Metric.MOTION and e.value == 1]
    entry = [e for e in motion if e.sensor == "bathroom" and abs((e.at - onset).total_seconds()) < 60]
    assert entry, "the fall starts with the person entering the bathroom"
    after = [e for e in motion if e.at > entry[-1].at]
    assert (after[0].at - entry[-1].at) >= timedelta(hours=5, minutes=50)
    doors = [e for e in _sensor(events, hid) if e.sensor == "front_door" and e.value == 1]
    assert any(abs((d.at - onset - timedelta(hours=6)).total_seconds()) < 60 for d in doors)  # found


def _room_temps(events: list, hid: str, lo: datetime, hi: datetime) -> list[float]:
    return [e.value for e in _sensor(events, hid)
            if e.metric is Metric.ROOM_TEMPERATURE and e.sensor == "living_climate" and lo <= e.at < hi]


def test_cold_and_hot_homes(world_and_events: tuple) -> None:
    world, events = world_and_events
    cold, hot = _target(world, "cold"), _target(world, "hot")
    cold_on, hot_on = _onset(world, "cold"), _onset(world, "hot")
    assert min(_room_temps(events, cold, cold_on - timedelta(days=2), cold_on)) >= 16
    assert min(_room_temps(events, cold, cold_on, cold_on + timedelta(hours=18))) < 16
    assert max(_room_temps(events, hot, hot_on - timedelta(days=2), hot_on)) <= 27
    assert max(_room_temps(events, hot, hot_on, hot_on + timedelta(hours=18))) > 27
    # and they recover when the scenario is over
    assert min(_room_temps(events, cold, cold_on + timedelta(days=4), cold_on + timedelta(days=6))) > 15


def test_improving_nights_become_uninterrupted(world_and_events: tuple) -> None:
    world, events = world_and_events
    hid = _target(world, "better")
    restless: dict[date, int] = defaultdict(int)
    for e in _sensor(events, hid):
        if e.metric is Metric.MOTION and e.value == 1 and e.sensor != "bedroom_motion" and (n := _night_of(e.at)):
            restless[n] += 1
    early = np.mean([restless[date(2025, 1, d)] for d in (6, 7)])
    late = np.mean([restless[date(2025, 1, d)] for d in range(17, 23)])
    assert early >= 3
    assert late <= 0.25 * early


def test_flat_battery_reports_low_then_goes_silent_until_replaced(world_and_events: tuple) -> None:
    world, events = world_and_events
    row = next(r for r in world.ground_truth() if r["scenario"] == "batt")
    hid = row["site"]
    dead_at = datetime.fromisoformat(row["detail"]["dead_at"])
    back_at = dead_at + timedelta(hours=30)
    bath = [e for e in _sensor(events, hid) if e.sensor == "bathroom"]
    battery = [e for e in bath if e.metric is Metric.BATTERY and e.at < dead_at]
    assert min(e.value for e in battery) <= 20
    assert not [e for e in bath if dead_at <= e.at < back_at]
    after = [e for e in bath if e.at >= back_at]
    assert any(e.metric is Metric.MOTION for e in after)
    assert next(e.value for e in after if e.metric is Metric.BATTERY) >= 99
    faults = [e for e in events if isinstance(e, DeviceFault) and e.scenario_id == "batt"]
    assert len(faults) == 1 and faults[0].device.role == "bathroom"
    assert [r["expected_alert"] for r in world.ground_truth() if r["scenario"] == "batt"] == [
        "battery_low", "device_silent"]


def test_flat_kit_oximeter_stops_its_readings_only(world_and_events: tuple) -> None:
    world, events = world_and_events
    onset = _onset(world, "kitbatt")
    dead, back = onset + timedelta(hours=20), onset + timedelta(hours=30)
    kit1 = [e for e in events if isinstance(e, VitalSample) and e.device == "kit-01" and dead <= e.at < back]
    assert not [e for e in kit1 if e.device_kind is DeviceKind.PULSE_OXIMETER]
    assert [e for e in kit1 if e.device_kind is DeviceKind.BP_CUFF]
    other = [e for e in events if isinstance(e, VitalSample) and e.device == "kit-02" and dead <= e.at < back]
    assert [e for e in other if e.device_kind is DeviceKind.PULSE_OXIMETER]


def test_fault_and_outage_events_and_ground_truth(world_and_events: tuple, tmp_path: object) -> None:
    world, events = world_and_events
    outages = [e for e in events if isinstance(e, GatewayOutage)]
    assert {(o.scenario_id, o.site_id) for o in outages} == {("down", "ash"), ("blip", _target(world, "blip"))}
    clock = [e for e in events if isinstance(e, DeviceFault) and e.scenario_id == "clock"]
    assert clock[0].params["skew_s"] < 0 and clock[0].until == clock[0].at + timedelta(hours=24)
    truth = world.ground_truth()
    ids = [r["id"] for r in truth]
    assert len(ids) == len(set(ids))
    for r in truth:
        assert r["expected_alert"] is None or r["expected_alert"] in {a.value for a in AlertKind}
        assert r["expected_by"] >= r["onset"]
    by_id = {r["id"]: r for r in truth}
    assert by_id["inf"]["expected_alert"] == "news2"
    assert by_id["copd"]["expected_alert"] == "spo2_below_baseline"
    assert by_id["down"]["expected_alert"] == "gateway_offline"
    assert by_id["blip"]["expected_alert"] is None and by_id["blip"]["must_not"] == ["gateway_offline"]
    assert by_id["down"]["detail"]["readings_lost_expected"] == 0
    path = world.write_ground_truth(tmp_path / "truth.jsonl")  # type: ignore[operator]
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(truth))


def test_targets_that_do_not_exist_are_refused() -> None:
    def build(body: str) -> None:
        build_world(seed=1, sites=[SiteSpec("oak", 3)], households=1, start=START,
                    scenarios=parse_scenario_file(_yaml(body)).scenarios)

    with pytest.raises(ScenarioError, match="resident index 9 out of range"):
        build("  - {id: a, kind: infection, onset: 2h, target: {resident: 9}}")
    with pytest.raises(ScenarioError, match="no resident 'res-elm-01'"):
        build("  - {id: a, kind: infection, onset: 2h, target: {resident: res-elm-01}}")
    with pytest.raises(ScenarioError, match="no household 'hh-07'"):
        build("  - {id: a, kind: uti, onset: 2h, target: {household: hh-07}}")
    with pytest.raises(ScenarioError, match="kit-05"):
        build("  - {id: a, kind: device_fault, onset: 2h, target: {site: oak, device: kit-05, "
              "device_kind: bp_cuff}, fault: {kind: clock_unset}}")
    with pytest.raises(ScenarioError, match="no sensor 'toaster'"):
        build("  - {id: a, kind: device_fault, onset: 2h, target: {household: 0, device: toaster}, "
              "fault: {kind: garbage_frames}}")


def test_flat_battery_silence_is_expected_only_after_the_device_kind_may_be_quiet(world_and_events: tuple) -> None:
    """device_silent is due once the dead device has been quiet longer than its kind normally is (bathroom
    sensor 6 h) plus an hour; a kit oximeter replaced before its 36 h is up is never expected to be silent."""
    from carewatch.scoring.rules import EXPECTED_INTERVAL

    world, _ = world_and_events
    rows = {r["id"]: r for r in world.ground_truth()}
    onset = datetime.fromisoformat(rows["batt#2"]["onset"])
    assert datetime.fromisoformat(rows["batt#2"]["expected_by"]) == (
        onset + timedelta(hours=36) + EXPECTED_INTERVAL["bathroom_sensor"] + timedelta(hours=1))
    kit = [r["expected_alert"] for r in world.ground_truth() if r["scenario"] == "kitbatt"]
    assert kit == ["battery_low"]  # replaced after 10 h: never silent for the 36 h a spot-check device may be
