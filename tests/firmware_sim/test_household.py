"""Households: the activity model, BTHome-like PIR behaviour, doors, kettle and the climate model."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from carewatch.firmware_sim.household import SENSORS, SensorEvent, pir_transitions
from carewatch.firmware_sim.world import build_world
from carewatch.wire import Metric, check_plausible

LONDON = ZoneInfo("Europe/London")
WINTER = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday


@pytest.fixture(scope="module")
def fortnight() -> tuple[object, list[SensorEvent]]:
    world = build_world(seed=21, sites=[], households=6, scenarios=[], start=WINTER)
    return world, list(world.events(WINTER, WINTER + timedelta(days=14)))


def test_pir_gives_one_on_off_pair_per_burst() -> None:
    ons, offs, pending = pir_transitions(np.array([0.0, 10.0, 20.0, 500.0]), None, 120.0, 10_000.0)
    assert ons.tolist() == [0.0, 500.0]
    assert offs.tolist() == [140.0, 620.0]
    assert pending is None
    # a burst still running at the window's end carries over and clears in the next window
    ons, offs, pending = pir_transitions(np.array([950.0]), None, 120.0, 1000.0)
    assert ons.tolist() == [950.0] and offs.tolist() == [] and pending == 950.0
    ons, offs, pending = pir_transitions(np.array([1030.0, 1500.0]), pending, 120.0, 5000.0)
    assert ons.tolist() == [1500.0]  # 1030 continues the carried burst
    assert offs.tolist() == [1150.0, 1620.0]
    ons, offs, pending = pir_transitions(np.empty(0), 4950.0, 120.0, 5000.0)
    assert pending == 4950.0
    ons, offs, pending = pir_transitions(np.empty(0), pending, 120.0, 9000.0)
    assert offs.tolist() == [5070.0] and pending is None


def test_sensor_events_match_the_sensor_table_and_are_plausible(fortnight: tuple) -> None:
    _, events = fortnight
    assert events
    for e in events:
        spec = SENSORS[e.sensor]
        assert e.device_kind is spec.device_kind
        assert e.metric in spec.metrics or (e.metric is Metric.BATTERY and spec.battery)
        check_plausible(e.metric, e.value)
    times = [e.at for e in events]
    assert times == sorted(times)


def test_motion_alternates_on_off_and_is_not_a_flood(fortnight: tuple) -> None:
    _world, events = fortnight
    last: dict[tuple[str, str], float] = {}
    per_hour: Counter[tuple[str, datetime]] = Counter()
    for e in events:
        if e.metric is Metric.MOTION:
            key = (e.household_id, e.sensor)
            assert last.get(key) != e.value, f"{key} repeated motion={e.value} at {e.at}"
            last[key] = e.value
            per_hour[(e.household_id, e.at.replace(minute=0, second=0, microsecond=0))] += 1
    assert max(per_hour.values()) < 120
    per_day = sum(per_hour.values()) / (6 * 14)
    assert 50 < per_day < 800


def test_doors_and_kettle_open_then_close(fortnight: tuple) -> None:
    _, events = fortnight
    state: dict[tuple[str, str, Metric], float] = {}
    for e in events:
        if e.metric in (Metric.DOOR_OPEN, Metric.POWER_ON):
            key = (e.household_id, e.sensor, e.metric)
            assert state.get(key, 0.0) != e.value or e.value == 0.0
            state[key] = e.value
    kettle = [e for e in events if e.sensor == "kettle" and e.metric is Metric.POWER and e.value > 0]
    assert all(2000 < e.value < 3200 for e in kettle)
    per_day = len(kettle) / (6 * 14)
    assert 2 < per_day < 12  # tea several times a day


def _local_hour(e: SensorEvent) -> float:
    at = e.at.astimezone(LONDON)
    return at.hour + at.minute / 60


def test_daily_rhythm_sleep_meals_and_night_toileting(fortnight: tuple) -> None:
    _, events = fortnight
    on = [e for e in events if e.metric is Metric.MOTION and e.value == 1]
    kitchen_by_hour = Counter(int(_local_hour(e)) for e in on if e.sensor == "kitchen_motion")
    night_kitchen = sum(kitchen_by_hour[h] for h in (1, 2, 3, 4))
    day_kitchen = sum(kitchen_by_hour[h] for h in (8, 12, 13, 17, 18))
    assert day_kitchen > 10 * max(night_kitchen, 1)
    # some, but not many, night-time bathroom visits (older adults get up about once a night)
    night_bath = [e for e in on if e.sensor == "bathroom" and 1 <= _local_hour(e) < 5]
    per_night = len(night_bath) / (6 * 14)
    assert 0.1 < per_night < 2.5
    # bedroom is where the nights are spent
    night = [e for e in on if 1 <= _local_hour(e) < 5]
    assert Counter(e.sensor for e in night).most_common(1)[0][0] == "bedroom_motion"


def test_days_vary_and_people_go_out(fortnight: tuple) -> None:
    _world, events = fortnight
    first_kitchen: dict[str, list[float]] = defaultdict(list)
    seen: set[tuple[str, object]] = set()
    for e in events:
        if e.sensor == "kitchen_motion" and e.value == 1 and 5 <= _local_hour(e) < 12:
            key = (e.household_id, e.at.astimezone(LONDON).date())
            if key not in seen:
                seen.add(key)
                first_kitchen[e.household_id].append(_local_hour(e))
    assert all(np.std(v) > 0.1 for v in first_kitchen.values() if len(v) > 5)
    daytime_door = [e for e in events if e.sensor == "front_door" and e.value == 1 and 9 <= _local_hour(e) < 18]
    assert len(daytime_door) > 6 * 14 * 0.3


def test_climate_reports_every_ten_minutes_and_heating_warms_the_home(fortnight: tuple) -> None:
    _, events = fortnight
    living = [e for e in events if e.sensor == "living_climate" and e.metric is Metric.ROOM_TEMPERATURE]
    by_house: dict[str, list[SensorEvent]] = defaultdict(list)
    for e in living:
        by_house[e.household_id].append(e)
    for samples in by_house.values():
        gaps = {round((b.at - a.at).total_seconds()) for a, b in itertools.pairwise(samples)}
        assert gaps <= {600, 599, 601}
        evening = [e.value for e in samples if 19 <= _local_hour(e) < 21]
        small_hours = [e.value for e in samples if 4 <= _local_hour(e) < 5]
        assert np.mean(evening) > np.mean(small_hours) + 0.5  # heating on in the evening, off at night
        assert min(e.value for e in samples) > 15.5 and max(e.value for e in samples) < 27
    humidity = [e.value for e in events if e.metric is Metric.HUMIDITY]
    assert 25 < np.mean(humidity) < 80


def test_batteries_report_and_drain_slowly(fortnight: tuple) -> None:
    _, events = fortnight
    battery: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.metric is Metric.BATTERY:
            battery[(e.household_id, e.sensor)].append(e.value)
    assert len(battery) == 6 * sum(s.battery for s in SENSORS.values())
    for values in battery.values():
        assert len(values) >= 14 * 3
        assert values[0] - values[-1] <= 2  # coin cells last years


def test_kettle_plug_reports_its_power_periodically_so_it_is_never_silent_for_an_hour(fortnight: tuple) -> None:
    """A mains plug reports 0 W while idle (the platform's device_silent expects a plug every hour)."""
    _, events = fortnight
    by_house: dict[str, list[SensorEvent]] = defaultdict(list)
    for e in events:
        if e.sensor == "kettle":
            by_house[e.household_id].append(e)
    for samples in by_house.values():
        gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(samples)]
        assert max(gaps) <= 15 * 60 + 10  # a report due during a boil is carried by the boil itself
        idle = [e for e in samples if e.metric is Metric.POWER and e.value == 0.0]
        assert len(idle) >= 14 * 24 * 3  # about four an hour


def test_most_homes_are_heated_through_the_day_and_some_ration(fortnight: tuple) -> None:
    from carewatch.firmware_sim.household import ALL_DAY_HEATING, HomeProfile

    periods = [len(HomeProfile.draw(np.random.default_rng([5, i])).heating_periods) for i in range(400)]
    share = periods.count(1) / len(periods)
    assert abs(share - ALL_DAY_HEATING) < 0.08 and 2 in periods
    world, events = fortnight
    # an all-day home keeps its living room warm at midday
    all_day = [h.id for h in world.households if len(h.home.heating_periods) == 1]
    assert all_day
    midday = [e.value for e in events if e.household_id == all_day[0] and e.sensor == "living_climate"
              and e.metric is Metric.ROOM_TEMPERATURE and 12 <= _local_hour(e) < 14]
    assert min(midday) >= 18.0


def test_weekends_start_later_and_bring_family_visits() -> None:
    """People get up later at weekends (kitchen first used later) and family call on Saturday or Sunday
    afternoons (more front-door openings then than on weekday afternoons)."""
    world = build_world(seed=31, sites=[], households=20, scenarios=[], start=WINTER)
    first_kitchen: dict[bool, dict[tuple[str, object], float]] = {True: {}, False: {}}
    afternoon_door: Counter[bool] = Counter()
    days: Counter[bool] = Counter()
    for e in world.events(WINTER, WINTER + timedelta(days=21)):
        if not isinstance(e, SensorEvent) or e.value != 1:
            continue
        local = e.at.astimezone(LONDON)
        weekend, hour = local.weekday() >= 5, _local_hour(e)
        if e.sensor == "kitchen_motion" and 5 <= hour < 12:
            first_kitchen[weekend].setdefault((e.household_id, local.date()), hour)
        elif e.sensor == "front_door" and 13 <= hour < 18:
            afternoon_door[weekend] += 1
    for start in (WINTER + timedelta(days=d) for d in range(21)):
        days[start.weekday() >= 5] += 1
    later_min = 60 * (np.mean(list(first_kitchen[True].values())) - np.mean(list(first_kitchen[False].values())))
    assert later_min > 8
    assert afternoon_door[True] / days[True] > 1.25 * afternoon_door[False] / days[False]
