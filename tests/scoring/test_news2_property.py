"""The vectorised NEWS2 scorer agrees with the scalar reference everywhere that matters.

Every band edge of every parameter, one chart step either side, half a step either side (the rounding trap),
the plausible limits, missing values, both SpO2 scales, air and oxygen: exhaustively on a grid, then in random
combinations with hypothesis.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch.scoring.news2 import (
    BANDS,
    CONSCIOUSNESS_CODES,
    METRIC_OF,
    NUMERIC_PARAMETERS,
    PARAMETERS,
    RISK_BY_CODE,
    STEPS_PER_UNIT,
    encode_consciousness,
    score_arrays,
    spo2_table,
)
from carewatch.scoring.news2_reference import score_reference
from carewatch.wire import METRICS


def _tables(parameter: str) -> list[str]:
    return [spo2_table(1), spo2_table(2)] if parameter == "spo2" else [parameter]


def _edge_values(parameter: str) -> list[float]:
    """Band edges, +-1 step, +-half a step and the plausible limits, kept within the plausible range."""
    step = Decimal(1) / STEPS_PER_UNIT[parameter]
    spec = METRICS[METRIC_OF[parameter]]
    values = {Decimal(str(spec.low)), Decimal(str(spec.high))}
    for table in _tables(parameter):
        for band in BANDS[table]:
            for edge in (band.low, band.high):
                if edge is not None:
                    values.update(edge + k * step / 2 for k in (-2, -1, 0, 1, 2))
    return sorted(float(v) for v in values if spec.low <= v <= spec.high)


EDGES = {parameter: _edge_values(parameter) for parameter in NUMERIC_PARAMETERS}


def _vectorised(sets: list[dict[str, Any]]) -> list[tuple[int, str, dict[str, int | None], bool]]:
    def column(name: str) -> np.ndarray:
        return np.array([math.nan if s.get(name) is None else s[name] for s in sets], dtype=np.float64)

    scored = score_arrays(
        column("respiration_rate"),
        column("spo2"),
        np.array([s.get("spo2_scale") == 2 for s in sets]),
        np.array([bool(s.get("on_oxygen")) for s in sets]),
        column("systolic_bp"),
        column("pulse"),
        encode_consciousness(s.get("consciousness") for s in sets),
        column("temperature"),
    )
    return [
        (
            total,
            RISK_BY_CODE[risk].value,
            {p: (None if v < 0 else v) for p, v in zip(PARAMETERS, row, strict=True)},
            complete,
        )
        for row, total, risk, complete in zip(
            scored.subscores.tolist(),
            scored.total.tolist(),
            scored.risk.tolist(),
            scored.complete.tolist(),
            strict=True,
        )
    ]


def _assert_agree(sets: list[dict[str, Any]]) -> None:
    for obs, ours in zip(sets, _vectorised(sets), strict=True):
        ref = score_reference(obs)
        assert ours == (ref.score, ref.risk.value, ref.subscores, ref.complete), obs


def test_every_edge_of_every_parameter_on_both_scales_and_air_or_oxygen() -> None:
    sets = [
        {parameter: value, "spo2_scale": scale, "on_oxygen": oxygen}
        for parameter in NUMERIC_PARAMETERS
        for value in EDGES[parameter]
        for scale in (1, 2)
        for oxygen in (False, True)
    ]
    assert len(sets) > 400
    _assert_agree(sets)


def test_whole_plausible_range_on_a_half_step_grid() -> None:
    sets = []
    for parameter in NUMERIC_PARAMETERS:
        steps = STEPS_PER_UNIT[parameter]
        spec = METRICS[METRIC_OF[parameter]]
        for k in range(int(spec.low * steps * 2), int(spec.high * steps * 2) + 1):
            for scale, oxygen in ((1, False), (2, False), (2, True)):
                sets.append({parameter: k / (2 * steps), "spo2_scale": scale, "on_oxygen": oxygen})
    _assert_agree(sets)


def _value(parameter: str) -> st.SearchStrategy[float | None]:
    spec = METRICS[METRIC_OF[parameter]]
    # random values with at most 3 decimals: the documented rounding rule is exact up to 5
    random = st.decimals(min_value=Decimal(str(spec.low)), max_value=Decimal(str(spec.high)), places=3).map(float)
    return st.one_of(st.none(), st.sampled_from(EDGES[parameter]), random)


observation_sets = st.fixed_dictionaries(
    {parameter: _value(parameter) for parameter in NUMERIC_PARAMETERS}
    | {
        "spo2_scale": st.sampled_from([1, 2, None]),
        "on_oxygen": st.sampled_from([False, True, None]),
        "consciousness": st.sampled_from([None, *CONSCIOUSNESS_CODES]),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.lists(observation_sets, min_size=1, max_size=40))
def test_random_combinations_agree_with_the_reference(sets: list[dict[str, Any]]) -> None:
    _assert_agree(sets)
