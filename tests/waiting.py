"""The one polling helper of the test suite: wait until something is true, or fail saying what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str = "the condition", *, interval: float = 0.05,
               describe: Callable[[], str] | None = None, error: type[Exception] = AssertionError) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and return that; after
    ``timeout`` seconds raise ``error`` naming ``what`` (and ``describe()``, the state at the time, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            state = f" ({describe()})" if describe is not None else ""
            raise error(f"timed out after {timeout:g}s waiting for {what}{state}")
        time.sleep(interval)
