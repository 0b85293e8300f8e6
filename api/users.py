"""User accounts: the functions behind the ``/users`` endpoints, ``carewatch users`` and the demo seeding.

Passwords are hashed with argon2id (argon2-cffi defaults). A user is never deleted, only disabled, because the
audit log names them. Scope columns follow the role: care staff and managers belong to a site, a GP to a
practice, a council user to a council; the database checks the same rules.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib import resources
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.rows import dict_row

from carewatch.api import sessions
from carewatch.api.errors import constraint_columns
from carewatch.db import one


class Role(StrEnum):
    CARE_STAFF = "care_staff"
    MANAGER = "manager"
    GP = "gp"
    NURSE = "nurse"  # a nursing home's nurse (site) or a community nurse (practice)
    COUNCIL = "council"
    ADMIN = "admin"


MIN_PASSWORD_LENGTH = 12
MIN_DISTINCT_CHARACTERS = 5
MAX_PASSWORD_LENGTH = 256
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.@-]{1,63}$"
_USERNAME = re.compile(USERNAME_PATTERN)
_HASHER = PasswordHasher()
#: Verified against when the username is unknown, so a failed login takes as long either way.
_DUMMY_HASH = _HASHER.hash("not-a-real-password-0")

_COLUMNS = ("username, full_name, role, site_id, practice_code, council, active, created_at, password_hash, "
            "gateway_id")


class UserError(ValueError):
    """A user could not be created or changed; the message says why in plain words, ``fields`` which of the
    user's fields are to blame (the API's field-level 422)."""

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True)
class User:
    username: str
    full_name: str
    role: Role
    site_id: str | None
    practice_code: str | None
    council: str | None
    active: bool
    created_at: datetime
    password_version: str  # changes whenever the password does: refresh tokens carry it
    gateway_id: str | None = None  # set: this care_staff account is that gateway's own (may read its bind keys)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> User:
        return cls(
            username=row["username"],
            full_name=row["full_name"],
            role=Role(row["role"]),
            site_id=row["site_id"],
            practice_code=row["practice_code"],
            council=row["council"],
            active=row["active"],
            created_at=row["created_at"],
            password_version=password_version(row["password_hash"]),
            gateway_id=row.get("gateway_id"),
        )


def password_version(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def hash_password(password: str, username: str | None = None) -> str:
    check_password_policy(password, username)
    return _HASHER.hash(password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The deny-list shipped with the package (api/common_passwords.txt), lower case."""
    text = resources.files("carewatch.api").joinpath("common_passwords.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def check_password_policy(password: str, username: str | None = None) -> None:
    """Length (12-256), not mostly one or two characters, not a common or published password (also with digits
    or symbols added at the end), and not the username. No other composition rules (NCSC guidance)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must be at least {MIN_PASSWORD_LENGTH} characters", "password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"password must be at most {MAX_PASSWORD_LENGTH} characters", "password")
    folded = password.strip().lower()
    if len(set(folded)) < MIN_DISTINCT_CHARACTERS:
        raise UserError(f"password must use at least {MIN_DISTINCT_CHARACTERS} different characters", "password")
    core = folded.rstrip("0123456789!?.@#$%&*_- ")
    listed = common_passwords()
    if not core or folded in listed or core in listed or folded.replace(" ", "") in listed:
        raise UserError("password is too common (it is on a list of published passwords): choose another",
                        "password")
    if username and (folded == username.strip().lower() or username.strip().lower() in folded):
        raise UserError("password must not contain the username", "password")


def normalise_username(username: str) -> str:
    name = username.strip().lower()
    if not _USERNAME.match(name):
        raise UserError("username must be 2-64 characters: lower-case letters, digits and _ . @ -", "username")
    return name


def check_scope(role: Role | str, site_id: str | None, practice_code: str | None, council: str | None) -> None:
    """Each role needs its scope (and only its scope), so a user can never see more than intended."""
    role = Role(role)
    needs = {
        Role.CARE_STAFF: ("site", "site_id", site_id),
        Role.MANAGER: ("site", "site_id", site_id),
        Role.GP: ("practice", "practice_code", practice_code),
        Role.COUNCIL: ("council", "council", council),
    }
    if role in needs and not needs[role][2]:
        raise UserError(f"a {role.value} user needs a {needs[role][0]}", needs[role][1])
    if role is Role.NURSE and not (site_id or practice_code):
        raise UserError("a nurse user needs a site (nursing home) or a GP practice (community nurse)", "site_id")


def _run(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchone() if cur.description else None
    except psycopg.errors.UniqueViolation:
        raise UserError(f"user {params.get('username')!r} already exists", "username") from None
    except psycopg.errors.ForeignKeyViolation as exc:
        fields = constraint_columns(conn, exc)
        what = "site" if "site_id" in fields else "gateway" if "gateway_id" in fields else "GP practice"
        raise UserError(f"unknown {what}: create it first", *fields) from None
    except psycopg.errors.CheckViolation as exc:
        raise UserError("the role and its site/practice/council do not match", *constraint_columns(conn, exc)) from None


def create_user(
    conn: psycopg.Connection,
    username: str,
    role: Role | str,
    *,
    password: str,
    full_name: str | None = None,
    site_id: str | None = None,
    practice_code: str | None = None,
    council: str | None = None,
    gateway_id: str | None = None,
) -> User:
    """Create an active user; UserError when the name is taken, the scope is missing or the password is weak."""
    name = normalise_username(username)
    try:
        role = Role(role)
    except ValueError:
        raise UserError(f"role must be one of {', '.join(r.value for r in Role)}", "role") from None
    check_scope(role, site_id, practice_code, council)
    row = _run(
        conn,
        f"""INSERT INTO users (username, full_name, role, site_id, practice_code, council, password_hash,
                               gateway_id)
            VALUES (%(username)s, %(full_name)s, %(role)s, %(site_id)s, %(practice_code)s, %(council)s, %(hash)s,
                    %(gateway_id)s)
            RETURNING {_COLUMNS}""",
        {
            "username": name,
            "full_name": full_name or name,
            "role": role.value,
            "site_id": site_id,
            "practice_code": practice_code,
            "council": council,
            "gateway_id": gateway_id,
            "hash": hash_password(password, name),
        },
    )
    assert row is not None
    return User.from_row(row)


def get_user(conn: psycopg.Connection, username: str) -> User | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_COLUMNS} FROM users WHERE username = %s", (username.strip().lower(),)).fetchone()
    return User.from_row(row) if row else None


def list_users(
    conn: psycopg.Connection,
    *,
    role: Role | str | None = None,
    site_id: str | None = None,
    active: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[User]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT {_COLUMNS} FROM users
                WHERE (%(role)s::text IS NULL OR role = %(role)s)
                  AND (%(site)s::text IS NULL OR site_id = %(site)s)
                  AND (%(active)s::boolean IS NULL OR active = %(active)s)
                ORDER BY username LIMIT %(limit)s OFFSET %(offset)s""",
            {"role": Role(role).value if role else None, "site": site_id, "active": active,
             "limit": limit, "offset": offset},
        ).fetchall()
    return [User.from_row(r) for r in rows]


_UNSET: Any = object()


def update_user(
    conn: psycopg.Connection,
    username: str,
    *,
    full_name: str | None = _UNSET,
    role: Role | str = _UNSET,
    site_id: str | None = _UNSET,
    practice_code: str | None = _UNSET,
    council: str | None = _UNSET,
    active: bool = _UNSET,
    gateway_id: str | None = _UNSET,
) -> User:
    """Change the given fields (others are left alone); UserError when the result would be inconsistent."""
    current = get_user(conn, username)
    if current is None:
        raise UserError(f"no user {username!r}")
    merged: dict[str, Any] = {
        "full_name": current.full_name if full_name is _UNSET else full_name,
        "role": current.role if role is _UNSET else Role(role),
        "site_id": current.site_id if site_id is _UNSET else site_id,
        "practice_code": current.practice_code if practice_code is _UNSET else practice_code,
        "council": current.council if council is _UNSET else council,
        "active": current.active if active is _UNSET else active,
        "gateway_id": current.gateway_id if gateway_id is _UNSET else gateway_id,
    }
    check_scope(merged["role"], merged["site_id"], merged["practice_code"], merged["council"])
    row = _run(
        conn,
        f"""UPDATE users SET full_name = %(full_name)s, role = %(role)s, site_id = %(site_id)s,
                   practice_code = %(practice_code)s, council = %(council)s, active = %(active)s,
                   gateway_id = %(gateway_id)s
            WHERE username = %(username)s RETURNING {_COLUMNS}""",
        {**merged, "role": merged["role"].value, "username": current.username},
    )
    assert row is not None
    changed = [f for f in ("role", "site_id", "practice_code", "council", "gateway_id")
               if merged[f] != getattr(current, f)]
    if changed or not merged["active"]:
        sessions.revoke_user(conn, current.username, "disabled" if not merged["active"] else
                             f"changed: {', '.join(changed)}")
    return User.from_row(row)


def set_password(conn: psycopg.Connection, username: str, password: str) -> None:
    """Set a new password; every session of the user ends (access and refresh tokens alike)."""
    name = username.strip().lower()
    new_hash = hash_password(password, name)
    with conn.transaction():
        cur = conn.execute("UPDATE users SET password_hash = %s WHERE username = %s", (new_hash, name))
    if cur.rowcount == 0:
        raise UserError(f"no user {username!r}")
    sessions.revoke_user(conn, name, "password changed")


def disable_user(conn: psycopg.Connection, username: str) -> None:
    """Disable (never delete: the audit log names users). Takes effect on the user's next request."""
    name = username.strip().lower()
    with conn.transaction():
        cur = conn.execute("UPDATE users SET active = false WHERE username = %s", (name,))
    if cur.rowcount == 0:
        raise UserError(f"no user {username!r}")
    sessions.revoke_user(conn, name, "disabled")


def authenticate(conn: psycopg.Connection, username: str, password: str) -> User | None:
    """The active user with this username and password, or None (same time taken when the user is unknown)."""
    name = username.strip().lower()
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_COLUMNS} FROM users WHERE username = %s", (name,)).fetchone()
    stored = row["password_hash"] if row else _DUMMY_HASH
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or not row["active"]:
        return None
    if _HASHER.check_needs_rehash(stored):
        with conn.transaction():
            conn.execute("UPDATE users SET password_hash = %s WHERE username = %s", (_HASHER.hash(password), name))
        row["password_hash"] = one(conn.execute("SELECT password_hash FROM users WHERE username = %s",
                                            (name,)))[0]
    return User.from_row(row)
