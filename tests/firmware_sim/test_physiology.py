"""Residents' physiology: plausible baselines, conditions, measurement artefacts and observation routines."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np
import pytest

from carewatch.firmware_sim.care import HomeCare
from carewatch.firmware_sim.physiology import (
    CONDITION_PREVALENCE,
    Condition,
    KitCharacter,
    ManualObservation,
    ObservationRoutine,
    VitalSample,
    circadian,
    draw_baseline,
    draw_conditions,
    resident_day,
)
from carewatch.firmware_sim.scenarios import Effect, ScenarioKind, Shape, Trajectory, WallClock
from carewatch.firmware_sim.world import SiteSpec, build_world
from carewatch.wire import METRICS, DeviceKind, Metric, QualityFlag, check_plausible

START = datetime(2025, 1, 6, tzinfo=UTC)


@pytest.fixture(scope="module")
def month_of_healthy_obs() -> tuple[object, list]:
    """30 days of a 24-resident home with no scenarios (4 rounds a day)."""
    world = build_world(seed=11, sites=[SiteSpec("elm", 24, obs_per_day=4)], households=0, scenarios=[], start=START)
    return world, list(world.events(START, START + timedelta(days=30)))


def test_baselines_are_plausible_for_older_adults_and_follow_conditions() -> None:
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(3000):
        conditions = draw_conditions(rng)
        rows.append((conditions, draw_baseline(rng, conditions)))
    for conditions, b in rows:
        assert 12 <= b.respiration_rate <= 24
        assert 92 <= b.systolic_bp <= 180 and 50 <= b.diastolic_bp < b.systolic_bp
        assert 50 <= b.pulse_rate <= 105
        assert 35.7 <= b.temperature <= 37.2
        assert b.consciousness == "A"
        if b.scale2:  # a documented hypercapnic target: COPD only, 88-92%
            assert Condition.COPD in conditions and 88.0 <= b.spo2 <= 92.0
        elif Condition.COPD in conditions:  # COPD scored on Scale 1, living at 91-96%
            assert 91.0 <= b.spo2 <= 96.0
        else:
            assert b.spo2 >= 92.0
        assert b.baseline_confused == (Condition.DEMENTIA in conditions)
    copd = [b for c, b in rows if Condition.COPD in c]
    others = [b for c, b in rows if Condition.COPD not in c]
    assert 0.3 < np.mean([b.scale2 for b in copd]) < 0.5  # about 4 in 10 have a Scale 2 target
    assert 0.15 < np.mean([b.on_oxygen for b in copd]) < 0.35 and np.mean([b.on_oxygen for b in others]) < 0.05
    # prevalences close to the declared ones
    for condition, p in CONDITION_PREVALENCE.items():
        seen = sum(condition in c for c, _ in rows) / len(rows)
        assert abs(seen - p) < 0.04, (condition, seen, p)
    # hypertension raises systolic pressure, AF raises beat-to-beat variability
    sbp = {h: np.mean([b.systolic_bp for c, b in rows if (Condition.HYPERTENSION in c) == h]) for h in (True, False)}
    assert sbp[True] > sbp[False] + 8
    var = {a: np.mean([b.pulse_variability for c, b in rows if (Condition.ATRIAL_FIBRILLATION in c) == a])
           for a in (True, False)}
    assert var[True] > 3 * var[False]


def test_circadian_rhythm_is_lower_at_night() -> None:
    rhythm = circadian(np.array([4.0, 17.0]))
    for name in ("temperature", "pulse_rate", "systolic_bp"):
        assert rhythm[name][0] < rhythm[name][1]


def test_every_value_is_plausible_and_in_the_wire_contract(month_of_healthy_obs: tuple) -> None:
    _, events = month_of_healthy_obs
    samples = [e for e in events if isinstance(e, VitalSample)]
    assert samples
    kinds = {
        DeviceKind.PULSE_OXIMETER: {Metric.SPO2, Metric.PULSE_RATE, Metric.PERFUSION_INDEX},
        DeviceKind.BP_CUFF: {Metric.SYSTOLIC_BP, Metric.DIASTOLIC_BP, Metric.PULSE_RATE},
        DeviceKind.THERMOMETER: {Metric.TEMPERATURE},
    }
    for s in samples:
        assert s.metric in kinds[s.device_kind]
        check_plausible(s.metric, s.value)
        assert s.at.tzinfo is not None
    manual = [e for e in events if isinstance(e, ManualObservation)]
    for m in manual:
        if m.respiration_rate is not None:  # not counted at some checks, as in real charts
            check_plausible(Metric.RESPIRATION_RATE, m.respiration_rate)
        assert m.consciousness in {"A", "C", "V", "P", "U"}
    uncounted = sum(m.respiration_rate is None for m in manual) / len(manual)
    assert 0.01 < uncounted < 0.5
    # temperatures are °C to 0.1, SpO2 whole percent
    temps = [s.value for s in samples if s.metric is Metric.TEMPERATURE]
    assert all(abs(t * 10 - round(t * 10)) < 1e-9 for t in temps)
    assert 35.5 < float(np.median(temps)) < 37.2
    assert METRICS[Metric.TEMPERATURE].unit == "Cel"


def _observation_sets(world: object, events: list) -> list[tuple[object, dict]]:
    """Group each resident's readings into checks: the last value of each parameter before the manual entry."""
    by_resident: dict[str, list] = defaultdict(list)
    for e in events:
        if isinstance(e, VitalSample | ManualObservation):
            by_resident[e.resident_id].append(e)
    sets = []
    for rid, evs in by_resident.items():
        resident = world.resident(rid)  # type: ignore[attr-defined]
        current: dict = {}
        for e in evs:
            if isinstance(e, VitalSample):
                key = {Metric.SPO2: "spo2", Metric.SYSTOLIC_BP: "systolic_bp", Metric.TEMPERATURE: "temperature"}.get(
                    e.metric)
                if e.metric is Metric.PULSE_RATE and e.device_kind is DeviceKind.PULSE_OXIMETER:
                    key = "pulse"
                if key:
                    current[key] = e.value
            else:
                current.update(respiration_rate=e.respiration_rate, consciousness=e.consciousness,
                               spo2_scale=2 if resident.scale2 else 1, on_oxygen=e.supplemental_oxygen)
                sets.append((resident, current))
                current = {}
    return sets


def test_well_residents_score_news2_as_care_home_residents_do(month_of_healthy_obs: tuple) -> None:
    """Care-home residents do not live at 0: in 19,604 UK care-home readings 28% scored 0, 66% at most 2 and 7% of
    routine readings 5 or more (Age and Ageing 2019;49(1):141-145). A well simulated home is close to that."""
    news2 = pytest.importorskip("carewatch.scoring.news2", reason="carewatch.scoring.news2 not available yet")
    world, events = month_of_healthy_obs
    sets = [obs for _, obs in _observation_sets(world, events) if obs["respiration_rate"] is not None]
    assert len(sets) > 24 * 30 * 2
    scores = np.array([news2.score_observation(obs).score for obs in sets])
    assert 0.02 < float(np.mean(scores >= 5)) < 0.12, Counter(scores.tolist())
    assert 0.15 < float(np.mean(scores == 0)) < 0.4
    assert 0.55 < float(np.mean(scores <= 2)) < 0.85


def test_dementia_is_the_residents_norm_not_new_confusion(month_of_healthy_obs: tuple) -> None:
    world, events = month_of_healthy_obs
    manual = [e for e in events if isinstance(e, ManualObservation)]
    confused = {r.id for r in world.residents if r.baseline_confused}
    assert confused, "a 24-resident home with no dementia is implausible"
    for m in manual:
        assert m.consciousness == "A"  # nobody is unwell: no NEW confusion
        assert (m.note is not None) == (m.resident_id in confused)
    stray_signs = sum(bool(m.soft_signs) for m in manual)
    assert stray_signs < 0.02 * len(manual)


def test_artefacts_are_flagged_and_remeasured(month_of_healthy_obs: tuple) -> None:
    world, events = month_of_healthy_obs
    spo2 = [e for e in events if isinstance(e, VitalSample) and e.metric is Metric.SPO2]
    flagged = [s for s in spo2 if s.flags]
    assert any(QualityFlag.LOW_PERFUSION in s.flags for s in flagged)
    assert any(QualityFlag.MOTION_ARTEFACT in s.flags for s in flagged)
    assert len(flagged) < 0.15 * len(spo2)
    # a falsely low cold-finger reading is followed within 6 minutes by a better one for the same resident
    by_resident: dict[str, list[VitalSample]] = defaultdict(list)
    for s in spo2:
        by_resident[s.resident_id].append(s)
    cold = 0
    for rid, readings in by_resident.items():
        baseline = world.resident(rid).baseline.spo2
        for i, s in enumerate(readings):
            if QualityFlag.LOW_PERFUSION in s.flags and s.value <= baseline - 4:
                cold += 1
                nxt = readings[i + 1]
                assert nxt.at - s.at <= timedelta(minutes=6)
                assert nxt.value > s.value and not nxt.flags
    assert cold > 0


def _pulse_pairs(day: list) -> list[tuple[float, float]]:
    """(oximeter, cuff) pulse of each check: the cuff is read 1-5 min after the last clean oximeter reading."""
    ox = [(e.at, e.value) for e in day if isinstance(e, VitalSample) and e.metric is Metric.PULSE_RATE
          and e.device_kind is DeviceKind.PULSE_OXIMETER and not e.flags]
    pairs = []
    for e in day:
        if isinstance(e, VitalSample) and e.metric is Metric.PULSE_RATE and e.device_kind is DeviceKind.BP_CUFF \
                and not e.flags:
            before = [v for at, v in ox if timedelta(0) <= e.at - at <= timedelta(minutes=15)]
            if before:
                pairs.append((before[-1], e.value))
    return pairs


def test_atrial_fibrillation_gives_irregular_pulse() -> None:
    """Readings a few minutes apart disagree far more in AF (beat-to-beat variability x4.5): residents built with
    and without AF, so the comparison never depends on who a home happens to draw."""
    clock = WallClock(START, UTC)
    routine = ObservationRoutine.for_frequency(4, missed_round_probability=0.0)
    spread: dict[bool, list[float]] = {True: [], False: []}
    for af in (True, False):
        conditions = frozenset({Condition.ATRIAL_FIBRILLATION}) if af else frozenset()
        for i in range(8):
            rng = np.random.default_rng([17, i, af])
            baseline, kit = draw_baseline(rng, conditions), KitCharacter.draw(rng)
            pairs = [pair for d in range(15) for pair in _pulse_pairs(resident_day(
                rng=np.random.default_rng([17, i, af, d]), resident_id="res-x-01", site_id="x", kit="kit-01",
                kit_character=kit, baseline=baseline, routine=routine, effects=(),
                wall_to_epoch=partial(clock.to_epoch, d), slot_s=0.0))]
            assert len(pairs) > 40
            spread[af].append(float(np.std(np.subtract(*zip(*pairs, strict=True)))))
    assert np.mean(spread[True]) > 2 * np.mean(spread[False])


def _one_resident_days(routine: ObservationRoutine, effects: tuple = (), days: int = 40) -> list[list]:
    clock = WallClock(START, UTC)
    rng = np.random.default_rng(3)
    conditions = frozenset()
    baseline = draw_baseline(rng, conditions)
    kit = KitCharacter.draw(rng)
    return [
        resident_day(rng=np.random.default_rng([1, 2, 3, 4, d]), resident_id="res-x-01", site_id="x", kit="kit-01",
                     kit_character=kit, baseline=baseline, routine=routine, effects=effects,
                     wall_to_epoch=partial(clock.to_epoch, d), slot_s=0.0)
        for d in range(days)
    ]


def _checks(day: list) -> int:
    return sum(isinstance(e, ManualObservation) for e in day)


def test_rounds_follow_the_care_plan_with_occasional_misses() -> None:
    days = _one_resident_days(ObservationRoutine.for_frequency(2, missed_round_probability=0.0))
    assert all(_checks(d) == 2 for d in days)
    hours = {e.at.hour for d in days for e in d if isinstance(e, ManualObservation)}
    assert hours <= {7, 8, 9, 19, 20, 21}
    missed = _one_resident_days(ObservationRoutine.for_frequency(4, missed_round_probability=0.25))
    per_day = np.mean([_checks(d) for d in missed])
    assert 2.5 < per_day < 3.5
    with pytest.raises(ValueError, match="obs_per_day"):
        ObservationRoutine.for_frequency(5)
    assert all(e.reason == "round" for d in days for e in d if isinstance(e, ManualObservation))


def test_staff_check_more_often_while_a_resident_is_unwell() -> None:
    t0 = START.timestamp() + 5 * 86_400
    fever = Effect("x", ScenarioKind.INFECTION, t0, t0 + 86_400, {
        "temperature": Trajectory(t0, 6 * 3600, 0.0, 2.0, Shape.LINEAR),
        "pulse_rate": Trajectory(t0, 6 * 3600, 0.0, 30.0, Shape.LINEAR),
        "new_confusion": Trajectory(t0, 6 * 3600, 0.0, 1.0, Shape.LINEAR),
    }, ("not_themselves",))
    attentive = replace(HomeCare.textbook(), concern_per_h=0.5, follow_up_compliance=1.0)
    days = _one_resident_days(ObservationRoutine(2, attentive), (fever,), days=8)
    assert np.mean([_checks(d) for d in days[:5]]) <= 3  # well: the rounds, now and then a re-check
    assert _checks(days[6]) >= 12  # hourly while the chart says so (a total of 5 or more)
    reasons = Counter(e.reason for e in days[6] if isinstance(e, ManualObservation))
    assert reasons["follow_up"] >= 8 and reasons["round"] <= 2
    confused = [e for e in days[6] if isinstance(e, ManualObservation) and e.consciousness in ("C", "V")]
    assert len(confused) > _checks(days[6]) / 2
    assert all("new_confusion" in e.soft_signs for e in confused)
    temps = [e.value for e in days[6] if isinstance(e, VitalSample) and e.metric is Metric.TEMPERATURE]
    assert np.mean(temps) > 38.0


def test_soft_signs_use_the_platform_vocabulary() -> None:
    """Staff entries the simulator makes must be accepted by the API and understood by the scorer."""
    from carewatch.alerts import SoftSign
    from carewatch.firmware_sim.physiology import GENERIC_SOFT_SIGNS
    from carewatch.firmware_sim.scenarios import KINDS

    used = set(GENERIC_SOFT_SIGNS) | {s for info in KINDS.values() for s in info.soft_signs} | {"new_confusion"}
    assert used <= {s.value for s in SoftSign}
