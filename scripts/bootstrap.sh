#!/usr/bin/env bash
# Create the virtualenv and install Carewatch with its dev extras. Works as root and as a normal user.
set -euo pipefail
python="${1:-python3}"
venv="${2:-.venv}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Carewatch needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1)." >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    echo "python venv is missing: on Debian/Ubuntu run 'apt-get install python3-venv'" >&2
    exit 1
  fi
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
extras="dev"
# No PostgreSQL server binaries on this machine: use the ones bundled by the pgserver wheel.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v pg_ctl >/dev/null 2>&1; then
  extras="dev,embedded-pg"
fi
"$venv/bin/python" -m pip install --quiet -e ".[${extras}]"
echo "installed: $venv/bin/carewatch"
