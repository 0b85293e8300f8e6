from __future__ import annotations

import contextlib
import re
from datetime import datetime
from typing import Any

import pytest
from conformance import conformance_params
from frame_fuzz import decoded_or_refused
from hypothesis import given
from hypothesis import strategies as st

from carewatch.firmware_sim.frames import encode_plx_spot_check, encode_sfloat
from carewatch.gateway.frames import FrameError
from carewatch.gateway.gatt import (
    DECODERS,
    KPA_TO_MMHG,
    PLX_FEATURES,
    decode_characteristic,
    normalise_uuid,
)
from carewatch.gateway.ieee11073 import Special
from carewatch.wire import UNTRUSTED_FLAGS, Metric, QualityFlag

SECTION_UUID = {
    "temperature_measurement_0x2A1C": "2a1c",
    "temperature_type_0x2A1D": "2a1d",
    "heart_rate_measurement_0x2A37": "2a37",
    "blood_pressure_measurement_0x2A35": "2a35",
    "intermediate_cuff_pressure_0x2A36": "2a36",
    "plx_spot_check_0x2A5E": "2a5e",
    "plx_continuous_0x2A5F": "2a5f",
    "plx_features_0x2A60": "2a60",
}


def _characteristic_cases(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["id"], c) for c in doc["cases"] if c["section"] in SECTION_UUID]


def _mmhg(value: float | None, unit: str) -> float | None:
    if value is None:
        return None
    return round(value * KPA_TO_MMHG, 1) if unit == "kPa" else value


def _contact(text: str) -> bool | None:
    """The corpus spells sensor contact three ways ('detected (true)', 'DETECTED', 'not_supported (null)')."""
    key = text.lower()
    if key.startswith("not_supported"):
        return None
    if key.startswith(("not_detected", "supported, not detected")):
        return False
    assert key.startswith("detected"), text
    return True


def _check_timestamp(frame: Any, expected: Any) -> None:
    if expected is None:
        assert frame.fields.get("timestamp") is None
    elif isinstance(expected, str):
        assert frame.to_json_dict()["timestamp"] == expected
        assert frame.device_time == datetime.fromisoformat(expected)
    else:  # year "0 = unknown": the clock was never set
        assert frame.clock_not_set and frame.device_time is None and frame.fields["timestamp"] is None
        assert QualityFlag.CLOCK_NOT_SET in frame.flags


@pytest.mark.parametrize("case", conformance_params("gatt_cases.json", _characteristic_cases))
def test_conformance_characteristics(case: dict[str, Any]) -> None:
    uuid = SECTION_UUID[case["section"]]
    data = bytes.fromhex(case["bytes_hex"])
    expected = case["expected"]
    if expected.get("valid") is False:
        with pytest.raises(FrameError, match=r"0x2A"):
            decode_characteristic(uuid, data)
        return
    frame = decode_characteristic(uuid, data)
    fields, details = frame.fields, frame.details
    if uuid == "2a1c":
        assert fields["temperature_c"] == expected["temperature"]
        assert details["unit"] == expected["unit"]
        assert fields["temperature_type"] == expected["temperature_type_name"].lower()
        assert details["temperature_type_code"] == expected["temperature_type"]
        _check_timestamp(frame, expected["timestamp"])
        assert frame.measurements == ((Metric.TEMPERATURE, expected["temperature"]),)
    elif uuid == "2a1d":
        assert fields["temperature_type"] == expected["name"].lower()
    elif uuid == "2a37":
        assert fields["heart_rate"] == expected["heart_rate"]
        if "sensor_contact" in expected:
            assert fields["sensor_contact"] == _contact(expected["sensor_contact"])
        if "energy_expended" in expected:
            assert fields["energy_expended_kj"] == expected["energy_expended"]
        if expected.get("rr_intervals_raw") is not None:
            assert details["rr_intervals_raw"] == expected["rr_intervals_raw"]
            assert fields["rr_intervals_ms"] == [round(r * 1000 / 1024, 1) for r in expected["rr_intervals_raw"]]
        if "rr_intervals_s" in expected:
            assert fields["rr_intervals_ms"] == [s * 1000 for s in expected["rr_intervals_s"]]
        # no sensor contact: still a reading, flagged sensor_fault (never a clean value)
        assert frame.measurements == ((Metric.PULSE_RATE, expected["heart_rate"]),)
        assert frame.trusted == (fields["sensor_contact"] is not False)
    elif uuid == "2a35":
        unit = expected["unit"]
        assert details["unit"] == unit
        sent = [expected["systolic"], expected["diastolic"], expected["mean_arterial_pressure"]]
        assert details["pressures_as_sent"] == sent
        assert [fields["systolic_mmhg"], fields["diastolic_mmhg"], fields["mean_arterial_pressure_mmhg"]] == [
            _mmhg(v, unit) for v in sent
        ]
        assert fields["pulse_rate"] == expected["pulse_rate"]
        assert fields["user_id"] == expected["user_id"]
        _check_timestamp(frame, expected["timestamp"])
        status = expected["status"]
        if status is None:
            assert "measurement_status" not in details
        else:
            bits = details["measurement_status"]["bits"]
            for name in ("body_movement_detected", "cuff_too_loose", "irregular_pulse_detected",
                         "improper_measurement_position"):
                assert (name in bits) == status[name]
            pr_range = details["measurement_status"]["pulse_rate_range"]
            assert (pr_range == "within_range") == status["pulse_rate_in_range"]
            assert (pr_range == "exceeds_upper_limit") == status["pulse_rate_exceeds_upper_limit"]
            assert (pr_range == "below_lower_limit") == status["pulse_rate_below_lower_limit"]
            # a loose cuff or bad posture makes the reading questionable: not a clean value
            assert (QualityFlag.QUESTIONABLE in frame.flags) == (status["cuff_too_loose"] or
                                                                 status["improper_measurement_position"])
        # flagged or not, every pressure the cuff sent is passed on; the flags say whether to trust it
        assert [m for m, _ in frame.measurements] == [
            m for m, v in zip((Metric.SYSTOLIC_BP, Metric.DIASTOLIC_BP, Metric.MEAN_ARTERIAL_PRESSURE,
                               Metric.PULSE_RATE),
                              (fields["systolic_mmhg"], fields["diastolic_mmhg"],
                               fields["mean_arterial_pressure_mmhg"], fields["pulse_rate"]), strict=True)
            if v is not None]
    elif uuid == "2a36":
        unit = expected["unit"]
        assert details["unit"] == unit
        assert details["pressures_as_sent"] == [expected["cuff_pressure"]]
        # the spec carries the current cuff pressure in the systolic field; diastolic and MAP are unused
        assert fields["systolic_mmhg"] == fields["cuff_pressure_mmhg"] == _mmhg(expected["cuff_pressure"], unit)
        assert fields["diastolic_mmhg"] is None and fields["mean_arterial_pressure_mmhg"] is None
        assert frame.null_reasons["diastolic_mmhg"] == frame.null_reasons["mean_arterial_pressure_mmhg"] == "unused"
        assert fields["pulse_rate"] == expected.get("pulse_rate")
        assert fields["user_id"] == expected.get("user_id")
        assert details.get("measurement_status", {}).get("raw") == expected.get("status_raw")
        _check_timestamp(frame, expected.get("timestamp"))
        assert frame.measurements == ()  # cuff inflation progress is not a reading
    elif uuid in ("2a5e", "2a5f"):
        keys = ["spo2", "pulse_rate", "spo2_fast", "pulse_rate_fast", "spo2_slow", "pulse_rate_slow",
                "pulse_amplitude_index"]
        for key in keys:
            if key in expected:
                assert fields[key] == expected[key], key
        if "timestamp" in expected:
            _check_timestamp(frame, expected["timestamp"])
        for name in ("measurement_status", "device_and_sensor_status"):
            if name in expected:
                want = expected[name]
                raw = int(want["raw"], 16) if isinstance(want, dict) else want
                assert details[name]["raw"] == raw
        if "device_clock_not_set" in expected:
            assert details["device_clock_not_set"] == expected["device_clock_not_set"]
        # trusted or not, the values travel; a distrusted frame carries its flags (the scorer sets it aside)
        assert frame.measurements == tuple((m, fields[k]) for m, k in ((Metric.SPO2, "spo2"),
                                                                       (Metric.PULSE_RATE, "pulse_rate"))
                                           if fields[k] is not None)
    elif uuid == "2a60":
        for name in ("supported_features", "measurement_status_support", "device_and_sensor_status_support"):
            assert fields[name]["raw"] == int(expected[name]["raw"], 16)
        want_bits = {int(m) for m in re.findall(r"\((\d+)\)", " ".join(expected["supported_features"]["bits"]))}
        got_bits = {bit for bit, name in PLX_FEATURES.items() if name in fields["supported_features"]["bits"]}
        assert got_bits == want_bits


def _nonconformant_plx(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    vectors = doc["known_nonconformant_vectors"]["vectors"]
    return [(f"plx-{i}", (frame, claim, truth))
            for v in vectors if v["type"].startswith("PLX")
            for i, (frame, claim, truth) in enumerate(zip(v["frames_hex"], v["bluetooth_sig_python_claims"],
                                                          v["ieee11073_value"], strict=True))]


@pytest.mark.parametrize("vector", conformance_params("gatt_cases.json", _nonconformant_plx))
def test_biased_exponent_plx_frames_are_not_reproduced(vector: tuple[str, dict, dict]) -> None:
    frame_hex, claim, truth = vector
    frame = decode_characteristic("2a5e", bytes.fromhex(frame_hex))
    for key in ("spo2", "pulse_rate"):
        assert frame.fields[key] != pytest.approx(claim[key])
        assert frame.fields[key] == pytest.approx(truth[key], rel=1e-9)
    if "measurement_status" in truth:
        assert frame.details["measurement_status"]["raw"] == truth["measurement_status"]


# --- behaviour beyond the corpus -----------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["2a5e", "0x2A5E", "2A5E", "00002a5e-0000-1000-8000-00805f9b34fb"])
def test_uuid_spellings(spelling: str) -> None:
    assert normalise_uuid(spelling) == "2a5e"
    assert decode_characteristic(spelling, bytes.fromhex("0061004800")).fields["spo2"] == 97


def test_unknown_characteristic_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="no decoder for characteristic 0x2A00"):
        decode_characteristic("2a00", b"\x00")


def test_error_names_flags_and_lengths() -> None:
    with pytest.raises(FrameError, match=r"0x2A5E: frame is 3 bytes but flags 0x01 require at least 12"):
        decode_characteristic("2a5e", bytes.fromhex("016100"))


def test_special_value_gives_null_with_reason() -> None:
    frame = decode_characteristic("2a5e", bytes([0]) + encode_sfloat(Special.NAN) + encode_sfloat(72))
    assert frame.fields["spo2"] is None and frame.null_reasons == {"spo2": "NaN"}
    assert frame.measurements == ((Metric.PULSE_RATE, 72.0),)


def test_device_clock_not_set_flag_discards_timestamp() -> None:
    data = encode_plx_spot_check(97, 72, timestamp=datetime(2024, 1, 2, 3, 4, 5), device_clock_not_set=True)
    frame = decode_characteristic("2a5e", data)
    assert frame.clock_not_set and frame.device_time is None and frame.fields["timestamp"] is None
    assert frame.null_reasons["timestamp"] == "clock_not_set"


@pytest.mark.parametrize(("status_bit", "flag"), [(13, QualityFlag.INVALID), (14, QualityFlag.QUESTIONABLE),
                                                   (15, QualityFlag.INVALID)])
def test_plx_untrusted_status_passes_values_on_flagged(status_bit: int, flag: QualityFlag) -> None:
    frame = decode_characteristic("2a5e", encode_plx_spot_check(97, 72, measurement_status=1 << status_bit))
    assert frame.fields["spo2"] == 97 and not frame.trusted and flag in frame.flags
    assert frame.measurements == ((Metric.SPO2, 97.0), (Metric.PULSE_RATE, 72.0))
    assert frame.flags_for(Metric.SPO2) == frame.flags


def test_plx_early_estimate_and_low_perfusion_are_flags_on_usable_values() -> None:
    frame = decode_characteristic(
        "2a5e", encode_plx_spot_check(97, 72, measurement_status=1 << 6, device_and_sensor_status=1 << 5)
    )
    assert frame.flags == {QualityFlag.EARLY_ESTIMATE, QualityFlag.LOW_PERFUSION}
    assert frame.measurements == ((Metric.SPO2, 97.0), (Metric.PULSE_RATE, 72.0))


def test_fahrenheit_is_converted() -> None:
    frame = decode_characteristic("2a1c", bytes([0x01]) + (986 | (0xFF << 24)).to_bytes(4, "little"))
    assert frame.fields["temperature_c"] == 37.0 and frame.details["unit"] == "F"


def test_invalid_date_is_clock_not_set_not_an_error() -> None:
    data = bytes([0x02]) + (376 | (0xFF << 24)).to_bytes(4, "little") + bytes([0xE8, 0x07, 13, 1, 0, 0, 0])
    frame = decode_characteristic("2a1c", data)
    assert frame.clock_not_set and frame.fields["temperature_c"] == 37.6


@pytest.mark.parametrize("uuid", sorted(DECODERS))
@given(data=st.binary(max_size=40))
def test_fuzz_only_frame_errors_escape(uuid: str, data: bytes) -> None:
    frame = decoded_or_refused(lambda: decode_characteristic(uuid, data), json_default=str)  # always printable
    if frame is not None:
        for metric, _ in frame.measurements:  # a distrusted value never travels without its flags
            assert frame.trusted or frame.flags_for(metric) & UNTRUSTED_FLAGS


@given(data=st.binary(min_size=1, max_size=40).map(lambda b: bytes([b[0] | 0x1F]) + b[1:]))
def test_fuzz_all_optional_fields_set(data: bytes) -> None:
    for uuid in DECODERS:
        with contextlib.suppress(FrameError):  # anything else escaping fails the test
            decode_characteristic(uuid, data)


def test_battery_level_is_a_percent_and_prohibited_values_are_refused() -> None:
    frame = decode_characteristic("2a19", bytes([37]))
    assert frame.fields == {"battery_pct": 37.0} and frame.measurements == ((Metric.BATTERY, 37.0),)
    with pytest.raises(FrameError, match="above 100 %"):
        decode_characteristic("2a19", bytes([101]))
    with pytest.raises(FrameError, match="exactly 1"):
        decode_characteristic("2a19", bytes([50, 0]))
