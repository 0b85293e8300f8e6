"""Scenarios: declared deterioration, environment and fault stories, each with the alert it should produce.

A scenario file (``firmware_sim/scenarios/*.yaml``, documented in ``docs/scenarios.md``) names a target, an
onset, a progression (parameter trajectories) and the expected alerts. This module validates it (pydantic, with
errors that say which scenario and field is wrong), fills in per-kind defaults, and turns a progression into
:class:`Trajectory` objects the physiology and household models evaluate with numpy. It also defines the two
value-level events that are not measurements: :class:`DeviceFault` and :class:`GatewayOutage`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from carewatch.alerts import AlertKind
from carewatch.firmware_sim.effects import (  # noqa: F401  (re-exported: their home before effects.py)
    Effect,
    ScenarioKind,
    Shape,
    Trajectory,
    WallClock,
    shape_fraction,
    total_effect,
)
from carewatch.firmware_sim.household import SENSORS
from carewatch.firmware_sim.physiology import Condition
from carewatch.wire import DeviceKind, explain


# ------------------------------------------------------------------------------------------------------------
# Value-level events that are not measurements
# ------------------------------------------------------------------------------------------------------------
class FaultKind(StrEnum):
    FLAT_BATTERY = "flat_battery"  # battery drains to empty, then the device goes silent
    GARBAGE_FRAMES = "garbage_frames"  # the device sends undecodable or implausible frames
    DISCONNECT_STORM = "disconnect_storm"  # the BLE link flaps: connect/disconnect many times a minute
    DUPLICATE_NOTIFICATIONS = "duplicate_notifications"  # every notification/advert arrives 2+ times
    CLOCK_UNSET = "clock_unset"  # device timestamps are missing or year 0 (battery swapped, clock lost)
    CLOCK_WRONG = "clock_wrong"  # device clock is set but off by ``skew_s`` seconds


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """Which device a fault concerns; the device layer maps it to a device id.

    ``site_id`` is a care-home site id or a household id (each household is its own site with its own
    gateway). ``role`` is a household sensor role (``"bathroom"``) or a care-home kit (``"kit-01"``).
    """

    site_id: str
    device_kind: DeviceKind
    role: str


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """From ``at`` (until ``until``, or for good when None) the device misbehaves as ``kind`` says.

    The value layer already suppresses readings of a device whose battery is flat; everything else
    (garbage, flapping, duplicates, clocks) is for the byte/transport layer to act out using ``params``.
    """

    at: datetime
    device: DeviceRef
    kind: FaultKind
    params: Mapping[str, float | str]
    until: datetime | None
    scenario_id: str


@dataclass(frozen=True, slots=True)
class GatewayOutage:
    """The site's gateway loses its uplink from ``start`` to ``end``; it must buffer, not drop, readings."""

    start: datetime
    end: datetime
    site_id: str
    scenario_id: str

    @property
    def at(self) -> datetime:
        return self.start


# ------------------------------------------------------------------------------------------------------------
# Durations and onsets
# ------------------------------------------------------------------------------------------------------------
class ScenarioError(ValueError):
    """A scenario file or scenario cannot be used; the message says which one and why."""


_DURATION = re.compile(
    r"^\s*(?:(?P<d>\d+(?:\.\d+)?)\s*d)?\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h)?\s*"
    r"(?:(?P<m>\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(?P<s>\d+(?:\.\d+)?)\s*s)?\s*$"
)


def parse_duration(value: Any) -> timedelta:
    """'36h', '90m', '2d', '1d12h', '45s' -> timedelta. Bare numbers are refused: the unit must be explicit."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (bool, int | float)):
        raise ValueError(f"duration {value!r} has no unit; write e.g. '{value}h' or '{value}m'")
    if not isinstance(value, str):
        raise ValueError(f"duration must be a string like '36h', got {type(value).__name__}")
    match = _DURATION.match(value)
    if not match or not any(match.groupdict().values()):
        raise ValueError(f"cannot read duration {value!r}; use d/h/m/s units, e.g. '36h', '1d12h', '90m'")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return timedelta(
        days=parts.get("d", 0), hours=parts.get("h", 0), minutes=parts.get("m", 0), seconds=parts.get("s", 0)
    )


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

_DAY_CLOCK = re.compile(r"^\s*day\s+(?P<day>\d+)\s+(?P<hh>\d{1,2}):(?P<mm>\d{2})\s*$", re.IGNORECASE)
_NEXT_CLOCK = re.compile(r"^\s*next\s+(?P<hh>\d{1,2}):(?P<mm>\d{2})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Onset:
    """When a scenario starts: an offset from sim start, 'day N HH:MM' (day 1 = the start date, local time),
    or 'next HH:MM' (the first such local time at or after sim start)."""

    offset: timedelta | None = None
    day: int | None = None
    clock: time | None = None

    def resolve(self, start: datetime, tz: tzinfo) -> datetime:
        if self.offset is not None:
            return start + self.offset
        assert self.clock is not None
        local_start = start.astimezone(tz)
        if self.day is None:  # next HH:MM
            at = datetime.combine(local_start.date(), self.clock, tzinfo=tz)
            if at < start:
                at = datetime.combine(local_start.date() + timedelta(days=1), self.clock, tzinfo=tz)
            return at
        at = datetime.combine(local_start.date() + timedelta(days=self.day - 1), self.clock, tzinfo=tz)
        if at < start:
            raise ScenarioError(
                f"onset 'day {self.day} {self.clock:%H:%M}' is {at.isoformat()}, before the sim start "
                f"{start.isoformat()}"
            )
        return at

    def __str__(self) -> str:
        if self.offset is not None:
            return f"+{self.offset}"
        assert self.clock is not None
        return f"next {self.clock:%H:%M}" if self.day is None else f"day {self.day} {self.clock:%H:%M}"


def parse_onset(value: Any) -> Onset:
    if isinstance(value, Onset):
        return value
    if isinstance(value, str):
        for pattern in (_DAY_CLOCK, _NEXT_CLOCK):
            match = pattern.match(value)
            if match:
                hh, mm = int(match["hh"]), int(match["mm"])
                if hh > 23 or mm > 59:
                    raise ValueError(f"onset {value!r}: {hh:02d}:{mm:02d} is not a clock time")
                day = int(match["day"]) if "day" in match.groupdict() else None
                if day is not None and day < 1:
                    raise ValueError(f"onset {value!r}: days count from 1 (day 1 is the sim start date)")
                return Onset(day=day, clock=time(hh, mm))
    try:
        return Onset(offset=parse_duration(value))
    except ValueError:
        raise ValueError(
            f"cannot read onset {value!r}; use an offset like '2h', 'day 3 22:00' or 'next 22:00'"
        ) from None


OnsetField = Annotated[Onset, BeforeValidator(parse_onset)]



# ------------------------------------------------------------------------------------------------------------
# Scenario kinds and their defaults
# ------------------------------------------------------------------------------------------------------------
TargetType = Literal["resident", "household", "device", "site"]


@dataclass(frozen=True)
class KindInfo:
    target: TargetType
    duration: str
    params: Mapping[str, Mapping[str, Any]]  # parameter -> default trajectory fields (to, from, start, over...)
    expect: tuple[tuple[AlertKind, str], ...]  # (alert, within) measured from onset
    soft_signs: tuple[str, ...] = ()
    hold: str | None = None
    recovery: str | None = None
    shape: Shape = Shape.LOGISTIC
    why: str = ""


#: Resident parameters are additive deltas on the true physiological state; ``new_confusion`` and
#: ``soft_signs`` are probabilities (0..1) that staff record new confusion / the kind's soft signs at a check.
RESIDENT_PARAMS = (
    "temperature",
    "pulse_rate",
    "respiration_rate",
    "systolic_bp",
    "spo2",
    "new_confusion",
    "soft_signs",
)
#: Household parameters. ``night_toilet``/``day_toilet``: extra visits per night/day. ``night_wandering``:
#: 0..1, confused night-time wandering. ``appetite``: change in the chance of each kitchen episode (-1 = none).
#: ``heating_off``/``heating_boost``: 0..1 fraction of heating failure / thermostat turned up and left on.
#: ``outside_delta``: °C added to the weather. ``night_waking``: extra wakeful episodes per night.
HOUSEHOLD_PARAMS = (
    "night_toilet",
    "day_toilet",
    "night_wandering",
    "night_waking",
    "appetite",
    "heating_off",
    "heating_boost",
    "outside_delta",
)

KINDS: dict[ScenarioKind, KindInfo] = {
    ScenarioKind.INFECTION: KindInfo(
        target="resident",
        duration="48h",
        hold="24h",
        recovery="72h",
        params={
            "temperature": {"to": 2.2, "over": "36h"},
            "pulse_rate": {"to": 28, "start": "12h", "over": "30h"},
            "respiration_rate": {"to": 8, "start": "16h", "over": "28h"},
            "systolic_bp": {"to": -32, "start": "20h", "over": "26h"},
            "spo2": {"to": -3, "start": "24h", "over": "24h"},
            "new_confusion": {"to": 0.95, "start": "28h", "over": "18h"},
            "soft_signs": {"to": 0.9, "start": "6h", "over": "24h"},
        },
        expect=((AlertKind.NEWS2, "48h"),),
        soft_signs=("not_themselves", "not_eating_drinking", "drowsy", "reduced_urine"),
        why="sepsis-like course: fever first, then tachycardia and tachypnoea, falling SBP, new confusion",
    ),
    ScenarioKind.COPD_EXACERBATION: KindInfo(
        target="resident",
        duration="24h",
        hold="48h",
        recovery="96h",
        params={
            "spo2": {"to": -7, "over": "24h"},
            "respiration_rate": {"to": 7, "start": "4h", "over": "20h"},
            "pulse_rate": {"to": 16, "start": "4h", "over": "20h"},
            "temperature": {"to": 0.5, "start": "8h", "over": "16h"},
            "soft_signs": {"to": 0.8, "start": "2h", "over": "12h"},
        },
        expect=((AlertKind.SPO2_BELOW_BASELINE, "24h"),),
        soft_signs=("breathless", "new_cough", "not_themselves"),
        why="a Scale 2 resident's SpO2 falls below their own 88-92% band while RR and pulse rise",
    ),
    ScenarioKind.URINARY_INFECTION: KindInfo(
        target="resident",
        duration="48h",
        hold="24h",
        recovery="72h",
        params={
            "temperature": {"to": 0.0, "over": "36h"},
            "pulse_rate": {"to": 14, "start": "12h", "over": "30h"},
            "respiration_rate": {"to": 3, "start": "18h", "over": "24h"},
            "systolic_bp": {"to": -14, "start": "18h", "over": "28h"},
            "new_confusion": {"to": 0.8, "start": "6h", "over": "30h"},
            "soft_signs": {"to": 0.85, "over": "24h"},
        },
        expect=((AlertKind.SOFT_SIGNS, "48h"),),
        soft_signs=("reduced_mobility", "not_themselves", "not_eating_drinking", "behaviour_change", "reduced_urine"),
        why="a resident's urinary infection without fever: new confusion, falls, off food, then a faster pulse",
    ),
    ScenarioKind.SLOW_DECLINE: KindInfo(
        target="resident",
        duration="5d",
        hold="2d",
        recovery="4d",
        shape=Shape.LINEAR,
        params={
            "pulse_rate": {"to": 16, "start": "1d", "over": "4d"},
            "systolic_bp": {"to": -26, "start": "1d", "over": "4d"},
            "respiration_rate": {"to": 4, "start": "2d", "over": "3d"},
            "temperature": {"to": -0.3, "start": "2d", "over": "3d"},
            "spo2": {"to": -1.5, "start": "3d", "over": "2d"},
            "new_confusion": {"to": 0.7, "start": "3d", "over": "2d"},
            "soft_signs": {"to": 0.75, "over": "4d"},
        },
        expect=((AlertKind.SOFT_SIGNS, "5d"),),
        soft_signs=("not_eating_drinking", "drowsy", "reduced_mobility", "reduced_urine", "not_themselves"),
        why="decline over days (dehydration, acute kidney injury, frailty): off food and drink, drowsy, "
            "pulse creeping up and blood pressure down",
    ),
    ScenarioKind.UTI: KindInfo(
        target="household",
        duration="3d",
        hold="2d",
        recovery="3d",
        params={
            "night_toilet": {"to": 4.0, "over": "2d"},
            "day_toilet": {"to": 4.0, "over": "2d"},
            "night_wandering": {"to": 0.7, "start": "2d", "over": "1d"},
        },
        expect=((AlertKind.NIGHT_BATHROOM, "3d"),),
        why="many more night-time bathroom visits, later confused wandering at night",
    ),
    ScenarioKind.NOT_EATING: KindInfo(
        target="household",
        duration="2d",
        hold="3d",
        recovery="2d",
        params={"appetite": {"to": -0.92, "over": "2d"}},
        expect=((AlertKind.KITCHEN_INACTIVITY, "3d"),),
        why="meals, drinks, fridge and kettle use fade away",
    ),
    ScenarioKind.LONG_LIE: KindInfo(
        target="household",
        duration="6h",
        params={},
        expect=((AlertKind.LONG_BATHROOM_STAY, "2h"),),
        why="a fall in the bathroom: no motion anywhere until someone arrives after `duration`",
    ),
    ScenarioKind.COLD_HOME: KindInfo(
        target="household",
        duration="3d",
        shape=Shape.STEP,
        params={"heating_off": {"to": 1.0}, "outside_delta": {"to": -8.0}},
        expect=((AlertKind.ROOM_COLD, "18h"),),
        why="boiler failure (or heating not used) in a cold snap: rooms fall below 16 °C",
    ),
    ScenarioKind.HOT_HOME: KindInfo(
        target="household",
        duration="3d",
        shape=Shape.STEP,
        params={"outside_delta": {"to": 14.0}, "heating_boost": {"to": 1.0}},
        expect=((AlertKind.ROOM_HOT, "18h"),),
        why="a heatwave and a thermostat turned up and left on: rooms rise above 27 °C",
    ),
    ScenarioKind.IMPROVING_NIGHTS: KindInfo(
        target="household",
        duration="10d",
        shape=Shape.LINEAR,
        params={
            "night_waking": {"from": 2.5, "to": -3.0},
            "night_toilet": {"from": 1.0, "to": -3.0},
            "night_wandering": {"from": 0.3, "to": 0.0},
        },
        expect=((AlertKind.CARE_REVIEW, "17d"),),
        why="disturbed nights settle into uninterrupted sleep: evidence to review waking-night care",
    ),
    ScenarioKind.DEVICE_FAULT: KindInfo(target="device", duration="6h", params={}, expect=()),
    ScenarioKind.GATEWAY_OUTAGE: KindInfo(target="site", duration="4h", params={}, expect=()),
}

#: The longest a working device of each kind can be quiet in normal use (a fridge nobody opens overnight, a kit
#: device between daily rounds, a mains plug's periodic report): the device classes' own reporting behaviour, which
#: is what the ground truth's "device_silent by" allows. The simulator's own table, not the platform's rule, so a
#: rule change cannot move the ground truth (tests/firmware_sim/test_imports.py keeps the detector out).
QUIET_UP_TO: dict[DeviceKind, timedelta] = {
    DeviceKind.PULSE_OXIMETER: timedelta(hours=36),
    DeviceKind.THERMOMETER: timedelta(hours=36),
    DeviceKind.BP_CUFF: timedelta(hours=36),
    DeviceKind.MOTION_SENSOR: timedelta(hours=6),
    DeviceKind.BATHROOM_SENSOR: timedelta(hours=6),
    DeviceKind.DOOR_SENSOR: timedelta(hours=12),
    DeviceKind.FRIDGE_SENSOR: timedelta(hours=12),
    DeviceKind.PLUG: timedelta(hours=1),
    DeviceKind.CLIMATE_SENSOR: timedelta(hours=1),
}
DEFAULT_QUIET_UP_TO = timedelta(hours=12)

#: Below this an outage is a blip that must not raise gateway_offline; at or above LONG it must.
SHORT_OUTAGE = timedelta(minutes=10)
LONG_OUTAGE = timedelta(hours=1)
GATEWAY_OFFLINE_WITHIN = timedelta(minutes=45)

#: Fault kinds' parameters and defaults (what the byte layer reads from DeviceFault.params).
FAULT_DEFAULTS: dict[FaultKind, dict[str, float | str]] = {
    FaultKind.FLAT_BATTERY: {"start_pct": 30.0, "hours_to_flat": 36.0, "low_pct": 20.0},
    FaultKind.GARBAGE_FRAMES: {"fraction": 0.3},
    FaultKind.DISCONNECT_STORM: {"per_minute": 6.0},
    FaultKind.DUPLICATE_NOTIFICATIONS: {"copies": 3.0},
    FaultKind.CLOCK_UNSET: {},
    FaultKind.CLOCK_WRONG: {"skew_s": -86_400.0 * 365},
}
CLOCK_FAULTS = frozenset({FaultKind.CLOCK_UNSET, FaultKind.CLOCK_WRONG})
#: Device kinds whose frames carry a Date Time, so a clock fault can show: the thermometer (0x2A1C), the cuff
#: (0x2A35) and the PLX spot check (0x2A5E). Household sensors send BTHome advertisements, which carry no time.
CLOCK_DEVICE_KINDS = frozenset({DeviceKind.THERMOMETER, DeviceKind.BP_CUFF, DeviceKind.PULSE_OXIMETER})


# ------------------------------------------------------------------------------------------------------------
# YAML models
# ------------------------------------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True)


class TrajectorySpec(_Model):
    """One parameter: ramps from ``from`` to ``to`` starting ``start`` after onset, over ``over``."""

    to: float
    from_: float = Field(0.0, alias="from")
    start: Duration = timedelta(0)
    over: Duration | None = None  # default: the rest of the progression duration
    shape: Shape | None = None  # default: the progression's shape


class ProgressionSpec(_Model):
    duration: Duration | None = None  # default: the kind's duration
    shape: Shape | None = None
    hold: Duration | None = None  # how long the peak lasts after the progression; default: the kind's
    recovery: Duration | None = None  # then back to baseline over this; both unset = the change persists
    params: dict[str, float | TrajectorySpec] = {}


class TargetSpec(_Model):
    """Who or what the scenario happens to. Give exactly one of resident/household/site, or ``condition``."""

    resident: int | str | None = None  # global index (0-based, in site order) or id like 'res-oak-03'
    household: int | str | None = None  # index or id like 'hh-02'
    site: int | str | None = None  # care-home site index or id (for gateway outages and kit devices)
    condition: Condition | None = None  # 'any resident with <condition>' (first one not already targeted)
    living_alone: bool = False  # household: the first one-person household not already targeted
    device: str | None = None  # device role: household sensor ('bathroom') or care-home kit ('kit-01')
    device_kind: DeviceKind | None = None  # needed for kits (a kit has an oximeter, a cuff and a thermometer)

    @model_validator(mode="after")
    def _one_target(self) -> TargetSpec:
        given = [n for n in ("resident", "household", "site") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of resident/household/site, not {' and '.join(given)}")
        if self.condition is not None and given and given != ["resident"]:
            raise ValueError("condition selects a resident; it cannot be combined with household/site")
        if self.living_alone and given and given != ["household"]:
            raise ValueError("living_alone selects a household; it cannot be combined with resident/site")
        return self


class ExpectSpec(_Model):
    alert: AlertKind | None = None  # None: no alert is required (use with must_not)
    within: Duration = timedelta(hours=24)  # expected_by = onset + within
    must_not: tuple[AlertKind, ...] = ()  # alerts that would be false positives for this scenario


class FaultSpec(_Model):
    kind: FaultKind
    params: dict[str, float | str] = {}
    replaced_after: Duration | None = None  # flat battery: the battery is changed this long after it died


class ScenarioSpec(_Model):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    kind: ScenarioKind
    description: str = ""
    target: TargetSpec = TargetSpec()
    onset: OnsetField
    progression: ProgressionSpec = ProgressionSpec()
    expect: tuple[ExpectSpec, ...] | None = None  # default: the kind's expected alerts
    fault: FaultSpec | None = None  # device_fault only

    @model_validator(mode="after")
    def _fits_kind(self) -> ScenarioSpec:
        info = KINDS[self.kind]
        unknown = sorted(set(self.progression.params) - set(info.params))
        if unknown:
            allowed = ", ".join(info.params) or "none"
            raise ValueError(f"{self.kind.value} has no parameter {', '.join(unknown)} (allowed: {allowed})")
        t = self.target
        if info.target == "resident" and (t.household is not None or t.site is not None or t.living_alone):
            raise ValueError(f"{self.kind.value} happens to a care-home resident: target resident or condition")
        if info.target == "household" and (t.resident is not None or t.site is not None or t.condition):
            raise ValueError(f"{self.kind.value} happens in a household: target household or living_alone")
        if info.target == "device":
            if self.fault is None:
                raise ValueError("device_fault needs a fault: {kind: flat_battery|garbage_frames|...}")
            if t.device is None or (t.household is None and t.site is None):
                raise ValueError("device_fault target needs device (role) and household or site")
            if t.site is not None and t.device_kind is None:
                raise ValueError("a care-home kit device needs device_kind (pulse_oximeter, bp_cuff, thermometer)")
            unknown_fault = sorted(set(self.fault.params) - set(FAULT_DEFAULTS[self.fault.kind]))
            if unknown_fault:
                allowed = ", ".join(FAULT_DEFAULTS[self.fault.kind]) or "none"
                raise ValueError(
                    f"fault {self.fault.kind.value} has no parameter {', '.join(unknown_fault)} (allowed: {allowed})"
                )
            if self.fault.kind in CLOCK_FAULTS:
                self._check_clock_fault()
        elif self.fault is not None:
            raise ValueError(f"fault is only for device_fault scenarios, not {self.kind.value}")
        if info.target == "site" and t.site is None and t.household is None:
            raise ValueError("gateway_outage target needs site (care home) or household")
        for name, value in self.progression.params.items():
            if name in ("new_confusion", "soft_signs", "heating_off", "heating_boost", "night_wandering"):
                lo_hi = (value, value) if isinstance(value, float | int) else (value.from_, value.to)
                if not all(0.0 <= v <= 1.0 for v in lo_hi):
                    raise ValueError(f"{name} is a probability/fraction and must stay within 0..1")
        return self

    def _check_clock_fault(self) -> None:
        """A clock fault needs a device whose frames carry a time, and a wrong clock must be off by more than the
        gateway tolerates (``gateway.frames.DEFAULT_MAX_SKEW``): else the expected device_fault could never come."""
        from carewatch.gateway.frames import DEFAULT_MAX_SKEW

        assert self.fault is not None
        t = self.target
        kinds = ", ".join(sorted(k.value for k in CLOCK_DEVICE_KINDS))
        if t.household is not None or (t.device_kind is not None and t.device_kind not in CLOCK_DEVICE_KINDS):
            what = f"a {t.device_kind.value}" if t.device_kind is not None else "a household sensor"
            raise ValueError(f"{self.fault.kind.value} needs a device whose frames carry a Date Time (a care-home "
                             f"kit's {kinds}); {t.device} is {what}, and BTHome advertisements carry no time")
        skew = float(self.fault_params().get("skew_s", math.inf))
        if abs(skew) <= DEFAULT_MAX_SKEW.total_seconds():
            raise ValueError(f"skew_s {skew:g} is within the {DEFAULT_MAX_SKEW.total_seconds():g} s the gateway "
                             "accepts from a device clock, so no fault would show")

    # ---- derived, with kind defaults filled in -------------------------------------------------------
    @property
    def info(self) -> KindInfo:
        return KINDS[self.kind]

    @property
    def duration(self) -> timedelta:
        return self.progression.duration or parse_duration(self.info.duration)

    def trajectories(self, onset: datetime) -> dict[str, Trajectory]:
        """Parameter trajectories in absolute time: kind defaults overridden by the YAML's params."""
        info = self.info
        prog = self.progression
        duration = self.duration.total_seconds()
        shape = prog.shape or info.shape
        hold = prog.hold if prog.hold is not None else (parse_duration(info.hold) if info.hold else None)
        recovery = prog.recovery if prog.recovery is not None else (
            parse_duration(info.recovery) if info.recovery else None
        )
        t_onset = onset.timestamp()
        hold_end = None
        if hold is not None or recovery is not None:
            hold_end = t_onset + duration + (hold or timedelta(0)).total_seconds()
        elif self.kind in _FINITE_KINDS:  # e.g. a cold home: over when the progression's duration is
            hold_end = t_onset + duration
        specs: dict[str, TrajectorySpec] = {n: TrajectorySpec.model_validate(d) for n, d in info.params.items()}
        for name, value in prog.params.items():
            if isinstance(value, TrajectorySpec):
                specs[name] = value
            else:  # shorthand: just the peak value, ramped over the whole duration
                specs[name] = TrajectorySpec(to=float(value))
        out: dict[str, Trajectory] = {}
        for name, spec in specs.items():
            start = spec.start.total_seconds()
            over = spec.over.total_seconds() if spec.over is not None else max(duration - start, 0.0)
            out[name] = Trajectory(
                t0=t_onset + start,
                over=over,
                from_=spec.from_,
                to=spec.to,
                shape=spec.shape or shape,
                hold_end=hold_end,
                recovery=(recovery or timedelta(0)).total_seconds(),
            )
        return out

    def resolved_until(self, onset: datetime) -> datetime | None:
        """When the scenario's effect is over (None: it persists)."""
        prog = self.progression
        info = self.info
        hold = prog.hold if prog.hold is not None else (parse_duration(info.hold) if info.hold else None)
        recovery = prog.recovery if prog.recovery is not None else (
            parse_duration(info.recovery) if info.recovery else None
        )
        if hold is None and recovery is None:
            return onset + self.duration if self.kind in _FINITE_KINDS else None
        return onset + self.duration + (hold or timedelta(0)) + (recovery or timedelta(0))

    def expectations(self) -> tuple[ExpectSpec, ...]:
        """The alerts this scenario should (and should not) produce, kind defaults filled in."""
        if self.expect is not None:
            return self.expect
        if self.kind is ScenarioKind.DEVICE_FAULT:
            assert self.fault is not None
            if self.fault.kind is FaultKind.FLAT_BATTERY:
                params = {**FAULT_DEFAULTS[FaultKind.FLAT_BATTERY], **self.fault.params}
                hours = float(params["hours_to_flat"])
                start, low = float(params["start_pct"]), float(params["low_pct"])
                below_low = max(0.0, (start - low) / max(start, 1e-9)) * hours
                low_spec = ExpectSpec(alert=AlertKind.BATTERY_LOW, within=timedelta(hours=below_low + 7))
                # A device only counts as silent once it has been quiet longer than its kind can be in normal use
                # (QUIET_UP_TO: a fridge sensor 12 h, a motion sensor 6 h), plus an hour for the check to run; a
                # battery changed before then never makes it silent.
                quiet = self._silent_after()
                replaced = self.fault.replaced_after
                if replaced is not None and replaced <= quiet:
                    return (low_spec,)
                return (low_spec, ExpectSpec(alert=AlertKind.DEVICE_SILENT,
                                             within=timedelta(hours=hours) + quiet + timedelta(hours=1)))
            return (ExpectSpec(alert=AlertKind.DEVICE_FAULT, within=timedelta(hours=1)),)
        if self.kind is ScenarioKind.GATEWAY_OUTAGE:
            if self.duration >= LONG_OUTAGE:
                return (ExpectSpec(alert=AlertKind.GATEWAY_OFFLINE, within=GATEWAY_OFFLINE_WITHIN),)
            if self.duration <= SHORT_OUTAGE:
                return (ExpectSpec(alert=None, within=self.duration, must_not=(AlertKind.GATEWAY_OFFLINE,)),)
            return (ExpectSpec(alert=None, within=self.duration),)
        return tuple(ExpectSpec(alert=a, within=parse_duration(w)) for a, w in self.info.expect)

    def _silent_after(self) -> timedelta:
        """How long the target device may be quiet in normal use before anyone should call it silent."""
        t = self.target
        kind = t.device_kind if t.device_kind is not None else (
            SENSORS[t.device].device_kind if t.device in SENSORS else None)
        return QUIET_UP_TO.get(kind, DEFAULT_QUIET_UP_TO) if kind else DEFAULT_QUIET_UP_TO

    def fault_params(self) -> dict[str, float | str]:
        assert self.fault is not None
        return {**FAULT_DEFAULTS[self.fault.kind], **self.fault.params}


_FINITE_KINDS = frozenset(
    {ScenarioKind.LONG_LIE, ScenarioKind.COLD_HOME, ScenarioKind.HOT_HOME, ScenarioKind.GATEWAY_OUTAGE}
)

#: What build_world takes: a validated scenario.
Scenario = ScenarioSpec


class ScenarioFile(_Model):
    name: str
    description: str = ""
    suggested_start: str | None = None  # advice for the caller, e.g. '21:00' local for the demo
    scenarios: list[ScenarioSpec] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> ScenarioFile:
        seen: set[str] = set()
        for s in self.scenarios:
            if s.id in seen:
                raise ValueError(f"scenario id {s.id!r} is used twice")
            seen.add(s.id)
        return self


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------
BUILTIN = ("demo", "month")


def _explain(error: ValidationError, doc: Any) -> str:
    """Name scenarios by id rather than list index where we can."""
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        if len(loc) >= 2 and loc[0] == "scenarios" and isinstance(loc[1], int):
            with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
                loc[1] = f"{loc[1]}({doc['scenarios'][loc[1]].get('id', '?')})"
        where = ".".join(str(p) for p in loc) or "file"
        lines.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines) if lines else explain(error)


def parse_scenario_file(text: str, *, source: str = "<string>") -> ScenarioFile:
    """Validate YAML text; ScenarioError with the file name and field path when it is wrong."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ScenarioError(f"{source}: a scenario file is a mapping with 'name' and 'scenarios'")
    try:
        return ScenarioFile.model_validate(doc)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_explain(exc, doc)}") from None


def load_scenario_file(name_or_path: str | Path) -> ScenarioFile:
    """Load a built-in scenario file by name ('demo', 'month') or any YAML file by path.

    A built-in name given as a Path (as a CLI option may pass it) is the built-in unless that file exists."""
    if str(name_or_path) in BUILTIN and (isinstance(name_or_path, str) or not Path(name_or_path).is_file()):
        ref = resources.files("carewatch.firmware_sim").joinpath("scenarios", f"{name_or_path}.yaml")
        return parse_scenario_file(ref.read_text(encoding="utf-8"), source=f"{name_or_path}.yaml")
    path = Path(name_or_path)
    if not path.exists():
        raise ScenarioError(f"no scenario file {path} (built-in names: {', '.join(BUILTIN)})")
    return parse_scenario_file(path.read_text(encoding="utf-8"), source=str(path))


def load_scenarios(name_or_path: str | Path) -> list[Scenario]:
    return list(load_scenario_file(name_or_path).scenarios)


@dataclass
class GroundTruthRow:
    """One expected (or forbidden) alert for evaluation; written as one JSON line."""

    id: str
    scenario: str
    kind: str
    target_type: str
    target: str
    site: str
    onset: str
    progression_end: str
    resolved_at: str | None
    expected_alert: str | None
    expected_by: str
    must_not: list[str] = field(default_factory=list)
    description: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
