"""The simulated world must not know the detector: firmware_sim/ takes nothing from scoring/ but the NEWS2 chart."""

from __future__ import annotations

import ast
from pathlib import Path

from carewatch.firmware_sim.scenarios import DEFAULT_QUIET_UP_TO, QUIET_UP_TO

SIM = Path(__file__).resolve().parents[2] / "firmware_sim"
#: The NEWS2 chart: staff score sets on paper with it too. Nothing else from scoring/ is allowed (the alert and
#: soft-sign vocabulary is a shared contract, carewatch/alerts.py)...
CHART = "carewatch.scoring.news2"
#: ...but the one writer of the observation_sets table, for `carewatch sim --mode backfill` only (it stores history
#: as the API would; no thresholds, no schedule).
WRITERS = {"backfill.py": {"carewatch.scoring.observation_sets"}}


def scoring_imports(source: str) -> list[tuple[str, set[str]]]:
    """(module, names) of every import of carewatch.scoring... in ``source``, at any depth (function-level too)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("carewatch.scoring"):
            out.append((node.module, {a.name for a in node.names}))
        elif isinstance(node, ast.ImportFrom) and node.module == "carewatch" and any(
                a.name == "scoring" for a in node.names):
            out.append(("carewatch.scoring", {"*"}))
        elif isinstance(node, ast.Import):
            out += [(a.name, {"*"}) for a in node.names if a.name.startswith("carewatch.scoring")]
    return out


def forbidden(source: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    bad = []
    for module, names in scoring_imports(source):
        if module == CHART or module in allowed:
            continue
        bad.append(f"{module}: {', '.join(sorted(names))}")
    return bad


def test_firmware_sim_imports_nothing_from_scoring_but_the_news2_chart() -> None:
    files = sorted(SIM.rglob("*.py"))
    assert len(files) > 10
    found = {f.relative_to(SIM).as_posix(): forbidden(f.read_text(encoding="utf-8"),
                                                      frozenset(WRITERS.get(f.relative_to(SIM).as_posix(), ())))
             for f in files}
    assert {f: b for f, b in found.items() if b} == {}


def test_the_check_catches_what_it_should() -> None:
    """The check itself can fail: thresholds, schedules and whole-package imports are caught, at any depth."""
    assert forbidden("from carewatch.scoring.schedule import CARE_PLAN_ROUND_HOURS")
    assert forbidden("def f():\n    from carewatch.scoring.rules import EXPECTED_INTERVAL\n")
    assert forbidden("import carewatch.scoring.engine")
    assert forbidden("from carewatch import scoring")
    assert not forbidden("from carewatch.scoring.news2 import score_arrays\n"
                         "from carewatch.alerts import AlertKind")


def test_ground_truth_never_expects_silence_before_the_platform_may_call_a_device_silent() -> None:
    """The simulator's own quiet times (not imported) are at least the platform's silence thresholds, so no
    ground-truth row expects a device_silent that the rules could not yet raise."""
    from carewatch.scoring.rules import DEFAULT_EXPECTED_INTERVAL, EXPECTED_INTERVAL

    for kind, quiet in QUIET_UP_TO.items():
        assert quiet >= EXPECTED_INTERVAL.get(kind.value, DEFAULT_EXPECTED_INTERVAL), kind
    assert DEFAULT_QUIET_UP_TO >= DEFAULT_EXPECTED_INTERVAL
