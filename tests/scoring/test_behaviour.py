"""Home sensors: episodes, behaviour events and the household welfare rules (all pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from carewatch.alerts import AlertKind, Severity
from carewatch.scoring import behaviour as bh
from carewatch.scoring.behaviour import BehaviourEvent, HouseholdData, RoomTemperature, SensorReading
from carewatch.scoring.rules import LOCAL_TZ

# 2026-01-15 is in GMT, so local time == UTC: times below read naturally.
DAY = date(2026, 1, 15)


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=LOCAL_TZ).astimezone(UTC)


def household(**kw: object) -> HouseholdData:
    base: dict = dict(
        site_id="hh-1", name="Flat 1", events=[], roles=frozenset({"bathroom", "kitchen", "fridge", "front_door"}),
        has_other_motion=True, last_motion_at=None, last_motion_role=None, first_motion_by_day={},
        nights_heard=frozenset(), last_heard=None, room_temperatures=[],
    )
    base.update(kw)
    return HouseholdData(**base)


def visits(day: date, n: int, hour: int = 2) -> list[BehaviourEvent]:
    return [BehaviourEvent("bathroom_visit", at(day, hour, 10 * i), at(day, hour, 10 * i + 3)) for i in range(n)]


# --- episodes and events -------------------------------------------------------------------------------------
def test_episodes_merge_close_on_readings_and_end_at_the_next_off() -> None:
    t = np.array([0, 60, 120, 200, 5000, 5100], dtype=float)
    on = np.array([True, True, False, False, True, True])
    assert bh.episodes(t, on, merge_gap=600) == [(0.0, 120.0), (5000.0, 5100.0)]
    assert bh.episodes(np.array([0.0]), np.array([False]), 600) == []


def test_role_of_reads_role_then_room() -> None:
    assert bh.role_of("fridge_door", "kitchen") == "fridge"
    assert bh.role_of(None, "Kitchen") == "kitchen"
    assert bh.role_of("front_door", None) == "front_door"
    assert bh.role_of(None, "En-suite toilet") == "bathroom"
    assert bh.role_of("lounge", None) is None


def _sr(device: str, role: str | None, metric: str, value: float, when: datetime) -> SensorReading:
    return SensorReading(device, role, metric, value, when)


def test_derive_bathroom_visits_kettle_and_night_activity() -> None:
    night = DAY
    readings = [
        _sr("m-bath", "bathroom", "motion", 1, at(night, 2, 0)),
        _sr("m-bath", "bathroom", "motion", 1, at(night, 2, 5)),
        _sr("m-bath", "bathroom", "motion", 0, at(night, 2, 8)),
        _sr("m-bed", "bedroom", "motion", 1, at(night, 1, 58)),  # walking to the bathroom: part of the trip
        _sr("m-bed", "bedroom", "motion", 1, at(night, 4, 0)),  # up and about at 04:00: night activity
        _sr("plug-k", "kettle", "power", 2000, at(night, 8, 0)),
        _sr("plug-k", "kettle", "power", 0, at(night, 8, 3)),
    ]
    events = bh.derive_events(readings, at(night, 12))
    kinds = sorted(e.kind for e in events)
    assert kinds == ["bathroom_visit", "kettle_use", "night_activity", "night_activity"]
    visit = next(e for e in events if e.kind == "bathroom_visit")
    assert (visit.started_at, visit.ended_at) == (at(night, 2, 0), at(night, 2, 8))
    trips = sorted((e.started_at, e.detail["bathroom_trip"]) for e in events if e.kind == "night_activity")
    assert trips == [(at(night, 1, 58), True), (at(night, 4, 0), False)]


def test_front_door_direction() -> None:
    d = DAY
    leaving = [_sr("m-hall", None, "motion", 1, at(d, 10, 0)),
               _sr("door", "front_door", "door_open", 1, at(d, 10, 5)),
               _sr("door", "front_door", "door_open", 0, at(d, 10, 6))]
    out = bh.derive_events(leaving, at(d, 10, 30))
    assert [e.detail["direction"] for e in out if e.kind == "front_door"] == ["exit"]
    pending = bh.derive_events(leaving, at(d, 10, 10))
    assert [e.detail["direction"] for e in pending if e.kind == "front_door"] == ["pending"]
    back = [_sr("door", "front_door", "door_open", 1, at(d, 15, 0)),
            _sr("door", "front_door", "door_open", 0, at(d, 15, 1)),
            _sr("m-hall", None, "motion", 1, at(d, 15, 3))]
    assert [e.detail["direction"] for e in bh.derive_events(back, at(d, 16)) if e.kind == "front_door"] == ["return"]


# --- night-time bathroom visits ------------------------------------------------------------------------------
def _bathroom_history(recent: tuple[int, int], usual: int = 1, nights: int = 14) -> HouseholdData:
    last = DAY
    events: list[BehaviourEvent] = []
    heard = set()
    for i in range(nights + 2):
        night = last - timedelta(days=i)
        heard.add(night)
        count = recent[1 - i] if i < 2 else usual
        events += visits(night, count)
    return household(events=events, nights_heard=frozenset(heard))


@pytest.mark.parametrize(("recent", "state"), [((3, 3), "raise"), ((3, 2), "clear"), ((2, 3), "clear"),
                                               ((1, 1), "clear"), ((1, 4), "clear"), ((1, 5), "raise")])
def test_night_bathroom_two_nights_above_or_one_night_markedly_above(recent: tuple[int, int], state: str) -> None:
    h = _bathroom_history(recent, usual=1)
    f = bh.night_bathroom_finding(h, at(DAY, 7))
    assert f.state == state
    if state == "raise":
        assert f.kind is AlertKind.NIGHT_BATHROOM and "usually 1" in f.reason


def test_night_bathroom_holds_without_enough_baseline_nights() -> None:
    h = _bathroom_history((4, 4), nights=6)
    assert bh.night_bathroom_finding(h, at(DAY, 7)).state == "hold"


def test_night_is_not_complete_before_six() -> None:
    h = _bathroom_history((3, 3))
    # at 05:00 the last complete night is the previous one, whose "recent" pair is (usual, 3)
    assert bh.night_bathroom_finding(h, at(DAY, 5)).state == "clear"


# --- kitchen, morning, long lie -----------------------------------------------------------------------------
def test_kitchen_inactivity_counts_waking_hours_only() -> None:
    last_tea = BehaviourEvent("kettle_use", at(DAY, 21, 0), at(DAY, 21, 5))
    h = household(events=[last_tea], data_since=at(DAY, 0))
    nxt = DAY + timedelta(days=1)
    # 21:05-22:00 = 0.92 h, then 07:00-14:00 = 7 h -> 7.9 h: not yet
    assert bh.kitchen_inactivity_finding(h, at(nxt, 14, 0)).state == "clear"
    f = bh.kitchen_inactivity_finding(h, at(nxt, 15, 0))
    assert f.state == "raise" and f.severity is Severity.MEDIUM


def test_kitchen_inactivity_holds_without_any_kitchen_event_on_record() -> None:
    h = household(data_since=at(DAY - timedelta(days=10), 0))
    assert bh.kitchen_inactivity_finding(h, at(DAY, 20)).state == "hold"


def test_kitchen_inactivity_holds_when_person_is_out() -> None:
    out = BehaviourEvent("front_door", at(DAY, 9), at(DAY, 9, 1), detail={"direction": "exit"})
    tea = BehaviourEvent("kettle_use", at(DAY - timedelta(days=1), 8), at(DAY - timedelta(days=1), 8, 5))
    h = household(events=[tea, out], data_since=at(DAY - timedelta(days=2), 0), last_motion_at=at(DAY, 8, 59))
    assert bh.kitchen_inactivity_finding(h, at(DAY, 20)).state == "hold"


def test_waking_hours_between() -> None:
    assert bh.waking_hours_between(at(DAY, 6), at(DAY, 8)) == pytest.approx(1.0)
    assert bh.waking_hours_between(at(DAY, 21), at(DAY + timedelta(days=1), 8)) == pytest.approx(2.0)


def _mornings(days: int, hh: int = 7, mm: int = 30) -> dict[date, datetime]:
    return {DAY - timedelta(days=i): at(DAY - timedelta(days=i), hh, mm) for i in range(1, days + 1)}


def test_no_morning_activity_after_usual_wake_plus_grace() -> None:
    h = household(first_motion_by_day=_mornings(7), last_motion_at=at(DAY - timedelta(days=1), 22))
    assert bh.no_morning_activity_finding(h, at(DAY, 9, 0)).state == "hold"  # 07:30 + 90 min = 09:00
    f = bh.no_morning_activity_finding(h, at(DAY, 9, 1))
    assert f.state == "raise" and "07:30" in f.reason
    up = replace(h, first_motion_by_day={**h.first_motion_by_day, DAY: at(DAY, 9, 30)})
    assert bh.no_morning_activity_finding(up, at(DAY, 9, 31)).state == "clear"


def test_no_morning_activity_needs_a_baseline() -> None:
    h = household(first_motion_by_day=_mornings(4))
    assert bh.no_morning_activity_finding(h, at(DAY, 12)).state == "hold"


def test_long_bathroom_stay() -> None:
    h = household(last_motion_at=at(DAY, 10), last_motion_role="bathroom")
    assert bh.long_bathroom_stay_finding(h, at(DAY, 10, 44)).state == "hold"
    f = bh.long_bathroom_stay_finding(h, at(DAY, 10, 45))
    assert f.state == "raise" and f.severity is Severity.HIGH
    moved = replace(h, last_motion_role="kitchen")
    assert bh.long_bathroom_stay_finding(moved, at(DAY, 11)).state == "clear"
    only_bathroom_sensor = replace(h, has_other_motion=False)
    assert bh.long_bathroom_stay_finding(only_bathroom_sensor, at(DAY, 12)).state == "hold"


def test_long_lie_anywhere_counts_waking_hours_after_motion_outside_the_bedroom() -> None:
    """H-HOME-09: no motion anywhere for the configured time of waking hours, last seen outside the bedroom."""
    h = household(last_motion_at=at(DAY, 10), last_motion_role=None)  # a lounge sensor has no behaviour role
    assert bh.long_lie_finding(h, at(DAY, 11, 59)).state == "clear"
    f = bh.long_lie_finding(h, at(DAY, 12, 0))
    assert f.state == "raise" and f.severity is Severity.HIGH and "10:00" in f.reason
    kitchen = replace(h, last_motion_role="kitchen")
    assert bh.long_lie_finding(kitchen, at(DAY, 12, 1)).state == "raise"
    configured = replace(h, long_lie_after=timedelta(minutes=45))
    assert bh.long_lie_finding(configured, at(DAY, 10, 45)).state == "raise"
    # waking hours only: last seen at 21:30, nothing overnight, 1 h 30 of waking time by 08:00
    evening = replace(h, last_motion_at=at(DAY, 21, 30))
    assert bh.long_lie_finding(evening, at(DAY + timedelta(days=1), 8, 0)).state == "clear"
    assert bh.long_lie_finding(evening, at(DAY + timedelta(days=1), 8, 31)).state == "raise"
    # asleep in the bedroom, in the bathroom (its own 45-min rule), gone out, hub offline: held
    assert bh.long_lie_finding(replace(h, last_motion_role="bedroom"), at(DAY, 13)).state == "hold"
    assert bh.long_lie_finding(replace(h, last_motion_role="bathroom"), at(DAY, 13)).state == "hold"
    out = replace(h, events=[BehaviourEvent("front_door", at(DAY, 10, 5), at(DAY, 10, 6), None,
                                            {"direction": "exit"})])
    assert bh.long_lie_finding(out, at(DAY, 13)).state == "hold"
    assert bh.long_lie_finding(replace(h, gateway_offline=True), at(DAY, 13)).state == "hold"
    assert bh.long_lie_finding(replace(h, has_other_motion=False), at(DAY, 13)).state == "hold"
    assert any(f.kind is AlertKind.LONG_LIE for f in bh.household_findings(h, at(DAY, 13)))


def test_out_and_not_back_by_the_household_s_time() -> None:
    """H-HOME-10: a front-door exit with no return by the configured evening time (or an hour after a late exit)."""
    exit_at = BehaviourEvent("front_door", at(DAY, 15), at(DAY, 15, 1), None, {"direction": "exit"})
    h = household(events=[exit_at], last_motion_at=at(DAY, 14, 55), last_motion_role="kitchen")
    assert bh.out_not_back_finding(h, at(DAY, 20, 59)).state == "hold"
    f = bh.out_not_back_finding(h, at(DAY, 21, 0))
    assert f.state == "raise" and f.severity is Severity.MEDIUM and "15:01" in f.reason
    assert bh.out_not_back_finding(h, at(DAY, 23, 30)).severity is Severity.HIGH
    assert bh.out_not_back_finding(replace(h, home_by=bh.time(18, 0)), at(DAY, 18, 0)).state == "raise"
    back = replace(h, last_motion_at=at(DAY, 19))
    assert bh.out_not_back_finding(back, at(DAY, 21, 30)).state == "clear"
    late = replace(h, events=[BehaviourEvent("front_door", at(DAY, 23), at(DAY, 23, 1), None,
                                             {"direction": "exit"})])
    assert bh.out_not_back_finding(late, at(DAY + timedelta(days=1), 0, 0)).state == "hold"
    assert bh.out_not_back_finding(late, at(DAY + timedelta(days=1), 0, 2)).state == "raise"
    assert bh.out_not_back_finding(replace(h, gateway_offline=True), at(DAY, 22)).state == "hold"
    # it no longer holds the activity rules silently: the household gets an incident for being out
    assert any(f.kind is AlertKind.OUT_NOT_BACK and f.state == "raise" for f in bh.household_findings(h, at(DAY, 22)))


# --- rooms, silence, care review -----------------------------------------------------------------------------
def _temps(values: list[float], room: str = "lounge", end: datetime | None = None) -> list[RoomTemperature]:
    end = end or at(DAY, 12)
    return [RoomTemperature(f"t-{room}", room, end - timedelta(minutes=20 * i), v)
            for i, v in enumerate(reversed(values))]


@pytest.mark.parametrize(
    ("values", "cold", "hot"),
    [
        ([17.9, 17.5, 17.0], ("raise", Severity.LOW), "clear"),
        ([18.0, 17.5, 17.0], ("hold", None), "clear"),  # not every reading below 18: not sustained
        ([15.9, 15.5, 15.0], ("raise", Severity.MEDIUM), "clear"),
        ([18.0, 20.0, 26.0], ("clear", None), "clear"),
        ([26.1, 27.0, 26.5], ("clear", None), "raise"),
        ([17.0], ("hold", None), "hold"),  # one reading is not an hour
    ],
)
def test_room_temperature(values: list[float], cold: tuple[str, Severity | None], hot: str) -> None:
    h = household(room_temperatures=_temps(values))
    cold_f, hot_f = bh.room_temperature_findings(h, at(DAY, 12))
    assert (cold_f.state, cold_f.severity) == cold
    assert hot_f.state == hot


def _usually(room: str, warmest: list[float], now: datetime = at(DAY, 12)) -> dict[str, list[tuple[datetime, float]]]:
    """The room's readings in the hour before ``now`` on each previous day, the warmest of day k+1 ``warmest[k]``."""
    return {room: [(now - timedelta(days=k + 1, minutes=m), v - (m - 5) / 100) for k, v in enumerate(warmest)
                   for m in (5, 35)]}


@pytest.mark.parametrize(
    ("values", "past", "state", "severity"),
    [
        ([17.4, 17.2, 17.0], [17.5, 17.6, 17.3, 17.8, 17.2, 17.4, 17.6], "hold", None),  # known pattern
        ([17.4, 17.2, 17.0], [17.5, 17.6, 17.3, 19.8, 19.2, 19.4, 19.6], "raise", Severity.LOW),  # 3 of 7: new
        ([17.4, 17.2, 17.0], [17.5, 17.6, 17.3], "raise", Severity.LOW),  # too few days to call it usual
        ([15.8, 15.5, 15.2], [15.5, 15.6, 15.3, 15.8, 15.2, 15.4, 15.6], "raise", Severity.MEDIUM),  # < 16 always
        ([19.0, 19.2, 19.5], [17.5, 17.6, 17.3, 17.8, 17.2, 17.4, 17.6], "clear", None),
    ],
)
def test_room_cold_known_pattern_is_not_raised_again(values: list[float], past: list[float], state: str,
                                                     severity: Severity | None) -> None:
    h = household(room_temperatures=_temps(values, "bedroom"), room_past=_usually("bedroom", past))
    cold, _ = bh.room_temperature_findings(h, at(DAY, 12))
    assert (cold.state, cold.severity) == (state, severity)


def test_room_cold_raises_for_the_room_that_changed_not_the_usual_one() -> None:
    temps = _temps([17.4, 17.2, 17.0], "bedroom") + _temps([17.9, 17.6, 17.5], "living")
    h = household(room_temperatures=temps,
                  room_past={**_usually("bedroom", [17.5] * 7), **_usually("living", [20.5] * 7)})
    cold, _ = bh.room_temperature_findings(h, at(DAY, 12))
    assert cold.state == "raise" and "living" in cold.reason and "bedroom" not in cold.reason


def test_household_silent() -> None:
    h = household(last_heard=at(DAY, 9))
    assert bh.household_silent_finding(h, at(DAY, 12)).state == "clear"
    assert bh.household_silent_finding(h, at(DAY, 12, 1)).state == "raise"
    assert bh.household_silent_finding(replace(h, gateway_offline=True), at(DAY, 13)).state == "hold"


def _nights(settled: int, unsettled: int) -> HouseholdData:
    events: list[BehaviourEvent] = []
    heard = set()
    for i in range(settled + unsettled):
        night = DAY - timedelta(days=i)
        heard.add(night)
        events += visits(night, 1)
        events.append(BehaviourEvent("night_activity", at(night, 1), at(night, 1, 5), detail={"bathroom_trip": True}))
        if i >= settled:
            events.append(BehaviourEvent("night_activity", at(night, 3), at(night, 3, 30),
                                         detail={"bathroom_trip": False}))
    return household(events=events, nights_heard=frozenset(heard))


@pytest.mark.parametrize(("settled", "state"), [(5, "raise"), (4, "hold"), (3, "clear"), (7, "raise")])
def test_care_review_after_settled_nights(settled: int, state: str) -> None:
    f = bh.care_review_finding(_nights(settled, 7 - settled), at(DAY, 8))
    assert f.state == state
    if state == "raise":
        assert f.severity is Severity.INFO and f"{settled} of the last 7" in f.reason


def test_sleep_movements_in_the_bedroom_do_not_unsettle_a_night_but_restlessness_does() -> None:
    """A bedroom PIR sees a sleeper turn over every half hour or so: short bedroom episodes are not "up"."""
    settled = _nights(7, 0)
    events = list(settled.events)
    for i in range(7):
        night = DAY - timedelta(days=i)
        events += [BehaviourEvent("night_activity", at(night, h, 10), at(night, h, 12),
                                  detail={"role": "bedroom", "bathroom_trip": False}) for h in (1, 2, 4)]
    f = bh.care_review_finding(replace(settled, events=events), at(DAY, 8))
    assert f.state == "raise"
    nights = [DAY - timedelta(days=i) for i in range(3)]
    restless = events + [BehaviourEvent("night_activity", at(n, 3), at(n, 3, 25),
                                        detail={"role": "bedroom", "bathroom_trip": False}) for n in nights]
    assert bh.care_review_finding(replace(settled, events=restless), at(DAY, 8)).state == "hold"  # 4 of 7


def test_care_review_needs_data_nights() -> None:
    assert bh.care_review_finding(household(), at(DAY, 8)).state == "hold"


def test_on_seconds_counts_on_time_within_the_window() -> None:
    times = np.array([0.0, 120.0, 600.0, 720.0, 1000.0])
    on = np.array([True, False, True, False, True])
    assert bh.on_seconds(times, on, 0.0, 1100.0) == pytest.approx(120 + 120 + 100)  # the last "on" runs to the end
    assert bh.on_seconds(times, on, 60.0, 700.0) == pytest.approx(60 + 100)


def test_a_sleeper_s_bedroom_blips_are_not_someone_up_but_a_restless_spell_and_the_hall_are() -> None:
    night = DAY
    sleeper = [  # turning over: two 2-minute blips 14 minutes apart merge into one 16-minute episode
        _sr("m-bed", "bedroom", "motion", 1, at(night, 2, 0)), _sr("m-bed", "bedroom", "motion", 0, at(night, 2, 2)),
        _sr("m-bed", "bedroom", "motion", 1, at(night, 2, 14)), _sr("m-bed", "bedroom", "motion", 0, at(night, 2, 16)),
    ]
    restless = [_sr("m-bed", "bedroom", "motion", v, at(night, 3, m)) for m, v in
                ((0, 1), (6, 0), (7, 1), (13, 0), (14, 1), (20, 0))]  # on 18 of 20 minutes
    hall = [_sr("m-hall", None, "motion", 1, at(night, 4, 0)), _sr("m-hall", None, "motion", 0, at(night, 4, 2))]
    events = [e for e in bh.derive_events(sleeper + restless + hall, at(night, 12)) if e.kind == "night_activity"]
    up = sorted((e.started_at, e.detail["up"]) for e in events)
    assert up == [(at(night, 2, 0), False), (at(night, 3, 0), True), (at(night, 4, 0), True)]
    h = household(events=events, nights_heard=frozenset({night}))
    assert bh.settled_nights(replace(h, events=[e for e in events if e.started_at < at(night, 3)]), [night]).tolist() \
        == [True]
    assert bh.settled_nights(h, [night]).tolist() == [False]


def test_on_seconds_each_equals_on_seconds_window_by_window() -> None:
    """derive_events takes every episode's on-time from one pass over a device's readings (issue 19): the same
    floats as on_seconds per episode, ties and an unclosed last spell included."""
    rng = np.random.default_rng(19)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        times = np.round(rng.uniform(0, 20_000, n), int(rng.integers(0, 3)))  # rounding makes ties
        on = rng.random(n) < rng.uniform(0.2, 0.8)
        spans = bh.episodes(times, on, 900.0) + [(float(a), float(a + b)) for a, b in rng.uniform(0, 20_000, (5, 2))]
        assert bh.on_seconds_each(times, on, spans) == [bh.on_seconds(times, on, s, e) for s, e in spans]


def test_night_bathroom_threshold_is_scipys_median_abs_deviation() -> None:
    from scipy.stats import median_abs_deviation

    rng = np.random.default_rng(7)
    for _ in range(300):
        counts = rng.integers(0, int(rng.integers(1, 12)), int(rng.integers(7, 15))).astype(np.int64)
        median, mad, _threshold = bh.night_bathroom_threshold(counts)
        assert median == float(np.median(counts))
        assert mad == float(median_abs_deviation(counts, scale="normal"))


# --- when time alone can change a decision (issue 19: the slow tick skips households that cannot change) -------
def _decisions(h: HouseholdData, now: datetime) -> dict[object, tuple[object, ...] | None]:
    """What an evaluation at ``now`` would write, per finding: a hold writes nothing (None)."""
    return {f.kind: None if f.state == "hold" else (f.state, f.severity, f.reason, f.action)
            for f in bh.household_findings(h, now)}


def _writes_the_same(before: dict[object, tuple[object, ...] | None],
                     later: dict[object, tuple[object, ...] | None]) -> bool:
    """An evaluation at the later time would write nothing the earlier one did not: each finding holds (writes
    nothing) or is the same clear or raise as before."""
    return all(later[kind] is None or later[kind] == before[kind] for kind in later)


def _lived_in(**kw: object) -> HouseholdData:
    """Two weeks of a household's life up to DAY 15:00: nights, mornings, meals, a walk out at 15:00, a cold lounge."""
    days = [DAY - timedelta(days=i) for i in range(16)]
    events: list[BehaviourEvent] = [e for d in days for e in visits(d, 1 + d.day % 3)]
    events += [BehaviourEvent("kitchen_activity", at(d, hh, mm), at(d, hh, mm + 20), None, {"role": "kitchen"})
               for d in days for hh, mm in ((8, 0), (12, 30), (18, 0)) if at(d, hh, mm) < at(DAY, 15)]
    events.append(BehaviourEvent("front_door", at(DAY, 15), at(DAY, 15, 1), None, {"direction": "exit"}))
    base: dict[str, object] = dict(
        roles=frozenset({"bathroom", "kitchen", "fridge", "front_door", "bedroom"}),
        events=sorted(events, key=lambda e: e.started_at), last_motion_at=at(DAY, 14, 55),
        last_motion_role="kitchen", first_motion_by_day={d: at(d, 7, 10 + d.day % 20) for d in days},
        nights_heard=frozenset(days), last_heard=at(DAY, 15, 1),
        room_temperatures=_temps([17.4, 17.2, 17.1, 17.0], end=at(DAY, 15)),
    )
    base.update(kw)
    return household(**base)


_STILL = [BehaviourEvent("kitchen_activity", at(DAY, 8), at(DAY, 8, 20), None, {"role": "kitchen"})]


def _cold_bedroom_evenings() -> HouseholdData:
    """A bedroom at 17 °C throughout (a reading every 30 min), which on the previous days was below 18 °C from
    15:00 to 20:00 on three days of seven and from 16:30 to 18:30 on the other four: the known pattern from about
    17:30 to 18:30 (held then, raised before and after, the change falling between the room's own readings)."""
    start = at(DAY, 14)
    now_temps = [RoomTemperature("t-bed", "bedroom", start + timedelta(minutes=30 * i), 17.0) for i in range(70)]
    past = []
    for back in range(1, 10):
        day = DAY - timedelta(days=back)
        for i in range(6 * 30):  # every 10 minutes over 30 h
            t = at(day, 12) + timedelta(minutes=10 * i + back)  # not on the hour: each day's readings shifted
            local = t.astimezone(LOCAL_TZ).time()
            cold = bh.time(15) <= local < bh.time(20) if back % 2 == 0 else bh.time(16, 30) <= local < bh.time(18, 30)
            past.append((t, 17.5 if cold else 19.5))
    return _lived_in(room_temperatures=now_temps, room_past={"bedroom": past})


@pytest.mark.parametrize("h", [
    _cold_bedroom_evenings(),
    _lived_in(),  # out since 15:01: expected back by 21:00, high at 23:00; the hour of cold readings runs out
    _lived_in(home_by=bh.time(18, 0), gateway_offline=True),
    _lived_in(events=_STILL, last_motion_role=None, last_motion_at=at(DAY, 10), last_heard=at(DAY, 10)),  # still
    _lived_in(events=_STILL, last_motion_role="bathroom", last_motion_at=at(DAY, 11), last_heard=at(DAY, 11)),
    _lived_in(events=_STILL, last_motion_role=None, last_motion_at=at(DAY, 21, 40), long_lie_after=timedelta(
        minutes=45), room_temperatures=[], last_heard=at(DAY, 21, 40)),  # the limit crosses the night
    _lived_in(first_motion_by_day={}, nights_heard=frozenset(), events=[]),
    household(),
], ids=["cold-bedroom-evenings",
        "out", "out-hub-offline", "still-in-the-lounge", "in-the-bathroom", "still-overnight", "no-history", "empty"])
def test_no_decision_changes_before_the_household_s_recheck_time(h: HouseholdData) -> None:
    """H-HOME-11: household_recheck_at is never later than the first instant time alone changes what an evaluation
    would write (a raised finding's counted minutes or hours included). Checked every 90 s up to it, and the
    microsecond before it, from many starting times across a day and a half."""
    now = at(DAY, 15, 2)
    while now < at(DAY + timedelta(days=1), 23):
        before = _decisions(h, now)
        recheck = bh.household_recheck_at(h, now, bh.household_findings(h, now))
        assert recheck > now
        t = now + timedelta(seconds=90)
        while t < recheck and t < now + timedelta(hours=12):
            assert _writes_the_same(before, _decisions(h, t)), (now, t, recheck)
            t += timedelta(seconds=90)
        assert _writes_the_same(before, _decisions(h, recheck - timedelta(microseconds=1))), (now, recheck)
        now += timedelta(minutes=37)


def test_the_known_pattern_s_recheck_is_the_instant_it_ends() -> None:
    """The room-cold known pattern moves with the clock: its next change is foreseen to the microsecond, and only
    where it decides (a room cold for the last hour)."""
    h = _cold_bedroom_evenings()
    now = at(DAY, 18)
    assert bh.room_temperature_findings(h, now)[0].state == "hold"
    ends = bh.known_pattern_changes_at(h, now, before=None)
    assert ends is not None and at(DAY, 18, 30) < ends < at(DAY, 18, 40)
    assert bh.room_temperature_findings(h, ends)[0].state == "raise"
    assert bh.room_temperature_findings(h, ends - timedelta(microseconds=1))[0].state == "hold"
    warm = replace(h, room_temperatures=[replace(r, value=19.0) for r in h.room_temperatures])
    assert bh.known_pattern_changes_at(warm, now, before=None) is None


def test_the_recheck_time_is_the_instant_a_threshold_is_crossed() -> None:
    """The deadlines are exact: the long lie (waking hours), the long bathroom stay, silence, out and not back."""
    still = _lived_in(events=_STILL, last_motion_role=None, last_motion_at=at(DAY, 10), last_heard=at(DAY, 10),
                      room_temperatures=[])
    assert bh.household_recheck_at(still, at(DAY, 10, 5), bh.household_findings(still, at(DAY, 10, 5))) == at(DAY, 12)
    assert bh.long_lie_finding(still, at(DAY, 12)).state == "raise"
    # last seen at 21:30: 30 waking minutes tonight, 90 more from 07:00 (the night completes at 06:00 first)
    tea = [BehaviourEvent("kitchen_activity", at(DAY, 21), at(DAY, 21, 20), None, {"role": "kitchen"})]
    overnight = replace(still, events=tea, last_motion_at=at(DAY, 21, 30), last_heard=at(DAY, 21, 30))
    next_day = DAY + timedelta(days=1)
    for now, recheck in ((at(next_day, 1), at(next_day, 6)), (at(next_day, 6, 30), at(next_day, 8, 30)),
                         # silent from 00:30; local midnight (a new day) changes nothing written
                         (at(DAY, 23), at(DAY, 21, 30) + bh.HOUSEHOLD_SILENT_AFTER + timedelta(microseconds=1))):
        assert bh.household_recheck_at(overnight, now, bh.household_findings(overnight, now)) == recheck
    assert bh.long_lie_finding(overnight, at(next_day, 8, 30)).state == "raise"
    assert bh.long_lie_finding(overnight, at(next_day, 8, 30) - timedelta(microseconds=1)).state == "clear"
    bathroom = replace(still, last_motion_role="bathroom", last_motion_at=at(DAY, 11), last_heard=at(DAY, 11))
    assert bh.household_recheck_at(bathroom, at(DAY, 11, 1), []) == at(DAY, 11, 45)
    out = _lived_in()
    assert bh.household_recheck_at(out, at(DAY, 20, 55), bh.household_findings(out, at(DAY, 20, 55))) == at(DAY, 21)


# --- derive_events from columns (issue 19): the same events as before, in the same order --------------------------
def _reference_derive_events(readings: Sequence[SensorReading], now: datetime) -> list[BehaviourEvent]:
    """derive_events as it was before issue 19 (a SensorReading per reading, on_seconds per episode)."""
    events: list[BehaviourEvent] = []
    by_device: dict[str, list[SensorReading]] = {}
    for r in readings:
        by_device.setdefault(r.device_id, []).append(r)
    # indoor motion episodes: start, end, device, role, seconds the motion was "on" within the episode
    motion_eps: list[tuple[float, float, str, str | None, float]] = []
    for device_id, rows in by_device.items():
        role = rows[0].role
        for kind, want_role, metrics, gap in bh.EVENT_SOURCES:
            if role != want_role:
                continue
            sel = [r for r in rows if r.metric in metrics]
            if not sel:
                continue
            for start, end in bh.episodes(bh._epoch(r.measured_at for r in sel), np.array([r.is_on for r in sel]),
                                       gap.total_seconds()):
                events.append(BehaviourEvent(kind, bh._dt(start), bh._dt(end), device_id, {"role": role}))
        motion = [r for r in rows if r.metric in bh.MOTION_METRICS]
        if motion:
            times, on = bh._epoch(r.measured_at for r in motion), np.array([r.is_on for r in motion])
            for start, end in bh.episodes(times, on, bh.NIGHT_MERGE_GAP.total_seconds()):
                motion_eps.append((start, end, device_id, role, bh.on_seconds(times, on, start, end)))

    visits = [e for e in events if e.kind == "bathroom_visit"]
    for start, end, device_id, role, on_s in motion_eps:
        if role == "bathroom" or bh.night_of(bh._dt(start)) is None:
            continue
        s, e = bh._dt(start), bh._dt(end)
        trip = any(v.started_at - bh.BATHROOM_TRIP_MARGIN <= e and s <= v.ended_at + bh.BATHROOM_TRIP_MARGIN
                   for v in visits)
        up = bh.someone_up(role, end - start, on_s)
        detail = {"role": role, "bathroom_trip": trip, "up": up}
        events.append(BehaviourEvent("night_activity", s, e, device_id, detail))

    indoor = np.array(sorted(t for s, e, _, role, _ in motion_eps if role != "front_door" for t in (s, e)))
    margin = bh.DOOR_CONTEXT.total_seconds()
    out = []
    for ev in events:
        if ev.kind != "front_door":
            out.append(ev)
            continue
        opened, closed = ev.started_at.timestamp(), ev.ended_at.timestamp()
        before = bool(indoor.size and ((indoor >= opened - margin) & (indoor < opened)).any())
        after = bool(indoor.size and ((indoor > closed) & (indoor <= closed + margin)).any())
        if after and not before:
            direction = "return"
        elif before and not after and now.timestamp() >= closed + margin:
            direction = "exit"
        elif not after and now.timestamp() < closed + margin:
            direction = "pending"
        else:
            direction = "unknown"
        out.append(BehaviourEvent(ev.kind, ev.started_at, ev.ended_at, ev.device_id,
                                  {**ev.detail, "direction": direction}))
    return out


_ROLES = ["bathroom", "kitchen", "fridge", "kettle", "front_door", "bedroom", None]
_METRICS = ["motion", "occupancy", "door_open", "power", "power_on", "humidity", "room_temperature"]


def test_derive_events_is_the_same_as_before_on_random_households() -> None:
    rng = np.random.default_rng(11)
    start = at(DAY, 0)
    kinds: dict[str, int] = {}
    for _ in range(150):
        devices = {f"d{i}": _ROLES[int(rng.integers(len(_ROLES)))] for i in range(int(rng.integers(1, 8)))}
        readings = []
        for _ in range(int(rng.integers(0, 300))):
            device = f"d{int(rng.integers(len(devices)))}"
            metric = _METRICS[int(rng.integers(len(_METRICS)))]
            value = float(rng.choice([0.0, 1.0, 300.0, 900.0, rng.uniform(0, 1000)]))
            step = int(rng.choice([1, 60, 600]))  # coarse steps make ties
            micros = int(rng.integers(0, 1_000_000)) if rng.random() < 0.3 else 0
            when = start + timedelta(seconds=int(rng.integers(0, 36 * 3600)) // step * step, microseconds=micros)
            readings.append(_sr(device, devices[device], metric, value, when))
        now = start + timedelta(hours=float(rng.uniform(20, 40)))
        derived = bh.derive_events(readings, now)
        assert derived == _reference_derive_events(readings, now)
        for e in derived:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
    assert set(kinds) == {k for k, *_ in bh.EVENT_SOURCES} | {"night_activity"} and min(kinds.values()) > 50
