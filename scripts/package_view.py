"""Build build/pkgview/carewatch/: the installed package layout, made of symlinks to the source tree.

The stage folders (gateway/, ingest/, scoring/, api/, dashboard/, firmware_sim/, notify/) are installed as
``carewatch.<stage>`` through setuptools ``package-dir`` (see ARCHITECTURE.md). Static tools that read source
files (import-linter, mypy) cannot follow that mapping, so ``make lint`` points them at this view, where
``carewatch/gateway`` is a symlink to ``gateway/`` and everything in ``carewatch/`` is linked as it is. The view
is rebuilt from pyproject.toml every time (cheap; nothing is copied).

Usage: python scripts/package_view.py [target]   (default build/pkgview); prints the directory to put on the path.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """``carewatch.<stage>`` -> its source folder, from pyproject.toml's ``[tool.setuptools] package-dir``."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return {name: root / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def build(target: Path, root: Path = ROOT) -> Path:
    mapping = package_dirs(root)
    top = target / "carewatch"
    if target.exists():
        shutil.rmtree(target)
    top.mkdir(parents=True)
    for entry in mapping["carewatch"].iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) == 2:
            link = top / parts[1]
            if link.is_symlink() or link.exists():
                raise SystemExit(f"{name}: carewatch/{parts[1]} exists in the source tree and would be shadowed")
            link.symlink_to(folder)
    return target


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "pkgview"
    print(build(where.resolve()))
