"""Frame encoders for the device simulator: the exact inverse of ``carewatch.gateway`` parsers.

The simulator emits the bytes a real device would send, so every simulated reading goes through the
real parsers. Values are rounded to the device's resolution (e.g. SpO2 to 1 %, temperature to 0.01 °C);
``Special`` values (NaN, NRes, ...) can be sent on purpose to exercise the "no value" paths.
Bit packing is written independently of the decoders so round-trip tests can catch errors on either side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from carewatch.gateway.ieee11073 import Special

_SFLOAT_SPECIAL_RAW = {"NaN": 0x07FF, "NRes": 0x0800, "+INF": 0x07FE, "-INF": 0x0802, "reserved": 0x0801}
_FLOAT_SPECIAL_RAW = {"NaN": 0x007FFFFF, "NRes": 0x00800000, "+INF": 0x007FFFFE, "-INF": 0x00800002,
                      "reserved": 0x00800001}
SFLOAT_MANTISSA_LIMIT = 2045  # ±2046..2048 with exponent 0 are the special values
FLOAT_MANTISSA_LIMIT = 2**23 - 3

Value = float | Special


# ------------------------------------------------------------------------------------------------------------
# IEEE 11073 numbers
# ------------------------------------------------------------------------------------------------------------
def _special_name(value: Value) -> str | None:
    if isinstance(value, Special):
        return value.value
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+INF" if value > 0 else "-INF"
    return None


def _mantissa(value: float, exponent: int) -> int:
    """value / 10^exponent rounded half-up, computed in decimal so 36.5 at exponent -1 is exactly 365."""
    return int((Decimal(repr(value)).scaleb(-exponent)).to_integral_value(ROUND_HALF_UP))


def pack_sfloat(mantissa: int, exponent: int) -> bytes:
    """The SFLOAT bit pattern for mantissa × 10^exponent; ValueError when it does not fit (never saturates)."""
    if not -8 <= exponent <= 7:
        raise ValueError(f"SFLOAT exponent {exponent} outside -8..7")
    if abs(mantissa) > SFLOAT_MANTISSA_LIMIT:
        raise ValueError(f"SFLOAT mantissa {mantissa} outside ±{SFLOAT_MANTISSA_LIMIT}")
    return (((exponent & 0x0F) << 12) | (mantissa & 0x0FFF)).to_bytes(2, "little")


def pack_float(mantissa: int, exponent: int) -> bytes:
    if not -128 <= exponent <= 127:
        raise ValueError(f"FLOAT exponent {exponent} outside -128..127")
    if abs(mantissa) > FLOAT_MANTISSA_LIMIT:
        raise ValueError(f"FLOAT mantissa {mantissa} outside ±{FLOAT_MANTISSA_LIMIT}")
    return (((exponent & 0xFF) << 24) | (mantissa & 0x00FFFFFF)).to_bytes(4, "little")


def encode_sfloat(value: Value, exponent: int = 0) -> bytes:
    """``value`` as an SFLOAT with a fixed ``exponent`` (the device's resolution); specials by name or NaN/inf."""
    special = _special_name(value)
    if special is not None:
        return _SFLOAT_SPECIAL_RAW[special].to_bytes(2, "little")
    return pack_sfloat(_mantissa(float(value), exponent), exponent)


def encode_sfloat_auto(value: Value) -> bytes:
    """``value`` with the finest exponent that fits, rounded half-up to 4 significant digits at most.

    Values too large for any exponent become +INF/-INF (as the Nordic encoder does).
    """
    special = _special_name(value)
    if special is not None:
        return _SFLOAT_SPECIAL_RAW[special].to_bytes(2, "little")
    for exponent in range(-8, 8):
        mantissa = _mantissa(float(value), exponent)
        if abs(mantissa) <= SFLOAT_MANTISSA_LIMIT:
            return pack_sfloat(mantissa, exponent)
    positive = not isinstance(value, Special) and value > 0  # (specials returned above)
    return _SFLOAT_SPECIAL_RAW["+INF" if positive else "-INF"].to_bytes(2, "little")


def encode_float(value: Value, exponent: int = -2) -> bytes:
    special = _special_name(value)
    if special is not None:
        return _FLOAT_SPECIAL_RAW[special].to_bytes(4, "little")
    return pack_float(_mantissa(float(value), exponent), exponent)


def encode_date_time(timestamp: datetime | None) -> bytes:
    """7-byte Date Time; ``None`` gives all zeros ("unknown", a device whose clock was never set)."""
    if timestamp is None:
        return bytes(7)
    return timestamp.year.to_bytes(2, "little") + bytes(
        [timestamp.month, timestamp.day, timestamp.hour, timestamp.minute, timestamp.second]
    )


# ------------------------------------------------------------------------------------------------------------
# GATT characteristics
# ------------------------------------------------------------------------------------------------------------
def encode_plx_spot_check(
    spo2: Value,
    pulse_rate: Value,
    *,
    timestamp: datetime | None = None,
    measurement_status: int | None = None,
    device_and_sensor_status: int | None = None,
    pulse_amplitude_index: Value | None = None,
    device_clock_not_set: bool = False,
    with_timestamp: bool | None = None,
) -> bytes:
    """PLX Spot-Check 0x2A5E; SpO2 and PR at 1 unit, PAI at 0.1. Status words are the raw bit fields.

    The timestamp field is included when ``timestamp`` is given (or ``with_timestamp=True``, which sends
    the all-zero "unknown" date).
    """
    include_time = timestamp is not None if with_timestamp is None else with_timestamp
    flags = (
        0x01 * include_time
        | 0x02 * (measurement_status is not None)
        | 0x04 * (device_and_sensor_status is not None)
        | 0x08 * (pulse_amplitude_index is not None)
        | 0x10 * device_clock_not_set
    )
    out = bytes([flags]) + encode_sfloat(spo2) + encode_sfloat(pulse_rate)
    if include_time:
        out += encode_date_time(timestamp)
    if measurement_status is not None:
        out += measurement_status.to_bytes(2, "little")
    if device_and_sensor_status is not None:
        out += device_and_sensor_status.to_bytes(3, "little")
    if pulse_amplitude_index is not None:
        out += encode_sfloat(pulse_amplitude_index, -1)
    return out


def encode_plx_continuous(
    spo2: Value,
    pulse_rate: Value,
    *,
    fast: tuple[Value, Value] | None = None,
    slow: tuple[Value, Value] | None = None,
    measurement_status: int | None = None,
    device_and_sensor_status: int | None = None,
    pulse_amplitude_index: Value | None = None,
) -> bytes:
    """PLX Continuous 0x2A5F; ``fast``/``slow`` are (SpO2, PR) pairs."""
    flags = (
        0x01 * (fast is not None)
        | 0x02 * (slow is not None)
        | 0x04 * (measurement_status is not None)
        | 0x08 * (device_and_sensor_status is not None)
        | 0x10 * (pulse_amplitude_index is not None)
    )
    out = bytes([flags]) + encode_sfloat(spo2) + encode_sfloat(pulse_rate)
    for pair in (fast, slow):
        if pair is not None:
            out += encode_sfloat(pair[0]) + encode_sfloat(pair[1])
    if measurement_status is not None:
        out += measurement_status.to_bytes(2, "little")
    if device_and_sensor_status is not None:
        out += device_and_sensor_status.to_bytes(3, "little")
    if pulse_amplitude_index is not None:
        out += encode_sfloat(pulse_amplitude_index, -1)
    return out


def encode_temperature(
    celsius: Value,
    *,
    fahrenheit: bool = False,
    timestamp: datetime | None = None,
    temp_type: int | None = None,
    with_timestamp: bool | None = None,
) -> bytes:
    """Temperature Measurement 0x2A1C at 0.01 degree; with ``fahrenheit`` the value is sent in °F.

    The Time Stamp field is included when ``timestamp`` is given (or ``with_timestamp=True``, which sends the
    all-zero "unknown" date of a device whose clock was never set)."""
    value: Value = celsius
    if fahrenheit and not isinstance(celsius, Special) and math.isfinite(celsius):
        value = celsius * 9 / 5 + 32
    include_time = timestamp is not None if with_timestamp is None else with_timestamp
    flags = 0x01 * fahrenheit | 0x02 * include_time | 0x04 * (temp_type is not None)
    out = bytes([flags]) + encode_float(value, -2)
    if include_time:
        out += encode_date_time(timestamp)
    if temp_type is not None:
        out += bytes([temp_type])
    return out


KPA_PER_MMHG = 1 / 7.500617


def encode_blood_pressure(
    systolic: Value,
    diastolic: Value,
    mean_arterial: Value,
    *,
    kpa: bool = False,
    timestamp: datetime | None = None,
    pulse_rate: Value | None = None,
    user_id: int | None = None,
    measurement_status: int | None = None,
    intermediate: bool = False,
    with_timestamp: bool | None = None,
) -> bytes:
    """Blood Pressure 0x2A35 (or Intermediate Cuff Pressure 0x2A36 with ``intermediate``, where the first
    value is the cuff pressure and the other two should be NaN). Pressures are given in mmHg; with ``kpa``
    they are sent in kPa at 0.1 kPa, else in mmHg at 1 mmHg. ``with_timestamp=True`` and no ``timestamp``
    sends the all-zero "unknown" Time Stamp."""
    def pressure(v: Value) -> bytes:
        if kpa and not isinstance(v, Special) and math.isfinite(v):
            return encode_sfloat(v * KPA_PER_MMHG, -1)
        return encode_sfloat(v, -1 if kpa else 0)

    del intermediate  # same layout; kept so callers can say which characteristic they mean
    include_time = timestamp is not None if with_timestamp is None else with_timestamp
    flags = (
        0x01 * kpa
        | 0x02 * include_time
        | 0x04 * (pulse_rate is not None)
        | 0x08 * (user_id is not None)
        | 0x10 * (measurement_status is not None)
    )
    out = bytes([flags]) + pressure(systolic) + pressure(diastolic) + pressure(mean_arterial)
    if include_time:
        out += encode_date_time(timestamp)
    if pulse_rate is not None:
        out += encode_sfloat(pulse_rate)
    if user_id is not None:
        out += bytes([user_id])
    if measurement_status is not None:
        out += measurement_status.to_bytes(2, "little")
    return out


def encode_heart_rate(
    bpm: int,
    *,
    rr_intervals_ms: Sequence[float] = (),
    energy_expended_kj: int | None = None,
    sensor_contact: bool | None = None,
    uint16: bool | None = None,
) -> bytes:
    """Heart Rate Measurement 0x2A37; ``sensor_contact`` None = feature not supported; RR in ms."""
    wide = bpm > 255 if uint16 is None else uint16
    contact_bits = {None: 0b00, False: 0b10, True: 0b11}[sensor_contact]
    flags = 0x01 * wide | contact_bits << 1 | 0x08 * (energy_expended_kj is not None) | 0x10 * bool(rr_intervals_ms)
    out = bytes([flags]) + bpm.to_bytes(2 if wide else 1, "little")
    if energy_expended_kj is not None:
        out += energy_expended_kj.to_bytes(2, "little")
    for ms in rr_intervals_ms:
        out += round(ms * 1024 / 1000).to_bytes(2, "little")
    return out


def encode_weight(
    kg: float | None,
    *,
    imperial: bool = False,
    timestamp: datetime | None = None,
    user_id: int | None = None,
    bmi: float | None = None,
    height_m: float | None = None,
) -> bytes:
    """Weight Measurement 0x2A9D (0.005 kg or 0.01 lb steps); ``kg=None`` sends "measurement unsuccessful"."""
    if kg is None:
        raw = 0xFFFF
    elif imperial:
        raw = round(kg / 0.45359237 * 100)
    else:
        raw = round(kg / 0.005)
    if not 0 <= raw <= 0xFFFF or (raw == 0xFFFF and kg is not None):
        raise ValueError(f"weight {kg} kg does not fit a Weight Scale frame ({'imperial' if imperial else 'SI'})")
    has_bmi = bmi is not None and height_m is not None
    flags = 0x01 * imperial | 0x02 * (timestamp is not None) | 0x04 * (user_id is not None) | 0x08 * has_bmi
    out = bytes([flags]) + raw.to_bytes(2, "little")
    if timestamp is not None:
        out += encode_date_time(timestamp)
    if user_id is not None:
        out += bytes([user_id])
    if has_bmi:
        assert bmi is not None and height_m is not None
        height_raw = round(height_m / 0.0254 * 10) if imperial else round(height_m * 1000)
        out += round(bmi * 10).to_bytes(2, "little") + height_raw.to_bytes(2, "little")
    return out


# ------------------------------------------------------------------------------------------------------------
# Proprietary oximeters
# ------------------------------------------------------------------------------------------------------------
def encode_battery_level(percent: float) -> bytes:
    """Battery Level 0x2A19: one uint8 percent (0-100)."""
    level = round(percent)
    if not 0 <= level <= 100:
        raise ValueError(f"battery level {percent} is outside 0-100 %")
    return bytes([level])


def _five_byte_packet(spo2: int, pr: int, waveform: int, signal_strength: int, byte0_flags: tuple[bool, bool, bool],
                      bargraph: int, byte2_flags: tuple[bool, bool]) -> bytes:
    """The 5-byte sync-bit packet BerryMed BCI and Contec CMS50D+ share: byte 0 sync bit, signal strength and
    three flags (bits 4-6); byte 1 the waveform; byte 2 bargraph, two flags (bits 4-5) and bit 7 of the pulse
    rate; byte 3 the pulse rate's low 7 bits; byte 4 SpO2."""
    return bytes(
        [
            0x80 | signal_strength & 0x0F | 0x10 * byte0_flags[0] | 0x20 * byte0_flags[1] | 0x40 * byte0_flags[2],
            waveform & 0x7F,
            bargraph & 0x0F | 0x10 * byte2_flags[0] | 0x20 * byte2_flags[1] | ((pr >> 7) & 1) << 6,
            pr & 0x7F,
            spo2 & 0x7F,
        ]
    )


def encode_berrymed(
    spo2: int | None,
    pulse_rate: int | None,
    *,
    pleth: int = 50,
    signal_strength: int = 7,
    bargraph: int = 5,
    no_signal: bool = False,
    probe_unplugged: bool = False,
    beep: bool = False,
    no_finger: bool = False,
    searching: bool = False,
) -> bytes:
    """One BerryMed BCI packet; ``None`` sends the device's "no value" markers (SpO2 127, PR 255)."""
    return _five_byte_packet(127 if spo2 is None else spo2, 255 if pulse_rate is None else pulse_rate, pleth,
                             signal_strength, (no_signal, probe_unplugged, beep), bargraph, (no_finger, searching))


def encode_contec(
    spo2: int | None,
    pulse_rate: int | None,
    *,
    pulse_waveform: int = 50,
    signal_strength: int = 7,
    bargraph: int = 5,
    finger_out: bool = False,
    dropping_spo2: bool = False,
    beep: bool = False,
    probe_error: bool = False,
    searching: bool = False,
) -> bytes:
    """One Contec CMS50D+ live packet; ``None`` sends 0 (what the device shows with no finger)."""
    return _five_byte_packet(0 if spo2 is None else spo2, 0 if pulse_rate is None else pulse_rate, pulse_waveform,
                             signal_strength, (finger_out, dropping_spo2, beep), bargraph, (probe_error, searching))


def encode_emay(spo2: int | None, pulse_rate: int | None) -> bytes:
    """EMAY SleepO2 ``EB 01 05 PR SpO2 7F 00 cks`` (``None`` = 0xFF)."""
    body = bytes([0xEB, 0x01, 0x05, 0xFF if pulse_rate is None else pulse_rate, 0xFF if spo2 is None else spo2,
                  0x7F, 0x00])
    return body + bytes([sum(body) & 0x7F])


def encode_o2ring(spo2: int, pulse_rate: int, *, battery: int = 80, worn: bool = True, movement: int = 0,
                  perfusion_raw: int = 0) -> bytes:
    """Viatom legacy O2Ring real-time response (fixed offsets: SpO2 @7, HR @8, battery @14, movement @16, PI @17,
    worn @18), as the ring answers one ``AA 17 E8`` request; bytes not decoded are zero."""
    out = bytearray(20)
    out[0], out[1] = 0x55, 0x00
    out[7], out[8], out[14], out[16], out[17], out[18] = spo2, pulse_rate, battery, movement, perfusion_raw, int(worn)
    return bytes(out)


def _crc8_maxim(data: bytes) -> int:
    crc = 0
    for byte in data:
        for bit in range(8):
            mix = (crc ^ (byte >> bit)) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
    return crc


def encode_pc60fw(func: int, payload: bytes, *, frame_type: int = 0x0F) -> bytes:
    """A PC-60FW frame ``AA 55 type len func payload crc8maxim``."""
    body = bytes([0xAA, 0x55, frame_type, len(payload) + 2, func]) + payload
    return body + bytes([_crc8_maxim(body)])


def encode_pc60fw_params(spo2: int | None, pulse_rate: int | None, perfusion_index: float | None = None) -> bytes:
    """PC-60FW parameter frame (func 01); ``None`` sends 0."""
    pi = 0 if perfusion_index is None else round(perfusion_index * 10)
    return encode_pc60fw(0x01, bytes([spo2 or 0, pulse_rate or 0, 0, pi, 0, 0xC0]))


def encode_jks50f(spo2: int | None, pulse_rate: int | None, perfusion_index: float | None = None,
                  *, finger_present: bool = True) -> bytes:
    """JKS50F 69-byte frame; ``None`` sends 127 (SpO2/PR) or the all-ones PI marker."""
    if pulse_rate == 127 or spo2 == 127:
        raise ValueError("127 is the JKS50F 'no value' marker; the device cannot report it as a reading")
    pi_raw = 8191 if perfusion_index is None else round(perfusion_index * 100)
    body = bytes([0xFF, 0x44, 0x01, 0 if finger_present else 1, 127 if spo2 is None else spo2,
                  127 if pulse_rate is None else pulse_rate, pi_raw & 0x7F, (pi_raw >> 7) & 0x3F]) + bytes(60)
    return body + bytes([(sum(body) + 1) & 0xFF])


# ------------------------------------------------------------------------------------------------------------
# BTHome v2
# ------------------------------------------------------------------------------------------------------------
# field -> (object id, byte length, factor, signed); objects are sent in ascending object-id order.
BTHOME_OBJECTS: dict[str, tuple[int, int, float, bool]] = {
    "battery_pct": (0x01, 1, 1, False),
    "temperature_c": (0x02, 2, 0.01, True),
    "humidity_pct": (0x03, 2, 0.01, False),
    "illuminance_lux": (0x05, 3, 0.01, False),
    "power_w": (0x0B, 3, 0.01, False),
    "power_on": (0x10, 1, 1, False),
    "door_open": (0x1A, 1, 1, False),
    "motion": (0x21, 1, 1, False),
    "occupancy": (0x23, 1, 1, False),
    "window_open": (0x2D, 1, 1, False),
}
BTHOME_BUTTON_EVENTS = {"press": 0x01, "double_press": 0x02, "triple_press": 0x03, "long_press": 0x04,
                        "long_double_press": 0x05, "long_triple_press": 0x06, "hold_press": 0x80}
BTHOME_UUID16_LE = b"\xd2\xfc"


def bthome_objects(measurements: Mapping[str, float | bool | str], packet_id: int | None = None) -> bytes:
    """The plaintext BTHome v2 object list for ``measurements`` (our field names, as the decoder returns)."""
    objects: list[tuple[int, bytes]] = []
    if packet_id is not None:
        objects.append((0x00, bytes([packet_id & 0xFF])))
    for name, value in measurements.items():
        if name == "button":
            code = BTHOME_BUTTON_EVENTS[str(value)] if isinstance(value, str) else int(value)
            objects.append((0x3A, bytes([code])))
            continue
        if name not in BTHOME_OBJECTS:
            raise ValueError(f"no BTHome object for {name!r} (known: {', '.join(sorted(BTHOME_OBJECTS))}, button)")
        object_id, length, factor, signed = BTHOME_OBJECTS[name]
        raw = int((Decimal(repr(float(value))) / Decimal(repr(factor))).to_integral_value(ROUND_HALF_UP))
        objects.append((object_id, raw.to_bytes(length, "little", signed=signed)))
    objects.sort(key=lambda item: item[0])
    return b"".join(bytes([object_id]) + data for object_id, data in objects)


def encode_bthome(
    measurements: Mapping[str, float | bool | str],
    *,
    packet_id: int | None,
    bindkey: bytes | None = None,
    mac: str,
    counter: int = 0,
    trigger_based: bool = False,
) -> bytes:
    """BTHome v2 service data (from the device-information byte on), AES-CCM encrypted with ``bindkey``.

    Encrypted layout: ``devinfo | ciphertext | counter (uint32 LE) | MIC (4)``; nonce = MAC (6, as written)
    | UUID16 LE ``d2 fc`` | devinfo | counter, no associated data (bthome_ble/bthome_v2_encryption.py).
    """
    plaintext = bthome_objects(measurements, packet_id)
    devinfo = 0x40 | 0x04 * trigger_based | 0x01 * (bindkey is not None)
    if bindkey is None:
        return bytes([devinfo]) + plaintext
    counter_bytes = (counter & 0xFFFFFFFF).to_bytes(4, "little")
    nonce = bytes.fromhex(mac.replace(":", "").replace("-", "")) + BTHOME_UUID16_LE + bytes([devinfo]) + counter_bytes
    sealed = AESCCM(bindkey, tag_length=4).encrypt(nonce, plaintext, None)
    return bytes([devinfo]) + sealed[:-4] + counter_bytes + sealed[-4:]
