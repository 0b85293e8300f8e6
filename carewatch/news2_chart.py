"""NEWS2 (RCP 2017) Chart 1, written once in the chart's own notation, and the tables derived from it.

A shared contract (beside ``carewatch/wire.py``): the scorer (``carewatch.scoring.news2``) builds its lookup tables
from it, and the dashboard shades its charts with it, so the dashboard needs nothing from ``scoring/``.
docs/clinical-safety.md (hazards H-NEWS2-*) explains the rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Final, Literal, cast

from carewatch.wire import Metric

__all__ = [
    "AIR_OR_OXYGEN_POINTS",
    "BANDS",
    "CHART1",
    "CONSCIOUSNESS_POINTS",
    "HIGH_TOTAL",
    "MEASURED_PARAMETERS",
    "MEDIUM_TOTAL",
    "METRIC_OF",
    "NUMERIC_PARAMETERS",
    "PARAMETERS",
    "RED_SUBSCORE",
    "STEPS_PER_UNIT",
    "Band",
    "spo2_table",
]

# ------------------------------------------------------------------------------------------------------------
# Chart 1, written once
# ------------------------------------------------------------------------------------------------------------
#: RCP 2017 NEWS2 Chart 1, band by band, in the chart's notation (edges inclusive). The Scale 2 rows marked
#: "on air" / "on oxygen" apply only then; unmarked rows apply to both.
CHART1: Mapping[str, tuple[tuple[str, int], ...]] = MappingProxyType(
    {
        "respiration_rate": (("<=8", 3), ("9-11", 1), ("12-20", 0), ("21-24", 2), (">=25", 3)),
        "spo2_scale1": (("<=91", 3), ("92-93", 2), ("94-95", 1), (">=96", 0)),
        "spo2_scale2": (
            ("<=83", 3),
            ("84-85", 2),
            ("86-87", 1),
            ("88-92", 0),
            (">=93 on air", 0),
            ("93-94 on oxygen", 1),
            ("95-96 on oxygen", 2),
            (">=97 on oxygen", 3),
        ),
        "systolic_bp": (("<=90", 3), ("91-100", 2), ("101-110", 1), ("111-219", 0), (">=220", 3)),
        "pulse": (("<=40", 3), ("41-50", 1), ("51-90", 0), ("91-110", 1), ("111-130", 2), (">=131", 3)),
        "temperature": (("<=35.0", 3), ("35.1-36.0", 1), ("36.1-38.0", 0), ("38.1-39.0", 1), (">=39.1", 2)),
    }
)
AIR_OR_OXYGEN_POINTS: Mapping[str, int] = MappingProxyType({"air": 0, "oxygen": 2})
#: ACVPU: new Confusion, Voice, Pain and Unresponsive all score 3. 'C' means NEW confusion only.
CONSCIOUSNESS_POINTS: Mapping[str, int] = MappingProxyType({"A": 0, "C": 3, "V": 3, "P": 3, "U": 3})

#: Chart 3: the two aggregate thresholds and the single-parameter "red score".
MEDIUM_TOTAL: Final = 5
HIGH_TOTAL: Final = 7
RED_SUBSCORE: Final = 3

#: The seven scored parameters, in output order (columns of ``News2Arrays.subscores``).
PARAMETERS: tuple[str, ...] = (
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)
#: Parameters that can be missing (air_or_oxygen defaults to air).
MEASURED_PARAMETERS: tuple[str, ...] = tuple(p for p in PARAMETERS if p != "air_or_oxygen")
NUMERIC_PARAMETERS: tuple[str, ...] = ("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature")
#: Chart resolution, as rounding steps per unit.
STEPS_PER_UNIT: Mapping[str, int] = MappingProxyType(
    {"respiration_rate": 1, "spo2": 1, "systolic_bp": 1, "pulse": 1, "temperature": 10}
)
#: The wire metric whose plausibility range applies (the ranges live only in carewatch.wire.METRICS).
METRIC_OF: Mapping[str, Metric] = MappingProxyType(
    {
        "respiration_rate": Metric.RESPIRATION_RATE,
        "spo2": Metric.SPO2,
        "systolic_bp": Metric.SYSTOLIC_BP,
        "pulse": Metric.PULSE_RATE,
        "temperature": Metric.TEMPERATURE,
    }
)



@dataclass(frozen=True)
class Band:
    """One Chart 1 cell: ``low <= value <= high`` (None = unbounded) scores ``points``."""

    text: str
    low: Decimal | None
    high: Decimal | None
    points: int
    when: Literal["air", "oxygen"] | None = None  # Scale 2 rows that apply only on air / only on oxygen

    def applies(self, on_oxygen: bool) -> bool:
        return self.when is None or self.when == ("oxygen" if on_oxygen else "air")


_BAND_TEXT = re.compile(
    r"^(?:<=(?P<le>\d+(?:\.\d)?)|>=(?P<ge>\d+(?:\.\d)?)|(?P<lo>\d+(?:\.\d)?)-(?P<hi>\d+(?:\.\d)?))"
    r"(?: on (?P<when>air|oxygen))?$"
)


def _parse_band(text: str, points: int) -> Band:
    match = _BAND_TEXT.match(text)
    if match is None:
        raise ValueError(f"unreadable Chart 1 band {text!r}")
    low = match["ge"] or match["lo"]
    high = match["le"] or match["hi"]
    return Band(
        text,
        Decimal(low) if low else None,
        Decimal(high) if high else None,
        points,
        cast(Literal["air", "oxygen"] | None, match["when"]),  # the pattern allows only these
    )


#: CHART1 parsed into bands.
BANDS: Mapping[str, tuple[Band, ...]] = MappingProxyType(
    {name: tuple(_parse_band(text, points) for text, points in rows) for name, rows in CHART1.items()}
)


def spo2_table(scale: int) -> str:
    """Name of the CHART1 table for SpO2 on ``scale`` (1 or 2)."""
    if scale not in (1, 2):
        raise ValueError(f"spo2_scale must be 1 or 2, not {scale!r}")
    return f"spo2_scale{scale}"
