from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from carewatch.firmware_sim.frames import (
    encode_blood_pressure,
    encode_bthome,
    encode_heart_rate,
    encode_plx_continuous,
    encode_temperature,
    encode_weight,
)
from carewatch.gateway.decode_cli import EXIT_BAD_FRAME, EXIT_OK, EXIT_USAGE, run_decode
from carewatch.gateway.ieee11073 import Special


def _run(char: str, hex_payload: str, **kwargs: str | None) -> tuple[int, dict | None, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_decode(char, hex_payload, out=out, err=err, **kwargs)
    text = out.getvalue()
    if code == EXIT_OK:
        assert text.count("\n") == 1  # exactly one JSON object
    return code, json.loads(text) if text else None, err.getvalue()


def test_plx_spot_check_keys() -> None:
    code, doc, _ = _run("2a5e", "0facf3bef5e8070b1d170839204022000066e3")
    assert code == EXIT_OK
    assert doc == {
        "spo2": 94.0, "pulse_rate": 147.0, "timestamp": "2024-11-29T23:08:57", "pulse_amplitude_index": 8.7,
        "null_reasons": {}, "flags": ["low_perfusion", "questionable", "sensor_fault"],
    }


def test_plx_continuous_keys_and_special_value() -> None:
    code, doc, _ = _run("0x2A5F", encode_plx_continuous(Special.NAN, 72, fast=(97, 75), slow=(96, 70)).hex())
    assert code == EXIT_OK
    assert doc == {
        "spo2": None, "pulse_rate": 72.0, "spo2_fast": 97.0, "pulse_rate_fast": 75.0, "spo2_slow": 96.0,
        "pulse_rate_slow": 70.0, "pulse_amplitude_index": None, "null_reasons": {"spo2": "NaN"}, "flags": [],
    }


def test_temperature_blood_pressure_heart_rate_weight_keys() -> None:
    _, doc, _ = _run("2a1c", encode_temperature(37.25, temp_type=3).hex())
    assert doc == {"temperature_c": 37.25, "timestamp": None, "temperature_type": "ear", "null_reasons": {},
                   "flags": []}
    _, doc, _ = _run("2a35", encode_blood_pressure(120, 80, 93, pulse_rate=61, user_id=2).hex())
    assert {k: doc[k] for k in ("systolic_mmhg", "diastolic_mmhg", "mean_arterial_pressure_mmhg", "pulse_rate",
                                "timestamp", "user_id")} == {
        "systolic_mmhg": 120.0, "diastolic_mmhg": 80.0, "mean_arterial_pressure_mmhg": 93.0, "pulse_rate": 61.0,
        "timestamp": None, "user_id": 2}
    _, doc, _ = _run("2a37", encode_heart_rate(64, rr_intervals_ms=[1000.0], energy_expended_kj=7,
                                               sensor_contact=True).hex())
    assert doc == {"heart_rate": 64, "rr_intervals_ms": [1000.0], "energy_expended_kj": 7, "sensor_contact": True,
                   "null_reasons": {}, "flags": []}
    _, doc, _ = _run("2a9d", encode_weight(72.35).hex())
    assert doc == {"weight_kg": 72.35, "null_reasons": {}, "flags": []}


BP_KEYS = {"systolic_mmhg", "diastolic_mmhg", "mean_arterial_pressure_mmhg", "pulse_rate", "timestamp", "user_id"}


def test_intermediate_cuff_pressure_has_the_blood_pressure_keys() -> None:
    # as the spec sends it: the cuff pressure in the systolic field, NaN in the unused two
    code, doc, _ = _run("2a36", encode_blood_pressure(150, Special.NAN, Special.NAN, intermediate=True).hex())
    assert code == EXIT_OK
    assert doc == {"systolic_mmhg": 150.0, "diastolic_mmhg": None, "mean_arterial_pressure_mmhg": None,
                   "cuff_pressure_mmhg": 150.0, "timestamp": None, "pulse_rate": None, "user_id": None,
                   "null_reasons": {"diastolic_mmhg": "NaN", "mean_arterial_pressure_mmhg": "NaN"}, "flags": []}
    _, bp, _ = _run("2a35", encode_blood_pressure(120, 80, 93).hex())
    assert set(doc) >= BP_KEYS and set(bp) >= BP_KEYS  # one key set for both characteristics


def test_intermediate_cuff_pressure_conformance_vector_with_zero_unused_fields() -> None:
    # the Nordic vector: kPa, zeros (not NaN) in the unused fields, which are unused all the same
    code, doc, _ = _run("2a36", "156ff0000000003c001200")
    assert code == EXIT_OK
    assert doc["systolic_mmhg"] == doc["cuff_pressure_mmhg"] == 83.3  # 11.1 kPa
    assert (doc["diastolic_mmhg"], doc["mean_arterial_pressure_mmhg"], doc["pulse_rate"]) == (None, None, 60.0)
    assert doc["null_reasons"] == {"diastolic_mmhg": "unused", "mean_arterial_pressure_mmhg": "unused"}


def test_truncated_frame_exits_non_zero_with_reason() -> None:
    code, doc, err = _run("2a1c", "06b00e00fedc070c050b321b")
    assert code == EXIT_BAD_FRAME and doc is None
    assert "0x2A1C: frame is 12 bytes but flags 0x06 require at least 13" in err


@pytest.mark.parametrize(("char", "payload", "needle"), [
    ("2a99", "00", "unknown characteristic"),
    ("2a60", "a300", "unknown characteristic"),  # a configuration read, not a reading
    ("2a5e", "zz", "not hex"),
])
def test_usage_errors(char: str, payload: str, needle: str) -> None:
    code, _, err = _run(char, payload)
    assert code == EXIT_USAGE and needle in err


def test_bthome_plain_and_encrypted() -> None:
    mac, key = "54:48:E6:8F:80:A5", "231d39c1d7cc1ab1aee224cd096db932"
    code, doc, _ = _run("bthome", "400009015d025d0903b718", mac=mac)
    assert code == EXIT_OK
    assert doc == {"packet_id": 9, "battery_pct": 93, "temperature_c": 23.97, "humidity_pct": 63.27}
    sealed = encode_bthome({"door_open": True, "occupancy": False, "illuminance_lux": 120.5}, packet_id=4,
                           bindkey=bytes.fromhex(key), mac=mac, counter=9).hex()
    code, doc, _ = _run("bthome", sealed, mac=mac, key=key)
    assert doc == {"packet_id": 4, "door_open": True, "occupancy": False, "illuminance_lux": 120.5}
    code, doc, err = _run("bthome", sealed, mac=mac)
    assert code == EXIT_BAD_FRAME and "no bind key" in err
    code, _, err = _run("bthome", sealed, mac=mac, key="00" * 16)
    assert code == EXIT_BAD_FRAME and "wrong bind key" in err


def test_bthome_argument_errors() -> None:
    assert _run("bthome", "400009")[0] == EXIT_USAGE  # no --mac
    assert _run("bthome", "400009", mac="nope")[0] == EXIT_USAGE
    assert _run("bthome", "400009", mac="54:48:E6:8F:80:A5", key="abcd")[0] == EXIT_USAGE


def test_proprietary_oximeters() -> None:
    code, doc, _ = _run("berrymed", "8732054862")
    assert code == EXIT_OK and doc == {"spo2": 98, "pulse_rate": 72, "null_reasons": {}, "flags": []}
    code, doc, _ = _run("contec", "9000004862")
    assert doc["flags"] == ["sensor_fault"]
    code, _, err = _run("berrymed", "0732054862")
    assert code == EXIT_BAD_FRAME and "sync bit" in err


def test_the_cli_itself_prints_the_blood_pressure_keys_for_2a36() -> None:
    frame = "1e0400000000000000041114293b3c00012700"  # the Nordic conformance vector, every field present
    run = subprocess.run([sys.executable, "-m", "carewatch", "decode", "2a36", frame],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert set(doc) >= BP_KEYS and doc["systolic_mmhg"] == 4.0 and doc["user_id"] == 1
