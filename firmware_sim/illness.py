"""How care-home residents become unwell: the condition mix, subtle presentations, and severity at recognition.

The scenario kinds (``scenarios.KINDS``) give each illness a course; this module decides, per case, which
presentation it takes and how severe it gets, so a simulated population deteriorates the way care-home residents do
rather than the way a textbook sepsis does:

* **Severity at recognition** follows Barker et al. (665 emergency admissions of care-home residents to 160
  hospitals): NEWS2 at admission 0-2 in 54%, 3-4 in 18%, 5-6 in 13%, 7+ in 16%. Each case draws a band and its
  physiological change is scaled (:func:`calibrate`) so the NEWS2 of its peak, on the resident's own baseline,
  falls in that band. Half the cases are therefore "confusion and falls only": soft signs, no score to speak of.
* **Presentations** (:data:`PRESENTATIONS`): a febrile chest infection; sepsis with a low temperature (the very old
  often do not mount a fever); a urinary infection with no fever; one with fever; a COPD exacerbation; a slow
  decline over days (dehydration, kidney injury).
* **The course's landmarks** (:func:`course_marks`): when the resident would reach NEWS2 7 (RCP's emergency
  threshold) and when they would be admitted (the end of the progression), which the evaluation measures lead
  time against.

Pure functions of their arguments; the NEWS2 chart is the only platform code used (through ``physiology``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from carewatch.firmware_sim.effects import Effect, ScenarioKind
from carewatch.firmware_sim.physiology import Baseline, Condition, DailyWander, chart_scores, true_state
from carewatch.firmware_sim.scenarios import KINDS, ScenarioSpec

#: NEWS2 at admission of care-home residents (Barker et al., 665 emergency admissions, 160 hospitals): band ->
#: (lowest, highest, share). The published shares add up to 101% (rounding); draws use them normalised.
BARKER_BANDS: dict[str, tuple[int, int, float]] = {
    "0-2": (0, 2, 0.54),
    "3-4": (3, 4, 0.18),
    "5-6": (5, 6, 0.13),
    "7+": (7, 20, 0.16),
}
#: Parameters that are physiology (scaled to reach the band); soft signs are what staff see and stay.
PHYSIOLOGY = ("temperature", "pulse_rate", "respiration_rate", "systolic_bp", "spo2", "new_confusion")
SCALES = np.round(np.linspace(0.0, 1.6, 33), 3)


@dataclass(frozen=True)
class Presentation:
    """One way an illness shows in a care-home resident, with its share of deterioration episodes and why."""

    name: str
    kind: ScenarioKind
    share: float
    overrides: Mapping[str, Mapping[str, Any]]
    source: str
    needs: Condition | None = None


#: The condition mix: shares of deterioration episodes in care-home residents. Infections (chest, then urinary) are
#: the commonest reasons for emergency admission from care homes, then falls and "general deterioration"; the shares
#: are rounded judgement from the sources named, not figures quoted from them.
PRESENTATIONS: tuple[Presentation, ...] = (
    Presentation("chest infection, febrile", ScenarioKind.INFECTION, 0.26, {},
                 "respiratory infection is the commonest cause of emergency admission from care homes (Wolters et "
                 "al., Health Foundation 2019; Graverholt et al., BMC Health Serv Res 2014)"),
    Presentation("sepsis with a low temperature", ScenarioKind.INFECTION, 0.09,
                 {"temperature": {"to": -1.2, "over": "36h"}},
                 "20-30% of very old people with serious infection have a blunted or absent fever, some a low "
                 "temperature (Norman, Clin Infect Dis 2000); hypothermic sepsis carries the worst outcome"),
    Presentation("urinary infection, no fever", ScenarioKind.URINARY_INFECTION, 0.17, {},
                 "UTI is the second commonest infection in care homes; in the very old it often shows as new "
                 "confusion, falls and poor intake without fever (Norman 2000; NICE NG109, 2018)"),
    Presentation("urinary infection with fever", ScenarioKind.URINARY_INFECTION, 0.10,
                 {"temperature": {"to": 1.6, "over": "30h"}},
                 "the classic febrile UTI / urosepsis (NICE NG109)"),
    Presentation("COPD exacerbation", ScenarioKind.COPD_EXACERBATION, 0.10, {},
                 "residents with COPD (~14%) have 1-2 exacerbations a year (GOLD 2024)", needs=Condition.COPD),
    Presentation("slow decline over days", ScenarioKind.SLOW_DECLINE, 0.28, {},
                 "dehydration, acute kidney injury and 'general deterioration' over days are the other large group "
                 "of care-home admissions (Wolters et al. 2019)"),
)


def draw_band(rng: np.random.Generator) -> str:
    """A severity band at recognition, by Barker's shares (normalised)."""
    names = list(BARKER_BANDS)
    p = np.array([BARKER_BANDS[n][2] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def scaled_params(presentation: Presentation, scale: float) -> dict[str, dict[str, Any]]:
    """The presentation's progression parameters (kind defaults with its overrides), physiology times ``scale``."""
    params = {name: dict(spec) for name, spec in KINDS[presentation.kind].params.items()}
    for name, spec in presentation.overrides.items():
        params[name] = {**params.get(name, {}), **spec}
    for name in PHYSIOLOGY:
        if name in params:
            to = float(params[name]["to"]) * scale
            params[name]["to"] = min(to, 1.0) if name == "new_confusion" else round(to, 3)
    return params


def _effect(kind: ScenarioKind, params: Mapping[str, Any], onset: datetime) -> tuple[Effect, ScenarioSpec]:
    spec = ScenarioSpec.model_validate({"id": "case", "kind": kind.value, "onset": "0h",
                                        "progression": {"params": params}})
    end = onset + spec.duration
    return Effect("case", kind, onset.timestamp(), end.timestamp(), spec.trajectories(onset),
                  spec.info.soft_signs), spec


_STILL = DailyWander(0.0, 0.0, 0.0, 0.0, 0.0)


def course(baseline: Baseline, effects: Sequence[Effect], start: float, end: float,
           step_s: float = 900.0) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, NEWS2) of the resident's true state from ``start`` to ``end``: no daily rhythm or wander, so
    the course is the illness on the resident's own baseline."""
    epochs = np.arange(start, end + step_s, step_s)
    state = true_state(baseline, np.full(len(epochs), 12.0), epochs, _STILL, effects)
    return epochs, chart_scores(baseline, state)[0]


def peak_score(baseline: Baseline, presentation: Presentation, scale: float, onset: datetime) -> int:
    effect, _ = _effect(presentation.kind, scaled_params(presentation, scale), onset)
    _, scores = course(baseline, (effect,), effect.onset, effect.end)
    return int(scores.max())


def calibrate(rng: np.random.Generator, baseline: Baseline, presentation: Presentation, band: str,
              onset: datetime) -> tuple[float, int]:
    """A scale for the presentation's physiology whose peak NEWS2 on this resident lands in ``band`` (drawn among
    the scales that do), and that peak. A band the resident cannot reach (a resident whose usual score is already
    above 2 cannot peak at 0-2) takes the nearest reachable scale."""
    low, high, _ = BARKER_BANDS[band]
    peaks = np.array([peak_score(baseline, presentation, float(s), onset) for s in SCALES])
    fits = np.flatnonzero((peaks >= low) & (peaks <= high))
    if len(fits):
        k = int(rng.choice(fits))
    else:
        distance = np.where(peaks < low, low - peaks, peaks - high)
        k = int(np.flatnonzero(distance == distance.min())[0])
    return float(SCALES[k]), int(peaks[k])


def case_doc(rng: np.random.Generator, *, case_id: str, resident_id: str, baseline: Baseline,
             presentation: Presentation, onset: str, onset_at: datetime) -> dict[str, Any]:
    """A scenario (as a scenario file holds it) for one case: Barker band drawn, physiology scaled to it."""
    band = draw_band(rng)
    scale, peak = calibrate(rng, baseline, presentation, band, onset_at)
    return {
        "id": case_id,
        "kind": presentation.kind.value,
        "description": f"{presentation.name}; NEWS2 at recognition band {band} (peak {peak}, scale {scale:g})",
        "target": {"resident": resident_id},
        "onset": onset,
        "progression": {"params": scaled_params(presentation, scale)},
    }


def course_marks(baseline: Baseline, effect: Effect) -> dict[str, Any]:
    """Landmarks of one resident scenario for the ground truth: the resident's usual NEWS2, the peak, when the
    course first reaches NEWS2 7 (None if it never does) and when the resident would be admitted (the end of the
    progression, when the illness is fully developed)."""
    epochs, scores = course(baseline, (effect,), effect.onset, effect.end)
    _, usual = course(baseline, (), effect.onset, effect.onset)
    at7 = np.flatnonzero(scores >= 7)
    return {
        "usual_news2": int(usual[0]),
        "peak_news2": int(scores.max()),
        "news2_7_at": datetime.fromtimestamp(float(epochs[at7[0]]), tz=UTC).isoformat() if len(at7) else None,
        "admission_at": datetime.fromtimestamp(effect.end, tz=UTC).isoformat(),
    }


def case_counts(residents: int, copd_residents: int, days: float, *, monthly_rate: float = 0.10,
                floor_per_kind: int = 0) -> dict[str, int]:
    """Cases per presentation for a population: ``monthly_rate`` episodes per resident-month split by the
    condition mix, each kind raised to at least ``floor_per_kind`` (split over its presentations by share) so
    every kind can be measured. COPD exacerbations are capped by the residents who have COPD."""
    total = monthly_rate * residents * days / 30.0
    counts = {p.name: total * p.share for p in PRESENTATIONS}
    for kind in {p.kind for p in PRESENTATIONS}:
        group = [p for p in PRESENTATIONS if p.kind is kind]
        have = sum(counts[p.name] for p in group)
        if have < floor_per_kind:
            share = sum(p.share for p in group)
            for p in group:
                counts[p.name] = floor_per_kind * p.share / share
    out = {name: int(np.ceil(n - 1e-9)) for name, n in counts.items()}
    for p in PRESENTATIONS:
        if p.needs is Condition.COPD:
            out[p.name] = min(out[p.name], copd_residents)
    return out

