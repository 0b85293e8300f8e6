from __future__ import annotations

from typing import Any

import pytest
from conformance import conformance_params
from frame_fuzz import decoded_or_refused
from hypothesis import given
from hypothesis import strategies as st

from carewatch.firmware_sim.frames import encode_pc60fw
from carewatch.gateway.frames import FrameError
from carewatch.gateway.oximeters import (
    CONTEC_BLE_COMMANDS,
    FORMATS,
    OximeterStream,
    contec_ble_command,
    crc8_poly07,
    decode_oximeter,
    o2ring_s_command,
)
from carewatch.wire import Metric, QualityFlag

FAMILY_FORMAT = {
    "BerryMed": "berrymed",
    "Contec CMS50D+": "contec",
    "JKS50F": "jks50f",
    "EMAY": "emay",
    "Viatom/Wellue PC-60FW": "pc60fw",
    "Viatom/Wellue O2Ring legacy": "o2ring",
    "Wellue O2Ring-S": "o2ring_s",
    "Jumper": "jumper",
}
# The corpus uses each source project's own key names; this maps them to ours (field or detail).
KEY_MAP = {
    "pulse": ("fields", "pulse_rate"),
    "heart_rate": ("fields", "pulse_rate"),
    "pulseRate": ("details", "pulse_rate_raw"),  # CMS50D+ raw value; 255 is our "no value" marker
    "bloodSpO2": ("details", "spo2_raw"),
    "battery": ("fields", "battery_pct"),
    "signalStrength": ("details", "signal_strength"),
    "fingerOut": ("details", "finger_out"),
    "droppingSpO2": ("details", "dropping_spo2"),
    "probeError": ("details", "probe_error"),
    "pulseWaveform": ("details", "pulse_waveform"),
    "perfusion_index_o2ring": ("details", "perfusion_index_raw"),
}
FIELD_KEYS = {"spo2", "pulse_rate", "perfusion_index"}


def _fmt(case: dict[str, Any]) -> str:
    return next(fmt for prefix, fmt in FAMILY_FORMAT.items() if case["device_family"].startswith(prefix))


def _cases(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["id"], c) for c in doc["cases"]]


def _lookup(fmt: str, frame: Any, key: str) -> Any:
    if fmt == "o2ring" and key == "perfusion_index":
        key = "perfusion_index_o2ring"
    if key in KEY_MAP:
        where, name = KEY_MAP[key]
        return getattr(frame, where)[name]
    return frame.fields[key] if key in FIELD_KEYS else frame.details[key]


def _check_reading(fmt: str, frame: Any, expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        if key in ("note", "byte3", "of"):  # prose, or checked by the caller
            continue
        assert _lookup(fmt, frame, key) == value, key
    # a flagged reading's vitals travel with its flags, never as clean values
    if not frame.trusted:
        assert all(frame.flags_for(m) == frame.flags for m, _ in frame.measurements
                   if m in (Metric.SPO2, Metric.PULSE_RATE))


@pytest.mark.parametrize("case", conformance_params("oximeter_proprietary_cases.json", _cases))
def test_conformance(case: dict[str, Any]) -> None:
    fmt, expected = _fmt(case), case["expected"]
    if case["id"] == "emay-commands":
        for name, payload in CONTEC_BLE_COMMANDS.items():
            assert contec_ble_command(*payload).hex() == expected[name]
        return
    if case["id"] == "o2rings-crc":
        frame = bytes.fromhex(case["bytes_hex"])
        assert crc8_poly07(frame[:-1]) == int(expected["crc8_poly07"], 16)
        assert o2ring_s_command(0xE1, 0x02) == frame
        return
    if case["id"] == "pc60fw-wave":  # published without sync and CRC: rebuild the frame around it
        payload = bytes.fromhex(case["payload_as_published"])
        frame = decode_oximeter(fmt, encode_pc60fw(payload[2], payload[3:], frame_type=payload[0]))
        assert frame.details["func"] == expected["func"] and frame.details["waveform"] == expected["waveform"]
        return
    chunks = [bytes.fromhex(part) for part in case["bytes_hex"].split("|")]
    if "readings_after_first_chunk" in expected:
        stream = OximeterStream(fmt)
        assert len(stream.feed(chunks[0])) == expected["readings_after_first_chunk"]
        readings = stream.feed(chunks[1])
        assert len(readings) == len(expected["readings_after_second_chunk"])
        for frame, want in zip(readings, expected["readings_after_second_chunk"], strict=True):
            _check_reading(fmt, frame, want)
        return
    if "readings" in expected:
        readings = OximeterStream(fmt).feed(chunks[0])
        assert len(readings) == len(expected["readings"])
        for frame, want in zip(readings, expected["readings"], strict=True):
            _check_reading(fmt, frame, want)
        return
    if expected.get("reading", "") is None or expected.get("measurement", "") is None:
        with pytest.raises(FrameError, match=fmt):
            decode_oximeter(fmt, chunks[0])
        return
    frame = decode_oximeter(fmt, chunks[0])
    if "finger_present" in expected:
        assert frame.details["finger_present"] == expected["finger_present"]
        assert (QualityFlag.SENSOR_FAULT in frame.flags) == (not expected["finger_present"])
    if "recorded" in expected:
        assert frame.details["recorded"] == expected["recorded"]
    if "battery_level" in expected:
        assert frame.details["battery_level"] == expected["battery_level"]
        assert frame.fields["battery_pct"] == round(100 * expected["battery_level"] / expected["of"])
        return
    if "byte3" in expected:
        assert frame.details["perfusion_index_raw"] == int(expected["byte3"].split("(")[1].split(")")[0])
    _check_reading(fmt, frame, {k: v for k, v in expected.items() if k not in ("finger_present", "battery_level")})


# --- behaviour beyond the corpus -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "hex_frame", "flag"),
    [
        ("berrymed", "a032054862", QualityFlag.SENSOR_FAULT),  # probe unplugged
        ("berrymed", "8732154862", QualityFlag.SENSOR_FAULT),  # no finger
        ("berrymed", "8732254862", QualityFlag.INVALID),  # searching
        ("contec", "9000004862", QualityFlag.SENSOR_FAULT),  # finger out
        ("contec", "8000204862", QualityFlag.INVALID),  # searching
    ],
)
def test_probe_off_and_searching_are_never_clean(fmt: str, hex_frame: str, flag: QualityFlag) -> None:
    frame = decode_oximeter(fmt, bytes.fromhex(hex_frame))
    assert flag in frame.flags and not frame.trusted
    assert frame.fields["spo2"] == 98  # passed on with the flag, never as a clean reading
    assert frame.measurements == ((Metric.SPO2, 98.0), (Metric.PULSE_RATE, 72.0))


def test_stream_resyncs_after_cut_packet_and_reports_garbage() -> None:
    stream = OximeterStream("berrymed")
    frames = stream.feed(bytes.fromhex("8732" + "8828044b61" + "87320548"))
    assert [f.fields["spo2"] for f in frames] == [97]
    assert stream.garbage_bytes == 2
    assert [f.fields["spo2"] for f in stream.feed(b"\x62")] == [98]


def test_stream_keeps_rejected_frames_for_dead_letters() -> None:
    stream = OximeterStream("emay")
    good = bytes.fromhex("eb01053e627f0010")
    frames = stream.feed(bytes.fromhex("eb01053e627f00ff") + good[:3])
    assert frames == [] and stream.rejected[0][1].startswith("emay: checksum mismatch")
    assert [f.fields["pulse_rate"] for f in stream.feed(good[3:])] == [62]


def test_stream_splits_pc60fw_frames_across_notifications() -> None:
    data = bytes.fromhex("aa550f0801603e005000c008") + bytes.fromhex("aa55f0030303f6")
    stream = OximeterStream("pc60fw")
    frames = [f for i in range(0, len(data), 5) for f in stream.feed(data[i : i + 5])]
    assert [f.fields for f in frames] == [{"spo2": 96, "pulse_rate": 62, "perfusion_index": 8.0}, {"battery_pct": 100}]


def test_unknown_format() -> None:
    with pytest.raises(FrameError, match="unknown oximeter format"):
        decode_oximeter("nonin", b"")
    with pytest.raises(ValueError, match="unknown oximeter format"):
        OximeterStream("nonin")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@given(data=st.binary(max_size=80))
def test_fuzz_only_frame_errors_escape(fmt: str, data: bytes) -> None:
    frame = decoded_or_refused(lambda: decode_oximeter(fmt, data), error_prefix=fmt)
    if frame is not None:
        assert all(frame.flags_for(m) == frame.flags for m, _ in frame.measurements if m is Metric.SPO2)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@given(chunks=st.lists(st.binary(max_size=30), max_size=8))
def test_fuzz_stream_never_raises(fmt: str, chunks: list[bytes]) -> None:
    stream = OximeterStream(fmt)
    for chunk in chunks:
        stream.feed(chunk)
