"""Care-home residents' physiology, the devices that measure it, and the observation rounds staff run.

Value level only: the output is :class:`VitalSample` (one device measurement) and :class:`ManualObservation`
(what staff type: respiration rate, consciousness, soft signs). The device/transport layer turns them into
bytes. A resident's *true* state is baseline + circadian rhythm + day-to-day wander + scenario deltas; each
measurement adds the device's bias and noise and, now and then, a realistic artefact (cold finger, motion)
that staff notice and re-measure.

Clinical anchors (older adults in care homes): resting RR 14-20, SpO2 94-98% (COPD 88-92%, NEWS2 Scale 2),
systolic BP ~135 mmHg with wide spread, pulse ~75, temperature ~36.5 °C (older people run cooler and mount
smaller fevers). Dementia is the resident's norm: recorded consciousness stays 'A' (only NEW confusion scores
in NEWS2); ``baseline_confused`` tells the platform about it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np

from carewatch.firmware_sim.care import CheckReason, HomeCare, plan_checks
from carewatch.firmware_sim.effects import Effect, total_effect
from carewatch.scoring.news2 import encode_consciousness, score_arrays
from carewatch.wire import METRICS, DeviceKind, Metric, QualityFlag


class Condition(StrEnum):
    COPD = "copd"
    ATRIAL_FIBRILLATION = "atrial_fibrillation"
    DEMENTIA = "dementia"
    HYPERTENSION = "hypertension"


#: Approximate prevalence among UK care-home residents (dementia ~70%, hypertension ~50-60%, AF ~20%,
#: COPD ~12-15%). Drawn independently; good enough for a population, not an epidemiological model.
CONDITION_PREVALENCE: dict[Condition, float] = {
    Condition.DEMENTIA: 0.70,
    Condition.HYPERTENSION: 0.55,
    Condition.ATRIAL_FIBRILLATION: 0.20,
    Condition.COPD: 0.14,
}

CONSCIOUSNESS_LEVELS = ("A", "C", "V", "P", "U")

#: Soft signs staff record without a device (RESTORE2-style wording).
GENERIC_SOFT_SIGNS = ("not_themselves", "not_eating_drinking", "reduced_mobility", "drowsy", "new_pain")


# ------------------------------------------------------------------------------------------------------------
# Value-level events
# ------------------------------------------------------------------------------------------------------------
@dataclass(slots=True, unsafe_hash=True)  # not frozen: 5x cheaper to create; treat as immutable
class VitalSample:
    """One device measurement. SpO2, pulse and perfusion index from one oximeter reading share ``at``;
    a BP reading gives systolic, diastolic and pulse; a thermometer gives temperature (°C).

    ``device`` is the care-home kit the device belongs to (e.g. 'kit-01'); with ``site_id`` and
    ``device_kind`` it identifies the physical device for the byte layer.
    """

    at: datetime
    resident_id: str
    device_kind: DeviceKind
    metric: Metric
    value: float
    flags: frozenset[QualityFlag]
    site_id: str
    device: str


@dataclass(slots=True, unsafe_hash=True)  # not frozen: 5x cheaper to create; treat as immutable
class ManualObservation:
    """What staff type at a check: respiration rate (counted), consciousness (ACVPU) and soft signs."""

    at: datetime
    resident_id: str
    respiration_rate: float | None
    consciousness: str  # 'A' | 'C' | 'V' | 'P' | 'U'; 'C' means NEW confusion
    soft_signs: tuple[str, ...]
    note: str | None
    site_id: str
    supplemental_oxygen: bool = False
    reason: str = "round"  # care.CheckReason: a routine round, a concern check or the chart's follow-up


# ------------------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Baseline:
    """A resident's usual (daytime mean) values, before circadian rhythm and day-to-day variation."""

    respiration_rate: float
    spo2: float
    systolic_bp: float
    diastolic_bp: float
    pulse_rate: float
    temperature: float
    pulse_variability: float  # SD (/min) between two pulse readings taken a minute apart; high in AF
    scale2: bool  # hypercapnic respiratory failure: NEWS2 SpO2 Scale 2 (target 88-92%)
    baseline_confused: bool  # dementia: confusion is their norm, recorded consciousness stays 'A'
    consciousness: str = "A"
    on_oxygen: bool = False  # long-term oxygen: on it at (almost) every check, scored 2 for air or oxygen


def draw_conditions(rng: np.random.Generator) -> frozenset[Condition]:
    draws = rng.random(len(CONDITION_PREVALENCE))
    return frozenset(c for (c, p), u in zip(CONDITION_PREVALENCE.items(), draws, strict=True) if u < p)


def draw_baseline(rng: np.random.Generator, conditions: frozenset[Condition]) -> Baseline:
    """Plausible frail older-adult baselines, shifted by the resident's conditions.

    Care-home residents do not live at a NEWS2 of 0: in 19,604 routine and concern readings from 46 UK homes the
    median was 2 and only 28% scored zero (Age and Ageing 2019;49(1):141-145). The spreads below are wide enough for
    that: many residents sit at SpO2 94-95% (1 point), run cool (36.0 °C, 1 point), have a low or high pulse or a
    systolic of 110 or less. COPD: about 4 in 10 have a documented hypercapnic target (Scale 2, 88-92%); the rest
    are scored on Scale 1 at 91-95% on air. A quarter of COPD residents and 2% of others are on long-term oxygen
    (2 points on every set).
    """
    z = rng.standard_normal(7)
    u = rng.random(3)
    copd = Condition.COPD in conditions
    af = Condition.ATRIAL_FIBRILLATION in conditions
    htn = Condition.HYPERTENSION in conditions
    scale2 = copd and bool(u[0] < 0.4)
    on_oxygen = bool(u[1] < (0.25 if copd else 0.03))
    # frailty moves several parameters together (faster breathing and pulse, lower pressure and saturation):
    # the residents who live at a NEWS2 of 3-5
    frail = float(np.clip(rng.gamma(1.5, 0.6), 0.0, 3.5))
    rr = float(np.clip(16.8 + 1.6 * z[0] + 1.5 * frail + (2.0 if copd else 0.0), 12.0, 24.0))
    if scale2:
        spo2 = float(np.clip(90.0 + 1.0 * z[1], 88.0, 92.0))
    elif copd:
        spo2 = float(np.clip(93.4 + 1.2 * z[1] - 0.4 * frail, 91.0, 96.0))
    else:
        spo2 = float(np.clip(96.6 + 1.1 * z[1] - 1.1 * frail, 92.0, 99.0))
    sbp = float(np.clip(130.0 + 15.0 * z[2] - 8.0 * frail + (12.0 if htn else 0.0), 92.0, 180.0))
    dbp = float(np.clip(0.45 * sbp + 12.0 + 6.0 * z[3], 50.0, 95.0))
    pulse = float(np.clip(72.0 + 9.0 * z[4] + 5.0 * frail + (6.0 if af else 0.0) + (4.0 if copd else 0.0),
                          50.0, 105.0))
    temp = float(np.clip(36.4 + 0.28 * z[5] - 0.08 * frail, 35.7, 37.1))
    variability = float(np.clip((9.0 if af else 2.0) * np.exp(0.2 * z[6]), 1.0, 14.0))
    return Baseline(
        respiration_rate=rr,
        spo2=spo2,
        systolic_bp=sbp,
        diastolic_bp=dbp,
        pulse_rate=pulse,
        temperature=temp,
        pulse_variability=variability,
        scale2=scale2,
        baseline_confused=Condition.DEMENTIA in conditions,
        on_oxygen=on_oxygen,
    )


def circadian(wall_hours: np.ndarray) -> dict[str, np.ndarray]:
    """Offsets from the daytime mean: temperature, pulse and BP peak late afternoon, lowest ~05:00."""
    c = np.cos(2.0 * np.pi * (np.asarray(wall_hours, dtype=float) - 17.0) / 24.0)
    return {
        "temperature": 0.25 * c,
        "pulse_rate": 4.0 * c,
        "systolic_bp": 6.0 * c,
        "diastolic_bp": 4.0 * c,
        "respiration_rate": 0.5 * c,
        "spo2": np.zeros_like(c),
    }


@dataclass(frozen=True, slots=True)
class DailyWander:
    """Day-to-day variation in the true state (a resident is not the same every day)."""

    temperature: float
    pulse_rate: float
    systolic_bp: float
    respiration_rate: float
    spo2: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> DailyWander:
        z = rng.standard_normal(5)
        return cls(0.10 * z[0], 3.0 * z[1], 6.0 * z[2], 0.6 * z[3], 0.4 * z[4])


def true_state(
    baseline: Baseline,
    wall_hours: np.ndarray,
    epochs: np.ndarray,
    wander: DailyWander,
    effects: Sequence[Effect],
) -> dict[str, np.ndarray]:
    """The resident's actual physiology at the given times (before any measurement error)."""
    rhythm = circadian(wall_hours)
    sbp_delta = total_effect(effects, "systolic_bp", epochs)
    state = {
        "temperature": baseline.temperature + rhythm["temperature"] + wander.temperature
        + total_effect(effects, "temperature", epochs),
        "pulse_rate": baseline.pulse_rate + rhythm["pulse_rate"] + wander.pulse_rate
        + total_effect(effects, "pulse_rate", epochs),
        "systolic_bp": baseline.systolic_bp + rhythm["systolic_bp"] + wander.systolic_bp + sbp_delta,
        "diastolic_bp": baseline.diastolic_bp + rhythm["diastolic_bp"] + 0.5 * wander.systolic_bp
        + 0.5 * sbp_delta,
        "respiration_rate": baseline.respiration_rate + rhythm["respiration_rate"] + wander.respiration_rate
        + total_effect(effects, "respiration_rate", epochs),
        "spo2": np.minimum(baseline.spo2 + wander.spo2 + total_effect(effects, "spo2", epochs), 100.0),
        "new_confusion": np.clip(total_effect(effects, "new_confusion", epochs), 0.0, 1.0),
    }
    return state


def visibility(effects: Sequence[Effect], epochs: np.ndarray) -> np.ndarray:
    """How plainly unwell a resident looks to staff (0..1): the strongest of their scenarios' soft signs and new
    confusion. This is what prompts a concern check; it is not a measurement and knows nothing of any score."""
    epochs = np.asarray(epochs, dtype=float)
    if not effects:
        return np.zeros_like(epochs)
    return np.clip(np.maximum(total_effect(effects, "soft_signs", epochs),
                              total_effect(effects, "new_confusion", epochs)), 0.0, 1.0)


_CODES = {letter: int(code) for letter, code in zip("ACVPU", encode_consciousness("ACVPU"), strict=True)}


def chart_scores(baseline: Baseline, state: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """NEWS2 (total, any single 3) of sets taken at the state's times, as staff would chart them: the resident's
    true values (devices add their own noise later), new confusion charted as 'C' when it is more likely than not,
    on oxygen if prescribed. The chart itself (``carewatch.scoring.news2``) is the only platform code the simulated
    staff use: it is on the wall of every home."""
    n = len(state["spo2"])
    scored = score_arrays(
        respiration_rate=_clip_array(np.round(state["respiration_rate"]), Metric.RESPIRATION_RATE),
        spo2=_clip_array(np.round(state["spo2"]), Metric.SPO2),
        scale2=np.full(n, baseline.scale2),
        on_oxygen=np.full(n, baseline.on_oxygen),
        systolic_bp=_clip_array(np.round(state["systolic_bp"]), Metric.SYSTOLIC_BP),
        pulse=_clip_array(np.round(state["pulse_rate"]), Metric.PULSE_RATE),
        consciousness=np.where(state["new_confusion"] >= 0.5, _CODES["C"], _CODES["A"]).astype(np.int8),
        temperature=_clip_array(np.round(state["temperature"], 1), Metric.TEMPERATURE),
    )
    return scored.total.astype(int), (scored.by_parameter.max(axis=0) >= 3)


def _clip_array(values: np.ndarray, metric: Metric) -> np.ndarray:
    """``np.clip`` to the metric's plausible range, as the two ufuncs it is made of: the same values, without
    ``np.clip``'s Python dispatch (this runs for every resident every simulated day)."""
    low, high = _LIMITS[metric]
    return np.minimum(np.maximum(values, low), high)


@functools.lru_cache(maxsize=65536)
def usual_score(baseline: Baseline) -> int:
    """The NEWS2 a resident usually scores (their daytime baseline): what staff mean by 'their normal'. It depends
    on the baseline alone (a frozen value), so each resident's is scored once, not on every simulated day."""
    state = {"respiration_rate": np.array([baseline.respiration_rate]), "spo2": np.array([baseline.spo2]),
             "systolic_bp": np.array([baseline.systolic_bp]), "pulse_rate": np.array([baseline.pulse_rate]),
             "temperature": np.array([baseline.temperature]), "new_confusion": np.zeros(1)}
    return int(chart_scores(baseline, state)[0][0])


# ------------------------------------------------------------------------------------------------------------
# Devices
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KitCharacter:
    """One care-home kit's devices: their calibration bias and whether the oximeter reports quality flags."""

    spo2_bias: float
    pulse_bias: float
    temperature_bias: float
    systolic_bias: float
    diastolic_bias: float
    oximeter_flags_quality: bool  # PLX-class oximeters flag low perfusion/motion; cheap ones do not

    @classmethod
    def draw(cls, rng: np.random.Generator) -> KitCharacter:
        z = rng.standard_normal(5)
        return cls(0.6 * z[0], 1.0 * z[1], 0.12 * z[2], 3.0 * z[3], 2.5 * z[4], bool(rng.random() < 0.6))


KIT_DEVICE_KINDS = (DeviceKind.PULSE_OXIMETER, DeviceKind.BP_CUFF, DeviceKind.THERMOMETER)


# ------------------------------------------------------------------------------------------------------------
# Observation routine
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ObservationRoutine:
    """A resident's care plan (``obs_per_day`` routine rounds) in their home (``care``: its round times, how
    reliably rounds happen, how its staff respond to concern and to the chart). See ``care.py``."""

    obs_per_day: int
    care: HomeCare

    def __post_init__(self) -> None:
        if self.obs_per_day not in self.care.round_hours:
            raise ValueError(f"obs_per_day must be one of {sorted(self.care.round_hours)}, not {self.obs_per_day}")

    @property
    def round_hours(self) -> tuple[float, ...]:
        return tuple(self.care.round_hours[self.obs_per_day])

    @classmethod
    def for_frequency(cls, obs_per_day: int, missed_round_probability: float = 0.0,
                      care: HomeCare | None = None) -> ObservationRoutine:
        """``obs_per_day`` rounds in ``care`` (default: a textbook home, rounds on the dot at 08/12/16/20, every
        parameter counted, no concern checks; missing rounds with ``missed_round_probability``)."""
        return cls(obs_per_day, care or HomeCare.textbook(missed_probability=missed_round_probability))


_LIMITS = {m: (float(s.low), float(s.high)) for m, s in METRICS.items()}


def _clip(metric: Metric, value: float) -> float:
    """Keep a value inside the wire contract's plausibility range (scenarios that want garbage say so)."""
    low, high = _LIMITS[metric]
    return float(min(max(value, low), high))


_NO_FLAGS: frozenset[QualityFlag] = frozenset()


def check_times(
    rng: np.random.Generator,
    routine: ObservationRoutine,
    baseline: Baseline,
    wander: DailyWander,
    effects: Sequence[Effect],
    wall_to_epoch: Callable[[np.ndarray], np.ndarray],
    slot_s: float,
) -> list[tuple[float, CheckReason]]:
    """Wall-clock seconds (from local midnight) of the day's checks that actually happen, with why, sorted.

    The chart staff read after each set is evaluated on a 15-minute grid of the resident's true state."""
    grid_s = np.arange(96) * 900.0 + 450.0
    epochs = wall_to_epoch(grid_s)
    scores, reds = chart_scores(baseline, true_state(baseline, grid_s / 3600.0, epochs, wander, effects))
    hourly = visibility(effects, wall_to_epoch(np.arange(24) * 3600.0 + 1800.0))

    def chart(wall_s: float) -> tuple[int, bool]:
        k = min(int(wall_s // 900.0), 95)
        return int(scores[k]), bool(reds[k])

    return plan_checks(rng, routine.care, routine.obs_per_day, slot_s, hourly, chart, usual_score(baseline))


def resident_day(
    *,
    rng: np.random.Generator,
    resident_id: str,
    site_id: str,
    kit: str,
    kit_character: KitCharacter,
    baseline: Baseline,
    routine: ObservationRoutine,
    effects: Sequence[Effect],
    wall_to_epoch: Callable[[np.ndarray], np.ndarray],
    slot_s: float,
    device_alive: Callable[[DeviceKind, float], bool] | None = None,
) -> list[VitalSample | ManualObservation]:
    """All of one resident's observations on one day, in time order.

    ``wall_to_epoch`` maps wall-clock seconds since local midnight to epoch seconds (handles DST);
    ``slot_s`` is the resident's usual place in the round (staff go round residents in order);
    ``device_alive(kind, epoch)`` is False while a kit device is dead (its readings are then not taken).
    Random numbers are drawn as arrays for the whole day (this runs for every resident every day).
    """
    wander = DailyWander.draw(rng)
    checks = check_times(rng, routine, baseline, wander, effects, wall_to_epoch, slot_s)
    times = np.array([t for t, _ in checks])
    reasons = [r for _, r in checks]
    out: list[VitalSample | ManualObservation] = []
    n = len(times)
    if n == 0:
        return out
    # two blocks of random numbers for the whole day: uniforms U[i] and standard normals Z[i], one row per use
    U = rng.random((21, n))
    Z = rng.standard_normal((12, n))

    def uniform(row: int, lo: float, hi: float) -> np.ndarray:
        return lo + (hi - lo) * U[row]

    # when each device is read, relative to the start of the check
    wall = np.concatenate([times, times + uniform(0, 60.0, 150.0), times + uniform(1, 180.0, 300.0),
                           times + uniform(2, 300.0, 420.0)])
    epochs = wall_to_epoch(wall)
    state = true_state(baseline, wall / 3600.0, epochs, wander, effects)
    ch = kit_character
    pv = baseline.pulse_variability
    ox_epoch, bp_epoch, t_epoch, m_epoch = (epochs[k * n:(k + 1) * n].tolist() for k in range(4))
    # ---- oximeter ----
    true_spo2 = state["spo2"][:n]
    true_pulse = state["pulse_rate"][:n]
    artefact = U[3].tolist()
    pi = np.clip(np.exp(np.log(3.0) + 0.5 * Z[0]), 0.6, 20.0).tolist()
    clean = true_spo2 + ch.spo2_bias + 0.8 * Z[1]
    clean_spo2 = clean.tolist()
    clean_pulse = (true_pulse + ch.pulse_bias + pv * Z[2]).tolist()
    cold_spo2 = (true_spo2 - uniform(4, 4.0, 10.0)).tolist()
    cold_pi = uniform(5, 0.1, 0.4).tolist()
    cold_retry = uniform(6, 120.0, 300.0).tolist()
    warm_pulse = (true_pulse + 2.0 * Z[3]).tolist()
    moved_spo2 = (true_spo2 - uniform(7, 0.0, 6.0)).tolist()
    moved_pulse = (true_pulse + uniform(8, -25.0, 45.0)).tolist()
    moved_retry = uniform(9, 60.0, 180.0).tolist()
    lowperf_spo2 = (clean + Z[4]).tolist()
    lowperf_pi = uniform(10, 0.2, 0.5).tolist()
    # ---- BP: a second try after body movement ----
    cuff_moved = (U[11] < 0.02).tolist()
    cuff_retry = uniform(12, 120.0, 240.0).tolist()
    sbp_true, dbp_true = state["systolic_bp"][n:2 * n], state["diastolic_bp"][n:2 * n]
    bp_pulse_true = state["pulse_rate"][n:2 * n]
    sbp = (sbp_true + ch.systolic_bias + 4.0 * Z[5]).tolist()
    dbp = (dbp_true + ch.diastolic_bias + 3.2 * Z[6]).tolist()
    bp_pulse = (bp_pulse_true + pv * Z[7]).tolist()
    moved_sbp = (sbp_true + ch.systolic_bias + 15.0 * Z[8]).tolist()
    moved_dbp = (dbp_true + ch.diastolic_bias + 12.0 * Z[9]).tolist()
    # ---- thermometer: tympanic, sometimes low from poor technique (unflagged) ----
    temp = state["temperature"][2 * n:3 * n] + ch.temperature_bias + 0.12 * Z[10]
    temp = (temp - np.where(U[13] < 0.03, uniform(14, 0.4, 1.0), 0.0)).tolist()
    # ---- manual ----
    rr = state["respiration_rate"][3 * n:] + Z[11]
    rr = np.where(U[15] < 0.4, 2.0 * np.round(rr / 2.0), np.round(rr)).tolist()  # even-count preference
    p_confused = state["new_confusion"][3 * n:].tolist()
    u_confused, u_verbal = U[16].tolist(), U[17].tolist()
    sign_probs = [(e, e.value("soft_signs", epochs[3 * n:]).tolist(), rng.random(n).tolist(),
                   [rng.permutation(len(e.soft_signs))[:2] for _ in range(n)])
                  for e in effects if e.soft_signs]
    stray = (U[18] < 0.004).tolist()
    rr_missing = [u < routine.care.rr_missing_probability * (1.0 if r is CheckReason.ROUND else 0.5)
                  for u, r in zip(U[20].tolist(), reasons, strict=True)]
    stray_pick = (U[19] * len(GENERIC_SOFT_SIGNS)).astype(int).tolist()

    def alive(kind: DeviceKind, epoch: float) -> bool:
        return device_alive is None or device_alive(kind, epoch)

    ox, cuff, thermo = DeviceKind.PULSE_OXIMETER, DeviceKind.BP_CUFF, DeviceKind.THERMOMETER
    lowperf = frozenset({QualityFlag.LOW_PERFUSION}) if ch.oximeter_flags_quality else _NO_FLAGS
    motion = frozenset({QualityFlag.MOTION_ARTEFACT}) if ch.oximeter_flags_quality else _NO_FLAGS
    cuff_motion = frozenset({QualityFlag.MOTION_ARTEFACT})
    note_dementia = "usual confusion (dementia), not new" if baseline.baseline_confused else None
    for k in range(n):
        if alive(ox, ox_epoch[k]):
            u = artefact[k]
            if u < 0.04:  # cold finger: falsely low SpO2 at poor perfusion; fine once warmed and re-measured
                readings = [(0.0, cold_spo2[k], clean_pulse[k], cold_pi[k], lowperf),
                            (cold_retry[k], clean_spo2[k], warm_pulse[k], pi[k], _NO_FLAGS)]
            elif u < 0.06:  # motion artefact: erratic pulse, SpO2 may dip; re-measured with the hand still
                readings = [(0.0, moved_spo2[k], moved_pulse[k], pi[k], motion),
                            (moved_retry[k], clean_spo2[k], clean_pulse[k], pi[k], _NO_FLAGS)]
            elif u < 0.09:  # low perfusion, reading still sensible
                readings = [(0.0, lowperf_spo2[k], clean_pulse[k], lowperf_pi[k], lowperf)]
            else:
                readings = [(0.0, clean_spo2[k], clean_pulse[k], pi[k], _NO_FLAGS)]
            for dt, spo2, pulse, perf, flags in readings:
                when = datetime.fromtimestamp(ox_epoch[k] + dt, UTC)
                out.append(VitalSample(when, resident_id, ox, Metric.SPO2, _clip(Metric.SPO2, round(spo2)),
                                       flags, site_id, kit))
                out.append(VitalSample(when, resident_id, ox, Metric.PULSE_RATE,
                                       _clip(Metric.PULSE_RATE, round(pulse)), flags, site_id, kit))
                out.append(VitalSample(when, resident_id, ox, Metric.PERFUSION_INDEX,
                                       _clip(Metric.PERFUSION_INDEX, round(perf, 1)), flags, site_id, kit))
        if alive(cuff, bp_epoch[k]):
            if cuff_moved[k]:
                tries = [(0.0, moved_sbp[k], moved_dbp[k], moved_pulse[k], cuff_motion),
                         (cuff_retry[k], sbp[k], dbp[k], bp_pulse[k], _NO_FLAGS)]
            else:
                tries = [(0.0, sbp[k], dbp[k], bp_pulse[k], _NO_FLAGS)]
            for dt, sys_v, dia_v, pulse, flags in tries:
                when = datetime.fromtimestamp(bp_epoch[k] + dt, UTC)
                sbp_v = _clip(Metric.SYSTOLIC_BP, round(sys_v))
                out.append(VitalSample(when, resident_id, cuff, Metric.SYSTOLIC_BP, sbp_v, flags, site_id, kit))
                out.append(VitalSample(when, resident_id, cuff, Metric.DIASTOLIC_BP,
                                       _clip(Metric.DIASTOLIC_BP, round(min(dia_v, sbp_v - 15.0))), flags, site_id,
                                       kit))
                out.append(VitalSample(when, resident_id, cuff, Metric.PULSE_RATE,
                                       _clip(Metric.PULSE_RATE, round(pulse)), flags, site_id, kit))
        if alive(thermo, t_epoch[k]):
            out.append(VitalSample(datetime.fromtimestamp(t_epoch[k], UTC), resident_id, thermo, Metric.TEMPERATURE,
                                   _clip(Metric.TEMPERATURE, round(temp[k], 1)), _NO_FLAGS, site_id, kit))
        consciousness = "A"
        signs: list[str] = []
        if u_confused[k] < p_confused[k]:
            consciousness = "V" if p_confused[k] > 0.9 and u_verbal[k] < 0.1 else "C"
            signs.append("new_confusion")
        for effect, probs, draws, picks in sign_probs:
            if draws[k] < probs[k]:
                signs.extend(effect.soft_signs[int(j)] for j in sorted(picks[k]))
        if stray[k]:  # staff occasionally note a soft sign in a well resident
            signs.append(GENERIC_SOFT_SIGNS[stray_pick[k]])
        out.append(ManualObservation(
            datetime.fromtimestamp(m_epoch[k], UTC), resident_id,
            None if rr_missing[k] else _clip(Metric.RESPIRATION_RATE, rr[k]),
            consciousness, tuple(dict.fromkeys(signs)), note_dementia if consciousness == "A" else None, site_id,
            supplemental_oxygen=baseline.on_oxygen, reason=reasons[k].value,
        ))
    out.sort(key=_at)
    return out


def _at(event: VitalSample | ManualObservation) -> datetime:
    return event.at
