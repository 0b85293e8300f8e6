"""Shared kits and their measurement sessions: the one writer of ``kits`` and ``kit_sessions`` (issue 17).

The tablet starts a session (kit + resident + staff member) when the carer picks a resident and a kit; saving,
choosing another resident, or :data:`~carewatch.ingest.attribution.IDLE` without readings ends it. Ingest reads
the sessions to attribute kit readings (``ingest/store.py``) and advances ``last_reading_at`` through
:func:`note_readings`. Every change to a kit's sessions first locks the kit's row (``FOR UPDATE``); ingest locks
the same rows ``FOR SHARE`` while it attributes, so a reading and a session start never miss each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from carewatch.db import one
from carewatch.ingest.attribution import IDLE, SessionWindow

#: How far a kit device's clock may run ahead of the platform's before the gateway replaces its time (wire.py).
MAX_CLOCK_LEAD = timedelta(minutes=10)
END_REASONS = frozenset({"saved", "switched", "idle", "ended", "replaced"})


class SessionConflict(RuntimeError):
    """The kit already has an open session: the caller must ask to end it first."""

    def __init__(self, open_session: dict[str, Any]) -> None:
        super().__init__(f"kit {open_session['kit_id']} already has an open session ({open_session['session_id']})")
        self.open_session = open_session


class SessionRefused(ValueError):
    """The session cannot be started or ended as asked (the message says why)."""


def ensure_kits(conn: psycopg.Connection, kits: Iterable[tuple[str, str, str]]) -> int:
    """Create kits (kit_id, site_id, name) that do not exist yet; returns how many were new."""
    rows = sorted(set(kits))
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO kits (kit_id, site_id, name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", rows)
        return max(cur.rowcount, 0)


def lock_kits(conn: psycopg.Connection, kit_ids: Sequence[str], *, share: bool = False) -> None:
    """Lock kits' rows in id order (FOR SHARE while attributing readings, FOR UPDATE to change sessions)."""
    if kit_ids:
        mode = "SHARE" if share else "UPDATE"
        conn.execute(f"SELECT kit_id FROM kits WHERE kit_id = ANY(%s) ORDER BY kit_id FOR {mode}", (list(kit_ids),))


_WINDOW_SQL = """SELECT session_id, kit_id, resident_id, started_at, ended_at, last_reading_at FROM kit_sessions
                 WHERE kit_id = ANY(%s) AND started_at <= %s
                   AND (ended_at IS NULL OR ended_at > %s) ORDER BY kit_id, started_at"""


def load_windows(conn: psycopg.Connection, kit_ids: Sequence[str], low: datetime, high: datetime
                 ) -> dict[str, list[SessionWindow]]:
    """Sessions of these kits that may cover a measurement time in [low, high], per kit, sorted by start."""
    out: dict[str, list[SessionWindow]] = {k: [] for k in kit_ids}
    if not kit_ids:
        return out
    for row in conn.execute(_WINDOW_SQL, (list(kit_ids), high, low - IDLE)).fetchall():
        out[row[1]].append(SessionWindow(*row))
    return out


def note_readings(conn: psycopg.Connection, newest: Mapping[int, datetime]) -> None:
    """Advance sessions' idle timers to their newest attributed measurement time."""
    if newest:
        with conn.cursor() as cur:
            cur.executemany(
                """UPDATE kit_sessions SET last_reading_at = greatest(last_reading_at, %s)
                   WHERE session_id = %s""", [(at, sid) for sid, at in sorted(newest.items())])


def close_idle(conn: psycopg.Connection, now: datetime, *, kit_ids: Sequence[str] | None = None) -> int:
    """Write down as ended ('idle') the open sessions with no reading for 10 minutes before ``now``."""
    cur = conn.execute(
        """UPDATE kit_sessions SET ended_at = greatest(started_at, coalesce(last_reading_at, started_at)) + %s,
                  end_reason = 'idle', ended_by = 'carewatch'
           WHERE ended_at IS NULL AND greatest(started_at, coalesce(last_reading_at, started_at)) + %s <= %s
             AND (%s::text[] IS NULL OR kit_id = ANY(%s))""",
        (IDLE, IDLE, now, None if kit_ids is None else list(kit_ids), None if kit_ids is None else list(kit_ids)))
    return cur.rowcount


def open_session(conn: psycopg.Connection, kit_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT k.*, r.display_name AS resident_name FROM kit_sessions k
               JOIN residents r ON r.resident_id = k.resident_id
               WHERE k.kit_id = %s AND k.ended_at IS NULL""", (kit_id,)).fetchone()


@dataclass(frozen=True)
class Started:
    session: dict[str, Any]
    ended: dict[str, Any] | None  # the session this one replaced, if any


def start_session(conn: psycopg.Connection, *, kit_id: str, site_id: str, resident_id: str, by: str,
                  at: datetime, replace: bool = False) -> Started:
    """Open a session. With an open one on the kit: SessionConflict, unless ``replace`` (then it is ended at
    ``at``: 'switched' when the same person moves on to another resident, 'replaced' otherwise). The session
    starts at the whole second of ``at`` (device clocks' resolution), never before the kit's previous session
    ended. The caller's transaction holds the kit's lock until it commits."""
    lock_kits(conn, [kit_id])
    close_idle(conn, at, kit_ids=[kit_id])
    current = open_session(conn, kit_id)
    ended = None
    if current is not None:
        if not replace:
            raise SessionConflict(current)
        if at < current["started_at"]:
            raise SessionRefused("a session cannot start before the kit's open session did")
        ended = end_session(conn, current["session_id"], by=by, at=at,
                            reason="switched" if current["started_by"] == by else "replaced")
    # Device clocks count whole seconds (a GATT Date Time has no fraction): a reading measured in the second the
    # resident was chosen is stamped at its start, before a session row stamped to the microsecond. The session
    # covers that whole second, unless the kit's previous session ended inside it (then it starts where that one
    # ended, below: a reading of that second is the previous resident's, as the device clock cannot tell).
    at = at.replace(microsecond=0)
    latest_end = one(conn.execute("SELECT max(ended_at) FROM kit_sessions WHERE kit_id = %s", (kit_id,)))[0]
    if latest_end is not None and at < latest_end:
        # The previous session kept a reading stamped a little after "now" (a device clock a few seconds
        # ahead): this one starts where that one ended. Further apart than a clock can be: refuse.
        if latest_end - at > MAX_CLOCK_LEAD:
            raise SessionRefused(f"the kit's previous session ran until {latest_end.isoformat()}: sessions of one "
                                 "kit never overlap")
        at = latest_end
    with conn.cursor(row_factory=dict_row) as cur:
        row = one(cur.execute(
            """INSERT INTO kit_sessions (kit_id, site_id, resident_id, started_by, started_at)
               VALUES (%s, %s, %s, %s, %s) RETURNING *""", (kit_id, site_id, resident_id, by, at)))
    return Started(row, ended)


def end_session(conn: psycopg.Connection, session_id: int, *, by: str, at: datetime, reason: str
                ) -> dict[str, Any]:
    """End an open session at ``at`` (never before its start or its newest reading: those stay its own)."""
    if reason not in END_REASONS:
        raise SessionRefused(f"end reason must be one of {', '.join(sorted(END_REASONS))}")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """UPDATE kit_sessions
                  SET ended_at = greatest(%s, started_at, last_reading_at + interval '1 millisecond'),
                      ended_by = %s, end_reason = %s
                WHERE session_id = %s AND ended_at IS NULL RETURNING *""", (at, by, reason, session_id)).fetchone()
        if row is None:
            row = cur.execute("SELECT * FROM kit_sessions WHERE session_id = %s", (session_id,)).fetchone()
            if row is None:
                raise SessionRefused("no such session")
    return row


# ------------------------------------------------------------------------------------------------------------
# Practice mode (training new staff): one practice resident and one practice kit per care home
# ------------------------------------------------------------------------------------------------------------
PRACTICE_NAME = "Practice: Pat Example"
PRACTICE_BORN = "1940-01-01"
PRACTICE_CONDITIONS = ("well", "deteriorating")


def practice_ids(site_id: str) -> tuple[str, str]:
    """(resident_id, kit_id) of a home's practice resident and practice kit."""
    return f"practice-{site_id}", f"practice-{site_id}-kit"


def ensure_practice(conn: psycopg.Connection, site_id: str) -> dict[str, Any]:
    """The home's practice resident and practice kit, created the first time (idempotent). Their data is shown only
    to a tablet in practice mode (api/scope.py); the simulator drives the practice kit's devices."""
    resident_id, kit_id = practice_ids(site_id)
    conn.execute(
        """INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, practice, obs_per_day)
           VALUES (%s, %s, %s, %s, true, 4) ON CONFLICT DO NOTHING""",
        (resident_id, site_id, PRACTICE_NAME, PRACTICE_BORN))
    conn.execute("INSERT INTO kits (kit_id, site_id, name, practice) VALUES (%s, %s, 'practice kit', true) "
                 "ON CONFLICT DO NOTHING", (kit_id, site_id))
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """SELECT r.resident_id, r.site_id, r.display_name, r.date_of_birth, r.practice_condition AS condition,
                      k.kit_id FROM residents r JOIN kits k ON k.site_id = r.site_id AND k.practice
               WHERE r.site_id = %s AND r.practice""", (site_id,)).fetchone()
    if row is None:  # a real resident (or kit) already has the practice id: never turn them into practice data
        raise SessionRefused(f"{resident_id} or {kit_id} is already in use by a real resident or kit of this home")
    return row


def set_practice_condition(conn: psycopg.Connection, resident_id: str, condition: str) -> None:
    """What the simulator makes the practice resident's vitals do next ('well' or 'deteriorating')."""
    if condition not in PRACTICE_CONDITIONS:
        raise SessionRefused(f"condition must be one of {', '.join(PRACTICE_CONDITIONS)}")
    cur = conn.execute("UPDATE residents SET practice_condition = %s WHERE resident_id = %s AND practice",
                       (condition, resident_id))
    if cur.rowcount != 1:
        raise SessionRefused("only a practice resident can be asked to deteriorate")
