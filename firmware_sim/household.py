"""People living at home and the sensors that see them: an activity model that emits sensor events.

Each person follows a day: wake, bathroom, breakfast, sitting, drinks, meals, toilet trips, maybe going out,
carers and family visiting, bed, and a night with the odd toilet trip. Activities become *detections* in
rooms; a PIR model turns detections into BTHome-like ``motion=1`` / ``motion=0`` events (one pair per burst
of activity, cleared after a timeout, so a busy kitchen is two events, not thousands). Doors, fridge and
kettle give discrete events; two climate sensors report temperature and humidity every 10 minutes from a
first-order thermal model driven by the heating schedule and the weather.

Days are planned from one wake-up to the next (a night belongs to the day before it), each with its own
seeded generator, so any day can be produced on its own and streamed lazily.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from operator import attrgetter

import numpy as np

from carewatch.firmware_sim.effects import Effect, WallClock, total_effect
from carewatch.wire import DeviceKind, Metric

# seed tags: keep every generator's key the same length so keys can never collide
TAG_SCHEDULE, TAG_ACTIVITY, TAG_CLIMATE, TAG_WEATHER, TAG_PROFILE = 31, 32, 33, 34, 35


@dataclass(slots=True, unsafe_hash=True)  # not frozen: 5x cheaper to create; treat as immutable
class SensorEvent:
    """One value from one household sensor. ``sensor`` is the role ('bathroom', 'kettle', ...)."""

    at: datetime
    household_id: str
    sensor: str
    device_kind: DeviceKind
    metric: Metric
    value: float


@dataclass(frozen=True, slots=True)
class SensorSpec:
    device_kind: DeviceKind
    metrics: tuple[Metric, ...]
    battery: bool  # reports a battery level (mains-powered plugs do not)


#: Every household has these sensors (role -> what it is). The bathroom sensor is a PIR like the others.
SENSORS: dict[str, SensorSpec] = {
    "bedroom_motion": SensorSpec(DeviceKind.MOTION_SENSOR, (Metric.MOTION,), True),
    "living_motion": SensorSpec(DeviceKind.MOTION_SENSOR, (Metric.MOTION,), True),
    "kitchen_motion": SensorSpec(DeviceKind.MOTION_SENSOR, (Metric.MOTION,), True),
    "hall_motion": SensorSpec(DeviceKind.MOTION_SENSOR, (Metric.MOTION,), True),
    "bathroom": SensorSpec(DeviceKind.BATHROOM_SENSOR, (Metric.MOTION,), True),
    "front_door": SensorSpec(DeviceKind.DOOR_SENSOR, (Metric.DOOR_OPEN,), True),
    "fridge_door": SensorSpec(DeviceKind.FRIDGE_SENSOR, (Metric.DOOR_OPEN,), True),
    "kettle": SensorSpec(DeviceKind.PLUG, (Metric.POWER, Metric.POWER_ON), False),
    "living_climate": SensorSpec(DeviceKind.CLIMATE_SENSOR, (Metric.ROOM_TEMPERATURE, Metric.HUMIDITY), True),
    "bedroom_climate": SensorSpec(DeviceKind.CLIMATE_SENSOR, (Metric.ROOM_TEMPERATURE, Metric.HUMIDITY), True),
}

ROOM_SENSOR = {
    "bedroom": "bedroom_motion",
    "living": "living_motion",
    "kitchen": "kitchen_motion",
    "hall": "hall_motion",
    "bathroom": "bathroom",
}
ROOMS = tuple(ROOM_SENSOR)

#: Night = from 23:00 to 06:00 local: the window the night-time statistics in tests and docs use.
NIGHT_START_H, NIGHT_END_H = 23.0, 6.0

# PIR detection rates (per second of presence)
ACTIVE, SITTING, AWAKE_IN_BED, ASLEEP = 1 / 20, 1 / 240, 1 / 300, 1 / 2400


# ------------------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PersonProfile:
    wake_h: float  # weekday wake time (local hours)
    bed_h: float  # bedtime
    weekend_shift_h: float  # later at weekends
    night_toilet: float  # mean night-time toilet trips
    day_toilet: float  # mean daytime toilet trips
    night_waking: float  # mean other wakeful episodes per night
    drinks: float  # kettle/drink trips besides meals
    out_weekday: float  # chance of going out on a weekday
    out_weekend: float
    mobility: float  # multiplies detection rates
    breakfast_p: float
    lunch_p: float
    dinner_p: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> PersonProfile:
        return cls(
            wake_h=float(np.clip(rng.normal(7.3, 0.6), 5.8, 9.0)),
            bed_h=float(np.clip(rng.normal(22.4, 0.6), 21.0, 23.8)),
            weekend_shift_h=float(rng.uniform(0.0, 0.7)),
            night_toilet=float(rng.uniform(0.4, 1.3)),
            day_toilet=float(rng.uniform(4.0, 7.0)),
            night_waking=float(rng.uniform(0.1, 0.5)),
            drinks=float(rng.uniform(2.0, 5.0)),
            out_weekday=float(rng.uniform(0.15, 0.6)),
            out_weekend=float(rng.uniform(0.1, 0.45)),
            mobility=float(rng.uniform(0.7, 1.2)),
            breakfast_p=float(rng.uniform(0.85, 1.0)),
            lunch_p=float(rng.uniform(0.6, 0.95)),
            dinner_p=float(rng.uniform(0.85, 1.0)),
        )


#: Share of homes heated from morning to bedtime; the rest heat mornings and evenings only (rationing).
ALL_DAY_HEATING = 0.75


@dataclass(frozen=True, slots=True)
class HomeProfile:
    setpoint: float  # living room thermostat (°C)
    heating_periods: tuple[tuple[float, float], ...]  # local hours the heating is on
    tau_h: float  # thermal time constant of the house cooling with the heating off
    tau_heat_h: float  # how fast the heating brings a room to its setpoint
    setback: float  # the thermostat's night/away minimum (°C)
    passive_gain: float  # °C above outside with no heating (insulation, internal gains)
    bedroom_offset: float  # bedroom relative to living room
    humidity_base: float
    carer_hours: tuple[float, ...]  # domiciliary care visits (local hours), empty when none
    family_weekend_p: float  # chance of a family visit on a Saturday/Sunday afternoon
    battery_start: tuple[float, ...]  # per battery sensor, in SENSORS order
    battery_drain_per_day: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> HomeProfile:
        carers = rng.choice(4, p=[0.6, 0.15, 0.1, 0.15])
        carer_hours = ((), (8.5,), (8.5, 17.5), (8.0, 12.5, 17.0, 20.5))[int(carers)]
        morning_on = float(rng.uniform(5.5, 7.0))
        evening_on = float(rng.uniform(15.0, 17.0))
        n_battery = sum(1 for s in SENSORS.values() if s.battery)
        setpoint = float(rng.uniform(19.0, 22.5))
        morning_off = morning_on + float(rng.uniform(2.5, 4.5))
        evening_off = float(rng.uniform(22.0, 23.5))
        home = cls(
            setpoint=setpoint,
            heating_periods=((morning_on, morning_off), (evening_on, evening_off)),
            tau_h=float(rng.uniform(8.0, 16.0)),
            tau_heat_h=float(rng.uniform(0.7, 1.5)),
            setback=float(rng.uniform(17.0, 18.5)),
            passive_gain=float(rng.uniform(3.0, 5.0)),
            bedroom_offset=float(rng.uniform(-1.2, -0.2)),
            humidity_base=float(rng.uniform(45.0, 58.0)),
            carer_hours=carer_hours,
            family_weekend_p=float(rng.uniform(0.1, 0.6)),
            battery_start=tuple(float(x) for x in rng.uniform(55.0, 100.0, n_battery)),
            battery_drain_per_day=float(rng.uniform(0.03, 0.08)),
        )
        # Older people are at home all day and most heat all day (BREDEM/SAP's "elderly" regime, 16 h a day);
        # a minority ration heating to mornings and evenings, as working households do (drawn last, so the
        # draws above keep their values).
        if rng.random() < ALL_DAY_HEATING:
            home = replace(home, heating_periods=((morning_on, evening_off),))
        return home


@dataclass(frozen=True)
class HouseholdOptions:
    climate_interval_min: float = 10.0
    pir_clear_s: float = 120.0  # motion=0 after this long without a detection
    battery_report_h: float = 6.0
    #: A mains smart plug reports its power draw periodically (0 W when idle), not only when switched: that is
    #: how the platform tells a kettle nobody used from a plug that died (device_silent after 1 h).
    plug_report_min: float = 15.0


class Weather:
    """Outside temperature: UK seasonal mean, daily swing, and smooth random weather for the world's seed."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, TAG_WEATHER, 0, 0, 0])
        self.periods_d = np.array([3.1, 7.3, 17.9])
        self.amplitudes = rng.uniform([1.5, 1.2, 0.8], [2.5, 2.0, 1.5])
        self.phases = rng.uniform(0.0, 2.0 * np.pi, 3)

    def outside(self, epochs: np.ndarray, wall_hours: np.ndarray, day_of_year: np.ndarray | int) -> np.ndarray:
        seasonal = 10.5 + 6.5 * np.cos(2.0 * np.pi * (day_of_year - 200) / 365.25)
        daily = 3.5 * np.cos(2.0 * np.pi * (wall_hours - 15.0) / 24.0)
        days = epochs / 86_400.0
        weather = sum(a * np.sin(2.0 * np.pi * days / p + ph)
                      for a, p, ph in zip(self.amplitudes, self.periods_d, self.phases, strict=True))
        return seasonal + daily + weather


def first_order(target: np.ndarray, alpha: np.ndarray, start: float) -> np.ndarray:
    """x[k+1] = alpha[k] x[k] + (1 - alpha[k]) target[k], vectorised (time-varying first-order lag)."""
    decay = np.concatenate([[1.0], np.cumprod(alpha)])  # decay[k] = prod(alpha[:k])
    drive = np.concatenate([[start], (1.0 - alpha) * target / decay[1:]])
    return (decay * np.cumsum(drive))[1:]


# ------------------------------------------------------------------------------------------------------------
# PIR model
# ------------------------------------------------------------------------------------------------------------
def pir_transitions(
    detections: np.ndarray, carried_last: float | None, timeout_s: float, window_end: float
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Motion on/off times for sorted detection times, carrying the last detection across windows.

    ``motion=1`` when a detection comes after the sensor has cleared; ``motion=0`` ``timeout_s`` after the
    last detection of a burst. Returns (on_times, off_times, last detection still pending or None).
    """
    offs: list[float] = []
    if len(detections) == 0:
        if carried_last is not None:
            if carried_last + timeout_s <= window_end:
                return np.empty(0), np.array([carried_last + timeout_s]), None
            return np.empty(0), np.empty(0), carried_last
        return np.empty(0), np.empty(0), None
    previous = np.concatenate([[carried_last if carried_last is not None else -np.inf], detections[:-1]])
    new_burst = detections - previous > timeout_s
    ons = detections[new_burst]
    ends_before = previous[new_burst]  # last detection of the burst before each new one
    offs_arr = ends_before[np.isfinite(ends_before)] + timeout_s
    last = float(detections[-1])
    if last + timeout_s <= window_end:
        offs.append(last + timeout_s)
        pending = None
    else:
        pending = last
    return ons, np.concatenate([offs_arr, offs]), pending


# ------------------------------------------------------------------------------------------------------------
# Activity
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """Raw output of one window: detections per room, and on/off intervals of doors and the kettle."""

    rng: np.random.Generator
    mobility: float = 1.0
    detections: dict[str, list[np.ndarray]] = field(default_factory=lambda: {r: [] for r in ROOMS})
    intervals: list[tuple[float, float, str, float]] = field(default_factory=list)  # (on, off, sensor, watts)

    def presence(self, room: str, start: float, end: float, rate: float, *, enter: bool = True) -> None:
        if end <= start:
            return
        n = int(self.rng.poisson(rate * self.mobility * (end - start)))
        times = self.rng.uniform(start, end, n)
        if enter:
            times = np.append(times, start + self.rng.uniform(0.0, 3.0))
        self.detections[room].append(times)

    def hall_pass(self, at: float) -> None:
        self.detections["hall"].append(np.array([at - 12.0, at - 4.0]))

    def front_door(self, at: float) -> None:
        self.intervals.append((at, at + float(self.rng.uniform(3.0, 15.0)), "front_door", 0.0))

    def fridge(self, at: float) -> None:
        self.intervals.append((at, at + float(self.rng.uniform(5.0, 40.0)), "fridge_door", 0.0))

    def kettle(self, at: float) -> None:
        watts = round(float(self.rng.uniform(2750.0, 3000.0)), 1)
        self.intervals.append((at, at + float(self.rng.uniform(100.0, 200.0)), "kettle", watts))

    def kitchen_visit(self, start: float, dur: float, *, kettle_p: float, fridge_n: int) -> None:
        self.hall_pass(start)
        self.presence("kitchen", start, start + dur, ACTIVE)
        if self.rng.random() < kettle_p:
            self.kettle(start + float(self.rng.uniform(20.0, min(120.0, dur / 2))))
        for _ in range(fridge_n):
            self.fridge(start + float(self.rng.uniform(15.0, max(dur - 45.0, 20.0))))

    def bathroom_visit(self, start: float, dur: float) -> None:
        self.hall_pass(start)
        self.presence("bathroom", start, start + dur, ACTIVE)
        self.hall_pass(start + dur + 15.0)


def interval_events(intervals: list[tuple[float, float, str, float]]) -> list[tuple[float, str, Metric, float]]:
    """On/off events for doors and the kettle, merging overlaps (a door cannot open twice; two people
    putting the kettle on together is one boil)."""
    rows: list[tuple[float, str, Metric, float]] = []
    by_sensor: dict[str, list[tuple[float, float, float]]] = {}
    for on, off, sensor, watts in intervals:
        by_sensor.setdefault(sensor, []).append((on, off, watts))
    for sensor, spans in by_sensor.items():
        spans.sort()
        merged: list[list[float]] = []
        for on, off, watts in spans:
            if merged and on <= merged[-1][1] + 1.0:
                merged[-1][1] = max(merged[-1][1], off)
            else:
                merged.append([on, off, watts])
        for on, off, watts in merged:
            if sensor == "kettle":
                rows.extend([(on, sensor, Metric.POWER_ON, 1.0), (on + 0.5, sensor, Metric.POWER, watts),
                             (off, sensor, Metric.POWER_ON, 0.0), (off + 0.5, sensor, Metric.POWER, 0.0)])
            else:
                rows.extend([(on, sensor, Metric.DOOR_OPEN, 1.0), (off, sensor, Metric.DOOR_OPEN, 0.0)])
    rows.sort(key=lambda r: r[0])
    return rows


@dataclass(frozen=True, slots=True)
class DaySchedule:
    wake_s: float  # wall seconds after local midnight
    bed_s: float


def schedule(seed: int, hh_index: int, person: int, day: int, profile: PersonProfile, weekday: int) -> DaySchedule:
    """A person's wake and bed time on one day (its own generator: window d needs day d+1's wake time)."""
    rng = np.random.default_rng([seed, TAG_SCHEDULE, hh_index, person, day + 10_000])
    shift = profile.weekend_shift_h if weekday >= 5 else 0.0
    wake = (profile.wake_h + shift) * 3600.0 + float(rng.normal(0.0, 1200.0))
    bed = (profile.bed_h + shift / 2) * 3600.0 + float(rng.normal(0.0, 1500.0))
    return DaySchedule(wake_s=float(np.clip(wake, 4.5 * 3600, 10.5 * 3600)),
                       bed_s=float(np.clip(bed, 20.0 * 3600, 24.0 * 3600 + 1800)))


def _uniform_free_times(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return np.sort(rng.uniform(lo, hi, n)) if hi > lo and n > 0 else np.empty(0)


#: Night-time toilet trips are separate wakings: even with a urine infection's urgency a person is back in bed
#: for a while before the next one (a trip minutes after the last would be one visit to the sensor, too).
NIGHT_TOILET_SPACING_S = 25 * 60.0


def _spaced_times(rng: np.random.Generator, n: int, lo: float, hi: float, gap: float) -> np.ndarray:
    """``n`` sorted times in [lo, hi] at least ``gap`` apart, uniform over such arrangements (as many as fit)."""
    if hi <= lo or n <= 0:
        return np.empty(0)
    n = min(n, int((hi - lo) // gap) + 1)
    return np.sort(rng.uniform(lo, hi - (n - 1) * gap, n)) + gap * np.arange(n)


def plan_person_window(
    plan: _Plan,
    profile: PersonProfile,
    today: DaySchedule,
    tomorrow_wake_s: float,
    weekday: int,
    effect_at: dict[str, float],
) -> None:
    """Add one person's window (wake on day d to wake on day d+1; wall seconds from day d's midnight)."""
    rng = plan.rng
    wake, bed = today.wake_s, today.bed_s
    next_wake = 86_400.0 + tomorrow_wake_s
    appetite = float(np.clip(1.0 + effect_at.get("appetite", 0.0), 0.0, 1.0))
    # ---- daytime episodes: (desired start, duration, kind) ----
    episodes: list[tuple[float, float, str]] = []
    episodes.append((wake + 60.0, float(rng.uniform(360.0, 900.0)), "bathroom"))
    if rng.random() < profile.breakfast_p * appetite:
        episodes.append((wake + 900.0, float(rng.uniform(900.0, 1500.0)), "breakfast"))
    out_p = profile.out_weekend if weekday >= 5 else profile.out_weekday
    if rng.random() < out_p:
        episodes.append((float(rng.uniform(9.5, 14.0)) * 3600.0, float(rng.uniform(3600.0, 12_600.0)), "out"))
    if rng.random() < profile.lunch_p * appetite:
        episodes.append((float(rng.normal(12.75, 0.4)) * 3600.0, float(rng.uniform(900.0, 2400.0)), "meal"))
    if rng.random() < profile.dinner_p * appetite:
        episodes.append((float(rng.normal(17.5, 0.5)) * 3600.0, float(rng.uniform(1500.0, 2700.0)), "meal"))
    n_drinks = int(rng.poisson(profile.drinks * appetite))
    for t in _uniform_free_times(rng, n_drinks, wake + 3600.0, bed - 1800.0):
        episodes.append((float(t), float(rng.uniform(240.0, 480.0)), "drink"))
    n_toilet = int(rng.poisson(max(profile.day_toilet + effect_at.get("day_toilet", 0.0), 0.0)))
    for t in _uniform_free_times(rng, n_toilet, wake + 1800.0, bed - 600.0):
        episodes.append((float(t), float(rng.uniform(180.0, 420.0)), "bathroom"))
    episodes.sort()
    cursor = wake
    plan.presence("bedroom", wake - 300.0, wake, ACTIVE)
    for desired, dur, kind in episodes:
        begin = max(desired, cursor + 60.0)
        if begin + dur > bed - 900.0:
            continue
        plan.presence("living", cursor, begin, SITTING, enter=cursor > wake)
        if kind == "bathroom":
            plan.bathroom_visit(begin, dur)
        elif kind == "breakfast":
            plan.kitchen_visit(begin, dur, kettle_p=0.9, fridge_n=int(rng.integers(1, 3)))
        elif kind == "meal":
            plan.kitchen_visit(begin, dur, kettle_p=0.5, fridge_n=int(rng.integers(1, 4)))
        elif kind == "drink":
            plan.kitchen_visit(begin, dur, kettle_p=0.8, fridge_n=int(rng.random() < 0.5))
        elif kind == "out":
            plan.hall_pass(begin)
            plan.front_door(begin)
            plan.front_door(begin + dur)
            plan.hall_pass(begin + dur + 20.0)
        cursor = begin + dur
    plan.presence("living", cursor, bed, SITTING)
    bath = float(rng.uniform(300.0, 600.0))
    plan.bathroom_visit(bed, bath)
    settle = bed + bath + 30.0
    reading = float(rng.uniform(600.0, 2400.0))
    plan.presence("bedroom", settle, settle + reading, AWAKE_IN_BED)
    asleep = settle + reading
    # ---- night: toilet trips, wakeful spells, confused wandering ----
    night_events: list[tuple[float, str]] = []
    n_toilet = int(rng.poisson(max(profile.night_toilet + effect_at.get("night_toilet", 0.0), 0.0)))
    n_wake = int(rng.poisson(max(profile.night_waking + effect_at.get("night_waking", 0.0), 0.0)))
    n_wander = int(rng.poisson(4.0 * float(np.clip(effect_at.get("night_wandering", 0.0), 0.0, 1.0))))
    lo, hi = asleep + 1200.0, next_wake - 900.0
    night_events.extend((float(t), "toilet") for t in _spaced_times(rng, n_toilet, lo, hi, NIGHT_TOILET_SPACING_S))
    for kind, n in (("wake", n_wake), ("wander", n_wander)):
        night_events.extend((float(t), kind) for t in _uniform_free_times(rng, n, lo, hi))
    night_events.sort()
    cursor = asleep
    for t, kind in night_events:
        if t < cursor + 300.0:
            if kind != "toilet" or cursor + 300.0 >= hi:
                continue
            t = cursor + 300.0  # the bladder does not wait: a toilet trip comes right after whatever came before
        plan.presence("bedroom", cursor, t, ASLEEP, enter=False)
        if kind == "toilet":
            dur = float(rng.uniform(120.0, 420.0))
            plan.bathroom_visit(t, dur)
            end = t + dur + 60.0
        elif kind == "wake":
            dur = float(rng.uniform(600.0, 2400.0))
            if rng.random() < 0.4:
                plan.hall_pass(t)
                plan.presence("living", t, t + dur, SITTING * 2)
            else:
                plan.presence("bedroom", t, t + dur, AWAKE_IN_BED * 3)
            end = t + dur
        else:  # wander: confused, restless, into the kitchen, sometimes the front door
            dur = float(rng.uniform(600.0, 2400.0))
            plan.hall_pass(t)
            plan.presence("hall", t, t + dur / 3, ACTIVE / 2)
            plan.presence("kitchen", t + dur / 3, t + dur, ACTIVE)
            if rng.random() < 0.4:
                plan.fridge(t + dur / 2)
            if rng.random() < 0.3:
                plan.kettle(t + dur / 2 + 60.0)
            if rng.random() < 0.15:
                plan.front_door(t + dur - 120.0)
            end = t + dur
        cursor = min(end, hi)
    plan.presence("bedroom", cursor, next_wake - 300.0, ASLEEP, enter=False)


def plan_visitors(plan: _Plan, home: HomeProfile, weekday: int, wake: float, appetite: float) -> None:
    """Carers (domiciliary care) and weekend family visits: door, hall, kitchen, living room."""
    rng = plan.rng
    for hour in home.carer_hours:
        start = max(hour * 3600.0 + float(rng.normal(0.0, 900.0)), wake + 600.0)
        dur = float(rng.uniform(1200.0, 2400.0))
        plan.front_door(start)
        plan.hall_pass(start + 20.0)
        kitchen = dur * 0.5
        if rng.random() < appetite:
            plan.kitchen_visit(start + 60.0, kitchen, kettle_p=0.7, fridge_n=int(rng.integers(1, 3)))
        plan.presence("living", start + 60.0 + kitchen, start + dur - 60.0, ACTIVE / 2)
        plan.front_door(start + dur)
    if weekday >= 5 and rng.random() < home.family_weekend_p:
        start = float(rng.uniform(13.5, 16.0)) * 3600.0
        dur = float(rng.uniform(3600.0, 7200.0))
        plan.front_door(start)
        plan.hall_pass(start + 20.0)
        plan.presence("living", start + 30.0, start + dur, ACTIVE / 3)
        plan.kitchen_visit(start + 600.0, 420.0, kettle_p=0.9, fridge_n=1)
        plan.front_door(start + dur)


# ------------------------------------------------------------------------------------------------------------
# A household
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeadSpell:
    """A sensor whose battery is flat: it reports battery falling from ``start_pct`` at ``drain_from`` to 0
    at ``dead_at``, then says nothing until ``back_at`` (battery replaced) or for good."""

    sensor: str
    drain_from: float
    dead_at: float
    back_at: float | None
    start_pct: float


class HouseholdModel:
    """Everything that happens in one household, as a lazy, time-ordered stream of :class:`SensorEvent`."""

    def __init__(
        self,
        *,
        household_id: str,
        index: int,
        seed: int,
        people: Sequence[PersonProfile],
        home: HomeProfile,
        clock: WallClock,
        weather: Weather,
        effects: Sequence[Effect] = (),
        long_lies: Sequence[tuple[float, float]] = (),
        dead_spells: Sequence[DeadSpell] = (),
        options: HouseholdOptions = HouseholdOptions(),
    ) -> None:
        self.household_id = household_id
        self.index = index
        self.seed = seed
        self.people = tuple(people)
        self.home = home
        self.clock = clock
        self.weather = weather
        self.effects = tuple(effects)
        self.long_lies = tuple(long_lies)
        self.dead_spells = tuple(dead_spells)
        self.options = options

    # ---- effects ------------------------------------------------------------------------------------------
    def _effects_at(self, epoch: float) -> dict[str, float]:
        t = np.array([epoch])
        names = {n for e in self.effects for n in e.params}
        return {n: float(total_effect(self.effects, n, t)[0]) for n in names}

    def schedule(self, person: int, day: int) -> DaySchedule:
        return schedule(self.seed, self.index, person, day, self.people[person], self.clock.weekday(day))

    # ---- activity windows ---------------------------------------------------------------------------------
    def window_bounds(self, day: int) -> tuple[float, float]:
        """Epoch seconds of window ``day``: primary person's wake on ``day`` to wake on ``day + 1``."""
        start = float(self.clock.to_epoch(day, self.schedule(0, day).wake_s))
        end = float(self.clock.to_epoch(day + 1, self.schedule(0, day + 1).wake_s))
        return start, end

    def plan_window(self, day: int) -> tuple[dict[str, np.ndarray], list[tuple[float, str, Metric, float]]]:
        """Detections (epoch seconds, per room) and discrete events of window ``day``, in epoch seconds."""
        rng = np.random.default_rng([self.seed, TAG_ACTIVITY, self.index, 0, day + 10_000])
        weekday = self.clock.weekday(day)
        noon = float(self.clock.to_epoch(day, 12 * 3600.0))
        night = float(self.clock.to_epoch(day, 27 * 3600.0))
        day_fx = self._effects_at(noon)
        night_fx = self._effects_at(night)
        fx = {**day_fx, **{k: night_fx.get(k, 0.0) for k in ("night_toilet", "night_waking", "night_wandering")}}
        plan = _Plan(rng)
        first = self.schedule(0, day)
        for p, profile in enumerate(self.people):
            plan.mobility = profile.mobility
            today = first if p == 0 else self.schedule(p, day)
            plan_person_window(plan, profile, today, self.schedule(p, day + 1).wake_s, weekday,
                               fx if p == 0 else {})
        plan.mobility = 1.0
        appetite = float(np.clip(1.0 + day_fx.get("appetite", 0.0), 0.0, 1.0))
        plan_visitors(plan, self.home, weekday, first.wake_s, appetite)
        # wall seconds -> epoch seconds
        detections = {}
        for room, parts in plan.detections.items():
            wall = np.concatenate(parts) if parts else np.empty(0)
            detections[room] = self.clock.to_epoch(day, wall) if len(wall) else wall
        intervals: list[tuple[float, float, str, float]] = []
        if plan.intervals:
            walls = np.array([(i[0], i[1]) for i in plan.intervals])
            epochs = self.clock.to_epoch(day, walls.ravel()).reshape(-1, 2).tolist()
            intervals = [(on, off, sensor, w) for (on, off), (_, _, sensor, w) in zip(epochs, plan.intervals,
                                                                                       strict=True)]
        start, end = self.window_bounds(day)
        self._apply_long_lies(rng, detections, intervals, start, end)
        for room in detections:
            d = detections[room]
            detections[room] = np.sort(d[(d >= start) & (d < end)])
        return detections, interval_events([i for i in intervals if start <= i[0] < end])

    def _apply_long_lies(
        self,
        rng: np.random.Generator,
        detections: dict[str, np.ndarray],
        intervals: list[tuple[float, float, str, float]],
        start: float,
        end: float,
    ) -> None:
        """A fall in the bathroom: after a minute of bathroom motion, nothing anywhere until someone comes."""
        for fall_start, found_at in self.long_lies:
            if found_at < start or fall_start >= end:
                continue
            quiet_from = fall_start + 60.0
            for room in detections:
                d = detections[room]
                detections[room] = d[(d < fall_start - 30.0) | (d > found_at)]
            intervals[:] = [x for x in intervals if x[1] < fall_start - 30.0 or x[0] > found_at + 30.0]
            if start <= fall_start < end:
                detections["hall"] = np.append(detections["hall"], [fall_start - 20.0, fall_start - 8.0])
                detections["bathroom"] = np.append(
                    detections["bathroom"], np.sort(rng.uniform(fall_start, quiet_from, 4))
                )
            if start <= found_at < end:  # someone arrives, finds them, helps them up
                intervals.append((found_at, found_at + 8.0, "front_door", 0.0))
                detections["hall"] = np.append(detections["hall"], [found_at + 15.0, found_at + 25.0])
                detections["bathroom"] = np.append(
                    detections["bathroom"], np.sort(rng.uniform(found_at + 30.0, found_at + 1800.0, 60))
                )

    def _plug_reports(self, start: float, end: float,
                      discrete: Sequence[tuple[float, str, Metric, float]]) -> list[tuple[float, str, Metric, float]]:
        """The kettle plug's periodic power report (0 W) on a fixed grid in [start, end), skipping any that would
        fall inside a boil (the switch events carry the power then)."""
        every = self.options.plug_report_min * 60.0
        if every <= 0:
            return []
        phase = (self.index * 131.0) % every
        first = start + (phase - (start - self.clock.midnight(0))) % every
        times = np.arange(first, end, every)
        ons = sorted(t for t, sensor, metric, v in discrete if sensor == "kettle" and metric is Metric.POWER_ON
                     and v == 1.0)
        offs = sorted(t for t, sensor, metric, v in discrete if sensor == "kettle" and metric is Metric.POWER_ON
                      and v == 0.0)
        busy = np.zeros(len(times), dtype=bool)
        for on in ons:
            off = next((o for o in offs if o >= on), on + 600.0)
            busy |= (times >= on - 5.0) & (times <= off + 5.0)
        return [(float(t), "kettle", Metric.POWER, 0.0) for t in times[~busy]]

    def activity_events(self, first_day: int, last_day: int) -> Iterator[SensorEvent]:
        """Motion, door, fridge and kettle events of windows ``first_day``..``last_day``, in order."""
        timeout = self.options.pir_clear_s
        carried: dict[str, float | None] = dict.fromkeys(ROOMS)
        hid = self.household_id
        leftover: list[tuple[float, str, Metric, float]] = []  # e.g. a door closing after the window ended
        for day in range(first_day, last_day + 1):
            detections, discrete = self.plan_window(day)
            start, end = self.window_bounds(day)
            rows: list[tuple[float, str, Metric, float]] = leftover + discrete + self._plug_reports(start, end,
                                                                                                  discrete)
            for room, times in detections.items():
                ons, offs, carried[room] = pir_transitions(times, carried[room], timeout, end)
                sensor = ROOM_SENSOR[room]
                rows.extend((float(t), sensor, Metric.MOTION, 1.0) for t in ons)
                rows.extend((float(t), sensor, Metric.MOTION, 0.0) for t in offs)
            rows.sort(key=lambda r: r[0])
            leftover = [r for r in rows if r[0] >= end]
            for t, sensor, metric, value in rows:
                if t >= end:
                    break
                yield SensorEvent(datetime.fromtimestamp(t, UTC), hid, sensor, SENSORS[sensor].device_kind,
                                  metric, value)

    # ---- climate -----------------------------------------------------------------------------------------
    def room_temperatures(self, day: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Epoch times and (living, bedroom) temperatures on day ``day``'s reporting grid.

        First-order house: outside the heating periods the room relaxes towards outside + gains with the
        house's slow time constant (but the thermostat keeps a night setback); during them it heats
        towards the setpoint within about an hour. Simulated from two days earlier, so any day can be
        produced on its own and consecutive days join up (the start guess decays to a few per cent).
        """
        step = self.options.climate_interval_min * 60.0
        wall = np.arange(-2 * 86_400.0, 86_400.0, step)
        epochs = self.clock.to_epoch(day - 2, wall + 2 * 86_400.0)
        hours = np.mod(wall / 3600.0, 24.0)
        home = self.home
        fx = {n: total_effect(self.effects, n, epochs) for n in ("heating_off", "heating_boost", "outside_delta")}
        doy = np.select([wall < -86_400.0, wall < 0.0],
                        [self.clock.day_of_year(day - 2), self.clock.day_of_year(day - 1)],
                        self.clock.day_of_year(day))
        outside = self.weather.outside(epochs, hours, doy) + fx["outside_delta"]
        scheduled = np.zeros_like(hours, dtype=bool)
        for on, off in home.heating_periods:
            scheduled |= (hours >= on) & (hours < off)
        boost = np.clip(fx["heating_boost"], 0.0, 1.0)
        working = fx["heating_off"] < 0.5
        heating = (scheduled | (boost >= 0.5)) & working
        setpoint = home.setpoint + 9.0 * boost
        setback = np.where(working, home.setback, -np.inf)
        solar = 2.5 * np.clip(np.cos(2.0 * np.pi * (hours - 14.0) / 24.0), 0.0, None) ** 2
        ventilation = np.clip((22.0 - outside) / 10.0, 0.2, 1.0)  # windows open when it is warm outside
        # party walls, the ground and the fabric hold an unheated home well above a freezing outside
        passive = 0.7 * (outside + home.passive_gain * ventilation) + 0.3 * 12.0 + solar
        rooms = {}
        for room, offset in (("living", 0.0), ("bedroom", home.bedroom_offset)):
            warm = np.maximum(setpoint + offset, passive + offset / 2)
            idle = np.maximum(passive + offset / 2, setback + offset)
            target = np.where(heating, warm, idle)
            tau = np.where(heating | (idle > passive + offset / 2), home.tau_heat_h, home.tau_h) * 3600.0
            rooms[room] = first_order(target, np.exp(-step / tau), float(np.mean(target[: int(86_400 / step)])))
            rooms[room] = rooms[room][wall >= 0]
        return epochs[wall >= 0], rooms

    def climate_events(self, first_day: int, last_day: int) -> Iterator[SensorEvent]:
        hid = self.household_id
        for day in range(first_day, last_day + 1):
            rng = np.random.default_rng([self.seed, TAG_CLIMATE, self.index, 0, day + 10_000])
            epochs, rooms = self.room_temperatures(day)
            rows: list[tuple[float, str, Metric, float]] = []
            for room, phase in (("living", 17.0), ("bedroom", 311.0)):
                sensor = f"{room}_climate"
                temp = np.round(rooms[room] + rng.normal(0.0, 0.08, len(epochs)), 1)
                humid = np.round(np.clip(self.home.humidity_base + 2.5 * (19.0 - rooms[room])
                                         + rng.normal(0.0, 1.5, len(epochs)), 15.0, 95.0))
                for t, tv, hv in zip(epochs + phase, temp, humid, strict=True):
                    rows.append((float(t), sensor, Metric.ROOM_TEMPERATURE, float(tv)))
                    rows.append((float(t), sensor, Metric.HUMIDITY, float(hv)))
            rows.sort(key=lambda r: r[0])
            for t, sensor, metric, value in rows:
                yield SensorEvent(datetime.fromtimestamp(t, UTC), hid, sensor, DeviceKind.CLIMATE_SENSOR,
                                  metric, value)

    # ---- batteries ---------------------------------------------------------------------------------------
    def battery_events(self, first_day: int, last_day: int) -> Iterator[SensorEvent]:
        """Battery level of every battery sensor every few hours; hourly while a battery is draining flat."""
        hid = self.household_id
        sensors = [s for s, spec in SENSORS.items() if spec.battery]
        every = self.options.battery_report_h * 3600.0
        t0 = self.clock.midnight(0)
        for day in range(first_day, last_day + 1):
            lo, hi = self.clock.midnight(day), self.clock.midnight(day + 1)
            rows: list[tuple[float, str, float]] = []
            for k, sensor in enumerate(sensors):
                phase = (k * 997.0) % every
                times = np.arange(lo + (phase - (lo - t0)) % every, hi, every)
                level = self.home.battery_start[k] - self.home.battery_drain_per_day * (times - t0) / 86_400.0
                for spell in self.dead_spells:
                    if spell.sensor != sensor:
                        continue
                    hourly = np.arange(max(lo, spell.drain_from), min(hi, spell.dead_at), 3600.0)
                    times = np.sort(np.concatenate([times, hourly]))
                    level = self.home.battery_start[k] - self.home.battery_drain_per_day * (times - t0) / 86_400.0
                    frac = np.clip((times - spell.drain_from) / max(spell.dead_at - spell.drain_from, 1.0), 0, 1)
                    draining = times >= spell.drain_from
                    level = np.where(draining, spell.start_pct * (1.0 - frac), level)
                    if spell.back_at is not None:
                        level = np.where(times >= spell.back_at, 100.0 - (times - spell.back_at) * 1e-6, level)
                rows.extend((float(t), sensor, float(np.clip(round(v), 0, 100))) for t, v in zip(times, level,
                                                                                               strict=True))
            rows.sort(key=lambda r: r[0])
            for t, sensor, value in rows:
                yield SensorEvent(datetime.fromtimestamp(t, UTC), hid, sensor, SENSORS[sensor].device_kind,
                                  Metric.BATTERY, value)

    # ---- all together ------------------------------------------------------------------------------------
    def events(self, start: datetime, end: datetime) -> Iterator[SensorEvent]:
        """Every sensor event in [start, end), in time order."""
        first = self.clock.day_of(start)
        last = self.clock.day_of(end)
        streams = [
            self.activity_events(first - 1, last),
            self.climate_events(first, last),
            self.battery_events(first, last),
        ]
        dead = [(s.sensor, s.dead_at, s.back_at if s.back_at is not None else float("inf")) for s in self.dead_spells]
        for event in heapq.merge(*streams, key=attrgetter("at")):
            if event.at < start:
                continue
            if event.at >= end:
                return
            if dead:
                ts = event.at.timestamp()
                if any(event.sensor == s and d <= ts < b for s, d, b in dead):
                    continue
            yield event
