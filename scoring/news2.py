"""NEWS2 (RCP 2017): the Chart 1 band table, a vectorised scorer and a one-set convenience API.

The band table ``CHART1`` is written once, in the chart's own notation, and everything else is derived from it:
the lookup tables of the vectorised scorer here and the comparisons of the scalar reference in
``news2_reference.py``. docs/clinical-safety.md (hazards H-NEWS2-*) explains every rule chosen below.

Rules (see the hazard log for why):

* **Rounding.** Each value is rounded half away from zero to the chart's resolution (whole numbers; 0.1 °C for
  temperature) *before* scoring: 20.5 -> 21, 90.5 -> 91, 37.65 -> 37.7, 35.05 -> 35.1. Exactly:
  ``rounded = sign(x) * floor(|x| * k + 0.5 + ROUNDING_EPSILON) / k`` with k = 1 or 10 steps per unit.
  The epsilon (1e-6 of a step) absorbs binary floating point (37.65 is stored as 37.6499999...), so the result
  equals decimal half-away-from-zero rounding of the number as written for every input with at most 5 decimal
  places; binary error is below 1e-12 of a step in the plausible ranges.
* **Implausible values** (outside ``carewatch.wire.METRICS`` for the metric, or not finite) are rejected with
  ``ImplausibleValue``; they are never scored. NaN / None means *missing*, not implausible.
* **Missing parameters** score nothing: the total is the sum of the parameters present, ``complete`` is False
  and the missing parameters are listed. A partial low score is never presented as a complete one (see
  ``clinical_response``).
* **Air or oxygen** is never missing: an unknown ``on_oxygen`` is air (the issue's default), scoring 0.
* **Scale 2** is used only when the caller says so for that set (``scale2`` / ``spo2_scale=2``). On Scale 2,
  SpO2 >= 93% on air scores 0; 93-94 / 95-96 / >=97 score 1 / 2 / 3 only on oxygen.
* **Risk**: high if total >= 7, else medium if total >= 5, else low-medium if any parameter scores 3, else low.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from carewatch.news2_chart import (  # Chart 1: the scorer's tables are built from it
    AIR_OR_OXYGEN_POINTS,
    BANDS,
    CHART1,
    CONSCIOUSNESS_POINTS,
    HIGH_TOTAL,
    MEASURED_PARAMETERS,
    MEDIUM_TOTAL,
    METRIC_OF,
    NUMERIC_PARAMETERS,
    PARAMETERS,
    RED_SUBSCORE,
    STEPS_PER_UNIT,
    Band,
    spo2_table,
)
from carewatch.scoring.clinical_response import RISK_BY_CODE, ClinicalResponse, Risk, clinical_response
from carewatch.wire import METRICS, ImplausibleValue, Metric, check_plausible

__all__ = [
    "AIR_OR_OXYGEN_POINTS",
    "BANDS",
    "CHART1",
    "CONSCIOUSNESS_CODES",
    "CONSCIOUSNESS_POINTS",
    "HIGH_TOTAL",
    "MEASURED_PARAMETERS",
    "MEDIUM_TOTAL",
    "MISSING",
    "MISSING_CONSCIOUSNESS",
    "NUMERIC_PARAMETERS",
    "PARAMETERS",
    "RED_SUBSCORE",
    "ROUNDING_EPSILON",
    "STEPS_PER_UNIT",
    "Band",
    "ImplausibleValue",
    "InvalidObservation",
    "News2Arrays",
    "News2Result",
    "ObservationSet",
    "Risk",
    "describe_error",
    "encode_consciousness",
    "round_half_away_from_zero",
    "score_arrays",
    "score_observation",
    "score_observations",
    "spo2_table",
]


ROUNDING_EPSILON: Final = 1e-6  # in chart steps; see the module docstring
MISSING: Final = -1  # subscore of a missing parameter in News2Arrays
CONSCIOUSNESS_CODES: Mapping[str, int] = MappingProxyType({"A": 0, "C": 1, "V": 2, "P": 3, "U": 4})
MISSING_CONSCIOUSNESS: Final = -1


# ------------------------------------------------------------------------------------------------------------
# Lookup tables built from CHART1 (checked for gaps and overlaps at import)
# ------------------------------------------------------------------------------------------------------------


def _band_lookup(table: str, steps: int, size: int, on_oxygen: bool) -> NDArray[np.int8]:
    """Points by rounded value in chart steps (index i means i/steps); index 0 is the missing slot."""
    unset = -2
    lut = np.full(size, unset, dtype=np.int8)
    for band in BANDS[table]:
        if not band.applies(on_oxygen):
            continue
        first = 1 if band.low is None else band.low * steps
        last = size - 1 if band.high is None else band.high * steps
        if first != int(first) or last != int(last):
            raise ValueError(f"{table} band {band.text!r} is not on the chart resolution 1/{steps}")
        cells = lut[int(first) : int(last) + 1]
        if (cells != unset).any():
            raise ValueError(f"{table} band {band.text!r} overlaps another band")
        cells[:] = band.points
    if (lut[1:] == unset).any():
        gap = int(np.flatnonzero(lut[1:] == unset)[0]) + 1
        raise ValueError(f"{table} has no band for {gap / steps:g}")
    lut[0] = MISSING
    return lut


@dataclass(frozen=True)
class _Lane:
    """How one numeric parameter is turned into a lookup index: floor(x*scale + bias), NaN -> floor."""

    parameter: str
    row: int  # row in the subscore array
    metric: Metric
    scale: float
    bias: float  # 0.5 + epsilon + offset of this parameter's table in the flat lookup
    floor: float  # offset of the table: NaN lands here, on the missing slot


def _build_tables() -> tuple[NDArray[np.int8], tuple[_Lane, ...], int]:
    pieces: list[NDArray[np.int8]] = []
    lanes: list[_Lane] = []
    offset = 0
    spo2_stride = 0
    for parameter in NUMERIC_PARAMETERS:
        steps = STEPS_PER_UNIT[parameter]
        spec = METRICS[METRIC_OF[parameter]]
        if spec.low * steps < 1:
            raise ValueError(f"{parameter}: plausible values must round to at least one chart step")
        size = math.floor(spec.high * steps + 0.5 + ROUNDING_EPSILON) + 1
        if parameter == "spo2":
            tables = [
                _band_lookup(spo2_table(1), steps, size, on_oxygen=False),
                _band_lookup(spo2_table(2), steps, size, on_oxygen=False),
                _band_lookup(spo2_table(2), steps, size, on_oxygen=True),
            ]
            spo2_stride = size
        else:
            tables = [_band_lookup(parameter, steps, size, on_oxygen=False)]
        lanes.append(
            _Lane(
                parameter,
                PARAMETERS.index(parameter),
                METRIC_OF[parameter],
                float(steps),
                0.5 + ROUNDING_EPSILON + offset,
                float(offset),
            )
        )
        pieces.extend(tables)
        offset += size * len(tables)
    return np.concatenate(pieces), tuple(lanes), spo2_stride


_LOOKUP, _LANES, _SPO2_STRIDE = _build_tables()
_CONSCIOUSNESS_LOOKUP = np.array(
    [CONSCIOUSNESS_POINTS[letter] for letter in CONSCIOUSNESS_CODES] + [MISSING], dtype=np.int8
)  # code -1 wraps to the last entry (missing)
_ROW_AIR_OXYGEN = PARAMETERS.index("air_or_oxygen")
_ROW_CONSCIOUSNESS = PARAMETERS.index("consciousness")
_BLOCK = 32768  # sets per block: big enough to amortise call overhead, small enough for L2 cache


def round_half_away_from_zero(values: ArrayLike, steps_per_unit: int) -> NDArray[np.float64]:
    """The documented rounding rule, as a public function (the scorer applies the same formula inline)."""
    x = np.asarray(values, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) * steps_per_unit + 0.5 + ROUNDING_EPSILON) / steps_per_unit


# ------------------------------------------------------------------------------------------------------------
# Vectorised scorer
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class News2Arrays:
    """Scores of n observation sets. ``by_parameter`` is (7, n) int8 in PARAMETERS order, MISSING (-1) where
    the parameter was not measured; ``subscores`` is its (n, 7) view."""

    by_parameter: NDArray[np.int8]
    total: NDArray[np.int8]  # sum of the subscores present
    risk: NDArray[np.int8]  # Risk code: 0 low, 1 low-medium, 2 medium, 3 high (see RISK_BY_CODE)
    complete: NDArray[np.bool_]  # every parameter present

    @property
    def subscores(self) -> NDArray[np.int8]:
        return self.by_parameter.T

    @property
    def missing(self) -> NDArray[np.bool_]:
        """(n, 7) mask of the parameters not measured."""
        return self.subscores < 0

    def __len__(self) -> int:
        return int(self.total.shape[0])

    def risk_names(self) -> NDArray[np.str_]:
        return np.array([r.value for r in RISK_BY_CODE])[self.risk]


def _float_column(name: str, values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values)
    if array.dtype.kind == "b":
        raise TypeError(f"{name} must be numbers, not booleans (a bool is not a number)")
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a numeric array with NaN for missing values, not dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float64)


def _bool_column(name: str, values: ArrayLike, meaning: str) -> NDArray[np.bool_]:
    array = np.asarray(values)
    if array.dtype.kind != "b":
        raise TypeError(f"{name} must be a boolean array ({meaning}), not dtype {array.dtype}")
    return np.ascontiguousarray(array)


def _raise_implausible(lane: _Lane, column: NDArray[np.float64], start: int) -> None:
    spec = METRICS[lane.metric]
    with np.errstate(invalid="ignore"):
        bad = ~((column >= spec.low) & (column <= spec.high)) & ~np.isnan(column)
    index = int(np.flatnonzero(bad)[0])
    try:
        check_plausible(lane.metric, float(column[index]))
    except ImplausibleValue as exc:
        raise ImplausibleValue(f"observation set {start + index}: {lane.parameter}: {exc}") from None
    raise AssertionError("unreachable: value flagged implausible but check_plausible accepted it")


def score_arrays(
    respiration_rate: ArrayLike,
    spo2: ArrayLike,
    scale2: ArrayLike,
    on_oxygen: ArrayLike,
    systolic_bp: ArrayLike,
    pulse: ArrayLike,
    consciousness: ArrayLike,
    temperature: ArrayLike,
) -> News2Arrays:
    """Score n observation sets at once.

    Numeric arguments are float arrays with NaN for missing; ``scale2`` and ``on_oxygen`` are boolean arrays
    (True = SpO2 Scale 2 / on oxygen); ``consciousness`` holds CONSCIOUSNESS_CODES with MISSING_CONSCIOUSNESS
    (-1) for missing (see ``encode_consciousness``). All arrays are 1-D of the same length.

    Raises ImplausibleValue (naming the set, the parameter and the plausible range) if any present value is
    outside its carewatch.wire.METRICS range, TypeError/ValueError for malformed arrays.
    """
    numeric = {
        "respiration_rate": _float_column("respiration_rate", respiration_rate),
        "spo2": _float_column("spo2", spo2),
        "systolic_bp": _float_column("systolic_bp", systolic_bp),
        "pulse": _float_column("pulse", pulse),
        "temperature": _float_column("temperature", temperature),
    }
    scale2_col = _bool_column("scale2", scale2, "True = SpO2 Scale 2; pass spo2_scale == 2")
    oxygen_col = _bool_column("on_oxygen", on_oxygen, "True = on supplemental oxygen")
    codes = np.asarray(consciousness)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"consciousness must be integer codes (see encode_consciousness), not dtype {codes.dtype}")
    columns = [*numeric.values(), scale2_col, oxygen_col, codes]
    n = columns[0].shape[0] if columns[0].ndim == 1 else -1
    if any(col.ndim != 1 or col.shape[0] != n for col in columns):
        shapes = ", ".join(str(col.shape) for col in columns)
        raise ValueError(f"all arrays must be 1-D and of the same length; got shapes {shapes}")
    if n and (int(codes.min()) < MISSING_CONSCIOUSNESS or int(codes.max()) >= len(CONSCIOUSNESS_CODES)):
        raise ValueError(
            f"consciousness codes must be {MISSING_CONSCIOUSNESS} (missing) or 0-{len(CONSCIOUSNESS_CODES) - 1} "
            f"({', '.join(f'{k}={v}' for k, v in CONSCIOUSNESS_CODES.items())})"
        )

    by_parameter = np.empty((len(PARAMETERS), n), dtype=np.int8)
    total = np.empty(n, dtype=np.int8)
    risk = np.empty(n, dtype=np.int8)
    complete = np.empty(n, dtype=np.bool_)

    # air or oxygen: never missing
    air_or_oxygen = by_parameter[_ROW_AIR_OXYGEN]
    air_or_oxygen[:] = AIR_OR_OXYGEN_POINTS["air"]
    np.copyto(air_or_oxygen, np.int8(AIR_OR_OXYGEN_POINTS["oxygen"]), where=oxygen_col)

    block = min(_BLOCK, max(n, 1))
    scaled = np.empty(block, dtype=np.float64)
    index = np.empty(block, dtype=np.intp)
    spo2_row = np.empty(block, dtype=np.uint8)
    scratch = np.empty((len(PARAMETERS), block), dtype=np.int8)
    zeros = np.zeros((1, block), dtype=np.int8)  # an array, not a scalar 0: numpy's maximum is 10x faster
    above_medium = np.empty(block, dtype=np.bool_)
    above_high = np.empty(block, dtype=np.bool_)
    worst = np.empty(block, dtype=np.int8)
    lowest = np.empty(block, dtype=np.int8)

    for start in range(0, n, block):
        stop = min(start + block, n)
        m = stop - start
        f, i = scaled[:m], index[:m]
        for lane in _LANES:
            column = numeric[lane.parameter][start:stop]
            spec = METRICS[lane.metric]
            low, high = np.fmin.reduce(column), np.fmax.reduce(column)  # NaN (missing) is ignored
            if low < spec.low or high > spec.high:
                _raise_implausible(lane, column, start)
            if lane.parameter == "spo2":  # table row: 0 Scale 1, 1 Scale 2 on air, 2 Scale 2 on oxygen
                s2, ox, row = scale2_col[start:stop], oxygen_col[start:stop], spo2_row[:m]
                np.logical_and(s2, ox, out=row.view(np.bool_))
                np.add(row, s2.view(np.uint8), out=row)
                np.multiply(row, float(_SPO2_STRIDE), out=f)
                np.add(f, column, out=f)
                np.add(f, lane.bias, out=f)
            elif lane.scale == 1.0:
                np.add(column, lane.bias, out=f)
            else:
                np.multiply(column, lane.scale, out=f)
                np.add(f, lane.bias, out=f)
            np.fmax(f, lane.floor, out=f)  # NaN -> the missing slot
            np.copyto(i, f, casting="unsafe")  # truncation == floor: every value here is positive
            np.take(_LOOKUP, i, out=by_parameter[lane.row, start:stop], mode="clip")
        np.take(_CONSCIOUSNESS_LOOKUP, codes[start:stop], out=by_parameter[_ROW_CONSCIOUSNESS, start:stop], mode="wrap")

        sub = by_parameter[:, start:stop]
        present = scratch[:, :m]
        np.maximum(sub, zeros[:, :m], out=present)
        np.add.reduce(present, axis=0, dtype=np.int8, out=total[start:stop])
        np.minimum.reduce(sub, axis=0, out=lowest[:m])
        np.greater_equal(lowest[:m], 0, out=complete[start:stop])
        np.maximum.reduce(sub, axis=0, out=worst[:m])
        # risk code = max(red score ? 1 : 0, 2*(total >= 5) + (total >= 7))
        t, r = total[start:stop], risk[start:stop]
        np.greater_equal(t, MEDIUM_TOTAL, out=above_medium[:m])
        np.greater_equal(t, HIGH_TOTAL, out=above_high[:m])
        np.add(above_medium[:m].view(np.int8), above_medium[:m].view(np.int8), out=r)
        np.add(r, above_high[:m].view(np.int8), out=r)
        np.greater_equal(worst[:m], RED_SUBSCORE, out=above_medium[:m])  # reused: any red score
        np.maximum(r, above_medium[:m].view(np.int8), out=r)
    return News2Arrays(by_parameter, total, risk, complete)


def encode_consciousness(letters: Iterable[str | None]) -> NDArray[np.int8]:
    """ACVPU letters (None for missing) -> codes for ``score_arrays``."""
    try:
        return np.fromiter(
            (MISSING_CONSCIOUSNESS if x is None else CONSCIOUSNESS_CODES[x] for x in letters), dtype=np.int8
        )
    except KeyError as exc:
        raise ValueError(f"consciousness must be one of A, C, V, P, U or None, not {exc.args[0]!r}") from None


# ------------------------------------------------------------------------------------------------------------
# One observation set
# ------------------------------------------------------------------------------------------------------------
class InvalidObservation(ValueError):
    """An observation set that cannot be scored; the message says which field and why, ``problems`` the same by
    field (field -> why; empty when the set as a whole is wrong) for callers that point at the field."""

    def __init__(self, message: str, problems: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems: Mapping[str, str] = MappingProxyType(dict(problems or {}))


def _vital(metric: Metric) -> Any:
    """A finite JSON number (not a bool, not a string) within the metric's carewatch.wire range."""
    spec = METRICS[metric]
    return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=spec.low, le=spec.high)]


class ObservationSet(BaseModel):
    """One set of NEWS2 observations as the caller gives them. Any parameter may be missing or None.

    Numbers must be JSON numbers (a bool or a string is rejected) within the carewatch.wire plausibility range;
    ``spo2_scale`` null means 1 and ``on_oxygen`` null means air. ``consciousness`` 'C' means NEW confusion:
    a resident's usual (e.g. dementia) confusion is 'A'. Validation runs in pydantic-core (no Python per
    field), so the CLI can validate a million lines quickly; ``describe_error`` words the errors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # _vital() builds each Annotated type from carewatch.wire.METRICS (the one place the ranges live): pydantic
    # reads it at runtime, mypy cannot evaluate a call in an annotation, hence the ignores below.
    respiration_rate: _vital(Metric.RESPIRATION_RATE) | None = None  # type: ignore[valid-type]
    spo2: _vital(Metric.SPO2) | None = None  # type: ignore[valid-type]
    spo2_scale: Annotated[StrictInt, Field(ge=1, le=2)] | None = 1
    on_oxygen: StrictBool | None = False
    systolic_bp: _vital(Metric.SYSTOLIC_BP) | None = None  # type: ignore[valid-type]  # _vital(): see above
    pulse: _vital(Metric.PULSE_RATE) | None = None  # type: ignore[valid-type]  # _vital(): see above
    consciousness: Literal["A", "C", "V", "P", "U"] | None = None
    temperature: _vital(Metric.TEMPERATURE) | None = None  # type: ignore[valid-type]  # _vital(): see above

    @field_validator("spo2_scale")
    @classmethod
    def _default_scale(cls, value: int | None) -> int:
        return 1 if value is None else value

    @field_validator("on_oxygen")
    @classmethod
    def _default_air(cls, value: bool | None) -> bool:
        return bool(value)


_FIELDS = tuple(ObservationSet.model_fields)
_RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal", "finite_number"})


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _describe(item: Mapping[str, Any]) -> str:
    loc = item["loc"]
    field = str(loc[0]) if loc else ""
    kind, value = item["type"], item.get("input")
    if kind == "json_invalid":
        return f"not valid JSON ({item['msg'].removeprefix('Invalid JSON: ')})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"an observation set must be a JSON object, not {_shown(value)}"
    if kind == "extra_forbidden":
        return f"{field}: unknown key (expected any of {', '.join(_FIELDS)})"
    if field in METRIC_OF:
        if kind in _RANGE_ERRORS:
            try:
                check_plausible(METRIC_OF[field], cast(float, value))  # a range error's input is a number
            except ImplausibleValue as exc:
                return f"{field}: {exc}"
        if isinstance(value, bool):
            return f"{field}: must be a number or null, not {_shown(value)} (a bool is not a number)"
        return f"{field}: must be a number or null, not {_shown(value)}"
    if field == "spo2_scale":
        return f"spo2_scale: must be 1 or 2 (Scale 2 only for residents a clinician put on it), not {_shown(value)}"
    if field == "on_oxygen":
        return f"on_oxygen: must be true, false or null, not {_shown(value)}"
    if field == "consciousness":
        return f"consciousness: must be {_LETTERS}, or null; not {_shown(value)}"
    return f"{'.'.join(map(str, loc)) or 'observation set'}: {item['msg']}"


def describe_error(error: ValidationError) -> str:
    """One line saying what is wrong with an observation set and why (all problems, '; '-separated)."""
    return "; ".join(_describe(item) for item in error.errors())


def _problems(error: ValidationError) -> dict[str, str]:
    """``describe_error``'s reasons by field (without the leading 'field: ')."""
    problems: dict[str, str] = {}
    for item in error.errors():
        if item["loc"]:
            field = str(item["loc"][0])
            reason = _describe(item).removeprefix(f"{field}: ")
            problems[field] = f"{problems[field]}; {reason}" if field in problems else reason
    return problems


_LETTERS = "A (alert), C (new confusion), V (voice), P (pain) or U (unresponsive)"


def validate_observation(obs: ObservationSet | Mapping[str, Any]) -> ObservationSet:
    """An ObservationSet from a mapping; InvalidObservation with a one-line reason otherwise."""
    if isinstance(obs, ObservationSet):
        return obs
    if not isinstance(obs, Mapping):
        raise InvalidObservation(f"an observation set must be a JSON object, not {type(obs).__name__}")
    try:
        return ObservationSet.model_validate(dict(obs))
    except ValidationError as exc:
        raise InvalidObservation(describe_error(exc), _problems(exc)) from None


@dataclass(frozen=True)
class News2Result:
    """The NEWS2 score of one observation set, with what to do about it."""

    score: int
    risk: Risk
    subscores: Mapping[str, int | None]  # None where not measured
    complete: bool
    missing: tuple[str, ...]
    response: ClinicalResponse

    def as_dict(self) -> dict[str, Any]:
        """The `carewatch news2` output object (without the response texts)."""
        return {
            "score": self.score,
            "risk": self.risk.value,
            "subscores": dict(self.subscores),
            "complete": self.complete,
            "missing": list(self.missing),
        }


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def observation_columns(sets: list[ObservationSet]) -> dict[str, NDArray[Any]]:
    """Validated sets -> the keyword arguments of ``score_arrays``."""
    return {
        "respiration_rate": np.array([_nan(s.respiration_rate) for s in sets], dtype=np.float64),
        "spo2": np.array([_nan(s.spo2) for s in sets], dtype=np.float64),
        "scale2": np.array([s.spo2_scale == 2 for s in sets], dtype=np.bool_),
        "on_oxygen": np.array([s.on_oxygen for s in sets], dtype=np.bool_),
        "systolic_bp": np.array([_nan(s.systolic_bp) for s in sets], dtype=np.float64),
        "pulse": np.array([_nan(s.pulse) for s in sets], dtype=np.float64),
        "consciousness": encode_consciousness(s.consciousness for s in sets),
        "temperature": np.array([_nan(s.temperature) for s in sets], dtype=np.float64),
    }


def results_from_arrays(scored: News2Arrays) -> list[News2Result]:
    """One News2Result per scored set (with its clinical response)."""
    results = []
    for row, total, risk_code, complete in zip(
        scored.subscores.tolist(), scored.total.tolist(), scored.risk.tolist(), scored.complete.tolist(), strict=True
    ):
        subscores = {name: (None if points < 0 else points) for name, points in zip(PARAMETERS, row, strict=True)}
        missing = tuple(name for name, points in subscores.items() if points is None)
        risk = RISK_BY_CODE[risk_code]
        response = clinical_response(risk, total, missing)
        results.append(News2Result(total, risk, MappingProxyType(subscores), complete, missing, response))
    return results


def score_observations(sets: Iterable[ObservationSet | Mapping[str, Any]]) -> list[News2Result]:
    """Validate and score many sets (vectorised); InvalidObservation names the first bad one."""
    validated = []
    for position, obs in enumerate(sets):
        try:
            validated.append(validate_observation(obs))
        except InvalidObservation as exc:
            raise InvalidObservation(f"observation set {position}: {exc}", exc.problems) from None
    return results_from_arrays(score_arrays(**observation_columns(validated)))


def score_observation(obs: ObservationSet | Mapping[str, Any]) -> News2Result:
    """Validate and score one set: InvalidObservation (a ValueError) says what is wrong and why."""
    return results_from_arrays(score_arrays(**observation_columns([validate_observation(obs)])))[0]
