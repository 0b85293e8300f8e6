"""`carewatch news2` core: one JSON line out per line in, in order, errors in place, chunked scoring."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from conformance import load_conformance

from carewatch.scoring import news2_cli
from carewatch.scoring.news2 import PARAMETERS, score_observation
from carewatch.scoring.news2_cli import run_news2

FULL = {"respiration_rate": 21, "spo2": 93, "systolic_bp": 120, "pulse": 95, "consciousness": "A", "temperature": 37.5}


def _run(text: str) -> tuple[int, list[dict[str, Any]], str]:
    out = io.StringIO()
    code = run_news2(io.StringIO(text), out)
    raw = out.getvalue()
    return code, [json.loads(line) for line in raw.splitlines()], raw


def test_scores_a_full_set_with_the_contract_shape() -> None:
    code, (result,), raw = _run(json.dumps(FULL) + "\n")
    assert code == 0
    assert raw.endswith("\n") and raw.count("\n") == 1
    assert list(result) == ["score", "risk", "subscores", "complete", "missing"]
    assert list(result["subscores"]) == list(PARAMETERS)
    assert result == {
        "score": 5,
        "risk": "medium",
        "subscores": {
            "respiration_rate": 2,
            "spo2": 2,
            "air_or_oxygen": 0,
            "systolic_bp": 0,
            "pulse": 1,
            "consciousness": 0,
            "temperature": 0,
        },
        "complete": True,
        "missing": [],
    }


def test_partial_set_has_null_subscores_and_lists_missing() -> None:
    _, (result,), _ = _run('{"respiration_rate": 22, "on_oxygen": true, "pulse": 95, "spo2": null}\n')
    assert result["score"] == 5 and result["complete"] is False
    assert result["missing"] == ["spo2", "systolic_bp", "consciousness", "temperature"]
    assert result["subscores"]["spo2"] is None and result["subscores"]["air_or_oxygen"] == 2


def test_null_defaults_scale1_and_air() -> None:
    _, (result,), _ = _run('{"spo2": 88, "spo2_scale": null, "on_oxygen": null}\n')
    assert result["subscores"]["spo2"] == 3 and result["subscores"]["air_or_oxygen"] == 0


def test_errors_stay_in_place_and_later_lines_continue() -> None:
    lines = [
        json.dumps(FULL),
        "",  # blank: an error line, so output line k always answers input line k
        "not json",
        "[1, 2]",
        '{"spo2": 150}',
        '{"pulse": true}',
        '{"spo2": 90, "o2_device": "nasal cannula"}',
        '{"consciousness": "confused"}',
        '{"spo2": NaN}',
        json.dumps({"spo2": 96, "spo2_scale": 2, "on_oxygen": True}),
    ]
    code, results, _ = _run("\n".join(lines) + "\n")
    assert code == 0  # read to the end; the errors are in their lines
    assert len(results) == len(lines)
    assert "score" in results[0] and "score" in results[-1]
    assert results[-1]["subscores"]["spo2"] == 2
    expected_words = [
        "blank line",
        "not valid JSON",
        "JSON object",
        "40-100",
        "bool is not a number",
        "on_oxygen is not given but o2_device is",
        "new confusion",
        "finite",
    ]
    for number, (result, words) in enumerate(zip(results[1:-1], expected_words, strict=True), start=2):
        assert list(result) == ["error"]
        assert result["error"].startswith(f"line {number}: ")
        assert words in result["error"]


def test_windows_line_endings_and_no_final_newline() -> None:
    code, results, _ = _run(json.dumps(FULL) + "\r\n" + json.dumps(FULL))
    assert code == 0 and [r["score"] for r in results] == [5, 5]


def test_empty_input_writes_nothing() -> None:
    assert _run("") == (0, [], "")


def test_chunks_keep_order_and_match_the_scalar_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(news2_cli, "CHUNK_LINES", 7)
    sets = [
        {
            "respiration_rate": 8 + i % 20,
            "spo2": 85 + i % 15,
            "spo2_scale": 1 + i % 2,
            "on_oxygen": i % 3 == 0,
            "pulse": 40 + i * 3 % 100,
            "temperature": 34.95 + (i % 60) / 10,
        }
        for i in range(60)
    ]
    lines = [json.dumps(s) if i % 9 else '{"spo2": 0}' for i, s in enumerate(sets)]
    code, results, _ = _run("\n".join(lines) + "\n")
    assert code == 0
    for i, (obs, result) in enumerate(zip(sets, results, strict=True)):
        if i % 9 == 0:
            assert result["error"].startswith(f"line {i + 1}: spo2")
        else:
            assert result == score_observation(obs).as_dict()


def test_other_keys_are_ignored_and_named_so_a_misspelt_parameter_is_visible() -> None:
    line = json.dumps({**FULL, "diastolic_bp": 80, "heart_rate": 95})
    _, (result,), _ = _run(line + "\n")
    assert result["score"] == 5 and result["ignored"] == ["diastolic_bp", "heart_rate"]
    # a misspelt parameter is missing, never scored as normal: the set is incomplete
    _, (typo,), _ = _run(json.dumps({k: v for k, v in FULL.items() if k != "pulse"} | {"puls": 130}) + "\n")
    assert typo["complete"] is False and "pulse" in typo["missing"] and typo["ignored"] == ["puls"]


def test_an_oxygen_or_scale_hint_needs_its_parameter_given() -> None:
    lines = [
        json.dumps({**FULL, "o2_flow_rate": 2}),  # oxygen mentioned, on_oxygen absent: air would be assumed
        json.dumps({**FULL, "o2_flow_rate": 2, "on_oxygen": True}),
        json.dumps({**FULL, "target_scale": 2}),
        json.dumps({**FULL, "target_scale": 2, "spo2_scale": 2}),
    ]
    _, results, _ = _run("\n".join(lines) + "\n")
    assert "on_oxygen is not given but o2_flow_rate is" in results[0]["error"]
    assert results[1]["subscores"]["air_or_oxygen"] == 2 and results[1]["ignored"] == ["o2_flow_rate"]
    assert "spo2_scale is not given but target_scale is" in results[2]["error"]
    assert results[3]["subscores"]["spo2"] == 0  # 93 % on air, Scale 2


def test_strict_exits_1_when_any_line_failed() -> None:
    text = json.dumps(FULL) + "\n" + '{"spo2": 150}\n'
    assert run_news2(io.StringIO(text), io.StringIO(), strict=True) == 1
    assert run_news2(io.StringIO(json.dumps(FULL) + "\n"), io.StringIO(), strict=True) == 0


def test_conformance_inputs_score_through_the_cli_as_recorded() -> None:
    """The corpus's observation records, as they come (with diastolic BP, oxygen device...), through the CLI."""
    corpus = load_conformance("news2_cases.json")
    cases = [(c, c.get("rcp_news2_recomputed")) for c in corpus["full_cases"]]
    cases += [(c, {"total": c["expected_total"], "risk": c["expected_risk"]})
              for c in corpus["rcp_chart_derived_cases"]]
    _, results, _ = _run("".join(json.dumps(c["inputs"]) + "\n" for c, _ in cases))
    assert len(results) == len(cases)
    for (case, expected), result in zip(cases, results, strict=True):
        assert "error" not in result, (case["id"], result)
        if expected is None:  # the partial-set case: the parameters present, marked partial
            assert result["score"] == case["expected_total"] and result["complete"] is False, case["id"]
            continue
        assert (result["score"], result["risk"]) == (expected["total"], expected["risk"]), case["id"]
        if "subscores" in expected:
            assert result["subscores"] == expected["subscores"], case["id"]
