"""What staff do with an alert: acknowledge, escalate (GP, 111, 999...), resolve, comment, snooze.

Each function runs in its own transaction (a savepoint inside a caller's transaction), locks the alert row,
checks that the transition is allowed, changes the row and appends an ``alert_events`` row, so the full history
stays in alert_events. An invalid transition raises ``AlertLifecycleError`` with a message for the user.
``at`` defaults to the database clock; the demo passes its simulated time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from carewatch.scoring.kinds import ESCALATION_OUTCOMES, AlertKind, Severity


class AlertLifecycleError(ValueError):
    """A request that cannot be applied to the alert in its current state; the message says why."""


class AlertNotFound(AlertLifecycleError):
    pass


def _now(conn: psycopg.Connection, at: datetime | None) -> datetime:
    if at is not None:
        if at.tzinfo is None:
            raise AlertLifecycleError("times must be timezone-aware")
        return at
    return conn.execute("SELECT now()").fetchone()[0]


def _actor(actor: str) -> str:
    if not actor or not actor.strip():
        raise AlertLifecycleError("an actor (who did this) is required")
    return actor.strip()


def _lock(conn: psycopg.Connection, alert_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT alert_id, status, severity, kind, subject_id, acknowledged_at, acknowledged_by, resolved_at, "
        "resolved_by FROM alerts WHERE alert_id = %s FOR UPDATE",
        (alert_id,),
    ).fetchone()
    if row is None:
        raise AlertNotFound(f"alert {alert_id} does not exist")
    keys = ("alert_id", "status", "severity", "kind", "subject_id", "acknowledged_at", "acknowledged_by",
            "resolved_at", "resolved_by")
    return dict(zip(keys, row, strict=True))


def _not_resolved(alert: dict[str, Any], verb: str) -> None:
    if alert["status"] == "resolved":
        raise AlertLifecycleError(
            f"cannot {verb} alert {alert['alert_id']}: it was resolved by {alert['resolved_by']} at "
            f"{alert['resolved_at']:%Y-%m-%d %H:%M} UTC"
        )


def _event(conn: psycopg.Connection, alert_id: int, at: datetime, actor: str, action: str, *,
           outcome: str | None = None, comment: str | None = None, detail: dict[str, Any] | None = None) -> int:
    return conn.execute(
        "INSERT INTO alert_events (alert_id, at, actor, action, outcome, comment, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING event_id",
        (alert_id, at, actor, action, outcome, comment, Jsonb(detail or {})),
    ).fetchone()[0]


def acknowledge(conn: psycopg.Connection, alert_id: int, actor: str, comment: str | None = None, *,
                at: datetime | None = None) -> None:
    """Someone has seen the alert and is dealing with it: stops automatic escalation."""
    actor = _actor(actor)
    with conn.transaction():
        alert = _lock(conn, alert_id)
        _not_resolved(alert, "acknowledge")
        if alert["acknowledged_at"] is not None:
            raise AlertLifecycleError(
                f"alert {alert_id} is already acknowledged by {alert['acknowledged_by']} at "
                f"{alert['acknowledged_at']:%Y-%m-%d %H:%M} UTC"
            )
        now = _now(conn, at)
        conn.execute(
            "UPDATE alerts SET status = CASE WHEN status = 'open' THEN 'acknowledged' ELSE status END, "
            "acknowledged_at = %s, acknowledged_by = %s, ack_due_at = NULL, updated_at = %s WHERE alert_id = %s",
            (now, actor, now, alert_id),
        )
        _event(conn, alert_id, now, actor, "acknowledged", comment=comment)


def escalate(conn: psycopg.Connection, alert_id: int, actor: str, outcome: str, comment: str | None = None, *,
             at: datetime | None = None) -> None:
    """Staff escalated outside the home (GP, NHS 111, 999...): records the outcome as the SBARD decision.

    Escalating also counts as acknowledging (someone is acting on it)."""
    actor = _actor(actor)
    if outcome not in ESCALATION_OUTCOMES:
        raise AlertLifecycleError(
            f"unknown escalation outcome {outcome!r}; use one of {', '.join(sorted(ESCALATION_OUTCOMES))}"
        )
    if outcome == "other" and not (comment and comment.strip()):
        raise AlertLifecycleError("outcome 'other' needs a comment saying what was done")
    with conn.transaction():
        alert = _lock(conn, alert_id)
        _not_resolved(alert, "escalate")
        now = _now(conn, at)
        conn.execute(
            """UPDATE alerts SET status = 'escalated', escalation_level = escalation_level + 1, escalated_at = %s,
                      acknowledged_at = coalesce(acknowledged_at, %s),
                      acknowledged_by = coalesce(acknowledged_by, %s), ack_due_at = NULL, updated_at = %s,
                      data = CASE WHEN data ? 'sbard'
                                  THEN jsonb_set(data, '{sbard,decision}', to_jsonb(%s::text)) ELSE data END
               WHERE alert_id = %s""",
            (now, now, actor, now, outcome + (f": {comment}" if comment else ""), alert_id),
        )
        _event(conn, alert_id, now, actor, "escalated", outcome=outcome, comment=comment,
               detail={"automatic": False})


def resolve(conn: psycopg.Connection, alert_id: int, actor: str, resolution: str, *,
            at: datetime | None = None) -> None:
    """Close the alert, saying how it ended (e.g. 'GP visited, antibiotics started')."""
    actor = _actor(actor)
    if not resolution or not resolution.strip():
        raise AlertLifecycleError("say how the alert was resolved")
    with conn.transaction():
        alert = _lock(conn, alert_id)
        _not_resolved(alert, "resolve")
        now = _now(conn, at)
        conn.execute(
            "UPDATE alerts SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s, "
            "ack_due_at = NULL, updated_at = %s WHERE alert_id = %s",
            (now, actor, resolution.strip(), now, alert_id),
        )
        _event(conn, alert_id, now, actor, "resolved", comment=resolution.strip())


def comment(conn: psycopg.Connection, alert_id: int, actor: str, text: str, *, at: datetime | None = None) -> int:
    """Add a note to the alert's history (allowed on resolved alerts too). Returns the event id."""
    actor = _actor(actor)
    if not text or not text.strip():
        raise AlertLifecycleError("a comment cannot be empty")
    with conn.transaction():
        alert = _lock(conn, alert_id)
        now = _now(conn, at)
        return _event(conn, alert["alert_id"], now, actor, "commented", comment=text.strip())


def snooze(conn: psycopg.Connection, subject_id: str, kind: str | None, actor: str, reason: str,
           until: datetime, *, at: datetime | None = None) -> int:
    """Suppress new alerts of ``kind`` (None = every kind) for ``subject_id`` until ``until``, with a reason.

    An open alert of that kind stops escalating until then. A HIGH alert cannot be snoozed (and the engine
    never suppresses a high one): acknowledge or escalate it instead. Returns the suppression id.
    """
    actor = _actor(actor)
    if not reason or not reason.strip():
        raise AlertLifecycleError("a snooze needs a reason")
    if kind is not None:
        try:
            AlertKind(kind)
        except ValueError:
            raise AlertLifecycleError(f"unknown alert kind {kind!r}") from None
    if until.tzinfo is None:
        raise AlertLifecycleError("until must be timezone-aware")
    with conn.transaction():
        now = _now(conn, at)
        if until <= now:
            raise AlertLifecycleError("until must be in the future")
        open_rows = conn.execute(
            "SELECT alert_id, severity FROM alerts WHERE subject_id = %s AND status <> 'resolved' "
            "AND (%s::text IS NULL OR kind = %s) FOR UPDATE",
            (subject_id, kind, kind),
        ).fetchall()
        high = [a for a, sev in open_rows if sev == Severity.HIGH.value]
        if high:
            raise AlertLifecycleError(
                f"alert {high[0]} is high severity and cannot be snoozed: acknowledge or escalate it"
            )
        suppression_id = conn.execute(
            "INSERT INTO alert_suppressions (subject_id, kind, reason, until, created_by, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING suppression_id",
            (subject_id, kind, reason.strip(), until, actor, now),
        ).fetchone()[0]
        for alert_id, _ in open_rows:
            conn.execute(
                "UPDATE alerts SET ack_due_at = CASE WHEN ack_due_at IS NULL THEN NULL "
                "ELSE greatest(ack_due_at, %s) END, updated_at = %s WHERE alert_id = %s",
                (until, now, alert_id),
            )
            _event(conn, alert_id, now, actor, "snoozed", comment=reason.strip(),
                   detail={"until": until.isoformat(), "suppression_id": suppression_id})
        return suppression_id
