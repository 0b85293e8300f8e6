"""The types scenarios, physiology and the household model share: effects and the wall clock.

A scenario (``scenarios.py``) becomes an :class:`Effect` on one resident or household: named parameter
:class:`Trajectory` objects over absolute time, which the physiology (``physiology.py``) and household
(``household.py``) models evaluate with numpy. :class:`WallClock` maps the simulated day's local wall time to epoch
seconds for all of them. These live here, below all three, so none of them has to import another at function level
(they used to form a cycle scenarios -> physiology -> scenarios and household -> scenarios -> household).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from enum import StrEnum

import numpy as np


class ScenarioKind(StrEnum):
    """What a scenario does (its defaults are ``scenarios.KINDS``)."""

    INFECTION = "infection"
    COPD_EXACERBATION = "copd_exacerbation"
    URINARY_INFECTION = "urinary_infection"  # a care-home resident's UTI (the household kind is `uti`)
    SLOW_DECLINE = "slow_decline"
    UTI = "uti"
    NOT_EATING = "not_eating"
    LONG_LIE = "long_lie"
    COLD_HOME = "cold_home"
    HOT_HOME = "hot_home"
    IMPROVING_NIGHTS = "improving_nights"
    DEVICE_FAULT = "device_fault"
    GATEWAY_OUTAGE = "gateway_outage"



# ------------------------------------------------------------------------------------------------------------
# Trajectories
# ------------------------------------------------------------------------------------------------------------
class Shape(StrEnum):
    LINEAR = "linear"
    LOGISTIC = "logistic"  # slow start, fast middle, plateau: how a fever or an infection usually builds
    STEP = "step"  # immediate change at its start


_LOGISTIC_K = 10.0
_LOGISTIC_LO = 1.0 / (1.0 + math.exp(_LOGISTIC_K / 2))
_LOGISTIC_HI = 1.0 / (1.0 + math.exp(-_LOGISTIC_K / 2))


def shape_fraction(x: np.ndarray, shape: Shape) -> np.ndarray:
    """Progress 0..1 for elapsed fraction ``x`` (clipped), normalised so every shape hits exactly 0 and 1."""
    x = np.clip(x, 0.0, 1.0)
    if shape is Shape.LINEAR:
        return x
    if shape is Shape.STEP:
        return np.ones_like(x)
    sig = 1.0 / (1.0 + np.exp(-_LOGISTIC_K * (x - 0.5)))
    return (sig - _LOGISTIC_LO) / (_LOGISTIC_HI - _LOGISTIC_LO)


@dataclass(frozen=True, slots=True)
class Trajectory:
    """One parameter's change over absolute time (epoch seconds).

    ``from_`` before ``t0``; ramps to ``to`` over ``over`` seconds; holds until ``hold_end`` (for good if
    None); then returns linearly to ``from_`` over ``recovery`` seconds.
    """

    t0: float
    over: float
    from_: float
    to: float
    shape: Shape
    hold_end: float | None = None
    recovery: float = 0.0

    def at(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        if self.shape is Shape.STEP or self.over <= 0:
            frac = (t >= self.t0).astype(float)
        else:
            frac = shape_fraction((t - self.t0) / self.over, self.shape) * (t >= self.t0)
        if self.hold_end is not None:
            if self.recovery > 0:
                back = np.clip((t - self.hold_end) / self.recovery, 0.0, 1.0)
            else:
                back = (t >= self.hold_end).astype(float)
            frac = frac * (1.0 - back)
        return self.from_ + (self.to - self.from_) * frac


@dataclass(frozen=True)
class Effect:
    """One scenario's effect on one resident or household: named parameter trajectories."""

    scenario_id: str
    kind: ScenarioKind
    onset: float  # epoch seconds
    end: float  # onset + progression duration
    params: Mapping[str, Trajectory]
    soft_signs: tuple[str, ...] = ()

    def value(self, name: str, t: np.ndarray | float) -> np.ndarray:
        trajectory = self.params.get(name)
        if trajectory is None:
            return np.zeros_like(np.asarray(t, dtype=float))
        return trajectory.at(t)


def total_effect(effects: Sequence[Effect], name: str, t: np.ndarray) -> np.ndarray:
    """Sum of every effect's ``name`` parameter at times ``t`` (scenarios on one entity add up)."""
    out = np.zeros(np.shape(t))
    if not effects:
        return out
    for effect in effects:
        if name in effect.params:
            out = out + effect.params[name].at(t)
    return out


# ------------------------------------------------------------------------------------------------------------
# Wall clock: local time of day <-> epoch seconds
# ------------------------------------------------------------------------------------------------------------
class WallClock:
    """Maps (sim day, wall-clock seconds since local midnight) to epoch seconds, DST included.

    Day 0 is the local date of the sim start. Routines are planned in wall time (rounds at 08:00 local);
    on a DST change day the shift is applied from 03:00 wall time, which is right for the UK and the EU
    (both change between 01:00 and 03:00 local).
    """

    def __init__(self, start: datetime, tz: tzinfo) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.start = start
        self.tz = tz
        self.first_date = start.astimezone(tz).date()
        self._midnights: dict[int, float] = {}

    def midnight(self, day: int) -> float:
        value = self._midnights.get(day)
        if value is None:
            local = datetime.combine(self.first_date + timedelta(days=day), time(0), tzinfo=self.tz)
            value = self._midnights[day] = local.timestamp()
            if len(self._midnights) > 4096:
                self._midnights.clear()
        return value

    def day_length(self, day: int) -> float:
        return self.midnight(day + 1) - self.midnight(day)

    def to_epoch(self, day: int, wall_s: np.ndarray | float) -> np.ndarray:
        """Epoch seconds for wall-clock seconds after day ``day``'s local midnight (may exceed 86400)."""
        wall = np.asarray(wall_s, dtype=float)
        if wall.ndim == 1 and wall.size and wall.min() >= 0.0 and wall.max() < 86_400.0:  # the common case
            correction = self.day_length(day) - 86_400.0
            base = self.midnight(day)
            return base + wall if correction == 0.0 else base + wall + np.where(wall >= 10_800.0, correction, 0.0)
        out = np.empty_like(wall)
        day_of = np.floor_divide(wall, 86_400.0).astype(int)
        for offset in np.unique(day_of):
            mask = day_of == offset
            d = day + int(offset)
            local = wall[mask] - 86_400.0 * int(offset)
            correction = self.day_length(d) - 86_400.0
            out[mask] = self.midnight(d) + local + np.where(local >= 3 * 3600.0, correction, 0.0)
        return out

    def day_of(self, when: datetime | float) -> int:
        """The sim day (0 = start date) containing ``when``."""
        if not isinstance(when, datetime):
            when = datetime.fromtimestamp(when, self.tz)
        return (when.astimezone(self.tz).date() - self.first_date).days

    def weekday(self, day: int) -> int:
        return (self.first_date + timedelta(days=day)).weekday()

    def day_of_year(self, day: int) -> int:
        return (self.first_date + timedelta(days=day)).timetuple().tm_yday
