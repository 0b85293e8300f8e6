"""ARCHITECTURE.md stays true: every module, folder and table it names exists, and its table of writers is the one
tests/test_table_writers.py enforces (same owners, every shared table listed)."""

from __future__ import annotations

import re

from conformance import REPO_ROOT
from test_table_writers import OWNERS, sql_writes

DOC = (REPO_ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
SCHEMA = "\n".join(p.read_text() for p in (REPO_ROOT / "carewatch" / "db" / "migrations").glob("*.sql"))
TABLES = set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", SCHEMA))
#: `path/...` in backquotes: a module (.py), a file with another suffix, or a folder (ending in /)
PATH = re.compile(r"`((?:[\w.-]+/)+[\w.-]*)`")
WRITERS = re.compile(r"^\| `(\w+)` \| `([\w/]+\.py)` \|$", re.MULTILINE)


def test_every_path_it_names_exists() -> None:
    named = set(PATH.findall(DOC))
    assert len(named) > 40
    # build/ is made by `make lint` (scripts/package_view.py), after the tests: not in a fresh clone
    missing = sorted(p for p in named if not (REPO_ROOT / p).exists() and not p.startswith("build/"))
    assert missing == [], f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_its_table_of_writers_is_the_enforced_one() -> None:
    documented = dict(WRITERS.findall(DOC))
    assert set(documented) <= TABLES, f"not tables of the schema: {sorted(set(documented) - TABLES)}"
    assert documented == OWNERS, "ARCHITECTURE.md's writers differ from tests/test_table_writers.py's OWNERS"
    for table, owner in documented.items():  # (test_table_writers checks no other module writes them)
        assert table in {t for _, _, t in sql_writes((REPO_ROOT / owner).read_text(encoding="utf-8"))}, owner


def test_every_table_in_backquotes_is_a_real_table() -> None:
    words = set(re.findall(r"`(\w+)`", DOC))
    tableish = {w for w in words if w in TABLES or w in OWNERS or w.endswith(("_events", "_sets", "_state"))}
    assert tableish - TABLES == set()


def test_the_stage_folders_it_maps_are_the_installed_packages() -> None:
    import tomllib

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    rows = dict(re.findall(r"^\| `(\w+)/` \| `([\w.]+)` \|", DOC, re.MULTILINE))
    assert rows == {folder: name for name, folder in mapping.items()}
