"""NHS number modulus-11 check: Python and the database agree."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch.nhs import is_valid_nhs_number, normalise_nhs_number


@pytest.mark.parametrize("number", ["943 476 5919", "9434765919", "4010232137"])
def test_valid_numbers(number: str) -> None:
    assert is_valid_nhs_number(number)


@pytest.mark.parametrize("number", ["9434765918", "943476591", "94347659190", "94347659a9", "1234567890"])
def test_invalid_numbers(number: str) -> None:
    assert not is_valid_nhs_number(number)


def test_normalise_explains() -> None:
    assert normalise_nhs_number("943 476 5919") == "9434765919"
    with pytest.raises(ValueError, match="check digit"):
        normalise_nhs_number("9434765918")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_database_check_agrees(database: str, number: str) -> None:
    with psycopg.connect(database) as conn:
        (db_says,) = conn.execute("SELECT carewatch_nhs_valid(%s)", (number,)).fetchone()
    assert db_says == is_valid_nhs_number(number)
