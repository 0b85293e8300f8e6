"""Pipeline: notification + registry → reading drafts or dead letters, never an exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conformance import CONFORMANCE_DIR, load_conformance

from carewatch.firmware_sim.frames import (
    encode_berrymed,
    encode_heart_rate,
    encode_plx_continuous,
    encode_plx_spot_check,
)
from carewatch.gateway.pipeline import URGENT_BANDS, Pipeline, is_urgent
from carewatch.gateway.transport import Notification
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.wire import METRICS, DeviceKind, Metric, QualityFlag, Reading

AT = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
OX, TH, PIR, CHEAP = "A4:C1:38:00:00:01", "A4:C1:38:00:00:02", "A4:C1:38:00:00:03", "A4:C1:38:00:00:04"
RING, STRAP = "A4:C1:38:00:00:05", "A4:C1:38:00:00:06"


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(
        DeviceRegistry(
            [
                RegisteredDevice(
                    address=OX, device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER, resident_id="r-1"
                ),
                RegisteredDevice(
                    address=TH, device_id="th-1", kind=DeviceKind.THERMOMETER, resident_id="r-1"
                ),
                RegisteredDevice(
                    address=PIR, device_id="pir-1", kind=DeviceKind.MOTION_SENSOR, room="lounge"
                ),
                RegisteredDevice(
                    address=CHEAP, device_id="ox-2", kind=DeviceKind.PULSE_OXIMETER, source="berrymed"
                ),
                RegisteredDevice(
                    address=RING, device_id="ring-1", kind=DeviceKind.PULSE_OXIMETER, source="o2ring"
                ),
                RegisteredDevice(address=STRAP, device_id="hr-1", kind=DeviceKind.HEART_RATE, resident_id="r-1"),
            ]
        )
    )


def note(address: str, source: str, data: bytes, at: datetime = AT) -> Notification:
    return Notification(address, source, data, at)


def test_gatt_spot_check_becomes_two_readings(pipeline: Pipeline, gw: Any) -> None:
    result = pipeline.process(note(OX, "2a5e", gw.plx_spot_check(97, 72)))
    assert not result.dead_letters and result.frames == 1
    by_metric = {d.metric: d for d in result.drafts}
    assert by_metric[Metric.SPO2].value == 97 and by_metric[Metric.PULSE_RATE].value == 72
    for draft in result.drafts:
        assert draft.device_id == "ox-1" and draft.device_kind is DeviceKind.PULSE_OXIMETER
        assert draft.unit == METRICS[draft.metric].unit
        assert draft.received_at == AT
        # no time field in this frame: measured when heard, nothing to flag
        assert draft.measured_at == AT and draft.flags == ()
        assert not draft.urgent
        Reading(seq=1, **{k: v for k, v in vars(draft).items() if k != "urgent"})  # valid on the wire


def test_device_clock_is_used_when_credible(pipeline: Pipeline, gw: Any) -> None:
    measured = (AT - timedelta(minutes=2)).replace(tzinfo=None)
    result = pipeline.process(note(OX, "2a5e", gw.plx_spot_check_at(95, 80, measured)))
    assert {d.measured_at for d in result.drafts} == {AT - timedelta(minutes=2)}
    assert all(not d.flags for d in result.drafts)
    unset = pipeline.process(note(OX, "2a5e", b"\x01" + gw.sfloat(95) + gw.sfloat(80) + bytes(7)))
    assert all(d.measured_at == AT and QualityFlag.CLOCK_NOT_SET in d.flags for d in unset.drafts)
    assert len(unset.drafts) == 2
    skewed = pipeline.process(note(OX, "2a5e", gw.plx_spot_check_at(95, 80, measured - timedelta(days=3))))
    assert all(d.measured_at == AT and QualityFlag.CLOCK_SKEWED in d.flags for d in skewed.drafts)


def test_temperature_and_urgency(pipeline: Pipeline, gw: Any) -> None:
    normal = pipeline.process(note(TH, "2a1c", gw.temperature(369)))
    fever = pipeline.process(note(TH, "2a1c", gw.temperature(385)))
    assert [(d.metric, d.value, d.urgent) for d in normal.drafts] == [(Metric.TEMPERATURE, 36.9, False)]
    assert [(d.metric, d.value, d.urgent) for d in fever.drafts] == [(Metric.TEMPERATURE, 38.5, True)]
    low = pipeline.process(note(OX, "2a5e", gw.plx_spot_check(88, 72)))
    assert {d.metric: d.urgent for d in low.drafts} == {Metric.SPO2: True, Metric.PULSE_RATE: False}


@pytest.mark.parametrize(
    ("metric", "value", "urgent"),
    [
        (Metric.SPO2, 92, False),
        (Metric.SPO2, 91, True),
        (Metric.PULSE_RATE, 50, False),
        (Metric.PULSE_RATE, 49, True),
        (Metric.PULSE_RATE, 110, False),
        (Metric.PULSE_RATE, 111, True),
        (Metric.TEMPERATURE, 38.0, False),
        (Metric.TEMPERATURE, 38.1, True),
        (Metric.TEMPERATURE, 35.0, True),
        (Metric.RESPIRATION_RATE, 20, False),
        (Metric.RESPIRATION_RATE, 21, True),
        (Metric.SYSTOLIC_BP, 101, False),
        (Metric.SYSTOLIC_BP, 100, True),
        (Metric.BUTTON, 0, False),
        (Metric.BUTTON, 1, True),
        (Metric.ROOM_TEMPERATURE, 40, False),
    ],
)
def test_urgent_band_edges(metric: Metric, value: float, urgent: bool) -> None:
    assert is_urgent(metric, value) is urgent


def test_urgent_bands_only_name_known_metrics() -> None:
    assert set(URGENT_BANDS) <= set(METRICS)


def test_unknown_device_is_dead_lettered(pipeline: Pipeline, gw: Any) -> None:
    result = pipeline.process(note("A4:C1:38:00:00:99", "2a5e", gw.plx_spot_check(97, 72)))
    assert not result.drafts and result.device is None
    [dead] = result.dead_letters
    assert "unknown device" in dead.reason and dead.raw_hex == gw.plx_spot_check(97, 72).hex()


def test_wrong_source_truncated_frame_and_implausible_value(pipeline: Pipeline, gw: Any) -> None:
    wrong = pipeline.process(note(OX, "bthome", b"\x40"))
    assert "registered as 'gatt'" in wrong.dead_letters[0].reason
    truncated = pipeline.process(note(OX, "2a5e", b"\x00\x61"))
    assert not truncated.drafts and "0x2A5E" in truncated.dead_letters[0].reason
    assert truncated.dead_letters[0].device_id == "ox-1" and truncated.dead_letters[0].raw_hex == "0061"
    implausible = pipeline.process(note(OX, "2a5e", gw.plx_spot_check(30, 72)))
    assert [d.metric for d in implausible.drafts] == [Metric.PULSE_RATE], "the good half of the frame is kept"
    [dead] = implausible.dead_letters
    assert "plausible" in dead.reason and dead.detail == {"metric": "spo2", "value": 30.0}


# ------------------------------------------------------------------------------------------------------------
# Readings the device distrusts: passed on with their flags, never dropped, never clean
# ------------------------------------------------------------------------------------------------------------
QUESTIONABLE_BIT, INVALID_BIT = 1 << 14, 1 << 15  # PLX Measurement Status
SENSOR_DISCONNECTED_BIT = 1 << 15  # PLX Device and Sensor Status


def _flagged(result: Any) -> dict[Metric, tuple[float, set[str], bool]]:
    assert not result.dead_letters
    for draft in result.drafts:
        Reading(seq=1, **{k: v for k, v in vars(draft).items() if k != "urgent"})  # valid on the wire
    return {d.metric: (d.value, {f.value for f in d.flags}, d.urgent) for d in result.drafts}


@pytest.mark.parametrize(("frame", "flag"), [
    (encode_plx_spot_check(86, 72, measurement_status=QUESTIONABLE_BIT), "questionable"),
    (encode_plx_spot_check(86, 72, measurement_status=INVALID_BIT), "invalid"),
    (encode_plx_spot_check(86, 72, device_and_sensor_status=SENSOR_DISCONNECTED_BIT), "sensor_fault"),
])
def test_distrusted_spot_check_is_a_flagged_reading(pipeline: Pipeline, frame: bytes, flag: str) -> None:
    readings = _flagged(pipeline.process(note(OX, "2a5e", frame)))
    # SpO2 86 would be urgent if clean; flagged, it is stored and set aside by the scorer, not hurried
    assert readings == {Metric.SPO2: (86, {flag}, False), Metric.PULSE_RATE: (72, {flag}, False)}
    assert not any(d.trusted for d in pipeline.process(note(OX, "2a5e", frame)).drafts)


def test_distrusted_continuous_measurement_is_a_flagged_reading(pipeline: Pipeline) -> None:
    frame = encode_plx_continuous(95, 70, measurement_status=QUESTIONABLE_BIT,
                                  device_and_sensor_status=SENSOR_DISCONNECTED_BIT)
    readings = _flagged(pipeline.process(note(OX, "2a5f", frame)))
    both = {"questionable", "sensor_fault"}
    assert readings == {Metric.SPO2: (95, both, False), Metric.PULSE_RATE: (70, both, False)}


def test_conformance_vector_with_every_distrust_flag_is_stored_flagged(pipeline: Pipeline) -> None:
    case = next(c for c in load_conformance("gatt_cases.json")["cases"] if c["bytes_hex"] ==
                "0facf3bef5e8070b1d170839204022000066e3")  # questionable, sensor fault and low perfusion
    result = pipeline.process(note(OX, "2a5e", bytes.fromhex(case["bytes_hex"])))
    flags = {"low_perfusion", "questionable", "sensor_fault"}
    # its 2024 device clock is far from AT: the receive time is used, and said so
    assert _flagged(result) == {Metric.SPO2: (94, flags | {"clock_skewed"}, False),
                                Metric.PULSE_RATE: (147, flags | {"clock_skewed"}, False)}


def test_flagged_value_outside_the_plausible_range_is_a_dead_letter_with_its_flags(pipeline: Pipeline) -> None:
    result = pipeline.process(note(OX, "2a5e", encode_plx_spot_check(0, 0, measurement_status=INVALID_BIT)))
    assert not result.drafts and len(result.dead_letters) == 2  # kept, counted, never silent
    assert all(d.detail["flags"] == ["invalid"] for d in result.dead_letters)


def test_proprietary_probe_off_and_heart_rate_without_contact_are_flagged(pipeline: Pipeline) -> None:
    berrymed = _flagged(pipeline.process(note(CHEAP, "berrymed", encode_berrymed(97, 70, no_finger=True))))
    assert berrymed == {Metric.SPO2: (97, {"sensor_fault"}, False), Metric.PULSE_RATE: (70, {"sensor_fault"}, False)}
    strap = _flagged(pipeline.process(note(STRAP, "2a37", encode_heart_rate(44, sensor_contact=False))))
    assert strap == {Metric.PULSE_RATE: (44, {"sensor_fault"}, False)}


def test_battery_beside_a_flagged_vital_is_not_flagged(pipeline: Pipeline) -> None:
    case = next(c for c in load_conformance("oximeter_proprietary_cases.json")["cases"]
                if c["id"] == "o2ring-offfinger")
    readings = _flagged(pipeline.process(note(RING, "o2ring", bytes.fromhex(case["bytes_hex"]))))
    assert readings == {Metric.BATTERY: (90, set(), False)}  # ring not worn: no vitals, battery still true
    worn = bytes.fromhex("0000000000000061480000000000550003060100")
    worn_off = worn[:18] + b"\x00" + worn[19:]  # the same values with the ring reported off the finger
    readings = _flagged(pipeline.process(note(RING, "o2ring", worn_off)))
    assert readings == {Metric.SPO2: (97, {"sensor_fault"}, False), Metric.PULSE_RATE: (72, {"sensor_fault"}, False),
                        Metric.BATTERY: (85, set(), False)}


def test_naive_receive_time_is_dead_lettered_not_raised(pipeline: Pipeline, gw: Any) -> None:
    result = pipeline.process(note(OX, "2a5e", gw.plx_spot_check(97, 72), at=AT.replace(tzinfo=None)))
    assert not result.drafts and "timezone" in result.dead_letters[0].reason


def test_bthome_readings_and_duplicate_packets(pipeline: Pipeline, gw: Any) -> None:
    frame = gw.bthome(7, battery=88, temp_hundredths=2150, motion=1)
    result = pipeline.process(note(PIR, "bthome", frame))
    values = {d.metric: d.value for d in result.drafts}
    assert values == {Metric.BATTERY: 88, Metric.ROOM_TEMPERATURE: 21.5, Metric.MOTION: 1}
    assert all(d.measured_at == AT and d.flags == () for d in result.drafts), "BTHome has no clock: no flag"
    again = pipeline.process(note(PIR, "bthome", frame, at=AT + timedelta(seconds=1)))
    assert not again.drafts and not again.dead_letters and again.duplicates == 1
    later = pipeline.process(note(PIR, "bthome", gw.bthome(8, motion=0), at=AT + timedelta(seconds=2)))
    assert [(d.metric, d.value) for d in later.drafts] == [(Metric.MOTION, 0)]


def test_encrypted_bthome_without_key_is_dead_lettered(pipeline: Pipeline) -> None:
    result = pipeline.process(note(PIR, "bthome", bytes([0x41]) + bytes(16)))
    assert not result.drafts and result.dead_letters


def test_registry_swap_applies_at_once(pipeline: Pipeline, gw: Any) -> None:
    pipeline.set_registry(DeviceRegistry())
    assert pipeline.process(note(OX, "2a5e", gw.plx_spot_check(97, 72))).dead_letters


# ------------------------------------------------------------------------------------------------------------
# Proprietary stream (BerryMed): chunks that do not line up with frames, from the external vectors
# ------------------------------------------------------------------------------------------------------------
def _berrymed_cases() -> list[Any]:
    path = CONFORMANCE_DIR / "oximeter_proprietary_cases.json"
    if not path.exists():
        return [
            pytest.param(None, marks=pytest.mark.skip(reason=f"conformance vectors not present at {path}"))
        ]
    cases = json.loads(path.read_text())["cases"]
    picked = [c for c in cases if "BerryMed" in c["device_family"] and "readings" in c["expected"]]
    return [pytest.param(c, id=c["id"]) for c in picked]


@pytest.mark.parametrize("case", _berrymed_cases())
def test_berrymed_stream_through_pipeline(pipeline: Pipeline, case: dict[str, Any]) -> None:
    drafts = []
    for chunk in case["bytes_hex"].split("|"):
        drafts.extend(pipeline.process(note(CHEAP, "berrymed", bytes.fromhex(chunk))).drafts)
    expected = [r["spo2"] for r in case["expected"]["readings"] if r.get("spo2") is not None]
    assert [d.value for d in drafts if d.metric is Metric.SPO2] == expected
