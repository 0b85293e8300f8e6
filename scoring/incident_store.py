"""The one writer of ``incidents`` and ``incident_events``: grouping after each evaluation, and what staff do.

``sync_incidents`` runs after the engine has written a subject's alerts (inside its transaction, holding the
subjects' advisory locks): it groups each subject's unresolved alerts into its one open incident with the pure
``incidents.plan_incident``. Component alerts keep their rows and their ``alert_events`` history; once in an
incident their own escalation deadline is cleared: the incident carries the one notification ladder (one problem
escalates once, H-INC-01).

The ladder's steps (``auto_escalate``, ``await_outcome``, ``hurry_escalation``; actor ``escalation``) are taken by
``carewatch.notify.escalation`` on the site's policy: status ``auto_escalated``, never ``escalated``, which is a
person's call outside the home (``escalate``, H-ESC-05). A band or severity rise tells the level last told again.

Staff transitions (acknowledge, owner, outcome, escalate, resolve, comment) lock the incident row, check the
transition, change it and append an ``incident_events`` row; acknowledging, escalating, recording an outcome or
resolving an incident does the same to its component alerts through ``carewatch.scoring.lifecycle`` (the alerts'
own writer). An invalid transition raises ``IncidentError`` with a message for the user.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from carewatch.alerts import ESCALATION_OUTCOMES, FOLLOW_UP_OUTCOMES, Severity
from carewatch.db import text_array
from carewatch.scoring import lifecycle
from carewatch.scoring.batches import lock_subjects
from carewatch.scoring.incidents import Component, IncidentPlan, OpenIncident, band_rank, plan_incident
from carewatch.subjects import Subject, SubjectKind, unnest

ACTOR = "scorer"
#: What staff may record as an incident's outcome (issue 16 adds follow-up on it): a monitoring plan kept in
#: the home, or the escalation outcomes of an alert.
OUTCOMES = frozenset({"monitoring_plan", *ESCALATION_OUTCOMES})


class IncidentError(ValueError):
    """A request that cannot be applied to the incident in its current state; the message says why."""


class IncidentNotFound(IncidentError):
    pass


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _event(conn: psycopg.Connection, incident_id: int, at: datetime, actor: str, action: str, *,
           outcome: str | None = None, comment: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO incident_events (incident_id, at, actor, action, outcome, comment, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (incident_id, at, actor, action, outcome, comment, Jsonb(_json(dict(detail or {})))),
    )


# ------------------------------------------------------------------------------------------------------------
# Grouping (the engine's side)
# ------------------------------------------------------------------------------------------------------------
def sync_incidents(conn: psycopg.Connection, subjects_in: Iterable[tuple[str, str]], now: datetime) -> list[int]:
    """Bring each (kind, id) subject's open incident in line with its unresolved alerts. Call inside the transaction
    that wrote the alerts, holding the subjects' locks. Returns the ids of incidents opened or changed."""
    kinds, ids = unnest(subjects_in)
    subjects = [Subject(k, i) for k, i in zip(kinds, ids, strict=True)]
    if not subjects:
        return []
    alerts: dict[Subject, list[tuple[Component, str, str | None]]] = {}
    linked: dict[int, int | None] = {}  # alert id -> its incident, None while it still has a deadline of its own
    for (alert_id, subject_kind, subject_id, kind, severity, reason, action, data, site_id, resident_id, incident_id,
         own_due) in conn.execute(
        "SELECT a.alert_id, a.subject_kind, a.subject_id, a.kind, a.severity, a.reason, a.action, a.data, a.site_id, "
        "a.resident_id, a.incident_id, a.ack_due_at IS NOT NULL "
        "FROM alerts a JOIN unnest(%s::text[], %s::text[]) AS p(subject_kind, subject_id) "
        "ON a.subject_kind = p.subject_kind AND a.subject_id = p.subject_id "
        "WHERE a.status <> 'resolved' ORDER BY a.alert_id", (text_array(kinds), text_array(ids)),
    ).fetchall():
        alerts.setdefault(Subject(subject_kind, subject_id), []).append(
            (Component(alert_id, kind, Severity(severity), reason, action, data or {}), site_id, resident_id))
        linked[alert_id] = None if own_due else incident_id
    current: dict[Subject, tuple[OpenIncident, str | None]] = {}
    for (incident_id, subject_kind, subject_id, severity, band, status, acked_at, due, headline, action, peak,
         members) in conn.execute(
        """SELECT i.incident_id, i.subject_kind, i.subject_id, i.severity, i.band, i.status, i.acknowledged_at,
                  i.ack_due_at, i.headline, i.action, i.peak_band,
                  ARRAY(SELECT alert_id FROM alerts a WHERE a.incident_id = i.incident_id AND a.status <> 'resolved')
           FROM incidents i JOIN unnest(%s::text[], %s::text[]) AS p(subject_kind, subject_id)
             ON i.subject_kind = p.subject_kind AND i.subject_id = p.subject_id
          WHERE i.status <> 'resolved' FOR UPDATE OF i""", (text_array(kinds), text_array(ids)),
    ).fetchall():
        current[Subject(subject_kind, subject_id)] = (
            OpenIncident(incident_id, Severity(severity), band, status, acked_at, due, headline, action,
                         frozenset(members)), peak)
    # a subject with no unresolved alert and no open incident has nothing to plan (plan_incident: "none")
    plans = {subject: plan_incident(current.get(subject, (None, None))[0], [c for c, _, _ in alerts.get(subject, [])],
                                    now) for subject in subjects if subject in alerts or subject in current}
    # new incidents' ids drawn in one query, so the writes below go without waiting (inside the caller's pipeline)
    opening = sum(1 for p in plans.values() if p.action == "open")
    fresh = [row[0] for row in conn.execute(
        "SELECT nextval(pg_get_serial_sequence('incidents', 'incident_id')) FROM generate_series(1, %s)",
        (opening,))] if opening else []
    fresh.reverse()

    def link(incident_id: int, alert_ids: Sequence[int]) -> None:  # only what is not linked yet (most are)
        if any(linked.get(a) != incident_id for a in alert_ids):
            _link(conn, incident_id, alert_ids)

    changed = []
    for subject, plan in plans.items():
        rows = alerts.get(subject, [])
        existing, peak = current.get(subject, (None, None))
        if plan.action == "none":
            if existing is not None:
                link(existing.incident_id, [c.alert_id for c in plan.components])
            continue
        if plan.action == "open":
            site_id, resident_id = rows[0][1], rows[0][2]
            incident_id = _open(conn, fresh.pop(), subject, site_id, resident_id, plan, now)
        else:
            assert existing is not None
            incident_id = existing.incident_id
            if plan.action == "resolve":
                conn.execute(
                    "UPDATE incidents SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s, "
                    "ack_due_at = NULL, notify_due_at = NULL, updated_at = %s WHERE incident_id = %s",
                    (now, ACTOR, "Every part of it has cleared.", now, incident_id))
            else:
                _update(conn, existing, plan, peak, now)
        for action, detail in plan.events:
            _event(conn, incident_id, now, ACTOR, action, detail=detail)
        if plan.action != "resolve":
            link(incident_id, [c.alert_id for c in plan.components])
        changed.append(incident_id)
    return changed


def _open(conn: psycopg.Connection, incident_id: int, subject: Subject, site_id: str, resident_id: str | None,
          plan: IncidentPlan, now: datetime) -> int:
    assert plan.severity is not None
    conn.execute(
        """INSERT INTO incidents (incident_id, site_id, resident_id, subject_kind, subject_id, category, severity,
                                  band, peak_band, status, headline, action, opened_at, updated_at, ack_due_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'open', %s, %s, %s, %s, %s)""",
        (incident_id, site_id, subject.id if subject.kind == SubjectKind.RESIDENT else resident_id, subject.kind,
         subject.id, plan.category, plan.severity.value, plan.band, plan.band,
         plan.headline, plan.action_text, now, now, plan.ack_due_at))
    return incident_id


def _update(conn: psycopg.Connection, existing: OpenIncident, plan: IncidentPlan, peak: str | None,
            now: datetime) -> None:
    assert plan.severity is not None
    new_peak = plan.band if band_rank(plan.band) > band_rank(peak) else peak
    if plan.realert:
        conn.execute(
            """UPDATE incidents SET severity = %s, band = %s, peak_band = %s, headline = %s, action = %s,
                      category = %s, updated_at = %s, acknowledged_at = NULL, acknowledged_by = NULL,
                      status = CASE WHEN status IN ('acknowledged', 'auto_escalated') THEN 'open' ELSE status END,
                      ack_due_at = %s,
                      -- worse again: the level last told hears it at once, and a fresh outcome is needed (H-INC-02)
                      notify_reason = CASE WHEN notify_level > 0 THEN 'risen' ELSE notify_reason END,
                      notify_due_at = CASE WHEN notify_level > 0 THEN %s::timestamptz ELSE notify_due_at END,
                      outcome = NULL, outcome_at = NULL, outcome_by = NULL, outcome_comment = NULL
               WHERE incident_id = %s""",
            (plan.severity.value, plan.band, new_peak, plan.headline, plan.action_text, plan.category, now,
             plan.ack_due_at, now, existing.incident_id))
    else:
        conn.execute(
            """UPDATE incidents SET severity = %s, band = %s, peak_band = %s, headline = %s, action = %s,
                      category = %s, updated_at = %s WHERE incident_id = %s""",
            (plan.severity.value, plan.band, new_peak, plan.headline, plan.action_text, plan.category, now,
             existing.incident_id))


def _link(conn: psycopg.Connection, incident_id: int, alert_ids: Sequence[int]) -> None:
    lifecycle.link_components(conn, incident_id, alert_ids)


def open_clinical_incidents(conn: psycopg.Connection, resident_ids: Sequence[str]) -> set[str]:
    """Residents with an open clinical incident (overdue observations then join it, H-TASK-02)."""
    return {row[0] for row in conn.execute(
        "SELECT subject_id FROM incidents WHERE subject_kind = 'resident' AND subject_id = ANY(%s::text[]) "
        "AND status <> 'resolved' AND category = 'clinical'", (text_array(resident_ids),)).fetchall()}


# ------------------------------------------------------------------------------------------------------------
# Automatic escalation: the notification ladder (carewatch.notify applies the site's policy and calls these)
# ------------------------------------------------------------------------------------------------------------
#: The actor of automatic escalation steps (as on alerts).
ESCALATION_ACTOR = lifecycle.ESCALATION_ACTOR


def auto_escalate(conn: psycopg.Connection, incident_id: int, *, level: int, reason: str,
                  next_due: datetime | None, level_name: str, recipients: Sequence[str], at: datetime) -> None:
    """The policy's next level was told about the incident (level 1: event 'notified'; from level 2: status and
    event 'auto_escalated'), never the status 'escalated', which means a person escalated it outside the home
    (H-ESC-05). One incident, one ladder: its components are not notified themselves (H-INC-01)."""
    with conn.transaction():
        conn.execute(
            """UPDATE incidents SET notify_level = %(level)s, notify_reason = %(reason)s, notify_due_at = %(due)s,
                      status = CASE WHEN %(level)s >= 2 AND status IN ('open', 'acknowledged') THEN 'auto_escalated'
                                    ELSE status END,
                      updated_at = %(at)s
               WHERE incident_id = %(id)s""",
            {"level": level, "reason": reason, "due": next_due, "at": at, "id": incident_id})
        why = ("not acknowledged" if reason == "unacknowledged" else
               "acknowledged, but no outcome recorded in time")
        _event(conn, incident_id, at, ESCALATION_ACTOR, "notified" if level == 1 else "auto_escalated",
               comment=f"Level {level} ({level_name}) told: {why}."
                       + ("" if recipients else " Nobody is on the rota at this level."),
               detail={"level": level, "reason": reason, "automatic": True, "recipients": list(recipients),
                       "next_due": next_due.isoformat() if next_due else None})


def await_outcome(conn: psycopg.Connection, incident_id: int, *, due: datetime | None, at: datetime) -> None:
    """Acknowledged: the outcome is due by ``due`` (on the escalation clock), or the senior is told (H-ESC-06)."""
    with conn.transaction():
        conn.execute(
            """UPDATE incidents SET notify_reason = 'awaiting_outcome', notify_due_at = %s
               WHERE incident_id = %s AND status <> 'resolved' AND outcome_at IS NULL""", (due, incident_id))
        _event(conn, incident_id, at, ESCALATION_ACTOR, "outcome_due",
               comment=f"Acknowledged: record what was done by {due:%H:%M} UTC" if due else None,
               detail={"due": due.isoformat() if due else None, "automatic": True})


def hurry_escalation(conn: psycopg.Connection, incident_id: int, *, level: int, reason: str, at: datetime) -> None:
    """Nobody was reached at ``level`` (nobody on the rota, every channel failed): the next level is due now."""
    with conn.transaction():
        changed = conn.execute(
            """UPDATE incidents SET notify_due_at = %s WHERE incident_id = %s AND status <> 'resolved'
                 AND notify_level = %s AND notify_reason = %s AND notify_due_at IS NOT NULL AND notify_due_at > %s""",
            (at, incident_id, level, reason, at)).rowcount
        if changed:
            _event(conn, incident_id, at, ESCALATION_ACTOR, "notify_failed",
                   comment=f"Nobody was reached at level {level}: the next level is told now.",
                   detail={"level": level, "reason": reason, "automatic": True})


# ------------------------------------------------------------------------------------------------------------
# What staff do
# ------------------------------------------------------------------------------------------------------------
def _now(conn: psycopg.Connection, at: datetime | None) -> datetime:
    return lifecycle.request_time(conn, at, IncidentError)


def _actor(actor: str) -> str:
    return lifecycle.request_actor(actor, IncidentError)


def _lock(conn: psycopg.Connection, incident_id: int) -> dict[str, Any]:
    """The incident row, FOR UPDATE, after its subject's advisory lock: the engine takes that lock before it
    touches the subject's alerts and incident, so staff and engine always lock in the same order (no deadlock)."""
    subject = conn.execute("SELECT subject_id FROM incidents WHERE incident_id = %s", (incident_id,)).fetchone()
    if subject is None:
        raise IncidentNotFound(f"incident {incident_id} does not exist")
    lock_subjects(conn, [subject[0]])
    row = conn.execute(
        "SELECT incident_id, status, acknowledged_at, acknowledged_by, resolved_at, resolved_by FROM incidents "
        "WHERE incident_id = %s FOR UPDATE", (incident_id,)).fetchone()
    if row is None:
        raise IncidentNotFound(f"incident {incident_id} does not exist")
    return dict(zip(("incident_id", "status", "acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by"),
                    row, strict=True))


def _not_resolved(incident: dict[str, Any], verb: str) -> None:
    if incident["status"] == "resolved":
        raise IncidentError(f"cannot {verb} incident {incident['incident_id']}: it was resolved by "
                            f"{incident['resolved_by']} at {incident['resolved_at']:%Y-%m-%d %H:%M} UTC")


def _required(text: str, message: str) -> str:
    """``text`` stripped; IncidentError(``message``) when there is nothing in it."""
    if not text or not text.strip():
        raise IncidentError(message)
    return text.strip()


@contextlib.contextmanager
def _unresolved_change(conn: psycopg.Connection, incident_id: int, verb: str, at: datetime | None,
                       check: Callable[[dict[str, Any]], None] | None = None) -> Iterator[datetime]:
    """One transaction holding the incident's lock, refused when it is resolved (or ``check`` of the locked row
    refuses); yields the change's time."""
    with conn.transaction():
        incident = _lock(conn, incident_id)
        _not_resolved(incident, verb)
        if check is not None:
            check(incident)
        yield _now(conn, at)


def _not_acknowledged(incident: dict[str, Any]) -> None:
    if incident["acknowledged_at"] is not None:
        raise IncidentError(f"incident {incident['incident_id']} is already acknowledged by "
                            f"{incident['acknowledged_by']} at {incident['acknowledged_at']:%Y-%m-%d %H:%M} UTC")


def _components(conn: psycopg.Connection, incident_id: int, *, unacknowledged: bool = False) -> list[int]:
    extra = " AND acknowledged_at IS NULL" if unacknowledged else ""
    return [r[0] for r in conn.execute(
        f"SELECT alert_id FROM alerts WHERE incident_id = %s AND status <> 'resolved'{extra} ORDER BY alert_id",
        (incident_id,)).fetchall()]


def acknowledge(conn: psycopg.Connection, incident_id: int, actor: str, comment: str | None = None, *,
                at: datetime | None = None) -> None:
    """Someone has seen the incident and is dealing with it: its components are acknowledged with it."""
    actor = _actor(actor)
    with _unresolved_change(conn, incident_id, "acknowledge", at, _not_acknowledged) as now:
        conn.execute(
            "UPDATE incidents SET status = CASE WHEN status IN ('open', 'auto_escalated') THEN 'acknowledged' "
            "ELSE status END, "
            "acknowledged_at = %s, acknowledged_by = %s, owner = coalesce(owner, %s), ack_due_at = NULL, "
            "updated_at = %s WHERE incident_id = %s", (now, actor, actor, now, incident_id))
        for alert_id in _components(conn, incident_id, unacknowledged=True):
            lifecycle.acknowledge(conn, alert_id, actor, f"with incident {incident_id}", at=now)
        _event(conn, incident_id, now, actor, "acknowledged", comment=comment)


def set_owner(conn: psycopg.Connection, incident_id: int, actor: str, owner: str, *,
              at: datetime | None = None) -> None:
    actor = _actor(actor)
    owner = _required(owner, "name the owner")
    with _unresolved_change(conn, incident_id, "change the owner of", at) as now:
        conn.execute("UPDATE incidents SET owner = %s, updated_at = %s WHERE incident_id = %s",
                     (owner, now, incident_id))
        _event(conn, incident_id, now, actor, "owner", detail={"owner": owner})


def record_outcome(conn: psycopg.Connection, incident_id: int, actor: str, outcome: str,
                   comment: str | None = None, *, at: datetime | None = None) -> None:
    """What was decided (a monitoring plan, GP called, NHS 111, 999, admitted...). Counts as acknowledging."""
    actor = _actor(actor)
    lifecycle.check_outcome(outcome, comment, OUTCOMES, error=IncidentError)
    with _unresolved_change(conn, incident_id, "record an outcome for", at) as now:
        conn.execute(
            """UPDATE incidents SET outcome = %s, outcome_comment = %s, outcome_at = %s, outcome_by = %s,
                      acknowledged_at = coalesce(acknowledged_at, %s), acknowledged_by = coalesce(acknowledged_by, %s),
                      status = CASE WHEN status IN ('open', 'auto_escalated') THEN 'acknowledged' ELSE status END,
                      owner = coalesce(owner, %s), ack_due_at = NULL, notify_due_at = NULL, updated_at = %s
               WHERE incident_id = %s""",
            (outcome, comment, now, actor, now, actor, actor, now, incident_id))
        for alert_id in _components(conn, incident_id):  # the outcome ends their follow-up escalation (H-ESC-06)
            lifecycle.record_outcome(conn, alert_id, actor, outcome, f"with incident {incident_id}", at=now)
        _event(conn, incident_id, now, actor, "outcome", outcome=outcome, comment=comment)


def escalate(conn: psycopg.Connection, incident_id: int, actor: str, outcome: str, comment: str | None = None, *,
             at: datetime | None = None) -> None:
    """A person escalated the incident outside the home (GP, NHS 111, 999...): status 'escalated', event
    'escalated' with ``automatic: false`` (the ladder's own steps are 'auto_escalated', H-ESC-05). Counts as
    acknowledging; a GP, 111, 999 or admission outcome is also its outcome (ends the follow-up, H-ESC-06). Its
    components are escalated with it (their SBARD decision)."""
    actor = _actor(actor)
    lifecycle.check_outcome(outcome, comment, ESCALATION_OUTCOMES, "escalation outcome", IncidentError)
    follow = outcome in FOLLOW_UP_OUTCOMES
    with _unresolved_change(conn, incident_id, "escalate", at) as now:
        conn.execute(
            """UPDATE incidents SET status = 'escalated', escalation_level = escalation_level + 1,
                      escalated_at = %(now)s, escalated_by = %(actor)s,
                      acknowledged_at = coalesce(acknowledged_at, %(now)s),
                      acknowledged_by = coalesce(acknowledged_by, %(actor)s), owner = coalesce(owner, %(actor)s),
                      ack_due_at = NULL, updated_at = %(now)s,
                      outcome = CASE WHEN %(follow)s THEN %(outcome)s ELSE outcome END,
                      outcome_comment = CASE WHEN %(follow)s THEN %(comment)s ELSE outcome_comment END,
                      outcome_at = CASE WHEN %(follow)s THEN %(now)s ELSE outcome_at END,
                      outcome_by = CASE WHEN %(follow)s THEN %(actor)s ELSE outcome_by END,
                      notify_due_at = CASE WHEN %(follow)s THEN NULL ELSE notify_due_at END
               WHERE incident_id = %(id)s""",
            {"now": now, "actor": actor, "follow": follow, "outcome": outcome, "comment": comment,
             "id": incident_id})
        for alert_id in _components(conn, incident_id):
            lifecycle.escalate(conn, alert_id, actor, outcome, comment or f"with incident {incident_id}", at=now)
        _event(conn, incident_id, now, actor, "escalated", outcome=outcome, comment=comment,
               detail={"automatic": False})


def resolve(conn: psycopg.Connection, incident_id: int, actor: str, resolution: str, *,
            at: datetime | None = None) -> None:
    """Close the incident and its components, saying how it ended."""
    actor = _actor(actor)
    resolution = _required(resolution, "say how the incident was resolved")
    with _unresolved_change(conn, incident_id, "resolve", at) as now:
        conn.execute(
            "UPDATE incidents SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s, "
            "ack_due_at = NULL, notify_due_at = NULL, updated_at = %s WHERE incident_id = %s",
            (now, actor, resolution, now, incident_id))
        for alert_id in _components(conn, incident_id):
            lifecycle.resolve(conn, alert_id, actor, f"with incident {incident_id}: {resolution}", at=now)
        _event(conn, incident_id, now, actor, "resolved", comment=resolution)


def comment(conn: psycopg.Connection, incident_id: int, actor: str, text: str, *, at: datetime | None = None) -> None:
    actor = _actor(actor)
    text = _required(text, "a comment cannot be empty")
    with conn.transaction():
        _lock(conn, incident_id)
        _event(conn, incident_id, _now(conn, at), actor, "commented", comment=text)
