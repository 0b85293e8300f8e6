"""The hazard log names the test that proves each mitigation: every test it names must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conformance import REPO_ROOT

HAZARD_LOG = REPO_ROOT / "docs" / "clinical-safety.md"
# `tests/x/test_file.py::test_name`, `test_file.py::test_name` or `::test_name` (same file as the one before)
REFERENCE = re.compile(r"(?:([\w/]*test_\w+\.py))?::(test_\w+)")


def _tests_by_file() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (REPO_ROOT / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        out.setdefault(path.name, set()).update(names)
    return out


def test_every_test_named_in_the_hazard_log_exists() -> None:
    tests = _tests_by_file()
    missing: list[str] = []
    checked = 0
    for line in HAZARD_LOG.read_text(encoding="utf-8").splitlines():
        current: str | None = None
        for file_part, name in REFERENCE.findall(line):
            if file_part:
                current = Path(file_part).name
            checked += 1
            if current is None:
                if not any(name in names for names in tests.values()):
                    missing.append(f"::{name}")
            elif name not in tests.get(current, set()):
                missing.append(f"{current}::{name}")
    assert checked > 50, "the hazard log should name the tests behind its mitigations"
    assert not missing, f"tests named in docs/clinical-safety.md that do not exist: {missing}"


def test_every_hazard_id_the_code_cites_is_in_the_log() -> None:
    logged = set(re.findall(r"^\| (H-[A-Z]+-\d+) \|", HAZARD_LOG.read_text(encoding="utf-8"), flags=re.MULTILINE))
    cited: dict[str, str] = {}
    for folder in ("carewatch", "gateway", "ingest", "scoring", "api", "dashboard", "firmware_sim", "notify"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for hazard in re.findall(r"\bH-[A-Z]+-\d+\b", path.read_text(encoding="utf-8")):
                cited.setdefault(hazard, str(path.relative_to(REPO_ROOT)))
    assert len(logged) > 40
    unknown = {h: where for h, where in cited.items() if h not in logged}
    assert not unknown, f"hazard ids cited in code but not in docs/clinical-safety.md: {unknown}"
