"""Risk-band data: every band has a response, Chart 4's monitoring intervals, partial sets never reassure."""

from __future__ import annotations

from datetime import timedelta

import pytest

from carewatch.scoring.clinical_response import (
    INCOMPLETE_RECHECK,
    RESPONSES,
    RISK_BY_CODE,
    ZERO_SCORE_RESPONSE,
    Risk,
    clinical_response,
)


def test_every_band_has_a_response_and_codes_are_ordered_by_severity() -> None:
    assert set(RESPONSES) == set(Risk)
    assert [risk.code for risk in RISK_BY_CODE] == [0, 1, 2, 3]
    colours = [RESPONSES[risk].colour for risk in RISK_BY_CODE]
    assert len(set(colours)) == 4
    for risk, response in RESPONSES.items():
        assert response.risk is risk and response.meaning and response.action and response.rcp_response


def test_chart4_minimum_monitoring() -> None:
    assert clinical_response(Risk.LOW, 0).min_interval == timedelta(hours=12)
    assert clinical_response(Risk.LOW, 0) is ZERO_SCORE_RESPONSE
    for total in (1, 4):
        assert clinical_response(Risk.LOW, total).min_interval == timedelta(hours=4)
    assert clinical_response(Risk.LOW_MEDIUM, 3).min_interval == timedelta(hours=1)
    assert clinical_response(Risk.MEDIUM, 5).min_interval == timedelta(hours=1)
    high = clinical_response(Risk.HIGH, 7)
    assert high.continuous and high.min_interval == timedelta(0)
    intervals = [RESPONSES[risk].min_interval for risk in RISK_BY_CODE]
    assert intervals == sorted(intervals, reverse=True)  # more risk, never less monitoring


def test_actions_name_a_concrete_step_for_care_home_staff() -> None:
    assert "999" in RESPONSES[Risk.HIGH].action
    assert "GP or NHS 111 within 1 hour" in RESPONSES[Risk.LOW_MEDIUM].action
    assert "GP or NHS 111" in RESPONSES[Risk.MEDIUM].action and "999" in RESPONSES[Risk.MEDIUM].action


@pytest.mark.parametrize(("risk", "total"), [(Risk.LOW, 0), (Risk.LOW, 2), (Risk.LOW_MEDIUM, 3), (Risk.HIGH, 9)])
def test_partial_sets_say_incomplete_and_what_to_measure(risk: Risk, total: int) -> None:
    response = clinical_response(risk, total, ["systolic_bp", "respiration_rate"])
    assert response.complete is False
    assert response.meaning.startswith("INCOMPLETE SCORE")
    assert "blood pressure" in response.meaning and "breathing rate" in response.meaning
    assert "blood pressure" in response.action
    assert response.min_interval <= INCOMPLETE_RECHECK
    assert response.colour == RESPONSES[risk].colour
    assert response.action.startswith(clinical_response(risk, total).action)  # band instruction first
