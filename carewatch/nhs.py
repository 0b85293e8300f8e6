"""NHS number validation (modulus 11). The database enforces the same rule (carewatch_nhs_valid)."""

from __future__ import annotations


def nhs_check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None when the result is 10 (such numbers are never issued)."""
    total = sum(int(d) * (10 - i) for i, d in enumerate(first_nine))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(value: str) -> bool:
    digits = value.replace(" ", "")
    if len(digits) != 10 or not digits.isdigit():
        return False
    return nhs_check_digit(digits[:9]) == int(digits[9])


def normalise_nhs_number(value: str) -> str:
    """Strip spaces and validate; ValueError with a reason a person can act on."""
    digits = value.replace(" ", "")
    if len(digits) != 10 or not digits.isdigit():
        raise ValueError("an NHS number has exactly 10 digits")
    if not is_valid_nhs_number(digits):
        raise ValueError("NHS number check digit is wrong (modulus 11): please re-check the number")
    return digits
