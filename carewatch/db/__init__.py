"""Database schema, migrations and connection helpers, shared by every stage."""

from __future__ import annotations

from psycopg_pool import ConnectionPool


def make_pool(dsn: str, *, min_size: int = 1, max_size: int = 4, name: str = "carewatch") -> ConnectionPool:
    """A psycopg connection pool that waits for the database instead of failing on start-up."""
    pool = ConnectionPool(dsn, min_size=min_size, max_size=max_size, name=name, open=False,
                          kwargs={"application_name": name})
    pool.open(wait=False)
    return pool
