"""A plain scalar NEWS2 scorer, one set at a time: the oracle the vectorised scorer is tested against.

It reads the same band table (``news2.BANDS``, parsed from ``news2.CHART1``) but shares none of the vectorised
machinery: it rounds with ``decimal`` (half away from zero on the number as written) and walks the bands with
ordinary comparisons. It is deliberately simple and slow; never use it in production paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from carewatch.news2_chart import METRIC_OF
from carewatch.scoring.clinical_response import Risk
from carewatch.scoring.news2 import (
    AIR_OR_OXYGEN_POINTS,
    BANDS,
    CONSCIOUSNESS_POINTS,
    HIGH_TOTAL,
    MEDIUM_TOTAL,
    NUMERIC_PARAMETERS,
    PARAMETERS,
    RED_SUBSCORE,
    STEPS_PER_UNIT,
    spo2_table,
)
from carewatch.wire import check_plausible


@dataclass(frozen=True)
class ReferenceResult:
    score: int
    risk: Risk
    subscores: dict[str, int | None]
    complete: bool
    missing: tuple[str, ...]


def round_for_chart(value: float, steps_per_unit: int) -> Decimal:
    """Round the value as written (its shortest repr) half away from zero to 1/steps_per_unit."""
    quantum = Decimal(1) / Decimal(steps_per_unit)
    return Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP)  # HALF_UP is away from zero


def band_points(table: str, value: Decimal, on_oxygen: bool = False) -> int:
    """Walk the table's bands in order and return the points of the one containing ``value``."""
    for band in BANDS[table]:
        if not band.applies(on_oxygen):
            continue
        if (band.low is None or value >= band.low) and (band.high is None or value <= band.high):
            return band.points
    raise LookupError(f"no {table} band contains {value}")


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def score_reference(obs: Mapping[str, object]) -> ReferenceResult:
    """Score one set given as a mapping with the ObservationSet keys (None or NaN = missing)."""
    scale = obs.get("spo2_scale") or 1
    on_oxygen = bool(obs.get("on_oxygen") or False)
    subscores: dict[str, int | None] = {}
    for parameter in PARAMETERS:
        if parameter == "air_or_oxygen":
            subscores[parameter] = AIR_OR_OXYGEN_POINTS["oxygen" if on_oxygen else "air"]
            continue
        value = obs.get(parameter)
        # (the reference takes an untyped mapping on purpose: it must see exactly what a caller passed)
        if _missing(value):  # type: ignore[arg-type]
            subscores[parameter] = None
        elif parameter == "consciousness":
            subscores[parameter] = CONSCIOUSNESS_POINTS[str(value)]
        else:
            assert parameter in NUMERIC_PARAMETERS
            number = check_plausible(METRIC_OF[parameter], value)  # type: ignore[arg-type]  # untyped mapping
            rounded = round_for_chart(number, STEPS_PER_UNIT[parameter])
            table = spo2_table(int(scale)) if parameter == "spo2" else parameter  # type: ignore[call-overload]  # idem
            subscores[parameter] = band_points(table, rounded, on_oxygen)
    present = [points for points in subscores.values() if points is not None]
    total = sum(present)
    if total >= HIGH_TOTAL:
        risk = Risk.HIGH
    elif total >= MEDIUM_TOTAL:
        risk = Risk.MEDIUM
    elif RED_SUBSCORE in present:
        risk = Risk.LOW_MEDIUM
    else:
        risk = Risk.LOW
    missing = tuple(name for name, points in subscores.items() if points is None)
    return ReferenceResult(total, risk, subscores, not missing, missing)
