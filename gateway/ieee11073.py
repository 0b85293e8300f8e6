"""IEEE 11073-20601 SFLOAT (16-bit) and FLOAT (32-bit) medical floats, as used by the GATT health profiles.

value = mantissa × 10^exponent, both two's complement (SFLOAT: 4-bit exponent, 12-bit mantissa; FLOAT:
8-bit exponent, 24-bit mantissa). Five bit patterns (exponent 0 only) are special values: they mean "no
number" and are returned as a :class:`Special`, never as a float, so NaN can never reach a chart.
"""

from __future__ import annotations

from enum import StrEnum

from carewatch.gateway.frames import FrameError


class Special(StrEnum):
    NAN = "NaN"
    NRES = "NRes"  # "not at this resolution"
    POS_INF = "+INF"
    NEG_INF = "-INF"
    RESERVED = "reserved"


SFLOAT_SPECIALS: dict[int, Special] = {
    0x07FF: Special.NAN,
    0x0800: Special.NRES,
    0x07FE: Special.POS_INF,
    0x0802: Special.NEG_INF,
    0x0801: Special.RESERVED,
}
FLOAT_SPECIALS: dict[int, Special] = {
    0x007FFFFF: Special.NAN,
    0x00800000: Special.NRES,
    0x007FFFFE: Special.POS_INF,
    0x00800002: Special.NEG_INF,
    0x00800001: Special.RESERVED,
}


def scale(mantissa: int, exponent: int) -> float:
    """mantissa × 10^exponent as the float nearest the exact decimal (365, -1 gives exactly 36.5).

    Dividing two integers is correctly rounded in Python, unlike ``mantissa * 0.1``.
    """
    return float(mantissa * 10**exponent) if exponent >= 0 else mantissa / 10**-exponent


def _signed(raw: int, bits: int) -> int:
    return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


def sfloat_parts(raw: int) -> tuple[int, int]:
    """(mantissa, exponent) of a 16-bit SFLOAT bit pattern."""
    return _signed(raw & 0x0FFF, 12), _signed((raw >> 12) & 0x0F, 4)


def float_parts(raw: int) -> tuple[int, int]:
    """(mantissa, exponent) of a 32-bit FLOAT bit pattern."""
    return _signed(raw & 0x00FFFFFF, 24), _signed((raw >> 24) & 0xFF, 8)


def sfloat_from_raw(raw: int) -> float | Special:
    if raw in SFLOAT_SPECIALS:
        return SFLOAT_SPECIALS[raw]
    return scale(*sfloat_parts(raw))


def float_from_raw(raw: int) -> float | Special:
    if raw in FLOAT_SPECIALS:
        return FLOAT_SPECIALS[raw]
    return scale(*float_parts(raw))


def decode_sfloat(data: bytes, offset: int = 0) -> float | Special:
    """The little-endian SFLOAT at ``offset``."""
    if len(data) < offset + 2:
        raise FrameError(f"SFLOAT at offset {offset} needs 2 bytes, only {max(len(data) - offset, 0)} left")
    return sfloat_from_raw(int.from_bytes(data[offset : offset + 2], "little"))


def decode_float(data: bytes, offset: int = 0) -> float | Special:
    """The little-endian FLOAT at ``offset``."""
    if len(data) < offset + 4:
        raise FrameError(f"FLOAT at offset {offset} needs 4 bytes, only {max(len(data) - offset, 0)} left")
    return float_from_raw(int.from_bytes(data[offset : offset + 4], "little"))
