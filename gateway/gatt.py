"""Bluetooth SIG health characteristics (PLX, thermometer, blood pressure, heart rate, weight scale).

Each decoder reads every optional field its flags announce, checks the frame is long enough *before*
reading (so the error names the flags that needed the bytes), maps device status bits to quality flags,
and passes values the device distrusts on *with* those flags (never as clean values). Layouts follow the
Bluetooth SIG GATT Specification Supplement; byte order is little-endian throughout.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from carewatch.gateway.frames import (
    NULL_CLOCK_NOT_SET,
    NULL_UNSUCCESSFUL,
    NULL_UNUSED,
    DecodedFrame,
    FrameError,
    present_values,
)
from carewatch.gateway.ieee11073 import Special, decode_float, decode_sfloat, float_parts
from carewatch.wire import Metric, QualityFlag

KPA_TO_MMHG = 7.500617
LB_TO_KG = 0.45359237
INCH_TO_M = 0.0254

TEMPERATURE_TYPES: dict[int, str] = {
    1: "armpit",
    2: "body",
    3: "ear",
    4: "finger",
    5: "gastrointestinal_tract",
    6: "mouth",
    7: "rectum",
    8: "toe",
    9: "tympanum",
}

# PLX Measurement Status (uint16): name and the quality flag it implies (None: informational).
PLX_MEASUREMENT_STATUS: dict[int, tuple[str, QualityFlag | None]] = {
    5: ("measurement_ongoing", None),
    6: ("early_estimated_data", QualityFlag.EARLY_ESTIMATE),
    7: ("validated_data", None),
    8: ("fully_qualified_data", None),
    9: ("data_from_measurement_storage", None),
    10: ("data_for_demonstration", QualityFlag.INVALID),  # not a patient reading
    11: ("data_for_testing", QualityFlag.INVALID),
    12: ("calibration_ongoing", QualityFlag.QUESTIONABLE),
    13: ("measurement_unavailable", QualityFlag.INVALID),
    14: ("questionable_measurement_detected", QualityFlag.QUESTIONABLE),
    15: ("invalid_measurement_detected", QualityFlag.INVALID),
}
# PLX Device and Sensor Status (uint24).
PLX_DEVICE_SENSOR_STATUS: dict[int, tuple[str, QualityFlag | None]] = {
    0: ("extended_display_update_ongoing", None),
    1: ("equipment_malfunction_detected", QualityFlag.SENSOR_FAULT),
    2: ("signal_processing_irregularity_detected", QualityFlag.QUESTIONABLE),
    3: ("inadequate_signal_detected", QualityFlag.QUESTIONABLE),
    4: ("poor_signal_detected", QualityFlag.QUESTIONABLE),
    5: ("low_perfusion_detected", QualityFlag.LOW_PERFUSION),
    6: ("erratic_signal_detected", QualityFlag.QUESTIONABLE),
    7: ("nonpulsatile_signal_detected", QualityFlag.QUESTIONABLE),
    8: ("questionable_pulse_detected", QualityFlag.QUESTIONABLE),
    9: ("signal_analysis_ongoing", None),
    10: ("sensor_interference_detected", QualityFlag.QUESTIONABLE),
    11: ("sensor_unconnected_to_user", QualityFlag.SENSOR_FAULT),
    12: ("unknown_sensor_connected", QualityFlag.SENSOR_FAULT),
    13: ("sensor_displaced", QualityFlag.SENSOR_FAULT),
    14: ("sensor_malfunctioning", QualityFlag.SENSOR_FAULT),
    15: ("sensor_disconnected", QualityFlag.SENSOR_FAULT),
}
PLX_FEATURES: dict[int, str] = {
    0: "measurement_status_support",
    1: "device_and_sensor_status_support",
    2: "measurement_storage_for_spot_check",
    3: "timestamp_for_spot_check",
    4: "spo2pr_fast_metric",
    5: "spo2pr_slow_metric",
    6: "pulse_amplitude_index",
    7: "multiple_bonds",
}
# Blood Pressure Measurement Status (uint16); bits 3-4 are the pulse-rate range, handled separately.
BP_STATUS: dict[int, tuple[str, QualityFlag | None]] = {
    0: ("body_movement_detected", QualityFlag.MOTION_ARTEFACT),
    1: ("cuff_too_loose", QualityFlag.QUESTIONABLE),
    2: ("irregular_pulse_detected", None),
    5: ("improper_measurement_position", QualityFlag.QUESTIONABLE),
}
PULSE_RATE_RANGE = {0: "within_range", 1: "exceeds_upper_limit", 2: "below_lower_limit", 3: "reserved"}


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------
def normalise_uuid(uuid: str) -> str:
    """'0x2A5E', '2a5e' or '00002a5e-0000-1000-8000-00805f9b34fb' -> '2a5e'."""
    text = uuid.strip().lower()
    full = re.fullmatch(r"0000([0-9a-f]{4})-0000-1000-8000-00805f9b34fb", text)
    if full:
        return full.group(1)
    short = re.fullmatch(r"(?:0x)?([0-9a-f]{4})", text)
    if short:
        return short.group(1)
    raise FrameError(f"not a 16-bit Bluetooth SIG UUID: {uuid!r}")


def _label(uuid: str) -> str:
    return f"0x{uuid.upper()}"


def _flags_and_check(uuid: str, data: bytes, need: Callable[[int], int]) -> int:
    """The flags byte, after checking the frame holds every field those flags announce."""
    if not data:
        raise FrameError(f"{_label(uuid)}: empty frame (no flags byte)")
    flags = data[0]
    required = need(flags)
    if len(data) < required:
        raise FrameError(
            f"{_label(uuid)}: frame is {len(data)} bytes but flags 0x{flags:02X} require at least {required}"
        )
    return flags


def decode_date_time(data: bytes, offset: int) -> tuple[datetime | None, bool]:
    """(naive device-local time, clock_not_set) from a 7-byte Date Time; year/month/day 0 means unknown."""
    year = int.from_bytes(data[offset : offset + 2], "little")
    month, day, hours, minutes, seconds = data[offset + 2 : offset + 7]
    if year == 0 or month == 0 or day == 0:
        return None, True
    try:
        return datetime(year, month, day, hours, minutes, seconds), False
    except ValueError:  # e.g. month 13 or hour 25: the clock is not usable
        return None, True


def _the_one_byte(data: bytes, label: str, rule: str) -> int:
    """The value of a characteristic that is one uint8; FrameError, quoting ``rule``, for any other length."""
    if len(data) != 1:
        raise FrameError(f"{label}: frame is {len(data)} bytes but {rule}")
    return data[0]


def _optional_date_time(data: bytes, offset: int, present: bool) -> tuple[datetime | None, bool, int]:
    """The optional 7-byte Date Time at ``offset``: (device time, clock_not_set, the offset after it); (None,
    False, ``offset``) when the flags say it is absent."""
    if not present:
        return None, False, offset
    device_time, clock_not_set = decode_date_time(data, offset)
    return device_time, clock_not_set, offset + 7


def _status_bits(
    raw: int, table: dict[int, tuple[str, QualityFlag | None]]
) -> tuple[list[str], set[QualityFlag]]:
    names, flags = [], set()
    for bit, (name, flag) in table.items():
        if raw & (1 << bit):
            names.append(name)
            if flag is not None:
                flags.add(flag)
    return names, flags


class _Fields:
    """Collects output fields, turning IEEE-11073 special values into None plus a reason."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.null_reasons: dict[str, str] = {}

    def put(self, key: str, value: Any) -> Any:
        if isinstance(value, Special):
            self.fields[key] = None
            self.null_reasons[key] = value.value
            return None
        self.fields[key] = value
        return value

    def put_time(self, key: str, value: datetime | None, clock_not_set: bool) -> None:
        self.fields[key] = value
        if clock_not_set:
            self.null_reasons[key] = NULL_CLOCK_NOT_SET

    def timed_frame(self, source: str, details: dict[str, Any], metric: Metric, value: float | None,
                    device_time: datetime | None, clock_not_set: bool) -> DecodedFrame:
        """The frame of one measurement stamped by the device's clock: flagged CLOCK_NOT_SET when that is unset."""
        flags = frozenset({QualityFlag.CLOCK_NOT_SET}) if clock_not_set else frozenset()
        return self.frame(source, details, [(metric, value)], flags=flags, device_time=device_time,
                          clock_not_set=clock_not_set)

    def frame(self, source: str, details: dict[str, Any], values: list[tuple[Metric, float | None]] | None = None, *,
              flags: Iterable[QualityFlag] = (), device_time: datetime | None = None,
              clock_not_set: bool = False) -> DecodedFrame:
        """The decoded frame: these fields, ``details``, and a measurement for each of ``values`` present."""
        return DecodedFrame(
            source=source,
            fields=self.fields,
            null_reasons=self.null_reasons,
            flags=frozenset(flags),
            device_time=device_time,
            clock_not_set=clock_not_set,
            measurements=present_values(values) if values is not None else (),
            details=details,
        )


def _number(value: float | Special, convert: Callable[[float], float] | None = None) -> float | Special:
    if isinstance(value, Special) or convert is None:
        return value
    return convert(value)


def _trailing(details: dict[str, Any], data: bytes, used: int) -> None:
    if len(data) > used:
        details["trailing_bytes"] = len(data) - used


# ------------------------------------------------------------------------------------------------------------
# Pulse oximetry (PLX service 0x1822)
# ------------------------------------------------------------------------------------------------------------
def _plx_status(
    data: bytes, offset: int, has_ms: bool, has_dss: bool, details: dict[str, Any], flags: set[QualityFlag]
) -> int:
    if has_ms:
        raw = int.from_bytes(data[offset : offset + 2], "little")
        names, implied = _status_bits(raw, PLX_MEASUREMENT_STATUS)
        details["measurement_status"] = {"raw": raw, "bits": names}
        flags |= implied
        offset += 2
    if has_dss:
        raw = int.from_bytes(data[offset : offset + 3], "little")
        names, implied = _status_bits(raw, PLX_DEVICE_SENSOR_STATUS)
        details["device_and_sensor_status"] = {"raw": raw, "bits": names}
        flags |= implied
        offset += 3
    return offset


def decode_plx_spot_check(data: bytes) -> DecodedFrame:
    """PLX Spot-Check Measurement 0x2A5E."""
    uuid = "2a5e"
    flags_byte = _flags_and_check(
        uuid,
        data,
        lambda f: 5 + 7 * bool(f & 0x01) + 2 * bool(f & 0x02) + 3 * bool(f & 0x04) + 2 * bool(f & 0x08),
    )
    out, details, flags = _Fields(), {"flags": flags_byte}, set[QualityFlag]()
    spo2 = out.put("spo2", decode_sfloat(data, 1))
    pulse = out.put("pulse_rate", decode_sfloat(data, 3))
    offset = 5
    device_time, clock_not_set, offset = _optional_date_time(data, offset, bool(flags_byte & 0x01))
    if flags_byte & 0x10:  # "device clock is not set": the timestamp, if any, is meaningless
        device_time, clock_not_set = None, True
    if flags_byte & 0x01:
        out.put_time("timestamp", device_time, clock_not_set)
    offset = _plx_status(data, offset, bool(flags_byte & 0x02), bool(flags_byte & 0x04), details, flags)
    if flags_byte & 0x08:
        out.put("pulse_amplitude_index", decode_sfloat(data, offset))
        offset += 2
    else:
        out.fields["pulse_amplitude_index"] = None
    details["device_clock_not_set"] = bool(flags_byte & 0x10)
    _trailing(details, data, offset)
    if clock_not_set:
        flags.add(QualityFlag.CLOCK_NOT_SET)
    return out.frame(uuid, details, [(Metric.SPO2, spo2), (Metric.PULSE_RATE, pulse)], flags=flags,
                     device_time=device_time, clock_not_set=clock_not_set)


def decode_plx_continuous(data: bytes) -> DecodedFrame:
    """PLX Continuous Measurement 0x2A5F (normal, fast and slow SpO2/PR)."""
    uuid = "2a5f"
    flags_byte = _flags_and_check(
        uuid,
        data,
        lambda f: 5 + 4 * bool(f & 0x01) + 4 * bool(f & 0x02) + 2 * bool(f & 0x04) + 3 * bool(f & 0x08)
        + 2 * bool(f & 0x10),
    )
    out, details, flags = _Fields(), {"flags": flags_byte}, set[QualityFlag]()
    spo2 = out.put("spo2", decode_sfloat(data, 1))
    pulse = out.put("pulse_rate", decode_sfloat(data, 3))
    offset = 5
    for suffix, bit in (("fast", 0x01), ("slow", 0x02)):
        if flags_byte & bit:
            out.put(f"spo2_{suffix}", decode_sfloat(data, offset))
            out.put(f"pulse_rate_{suffix}", decode_sfloat(data, offset + 2))
            offset += 4
        else:
            out.fields[f"spo2_{suffix}"] = None
            out.fields[f"pulse_rate_{suffix}"] = None
    offset = _plx_status(data, offset, bool(flags_byte & 0x04), bool(flags_byte & 0x08), details, flags)
    if flags_byte & 0x10:
        out.put("pulse_amplitude_index", decode_sfloat(data, offset))
        offset += 2
    else:
        out.fields["pulse_amplitude_index"] = None
    _trailing(details, data, offset)
    return out.frame(uuid, details, [(Metric.SPO2, spo2), (Metric.PULSE_RATE, pulse)], flags=flags)


def decode_plx_features(data: bytes) -> DecodedFrame:
    """PLX Features 0x2A60 (read once at connection; says which optional fields the oximeter sends)."""
    if len(data) < 2:
        raise FrameError(f"0x2A60: frame is {len(data)} bytes but Supported Features needs 2")
    features = int.from_bytes(data[0:2], "little")
    need = 2 + 2 * bool(features & 0x01) + 3 * bool(features & 0x02)
    if len(data) < need:
        raise FrameError(f"0x2A60: frame is {len(data)} bytes but features 0x{features:04X} require {need}")
    fields: dict[str, Any] = {
        "supported_features": {"raw": features, "bits": [n for b, n in PLX_FEATURES.items() if features >> b & 1]}
    }
    offset = 2
    if features & 0x01:
        raw = int.from_bytes(data[offset : offset + 2], "little")
        fields["measurement_status_support"] = {"raw": raw, "bits": _status_bits(raw, PLX_MEASUREMENT_STATUS)[0]}
        offset += 2
    if features & 0x02:
        raw = int.from_bytes(data[offset : offset + 3], "little")
        fields["device_and_sensor_status_support"] = {
            "raw": raw,
            "bits": _status_bits(raw, PLX_DEVICE_SENSOR_STATUS)[0],
        }
        offset += 3
    details: dict[str, Any] = {}
    _trailing(details, data, offset)
    return DecodedFrame(source="2a60", fields=fields, details=details)


# ------------------------------------------------------------------------------------------------------------
# Health thermometer (0x1809)
# ------------------------------------------------------------------------------------------------------------
def _fahrenheit_to_celsius(fahrenheit: float, exponent: int) -> float:
    return round((fahrenheit - 32) * 5 / 9, max(-exponent, 0) + 1)


def decode_temperature(data: bytes) -> DecodedFrame:
    """Temperature Measurement 0x2A1C; Fahrenheit readings are converted to °C (one more decimal kept)."""
    uuid = "2a1c"
    flags_byte = _flags_and_check(uuid, data, lambda f: 5 + 7 * bool(f & 0x02) + bool(f & 0x04))
    out = _Fields()
    details: dict[str, Any] = {"flags": flags_byte, "unit": "F" if flags_byte & 0x01 else "C"}
    raw_value = decode_float(data, 1)
    details["temperature_as_sent"] = raw_value if not isinstance(raw_value, Special) else raw_value.value
    if flags_byte & 0x01:
        exponent = float_parts(int.from_bytes(data[1:5], "little"))[1]
        celsius = out.put("temperature_c", _number(raw_value, lambda f: _fahrenheit_to_celsius(f, exponent)))
    else:
        celsius = out.put("temperature_c", raw_value)
    offset = 5
    device_time, clock_not_set, offset = _optional_date_time(data, offset, bool(flags_byte & 0x02))
    out.put_time("timestamp", device_time, clock_not_set)
    out.fields["temperature_type"] = None
    if flags_byte & 0x04:
        code = data[offset]
        out.fields["temperature_type"] = TEMPERATURE_TYPES.get(code, f"reserved_{code}")
        details["temperature_type_code"] = code
        offset += 1
    _trailing(details, data, offset)
    return out.timed_frame(uuid, details, Metric.TEMPERATURE, celsius, device_time, clock_not_set)


def decode_temperature_type(data: bytes) -> DecodedFrame:
    """Temperature Type 0x2A1D: one uint8 naming the body site."""
    code = _the_one_byte(data, "0x2A1D", "Temperature Type is exactly 1 (uint8)")
    return DecodedFrame(
        source="2a1d",
        fields={"temperature_type": TEMPERATURE_TYPES.get(code, f"reserved_{code}")},
        details={"temperature_type_code": code},
    )


# ------------------------------------------------------------------------------------------------------------
# Blood pressure (0x1810)
# ------------------------------------------------------------------------------------------------------------
def _bp_need(flags: int) -> int:
    return 7 + 7 * bool(flags & 0x02) + 2 * bool(flags & 0x04) + bool(flags & 0x08) + 2 * bool(flags & 0x10)


def _bp_start(uuid: str, data: bytes) -> tuple[int, _Fields, dict[str, Any], set[QualityFlag]]:
    """Checked flags byte plus empty collectors for a 0x2A35/0x2A36 frame."""
    flags_byte = _flags_and_check(uuid, data, _bp_need)
    return flags_byte, _Fields(), {"flags": flags_byte, "unit": "kPa" if flags_byte & 0x01 else "mmHg"}, set()


def _pressure(data: bytes, offset: int, kpa: bool) -> float | Special:
    value = decode_sfloat(data, offset)
    return _number(value, (lambda v: round(v * KPA_TO_MMHG, 1)) if kpa else None)


def _as_sent(data: bytes, offsets: tuple[int, ...]) -> list[float | str]:
    """The pressure SFLOATs in the unit the cuff used (special values by name), for audit."""
    values = [decode_sfloat(data, offset) for offset in offsets]
    return [v.value if isinstance(v, Special) else v for v in values]


def _bp_tail(
    data: bytes, flags_byte: int, out: _Fields, details: dict[str, Any], flags: set[QualityFlag]
) -> tuple[float | None, datetime | None, bool, int]:
    offset = 7
    device_time, clock_not_set, offset = _optional_date_time(data, offset, bool(flags_byte & 0x02))
    out.put_time("timestamp", device_time, clock_not_set)
    pulse = None
    out.fields["pulse_rate"] = None
    if flags_byte & 0x04:
        pulse = out.put("pulse_rate", decode_sfloat(data, offset))
        offset += 2
    out.fields["user_id"] = None
    if flags_byte & 0x08:
        out.fields["user_id"] = data[offset]  # 255 = "unknown user" per the spec; passed through as sent
        offset += 1
    if flags_byte & 0x10:
        raw = int.from_bytes(data[offset : offset + 2], "little")
        names, implied = _status_bits(raw, BP_STATUS)
        details["measurement_status"] = {
            "raw": raw,
            "bits": names,
            "pulse_rate_range": PULSE_RATE_RANGE[(raw >> 3) & 0x03],
        }
        flags |= implied
        offset += 2
    if clock_not_set:
        flags.add(QualityFlag.CLOCK_NOT_SET)
    _trailing(details, data, offset)
    return pulse, device_time, clock_not_set, offset


def decode_blood_pressure(data: bytes) -> DecodedFrame:
    """Blood Pressure Measurement 0x2A35; kPa is converted to mmHg (0.1 mmHg kept)."""
    uuid = "2a35"
    flags_byte, out, details, flags = _bp_start(uuid, data)
    kpa = bool(flags_byte & 0x01)
    details["pressures_as_sent"] = _as_sent(data, (1, 3, 5))
    systolic = out.put("systolic_mmhg", _pressure(data, 1, kpa))
    diastolic = out.put("diastolic_mmhg", _pressure(data, 3, kpa))
    mean = out.put("mean_arterial_pressure_mmhg", _pressure(data, 5, kpa))
    pulse, device_time, clock_not_set, _ = _bp_tail(data, flags_byte, out, details, flags)
    values = [(Metric.SYSTOLIC_BP, systolic), (Metric.DIASTOLIC_BP, diastolic),
              (Metric.MEAN_ARTERIAL_PRESSURE, mean), (Metric.PULSE_RATE, pulse)]
    return out.frame(uuid, details, values, flags=flags, device_time=device_time, clock_not_set=clock_not_set)


def decode_intermediate_cuff_pressure(data: bytes) -> DecodedFrame:
    """Intermediate Cuff Pressure 0x2A36: the cuff pressure while inflating, in the 0x2A35 layout.

    The spec carries the current cuff pressure in the systolic field and leaves diastolic and mean arterial
    pressure unused (NaN; some devices send 0): so ``systolic_mmhg`` is the cuff pressure (also under
    ``cuff_pressure_mmhg``, which says what it is) and the other two are ``None`` with their reason (the
    special value's name, else ``unused``). It is progress, not a blood pressure, so it yields no measurements.
    """
    uuid = "2a36"
    flags_byte, out, details, flags = _bp_start(uuid, data)
    details["pressures_as_sent"] = _as_sent(data, (1,))
    cuff = out.put("systolic_mmhg", _pressure(data, 1, bool(flags_byte & 0x01)))
    for key, offset in (("diastolic_mmhg", 3), ("mean_arterial_pressure_mmhg", 5)):
        sent = decode_sfloat(data, offset)
        out.fields[key] = None
        out.null_reasons[key] = sent.value if isinstance(sent, Special) else NULL_UNUSED
    out.fields["cuff_pressure_mmhg"] = cuff
    if "systolic_mmhg" in out.null_reasons:
        out.null_reasons["cuff_pressure_mmhg"] = out.null_reasons["systolic_mmhg"]
    _, device_time, clock_not_set, _ = _bp_tail(data, flags_byte, out, details, flags)
    return out.frame(uuid, details, flags=flags, device_time=device_time, clock_not_set=clock_not_set)


# ------------------------------------------------------------------------------------------------------------
# Heart rate (0x180D)
# ------------------------------------------------------------------------------------------------------------
def decode_heart_rate(data: bytes) -> DecodedFrame:
    """Heart Rate Measurement 0x2A37; RR-intervals converted from 1/1024 s to ms (0.1 ms kept)."""
    uuid = "2a37"
    flags_byte = _flags_and_check(
        uuid, data, lambda f: 2 + bool(f & 0x01) + 2 * bool(f & 0x08) + 2 * bool(f & 0x10)
    )
    if flags_byte & 0x01:
        heart_rate, offset = int.from_bytes(data[1:3], "little"), 3
    else:
        heart_rate, offset = data[1], 2
    contact_bits = (flags_byte >> 1) & 0x03
    sensor_contact = {2: False, 3: True}.get(contact_bits)  # 0b0x: feature not supported
    energy = None
    if flags_byte & 0x08:
        energy = int.from_bytes(data[offset : offset + 2], "little")
        offset += 2
    rr_raw: list[int] = []
    if flags_byte & 0x10:
        rest = len(data) - offset
        if rest % 2:
            raise FrameError(f"{_label(uuid)}: {rest} bytes of RR-intervals is not a whole number of uint16s")
        rr_raw = [int.from_bytes(data[i : i + 2], "little") for i in range(offset, len(data), 2)]
        offset = len(data)
    details: dict[str, Any] = {"flags": flags_byte, "rr_intervals_raw": rr_raw}
    _trailing(details, data, offset)
    flags = frozenset({QualityFlag.SENSOR_FAULT}) if sensor_contact is False else frozenset()
    return DecodedFrame(
        source=uuid,
        fields={
            "heart_rate": heart_rate,
            "rr_intervals_ms": [round(raw * 1000 / 1024, 1) for raw in rr_raw],
            "energy_expended_kj": energy,
            "sensor_contact": sensor_contact,
        },
        flags=flags,
        measurements=present_values([(Metric.PULSE_RATE, heart_rate)]),
        details=details,
    )


# ------------------------------------------------------------------------------------------------------------
# Weight scale (0x181D)
# ------------------------------------------------------------------------------------------------------------
def decode_weight(data: bytes) -> DecodedFrame:
    """Weight Measurement 0x2A9D: 0.005 kg (SI) or 0.01 lb (imperial) steps; lb converted to kg."""
    uuid = "2a9d"
    flags_byte = _flags_and_check(uuid, data, lambda f: 3 + 7 * bool(f & 0x02) + bool(f & 0x04) + 4 * bool(f & 0x08))
    imperial = bool(flags_byte & 0x01)
    out = _Fields()
    details: dict[str, Any] = {"flags": flags_byte, "unit": "lb" if imperial else "kg"}
    raw = int.from_bytes(data[1:3], "little")
    weight: float | None
    if raw == 0xFFFF:
        weight = None
        out.fields["weight_kg"] = None
        out.null_reasons["weight_kg"] = NULL_UNSUCCESSFUL
    else:
        weight = round(raw * LB_TO_KG / 100, 3) if imperial else raw * 5 / 1000
        out.fields["weight_kg"] = weight
    offset = 3
    device_time, clock_not_set, offset = _optional_date_time(data, offset, bool(flags_byte & 0x02))
    if flags_byte & 0x02:
        out.put_time("timestamp", device_time, clock_not_set)
    if flags_byte & 0x04:
        details["user_id"] = data[offset]
        offset += 1
    if flags_byte & 0x08:
        details["bmi"] = int.from_bytes(data[offset : offset + 2], "little") / 10
        height_raw = int.from_bytes(data[offset + 2 : offset + 4], "little")
        details["height_m"] = round(height_raw * INCH_TO_M / 10, 3) if imperial else height_raw / 1000
        offset += 4
    _trailing(details, data, offset)
    return out.timed_frame(uuid, details, Metric.WEIGHT, weight, device_time, clock_not_set)


# ------------------------------------------------------------------------------------------------------------
# Battery Service (0x180F)
# ------------------------------------------------------------------------------------------------------------
def decode_battery_level(data: bytes) -> DecodedFrame:
    """Battery Level 0x2A19: one uint8, 0-100 %; 101-255 are prohibited, so such a frame is refused."""
    level = _the_one_byte(data, "0x2A19", "Battery Level is exactly 1 (uint8 percent)")
    if level > 100:
        raise FrameError(f"0x2A19: battery level {level} is above 100 % (values 101-255 are prohibited)")
    return DecodedFrame(
        source="2a19",
        fields={"battery_pct": float(level)},
        measurements=present_values([(Metric.BATTERY, float(level))]),
    )


# ------------------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------------------
DECODERS: dict[str, Callable[[bytes], DecodedFrame]] = {
    "2a5e": decode_plx_spot_check,
    "2a5f": decode_plx_continuous,
    "2a60": decode_plx_features,
    "2a1c": decode_temperature,
    "2a1d": decode_temperature_type,
    "2a35": decode_blood_pressure,
    "2a36": decode_intermediate_cuff_pressure,
    "2a37": decode_heart_rate,
    "2a9d": decode_weight,
    "2a19": decode_battery_level,
}


def decode_characteristic(uuid: str, data: bytes) -> DecodedFrame:
    """Decode the value of characteristic ``uuid`` ('2a5e', '0x2A5E' or the 128-bit form)."""
    short = normalise_uuid(uuid)
    decoder = DECODERS.get(short)
    if decoder is None:
        raise FrameError(f"no decoder for characteristic {_label(short)} (known: {', '.join(sorted(DECODERS))})")
    return decoder(bytes(data))
