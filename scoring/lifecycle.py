"""Every alert state transition, and the ``alert_events`` row that records it: the one writer of ``alerts``,
``alert_events`` and ``alert_suppressions``.

Automatic transitions, made by the scorer (actor ``scorer``): ``apply_findings`` opens, updates and auto-resolves
alerts so they match the rules' findings (one unresolved alert per subject and kind, the partial unique index
``alerts_one_open``: updated, never repeated; a high alert is never closed by its evidence clearing, a person closes
it); ``resolve_open_alerts`` closes a subject's alerts (monitoring paused, discharged). Automatic escalation (actor
``escalation``), as ``carewatch.notify`` applies the site's policy: ``auto_escalate`` (the next level was told),
``hurry_escalation`` (nobody was reached: the next level is due now).

What staff do with an alert: acknowledge, escalate (GP, 111, 999...), record the outcome after acknowledging
(``record_outcome``), resolve, comment, snooze. Each of these runs
in its own transaction (a savepoint inside a caller's transaction), locks the alert row, checks that the transition
is allowed, changes the row and appends an ``alert_events`` row, so the full history stays in alert_events. An
invalid transition raises ``AlertLifecycleError`` with a message for the user. ``at`` defaults to the database
clock; the demo passes its simulated time.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from carewatch.alerts import (
    ACK_WINDOW,
    ESCALATION_OUTCOMES,
    FOLLOW_UP_OUTCOMES,
    SEVERITY_RANK,
    AlertKind,
    Severity,
    snooze_limit,
)
from carewatch.db import one, text_array
from carewatch.scoring.batches import EvaluationSummary, jsonb_safe, transaction
from carewatch.scoring.incidents import snooze_hides
from carewatch.scoring.rules import Finding
from carewatch.subjects import Subject, SubjectKind, unnest

#: The actor of every automatic transition.
ACTOR = "scorer"


_EVENT_SQL = ("INSERT INTO alert_events (alert_id, at, actor, action, outcome, comment, detail) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s)")


def _event(conn: psycopg.Connection, alert_id: int, at: datetime, action: str, *, actor: str = ACTOR,
           outcome: str | None = None, comment: str | None = None,
           detail: Mapping[str, Any] | None = None) -> int:
    """Append one row to the alert's history (every transition does). Returns the event id."""
    return one(conn.execute(
        _EVENT_SQL + " RETURNING event_id", (alert_id, at, actor, action, outcome, comment, Jsonb(dict(detail or {}))),
    ))[0]


def _queue_event(conn: psycopg.Connection, alert_id: int, at: datetime, action: str, *,
                 comment: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
    """An automatic transition's history row, without waiting for it: inside ``apply_findings``' pipeline it goes
    with the batch's other writes (no round trip per row)."""
    conn.execute(_EVENT_SQL, (alert_id, at, ACTOR, action, None, comment, Jsonb(dict(detail or {}))))


# ------------------------------------------------------------------------------------------------------------
# Automatic transitions: findings -> alert rows, unacknowledged escalation
# ------------------------------------------------------------------------------------------------------------
def _active_suppressions(conn: psycopg.Connection, subjects: Iterable[Subject],
                         now: datetime) -> set[tuple[Subject, str | None]]:
    """Active suppressions of these (kind, id) subjects: {((kind, id), alert kind or None)}."""
    rows = conn.execute(
        "SELECT s.subject_kind, s.subject_id, s.kind FROM alert_suppressions s "
        "JOIN unnest(%s::text[], %s::text[]) AS p(subject_kind, subject_id) "
        "ON s.subject_kind = p.subject_kind AND s.subject_id = p.subject_id WHERE s.until > %s",
        (*(text_array(column) for column in unnest(subjects)), now),
    ).fetchall()
    return {(Subject(r[0], r[1]), r[2]) for r in rows}


def _ack_due(severity: Severity, now: datetime) -> datetime | None:
    window = ACK_WINDOW[severity]
    return now + window if window is not None else None


#: (alert_id, severity, status, reason, action, acknowledged_at, ack_due_at, closing): ``closing`` is None when
#: its evidence clearing may close it, 'person' when a person must (it is or was high, H-ESC-10), 'recovered' when
#: that recovery has been noted on it.
OpenAlert = tuple[int, str, str, str, str, datetime | None, datetime | None, str | None]
_OPEN_ALERT_SQL = """SELECT a.subject_kind, a.subject_id, a.kind, a.alert_id, a.severity, a.status, a.reason, a.action,
       a.acknowledged_at, a.ack_due_at,
       CASE WHEN a.data ? 'recovery' THEN 'recovered'
            WHEN (a.severity = 'high' OR a.data ? 'was_high')
                 AND a.kind NOT IN ('device_silent', 'household_silent', 'battery_low', 'device_fault',
                                    'gateway_offline', 'scoring_stalled') THEN 'person' END
FROM alerts a JOIN unnest(%s::text[], %s::text[], %s::text[]) AS p(subject_kind, subject_id, kind)
  ON a.subject_kind = p.subject_kind AND a.subject_id = p.subject_id AND a.kind = p.kind
WHERE a.status <> 'resolved' ORDER BY a.alert_id"""


def _open_alerts(conn: psycopg.Connection, findings: Sequence[Finding], *,
                 lock: bool) -> dict[tuple[Subject, str], OpenAlert]:
    """The unresolved alert (if any) of each finding's (kind, id) subject and alert kind, in one query (``lock``:
    FOR UPDATE)."""
    keys = sorted({(*f.subject, f.kind.value) for f in findings})
    if not keys:
        return {}
    rows = conn.execute(_OPEN_ALERT_SQL + (" FOR UPDATE OF a" if lock else ""),
                        tuple(text_array(k[i] for k in keys) for i in range(3))).fetchall()
    return {(Subject(row[0], row[1]), row[2]): tuple(row[3:]) for row in rows}


def open_alert_kinds(conn: psycopg.Connection, subjects: Sequence[Subject]) -> dict[Subject, set[str]]:
    """The kinds of each (kind, id) subject's unresolved alerts, in one unlocked read (subjects with none are
    left out). Read under the subjects' locks it is exact until they are released: only ``apply_findings``,
    holding them, opens an alert."""
    if not subjects:
        return {}
    out: dict[Subject, set[str]] = {}
    for subject_kind, subject_id, kind in conn.execute(
        "SELECT a.subject_kind, a.subject_id, a.kind FROM alerts a "
        "JOIN unnest(%s::text[], %s::text[]) AS p(subject_kind, subject_id) "
        "ON a.subject_kind = p.subject_kind AND a.subject_id = p.subject_id WHERE a.status <> 'resolved'",
        tuple(text_array(column) for column in unnest(subjects)),
    ):
        out.setdefault(Subject(subject_kind, subject_id), set()).add(kind)
    return out


def findings_that_change(conn: psycopg.Connection, findings: Sequence[Finding]) -> list[Finding]:
    """The findings that would open, update or resolve an alert, by one unlocked read: lets a pass over every
    resident lock and write only the few that change. ``apply_findings`` re-checks under the locks."""
    active = [f for f in findings if f.state != "hold"]
    open_rows = _open_alerts(conn, active, lock=False)
    out = []
    for f in active:
        row = open_rows.get((f.subject, f.kind.value))
        if f.state == "clear":
            if row is not None and row[7] != "recovered":
                out.append(f)  # (a high alert's recovery is noted once; a person closes it)
        elif row is None or not (f.severity is not None and row[1] == f.severity.value and row[3] == f.reason
                                 and row[4] == f.action):
            out.append(f)
    return out


def apply_findings(conn: psycopg.Connection, findings: Sequence[Finding], now: datetime,
                   summary: EvaluationSummary, *, latency: list[tuple[int, datetime]] | None = None,
                   subjects: Collection[Subject] | None = None) -> None:
    """Open, update or resolve alerts so they match the findings. Call inside a transaction holding the
    subjects' locks. 'hold' findings change nothing; a suppression hides a refresh of what staff decided to
    live with, never a high finding, a NEWS2 band rise or new soft signs (``incidents.snooze_hides``). Then
    each subject's alerts are grouped into its incident (``incident_store.sync_incidents``). ``subjects``: the
    subjects to group, when the caller dropped findings that change nothing (default: the findings' own, less
    those with only 'hold' findings). A finding built without its text (``Finding.brief``) must never get here."""
    active = [f for f in findings if f.state != "hold"]
    if any(f.brief for f in active):
        raise ValueError("a finding built without its text reached apply_findings (H-ALERT-13)")
    if not active:
        return
    open_rows = _open_alerts(conn, active, lock=True)
    if not any(f.state == "raise" or (f.subject, f.kind.value) in open_rows for f in active):
        return  # only 'clear' findings with nothing open: nothing to write
    judged = {f.subject for f in active} if subjects is None else set(subjects)
    # a suppression is consulted for a raise finding only (a clear is never hidden): read those subjects' only
    suppressions = _active_suppressions(conn, {f.subject for f in active if f.state == "raise"}, now)
    snoozed = {s for s, _ in suppressions}
    open_data = dict(((Subject(sk, s), k), d) for sk, s, k, d in conn.execute(
        "SELECT subject_kind, subject_id, kind, data FROM alerts WHERE alert_id = ANY(%s)",
        ([row[0] for (s, _), row in open_rows.items() if s in snoozed],)).fetchall()) if snoozed else {}
    # New alerts' ids are drawn from the sequence up front (one query), so every write below is sent in one
    # pipeline and nothing waits for a row to come back (issue 19: a round trip per row was most of a batch).
    fresh = _NewAlertIds(conn, sum(1 for f in active if f.state == "raise" and (f.subject, f.kind.value)
                                   not in open_rows))
    with conn.pipeline():
        _write_findings(conn, active, open_rows, suppressions, open_data, fresh, now, summary, latency)
        _group(conn, judged, now)


class _NewAlertIds:
    """Ids for the alerts a batch may open, drawn in one query (unused ones are a gap in the sequence, as after
    any rollback); one more is drawn if a batch opens more than counted (a kind resolved and raised again)."""

    _SQL = "SELECT nextval(pg_get_serial_sequence('alerts', 'alert_id')) FROM generate_series(1, %s)"

    def __init__(self, conn: psycopg.Connection, n: int) -> None:
        self.conn = conn
        self.ids = [row[0] for row in conn.execute(self._SQL, (n,))] if n > 0 else []
        self.ids.reverse()

    def take(self) -> int:
        return self.ids.pop() if self.ids else one(self.conn.execute(self._SQL, (1,)))[0]


class _Buffer:
    """New alerts and their history rows of one ``apply_findings`` call, written as one multi-row INSERT each
    (``flush``); flushed early before anything else touches an alert still in it, so every alert's own history
    keeps its order."""

    def __init__(self, conn: psycopg.Connection, now: datetime) -> None:
        self.conn, self.now = conn, now
        self.alerts: list[tuple[Any, ...]] = []
        self.events: list[tuple[int, str, Any]] = []
        self.touched: set[int] = set()

    def alert(self, alert_id: int, f: Finding, data: Mapping[str, Any]) -> None:
        assert f.severity is not None
        self.alerts.append((alert_id, f.site_id,
                            f.subject_id if f.subject.kind == SubjectKind.RESIDENT else f.resident_id,
                            f.subject.kind, f.subject_id, f.kind.value, f.severity.value,
                            f.reason, f.action, jsonb_safe(data), None if f.score is None else int(f.score),
                            _ack_due(f.severity, self.now)))
        self.touched.add(alert_id)

    def event(self, alert_id: int, action: str, detail: Mapping[str, Any]) -> None:
        self.events.append((alert_id, action, Jsonb(dict(detail))))
        self.touched.add(alert_id)

    def before(self, alert_id: int) -> None:
        """About to write ``alert_id`` directly: its buffered rows go first."""
        if alert_id in self.touched:
            self.flush()

    def flush(self) -> None:
        if self.alerts:
            cols = [list(c) for c in zip(*self.alerts, strict=True)]
            self.conn.execute(
                """INSERT INTO alerts (alert_id, site_id, resident_id, subject_kind, subject_id, kind, severity, status,
                                       reason, action, data, score, opened_at, updated_at, ack_due_at)
                   SELECT v.alert_id, v.site_id, v.resident_id, v.subject_kind, v.subject_id, v.kind, v.severity,
                          'open', v.reason, v.action, v.data, v.score, %b, %b, v.ack_due_at
                   FROM unnest(%b::int8[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                               %b::text[], %b::text[], %b::jsonb[], %b::int[], %b::timestamptz[])
                        AS v(alert_id, site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action,
                             data, score, ack_due_at)""",
                [self.now, self.now, *cols])
        if self.events:
            cols = [list(c) for c in zip(*self.events, strict=True)]
            self.conn.execute(
                "INSERT INTO alert_events (alert_id, at, actor, action, detail) "
                "SELECT v.alert_id, %b, %b, v.action, v.detail FROM unnest(%b::int8[], %b::text[], %b::jsonb[]) "
                "AS v(alert_id, action, detail)", [self.now, ACTOR, *cols])
        self.alerts, self.events, self.touched = [], [], set()


def _write_findings(conn: psycopg.Connection, active: Sequence[Finding],
                    open_rows: dict[tuple[Subject, str], OpenAlert], suppressions: set[tuple[Subject, str | None]],
                    open_data: Mapping[tuple[Subject, str], Any],
                    fresh: _NewAlertIds, now: datetime, summary: EvaluationSummary,
                    latency: list[tuple[int, datetime]] | None) -> None:
    buffer = _Buffer(conn, now)
    for f in active:
        key = (f.subject, f.kind.value)
        row = open_rows.get(key)
        if row is not None:
            buffer.before(row[0])
        if f.state == "clear":
            if row is not None and row[7] is not None:
                # An alert that is or was high is closed by a person, however reassuring the next set (H-ESC-10):
                # its recovery is noted on it (shown on the banner and the alerts page) and it stays open.
                if row[7] == "person" and _note_recovery(conn, row[0], f.reason, now):
                    summary.updated.append(row[0])
                    open_rows[key] = (*row[:7], "recovered")
            elif row is not None:
                _auto_resolve(conn, row[0], f.reason, now)
                summary.resolved.append(row[0])
                del open_rows[key]
            continue
        assert f.severity is not None
        suppressed = (f.subject, f.kind.value) in suppressions or (f.subject, None) in suppressions
        if suppressed and snooze_hides(f.kind.value, f.severity, f.data, open_data.get(key),
                                       Severity(row[1]) if row is not None else None):
            summary.suppressed += 1
            continue
        data = dict(f.data)  # sent as json_safe(data) would be (jsonb_safe: one encoding)
        if f.severity is Severity.HIGH or (row is not None and row[7] is not None):
            data["was_high"] = True  # kept through later, milder updates: a person closes it (H-ESC-10)
        if row is None:
            alert_id = fresh.take()
            buffer.alert(alert_id, f, data)
            open_rows[key] = (alert_id, f.severity.value, "open", f.reason, f.action, None,
                              _ack_due(f.severity, now), "person" if f.severity is Severity.HIGH else None)
            buffer.event(alert_id, "opened", {"severity": f.severity.value, "reason": f.reason,
                                              **({"suppression_overridden": True} if suppressed else {})})
            summary.opened.append(alert_id)
            if latency is not None and f.evidence_stored_at is not None:
                latency.append((alert_id, f.evidence_stored_at))
            continue
        alert_id, old_severity, status, old_reason, old_action, acked_at, ack_due_at, closing = row
        old = Severity(old_severity)
        new = f.severity
        if not f.allow_downgrade and SEVERITY_RANK[new] < SEVERITY_RANK[old]:
            new = old
        if new == old and f.reason == old_reason and f.action == old_action:
            continue
        rose = SEVERITY_RANK[new] > SEVERITY_RANK[old]
        new_status, new_acked_at, new_due = status, acked_at, ack_due_at
        if rose and new is not Severity.INFO:
            # a worse alert needs acknowledging again, within the new severity's window
            new_acked_at = None
            due = _ack_due(new, now)
            new_due = min(d for d in (due, ack_due_at if acked_at is None else None) if d is not None)
            if status == "acknowledged" or (status == "auto_escalated" and acked_at is not None):
                new_status = "open"
        renotify = rose and new is not Severity.INFO
        # A rise is told at once to the level last told (notify_reason 'risen', carewatch.notify.policy) and needs
        # a fresh outcome; the earlier outcome stays in alert_events.
        conn.execute(
            """UPDATE alerts SET severity = %s, status = %s, reason = %s, action = %s, data = %s, score = %s,
                      updated_at = %s, acknowledged_at = %s,
                      acknowledged_by = CASE WHEN %s::timestamptz IS NULL THEN NULL ELSE acknowledged_by END,
                      ack_due_at = %s,
                      notify_reason = CASE WHEN %s AND notify_level > 0 THEN 'risen' ELSE notify_reason END,
                      notify_due_at = CASE WHEN %s THEN %s ELSE notify_due_at END,
                      outcome = CASE WHEN %s THEN NULL ELSE outcome END,
                      outcome_at = CASE WHEN %s THEN NULL ELSE outcome_at END,
                      outcome_by = CASE WHEN %s THEN NULL ELSE outcome_by END
               WHERE alert_id = %s""",
            (new.value, new_status, f.reason, f.action, jsonb_safe(data), f.score, now, new_acked_at, new_acked_at,
             new_due, renotify, renotify, now, renotify, renotify, renotify, alert_id),
        )
        buffer.event(alert_id, "updated", {
            "from_severity": old.value, "to_severity": new.value, "reason": f.reason,
            **({"needs_acknowledging_again": True} if rose and acked_at is not None else {}),
        })
        open_rows[key] = (alert_id, new.value, new_status, f.reason, f.action, new_acked_at, new_due,
                          "person" if new is Severity.HIGH or closing is not None else None)
        summary.updated.append(alert_id)
        if latency is not None and f.evidence_stored_at is not None:
            latency.append((alert_id, f.evidence_stored_at))
    buffer.flush()


def _group(conn: psycopg.Connection, subjects: set[Subject], now: datetime) -> None:
    """Group the subjects' alerts into their incidents (imported here: incident_store calls this module)."""
    from carewatch.scoring import incident_store

    incident_store.sync_incidents(conn, subjects, now)


def link_components(conn: psycopg.Connection, incident_id: int, alert_ids: Sequence[int]) -> None:
    """Alerts join their subject's incident; their own escalation deadline gives way to the incident's (one
    problem escalates once, H-INC-01)."""
    if alert_ids:
        conn.execute(
            "UPDATE alerts SET incident_id = %s, ack_due_at = NULL WHERE alert_id = ANY(%s) "
            "AND (incident_id IS DISTINCT FROM %s OR ack_due_at IS NOT NULL)",
            (incident_id, list(alert_ids), incident_id))


def _auto_resolve(conn: psycopg.Connection, alert_id: int, why: str, now: datetime) -> None:
    conn.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s, "
        "updated_at = %s, ack_due_at = NULL WHERE alert_id = %s",
        (now, ACTOR, why, now, alert_id),
    )
    _queue_event(conn, alert_id, now, "auto_resolved", comment=why)


def resolve_open_alerts(conn: psycopg.Connection, now: datetime, why: str, *, resident_id: str | None = None,
                        subject: Subject | None = None, summary: EvaluationSummary | None = None) -> list[int]:
    """Resolve every open alert of a resident (their own and their devices') or of a (kind, id) subject: e.g.
    monitoring paused, discharged."""
    if resident_id is None and subject is None:
        raise ValueError("name a resident or a subject")
    kind, sid = subject if subject is not None else (None, None)
    rows = conn.execute(
        "SELECT alert_id, subject_kind, subject_id FROM alerts WHERE status <> 'resolved' "
        "AND (resident_id = %s OR (subject_kind = %s AND subject_id = %s)) ORDER BY alert_id FOR UPDATE",
        (resident_id, kind, sid),  # in id order: each alert's events in an order that does not hang on the heap
    ).fetchall()
    for alert_id, *_ in rows:
        _auto_resolve(conn, alert_id, why, now)
    ids = [r[0] for r in rows]
    if rows:
        _group(conn, {Subject(r[1], r[2]) for r in rows}, now)
    if summary is not None:
        summary.resolved.extend(ids)
    return ids


def resolve_alerts_resting_on(conn: psycopg.Connection, resident_id: str, obs_ids: Sequence[int], why: str,
                              now: datetime) -> list[int]:
    """Resolve a resident's open alerts whose evidence is one of these observation sets (withdrawn: their
    readings were moved to another resident)."""
    if not obs_ids:
        return []
    rows = conn.execute(
        """SELECT alert_id FROM alerts WHERE resident_id = %s AND status <> 'resolved'
             AND (data->>'obs_id')::bigint = ANY(%s) ORDER BY alert_id FOR UPDATE""",
        (resident_id, list(obs_ids))).fetchall()
    for (alert_id,) in rows:
        _auto_resolve(conn, alert_id, why, now)
    return [r[0] for r in rows]


def _note_recovery(conn: psycopg.Connection, alert_id: int, why: str, now: datetime) -> bool:
    """A high alert whose evidence has cleared: say so on the alert (``data.recovery``) and in its history."""
    changed = conn.execute(  # (RETURNING, not rowcount: inside apply_findings' pipeline only a fetch waits)
        """UPDATE alerts SET data = jsonb_set(data, '{recovery}', jsonb_build_object('text', %s::text, 'at', %s::text)),
                  updated_at = %s
           WHERE alert_id = %s AND NOT (data ? 'recovery') RETURNING alert_id""",
        (why, now.isoformat(), now, alert_id),
    ).fetchone() is not None
    if changed:
        _queue_event(conn, alert_id, now, "recovered", comment=why,
               detail={"needs": "a person to close it (high alerts never close themselves)"})
    return bool(changed)


# ------------------------------------------------------------------------------------------------------------
# Automatic escalation (carewatch.notify applies the site's escalation policy and calls these)
# ------------------------------------------------------------------------------------------------------------
#: The actor of automatic escalation steps.
ESCALATION_ACTOR = "escalation"


def auto_escalate(conn: psycopg.Connection, alert_id: int, *, level: int, reason: str, next_due: datetime | None,
                  level_name: str, recipients: Sequence[str], at: datetime) -> None:
    """The policy's next level was told (level 1: event 'notified'; from level 2: status 'auto_escalated'),
    never the status 'escalated', which means a person escalated it outside the home (H-ESC-05)."""
    with transaction(conn):
        conn.execute(
            """UPDATE alerts SET notify_level = %(level)s, notify_reason = %(reason)s, notify_due_at = %(due)s,
                      status = CASE WHEN %(level)s >= 2 AND status IN ('open', 'acknowledged') THEN 'auto_escalated'
                                    ELSE status END,
                      updated_at = %(at)s
               WHERE alert_id = %(id)s""",
            {"level": level, "reason": reason, "due": next_due, "at": at, "id": alert_id},
        )
        why = ("not acknowledged" if reason == "unacknowledged" else
               "acknowledged, but no outcome recorded in time")
        _event(conn, alert_id, at, "notified" if level == 1 else "auto_escalated", actor=ESCALATION_ACTOR,
               comment=f"Level {level} ({level_name}) told: {why}."
                       + ("" if recipients else " Nobody is on the rota at this level."),
               detail={"level": level, "reason": reason, "automatic": True, "recipients": list(recipients),
                       "next_due": next_due.isoformat() if next_due else None})


def notify_estate(conn: psycopg.Connection, alert_id: int, *, recipients: Sequence[str], at: datetime) -> None:
    """The estate's admins were told of this alert (scoring stalled at its site, H-ESC-12): notify_level 1,
    notify_reason 'estate' (so they are told once), and event 'notified'."""
    with transaction(conn):
        conn.execute("UPDATE alerts SET notify_level = 1, notify_reason = 'estate', updated_at = %s "
                     "WHERE alert_id = %s", (at, alert_id))
        _event(conn, alert_id, at, "notified", actor=ESCALATION_ACTOR,
               comment="The estate's admins told." if recipients else
                       "Nobody told: no estate contacts are configured.",
               detail={"level": 1, "reason": "estate", "automatic": True, "recipients": list(recipients)})


def await_outcome(conn: psycopg.Connection, alert_id: int, *, due: datetime | None, at: datetime) -> None:
    """Acknowledged: the outcome is due by ``due`` (on the escalation clock), or the senior is told (H-ESC-06)."""
    with transaction(conn):
        conn.execute(
            """UPDATE alerts SET notify_reason = 'awaiting_outcome', notify_due_at = %s
               WHERE alert_id = %s AND status <> 'resolved' AND outcome_at IS NULL""", (due, alert_id))
        _event(conn, alert_id, at, "outcome_due", actor=ESCALATION_ACTOR,
               comment=f"Acknowledged: record what was done by {due:%H:%M} UTC" if due else None,
               detail={"due": due.isoformat() if due else None, "automatic": True})


def hurry_escalation(conn: psycopg.Connection, alert_id: int, *, level: int, reason: str, at: datetime) -> None:
    """Nobody was reached at ``level`` (nobody on the rota, every channel failed): the next level is due now."""
    with transaction(conn):
        changed = conn.execute(
            """UPDATE alerts SET notify_due_at = %s WHERE alert_id = %s AND status <> 'resolved'
                 AND notify_level = %s AND notify_reason = %s AND notify_due_at IS NOT NULL AND notify_due_at > %s""",
            (at, alert_id, level, reason, at),
        ).rowcount
        if changed:
            _event(conn, alert_id, at, "notify_failed", actor=ESCALATION_ACTOR,
                   comment=f"Nobody was reached at level {level}: the next level is told now.",
                   detail={"level": level, "reason": reason, "automatic": True})


# ------------------------------------------------------------------------------------------------------------
# What staff do: acknowledge, escalate, resolve, comment, snooze
# ------------------------------------------------------------------------------------------------------------
class AlertLifecycleError(ValueError):
    """A request that cannot be applied to the alert in its current state; the message says why."""


class AlertNotFound(AlertLifecycleError):
    pass


def request_time(conn: psycopg.Connection, at: datetime | None,
                 error: type[ValueError] = AlertLifecycleError) -> datetime:
    """When a staff request (on an alert or an incident) takes effect: ``at``, which must be timezone-aware
    (else ``error``), or the database's now."""
    if at is not None:
        if at.tzinfo is None:
            raise error("times must be timezone-aware")
        return at
    return one(conn.execute("SELECT now()"))[0]


def request_actor(actor: str, error: type[ValueError] = AlertLifecycleError) -> str:
    """Who made a staff request, stripped; ``error`` when nobody is named."""
    if not actor or not actor.strip():
        raise error("an actor (who did this) is required")
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


def check_outcome(outcome: str, comment: str | None, allowed: Collection[str], what: str = "outcome",
                  error: type[ValueError] = AlertLifecycleError) -> None:
    """A staff decision's ``outcome`` must be one of ``allowed`` (``what``: its name in the message), and 'other'
    needs a comment saying what was done; ``error`` otherwise."""
    if outcome not in allowed:
        raise error(f"unknown {what} {outcome!r}; use one of {', '.join(sorted(allowed))}")
    if outcome == "other" and not (comment and comment.strip()):
        raise error("outcome 'other' needs a comment saying what was done")


def acknowledge(conn: psycopg.Connection, alert_id: int, actor: str, comment: str | None = None, *,
                at: datetime | None = None) -> None:
    """Someone has seen the alert and is dealing with it: stops automatic escalation."""
    actor = request_actor(actor)
    with conn.transaction():
        alert = _lock(conn, alert_id)
        _not_resolved(alert, "acknowledge")
        if alert["acknowledged_at"] is not None:
            raise AlertLifecycleError(
                f"alert {alert_id} is already acknowledged by {alert['acknowledged_by']} at "
                f"{alert['acknowledged_at']:%Y-%m-%d %H:%M} UTC"
            )
        now = request_time(conn, at)
        conn.execute(
            "UPDATE alerts SET status = CASE WHEN status IN ('open', 'auto_escalated') THEN 'acknowledged' "
            "ELSE status END, acknowledged_at = %s, acknowledged_by = %s, ack_due_at = NULL, updated_at = %s "
            "WHERE alert_id = %s",
            (now, actor, now, alert_id),
        )
        _event(conn, alert_id, now, "acknowledged", actor=actor, comment=comment)


def escalate(conn: psycopg.Connection, alert_id: int, actor: str, outcome: str, comment: str | None = None, *,
             at: datetime | None = None) -> None:
    """Staff escalated outside the home (GP, NHS 111, 999...): records the outcome as the SBARD decision.

    Escalating also counts as acknowledging (someone is acting on it); a GP, 111, 999 or admission outcome is
    also the alert's follow-up outcome (stops the follow-up escalation, H-ESC-06)."""
    actor = request_actor(actor)
    check_outcome(outcome, comment, ESCALATION_OUTCOMES, "escalation outcome")
    follow = outcome in FOLLOW_UP_OUTCOMES
    with conn.transaction():
        alert = _lock(conn, alert_id)
        _not_resolved(alert, "escalate")
        now = request_time(conn, at)
        conn.execute(
            """UPDATE alerts SET status = 'escalated', escalation_level = escalation_level + 1, escalated_at = %s,
                      acknowledged_at = coalesce(acknowledged_at, %s),
                      acknowledged_by = coalesce(acknowledged_by, %s), ack_due_at = NULL, updated_at = %s,
                      data = CASE WHEN data ? 'sbard'
                                  THEN jsonb_set(data, '{sbard,decision}', to_jsonb(%s::text)) ELSE data END,
                      outcome = CASE WHEN %s THEN %s ELSE outcome END,
                      outcome_at = CASE WHEN %s THEN %s ELSE outcome_at END,
                      outcome_by = CASE WHEN %s THEN %s ELSE outcome_by END,
                      notify_due_at = CASE WHEN %s THEN NULL ELSE notify_due_at END
               WHERE alert_id = %s""",
            (now, now, actor, now, outcome + (f": {comment}" if comment else ""), follow, outcome, follow, now,
             follow, actor, follow, alert_id),
        )
        _event(conn, alert_id, now, "escalated", actor=actor, outcome=outcome, comment=comment,
               detail={"automatic": False})


def resolve(conn: psycopg.Connection, alert_id: int, actor: str, resolution: str, *,
            at: datetime | None = None) -> None:
    """Close the alert, saying how it ended (e.g. 'GP visited, antibiotics started')."""
    actor = request_actor(actor)
    if not resolution or not resolution.strip():
        raise AlertLifecycleError("say how the alert was resolved")
    with conn.transaction():
        alert = _lock(conn, alert_id)
        _not_resolved(alert, "resolve")
        now = request_time(conn, at)
        conn.execute(
            "UPDATE alerts SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s, "
            "ack_due_at = NULL, notify_due_at = NULL, updated_at = %s WHERE alert_id = %s",
            (now, actor, resolution.strip(), now, alert_id),
        )
        _event(conn, alert_id, now, "resolved", actor=actor, comment=resolution.strip())


def record_outcome(conn: psycopg.Connection, alert_id: int, actor: str, outcome: str, comment: str | None = None,
                   *, at: datetime | None = None) -> None:
    """What was done after acknowledging: monitoring plan, GP called, 111, 999, admitted (H-ESC-06). Stops the
    follow-up escalation; recording it also acknowledges an alert nobody had acknowledged yet."""
    actor = request_actor(actor)
    if outcome not in FOLLOW_UP_OUTCOMES | ESCALATION_OUTCOMES:  # (an incident's outcome may be any of them)
        raise AlertLifecycleError(f"unknown outcome {outcome!r}; use one of {', '.join(sorted(FOLLOW_UP_OUTCOMES))}")
    with conn.transaction():
        alert = _lock(conn, alert_id)
        _not_resolved(alert, "record an outcome for")
        now = request_time(conn, at)
        conn.execute(
            """UPDATE alerts SET outcome = %s, outcome_at = %s, outcome_by = %s, notify_due_at = NULL,
                      acknowledged_at = coalesce(acknowledged_at, %s), acknowledged_by = coalesce(acknowledged_by, %s),
                      ack_due_at = NULL,
                      status = CASE WHEN status IN ('open', 'auto_escalated') THEN 'acknowledged' ELSE status END,
                      updated_at = %s
               WHERE alert_id = %s""",
            (outcome, now, actor, now, actor, now, alert_id),
        )
        _event(conn, alert_id, now, "outcome_recorded", actor=actor, outcome=outcome, comment=comment,
               detail={"automatic": False})


def comment(conn: psycopg.Connection, alert_id: int, actor: str, text: str, *, at: datetime | None = None) -> int:
    """Add a note to the alert's history (allowed on resolved alerts too). Returns the event id."""
    actor = request_actor(actor)
    if not text or not text.strip():
        raise AlertLifecycleError("a comment cannot be empty")
    with conn.transaction():
        alert = _lock(conn, alert_id)
        now = request_time(conn, at)
        return _event(conn, alert["alert_id"], now, "commented", actor=actor, comment=text.strip())


def snooze(conn: psycopg.Connection, subject: Subject, site_id: str, kind: str | None, actor: str, reason: str,
           until: datetime, *, at: datetime | None = None) -> int:
    """Suppress new alerts of ``kind`` (None = every kind) for the (kind, id) ``subject`` of ``site_id`` until
    ``until``, with a reason. Only that subject's alerts of that site: a resident whose id is a household's (or a
    device's, a gateway's) snoozes nothing of the other kind (issue 13, finding 1).

    A snooze never defers escalation, never hides a high finding, a NEWS2 band rise or new soft signs, and
    lasts at most 24 h for clinical kinds (H-ALERT-07). A HIGH alert cannot be snoozed: acknowledge or escalate
    it instead. Returns the suppression id.
    """
    actor = request_actor(actor)
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
        now = request_time(conn, at)
        if until <= now:
            raise AlertLifecycleError("until must be in the future")
        limit = snooze_limit(kind)
        if until - now > limit:
            raise AlertLifecycleError(f"a snooze of {kind or 'every kind'} lasts at most "
                                      f"{int(limit.total_seconds() // 3600)} hours")
        open_rows = conn.execute(
            "SELECT alert_id, severity FROM alerts WHERE subject_kind = %s AND subject_id = %s AND site_id = %s "
            "AND status <> 'resolved' AND (%s::text IS NULL OR kind = %s) ORDER BY alert_id FOR UPDATE",
            (subject.kind, subject.id, site_id, kind, kind),
        ).fetchall()
        high = [a for a, sev in open_rows if sev == Severity.HIGH.value]
        if high:
            raise AlertLifecycleError(
                f"alert {high[0]} is high severity and cannot be snoozed: acknowledge or escalate it"
            )
        suppression_id = one(conn.execute(
            "INSERT INTO alert_suppressions (subject_kind, subject_id, site_id, kind, reason, until, created_by, "
            "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING suppression_id",
            (subject.kind, subject.id, site_id, kind, reason.strip(), until, actor, now),
        ))[0]
        for alert_id, _ in open_rows:  # recorded on each alert; escalation goes on (H-ALERT-07)
            _event(conn, alert_id, now, "snoozed", actor=actor, comment=reason.strip(),
                   detail={"until": until.isoformat(), "suppression_id": suppression_id})
        return suppression_id
