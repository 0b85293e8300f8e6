"""Round planning's fast path (issue 19 part 0): a round whose device-only set already holds exactly its readings
is seen unchanged without merging it again. Held equal to merging every round (``fast=False``) on many rounds and
stored sets: the sets an earlier evaluation stored, then changed the ways a real world changes them (a new or late
reading, a flag, staff typing into the set, a new prescription or scale, a set edited by hand)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch.scoring import rules
from carewatch.scoring.rules import SetPlan, StoredSet, VitalReading, build_rounds, plan_observation_sets

T0 = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # the night the clocks go back
METRICS = [*rules.PARAMETER_OF_METRIC, "diastolic_bp"]
VALUES = {"respiration_rate": (8, 30), "spo2": (85, 100), "systolic_bp": (85, 200), "pulse_rate": (40, 140),
          "temperature": (35, 40), "diastolic_bp": (50, 100)}

readings = st.lists(st.builds(
    lambda metric, minute, frac, device, flags: VitalReading(
        metric, round(VALUES[metric][0] + frac * (VALUES[metric][1] - VALUES[metric][0]), 1),
        T0 + timedelta(minutes=minute), device, tuple(flags)),
    st.sampled_from(METRICS), st.integers(0, 26 * 60), st.floats(0, 1), st.sampled_from(["ox-1", "th-1", "bp-1"]),
    st.lists(st.sampled_from(["questionable", "manual", "clock_skewed", "sensor_fault"]), max_size=2, unique=True)),
    max_size=30)


def _stored(plan: SetPlan, obs_id: int) -> StoredSet:
    """What the database gives back for a written plan: inputs through JSON, as loading.py reads them."""
    return StoredSet(obs_id, plan.taken_at, plan.source, plan.round_key, dict(plan.values),
                     consciousness=plan.consciousness, on_oxygen=plan.on_oxygen, spo2_scale=plan.spo2_scale,
                     soft_signs=plan.soft_signs, inputs=json.loads(json.dumps(plan.inputs)),
                     recorded_by=plan.recorded_by)


def _change(s: StoredSet, how: int, data: Any) -> StoredSet:

    if how == 0:  # a value edited
        p = data.draw(st.sampled_from(rules.NUMERIC_SET_FIELDS))
        return replace(s, values={**s.values, p: data.draw(st.one_of(st.none(), st.floats(30, 100)))})
    if how == 1:  # an input's provenance differs
        key = data.draw(st.sampled_from(sorted(s.inputs) or ["spo2"]))
        entry = s.inputs.get(key)
        new = {**entry, "at": data.draw(st.sampled_from([None, "2026-10-25T01:00:00+00:00"]))} \
            if isinstance(entry, dict) else {"source": "manual", "by": "carer1"}
        return replace(s, inputs={**s.inputs, key: new})
    if how == 2:  # staff typed RR / ACVPU into it
        return replace(s, source="mixed", recorded_by=data.draw(st.sampled_from(["carer1", "scorer"])),
                       consciousness=data.draw(st.sampled_from([None, "A", "C"])),
                       values={**s.values, "respiration_rate": 18.0},
                       inputs={**s.inputs, "respiration_rate": {"source": "manual", "by": "carer1", "at": "x"}})
    if how == 3:  # taken at another time
        return replace(s, taken_at=s.taken_at + timedelta(seconds=data.draw(st.integers(-600, 600))))
    if how == 4:  # a key lost or added
        inputs = dict(s.inputs)
        if inputs and data.draw(st.booleans()):
            inputs.pop(data.draw(st.sampled_from(sorted(inputs))))
        else:
            inputs["set_aside"] = ["something"]
        return replace(s, inputs=inputs)
    if how == 5:  # another round key on the stored set
        return replace(s, round_key=data.draw(st.sampled_from([None, "dev:x"])))
    if how == 6:  # oxygen recorded on the set itself differs
        return replace(s, on_oxygen=not s.on_oxygen)
    if how == 7:  # scale recorded on the set itself differs
        return replace(s, spo2_scale=3 - s.spo2_scale)
    if how == 8:  # written by someone else, or as another source
        return replace(s, recorded_by=data.draw(st.sampled_from(["carer1", "api"])),
                       source=data.draw(st.sampled_from(["device", "manual", "mixed"])))
    return s


staff_sets = st.lists(st.builds(
    lambda i, minute, rr, acvpu, with_inputs, oxygen, source: StoredSet(
        1000 + i, T0 + timedelta(minutes=minute), source, None,
        {"respiration_rate": rr, "spo2": None, "systolic_bp": None, "pulse": None, "temperature": None},
        consciousness=acvpu, on_oxygen=oxygen, recorded_by="carer1",
        inputs={k: {"source": "manual", "by": "carer1", "at": "2026-10-25T00:00:00+00:00"}
                for k, v in (("respiration_rate", rr), ("consciousness", acvpu)) if v is not None} if with_inputs
        else {}),
    st.integers(0, 50), st.integers(0, 26 * 60), st.one_of(st.none(), st.sampled_from([12.0, 18.0, 26.0])),
    st.sampled_from([None, "A", "C"]), st.booleans(), st.booleans(), st.sampled_from(["manual", "mixed"])),
    max_size=6, unique_by=lambda s: s.obs_id)


def _written(existing: list[StoredSet], plans: list[SetPlan], scale2: bool) -> list[StoredSet]:
    """``existing`` after an evaluation wrote ``plans`` (updated in place, inserted, superseded deleted)."""
    by_id = {s.obs_id: s for s in existing}
    for plan in plans:
        if plan.supersedes is not None:
            by_id.pop(plan.supersedes, None)
    for i, plan in enumerate(plans):
        obs_id = plan.obs_id if plan.obs_id is not None else 5000 + i
        by_id[obs_id] = _stored(plan, obs_id)
    return sorted(by_id.values(), key=lambda s: (s.taken_at, s.obs_id or 0))


def _staff_rr_and_acvpu() -> list[StoredSet]:
    """Staff typing RR and ACVPU into the tablet 6 minutes into each 4-hourly round (a mixed set once merged)."""
    return [StoredSet(100 + h, T0 + timedelta(hours=h, minutes=6), "manual", None,
                      {"respiration_rate": 16.0, "spo2": None, "systolic_bp": None, "pulse": None,
                       "temperature": None}, consciousness="A", recorded_by="carer1",
                      inputs={"respiration_rate": {"source": "manual", "by": "carer1", "at": "x"},
                              "consciousness": {"source": "manual", "by": "carer1", "at": "x"}})
            for h in range(0, 24, 4)]


@settings(max_examples=800, deadline=None)
@given(readings, readings, staff_sets, st.booleans(), st.sampled_from([None, False, True]), st.booleans(),
       st.sampled_from([None, False, True]), st.data())
def test_the_fast_path_plans_exactly_what_merging_every_round_plans(
        before: list[VitalReading], later: list[VitalReading], staff: list[StoredSet], scale2: bool,
        oxygen: bool | None, scale2_now: bool, oxygen_now: bool | None, data: Any) -> None:
    # an earlier evaluation stored its plans (device rounds, and staff sets the rounds were merged into); then
    # readings arrived, and some sets were changed
    first = plan_observation_sets(build_rounds(before), staff, scale2=scale2, oxygen=oxygen, fast=False)
    existing = _written(list(staff), first, scale2)
    existing = [_change(s, data.draw(st.integers(0, 16)), data) for s in existing]
    if data.draw(st.booleans()):
        later = []  # nothing new: the common case, every round unchanged
    same_world = data.draw(st.booleans())
    s2, ox = (scale2, oxygen) if same_world else (scale2_now, oxygen_now)
    rounds = build_rounds([*before, *later])
    assert plan_observation_sets(rounds, existing, scale2=s2, oxygen=ox) == \
        plan_observation_sets(rounds, existing, scale2=s2, oxygen=ox, fast=False)


def test_the_fast_path_is_taken_for_unchanged_device_rounds(monkeypatch) -> None:
    """The fast path does fire: sets stored from the readings are all seen unchanged without a merge."""
    rs = [VitalReading(m, v, T0 + timedelta(hours=h, minutes=k), "ox-1")
          for h in range(0, 24, 4) for k, (m, v) in enumerate([("spo2", 96.0), ("pulse_rate", 72.0),
                                                               ("temperature", 36.7)])]
    rounds = build_rounds(rs)
    existing = [_stored(p, i + 1) for i, p in
                enumerate(plan_observation_sets(rounds, [], scale2=False, oxygen=None, fast=False))]
    assert len(existing) == 6
    merged = []
    real = rules._merge
    monkeypatch.setattr(rules, "_merge", lambda *a, **k: merged.append(a) or real(*a, **k))
    assert plan_observation_sets(rounds, existing, scale2=False, oxygen=None) == []
    assert merged == []
    assert plan_observation_sets(rounds, existing, scale2=False, oxygen=None, fast=False) == []
    assert len(merged) == 6
    # the care home's usual round: devices, then staff typing RR and ACVPU into the tablet (a mixed set)
    staff = _staff_rr_and_acvpu()
    mixed = _written(staff, plan_observation_sets(rounds, staff, scale2=False, oxygen=True, fast=False), False)
    assert {s.source for s in mixed} == {"mixed"} and len(mixed) == 6
    merged.clear()
    assert plan_observation_sets(rounds, mixed, scale2=False, oxygen=True) == []
    assert merged == []


def test_each_way_a_mixed_set_can_differ_is_planned_as_merging_plans_it() -> None:
    """Every field of a staff-completed round the fast path reads, changed one at a time: the plans are those of
    merging every round (and each change is planned)."""
    rs = [VitalReading(m, v, T0 + timedelta(hours=h, minutes=k), "ox-1")
          for h in range(0, 24, 4) for k, (m, v) in enumerate([("spo2", 96.0), ("pulse_rate", 72.0)])]
    rounds = build_rounds(rs)
    staff = _staff_rr_and_acvpu()
    mixed = _written(staff, plan_observation_sets(rounds, staff, scale2=False, oxygen=None, fast=False), False)
    s = mixed[2]
    variants = [
        replace(s, taken_at=rounds[2].end - timedelta(seconds=1)),  # taken before the round's last reading
        replace(s, source="manual"), replace(s, source="device"), replace(s, recorded_by="scorer"),
        replace(s, inputs={k: v for k, v in s.inputs.items() if k != "consciousness"}),
        replace(s, inputs={**s.inputs, "consciousness": "A"}),
        replace(s, consciousness=None),
        replace(s, inputs={**s.inputs, "air_or_oxygen": {"confirmed": True}}),
        replace(s, inputs={**s.inputs, "set_aside": ["x"]}),
        replace(s, values={**s.values, "respiration_rate": float("nan")}),
        replace(s, values={**s.values, "respiration_rate": None}),
        replace(s, values={**s.values, "temperature": 37.0}),
        replace(s, values={**s.values, "spo2": 95.0}),
        replace(s, inputs={k: v for k, v in s.inputs.items() if k != "respiration_rate"}),
        replace(s, source="manual", inputs={k: v for k, v in s.inputs.items() if k != "respiration_rate"}),
        replace(s, spo2_scale=2), replace(s, round_key=None), replace(s, on_oxygen=True),
    ]
    for variant in variants:
        world = [variant if x.obs_id == s.obs_id else x for x in mixed]
        for scale2, oxygen in ((False, None), (True, True)):
            fast = plan_observation_sets(rounds, world, scale2=scale2, oxygen=oxygen)
            assert fast == plan_observation_sets(rounds, world, scale2=scale2, oxygen=oxygen, fast=False), variant
