"""Scratch databases for the suite: the session's database and tests that need one of their own."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from carewatch.db.migrate import migrate
from carewatch.db.roles import ensure_login


@contextlib.contextmanager
def fresh_database(pg_server: str, prefix: str = "carewatch_test") -> Iterator[str]:
    """A new, migrated database on ``pg_server``; dropped afterwards (also for tests that need one of their own,
    e.g. because they drop partitions)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(**{**conninfo_to_dict(pg_server), "dbname": name})
    try:
        migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def role_login(pg_server: str, dsn: str, group: str = "app") -> Iterator[str]:
    """A login of this run's own in the database role ``carewatch_<group>`` (cluster-wide, so its name is unique
    and it is dropped afterwards); yields ``dsn`` signed in as it (the test server trusts local connections)."""
    name = f"cw_{group}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        ensure_login(conn, name, group, None)  # type: ignore[arg-type]
    try:
        yield make_conninfo(dsn, user=name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')
