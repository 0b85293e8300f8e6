"""Database login accounts for the roles migrations create (``carewatch_app``, ``carewatch_report``).

The roles themselves are NOLOGIN groups made by migration 0008; a deployment signs its services in with a login
account that is a member of one (docs/security.md). Roles are cluster-wide and several databases on one server
may run this at once, so every step tolerates "it already exists".
"""

from __future__ import annotations

import contextlib
from typing import Literal

import psycopg
from psycopg import sql

GROUPS = {"app": "carewatch_app", "report": "carewatch_report"}


def ensure_login(conn: psycopg.Connection, name: str, group: Literal["app", "report"],
                 password: str | None) -> None:
    """Create (or update) login ``name`` as a member of the group, with this password (None: keep/none).

    The account gets nothing but the group's privileges: no superuser, no CREATEROLE, no CREATEDB, and it owns
    nothing, so it cannot alter, disable or drop what the group may only use."""
    role = GROUPS[group]
    ident = sql.Identifier(name)
    assert conn.autocommit, "role statements run one by one (a failed CREATE must not abort the rest)"
    with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))  # fails when made before (or just now)
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS").format(ident))
    if password is not None:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(password)))
    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), ident))
