"""Pure alert rules: plain data in, ``Finding`` out. No database, no clock: every rule is told ``now``.

A Finding says, for one subject and alert kind, either *raise* (open or update the alert with this severity,
reason and action), *clear* (resolve it: the condition has gone) or *hold* (not enough information either way,
leave any open alert as it is). scoring/lifecycle.py turns findings into alert rows and events.

docs/clinical-safety.md (sections H-ALERT-*, H-OBS-*, H-DEV-*) gives the hazard, cause, mitigation and test for
every rule and threshold here.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import Any, Literal
from zoneinfo import ZoneInfo

from carewatch.alerts import SOFT_SIGN_NAMES, AlertKind, Severity
from carewatch.scoring.clinical_response import PLAIN_NAMES, Risk
from carewatch.scoring.news2 import News2Result
from carewatch.subjects import Subject, alert_subject_kind
from carewatch.wire import UNTRUSTED_FLAGS, Metric

#: Care homes and households are in England: times in alert text are local (Europe/London).
LOCAL_TZ = ZoneInfo("Europe/London")

# ------------------------------------------------------------------------------------------------------------
# Findings
# ------------------------------------------------------------------------------------------------------------
FindingState = Literal["raise", "clear", "hold"]


@dataclass(frozen=True)
class Finding:
    """What one rule concluded about one subject and alert kind."""

    kind: AlertKind
    subject_id: str
    site_id: str
    state: FindingState
    resident_id: str | None = None
    severity: Severity | None = None
    reason: str = ""
    action: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    score: int | None = None
    #: False: the severity of an open alert may rise but not fall on this evidence (e.g. a partial NEWS2 set
    #: cannot show that a resident is better).
    allow_downgrade: bool = True
    #: stored_at of the newest reading behind this finding, for the stored-to-alert latency measurement.
    evidence_stored_at: datetime | None = None
    #: True: a clear or hold finding built without its text, because no alert of its kind is open for the subject
    #: (``text_wanted``): it can change nothing, and the evaluation drops it before ``apply_findings`` (H-ALERT-13).
    brief: bool = False
    #: (kind, id) of the subject: the kind follows from the alert kind (carewatch/subjects.py), never from what the
    #: id looks like, so a resident whose id is a household's can never reach the household's alerts. Set once
    #: here (the engine reads it several times per finding, for every finding of a batch).
    subject: Subject = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", Subject(alert_subject_kind(self.kind), self.subject_id))


def raise_alert(
    kind: AlertKind,
    subject_id: str,
    site_id: str,
    severity: Severity,
    reason: str,
    action: str,
    *,
    resident_id: str | None = None,
    data: Mapping[str, Any] | None = None,
    score: int | None = None,
    allow_downgrade: bool = True,
) -> Finding:
    return Finding(kind, subject_id, site_id, "raise", resident_id, severity, reason, action, data or {}, score,
                   allow_downgrade)


def clear_alert(kind: AlertKind, subject_id: str, site_id: str, reason: str, *,
                resident_id: str | None = None, brief: bool = False) -> Finding:
    return Finding(kind, subject_id, site_id, "clear", resident_id, reason=reason, brief=brief)


def hold(kind: AlertKind, subject_id: str, site_id: str, reason: str = "", *,
         resident_id: str | None = None, brief: bool = False) -> Finding:
    return Finding(kind, subject_id, site_id, "hold", resident_id, reason=reason, brief=brief)


def text_wanted(kind: AlertKind, open_kinds: Container[AlertKind] | None) -> bool:
    """Whether a clear or hold finding of ``kind`` needs its text: always when ``open_kinds`` (the kinds of the
    subject's unresolved alerts) is None, else only when an alert of that kind is open. A clear with nothing open
    and every hold change nothing (``lifecycle.apply_findings``), so their text is never read. Raise findings are
    always built whole."""
    return open_kinds is None or kind in open_kinds


def local_time(at: datetime) -> str:
    """'Tue 14 Jan 09:05' in UK local time, for alert text."""
    return at.astimezone(LOCAL_TZ).strftime("%a %d %b %H:%M")


def iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat() if at is not None else None


# ------------------------------------------------------------------------------------------------------------
# Residents
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResidentFacts:
    """The background an SBARD handover needs, from the residents row."""

    resident_id: str
    site_id: str
    display_name: str
    date_of_birth: date | None = None
    obs_per_day: int = 2
    monitoring: str = "active"
    baseline_confused: bool = False
    scale2: bool = False
    scale2_reason: str | None = None
    gp_practice: str | None = None
    site_name: str | None = None
    created_at: datetime | None = None
    #: oxygen prescription set by a clinician (residents.oxygen_prescribed): True on oxygen, False on air, None
    #: not recorded. Used for device-only sets until staff confirm air or oxygen (H-OBS-11).
    oxygen_prescribed: bool | None = None
    oxygen_flow_lpm: float | None = None

    def age(self, today: date) -> int | None:
        if self.date_of_birth is None:
            return None
        dob = self.date_of_birth
        return today.year - dob.year - ((today.month, today.day) < (dob.month, dob.day))

    def background(self, now: datetime) -> list[str]:
        facts = []
        age = self.age(now.astimezone(LOCAL_TZ).date())
        facts.append(f"{self.display_name}" + (f", aged {age}" if age is not None else "")
                     + (f", lives at {self.site_name}" if self.site_name else ""))
        if self.scale2:
            facts.append(f"SpO2 Scale 2 (target 88-92%): {self.scale2_reason or 'reason not recorded'}")
        if self.oxygen_prescribed:
            flow = f" at {self.oxygen_flow_lpm:g} L/min" if self.oxygen_flow_lpm else ""
            facts.append(f"Oxygen prescribed{flow}")
        if self.baseline_confused:
            facts.append("Usually confused (e.g. dementia): confusion is their normal; 'C' means new confusion")
        facts.append(f"Care plan: observations at least {self.obs_per_day} times a day")
        if self.gp_practice:
            facts.append(f"GP practice {self.gp_practice}")
        return facts


def sbard(situation: str, background: Sequence[str], assessment: Sequence[str], recommendation: str) -> dict[str, Any]:
    """SBARD handover material (Decision is filled in by staff when they escalate)."""
    return {
        "situation": situation,
        "background": list(background),
        "assessment": list(assessment),
        "recommendation": recommendation,
        "decision": None,
    }


# ------------------------------------------------------------------------------------------------------------
# Device readings -> observation rounds -> NEWS2 observation sets
# ------------------------------------------------------------------------------------------------------------
#: Wire metric -> NEWS2 parameter. Diastolic BP, perfusion index and weight are stored but not scored.
PARAMETER_OF_METRIC: Mapping[str, str] = {
    Metric.RESPIRATION_RATE.value: "respiration_rate",
    Metric.SPO2.value: "spo2",
    Metric.SYSTOLIC_BP.value: "systolic_bp",
    Metric.PULSE_RATE.value: "pulse",
    Metric.TEMPERATURE.value: "temperature",
}
VITAL_METRICS: tuple[str, ...] = tuple(PARAMETER_OF_METRIC)
NUMERIC_SET_FIELDS: tuple[str, ...] = ("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature")
#: A round: readings measured within this time of the round's first reading form one observation set.
ROUND_WINDOW = timedelta(minutes=30)
_UNTRUSTED = frozenset(f.value for f in UNTRUSTED_FLAGS)
PARAMETER_UNITS: Mapping[str, str] = {
    "respiration_rate": "/min", "spo2": "%", "systolic_bp": "mmHg", "pulse": "/min", "temperature": "°C",
}


@dataclass(frozen=True)
class VitalReading:
    metric: str
    value: float
    measured_at: datetime
    device_id: str
    flags: tuple[str, ...] = ()
    stored_at: datetime | None = None

    @property
    def untrusted_flags(self) -> tuple[str, ...]:
        return tuple(f for f in self.flags if f in _UNTRUSTED)


@dataclass(frozen=True)
class Round:
    """Device readings of one resident's observation round, the newest clean value per parameter."""

    start: datetime
    end: datetime
    values: Mapping[str, VitalReading]  # parameter -> the reading used
    set_aside: tuple[VitalReading, ...]  # untrusted readings, not used as clean values
    newest_stored_at: datetime | None

    @cached_property
    def key(self) -> str:  # (cached: read once per round by planning, then again for the set it writes)
        return "dev:" + self.start.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def build_rounds(readings: Iterable[VitalReading], window: timedelta = ROUND_WINDOW) -> list[Round]:
    """Group a resident's vital readings into rounds: a round starts at a reading more than ``window`` after the
    previous round's first reading. Within a round the newest *trusted* value of each parameter is used; readings
    flagged questionable/invalid/sensor_fault are kept aside as evidence, never used."""
    ordered = sorted((r for r in readings if r.metric in PARAMETER_OF_METRIC), key=lambda r: r.measured_at)
    groups: list[list[VitalReading]] = []
    for reading in ordered:
        if groups and reading.measured_at - groups[-1][0].measured_at <= window:
            groups[-1].append(reading)
        else:
            groups.append([reading])
    rounds = []
    for group in groups:
        values: dict[str, VitalReading] = {}
        aside = []
        for reading in group:
            if reading.flags and reading.untrusted_flags:
                aside.append(reading)
            else:
                values[PARAMETER_OF_METRIC[reading.metric]] = reading  # newest wins (sorted)
        stored = [r.stored_at for r in group if r.stored_at is not None]
        rounds.append(Round(group[0].measured_at, group[-1].measured_at, values, tuple(aside),
                            max(stored) if stored else None))
    return rounds


def settled_rounds(rounds: Sequence[Round], since: datetime, window: timedelta = ROUND_WINDOW) -> list[Round]:
    """The rounds (``build_rounds`` of the readings after ``since``) grouped exactly as they would be with every
    older reading too: those from the first round that starts more than ``window`` after the reading before it
    (``since`` standing in for the unread ones, which are all at or before it). A gap that wide starts a round
    whatever came before, so from there on the grouping cannot depend on the readings cut off. The rounds before it
    may be a round cut short at the look-back edge (its first readings no longer read): planning them would rewrite
    its day-old set without those values and score it again as incomplete, so they are left as stored (H-OBS-13)."""
    previous_end = since  # (only the first round is compared with ``since``: see ``first_round_settled``)
    for i, rnd in enumerate(rounds):
        if rnd.start - previous_end > window:
            return list(rounds[i:])
        previous_end = rnd.end
    return []


def first_round_settled(readings: Iterable[VitalReading], since: datetime, window: timedelta = ROUND_WINDOW) -> bool:
    """Whether the first round of these readings starts more than ``window`` after ``since``: the one thing
    ``settled_rounds`` reads of ``since``, so the scorer's memory keys its remembered plans by it."""
    first = min((r.measured_at for r in readings if r.metric in PARAMETER_OF_METRIC), default=None)
    return first is not None and first - since > window


@dataclass(frozen=True)
class StoredSet:
    """An observation_sets row as the rules need it."""

    obs_id: int | None
    taken_at: datetime
    source: str  # manual | device | mixed
    round_key: str | None
    values: Mapping[str, float | None]  # NEWS2 numeric parameters
    consciousness: str | None = None
    on_oxygen: bool = False
    spo2_scale: int = 1
    soft_signs: tuple[str, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)
    recorded_by: str = "scorer"
    score: int | None = None
    risk: str | None = None
    complete: bool | None = None
    missing: tuple[str, ...] = ()
    subscores: Mapping[str, int | None] = field(default_factory=dict)
    note: str | None = None

    def is_manual_value(self, parameter: str) -> bool:
        """True when staff typed this parameter (kept as typed; devices never overwrite it)."""
        entry = self.inputs.get(parameter)
        if isinstance(entry, Mapping):
            return entry.get("source") == "manual"
        return self.source == "manual" and self.values.get(parameter) is not None

    @property
    def soft_signs_assessed(self) -> bool:
        """Only staff assess soft signs; a device-only set says nothing about them."""
        return self.source in ("manual", "mixed")


@dataclass(frozen=True)
class SetPlan:
    """An observation set to insert (obs_id None) or update, before scoring."""

    obs_id: int | None
    round_key: str
    taken_at: datetime
    source: str
    recorded_by: str
    values: Mapping[str, float | None]
    consciousness: str | None
    on_oxygen: bool
    spo2_scale: int
    soft_signs: tuple[str, ...]
    inputs: Mapping[str, Any]
    set_aside: tuple[str, ...]  # plain-English notes on untrusted readings not used
    newest_stored_at: datetime | None = None
    supersedes: int | None = None  # a device-only set of this round folded into a staff set: delete it

    def observation(self) -> dict[str, Any]:
        """The news2.ObservationSet fields."""
        return {**self.values, "consciousness": self.consciousness, "on_oxygen": self.on_oxygen,
                "spo2_scale": self.spo2_scale}


def describe_set_aside(reading: VitalReading) -> str:
    param = PARAMETER_OF_METRIC.get(reading.metric, reading.metric)
    name = PLAIN_NAMES.get(param, param)
    unit = PARAMETER_UNITS.get(param, "")
    return (f"{name} {reading.value:g}{unit} at {local_time(reading.measured_at)} from {reading.device_id} "
            f"was flagged {'/'.join(reading.untrusted_flags)} and not used")


def _same_values(plan: SetPlan, stored: StoredSet) -> bool:
    return (
        all(_close(plan.values.get(p), stored.values.get(p)) for p in NUMERIC_SET_FIELDS)
        and plan.source == stored.source
        and plan.taken_at == stored.taken_at
        and plan.round_key == stored.round_key
        and plan.spo2_scale == stored.spo2_scale
        and plan.on_oxygen == stored.on_oxygen
        and dict(plan.inputs) == dict(stored.inputs)
    )


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-6)


def plan_observation_sets(
    rounds: Sequence[Round],
    existing: Sequence[StoredSet],
    *,
    scale2: bool,
    oxygen: bool | None = None,
    window: timedelta = ROUND_WINDOW,
    fast: bool = True,
) -> list[SetPlan]:
    """One observation set per round: update the set already holding this round (same round_key, or a set taken
    within ``window`` of the round's start - e.g. the RR and ACVPU staff typed on the tablet), else a new one.

    Staff-typed values are kept as typed; device values fill the rest and are recomputed from the readings each
    time (so re-evaluating is idempotent). Returns only the sets that change. ``fast``: a round whose device-only
    set already holds exactly its readings is seen unchanged without merging it again (``_set_unchanged``);
    False merges every round (the path the equivalence tests hold it to).
    """
    by_key = {s.round_key: s for s in existing if s.round_key}
    claimed: set[int] = set()

    def nearest_round(stored: StoredSet) -> Round | None:
        return min(rounds, key=lambda r: abs(stored.taken_at - r.start), default=None)

    plans = []
    for rnd in sorted(rounds, key=lambda r: r.start):
        target = by_key.get(rnd.key)
        supersedes = None
        if target is None or target.obs_id in claimed:
            near = [s for s in existing if s.obs_id not in claimed and abs(s.taken_at - rnd.start) <= window]
            # prefer a set this scorer already owns, then the nearest in time
            near.sort(key=lambda s: (s.round_key is None, abs(s.taken_at - rnd.start)))
            target = near[0] if near else None
        elif target.recorded_by == "scorer":
            # Staff typed RR/ACVPU for this round after the devices' set was made: one round, one set.
            staff = [s for s in existing if s.obs_id not in claimed and s.obs_id != target.obs_id
                     and s.recorded_by != "scorer" and abs(s.taken_at - rnd.start) <= window
                     and nearest_round(s) is rnd]
            if staff:
                supersedes = target.obs_id
                target = min(staff, key=lambda s: abs(s.taken_at - rnd.start))
        if target is not None and target.obs_id is not None:
            claimed.add(target.obs_id)
        if fast and supersedes is None and target is not None and _set_unchanged(rnd, target, scale2, oxygen):
            continue
        plan = _merge(rnd, target, scale2, oxygen)
        if supersedes is not None:
            plan = replace(plan, supersedes=supersedes, round_key=rnd.key)
        if target is None or supersedes is not None or not _same_values(plan, target):
            plans.append(plan)
    return plans


def _device_entry(entry: Mapping[str, Any], reading: VitalReading) -> bool:
    """``entry == {"source": ..., "device_id": ..., "at": ..., "flags": [...]}``, the inputs entry ``_merge`` writes
    for this reading, compared key by key without building that dict (the time's text last: the dearest)."""
    return (len(entry) == 4 and entry.get("device_id") == reading.device_id
            and entry.get("source") == ("manual" if "manual" in reading.flags else "device")
            and entry.get("flags") == list(reading.flags) and entry.get("at") == iso(reading.measured_at))


def _set_unchanged(rnd: Round, target: StoredSet, scale2: bool, oxygen: bool | None) -> bool:
    """True only when ``_merge(rnd, target, ...)`` would equal ``target`` (``_same_values``), checked without
    building the plan: ``_merge``'s rules, compared field by field. Every case it does not follow exactly returns
    False, and the caller merges: readings set aside, a staff value or ACVPU without its provenance entry (legacy
    rows), a set without a round key."""
    if rnd.set_aside or not target.round_key or target.spo2_scale != (2 if scale2 else 1):
        return False
    inputs = target.inputs
    expected = 0  # the number of inputs keys the merge would write; compared with the stored ones at the end
    manual_any = device_any = False
    values = target.values
    for parameter in NUMERIC_SET_FIELDS:
        found = inputs.get(parameter)
        # StoredSet.is_manual_value, inlined: a JSON entry is a dict (the ABC check only for anything else)
        entry: Mapping[str, Any] | None = found if type(found) is dict or isinstance(found, Mapping) else None
        if (entry.get("source") == "manual" if entry is not None
                else target.source == "manual" and values.get(parameter) is not None):
            value = values.get(parameter)
            if entry is None or not _close(value, value):  # (a NaN is never "the same")
                return False
            expected += 1
            manual_any = True
            continue
        reading = rnd.values.get(parameter)
        if reading is None:
            if values.get(parameter) is not None or parameter in inputs:
                return False
            continue
        if entry is None or not _close(reading.value, values.get(parameter)) or not _device_entry(entry, reading):
            return False
        expected += 1
        device_any = True
    if target.consciousness is not None:
        if not isinstance(inputs.get("consciousness"), Mapping):
            return False
        expected += 1
        manual_any = True
    elif "consciousness" in inputs:
        return False
    staff_set = target.source in ("manual", "mixed") and target.recorded_by != "scorer"
    if staff_set:
        manual_any = True
        if max(rnd.end, target.taken_at) != target.taken_at:
            return False
    else:
        if target.taken_at != rnd.end or target.on_oxygen != bool(oxygen) or inputs.get("air_or_oxygen") != {
                "confirmed": False, "on_oxygen": bool(oxygen),
                "source": "prescription" if oxygen is not None else "no prescription recorded",
                "note": AIR_OXYGEN_UNCONFIRMED}:
            return False
        expected += 1
    source = "mixed" if manual_any and device_any else ("manual" if manual_any else "device")
    return source == target.source and len(inputs) == expected


#: inputs["air_or_oxygen"] of a device-only set: scored from the prescription, not yet confirmed by staff.
AIR_OXYGEN_UNCONFIRMED = "air/oxygen unconfirmed"


def _merge(rnd: Round, target: StoredSet | None, scale2: bool, oxygen: bool | None = None) -> SetPlan:
    values: dict[str, float | None] = {}
    inputs: dict[str, Any] = {}
    manual_any = False
    device_any = False
    for parameter in NUMERIC_SET_FIELDS:
        if target is not None and target.is_manual_value(parameter):
            values[parameter] = target.values.get(parameter)
            entry = target.inputs.get(parameter)
            inputs[parameter] = dict(entry) if isinstance(entry, Mapping) else {
                "source": "manual", "by": target.recorded_by, "at": iso(target.taken_at)}
            manual_any = True
        elif parameter in rnd.values:
            reading = rnd.values[parameter]
            values[parameter] = reading.value
            source = "manual" if "manual" in reading.flags else "device"
            inputs[parameter] = {"source": source, "device_id": reading.device_id,
                                 "at": iso(reading.measured_at), "flags": list(reading.flags)}
            device_any = True
        else:
            values[parameter] = None
    consciousness = target.consciousness if target is not None else None
    if consciousness is not None:
        manual_any = True
        entry = target.inputs.get("consciousness") if target is not None else None
        inputs["consciousness"] = dict(entry) if isinstance(entry, Mapping) else {
            "source": "manual", "by": target.recorded_by if target else None,
            "at": iso(target.taken_at) if target else None}
    staff_set = target is not None and target.source in ("manual", "mixed") and target.recorded_by != "scorer"
    if staff_set:
        manual_any = True
    set_aside = tuple(describe_set_aside(r) for r in rnd.set_aside)
    if set_aside:
        inputs["set_aside"] = list(set_aside)
    on_oxygen = target.on_oxygen if target is not None else False
    if not staff_set:
        # No one has said air or oxygen for this round: use the clinician's prescription and say it is
        # unconfirmed (never reassuring) until staff record it (H-OBS-11).
        on_oxygen = bool(oxygen)
        inputs["air_or_oxygen"] = {
            "confirmed": False, "on_oxygen": on_oxygen,
            "source": "prescription" if oxygen is not None else "no prescription recorded",
            "note": AIR_OXYGEN_UNCONFIRMED}
    source = "mixed" if manual_any and device_any else ("manual" if manual_any and not device_any else "device")
    times = [rnd.end] + ([target.taken_at] if staff_set and target is not None else [])
    return SetPlan(
        obs_id=target.obs_id if target is not None else None,
        round_key=target.round_key if target is not None and target.round_key else rnd.key,
        taken_at=max(times),
        source=source,
        recorded_by=target.recorded_by if target is not None else "scorer",
        values=values,
        consciousness=consciousness,
        on_oxygen=on_oxygen,
        spo2_scale=2 if scale2 else 1,
        soft_signs=target.soft_signs if target is not None else (),
        inputs=inputs,
        set_aside=set_aside,
        newest_stored_at=rnd.newest_stored_at,
    )


# ------------------------------------------------------------------------------------------------------------
# NEWS2 alert
# ------------------------------------------------------------------------------------------------------------
#: NEWS2 band -> alert severity. A single red score (low-medium) needs a clinician within the hour (RESTORE2 and
#: the band's own wording), so it is 'medium' like a total of 5-6. A low total (1-4) is not an alert: it
#: shortens the observation interval instead (schedule.py).
NEWS2_SEVERITY: Mapping[Risk, Severity | None] = {
    Risk.LOW: None,
    Risk.LOW_MEDIUM: Severity.MEDIUM,
    Risk.MEDIUM: Severity.MEDIUM,
    Risk.HIGH: Severity.HIGH,
}


def scored_parameters_text(obs: StoredSet | SetPlan, result: News2Result) -> list[str]:
    """'SpO2 93% (2 points)' for each parameter that scored, in chart order."""
    parts = []
    for parameter, points in result.subscores.items():
        if not points:
            continue
        if parameter == "air_or_oxygen":
            parts.append(f"on oxygen ({points} points)")
        elif parameter == "consciousness":
            parts.append(f"alertness {obs.consciousness} ({points} points)")
        else:
            value = obs.values.get(parameter)
            parts.append(f"{PLAIN_NAMES[parameter]} {value:g}{PARAMETER_UNITS[parameter]} ({points} points)")
    return parts


def news2_can_change(result: News2Result, open_kinds: Container[AlertKind] | None) -> bool:
    """Whether ``news2_finding`` can open, update or resolve anything: its band raises, or a news2 alert is open
    (``text_wanted``). Otherwise it is a brief clear or hold (H-ALERT-13), which an evaluation need not build."""
    return NEWS2_SEVERITY[result.risk] is not None or text_wanted(AlertKind.NEWS2, open_kinds)


def news2_finding(resident: ResidentFacts, obs: StoredSet, result: News2Result, now: datetime,
                  open_kinds: Container[AlertKind] | None = None) -> Finding:
    """One open news2 alert per resident, following the newest set's band. ``open_kinds``: ``text_wanted``."""
    kind = AlertKind.NEWS2
    severity = NEWS2_SEVERITY[result.risk]
    unconfirmed = air_oxygen_unconfirmed(obs)
    if not news2_can_change(result, open_kinds):
        return (clear_alert if result.complete and not unconfirmed else hold)(
            kind, resident.resident_id, resident.site_id, "", resident_id=resident.resident_id, brief=True)
    when = local_time(obs.taken_at)
    if severity is None:
        if result.complete and not unconfirmed:
            return clear_alert(kind, resident.resident_id, resident.site_id,
                               f"Complete observations at {when} scored NEWS2 {result.score} (low).",
                               resident_id=resident.resident_id)
        why = ("air/oxygen unconfirmed" if unconfirmed and result.complete else "a partial score")
        return hold(kind, resident.resident_id, resident.site_id,
                    f"Observations at {when} scored {result.score}: {why} cannot show recovery.",
                    resident_id=resident.resident_id)
    scored = scored_parameters_text(obs, result)
    missing_names = [PLAIN_NAMES.get(m, m) for m in result.missing]
    reason = f"NEWS2 {result.score} ({result.risk.value} risk) from observations at {when}"
    reason += (": " + ", ".join(scored) + ".") if scored else "."
    if result.missing:
        reason += (f" INCOMPLETE: {', '.join(missing_names)} not measured, so the real score may be higher.")
    set_aside = obs.inputs.get("set_aside") if isinstance(obs.inputs, Mapping) else None
    if set_aside:
        reason += " Not used: " + "; ".join(set_aside) + "."
    if unconfirmed:
        entry = obs.inputs.get("air_or_oxygen") or {}
        basis = ("on oxygen, as prescribed" if obs.on_oxygen else
                 "on air, as prescribed" if entry.get("source") == "prescription" else
                 "on air (no oxygen prescription recorded)")
        reason += f" Air/oxygen unconfirmed: scored {basis}; staff must confirm air or oxygen."
    assessment = [f"{PLAIN_NAMES[p]}: {_value_text(obs, p)}" for p in NUMERIC_SET_FIELDS]
    assessment.insert(4, f"alertness (ACVPU): {obs.consciousness or 'not recorded'}")
    assessment.append(f"NEWS2 {result.score} ({result.risk.value}) at {when}"
                      + ("" if result.complete else " - incomplete"))
    data = {
        "obs_id": obs.obs_id,
        "taken_at": iso(obs.taken_at),
        "score": result.score,
        "risk": result.risk.value,
        "complete": result.complete,
        "missing": list(result.missing),
        "air_oxygen_unconfirmed": unconfirmed,
        "subscores": dict(result.subscores),
        "meaning": result.response.meaning,
        "min_interval_minutes": result.response.min_interval_minutes,
        "rcp_response": result.response.rcp_response,
        "sbard": sbard(
            f"{resident.display_name}: NEWS2 {result.score} ({result.risk.value} risk) at {when}.",
            resident.background(now),
            assessment,
            result.response.action,
        ),
    }
    return raise_alert(kind, resident.resident_id, resident.site_id, severity, reason, result.response.action,
                       resident_id=resident.resident_id, data=data, score=result.score,
                       allow_downgrade=result.complete and not unconfirmed)


def air_oxygen_unconfirmed(obs: StoredSet | SetPlan) -> bool:
    """True for a set whose air/oxygen nobody confirmed (a device-only round): it may raise, never reassure."""
    entry = obs.inputs.get("air_or_oxygen") if isinstance(obs.inputs, Mapping) else None
    if isinstance(entry, Mapping):
        return not entry.get("confirmed", False)
    return obs.source == "device"


def _value_text(obs: StoredSet, parameter: str) -> str:
    value = obs.values.get(parameter)
    if value is None:
        return "not measured"
    entry = obs.inputs.get(parameter) if isinstance(obs.inputs, Mapping) else None
    source = ""
    if isinstance(entry, Mapping):
        who = entry.get("device_id") or entry.get("by")
        source = f" ({entry.get('source', '')}{' ' + str(who) if who else ''})"
    return f"{value:g}{PARAMETER_UNITS[parameter]}{source}"


# ------------------------------------------------------------------------------------------------------------
# Data faults: a stored value that cannot be scored (H-DATA-01)
# ------------------------------------------------------------------------------------------------------------
DATA_FAULT_ACTION = (
    "Check the observations named and record a corrected set now; until then this resident's score is the last "
    "good one shown. If a device gave the value, check or replace the device."
)


def data_fault_finding(resident: ResidentFacts, obs: StoredSet, problems: Mapping[str, str], now: datetime,
                       ) -> Finding:
    """The newest set of this resident cannot be scored: name each value, its reason and where it came from
    (who typed it, or which device measured it), so it can be corrected. The resident's last good state stays."""
    where = []
    for name, why in problems.items():
        entry = obs.inputs.get(name) if isinstance(obs.inputs, Mapping) else None
        if isinstance(entry, Mapping) and entry.get("device_id"):
            source = f"from device {entry['device_id']}"
        elif isinstance(entry, Mapping) and entry.get("by"):
            source = f"typed by {entry['by']}"
        else:
            source = f"recorded by {obs.recorded_by}" if obs.source != "device" else "from a device round"
        value = obs.values.get(name)
        plain = PLAIN_NAMES.get(name, name)
        shown = f"{value:g}{PARAMETER_UNITS.get(name, '')}" if isinstance(value, int | float) else "?"
        where.append(f"{plain} {shown} ({source}): {why}")
    reason = (f"Observations at {local_time(obs.taken_at)} (set {obs.obs_id}) cannot be scored: "
              + "; ".join(where) + f". {resident.display_name}'s score and schedule stay at the last good set.")
    data = {"obs_id": obs.obs_id, "taken_at": iso(obs.taken_at), "problems": dict(problems),
            "values": {k: obs.values.get(k) for k in problems}, "recorded_by": obs.recorded_by,
            "source": obs.source}
    return raise_alert(AlertKind.DATA_FAULT, resident.resident_id, resident.site_id, Severity.MEDIUM, reason,
                       DATA_FAULT_ACTION, resident_id=resident.resident_id, data=data)


def data_fault_cleared(resident: ResidentFacts, open_kinds: Container[AlertKind] | None = None) -> Finding:
    brief = not text_wanted(AlertKind.DATA_FAULT, open_kinds)
    return clear_alert(AlertKind.DATA_FAULT, resident.resident_id, resident.site_id,
                       "" if brief else "The newest observations can be scored.", resident_id=resident.resident_id,
                       brief=brief)


# ------------------------------------------------------------------------------------------------------------
# Soft signs
# ------------------------------------------------------------------------------------------------------------
#: Soft-sign assessments older than this say nothing about now.
SOFT_SIGNS_VALID_FOR = timedelta(hours=24)
SOFT_SIGNS_ACTION = (
    "Tell the nurse or senior carer now and take a full set of observations (NEWS2). Staff who know the "
    "resident are worried: contact the GP or NHS 111 today even if the score is low, and within 1 hour if "
    "they are getting worse. Call 999 in an emergency."
)


def _is_confusion(sign: str) -> bool:
    return "confus" in sign.lower()


def soft_signs_finding(resident: ResidentFacts, sets: Sequence[StoredSet], now: datetime,
                       open_kinds: Container[AlertKind] | None = None) -> Finding:
    """Soft signs of deterioration recorded by staff raise escalation even when NEWS2 is low.

    Uses the newest staff-assessed set in the last 24 h (device-only sets do not assess soft signs). For a
    resident whose confusion is their norm, 'confusion' counts only if staff also recorded ACVPU 'C'.
    ``open_kinds``: ``text_wanted``.
    """
    kind = AlertKind.SOFT_SIGNS
    assessed = [s for s in sets if s.soft_signs_assessed and now - SOFT_SIGNS_VALID_FOR <= s.taken_at <= now]
    if not assessed:
        return hold(kind, resident.resident_id, resident.site_id, resident_id=resident.resident_id,
                    brief=not text_wanted(kind, open_kinds))
    latest = max(assessed, key=lambda s: s.taken_at)
    signs = list(latest.soft_signs)
    discounted = []
    if resident.baseline_confused and latest.consciousness != "C":
        discounted = [s for s in signs if _is_confusion(s)]
        signs = [s for s in signs if not _is_confusion(s)]
    if not signs and not text_wanted(kind, open_kinds):
        return clear_alert(kind, resident.resident_id, resident.site_id, "", resident_id=resident.resident_id,
                           brief=True)
    when = local_time(latest.taken_at)
    if not signs:
        note = f"Staff assessment at {when} recorded no soft signs of deterioration"
        if discounted:
            note += (f" (confusion was noted but {resident.display_name} is usually confused and alertness was "
                     f"recorded as {latest.consciousness or 'not recorded'}, not C)")
        return clear_alert(kind, resident.resident_id, resident.site_id, note + ".",
                           resident_id=resident.resident_id)
    plain = [SOFT_SIGN_NAMES.get(s, s.replace("_", " ")) for s in signs]
    reason = f"Staff recorded soft signs at {when}: {', '.join(plain)}."
    if latest.score is not None:
        reason += f" NEWS2 of that set: {latest.score}" + ("" if latest.complete else " (incomplete)") + "."
    if latest.note:
        reason += f" Note: {latest.note}"
    if discounted:
        reason += " (Usual confusion not counted: alertness was not recorded as C.)"
    data = {
        "obs_id": latest.obs_id,
        "soft_signs": signs,
        "discounted": discounted,
        "taken_at": iso(latest.taken_at),
        "sbard": sbard(
            f"{resident.display_name}: staff are worried - {', '.join(plain)} ({when}).",
            resident.background(now),
            [f"Soft signs: {', '.join(plain)}", f"NEWS2 {latest.score} at {when}"
             + ("" if latest.complete else " (incomplete)")],
            SOFT_SIGNS_ACTION,
        ),
    }
    return raise_alert(kind, resident.resident_id, resident.site_id, Severity.MEDIUM, reason, SOFT_SIGNS_ACTION,
                       resident_id=resident.resident_id, data=data, score=latest.score)


# ------------------------------------------------------------------------------------------------------------
# Devices and gateways
# ------------------------------------------------------------------------------------------------------------
BATTERY_LOW_PCT = 20.0
BATTERY_CRITICAL_PCT = 10.0
BATTERY_RECOVERED_PCT = 25.0  # hysteresis: a battery hovering at 19-21% must not open and close all day

#: How long each kind of device may stay quiet before it counts as silent. Spot-check clinical devices are used
#: on rounds (at most twice a day for most residents); home sensors send periodic reports.
EXPECTED_INTERVAL: Mapping[str, timedelta] = {
    "pulse_oximeter": timedelta(hours=36),
    "thermometer": timedelta(hours=36),
    "bp_cuff": timedelta(hours=36),
    "weight_scale": timedelta(days=8),
    "heart_rate": timedelta(minutes=30),
    "motion_sensor": timedelta(hours=6),
    "bathroom_sensor": timedelta(hours=6),
    "door_sensor": timedelta(hours=12),
    "fridge_sensor": timedelta(hours=12),
    "plug": timedelta(hours=1),
    "climate_sensor": timedelta(hours=1),
    "button": timedelta(days=2),
}
DEFAULT_EXPECTED_INTERVAL = timedelta(hours=12)
DEAD_LETTERS_FAULT_COUNT = 5  # dead letters from one device in 24 h
CLOCK_FLAGS_FAULT_COUNT = 3  # readings with clock_not_set / clock_skewed in 24 h
GATEWAY_SILENT_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class DeviceState:
    device_id: str
    site_id: str
    kind: str
    resident_id: str | None = None
    room: str | None = None
    role: str | None = None
    gateway_id: str | None = None
    last_heard: datetime | None = None
    bound_at: datetime | None = None
    battery_pct: float | None = None
    gateway_offline: bool = False
    dead_letters_24h: int = 0
    clock_flagged_24h: int = 0
    last_dead_letter: str | None = None
    #: One of a practice kit's devices (training, issue 17): it lies unused between trainings, so its battery and
    #: silence say nothing about anyone's care. No device rule raises about it (H-KIT-08).
    practice: bool = False

    @property
    def label(self) -> str:
        where = self.room or self.role or (f"resident {self.resident_id}" if self.resident_id else None)
        return f"{self.kind.replace('_', ' ')} {self.device_id}" + (f" ({where})" if where else "")


def battery_finding(dev: DeviceState) -> Finding:
    kind = AlertKind.BATTERY_LOW
    if dev.battery_pct is None:
        return hold(kind, dev.device_id, dev.site_id, resident_id=dev.resident_id)
    if dev.battery_pct < BATTERY_LOW_PCT:
        critical = dev.battery_pct < BATTERY_CRITICAL_PCT
        return raise_alert(
            kind, dev.device_id, dev.site_id, Severity.MEDIUM if critical else Severity.LOW,
            f"Battery of {dev.label} is at {dev.battery_pct:.0f}% (low below {BATTERY_LOW_PCT:.0f}%).",
            "Replace or charge the battery today" + (" - it may stop at any time." if critical else "."),
            resident_id=dev.resident_id, data={"battery_pct": dev.battery_pct, "device_kind": dev.kind},
        )
    if dev.battery_pct >= BATTERY_RECOVERED_PCT:
        return clear_alert(kind, dev.device_id, dev.site_id, f"Battery back at {dev.battery_pct:.0f}%.",
                           resident_id=dev.resident_id)
    return hold(kind, dev.device_id, dev.site_id, resident_id=dev.resident_id)


def silence_finding(dev: DeviceState, now: datetime) -> Finding:
    """A device quiet for longer than its kind's expected interval. Not raised while its gateway is offline
    (the gateway_offline alert explains it, and one cause should not flood staff with alerts)."""
    kind = AlertKind.DEVICE_SILENT
    expected = EXPECTED_INTERVAL.get(dev.kind, DEFAULT_EXPECTED_INTERVAL)
    since = dev.last_heard or dev.bound_at
    if since is None:
        return hold(kind, dev.device_id, dev.site_id, resident_id=dev.resident_id)
    if now - since <= expected:
        return clear_alert(kind, dev.device_id, dev.site_id, f"Heard from {dev.label} at {local_time(since)}.",
                           resident_id=dev.resident_id)
    if dev.gateway_offline:
        return hold(kind, dev.device_id, dev.site_id, resident_id=dev.resident_id)
    heard = f"last heard {local_time(since)}" if dev.last_heard else f"never heard since fitting at {local_time(since)}"
    hours = expected.total_seconds() / 3600
    return raise_alert(
        kind, dev.device_id, dev.site_id, Severity.LOW,
        f"No readings from {dev.label}: {heard}; it normally reports at least every {hours:g} h.",
        "Check the device is switched on, in range of the hub and has a working battery.",
        resident_id=dev.resident_id,
        data={"last_heard": iso(dev.last_heard), "expected_interval_h": hours, "device_kind": dev.kind},
    )


def fault_finding(dev: DeviceState) -> Finding:
    kind = AlertKind.DEVICE_FAULT
    problems = []
    if dev.dead_letters_24h >= DEAD_LETTERS_FAULT_COUNT:
        problems.append(f"{dev.dead_letters_24h} unreadable or rejected messages in 24 h"
                        + (f" (latest: {dev.last_dead_letter})" if dev.last_dead_letter else ""))
    if dev.clock_flagged_24h >= CLOCK_FLAGS_FAULT_COUNT:
        problems.append(f"{dev.clock_flagged_24h} readings in 24 h with its clock unset or wrong "
                        "(the hub's time was used instead)")
    if not problems:
        return clear_alert(kind, dev.device_id, dev.site_id, f"No faults from {dev.label} in the last 24 h.",
                           resident_id=dev.resident_id)
    return raise_alert(
        kind, dev.device_id, dev.site_id, Severity.LOW, f"{dev.label}: " + "; ".join(problems) + ".",
        "Check the device (set its clock, replace the battery, re-pair it); if it continues, replace it.",
        resident_id=dev.resident_id,
        data={"dead_letters_24h": dev.dead_letters_24h, "clock_flagged_24h": dev.clock_flagged_24h},
    )


#: The device alert kinds ``device_findings`` decides.
DEVICE_ALERT_KINDS = (AlertKind.BATTERY_LOW, AlertKind.DEVICE_SILENT, AlertKind.DEVICE_FAULT)


def practice_device_findings(dev: DeviceState) -> list[Finding]:
    """A practice kit's device: every device alert kind clear, saying why, so none is raised and one open from
    before (the device moved onto the practice kit, the kit switched to practice) is resolved (H-KIT-08)."""
    why = (f"{dev.label} belongs to the home's practice kit (staff training): Carewatch raises no device alerts "
           "about it.")
    return [clear_alert(kind, dev.device_id, dev.site_id, why, resident_id=dev.resident_id)
            for kind in DEVICE_ALERT_KINDS]


def device_findings(devices: Iterable[DeviceState], now: datetime) -> list[Finding]:
    out: list[Finding] = []
    for dev in devices:
        if dev.practice:
            out.extend(practice_device_findings(dev))
        else:
            out.extend((battery_finding(dev), silence_finding(dev, now), fault_finding(dev)))
    return out


@dataclass(frozen=True)
class GatewayState:
    gateway_id: str
    site_id: str
    state: str  # unknown | online | offline
    last_seen: datetime | None
    site_kind: str | None = None
    site_name: str | None = None


def gateway_offline(gw: GatewayState, now: datetime) -> bool:
    return gw.state == "offline" or (gw.last_seen is not None and now - gw.last_seen > GATEWAY_SILENT_AFTER)


def gateway_finding(gw: GatewayState, now: datetime) -> Finding:
    """gateway_offline once the hub has been offline or silent for GATEWAY_SILENT_AFTER. An explicit 'offline'
    (the broker's last will, ~90 s after the link drops) waits out the same grace: a router reboot of a few
    minutes must not alert (H-DEV-04); rules that *hold* while the hub is offline use ``gateway_offline`` at once."""
    kind = AlertKind.GATEWAY_OFFLINE
    if gw.last_seen is None and gw.state != "offline":
        return hold(kind, gw.gateway_id, gw.site_id)
    if not gateway_offline(gw, now):
        return clear_alert(kind, gw.gateway_id, gw.site_id, f"Hub {gw.gateway_id} is back online.")
    if gw.last_seen is not None and now - gw.last_seen < GATEWAY_SILENT_AFTER:
        return hold(kind, gw.gateway_id, gw.site_id, "offline for less than the grace period")
    why = "reported itself offline" if gw.state == "offline" else "has not been heard"
    since = f" (last heard {local_time(gw.last_seen)})" if gw.last_seen else ""
    where = gw.site_name or gw.site_id
    return raise_alert(
        kind, gw.gateway_id, gw.site_id, Severity.MEDIUM,
        f"Hub {gw.gateway_id} at {where} {why}{since}: no readings from its devices are arriving.",
        "Check the hub has power and internet. Until it is back, take observations by hand and check on "
        "anyone who relies on home sensors.",
        data={"state": gw.state, "last_seen": iso(gw.last_seen), "site_kind": gw.site_kind},
    )
