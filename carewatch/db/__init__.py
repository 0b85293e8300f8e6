"""Database schema, migrations and connection helpers, shared by every stage."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from psycopg import Cursor
from psycopg_pool import ConnectionPool

Row = TypeVar("Row")


def one(cursor: Cursor[Row]) -> Row:
    """The row of a query that always returns one (an aggregate, ``now()``, ``RETURNING``, a row just locked):
    ``one(conn.execute(...))[0]`` instead of ``fetchone()[0]``, so a missing row is a clear error, not a TypeError."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("the query returned no row")
    return row


def any_of(filters: Iterable[tuple[str, Iterable[Any] | None]], params: list[Any]) -> str:
    """SQL `` AND <column> = ANY(%b)`` for each (column, values) whose values are given (None: no filter), each list
    appended to ``params`` in order. The columns are the caller's own SQL, never input."""
    sql = ""
    for column, values in filters:
        if values is not None:
            sql += f" AND {column} = ANY(%b)"
            params.append(list(values))
    return sql


def text_array(values: Iterable[str]) -> str:
    """A ``text[]`` literal of ``values``, for ``%s::text[]``: the same array psycopg's list dumper sends, built
    at C speed (``str.join``). psycopg's dumper checks and converts each element in Python (~5 us each): the scorer
    sends a few arrays of every id of a batch, and the (kind, id, alert kind) keys of every finding, per batch."""
    items = list(values)
    if not items:
        return "{}"
    joined = '","'.join(items)
    if '"' in joined or "\\" in joined:  # rare: escape each element
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in items)
    return '{"' + joined + '"}'


def make_pool(dsn: str, *, min_size: int = 1, max_size: int = 4, name: str = "carewatch") -> ConnectionPool:
    """A psycopg connection pool that waits for the database instead of failing on start-up."""
    pool = ConnectionPool(dsn, min_size=min_size, max_size=max_size, name=name, open=False,
                          kwargs={"application_name": name})
    pool.open(wait=False)
    return pool
