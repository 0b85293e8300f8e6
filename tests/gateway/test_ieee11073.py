from __future__ import annotations

from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import pytest
from conformance import conformance_params
from hypothesis import given
from hypothesis import strategies as st

from carewatch.firmware_sim.frames import encode_sfloat_auto, pack_sfloat
from carewatch.gateway.frames import FrameError
from carewatch.gateway.ieee11073 import (
    FLOAT_SPECIALS,
    SFLOAT_SPECIALS,
    Special,
    decode_float,
    decode_sfloat,
    float_from_raw,
    float_parts,
    sfloat_from_raw,
    sfloat_parts,
)

SPECIAL_NAMES = {"NaN": Special.NAN, "NRes": Special.NRES, "+INF": Special.POS_INF, "-INF": Special.NEG_INF,
                 "RESERVED": Special.RESERVED}


def _numeric_cases(section: str):
    return lambda doc: [(c["id"], c) for c in doc["cases"] if c["section"] == section and c["bytes_hex"]]


def _decode(section: str, data: bytes) -> float | Special:
    return decode_sfloat(data) if section == "sfloat" else decode_float(data)


@pytest.mark.parametrize("case", conformance_params("gatt_cases.json", _numeric_cases("sfloat")) +
                         conformance_params("gatt_cases.json", _numeric_cases("float32")))
def test_conformance_numbers(case: dict[str, Any]) -> None:
    result = _decode(case["section"], bytes.fromhex(case["bytes_hex"]))
    expected = case["expected"]
    if "special" in expected:
        assert result is SPECIAL_NAMES[expected["special"]]
    else:
        assert result == pytest.approx(expected["value"], rel=1e-12)


def _nonconformant_numbers(doc: dict[str, Any]):
    vectors = doc["known_nonconformant_vectors"]["vectors"]
    return [(f"{v['type']}-{v['bytes_hex']}", v) for v in vectors if v["type"] in ("SFLOAT", "FLOAT")]


@pytest.mark.parametrize("vector", conformance_params("gatt_cases.json", _nonconformant_numbers))
def test_biased_exponent_decoding_is_not_reproduced(vector: dict[str, Any]) -> None:
    """bluetooth-sig-python uses a biased exponent; we must give the IEEE-11073 value, not its claim."""
    data = bytes.fromhex(vector["bytes_hex"])
    result = decode_sfloat(data) if vector["type"] == "SFLOAT" else decode_float(data)
    assert result != pytest.approx(vector["bluetooth_sig_python_claims"])
    assert result == pytest.approx(vector["ieee11073_value"], rel=1e-6)


def _spezi(doc: dict[str, Any]):
    return [(c["id"], c) for c in doc["cases"] if c["id"] == "sfloat-spezi-value-semantics"]


@pytest.mark.parametrize("case", conformance_params("gatt_cases.json", _spezi))
def test_spezi_value_semantics(case: dict[str, Any]) -> None:
    expected = case["expected"]
    for exponent, mantissa, value in expected["MedFloat16(exponent,mantissa) -> double"]:
        assert decode_sfloat(pack_sfloat(mantissa, exponent)) == pytest.approx(value, rel=1e-12)
    for (exp_in, man_in), (exp_out, man_out) in expected["normalised (exponent,mantissa)"]:
        encoded = encode_sfloat_auto(man_in * 10.0**exp_in)
        assert sfloat_parts(int.from_bytes(encoded, "little")) == (man_out, exp_out)
    # Spezi saturates out-of-range components to +/-infinity; our packer refuses instead (documented choice:
    # a simulator must never emit INF by accident). Both agree the components are not representable.
    for exponent, mantissa in expected["overflow -> +/-infinity"]:
        with pytest.raises(ValueError):
            pack_sfloat(mantissa, exponent)


def test_decimal_scaling_has_no_float_noise() -> None:
    assert decode_sfloat(pack_sfloat(365, -1)) == 36.5
    assert decode_sfloat(pack_sfloat(1234, -2)) == 12.34
    assert str(decode_sfloat(pack_sfloat(101, -1))) == "10.1"


def _value_is_nearest_float_to_exact_decimal(raw: int, from_raw: Callable[[int], Any], specials: Mapping[int, Any],
                                              parts: Callable[[int], tuple[int, int]]) -> tuple[int, int] | None:
    """A special raw value decodes to its special; any other to the float nearest mantissa × 10^exponent, whose
    (mantissa, exponent) it returns."""
    result = from_raw(raw)
    if raw in specials:
        assert result is specials[raw]
        return None
    mantissa, exponent = parts(raw)
    assert result == float(Fraction(mantissa) * Fraction(10) ** exponent)
    return mantissa, exponent


@given(st.integers(0, 0xFFFF))
def test_sfloat_value_is_nearest_float_to_exact_decimal(raw: int) -> None:
    decoded = _value_is_nearest_float_to_exact_decimal(raw, sfloat_from_raw, SFLOAT_SPECIALS, sfloat_parts)
    if decoded is not None:
        mantissa, exponent = decoded
        assert -2048 <= mantissa <= 2047 and -8 <= exponent <= 7


@given(st.integers(0, 0xFFFFFFFF))
def test_float_value_is_nearest_float_to_exact_decimal(raw: int) -> None:
    _value_is_nearest_float_to_exact_decimal(raw, float_from_raw, FLOAT_SPECIALS, float_parts)


@given(st.binary(max_size=6), st.integers(0, 8))
def test_short_buffers_raise_frame_error(data: bytes, offset: int) -> None:
    for decode, width in ((decode_sfloat, 2), (decode_float, 4)):
        if len(data) >= offset + width:
            decode(data, offset)
        else:
            with pytest.raises(FrameError):
                decode(data, offset)
