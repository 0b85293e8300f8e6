"""Every ``type: ignore`` in the shipped code names its error code and says why (after it on the line, or in a
comment just above it or above the block of ignored lines it belongs to); mypy (``make lint``) reports the
unused ones."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("carewatch", "gateway", "ingest", "scoring", "api", "dashboard", "firmware_sim", "notify")
IGNORE = re.compile(r"#\s*type:\s*ignore(\[[a-z-, ]+\])?(.*)$")


def unjustified(lines: list[str]) -> list[int]:
    bad = []
    for i, line in enumerate(lines):
        match = IGNORE.search(line)
        if match is None:
            continue
        if not match.group(1):
            bad.append(i + 1)  # no error code
            continue
        if match.group(2).strip().startswith("#"):
            continue  # the reason follows on the line
        above = i - 1
        while above >= 0 and IGNORE.search(lines[above]):
            above -= 1
        if above < 0 or not lines[above].lstrip().startswith("#"):
            bad.append(i + 1)
    return bad


def test_every_type_ignore_is_explained() -> None:
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if bad := unjustified(path.read_text(encoding="utf-8").splitlines()):
                found[path.relative_to(ROOT).as_posix()] = bad
    assert found == {}, f"type: ignore without a code or a reason (file: lines): {found}"


def test_the_check_catches_what_it_should() -> None:
    assert unjustified(["x = f()  # type: ignore"]) == [1]
    assert unjustified(["x = f()  # type: ignore[arg-type]"]) == [1]
    assert unjustified(["x = f()  # type: ignore[arg-type]  # f takes str here"]) == []
    assert unjustified(["# f is untyped", "x = f()  # type: ignore[arg-type]",
                        "y = f()  # type: ignore[arg-type]"]) == []
