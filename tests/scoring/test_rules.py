"""Pure rules: device rounds -> observation sets, NEWS2 / soft-sign findings, device and gateway findings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carewatch.alerts import AlertKind, Severity
from carewatch.scoring.news2 import score_observation
from carewatch.scoring.rules import (
    BATTERY_LOW_PCT,
    DeviceState,
    GatewayState,
    ResidentFacts,
    StoredSet,
    VitalReading,
    battery_finding,
    build_rounds,
    fault_finding,
    first_round_settled,
    gateway_finding,
    news2_finding,
    plan_observation_sets,
    settled_rounds,
    silence_finding,
    soft_signs_finding,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RES = ResidentFacts("res-1", "home-1", "Mrs A", date(1936, 5, 1), obs_per_day=2)


def _r(metric: str, value: float, minutes: float, flags: tuple[str, ...] = (), device: str = "ox-1") -> VitalReading:
    return VitalReading(metric, value, T0 + timedelta(minutes=minutes), device, flags)


def _stored(plan_or_values: dict, **kw: object) -> StoredSet:
    base = dict(obs_id=1, taken_at=T0, source="manual", round_key=None, values=plan_or_values)
    base.update(kw)
    return StoredSet(**base)  # type: ignore[arg-type]


# --- rounds ------------------------------------------------------------------------------------------------
def test_readings_within_30_minutes_form_one_round_and_newest_clean_value_wins() -> None:
    rounds = build_rounds([
        _r("spo2", 95, 0), _r("pulse_rate", 80, 1), _r("spo2", 94, 2), _r("temperature", 37.1, 10, device="th-1"),
        _r("spo2", 90, 31),  # 31 min after the first reading: a new round
    ])
    assert len(rounds) == 2
    assert rounds[0].values["spo2"].value == 94
    assert set(rounds[0].values) == {"spo2", "pulse", "temperature"}
    assert rounds[1].values["spo2"].value == 90


@pytest.mark.parametrize("flag", ["questionable", "invalid", "sensor_fault", "motion_artefact"])
def test_untrusted_readings_are_set_aside_not_used(flag: str) -> None:
    rounds = build_rounds([_r("spo2", 96, 0), _r("spo2", 85, 1, (flag,))])
    assert rounds[0].values["spo2"].value == 96
    assert [r.value for r in rounds[0].set_aside] == [85]
    plan = plan_observation_sets(rounds, [], scale2=False)[0]
    assert any(flag in note and "not used" in note for note in plan.set_aside)


def test_low_perfusion_is_scored_with_its_flag_not_set_aside() -> None:
    """Poor perfusion can be the illness (shock): that value counts, and its flag stays with it."""
    rounds = build_rounds([_r("spo2", 88, 0, ("low_perfusion",))])
    assert rounds[0].values["spo2"].value == 88 and rounds[0].set_aside == ()


def test_only_untrusted_value_leaves_parameter_missing() -> None:
    rounds = build_rounds([_r("spo2", 85, 0, ("questionable",)), _r("pulse_rate", 80, 0)])
    plan = plan_observation_sets(rounds, [], scale2=False)[0]
    assert plan.values["spo2"] is None
    result = score_observation(plan.observation())
    assert not result.complete and "spo2" in result.missing


def test_device_round_merges_into_staff_set_and_keeps_typed_values() -> None:
    staff = _stored({"respiration_rate": 18, "spo2": 97, "systolic_bp": None, "pulse": None, "temperature": None},
                    consciousness="A", recorded_by="carer1", taken_at=T0 + timedelta(minutes=5))
    rounds = build_rounds([_r("spo2", 92, 0), _r("pulse_rate", 100, 0), _r("systolic_bp", 120, 2, device="bp-1")])
    plan = plan_observation_sets(rounds, [staff], scale2=True)[0]
    assert plan.obs_id == 1 and plan.source == "mixed"
    assert plan.values["spo2"] == 97  # typed by staff: kept
    assert plan.values["pulse"] == 100 and plan.values["systolic_bp"] == 120
    assert plan.consciousness == "A" and plan.spo2_scale == 2
    assert plan.inputs["pulse"]["source"] == "device" and plan.inputs["spo2"]["source"] == "manual"


def test_replanning_the_same_round_is_idempotent() -> None:
    rounds = build_rounds([_r("spo2", 95, 0), _r("pulse_rate", 80, 1)])
    plan = plan_observation_sets(rounds, [], scale2=False)[0]
    stored = StoredSet(10, plan.taken_at, plan.source, plan.round_key, plan.values, inputs=plan.inputs)
    assert plan_observation_sets(rounds, [stored], scale2=False) == []
    # a late reading with an earlier time changes the round start but updates the same set
    later = build_rounds([_r("temperature", 37.0, -3, device="th-1"), _r("spo2", 95, 0), _r("pulse_rate", 80, 1)])
    again = plan_observation_sets(later, [stored], scale2=False)
    assert [p.obs_id for p in again] == [10]
    assert again[0].values["temperature"] == 37.0


def test_device_only_round_uses_the_oxygen_prescription_and_is_unconfirmed() -> None:
    """H-OBS-11: a Scale 2 resident on oxygen at SpO2 97% scores 5 (3 + 2 for oxygen), not 0 as 'on air'."""
    rounds = build_rounds([_r("spo2", 97, 0), _r("pulse_rate", 80, 1)])
    on_o2 = plan_observation_sets(rounds, [], scale2=True, oxygen=True)[0]
    assert on_o2.on_oxygen and on_o2.inputs["air_or_oxygen"] == {
        "confirmed": False, "on_oxygen": True, "source": "prescription", "note": "air/oxygen unconfirmed"}
    result = score_observation(on_o2.observation())
    assert result.score == 5 and result.subscores["spo2"] == 3 and result.subscores["air_or_oxygen"] == 2
    on_air = plan_observation_sets(rounds, [], scale2=True, oxygen=None)[0]
    assert not on_air.on_oxygen and on_air.inputs["air_or_oxygen"]["source"] == "no prescription recorded"
    assert score_observation(on_air.observation()).score == 0
    # the prescription changing re-plans the set (same readings)
    stored = StoredSet(10, on_air.taken_at, on_air.source, on_air.round_key, on_air.values, on_oxygen=False,
                       spo2_scale=2, inputs=on_air.inputs)
    assert plan_observation_sets(rounds, [stored], scale2=True, oxygen=None) == []
    assert [p.on_oxygen for p in plan_observation_sets(rounds, [stored], scale2=True, oxygen=True)] == [True]
    # staff who typed on the tablet have said air or oxygen: theirs stands
    staff = _stored({"respiration_rate": 18, "spo2": None, "systolic_bp": None, "pulse": None, "temperature": None},
                    consciousness="A", recorded_by="carer1", on_oxygen=False)
    merged = plan_observation_sets(rounds, [staff], scale2=True, oxygen=True)[0]
    assert not merged.on_oxygen and "air_or_oxygen" not in merged.inputs


def test_unconfirmed_air_or_oxygen_never_reassures() -> None:
    full_low = {**FULL}
    obs = _stored(full_low, consciousness="A", source="device",
                  inputs={"air_or_oxygen": {"confirmed": False, "on_oxygen": False, "source": "prescription"}})
    result = score_observation({**full_low, "consciousness": "A"})
    assert result.complete and result.score == 0
    finding = news2_finding(RES, obs, result, T0)
    assert finding.state == "hold" and "unconfirmed" in finding.reason
    risky = _stored({**FULL, "spo2": 91.0}, consciousness="A", source="device",
                    inputs={"air_or_oxygen": {"confirmed": False, "on_oxygen": True, "source": "prescription"}},
                    on_oxygen=True)
    raised = news2_finding(RES, risky, score_observation({**FULL, "spo2": 91.0, "consciousness": "A",
                                                          "on_oxygen": True}), T0)
    assert raised.state == "raise" and not raised.allow_downgrade
    assert "Air/oxygen unconfirmed: scored on oxygen, as prescribed" in raised.reason
    assert raised.data["air_oxygen_unconfirmed"] is True


# --- NEWS2 finding -------------------------------------------------------------------------------------------
FULL = {"respiration_rate": 16.0, "spo2": 97.0, "systolic_bp": 125.0, "pulse": 75.0, "temperature": 36.8}


def _finding(values: dict, consciousness: str | None = "A", source: str = "manual"):
    obs = _stored(values, consciousness=consciousness, source=source)
    result = score_observation({**values, "consciousness": consciousness})
    return news2_finding(RES, obs, result, T0), result


@pytest.mark.parametrize(
    ("changes", "state", "severity"),
    [
        ({}, "clear", None),  # 0, complete
        ({"pulse": 95.0}, "clear", None),  # 1: low, no alert
        ({"spo2": 91.0}, "raise", Severity.MEDIUM),  # single red 3: low-medium
        ({"respiration_rate": 22.0, "pulse": 115.0, "temperature": 38.5}, "raise", Severity.MEDIUM),  # 5
        ({"respiration_rate": 25.0, "spo2": 91.0, "pulse": 115.0}, "raise", Severity.HIGH),  # 8
    ],
)
def test_news2_band_to_alert(changes: dict, state: str, severity: Severity | None) -> None:
    finding, result = _finding({**FULL, **changes})
    assert finding.state == state and finding.severity == severity
    if state == "raise":
        assert f"NEWS2 {result.score}" in finding.reason
        assert finding.action == result.response.action
        assert finding.data["sbard"]["recommendation"] == result.response.action


def test_partial_low_set_holds_and_says_nothing_reassuring() -> None:
    finding, _ = _finding({**FULL, "respiration_rate": None}, consciousness=None, source="device")
    assert finding.state == "hold"


def test_partial_risky_set_raises_names_missing_and_cannot_downgrade() -> None:
    finding, result = _finding({**FULL, "spo2": 90.0, "respiration_rate": None}, consciousness=None,
                               source="device")
    assert finding.state == "raise" and not result.complete
    assert "INCOMPLETE" in finding.reason and "breathing rate" in finding.reason
    assert "alertness" in finding.reason
    assert finding.allow_downgrade is False


def test_scored_parameters_are_named_with_values() -> None:
    finding, _ = _finding({**FULL, "spo2": 91.0, "pulse": 112.0})
    assert "oxygen level (SpO2) 91% (3 points)" in finding.reason
    assert "pulse 112/min (2 points)" in finding.reason


# --- soft signs ----------------------------------------------------------------------------------------------
def test_soft_signs_raise_even_when_news2_is_zero() -> None:
    obs = _stored(FULL, consciousness="A", soft_signs=("not_eating_drinking",), score=0, complete=True)
    f = soft_signs_finding(RES, [obs], T0 + timedelta(hours=1))
    assert f.state == "raise" and f.severity is Severity.MEDIUM
    assert "not eating or drinking" in f.reason


def test_baseline_confused_resident_confusion_counts_only_with_c() -> None:
    confused = ResidentFacts("res-2", "home-1", "Mr B", baseline_confused=True)
    with_a = _stored(FULL, consciousness="A", soft_signs=("new_confusion",))
    assert soft_signs_finding(confused, [with_a], T0).state == "clear"
    with_c = _stored(FULL, consciousness="C", soft_signs=("new_confusion",))
    assert soft_signs_finding(confused, [with_c], T0).state == "raise"
    assert soft_signs_finding(RES, [with_a], T0).state == "raise"  # not usually confused: counts


def test_device_sets_and_old_assessments_do_not_clear_soft_signs() -> None:
    device = _stored(FULL, source="device", taken_at=T0)
    old = _stored(FULL, soft_signs=(), taken_at=T0 - timedelta(hours=25))
    assert soft_signs_finding(RES, [old, device], T0).state == "hold"


# --- devices and gateways -------------------------------------------------------------------------------------
def _dev(**kw: object) -> DeviceState:
    base = dict(device_id="ox-1", site_id="home-1", kind="pulse_oximeter", last_heard=T0, bound_at=T0)
    base.update(kw)
    return DeviceState(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("pct", "state"), [(19.9, "raise"), (BATTERY_LOW_PCT, "hold"), (24.9, "hold"),
                                            (25.0, "clear"), (None, "hold")])
def test_battery_threshold_with_hysteresis(pct: float | None, state: str) -> None:
    assert battery_finding(_dev(battery_pct=pct)).state == state


def test_battery_critical_is_medium() -> None:
    assert battery_finding(_dev(battery_pct=9)).severity is Severity.MEDIUM
    assert battery_finding(_dev(battery_pct=15)).severity is Severity.LOW


def test_device_silent_after_expected_interval_but_not_while_gateway_offline() -> None:
    motion = _dev(kind="motion_sensor", device_id="m-1")
    assert silence_finding(motion, T0 + timedelta(hours=6)).state == "clear"
    late = silence_finding(motion, T0 + timedelta(hours=6, seconds=1))
    assert late.state == "raise" and late.kind is AlertKind.DEVICE_SILENT
    assert silence_finding(_dev(kind="motion_sensor", gateway_offline=True), T0 + timedelta(hours=7)).state == "hold"


def test_device_fault_from_dead_letters_or_clock_flags() -> None:
    assert fault_finding(_dev(dead_letters_24h=4)).state == "clear"
    assert fault_finding(_dev(dead_letters_24h=5)).state == "raise"
    assert "clock" in fault_finding(_dev(clock_flagged_24h=3)).reason


def test_gateway_offline_by_state_or_silence() -> None:
    online = GatewayState("gw-1", "home-1", "online", T0)
    assert gateway_finding(online, T0 + timedelta(minutes=10)).state == "clear"
    assert gateway_finding(online, T0 + timedelta(minutes=11)).state == "raise"
    # an explicit offline (last will) waits out the same grace: a router reboot must not alert (H-DEV-04)
    assert gateway_finding(GatewayState("gw-1", "home-1", "offline", T0), T0 + timedelta(minutes=9)).state == "hold"
    late = gateway_finding(GatewayState("gw-1", "home-1", "offline", T0), T0 + timedelta(minutes=10))
    assert late.state == "raise" and late.severity is Severity.MEDIUM
    assert gateway_finding(GatewayState("gw-1", "home-1", "offline", None), T0).state == "raise"  # since when?


def test_data_fault_names_the_value_and_where_it_came_from() -> None:
    """H-DATA-01: a stored value that cannot be scored is named with its source, not silently dropped."""
    from carewatch.scoring.rules import data_fault_finding

    obs = _stored({**FULL, "spo2": 150.0}, obs_id=42, recorded_by="carer1",
                  inputs={"spo2": {"source": "device", "device_id": "ox-9"}, "pulse": {"source": "manual",
                                                                                       "by": "carer2"}})
    f = data_fault_finding(RES, obs, {"spo2": "spo2=150 % is outside the plausible range 40-100",
                                      "pulse": "pulse=0 is outside"}, T0)
    assert f.state == "raise" and f.kind is AlertKind.DATA_FAULT and f.severity is Severity.MEDIUM
    assert "SpO2) 150% (from device ox-9)" in f.reason and "(typed by carer2)" in f.reason
    assert "last good set" in f.reason and f.data["obs_id"] == 42


@given(st.lists(st.integers(0, 600), max_size=30), st.integers(-40, 600))
def test_settled_rounds_are_grouped_as_with_every_older_reading(minutes: list[int], since_minute: int) -> None:
    """The rounds kept after the look-back edge are exactly rounds of the whole history (H-OBS-13): a round cut
    short at the edge is never planned again with its first readings missing."""
    readings = [_r("spo2", 95, m) for m in sorted(minutes)]
    since = T0 + timedelta(minutes=since_minute)
    whole = build_rounds(readings)
    kept = settled_rounds(build_rounds([r for r in readings if r.measured_at > since]), since)
    assert kept == (whole[len(whole) - len(kept):] if kept else [])
    inside = [r for r in readings if r.measured_at > since]
    assert first_round_settled(inside, since) == bool(inside and inside[0].measured_at - since > timedelta(minutes=30))
    # the rounds after the first gap wider than a round window are never dropped
    times = [since] + [r.measured_at for r in inside]
    gaps = [i for i in range(1, len(times)) if times[i] - times[i - 1] > timedelta(minutes=30)]
    if gaps:
        assert kept and kept[0].start == times[gaps[0]]


def test_a_round_cut_short_at_the_look_back_edge_is_not_planned() -> None:
    """Oximeter at 09:00, thermometer at 09:10: once 09:00 has left the look-back, the 09:10 reading alone is not a
    round to plan (its set holds all three values); the next round, after a gap, is."""
    readings = [_r("spo2", 95, 0), _r("pulse_rate", 80, 0), _r("temperature", 37.1, 10), _r("spo2", 91, 180)]
    since = T0 + timedelta(minutes=5)
    kept = settled_rounds(build_rounds([r for r in readings if r.measured_at > since]), since)
    assert [r.start for r in kept] == [T0 + timedelta(minutes=180)]
    assert not first_round_settled(readings[2:], since) and first_round_settled(readings[3:], since)
