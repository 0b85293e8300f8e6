"""The world: population records, determinism, stability when growing, laziness and time order."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import ManualObservation, VitalSample
from carewatch.firmware_sim.scenarios import DeviceFault, GatewayOutage, load_scenarios
from carewatch.firmware_sim.world import (
    SiteSpec,
    build_world,
    is_valid_nhs_number,
    nhs_check_digit,
    nhs_number,
)

START = datetime(2025, 3, 28, 18, 0, tzinfo=UTC)  # spans the UK clocks going forward (30 March)


def _small(seed: int, residents: int = 6, households: int = 2) -> object:
    return build_world(seed=seed, sites=[SiteSpec("oak", residents), SiteSpec("elm", 4)], households=households,
                       scenarios=load_scenarios("demo"), start=START)


def _events(world: object, days: float = 3) -> list:
    return list(world.events(START, START + timedelta(days=days)))  # type: ignore[attr-defined]


def test_nhs_numbers_are_valid_unique_and_in_the_test_range() -> None:
    assert nhs_check_digit("943476591") == 9  # 943 476 5919 is the NHS's published example
    assert is_valid_nhs_number("943 476 5919") and not is_valid_nhs_number("9434765918")
    numbers = [nhs_number(i, seed=4) for i in range(20_000)]
    assert len(set(numbers)) == len(numbers)
    assert all(n.startswith("999") and len(n) == 10 and is_valid_nhs_number(n) for n in numbers)
    with pytest.raises(ValueError):
        nhs_number(900_000, seed=4)


def test_resident_and_household_records() -> None:
    world = build_world(seed=2, sites=[SiteSpec(f"s{i}", 120) for i in range(3)], households=30, scenarios=[],
                        start=START)
    records = world.records()
    residents = records["residents"]
    assert len(residents) == 360
    assert residents[0]["id"] == "res-s0-01" and residents[119]["id"] == "res-s0-120"
    assert len({r["nhs_number"] for r in residents}) == 360
    for r in residents:
        assert is_valid_nhs_number(r["nhs_number"])
        assert len(r["display_name"].split()) == 2
        age = (START.date() - datetime.fromisoformat(r["date_of_birth"]).date()).days / 365.25
        assert 65 < age < 105
        assert r["gp_practice_code"][0].isalpha() and r["gp_practice_code"][1:].isdigit()
        assert r["obs_per_day"] in (1, 2, 4)
        assert not r["scale2"] or "copd" in r["conditions"]  # Scale 2 only with a hypercapnic COPD target
        assert isinstance(r["on_oxygen"], bool)
        assert r["baseline_confused"] == ("dementia" in r["conditions"])
    dementia = sum("dementia" in r["conditions"] for r in residents) / 360
    assert 0.6 < dementia < 0.8
    households = records["households"]
    assert [h["id"] for h in households[:3]] == ["hh-01", "hh-02", "hh-03"]
    assert all(h["people"] in (1, 2) and h["council"] and h["name"] for h in households)
    kinds = Counter(d["device_kind"] for d in records["devices"])
    assert kinds["pulse_oximeter"] == 3 * 10  # one kit per 12 residents
    assert kinds["motion_sensor"] == 30 * 4


def test_same_seed_same_events_different_seed_different_events() -> None:
    a, b, c = _events(_small(5)), _events(_small(5)), _events(_small(6))
    assert a == b
    assert a != c
    assert _small(5).ground_truth() == _small(5).ground_truth()  # type: ignore[attr-defined]


def test_adding_residents_and_households_leaves_existing_ones_unchanged() -> None:
    few, many = _small(8, residents=4, households=1), _small(8, residents=9, households=3)
    assert [r.record() for r in few.residents[:4]] == [r.record() for r in many.residents[:4]]  # type: ignore[attr-defined]

    def keep(events: list) -> list:
        return [e for e in events if (getattr(e, "resident_id", "").startswith(("res-oak-0",))
                and int(e.resident_id.rsplit("-", 1)[1]) <= 4) or getattr(e, "household_id", None) == "hh-01"]

    assert keep(_events(few, 2)) == keep(_events(many, 2))


def test_events_are_in_time_order_across_dst_and_cover_every_type() -> None:
    world = _small(9)
    events = _events(world, 4)
    times = [e.at for e in events]
    assert times == sorted(times)
    assert times[0] >= START and times[-1] < START + timedelta(days=4)
    types = Counter(type(e) for e in events)
    assert types[VitalSample] and types[ManualObservation] and types[SensorEvent]
    # rounds stay at local wall-clock times on both sides of the DST change
    from zoneinfo import ZoneInfo

    london = ZoneInfo("Europe/London")
    hours = Counter(e.at.astimezone(london).hour for e in events if isinstance(e, ManualObservation))
    assert sum(hours[h] for h in range(0, 6)) < 0.1 * sum(hours.values())


def test_a_sub_range_is_a_slice_of_the_whole() -> None:
    world = _small(10)
    whole = _events(world, 3)
    lo, hi = START + timedelta(hours=30), START + timedelta(hours=50)
    part = list(world.events(lo, hi))  # type: ignore[attr-defined]
    expected = [e for e in whole if lo <= e.at < hi]
    assert [e for e in part if not isinstance(e, SensorEvent)] == [
        e for e in expected if not isinstance(e, SensorEvent)]
    assert len(part) == pytest.approx(len(expected), rel=0.01)


def test_streaming_is_lazy() -> None:
    world = build_world(seed=1, sites=[SiteSpec(f"s{i}", 100) for i in range(10)], households=50,
                        scenarios=[], start=START)
    began = time.perf_counter()
    first = list(itertools.islice(world.events(START, START + timedelta(days=365)), 1000))
    assert len(first) == 1000
    assert time.perf_counter() - began < 30  # one simulated day per entity, not a year


def test_scenario_events_and_ground_truth_for_the_month_file() -> None:
    world = build_world(seed=3, sites=[SiteSpec("oak", 40)], households=10, scenarios=load_scenarios("month"),
                        start=datetime(2025, 1, 6, tzinfo=UTC))
    truth = world.ground_truth()
    assert {r["kind"] for r in truth} >= {"infection", "uti", "long_lie", "device_fault", "gateway_outage"}
    targets = {r["scenario"]: r["target"] for r in truth}
    household_kinds = [r for r in truth if r["target_type"] == "household"]
    assert len({r["target"] for r in household_kinds}) == len(household_kinds)  # spread over households
    assert targets["copd-1"] in {r.id for r in world.residents if r.scale2}
    events = list(world.events(world.start, world.start + timedelta(days=30)))
    faults = [e for e in events if isinstance(e, DeviceFault | GatewayOutage)]
    assert {e.scenario_id for e in faults} == {r["scenario"] for r in truth if r["kind"] in (
        "device_fault", "gateway_outage")}


def test_bad_world_arguments() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_world(seed=1, sites=[], households=1, scenarios=[], start=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="unique"):
        build_world(seed=1, sites=[SiteSpec("a", 1), SiteSpec("a", 2)], households=0, scenarios=[], start=START)
    with pytest.raises(ValueError, match="end time"):
        _small(1).events(START)  # type: ignore[attr-defined]
