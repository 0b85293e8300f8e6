"""Proprietary notification formats of cheap BLE pulse oximeters, behind one interface.

These devices do not implement the SIG PLX service: they stream vendor frames over a "transparent UART"
characteristic. Layouts are reverse-engineered by open-source projects (see the conformance corpus,
``oximeter_proprietary_cases.json``), so the rules are deliberately conservative: "probe off", "no finger"
and "searching" states are flagged (passed on with the flag, never as a clean value) and every documented
"no value" marker becomes ``None`` with reason ``"invalid"``. Supported formats (``FORMATS``):

- ``berrymed``: BerryMed BCI 5-byte packets (sync bit 7 on byte 0 only).
- ``contec``: Contec CMS50D+ 5-byte live packets (same framing, different flag bits) and 3-byte recorded
  entries (``F0|prHigh, pr, spo2``).
- ``jks50f``: JKS50F 69-byte frames ``FF 44 01 ...`` with an additive checksum.
- ``emay``: EMAY SleepO2 / Contec CMS50D-BT ``EB 01`` live frames (checksum ``sum & 0x7F``).
- ``pc60fw``: Viatom/Wellue PC-60FW ``AA 55`` frames with CRC-8/MAXIM.
- ``o2ring``: Viatom legacy O2Ring real-time response (fixed offsets).
- ``jumper``: Jumper JPD-500F ``0x81`` (PR/SpO2/PI) and ``0x80`` (pleth) frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from carewatch.gateway.frames import NULL_INVALID, DecodedFrame, FrameError, present_values
from carewatch.wire import Metric, QualityFlag


# ------------------------------------------------------------------------------------------------------------
# Checksums and outgoing commands
# ------------------------------------------------------------------------------------------------------------
def crc8_maxim(data: bytes) -> int:
    """CRC-8/MAXIM (Dallas 1-Wire: reflected poly 0x31, init 0), as used by the PC-60FW."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def crc8_poly07(data: bytes) -> int:
    """CRC-8 with polynomial 0x07, init 0 (Wellue O2Ring-S 'OxyII' frames)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def contec_ble_command(*payload: int) -> bytes:
    """A Contec-family BLE command (EMAY SleepO2, CMS50D-BT): payload then ``sum(payload) & 0x7F``."""
    return bytes([*payload, sum(payload) & 0x7F])


#: Commands written to FF01 on EMAY / CMS50D-BT oximeters (payload before the checksum byte).
CONTEC_BLE_COMMANDS: dict[str, tuple[int, ...]] = {
    "HELLO": (0x89,),
    "DEVICE_STATE": (0x8E, 0x05),
    "START_REALTIME": (0x9B, 0x01),
    "STOP_REALTIME": (0x9B, 0x7F),
    "GET_BATTERY": (0x86,),
    "HEARTBEAT": (0x9A,),
}

O2RING_LEGACY_REALTIME_REQUEST = bytes.fromhex("aa17e8000000001b")


def o2ring_s_command(cmd: int, seq: int, payload: bytes = b"", flag: int = 0) -> bytes:
    """A Wellue O2Ring-S request: ``A5 cmd ~cmd flag seq len(LE16) payload crc8(0x07)``."""
    body = bytes([0xA5, cmd, ~cmd & 0xFF, flag, seq & 0xFF]) + len(payload).to_bytes(2, "little") + payload
    return body + bytes([crc8_poly07(body)])


# ------------------------------------------------------------------------------------------------------------
# Result building
# ------------------------------------------------------------------------------------------------------------
def _result(
    source: str,
    fields: dict[str, Any],
    *,
    flags: set[QualityFlag],
    details: dict[str, Any],
    invalid: tuple[str, ...] = (),
    metrics: tuple[tuple[Metric, str], ...] = ((Metric.SPO2, "spo2"), (Metric.PULSE_RATE, "pulse_rate")),
    untrusted_ok: tuple[tuple[Metric, str], ...] = (),
) -> DecodedFrame:
    """One DecodedFrame; ``invalid`` names fields that hold a device "no value" marker.

    ``untrusted_ok`` lists device-health values (e.g. battery) that the vitals' quality flags do not describe.
    """
    null_reasons = {key: NULL_INVALID for key in invalid}
    for key in invalid:
        fields[key] = None
    return DecodedFrame(
        source=source,
        fields=fields,
        null_reasons=null_reasons,
        flags=frozenset(flags),
        measurements=present_values([(m, fields.get(k)) for m, k in (*metrics, *untrusted_ok)]),
        unflagged=frozenset(m for m, _ in untrusted_ok),
        details=details,
    )


def _check_five_byte_packet(name: str, data: bytes) -> None:
    if len(data) != 5:
        raise FrameError(f"{name}: packet is {len(data)} bytes, expected 5")
    if not data[0] & 0x80:
        raise FrameError(f"{name}: byte 0 (0x{data[0]:02X}) lacks the sync bit 0x80")
    for index in range(1, 5):
        if data[index] & 0x80:
            raise FrameError(f"{name}: byte {index} (0x{data[index]:02X}) has the sync bit set; only byte 0 may")


def _split_five_byte_packet(name: str, data: bytes, byte0_flags: tuple[str, str, str], wave: str,
                            byte2_flags: tuple[str, str]) -> tuple[int, int, dict[str, Any]]:
    """Check and split the 5-byte sync-bit packet BerryMed BCI and Contec CMS50D+ share: byte 0 signal strength
    and three flags (bits 4-6), byte 1 the waveform, byte 2 bargraph, two flags (bits 4-5) and bit 7 of the pulse
    rate, byte 3 the pulse rate's low 7 bits, byte 4 SpO2. The flags and the waveform are named as each maker
    names them. Returns (SpO2, pulse rate, details)."""
    _check_five_byte_packet(name, data)
    b0, waveform, b2, b3, spo2 = data
    pulse_rate = ((b2 >> 6) & 1) << 7 | b3
    details: dict[str, Any] = {
        "signal_strength": b0 & 0x0F,
        **{flag: bool(b0 & bit) for flag, bit in zip(byte0_flags, (0x10, 0x20, 0x40), strict=True)},
        wave: waveform,
        "bargraph": b2 & 0x0F,
        **{flag: bool(b2 & bit) for flag, bit in zip(byte2_flags, (0x10, 0x20), strict=True)},
        "spo2_raw": spo2,
        "pulse_rate_raw": pulse_rate,
    }
    return spo2, pulse_rate, details


# ------------------------------------------------------------------------------------------------------------
# BerryMed BCI and Contec CMS50D+ (5-byte sync-bit packets)
# ------------------------------------------------------------------------------------------------------------
def decode_berrymed(data: bytes) -> DecodedFrame:
    """One BerryMed BCI packet: signal/probe flags, pleth, bargraph/finger flags, PR (8 bits split), SpO2."""
    spo2, pulse_rate, details = _split_five_byte_packet(
        "berrymed", data, ("no_signal", "probe_unplugged", "pulse_beep"), "pleth", ("no_finger", "pulse_searching"))
    details["pleth"] = details["pleth"] or None  # 0 = invalid
    flags: set[QualityFlag] = set()
    if details["no_signal"]:
        flags.add(QualityFlag.QUESTIONABLE)
    if details["probe_unplugged"] or details["no_finger"]:
        flags.add(QualityFlag.SENSOR_FAULT)
    if details["pulse_searching"]:
        flags.add(QualityFlag.INVALID)
    invalid = tuple(
        key for key, bad in (("spo2", spo2 == 127 or spo2 > 100), ("pulse_rate", pulse_rate == 255)) if bad
    )
    return _result(
        "berrymed", {"spo2": spo2, "pulse_rate": pulse_rate}, flags=flags, details=details, invalid=invalid
    )


def decode_contec(data: bytes) -> DecodedFrame:
    """A Contec CMS50D+ live packet (5 bytes) or recorded entry (3 bytes, first byte ``F0``/``F1``)."""
    if len(data) == 3 and data[0] & 0xFE == 0xF0:
        pulse_rate = (data[0] & 1) << 7 | (data[1] & 0x7F)
        spo2 = data[2]
        details: dict[str, Any] = {"recorded": True, "spo2_raw": spo2, "pulse_rate_raw": pulse_rate}
        invalid = _contec_invalid(spo2, pulse_rate)
        return _result("contec", {"spo2": spo2, "pulse_rate": pulse_rate}, flags=set(), details=details,
                       invalid=invalid)
    spo2, pulse_rate, live = _split_five_byte_packet(
        "contec", data, ("finger_out", "dropping_spo2", "beep"), "pulse_waveform", ("probe_error", "searching"))
    details = {"recorded": False, **live}
    flags: set[QualityFlag] = set()
    if details["finger_out"] or details["probe_error"]:
        flags.add(QualityFlag.SENSOR_FAULT)
    if details["searching"]:
        flags.add(QualityFlag.INVALID)
    return _result(
        "contec",
        {"spo2": spo2, "pulse_rate": pulse_rate},
        flags=flags,
        details=details,
        invalid=_contec_invalid(spo2, pulse_rate),
    )


def _contec_invalid(spo2: int, pulse_rate: int) -> tuple[str, ...]:
    """CMS50D+ sends 0 (no finger) or 127/255 (no reading) where it has no value."""
    bad = []
    if spo2 in (0, 127) or spo2 > 100:
        bad.append("spo2")
    if pulse_rate in (0, 255):
        bad.append("pulse_rate")
    return tuple(bad)


# ------------------------------------------------------------------------------------------------------------
# JKS50F (FFE1 UART, 69-byte frames)
# ------------------------------------------------------------------------------------------------------------
JKS50F_LENGTH = 69


def decode_jks50f(data: bytes) -> DecodedFrame:
    """``FF 44 01 | finger | SpO2 | PR | PI lo7 | PI hi6 | 60 bytes | checksum``; PI in 0.01 %."""
    if len(data) != JKS50F_LENGTH:
        raise FrameError(f"jks50f: frame is {len(data)} bytes, expected {JKS50F_LENGTH}")
    if data[:3] != b"\xff\x44\x01":
        raise FrameError(f"jks50f: frame starts {data[:3].hex()}, expected ff4401")
    expected = (sum(data[:-1]) + 1) & 0xFF
    if data[-1] != expected:
        raise FrameError(f"jks50f: checksum mismatch (frame says 0x{data[-1]:02X}, bytes sum to 0x{expected:02X})")
    finger_present = data[3] == 0
    spo2, pulse_rate = data[4], data[5]
    raw_pi = ((data[6] & 0x7F) | ((data[7] & 0x3F) << 7)) / 100
    flags: set[QualityFlag] = set() if finger_present else {QualityFlag.SENSOR_FAULT}
    invalid = tuple(
        key
        for key, bad in (
            ("spo2", spo2 == 127 or spo2 > 100),
            ("pulse_rate", pulse_rate == 127),
            ("perfusion_index", raw_pi == 81.91 or raw_pi > 20),  # all-ones marker, or beyond any real PI
        )
        if bad
    )
    return _result(
        "jks50f",
        {"spo2": spo2, "pulse_rate": pulse_rate, "perfusion_index": raw_pi},
        flags=flags,
        details={"finger_present": finger_present, "raw_pi": raw_pi},
        invalid=invalid,
        metrics=((Metric.SPO2, "spo2"), (Metric.PULSE_RATE, "pulse_rate"), (Metric.PERFUSION_INDEX, "perfusion_index")),
    )


# ------------------------------------------------------------------------------------------------------------
# EMAY SleepO2 / Contec CMS50D-BT (FF02 notify, 0xEB frames)
# ------------------------------------------------------------------------------------------------------------
EMAY_PULSE_RANGE = (30, 220)


def decode_emay(data: bytes) -> DecodedFrame:
    """``EB 01 05 PR SpO2 7F 00 cks`` live values, or ``EB 00 ...`` (6-byte pulse-wave frame, no vitals).

    PR/SpO2 of 0 or 0xFF mean "no value". A PR outside the device's own 30-220 range or SpO2 above 100 means
    a corrupt frame (the reference decoder drops the whole reading), so it raises FrameError.
    """
    if len(data) < 2 or data[0] != 0xEB:
        raise FrameError(f"emay: frame {data[:2].hex() or '(empty)'} does not start with EB 00 / EB 01")
    if data[1] == 0x00:
        if len(data) != 6:
            raise FrameError(f"emay: pulse-wave frame is {len(data)} bytes, expected 6")
        return DecodedFrame(source="emay", fields={}, details={"frame": "pulse_wave", "payload": data[2:].hex()})
    if data[1] != 0x01:
        raise FrameError(f"emay: unknown frame type 0x{data[1]:02X} (expected 00 pulse wave or 01 values)")
    if len(data) != 8:
        raise FrameError(f"emay: values frame is {len(data)} bytes, expected 8")
    expected = sum(data[:7]) & 0x7F
    if data[7] != expected:
        raise FrameError(f"emay: checksum mismatch (frame says 0x{data[7]:02X}, bytes sum to 0x{expected:02X})")
    pulse_rate, spo2 = data[3], data[4]
    pr_missing, spo2_missing = pulse_rate in (0, 0xFF), spo2 in (0, 0xFF)
    if not pr_missing and not EMAY_PULSE_RANGE[0] <= pulse_rate <= EMAY_PULSE_RANGE[1]:
        raise FrameError(f"emay: pulse rate {pulse_rate} outside the device's range 30-220 (corrupt frame)")
    if not spo2_missing and spo2 > 100:
        raise FrameError(f"emay: SpO2 {spo2} above 100 (corrupt frame)")
    invalid = tuple(key for key, bad in (("spo2", spo2_missing), ("pulse_rate", pr_missing)) if bad)
    return _result(
        "emay",
        {"spo2": spo2, "pulse_rate": pulse_rate},
        flags=set(),
        details={"frame": "values", "spo2_raw": spo2, "pulse_rate_raw": pulse_rate},
        invalid=invalid,
    )


# ------------------------------------------------------------------------------------------------------------
# Viatom / Wellue PC-60FW (Nordic UART, AA 55 frames)
# ------------------------------------------------------------------------------------------------------------
def decode_pc60fw(data: bytes) -> DecodedFrame:
    """``AA 55 | 0F/F0 | len | func | data | CRC-8/MAXIM``; ``len`` counts func, data and CRC.

    func 01: SpO2, PR, PI/10 (0 = no value); func 02: pleth samples (>= 0x80 marks a beat);
    func 03: battery level 0-3.
    """
    if len(data) < 6:
        raise FrameError(f"pc60fw: frame is {len(data)} bytes, the shortest frame is 6")
    if data[:2] != b"\xaa\x55":
        raise FrameError(f"pc60fw: frame starts {data[:2].hex()}, expected aa55")
    declared = 4 + data[3]
    if len(data) != declared:
        raise FrameError(f"pc60fw: frame is {len(data)} bytes but its length byte says {declared}")
    if crc8_maxim(data) != 0:
        raise FrameError(f"pc60fw: CRC-8/MAXIM mismatch (frame says 0x{data[-1]:02X}, "
                         f"bytes give 0x{crc8_maxim(data[:-1]):02X})")
    func, payload = data[4], data[5:-1]
    details: dict[str, Any] = {"type": data[2], "func": func}
    if func == 0x01:
        if len(payload) < 4:
            raise FrameError(f"pc60fw: parameter frame carries {len(payload)} data bytes, expected at least 4")
        spo2, pulse_rate, pi = payload[0], payload[1], payload[3] / 10
        details.update(spo2_raw=spo2, pulse_rate_raw=pulse_rate, status=payload[4:].hex())
        invalid = tuple(
            key for key, bad in (("spo2", spo2 == 0 or spo2 > 100), ("pulse_rate", pulse_rate == 0),
                                 ("perfusion_index", pi == 0)) if bad
        )
        return _result(
            "pc60fw",
            {"spo2": spo2, "pulse_rate": pulse_rate, "perfusion_index": pi},
            flags=set(),
            details=details,
            invalid=invalid,
            metrics=(
                (Metric.SPO2, "spo2"),
                (Metric.PULSE_RATE, "pulse_rate"),
                (Metric.PERFUSION_INDEX, "perfusion_index"),
            ),
        )
    if func == 0x02:
        details["waveform"] = [s & 0x7F for s in payload]
        details["beats"] = [i for i, s in enumerate(payload) if s & 0x80]
        return DecodedFrame(source="pc60fw", fields={}, details=details)
    if func == 0x03:
        if not payload:
            raise FrameError("pc60fw: battery frame carries no level byte")
        level = payload[0]
        if level > 3:
            raise FrameError(f"pc60fw: battery level {level} outside 0-3")
        details["battery_level"] = level
        return _result("pc60fw", {"battery_pct": round(level * 100 / 3)}, flags=set(), details=details,
                       metrics=(), untrusted_ok=((Metric.BATTERY, "battery_pct"),))
    details["payload"] = payload.hex()
    return DecodedFrame(source="pc60fw", fields={}, details=details)


# ------------------------------------------------------------------------------------------------------------
# Viatom legacy O2Ring and Jumper JPD-500F
# ------------------------------------------------------------------------------------------------------------
def decode_o2ring(data: bytes) -> DecodedFrame:
    """Legacy O2Ring real-time response: SpO2 @7, HR @8, battery @14, movement @16, PI @17, worn @18.

    Worn with SpO2 or HR still 0 means the ring is calibrating (no values yet). PI's scaling is not
    documented, so it is reported raw and not used as a measurement.
    """
    if len(data) < 19:
        raise FrameError(f"o2ring: response is {len(data)} bytes, needs at least 19")
    spo2, heart_rate, battery = data[7], data[8], data[14]
    worn = data[18] != 0
    calibrating = worn and (spo2 == 0 or heart_rate == 0)
    if battery > 100:
        raise FrameError(f"o2ring: battery byte {battery} is not a percentage")
    flags: set[QualityFlag] = set()
    if not worn:
        flags.add(QualityFlag.SENSOR_FAULT)
    if calibrating:
        flags.add(QualityFlag.INVALID)
    invalid = tuple(
        key for key, bad in (("spo2", spo2 == 0 or spo2 > 100), ("pulse_rate", heart_rate in (0, 0xFF))) if bad
    )
    return _result(
        "o2ring",
        {"spo2": spo2, "pulse_rate": heart_rate, "battery_pct": battery},
        flags=flags,
        details={"worn": worn, "calibrating": calibrating, "movement": data[16], "perfusion_index_raw": data[17]},
        invalid=invalid,
        untrusted_ok=((Metric.BATTERY, "battery_pct"),),
    )


def decode_jumper(data: bytes) -> DecodedFrame:
    """Jumper ``81 PR SpO2 PI`` (PR 255 / SpO2 127 / PI 0 = no value) or ``80 ...`` pleth samples.

    PI scaling is inconsistently documented (raw % or /10), so it stays raw in ``details``.
    """
    if not data:
        raise FrameError("jumper: empty frame")
    if data[0] == 0x80:
        return DecodedFrame(source="jumper", fields={}, details={"frame": "pleth", "samples": list(data[1:])})
    if data[0] != 0x81:
        raise FrameError(f"jumper: unknown frame type 0x{data[0]:02X} (expected 80 pleth or 81 values)")
    if len(data) < 4:
        raise FrameError(f"jumper: values frame is {len(data)} bytes, needs at least 4")
    pulse_rate, spo2, pi_raw = data[1], data[2], data[3]
    invalid = tuple(key for key, bad in (("spo2", spo2 == 127 or spo2 > 100), ("pulse_rate", pulse_rate == 255)) if bad)
    return _result(
        "jumper",
        {"spo2": spo2, "pulse_rate": pulse_rate},
        flags=set(),
        details={"frame": "values", "perfusion_index_raw": pi_raw or None},
        invalid=invalid,
    )


DECODERS: dict[str, Callable[[bytes], DecodedFrame]] = {
    "berrymed": decode_berrymed,
    "contec": decode_contec,
    "jks50f": decode_jks50f,
    "emay": decode_emay,
    "pc60fw": decode_pc60fw,
    "o2ring": decode_o2ring,
    "jumper": decode_jumper,
}
FORMATS = frozenset(DECODERS)


def decode_oximeter(fmt: str, data: bytes) -> DecodedFrame:
    """Decode one complete frame of proprietary format ``fmt`` (one of ``FORMATS``)."""
    decoder = DECODERS.get(fmt.lower())
    if decoder is None:
        raise FrameError(f"unknown oximeter format {fmt!r} (known: {', '.join(sorted(DECODERS))})")
    return decoder(bytes(data))


# ------------------------------------------------------------------------------------------------------------
# Stream framing: notifications do not line up with frames
# ------------------------------------------------------------------------------------------------------------
# A splitter looks at the buffer and returns (bytes to drop as garbage, length of a complete frame at the
# front after that drop, or 0 when more bytes are needed).
def _split_sync_bit(buf: bytearray) -> tuple[int, int]:
    start = next((i for i, b in enumerate(buf) if b & 0x80), len(buf))
    if start == len(buf):
        return len(buf), 0
    for offset in range(1, 5):
        if start + offset >= len(buf):
            return start, 0
        if buf[start + offset] & 0x80:  # a new sync byte inside the packet: the packet was cut short
            return start + offset, 0
    return start, 5


def _split_header(header: bytes, length_of: Callable[[bytearray, int], int | None]) -> Callable[..., Any]:
    def split(buf: bytearray) -> tuple[int, int]:
        start = buf.find(header)
        if start < 0:  # keep a possible partial header at the end
            keep = next((k for k in range(len(header) - 1, 0, -1) if buf.endswith(header[:k])), 0)
            return len(buf) - keep, 0
        length = length_of(buf, start)
        if length is None:
            return start, 0
        if length < 0:  # not a frame after all: skip this header byte
            return start + 1, 0
        return start, length if len(buf) - start >= length else 0

    return split


def _pc60fw_length(buf: bytearray, start: int) -> int | None:
    return None if len(buf) - start < 4 else 4 + buf[start + 3]


def _emay_length(buf: bytearray, start: int) -> int | None:
    if len(buf) - start < 2:
        return None
    return {0x00: 6, 0x01: 8}.get(buf[start + 1], -1)


SPLITTERS: dict[str, Callable[[bytearray], tuple[int, int]]] = {
    "berrymed": _split_sync_bit,
    "contec": _split_sync_bit,
    "pc60fw": _split_header(b"\xaa\x55", _pc60fw_length),
    "emay": _split_header(b"\xeb", _emay_length),
    "jks50f": _split_header(b"\xff\x44", lambda buf, start: JKS50F_LENGTH),
}


class OximeterStream:
    """Split a device's notification byte stream into frames and decode them.

    ``feed`` returns the frames completed by this chunk. Frames that are framed correctly but fail to decode
    (bad checksum) are kept in ``rejected`` as (raw bytes, reason) for dead-lettering; bytes skipped while
    re-synchronising are counted in ``garbage_bytes``. Formats without stream framing (o2ring, jumper) treat
    each notification as one frame.
    """

    MAX_BUFFER = 1024

    def __init__(self, fmt: str, *, keep_rejected: int = 100) -> None:
        fmt = fmt.lower()
        if fmt not in DECODERS:
            raise ValueError(f"unknown oximeter format {fmt!r} (known: {', '.join(sorted(DECODERS))})")
        self.fmt = fmt
        self._split = SPLITTERS.get(fmt)
        self._buffer = bytearray()
        self.rejected: deque[tuple[bytes, str]] = deque(maxlen=keep_rejected)
        self.garbage_bytes = 0

    def feed(self, chunk: bytes) -> list[DecodedFrame]:
        if self._split is None:
            return self._decode_all([bytes(chunk)])
        self._buffer += chunk
        frames: list[bytes] = []
        while self._buffer:
            drop, length = self._split(self._buffer)
            if drop:
                self.garbage_bytes += drop
                del self._buffer[:drop]
            if not length:
                if not drop:
                    break
                continue
            frames.append(bytes(self._buffer[:length]))
            del self._buffer[:length]
        if len(self._buffer) > self.MAX_BUFFER:  # never hold an unbounded partial frame
            self.garbage_bytes += len(self._buffer)
            self._buffer.clear()
        return self._decode_all(frames)

    def _decode_all(self, frames: list[bytes]) -> list[DecodedFrame]:
        decoded = []
        for raw in frames:
            try:
                decoded.append(decode_oximeter(self.fmt, raw))
            except FrameError as exc:
                self.rejected.append((raw, str(exc)))
        return decoded
