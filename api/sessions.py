"""Sign-in sessions and failed sign-ins: the one writer of ``auth_sessions`` and ``login_failures``.

A session is one sign-in: a family of refresh tokens of which only the newest is valid. The table keeps a
SHA-256 of that token's id, never the token. Refreshing swaps the hash (rotation); presenting an older token of
the family means it was copied, so the whole family is revoked and both holders must sign in again. Access
tokens carry the session id and die with the session: disabling a user, changing their password or their role
revokes every session of theirs at once, not at the next token expiry.

Failed sign-ins are rows, not process memory, so the limits hold across restarts and across API workers.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg


def _digest(jti: str) -> str:
    return hashlib.sha256(jti.encode()).hexdigest()


def start(conn: psycopg.Connection, username: str, jti: str, expires_at: datetime) -> str:
    """A new session whose current refresh token has id ``jti``; returns the session id (committed at once, so
    the tokens naming it work on any connection)."""
    session_id = str(uuid.uuid4())
    conn.execute("""INSERT INTO auth_sessions (session_id, username, refresh_hash, expires_at)
                    VALUES (%s, %s, %s, %s)""", (session_id, username, _digest(jti), expires_at))
    conn.commit()
    return session_id


@dataclass(frozen=True)
class Rotation:
    ok: bool
    reason: str = ""  # when not ok: 'unknown', 'revoked', 'expired', 'reused'


def rotate(conn: psycopg.Connection, session_id: str, username: str, presented_jti: str, new_jti: str,
           expires_at: datetime) -> Rotation:
    """Swap the session's current refresh token for ``new_jti``, if ``presented_jti`` is the current one.
    A token of the family that is no longer current revokes the family (reuse = theft)."""
    with conn.transaction():
        row = conn.execute(
            """SELECT refresh_hash, revoked_at IS NOT NULL, expires_at <= now() FROM auth_sessions
               WHERE session_id = %s AND username = %s FOR UPDATE""", (session_id, username)).fetchone()
        if row is None:
            return Rotation(False, "unknown")
        current, revoked, expired = row
        if revoked:
            return Rotation(False, "revoked")
        if expired:
            return Rotation(False, "expired")
        if current != _digest(presented_jti):
            reused = True
        else:
            reused = False
            conn.execute("""UPDATE auth_sessions SET refresh_hash = %s, refreshed_at = now(), expires_at = %s
                        WHERE session_id = %s""", (_digest(new_jti), expires_at, session_id))
    if reused:
        # Committed now: the caller answers 401, and the request's connection rolls back on an error answer.
        conn.execute("UPDATE auth_sessions SET revoked_at = now(), revoked_why = 'refresh token reused' "
                     "WHERE session_id = %s", (session_id,))
        conn.commit()
        return Rotation(False, "reused")
    return Rotation(True)


def is_active(conn: psycopg.Connection, session_id: str, username: str) -> bool:
    row = conn.execute("""SELECT 1 FROM auth_sessions WHERE session_id = %s AND username = %s
                            AND revoked_at IS NULL AND expires_at > now()""", (session_id, username)).fetchone()
    return row is not None


def revoke_user(conn: psycopg.Connection, username: str, why: str) -> int:
    """Revoke every live session of this user (password, role or scope change, disabling); returns how many."""
    with conn.transaction():
        cur = conn.execute("""UPDATE auth_sessions SET revoked_at = now(), revoked_why = %s
                              WHERE username = %s AND revoked_at IS NULL""", (why, username))
    return cur.rowcount


# ------------------------------------------------------------------------------------------------------------
# failed sign-ins
# ------------------------------------------------------------------------------------------------------------
def retry_after(conn: psycopg.Connection, username: str, client: str, *, per_account: int, per_client: int,
                window_s: int) -> int | None:
    """Seconds until a sign-in may be tried again, or None: blocked when this account has ``per_account``
    failures in the window (from anywhere), or this client address ``per_client`` (whatever the usernames)."""
    row = conn.execute(
        """SELECT greatest(
              (SELECT extract(epoch FROM at + make_interval(secs => %(w)s) - now()) FROM login_failures
               WHERE username = %(user)s AND at > now() - make_interval(secs => %(w)s)
               ORDER BY at DESC OFFSET %(na)s LIMIT 1),
              (SELECT extract(epoch FROM at + make_interval(secs => %(w)s) - now()) FROM login_failures
               WHERE client = %(client)s AND at > now() - make_interval(secs => %(w)s)
               ORDER BY at DESC OFFSET %(nc)s LIMIT 1))""",
        {"w": window_s, "user": username, "client": client, "na": per_account - 1, "nc": per_client - 1},
    ).fetchone()
    conn.rollback()  # nothing written; leave no transaction open on the request's connection
    wait = row[0] if row else None
    return None if wait is None else max(1, int(float(wait) + 0.999))


def record_failure(conn: psycopg.Connection, username: str, client: str) -> None:
    """Committed at once (the sign-in answers 401, and the request's connection rolls back on error answers)."""
    conn.execute("INSERT INTO login_failures (username, client) VALUES (%s, %s)", (username, client))
    if random.random() < 0.01:  # keep the table small without a job of its own
        conn.execute("DELETE FROM login_failures WHERE at < now() - interval '1 day'")
    conn.commit()


def clear_failures(conn: psycopg.Connection, username: str, client: str) -> None:
    """A successful sign-in forgets this account's failures from this address (not those from elsewhere)."""
    with conn.transaction():
        conn.execute("DELETE FROM login_failures WHERE username = %s AND client = %s", (username, client))
