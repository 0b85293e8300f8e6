"""How residents become unwell (firmware_sim/illness.py): Barker's severity at recognition, presentations, landmarks."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch.firmware_sim.effects import ScenarioKind
from carewatch.firmware_sim.illness import (
    BARKER_BANDS,
    PRESENTATIONS,
    calibrate,
    case_counts,
    case_doc,
    course_marks,
    draw_band,
    scaled_params,
)
from carewatch.firmware_sim.physiology import Condition, draw_baseline, draw_conditions
from carewatch.firmware_sim.scenarios import ScenarioFile
from carewatch.firmware_sim.world import SiteSpec, build_world

START = datetime(2025, 1, 6, tzinfo=UTC)


def test_bands_are_drawn_in_barkers_proportions() -> None:
    rng = np.random.default_rng(4)
    counts = Counter(draw_band(rng) for _ in range(20_000))
    total = sum(share for _, _, share in BARKER_BANDS.values())
    for band, (_, _, share) in BARKER_BANDS.items():
        assert abs(counts[band] / 20_000 - share / total) < 0.015, band


def test_the_condition_mix_adds_up_and_names_its_sources() -> None:
    assert abs(sum(p.share for p in PRESENTATIONS) - 1.0) < 1e-9
    assert {p.kind for p in PRESENTATIONS} == {ScenarioKind.INFECTION, ScenarioKind.URINARY_INFECTION,
                                               ScenarioKind.COPD_EXACERBATION, ScenarioKind.SLOW_DECLINE}
    assert all(len(p.source) > 20 for p in PRESENTATIONS)
    no_fever = next(p for p in PRESENTATIONS if p.name == "urinary infection, no fever")
    assert scaled_params(no_fever, 1.0)["temperature"]["to"] == 0.0
    cold = next(p for p in PRESENTATIONS if p.name.startswith("sepsis with a low"))
    assert scaled_params(cold, 1.0)["temperature"]["to"] < -1.0


@given(st.floats(0.0, 1.6))
def test_scaling_touches_physiology_not_what_staff_see(scale: float) -> None:
    p = PRESENTATIONS[0]
    params = scaled_params(p, scale)
    full = scaled_params(p, 1.0)
    assert params["soft_signs"] == full["soft_signs"]
    assert params["pulse_rate"]["to"] == pytest.approx(full["pulse_rate"]["to"] * scale, abs=1e-3)
    assert 0.0 <= params["new_confusion"]["to"] <= 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(list(BARKER_BANDS)), st.sampled_from(PRESENTATIONS))
def test_calibrated_cases_peak_in_their_band_when_the_resident_can(seed: int, band: str, presentation) -> None:
    rng = np.random.default_rng(seed)
    conditions = draw_conditions(rng) | ({Condition.COPD} if presentation.needs else set())
    baseline = draw_baseline(rng, frozenset(conditions))
    _scale, peak = calibrate(rng, baseline, presentation, band, START)
    low, high, _ = BARKER_BANDS[band]
    if low <= peak <= high:
        return
    # out of band only when no scale reaches it: the resident already lives above 0-2, or the kind cannot go higher
    from carewatch.firmware_sim.illness import SCALES, peak_score
    peaks = [peak_score(baseline, presentation, float(s), START) for s in SCALES]
    assert not any(low <= x <= high for x in peaks)


def test_most_cases_land_in_barkers_bands() -> None:
    rng = np.random.default_rng(8)
    landed = 0
    for _ in range(60):
        conditions = draw_conditions(rng)
        baseline = draw_baseline(rng, conditions)
        band = draw_band(rng)
        _, peak = calibrate(rng, baseline, PRESENTATIONS[int(rng.integers(4))], band, START)
        low, high, _ = BARKER_BANDS[band]
        landed += low <= peak <= high
    assert landed >= 48


def test_counts_follow_the_mix_with_a_floor_per_kind() -> None:
    counts = case_counts(480, 60, 28, monthly_rate=0.1, floor_per_kind=14)
    by_kind = Counter()
    for p in PRESENTATIONS:
        by_kind[p.kind] += counts[p.name]
    assert all(n >= 14 for n in by_kind.values())
    assert counts["chest infection, febrile"] > counts["sepsis with a low temperature"]
    assert case_counts(480, 3, 28, floor_per_kind=14)["COPD exacerbation"] == 3  # only residents with COPD


def test_a_case_is_a_valid_scenario_whose_ground_truth_has_its_landmarks() -> None:
    world = build_world(seed=2, sites=[SiteSpec("oak", 24)], households=0, scenarios=[], start=START)
    rng = np.random.default_rng(2)
    resident = world.residents[3]
    docs = []
    for band_seed in range(40):
        doc = case_doc(np.random.default_rng(band_seed), case_id=f"c{band_seed}", resident_id=resident.id,
                       baseline=resident.baseline, presentation=PRESENTATIONS[0], onset="day 2 10:00",
                       onset_at=START)
        docs.append(doc)
    severe = [d for d in docs if "band 7+" in d["description"]]
    mild = [d for d in docs if "band 0-2" in d["description"]]
    assert severe and mild
    spec = ScenarioFile.model_validate({"name": "t", "scenarios": [severe[0] | {"id": "s"}]})
    truth = build_world(seed=2, sites=[SiteSpec("oak", 24)], households=0, scenarios=spec.scenarios,
                        start=START).ground_truth()[0]["detail"]
    assert truth["peak_news2"] >= 7 and truth["news2_7_at"] is not None
    assert datetime.fromisoformat(truth["news2_7_at"]) <= datetime.fromisoformat(truth["admission_at"])
    spec = ScenarioFile.model_validate({"name": "t", "scenarios": [mild[0] | {"id": "m"}]})
    truth = build_world(seed=2, sites=[SiteSpec("oak", 24)], households=0, scenarios=spec.scenarios,
                        start=START).ground_truth()[0]["detail"]
    assert truth["peak_news2"] <= 2 and truth["news2_7_at"] is None
    assert rng is not None


def test_course_marks_of_a_well_resident_are_their_usual() -> None:
    world = build_world(seed=2, sites=[SiteSpec("oak", 4)], households=0, scenarios=[], start=START)
    from carewatch.firmware_sim.illness import _effect

    effect, _ = _effect(ScenarioKind.INFECTION, scaled_params(PRESENTATIONS[0], 0.0), START)
    marks = course_marks(world.residents[0].baseline, effect)
    assert marks["news2_7_at"] is None and marks["peak_news2"] >= marks["usual_news2"]
