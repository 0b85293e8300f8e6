"""A scratch PostgreSQL database for the scoring benchmarks: created, migrated, dropped at the end.

``--dsn`` (or ``CAREWATCH_TEST_DSN``) names a server we may create databases on; else the local server on
127.0.0.1:5432 when it answers; else a private cluster in a temp dir (``carewatch.embedded``), removed afterwards.
The same order as the test suite's ``pg_server`` fixture, so a bench runs wherever the tests run.
``clone_database`` copies a prepared database (built once, used by several phases of a bench) the same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from carewatch.db.migrate import migrate
from carewatch.embedded import EmbeddedPostgres, free_port, port_open, postgres_answers

LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def _server(dsn: str | None) -> Iterator[tuple[str, str]]:
    """(admin DSN, description) of a server to create the scratch database on."""
    dsn = dsn or os.environ.get("CAREWATCH_TEST_DSN")
    if dsn:
        yield dsn, "given server"
        return
    if port_open("127.0.0.1", 5432) and postgres_answers(LOCAL):
        yield LOCAL, "local server 127.0.0.1:5432"
        return
    tmp = Path(tempfile.mkdtemp(prefix="carewatch-bench-"))
    tmp.chmod(0o755)
    private = EmbeddedPostgres(tmp / "pg", free_port())
    try:
        private.start()
        yield private.admin_dsn, "private cluster"
    finally:
        private.stop(mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def scratch_database(dsn: str | None = None, prefix: str = "carewatch_bench", *,
                     keep: bool = False) -> Iterator[tuple[str, str]]:
    """(DSN of a fresh migrated database, where it lives); dropped on exit, even on error, unless ``keep`` (for
    looking into the results afterwards; a private cluster is always removed)."""
    with _server(dsn) as (admin, where):
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        params = conninfo_to_dict(admin)
        params["dbname"] = name
        target = make_conninfo(**params)
        try:
            migrate(target)
            yield target, f"{where}, database {name}"
        finally:
            if keep and where != "private cluster":
                print(f"kept the scratch database: {target}", flush=True)
            else:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def clone_database(dsn: str, prefix: str = "carewatch_bench") -> Iterator[str]:
    """DSN of a file-level copy of the database ``dsn`` names (``CREATE DATABASE ... TEMPLATE``: no session may be
    connected to it meanwhile), on the same server; dropped on exit, even on error."""
    params = conninfo_to_dict(dsn)
    source = params["dbname"]
    admin = make_conninfo(**{**params, "dbname": "postgres"})
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}" STRATEGY FILE_COPY')
    try:
        yield make_conninfo(**{**params, "dbname": name})
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
