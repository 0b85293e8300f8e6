"""Rules of the dashboard's source that no page test would notice breaking: it never reaches the database (only
the API, as the signed-in person), and every colour it shows comes from carewatch.palette (so the contrast
tests cover it)."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboard"
SOURCES = sorted([*DASHBOARD.glob("*.py"), *(DASHBOARD / "pages").glob("*.py")])
#: Database drivers and Carewatch's own database layer: none may be imported, directly or through a module.
DATABASE = ("psycopg", "psycopg2", "psycopg_pool", "asyncpg", "sqlalchemy", "sqlite3", "carewatch.db")
#: A colour written into the source: #RGB, #RRGGBB or #RRGGBBAA (not an HTML entity such as &#8212;), or a CSS
#: colour function.
COLOUR = re.compile(r"(?<![&\w])#(?:[0-9A-Fa-f]{8}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})\b|\b(?:rgba?|hsla?)\(")


def _package_dirs() -> dict[str, Path]:
    """carewatch.* package -> folder, from pyproject.toml (the one definition of where each package lives)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: REPO / folder for name, folder in config.items()}


def _source_of(module: str, dirs: dict[str, Path]) -> Path | None:
    """The repository file that ``import module`` loads, or None for a module outside the repository."""
    for package in sorted(dirs, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            base = dirs[package].joinpath(*module[len(package):].lstrip(".").split(".")) if module != package \
                else dirs[package]
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def _imports(path: Path, dirs: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports anywhere (module level or inside a function), submodules named by
    ``from package import name`` included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if _source_of(f"{node.module}.{a.name}", dirs) is not None)
    return found


def _forbidden(module: str) -> bool:
    return any(module == bad or module.startswith(bad + ".") for bad in DATABASE)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_dashboard_never_imports_a_database_driver(path: Path) -> None:
    """Follows every carewatch module the file imports, transitively: a helper that pulled in psycopg would
    give the dashboard a way round the API's role scoping and audit trail."""
    dirs = _package_dirs()
    seen: dict[Path, str] = {path: str(path.relative_to(REPO))}
    todo = [path]
    while todo:
        current = todo.pop()
        for module in _imports(current, dirs):
            assert not _forbidden(module), f"{seen[current]} imports {module}"
            source = _source_of(module, dirs)
            if source is not None and source not in seen:
                seen[source] = f"{module} (via {seen[current]})"
                todo.append(source)


def test_importing_the_dashboard_loads_no_database_driver() -> None:
    """The same rule at run time, in a clean interpreter (pages run only inside Streamlit, so the modules)."""
    code = ("import sys, carewatch.dashboard.client, carewatch.dashboard.charts, carewatch.dashboard.ui, "
            "carewatch.dashboard.serve\n"
            f"bad = sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in {DATABASE!r}))\n"
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_no_colour_is_written_into_the_dashboard(path: Path) -> None:
    """Colours live in carewatch.palette, where tests/dashboard/test_palette.py checks their contrast."""
    strings = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
               if t.type in (tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING))]
    found = [(t.start[0], m.group()) for t in strings for m in COLOUR.finditer(t.string)]
    assert not found, f"{path.relative_to(REPO)} writes colours (line, colour): {found}; add them to carewatch.palette"


def test_the_colour_rule_would_catch_the_usual_spellings() -> None:
    assert all(COLOUR.search(s) for s in ('colour="#5F3C99"', "border: 1px solid #fff;", "rgba(0, 0, 0, 0.5)"))
    assert not any(COLOUR.search(s) for s in ("&#8212;", "issue #12", "palette.TIME_OUT"))
