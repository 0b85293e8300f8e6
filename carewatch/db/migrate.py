"""Apply the ordered SQL migrations in ``migrations/``; idempotent and recorded in ``schema_migrations``.

A migration is ``NNNN_name.sql``. Where the store differs, a migration has variants ``NNNN_name.plain.sql`` and
``NNNN_name.timescale.sql``; the TimescaleDB one is used when the extension is available on the server. A file
whose first line is ``-- carewatch: no-transaction`` runs statement by statement in autocommit (TimescaleDB
continuous aggregates cannot be created inside a transaction).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from carewatch.db import one

MIGRATIONS_PACKAGE = "carewatch.db"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(plain|timescale))?\.sql$")
_LOCK_KEY = 0x43415245  # pg_advisory_lock key: 'CARE'


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    variant: str | None
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith("-- carewatch: no-transaction")


def available_migrations(timescale: bool) -> list[Migration]:
    """The migrations to apply on a server with (or without) TimescaleDB, in order."""
    folder = resources.files(MIGRATIONS_PACKAGE) / "migrations"
    by_version: dict[int, Migration] = {}
    wanted = "timescale" if timescale else "plain"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        match = _NAME.match(entry.name)
        if not match:
            continue
        version, name, variant = int(match[1]), match[2], match[3]
        if variant not in (None, wanted):
            continue
        if version in by_version:
            raise RuntimeError(f"two migrations share version {version:04d}")
        by_version[version] = Migration(version, name, variant, entry.read_text())
    return [by_version[v] for v in sorted(by_version)]


def timescale_available(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    return row is not None


def _split_statements(sql: str) -> list[str]:
    """Split a no-transaction migration on semicolons at line ends (its statements have no $$ bodies with ;)."""
    parts, current = [], []
    for line in sql.splitlines():
        current.append(line)
        if line.rstrip().endswith(";") and not line.lstrip().startswith("--"):
            parts.append("\n".join(current))
            current = []
    if "".join(current).strip():
        parts.append("\n".join(current))
    return [p for p in parts if p.strip() and not all(x.strip().startswith("--") for x in p.splitlines() if x)]


def migrate(dsn: str) -> list[str]:
    """Bring the database at ``dsn`` up to date. Returns the names of the migrations applied now."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY, name text NOT NULL, variant text,
                       checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {row[0]: row[1] for row in conn.execute("SELECT version, checksum FROM schema_migrations")}
            for mig in available_migrations(timescale_available(conn)):
                if mig.version in done:
                    continue
                label = f"{mig.version:04d}_{mig.name}" + (f" ({mig.variant})" if mig.variant else "")
                if mig.transactional:
                    with conn.transaction():
                        conn.execute(mig.sql)
                        _record(conn, mig)
                else:
                    for statement in _split_statements(mig.sql):
                        conn.execute(statement)
                    _record(conn, mig)
                applied_now.append(label)
            if one(conn.execute("SELECT to_regproc('carewatch_apply_grants')"))[0] is not None:
                conn.execute("SELECT carewatch_apply_grants()")  # every run: later migrations' tables too
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _record(conn: psycopg.Connection, mig: Migration) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, name, variant, checksum) VALUES (%s, %s, %s, %s)",
        (mig.version, mig.name, mig.variant, mig.checksum),
    )
