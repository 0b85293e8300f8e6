"""External conformance vectors from ``../shared/conformance/`` (see its README), for every test module.

Importable from tests (``pythonpath = ["tests"]`` in pyproject) because pytest's importlib mode cannot import
a conftest. Parameters are built at import time and collapse to one skip, saying why, when the folder is absent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE_DIR = REPO_ROOT.parent / "shared" / "conformance"


def missing_reason(path: Path) -> str:
    return f"conformance vectors not present at {path} (the shared/ folder sits beside the repo in CI)"


def load_conformance(name: str) -> dict[str, Any]:
    """Load ``<name>``; skip the calling test, saying why, when it is absent."""
    path = CONFORMANCE_DIR / name
    if not path.exists():
        pytest.skip(missing_reason(path))
    return json.loads(path.read_text())


def conformance_params(name: str, select: Callable[[dict[str, Any]], Iterable[tuple[str, Any]]]) -> list[Any]:
    """``pytest.param(case, id=...)`` for each (id, case) that ``select`` picks from the file."""
    path = CONFORMANCE_DIR / name
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=missing_reason(path)), id="vectors-missing")]
    return [pytest.param(case, id=case_id) for case_id, case in select(json.loads(path.read_text()))]
