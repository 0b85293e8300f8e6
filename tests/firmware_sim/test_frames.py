"""The simulator's encoders are the exact inverse of the gateway parsers (to the device's resolution)."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import pytest
from conformance import CONFORMANCE_DIR
from hypothesis import given
from hypothesis import strategies as st

from carewatch.firmware_sim.frames import (
    encode_berrymed,
    encode_blood_pressure,
    encode_bthome,
    encode_contec,
    encode_emay,
    encode_float,
    encode_heart_rate,
    encode_jks50f,
    encode_pc60fw_params,
    encode_plx_continuous,
    encode_plx_spot_check,
    encode_sfloat,
    encode_sfloat_auto,
    encode_temperature,
    encode_weight,
    pack_sfloat,
)
from carewatch.gateway.bthome import BTHomeDecoder
from carewatch.gateway.frames import FrameError
from carewatch.gateway.gatt import KPA_TO_MMHG, decode_characteristic
from carewatch.gateway.ieee11073 import Special, decode_float, decode_sfloat
from carewatch.gateway.oximeters import decode_oximeter

MAC = "54:48:E6:8F:80:A5"

timestamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda t: t.replace(microsecond=0))
spo2s, pulses = st.integers(50, 100), st.integers(30, 250)


@given(st.integers(-2045, 2045), st.integers(-8, 7))
def test_sfloat_round_trip(mantissa: int, exponent: int) -> None:
    value = decode_sfloat(pack_sfloat(mantissa, exponent))
    assert encode_sfloat(value, exponent) == pack_sfloat(mantissa, exponent)


@given(st.floats(-1e6, 1e6, allow_nan=False))
def test_sfloat_auto_keeps_the_finest_resolution_that_fits(value: float) -> None:
    decoded = decode_sfloat(encode_sfloat_auto(value))
    # the chosen mantissa is at least 205 (else a finer exponent would fit): error <= half a step of 1/205
    assert decoded == pytest.approx(value, rel=1 / 410, abs=1e-8)


@pytest.mark.parametrize("special", list(Special))
def test_specials_round_trip(special: Special) -> None:
    assert decode_sfloat(encode_sfloat(special)) is special
    assert decode_float(encode_float(special)) is special


def test_nan_and_inf_floats_encode_as_specials() -> None:
    assert decode_sfloat(encode_sfloat(float("nan"))) is Special.NAN
    assert decode_float(encode_float(float("-inf"))) is Special.NEG_INF


def test_nordic_encoder_rounding_vectors() -> None:
    path = CONFORMANCE_DIR / "gatt_cases.json"
    if not path.exists():
        pytest.skip(f"conformance vectors not present at {path}")
    case = next(c for c in json.loads(path.read_text())["cases"] if c["id"] == "sfloat-roundtrip-nordic")
    names = {"+Inf": float("inf"), "-Inf": float("-inf"), "NaN": float("nan")}
    specials = {"+Inf": Special.POS_INF, "-Inf": Special.NEG_INF, "NaN": Special.NAN}
    for given_value, expected in case["expected"]["encode_then_decode"]:
        decoded = decode_sfloat(encode_sfloat_auto(names.get(given_value, given_value)))
        assert decoded == specials.get(expected, expected)


@given(spo2s, pulses, st.none() | timestamps, st.none() | st.integers(0, 0xFFFF), st.none() | st.integers(0, 0xFFFF),
       st.none() | st.integers(0, 200).map(lambda x: x / 10))
def test_plx_spot_check_round_trip(spo2, pulse, timestamp, status, sensor_status, pai) -> None:
    frame = decode_characteristic("2a5e", encode_plx_spot_check(
        spo2, pulse, timestamp=timestamp, measurement_status=status, device_and_sensor_status=sensor_status,
        pulse_amplitude_index=pai))
    assert (frame.fields["spo2"], frame.fields["pulse_rate"]) == (spo2, pulse)
    assert frame.device_time == timestamp and frame.fields["pulse_amplitude_index"] == pai
    assert frame.details.get("measurement_status", {}).get("raw") == status
    assert frame.details.get("device_and_sensor_status", {}).get("raw") == sensor_status


@given(spo2s, pulses, st.none() | st.tuples(spo2s, pulses), st.none() | st.tuples(spo2s, pulses))
def test_plx_continuous_round_trip(spo2, pulse, fast, slow) -> None:
    fields = decode_characteristic("2a5f", encode_plx_continuous(spo2, pulse, fast=fast, slow=slow)).fields
    assert (fields["spo2"], fields["pulse_rate"]) == (spo2, pulse)
    assert (fields["spo2_fast"], fields["pulse_rate_fast"]) == (fast or (None, None))
    assert (fields["spo2_slow"], fields["pulse_rate_slow"]) == (slow or (None, None))


@given(st.integers(2500, 4500).map(lambda x: x / 100), st.booleans(), st.none() | timestamps,
       st.none() | st.integers(1, 9))
def test_temperature_round_trip(celsius, fahrenheit, timestamp, temp_type) -> None:
    frame = decode_characteristic("2a1c", encode_temperature(celsius, fahrenheit=fahrenheit, timestamp=timestamp,
                                                             temp_type=temp_type))
    assert frame.fields["temperature_c"] == pytest.approx(celsius, abs=0.01 if fahrenheit else 0)
    assert frame.device_time == timestamp
    assert frame.details.get("temperature_type_code") == temp_type


@given(st.integers(60, 250), st.integers(30, 150), st.integers(40, 200), st.booleans(), st.none() | pulses,
       st.none() | st.integers(0, 254))
def test_blood_pressure_round_trip(systolic, diastolic, mean, kpa, pulse, user) -> None:
    fields = decode_characteristic("2a35", encode_blood_pressure(systolic, diastolic, mean, kpa=kpa, pulse_rate=pulse,
                                                                 user_id=user)).fields
    tolerance = 0.05 * KPA_TO_MMHG + 0.05 if kpa else 0  # 0.1 kPa steps
    for key, value in (("systolic_mmhg", systolic), ("diastolic_mmhg", diastolic),
                       ("mean_arterial_pressure_mmhg", mean)):
        assert fields[key] == pytest.approx(value, abs=tolerance)
    assert (fields["pulse_rate"], fields["user_id"]) == (pulse, user)


@pytest.mark.parametrize(("uuid", "frame"), [
    ("2a1c", encode_temperature(36.8, with_timestamp=True, temp_type=6)),
    ("2a35", encode_blood_pressure(128, 74, 92, with_timestamp=True, pulse_rate=70)),
    ("2a5e", encode_plx_spot_check(96, 70, with_timestamp=True)),
])
def test_an_unset_clock_sends_the_unknown_date_and_the_gateway_flags_it(uuid: str, frame: bytes) -> None:
    """A Time Stamp of year 0 is the spec's "unknown": the values are kept, the time is not trusted."""
    from carewatch.wire import QualityFlag

    decoded = decode_characteristic(uuid, frame)
    assert decoded.clock_not_set and decoded.device_time is None
    assert QualityFlag.CLOCK_NOT_SET in decoded.flags and decoded.measurements


@given(st.integers(0, 400), st.lists(st.integers(300, 2000).map(float), max_size=5), st.none() | st.integers(0, 9999),
       st.sampled_from([None, True, False]))
def test_heart_rate_round_trip(bpm, rr, energy, contact) -> None:
    fields = decode_characteristic("2a37", encode_heart_rate(bpm, rr_intervals_ms=rr, energy_expended_kj=energy,
                                                             sensor_contact=contact)).fields
    assert (fields["heart_rate"], fields["energy_expended_kj"], fields["sensor_contact"]) == (bpm, energy, contact)
    assert fields["rr_intervals_ms"] == pytest.approx(rr, abs=1000 / 1024 / 2 + 0.05)


@given(st.integers(4000, 58000).map(lambda x: x * 5 / 1000), st.booleans())
def test_weight_round_trip(kg, imperial) -> None:  # up to 290 kg: imperial frames top out at 655.34 lb
    fields = decode_characteristic("2a9d", encode_weight(kg, imperial=imperial, bmi=24.2, height_m=1.75)).fields
    assert fields["weight_kg"] == pytest.approx(kg, abs=0.0023 if imperial else 1e-9)


def test_weight_beyond_the_field_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_weight(300, imperial=True)


def test_weight_unsuccessful() -> None:
    frame = decode_characteristic("2a9d", encode_weight(None))
    assert frame.fields["weight_kg"] is None and frame.null_reasons == {"weight_kg": "unsuccessful"}


@given(st.none() | spo2s, st.none() | pulses.filter(lambda p: p != 127))  # 127: JKS50F's no-value marker
def test_proprietary_round_trips(spo2, pulse) -> None:
    for fmt, data in (("berrymed", encode_berrymed(spo2, pulse)), ("contec", encode_contec(spo2, pulse)),
                      ("pc60fw", encode_pc60fw_params(spo2, pulse, 2.5)), ("jks50f", encode_jks50f(spo2, pulse, 2.5)),
                      ("emay", encode_emay(spo2, pulse if pulse is None or pulse <= 220 else 220))):
        fields = decode_oximeter(fmt, data).fields
        assert fields["spo2"] == spo2, fmt
        assert fields["pulse_rate"] == (pulse if fmt != "emay" or pulse is None else min(pulse, 220)), fmt


def test_jks50f_marker_value_is_refused() -> None:
    with pytest.raises(ValueError, match="marker"):
        encode_jks50f(97, 127)


def test_probe_flags_survive_the_round_trip() -> None:
    assert not decode_oximeter("berrymed", encode_berrymed(97, 70, no_finger=True)).trusted
    assert not decode_oximeter("contec", encode_contec(97, 70, finger_out=True)).trusted
    assert not decode_oximeter("jks50f", encode_jks50f(97, 70, finger_present=False)).trusted


bthome_values = st.fixed_dictionaries({}, optional={
    "battery_pct": st.integers(0, 100),
    "temperature_c": st.integers(-3000, 6000).map(lambda x: x / 100),
    "humidity_pct": st.integers(0, 10000).map(lambda x: x / 100),
    "illuminance_lux": st.integers(0, 10_000_000).map(lambda x: x / 100),
    "power_w": st.integers(0, 1_000_000).map(lambda x: x / 100),
    "motion": st.booleans(), "occupancy": st.booleans(), "door_open": st.booleans(),
    "window_open": st.booleans(), "power_on": st.booleans(),
    "button": st.sampled_from(["press", "double_press", "long_press"]),
})


@pytest.fixture(autouse=True)
def _quiet_library(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="bthome_ble")


@given(bthome_values, st.integers(0, 255), st.none() | st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1))
def test_bthome_round_trip(values, packet_id, key, counter) -> None:
    data = encode_bthome(values, packet_id=packet_id, bindkey=key, mac=MAC, counter=counter)
    frame = BTHomeDecoder({MAC: key} if key else {}).decode(MAC, data, at=1.0)
    assert frame.fields == {"packet_id": packet_id, **values}
    assert frame.details["encrypted"] is (key is not None)


@given(bthome_values.filter(bool), st.binary(min_size=16, max_size=16))
def test_encrypted_bthome_fails_clearly_without_the_key(values, key) -> None:
    data = encode_bthome(values, packet_id=1, bindkey=key, mac=MAC, counter=1)
    with pytest.raises(FrameError, match="no bind key"):
        BTHomeDecoder().decode(MAC, data, at=1.0)
    with pytest.raises(FrameError, match="wrong bind key"):
        BTHomeDecoder({MAC: bytes(b ^ 0xFF for b in key)}).decode(MAC, data, at=1.0)


def test_bthome_encryption_vectors_are_reproduced() -> None:
    path = CONFORMANCE_DIR / "bthome_cases.json"
    if not path.exists():
        pytest.skip(f"conformance vectors not present at {path}")
    expected = {"2101": ({"motion": True},), "02CA0903BF13": ({"temperature_c": 25.06, "humidity_pct": 50.55},)}
    for vector in json.loads(path.read_text())["encryption_vectors"]:
        (values,) = expected[vector["plaintext_objects_hex"]]
        data = encode_bthome(values, packet_id=None, bindkey=bytes.fromhex(vector["bindkey_hex"]), mac=vector["mac"],
                             counter=int.from_bytes(bytes.fromhex(vector["count_id_hex"]), "little"))
        assert data.hex() == vector["expected_service_data_hex"]
