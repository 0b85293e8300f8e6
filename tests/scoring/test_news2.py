"""NEWS2 scoring against the RCP chart: conformance vectors, rounding, partial sets, implausible values, API."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Conformance vectors are read at run time from the shared folder beside the repo (tests/conftest.py's
from conformance import CONFORMANCE_DIR

from carewatch.scoring.news2 import (
    AIR_OR_OXYGEN_POINTS,
    CHART1,
    CONSCIOUSNESS_POINTS,
    MISSING,
    PARAMETERS,
    ImplausibleValue,
    InvalidObservation,
    ObservationSet,
    Risk,
    encode_consciousness,
    round_half_away_from_zero,
    score_arrays,
    score_observation,
    score_observations,
)
from carewatch.scoring.news2_reference import score_reference

CASES_PATH = CONFORMANCE_DIR / "news2_cases.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
_ABSENT = f"conformance vectors not present at {CASES_PATH} (the shared/ folder sits beside the repo in CI)"


def _load() -> dict[str, Any] | None:
    return json.loads(CASES_PATH.read_text()) if CASES_PATH.exists() else None


_CORPUS = _load()


def _params(section: str) -> list[Any]:
    if _CORPUS is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=_ABSENT))]
    return [pytest.param(case, id=case["id"]) for case in _CORPUS[section]]


def _corpus() -> dict[str, Any]:
    if _CORPUS is None:
        pytest.skip(_ABSENT)
    return _CORPUS


_OURS = set(ObservationSet.model_fields)


def _inputs(case: dict[str, Any]) -> dict[str, Any]:
    """The case's inputs that NEWS2 uses (sources also record diastolic BP and the oxygen device)."""
    return {key: value for key, value in case["inputs"].items() if key in _OURS}


def _both(inputs: dict[str, Any]) -> list[tuple[str, int, str, dict[str, int | None], bool]]:
    """(name, total, risk, subscores, complete) from the vectorised scorer and from the scalar reference."""
    ours = score_observation(inputs)
    ref = score_reference(inputs)
    return [
        ("vectorised", ours.score, ours.risk.value, dict(ours.subscores), ours.complete),
        ("reference", ref.score, ref.risk.value, ref.subscores, ref.complete),
    ]


# ------------------------------------------------------------------------------------------------------------
# Conformance corpus
# ------------------------------------------------------------------------------------------------------------
_CHART_NAMES = {
    "respiration_rate_per_min": "respiration_rate",
    "spo2_scale1_pct": "spo2_scale1",
    "spo2_scale2_pct": "spo2_scale2",
    "systolic_bp_mmHg": "systolic_bp",
    "pulse_per_min": "pulse",
    "temperature_C": "temperature",
}


def test_band_table_is_rcp_chart1_verbatim() -> None:
    chart1 = _corpus()["reference"]["chart1"]
    for theirs, ours in _CHART_NAMES.items():
        assert [list(band) for band in CHART1[ours]] == chart1[theirs], ours
    assert dict(chart1["air_or_oxygen"]) == dict(AIR_OR_OXYGEN_POINTS)
    alert, others = chart1["consciousness_ACVPU"]
    assert CONSCIOUSNESS_POINTS["A"] == alert[1]
    assert all(CONSCIOUSNESS_POINTS[letter] == others[1] for letter in "CVPU")
    assert chart1["max_total"] == 20


@pytest.mark.parametrize("case", _params("full_cases"))
def test_full_cases_follow_the_rcp_chart(case: dict[str, Any]) -> None:
    expected = case.get("rcp_news2_recomputed")
    for name, total, risk, subscores, complete in _both(_inputs(case)):
        if expected is None:  # the partial-set case: our rule sums the parameters present and marks it partial
            assert total == case["expected_total"], name
            assert complete is False, name
            continue
        assert total == expected["total"], name
        assert risk == expected["risk"], name
        assert subscores == expected["subscores"], name
        assert complete is True, name
        if case.get("agrees_with_rcp_news2_total") is False:  # a documented source error: the chart wins
            assert total != case["expected_total"], name


@pytest.mark.parametrize("case", _params("subscore_cases"))
def test_subscore_cases_follow_the_rcp_chart(case: dict[str, Any]) -> None:
    parameter = case["parameter"]
    inputs: dict[str, Any] = {"spo2_scale": case.get("spo2_scale", 1), "on_oxygen": case.get("on_oxygen", False)}
    if parameter == "air_or_oxygen":
        inputs["on_oxygen"] = case["value"]
    else:
        inputs[parameter] = case["value"]
    for name, _total, _risk, subscores, _complete in _both(inputs):
        assert subscores[parameter] == case["rcp_subscore"], name
        if not case["agrees_with_rcp"]:
            assert subscores[parameter] != case["expected_subscore"], name


@pytest.mark.parametrize("case", _params("rcp_chart_derived_cases"))
def test_rcp_chart_derived_cases(case: dict[str, Any]) -> None:
    for name, total, risk, subscores, complete in _both(_inputs(case)):
        assert total == case["expected_total"], name
        assert risk == case["expected_risk"], name
        assert complete is True, name
        if "expected_spo2_subscore" in case:
            assert subscores["spo2"] == case["expected_spo2_subscore"], name
        if "expected_temperature_subscore" in case:
            assert subscores["temperature"] == case["expected_temperature_subscore"], name


def test_every_documented_disagreement_has_a_rule_in_the_hazard_log() -> None:
    doc = (REPO_ROOT / "docs" / "clinical-safety.md").read_text()
    for item in _corpus()["disagreements"]:
        assert f"Disagreement: {item['topic']}" in doc, item["topic"]


# ------------------------------------------------------------------------------------------------------------
# Risk bands (Chart 3)
# ------------------------------------------------------------------------------------------------------------
NORMAL = {
    "respiration_rate": 16,
    "spo2": 97,
    "systolic_bp": 120,
    "pulse": 70,
    "consciousness": "A",
    "temperature": 37.0,
}


@pytest.mark.parametrize(
    ("changes", "total", "risk"),
    [
        ({}, 0, Risk.LOW),
        ({"respiration_rate": 22, "pulse": 95}, 3, Risk.LOW),  # 3-4 without a red score stays low
        ({"respiration_rate": 22, "pulse": 95, "temperature": 38.5}, 4, Risk.LOW),
        ({"consciousness": "C"}, 3, Risk.LOW_MEDIUM),  # a single red score with total < 5
        ({"consciousness": "U", "pulse": 95}, 4, Risk.LOW_MEDIUM),
        ({"respiration_rate": 22, "pulse": 95, "spo2": 94, "temperature": 38.5}, 5, Risk.MEDIUM),
        ({"consciousness": "V", "respiration_rate": 22}, 5, Risk.MEDIUM),  # a red score never lowers the band
        ({"on_oxygen": True, "respiration_rate": 22, "pulse": 115}, 6, Risk.MEDIUM),
        ({"respiration_rate": 25, "spo2": 91, "pulse": 95}, 7, Risk.HIGH),
    ],
)
def test_risk_bands(changes: dict[str, Any], total: int, risk: Risk) -> None:
    result = score_observation({**NORMAL, **changes})
    assert (result.score, result.risk) == (total, risk)
    assert result.response.risk is risk


# ------------------------------------------------------------------------------------------------------------
# Rounding at band edges
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("parameter", "value", "subscore"),
    [
        ("temperature", 35.04, 3),  # -> 35.0
        ("temperature", 35.05, 1),  # -> 35.1 (half away from zero)
        ("temperature", 36.04, 1),
        ("temperature", 36.05, 0),  # -> 36.1
        ("temperature", 38.04, 0),
        ("temperature", 38.05, 1),  # -> 38.1
        ("temperature", 39.04, 1),
        ("temperature", 39.05, 2),  # -> 39.1
        ("temperature", 37.65, 0),
        ("respiration_rate", 20.5, 2),  # -> 21
        ("respiration_rate", 20.49, 0),
        ("respiration_rate", 8.5, 1),  # -> 9 (Python's banker's round() gives 8 -> 3)
        ("respiration_rate", 24.5, 3),  # -> 25
        ("systolic_bp", 90.5, 2),  # -> 91 (banker's: 90 -> 3)
        ("systolic_bp", 90.4, 3),
        ("systolic_bp", 219.5, 3),  # -> 220
        ("spo2", 95.5, 0),  # -> 96
        ("spo2", 95.49, 1),
        ("spo2", 93.5, 1),  # -> 94
        ("spo2", 91.5, 2),  # -> 92
        ("spo2", 91.49, 3),
        ("pulse", 40.5, 1),  # -> 41 (banker's: 40 -> 3)
        ("pulse", 90.5, 1),  # -> 91
        ("pulse", 50.5, 0),  # -> 51
        ("pulse", 130.5, 3),  # -> 131
    ],
)
def test_rounding_half_away_from_zero_at_band_edges(parameter: str, value: float, subscore: int) -> None:
    assert score_observation({parameter: value}).subscores[parameter] == subscore
    assert score_reference({parameter: value}).subscores[parameter] == subscore


@pytest.mark.parametrize(
    ("value", "steps", "rounded"),
    [
        (37.65, 10, 37.7),
        (37.64999, 10, 37.6),
        (20.5, 1, 21.0),
        (90.5, 1, 91.0),
        (2.5, 1, 3.0),
        (-2.5, 1, -3.0),
        (35.05, 10, 35.1),
        (36.15, 10, 36.2),
        (0.0, 1, 0.0),
    ],
)
def test_rounding_rule(value: float, steps: int, rounded: float) -> None:
    assert round_half_away_from_zero([value], steps)[0] == pytest.approx(rounded, abs=1e-12)


def test_rounding_is_not_fooled_by_binary_floating_point() -> None:
    assert 37.65 * 10 < 376.5 or repr(37.65) == "37.65"  # 37.65 is stored as 37.649999...
    values = np.round(np.arange(25.0, 45.0, 0.1), 1) + 0.05  # every x.x5 in the plausible range
    rounded = round_half_away_from_zero(values, 10)
    expected = np.array([float(f"{v + 1e-9:.1f}") for v in values])
    assert np.array_equal(np.round(rounded, 1), expected)


# ------------------------------------------------------------------------------------------------------------
# Scale 2, air or oxygen, consciousness
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spo2", [93, 94, 95, 96, 97, 100])
def test_scale2_on_air_at_or_above_93_scores_zero(spo2: int) -> None:
    assert score_observation({"spo2": spo2, "spo2_scale": 2}).subscores["spo2"] == 0


@pytest.mark.parametrize(("spo2", "subscore"), [(92, 0), (93, 1), (94, 1), (95, 2), (96, 2), (97, 3), (100, 3)])
def test_scale2_on_oxygen_above_target_scores(spo2: int, subscore: int) -> None:
    result = score_observation({"spo2": spo2, "spo2_scale": 2, "on_oxygen": True})
    assert result.subscores["spo2"] == subscore
    assert result.subscores["air_or_oxygen"] == 2  # the +2 for oxygen applies on both scales


def test_scale1_is_the_default_and_null_means_scale1() -> None:
    low = {"spo2": 88}
    assert score_observation(low).subscores["spo2"] == 3
    assert score_observation({**low, "spo2_scale": None}).subscores["spo2"] == 3
    assert score_observation({**low, "spo2_scale": 2}).subscores["spo2"] == 0


def test_on_oxygen_missing_or_null_is_air() -> None:
    for inputs in ({}, {"on_oxygen": None}, {"on_oxygen": False}):
        result = score_observation({**NORMAL, **inputs})
        assert result.subscores["air_or_oxygen"] == 0
        assert "air_or_oxygen" not in result.missing
    assert score_observation({**NORMAL, "on_oxygen": True}).subscores["air_or_oxygen"] == 2


@pytest.mark.parametrize(("letter", "points"), [("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3)])
def test_acvpu(letter: str, points: int) -> None:
    assert score_observation({"consciousness": letter}).subscores["consciousness"] == points


# ------------------------------------------------------------------------------------------------------------
# Partial sets
# ------------------------------------------------------------------------------------------------------------
def test_partial_set_scores_what_is_present_and_says_what_is_missing() -> None:
    result = score_observation({k: v for k, v in NORMAL.items() if k != "systolic_bp"})
    assert result.score == 0
    assert result.risk is Risk.LOW
    assert result.complete is False
    assert result.missing == ("systolic_bp",)
    assert result.subscores["systolic_bp"] is None
    assert result.as_dict()["complete"] is False
    assert result.response.complete is False
    assert result.response.meaning.startswith("INCOMPLETE SCORE")
    assert "blood pressure" in result.response.meaning
    assert "blood pressure" in result.response.action
    assert result.response.min_interval.total_seconds() <= 3600


def test_complete_set_is_marked_complete() -> None:
    result = score_observation(NORMAL)
    assert result.complete is True
    assert result.missing == ()
    assert result.response.complete is True
    assert "INCOMPLETE" not in result.response.meaning


def test_empty_set_is_all_missing_never_a_complete_zero() -> None:
    result = score_observation({})
    assert result.complete is False
    assert set(result.missing) == set(PARAMETERS) - {"air_or_oxygen"}
    assert result.response.meaning.startswith("INCOMPLETE SCORE")


def test_partial_set_can_still_reach_medium_and_high() -> None:
    result = score_observation({"respiration_rate": 26, "pulse": 135, "on_oxygen": True})
    assert (result.score, result.risk, result.complete) == (8, Risk.HIGH, False)


# ------------------------------------------------------------------------------------------------------------
# Implausible and malformed input
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"spo2": 150}, ["spo2", "150", "40-100"]),
        ({"pulse": -5}, ["pulse", "-5", "20-250"]),
        ({"temperature": 60}, ["temperature", "60", "25-45"]),
        ({"respiration_rate": 0}, ["respiration_rate", "3-70"]),  # never skipped as if missing (eObs bug)
        ({"systolic_bp": 400}, ["systolic_bp", "40-300"]),
        ({"spo2": math.nan}, ["spo2", "finite"]),
        ({"temperature": math.inf}, ["temperature", "finite"]),
        ({"pulse": True}, ["pulse", "bool is not a number"]),
        ({"spo2": "95"}, ["spo2", "must be a number"]),
        ({"heart_rate": 80}, ["heart_rate", "unknown key"]),
        ({"spo2_scale": 3}, ["spo2_scale", "1 or 2"]),
        ({"spo2_scale": True}, ["spo2_scale", "1 or 2"]),
        ({"on_oxygen": 1}, ["on_oxygen", "true, false or null"]),
        ({"consciousness": "confused"}, ["consciousness", "new confusion"]),
        ({"consciousness": "a"}, ["consciousness"]),
    ],
)
def test_invalid_observations_are_rejected_with_a_reason(inputs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(InvalidObservation) as caught:
        score_observation(inputs)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    "inputs",
    [
        {"spo2": 40},
        {"spo2": 100},
        {"pulse": 20},
        {"pulse": 250},
        {"respiration_rate": 3},
        {"respiration_rate": 70},
        {"systolic_bp": 40},
        {"systolic_bp": 300},
        {"temperature": 25.0},
        {"temperature": 45.0},
    ],
)
def test_extreme_but_plausible_values_are_scored(inputs: dict[str, Any]) -> None:
    (parameter,) = inputs
    assert score_observation(inputs).subscores[parameter] is not None


def test_score_observations_names_the_bad_set() -> None:
    with pytest.raises(InvalidObservation, match="observation set 1: spo2"):
        score_observations([NORMAL, {"spo2": 101}])


# ------------------------------------------------------------------------------------------------------------
# Vectorised API
# ------------------------------------------------------------------------------------------------------------
def _arrays(n: int, **overrides: Any) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "respiration_rate": np.full(n, 16.0),
        "spo2": np.full(n, 97.0),
        "scale2": np.zeros(n, dtype=bool),
        "on_oxygen": np.zeros(n, dtype=bool),
        "systolic_bp": np.full(n, 120.0),
        "pulse": np.full(n, 70.0),
        "consciousness": np.zeros(n, dtype=np.int8),
        "temperature": np.full(n, 37.0),
    }
    columns.update(overrides)
    return columns


def test_score_arrays_shapes_dtypes_and_missing_masks() -> None:
    rr = np.array([16.0, np.nan, 26.0])
    scored = score_arrays(**_arrays(3, respiration_rate=rr, consciousness=encode_consciousness(["A", "A", None])))
    assert scored.subscores.shape == (3, len(PARAMETERS))
    assert scored.subscores.dtype == np.int8
    assert scored.total.dtype == np.int8 and scored.risk.dtype == np.int8
    assert scored.subscores[1, PARAMETERS.index("respiration_rate")] == MISSING
    assert scored.missing[1].tolist() == [name == "respiration_rate" for name in PARAMETERS]
    assert scored.complete.tolist() == [True, False, False]
    assert scored.total.tolist() == [0, 0, 3]
    assert scored.risk_names().tolist() == ["low", "low", "low-medium"]


def test_score_arrays_across_blocks_matches_one_at_a_time() -> None:
    rng = np.random.default_rng(7)
    n = 70_000  # more than two internal blocks
    columns = _arrays(
        n,
        respiration_rate=rng.integers(3, 71, n).astype(float),
        spo2=rng.integers(80, 101, n).astype(float),
        scale2=rng.random(n) < 0.3,
        on_oxygen=rng.random(n) < 0.3,
        temperature=np.round(rng.uniform(33, 41, n), 2),
    )
    columns["pulse"][::7] = np.nan
    scored = score_arrays(**columns)
    for i in rng.choice(n, 200, replace=False).tolist():
        ref = score_reference(
            {
                "respiration_rate": columns["respiration_rate"][i],
                "spo2": columns["spo2"][i],
                "spo2_scale": 2 if columns["scale2"][i] else 1,
                "on_oxygen": bool(columns["on_oxygen"][i]),
                "systolic_bp": 120.0,
                "pulse": columns["pulse"][i],
                "consciousness": "A",
                "temperature": columns["temperature"][i],
            }
        )
        assert int(scored.total[i]) == ref.score
        assert scored.risk_names()[i] == ref.risk.value
        assert bool(scored.complete[i]) == ref.complete


def test_score_arrays_rejects_implausible_values_naming_the_set() -> None:
    with pytest.raises(ImplausibleValue, match=r"observation set 40000: spo2: spo2=150"):
        score_arrays(**_arrays(50_000, spo2=np.where(np.arange(50_000) == 40_000, 150.0, 97.0)))
    with pytest.raises(ImplausibleValue, match="temperature"):
        score_arrays(**_arrays(2, temperature=np.array([37.0, -np.inf])))


def test_score_arrays_rejects_ambiguous_inputs() -> None:
    with pytest.raises(TypeError, match="scale2 must be a boolean"):
        score_arrays(**_arrays(2, scale2=np.array([1, 2])))  # spo2_scale numbers are not a Scale 2 flag
    with pytest.raises(TypeError, match="bool is not a number"):
        score_arrays(**_arrays(2, pulse=np.array([True, False])))
    with pytest.raises(ValueError, match="same length"):
        score_arrays(**_arrays(2, pulse=np.full(3, 70.0)))
    with pytest.raises(ValueError, match="consciousness codes"):
        score_arrays(**_arrays(2, consciousness=np.array([0, 5], dtype=np.int8)))
    with pytest.raises(ValueError, match="one of A, C, V, P, U"):
        encode_consciousness(["A", "X"])


def test_score_arrays_empty() -> None:
    scored = score_arrays(**_arrays(0))
    assert len(scored) == 0 and scored.subscores.shape == (0, len(PARAMETERS))
