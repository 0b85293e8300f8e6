"""The escalation shell: find what is due, apply the policy's next step, deliver it, and record every attempt.

``escalation_pass`` (in one transaction): the incidents whose next step is due (``policy.next_step``), locked with
SKIP LOCKED so two scorers never notify twice; each step is an incident transition (status ``auto_escalated``
from level 2, an ``auto_escalated``/``notified`` event) and one pending delivery per contact. ``deliver_pending``
(outside any transaction holding alert locks): sends them through the channels at once, each within a timeout,
records the results, and moves a step that reached nobody on to the next level at once.

What is notified is one place, ``TARGET``: incidents (one person's problem, one ladder); ``ALERTS`` is kept for
the alert-level history and tests of the pure rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from carewatch.alerts import Severity
from carewatch.db import SITE_LIST_PREPARE
from carewatch.notify import deliveries, store
from carewatch.notify.channels import Attempt, Channel, Result, send_all
from carewatch.notify.policy import (
    EscalationPolicy,
    Message,
    NotifyState,
    Reason,
    Step,
    compose,
    next_step,
    route_prompt,
)
from carewatch.scoring import incident_store, lifecycle

log = logging.getLogger("carewatch.notify.escalation")

#: Alert kinds in words for messages (the dashboard has the same words; both read this).
KIND_WORDS = {"news2": "NEWS2 score", "news2_rising": "NEWS2 rising", "soft_signs": "soft signs of illness",
              "obs_overdue": "observations overdue", "long_bathroom_stay": "long stay in the bathroom",
              "gateway_offline": "home hub offline"}


def _alert_rows(conn: psycopg.Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return {r["target_id"]: r for r in cur.execute(
            """SELECT a.alert_id AS target_id, a.site_id, s.name AS site_name, a.kind, a.severity, a.status,
                      a.acknowledged_at, a.opened_at, a.reason, a.action, a.score, a.data->>'risk' AS risk,
                      coalesce(r.display_name, a.subject_id) AS who
               FROM alerts a JOIN sites s ON s.site_id = a.site_id
               LEFT JOIN residents r ON r.resident_id = a.resident_id
               WHERE a.alert_id = ANY(%s)""", (list(ids),)).fetchall()}



@dataclass(frozen=True)
class Target:
    """What gets notified: its kind (as the delivery log names it) and the query that finds candidates.

    The query returns the columns of :class:`NotifyState` plus what a message needs, for rows that may be due
    (the pure rule decides), locked FOR UPDATE SKIP LOCKED."""

    kind: str
    candidates_sql: str
    message_rows: Callable[[psycopg.Connection, Sequence[int]], dict[int, dict[str, Any]]]
    auto_escalate: Callable[..., None]
    hurry: Callable[..., None]
    await_outcome: Callable[..., None]


def _may_be_due(t: str, kind: str) -> str:
    """The SQL condition on target table alias ``t`` (``kind``: its NEWS2-or-not column) for a row that may be due
    a step: unacknowledged and never told, told for another reason, or its window over; or acknowledged, NEWS2,
    and not yet waiting for (or its window for) an outcome over."""
    return f"""(({t}.acknowledged_at IS NULL
            AND ({t}.notify_level = 0 OR {t}.notify_reason IS DISTINCT FROM 'unacknowledged'
                 OR {t}.notify_due_at <= %(now)s))
        OR ({t}.acknowledged_at IS NOT NULL AND {kind} = 'news2'
            AND (coalesce({t}.notify_reason, '') NOT IN ('awaiting_outcome', 'no_outcome')
                 OR {t}.notify_due_at <= %(now)s)))"""


#: An alert or incident (``t``) about a device of a practice kit (its battery, its silence between trainings): nobody
#: is told, as for the practice resident (H-KIT-07).
_PRACTICE_DEVICE = """({t}.subject_kind = 'device' AND EXISTS (
          SELECT 1 FROM devices pd JOIN kits pk ON pk.kit_id = pd.kit_id
          WHERE pd.device_id = {t}.subject_id AND pk.practice))"""


ALERTS = Target("alert", f"""
    SELECT a.alert_id AS target_id, a.site_id, s.name AS site_name, a.kind, a.severity, a.status,
           a.acknowledged_at, a.notify_level, a.notify_reason, a.notify_due_at, a.outcome_at IS NOT NULL AS outcome,
           a.opened_at, a.reason, a.action, a.score, a.data->>'risk' AS risk,
           coalesce(r.display_name, a.subject_id) AS who
    FROM alerts a JOIN sites s ON s.site_id = a.site_id LEFT JOIN residents r ON r.resident_id = a.resident_id
    WHERE a.status <> 'resolved' AND a.severity IN ('medium', 'high') AND a.outcome_at IS NULL
      AND (%(sites)s::text[] IS NULL OR a.site_id = ANY(%(sites)s))
      AND NOT coalesce(r.practice, false)  -- practice mode's training resident: nobody is told (H-KIT-07)
      AND NOT {_PRACTICE_DEVICE.format(t='a')}
      -- one ladder per incident: its worst unresolved medium or high alert (alert fatigue, H-ESC-04)
      AND NOT EXISTS (
          SELECT 1 FROM alerts b WHERE a.incident_id IS NOT NULL AND b.incident_id = a.incident_id
             AND b.alert_id <> a.alert_id AND b.status <> 'resolved' AND b.severity IN ('medium', 'high')
             AND (b.severity = 'high' AND a.severity = 'medium'
                  OR (b.severity = a.severity AND (b.kind = 'news2') > (a.kind = 'news2'))
                  OR (b.severity = a.severity AND (b.kind = 'news2') = (a.kind = 'news2') AND b.alert_id < a.alert_id)))
      AND {_may_be_due('a', 'a.kind')}
    ORDER BY a.alert_id
    FOR UPDATE OF a SKIP LOCKED""", _alert_rows, lifecycle.auto_escalate, lifecycle.hurry_escalation,
                lifecycle.await_outcome)

#: The incident's headline component for a message: a medium/high NEWS2 component first (its score, risk and route,
#: and the outcome it needs), else its worst component. Incidents carry one ladder (H-INC-01, H-ESC-04).
_HEAD_SQL = """LEFT JOIN LATERAL (
        SELECT a.kind, a.score, a.data->>'risk' AS risk FROM alerts a
        WHERE a.incident_id = i.incident_id AND a.status <> 'resolved'
        ORDER BY (a.kind = 'news2' AND a.severity IN ('medium', 'high')) DESC,
                 CASE a.severity WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END DESC,
                 a.alert_id
        LIMIT 1) h ON true"""
_INCIDENT_COLUMNS = """i.incident_id AS target_id, i.site_id, s.name AS site_name,
           coalesce(h.kind, i.category) AS kind, i.severity, i.status, i.acknowledged_at, i.notify_level,
           i.notify_reason, i.notify_due_at, i.outcome_at IS NOT NULL AS outcome, i.opened_at, i.headline AS reason,
           i.action, h.score, h.risk, coalesce(r.display_name, i.subject_id) AS who"""


def _incident_rows(conn: psycopg.Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return {r["target_id"]: r for r in cur.execute(
            f"""SELECT {_INCIDENT_COLUMNS}
                FROM incidents i JOIN sites s ON s.site_id = i.site_id
                LEFT JOIN residents r ON r.resident_id = i.resident_id {_HEAD_SQL}
                WHERE i.incident_id = ANY(%s)""", (list(ids),)).fetchall()}


INCIDENTS = Target("incident", f"""
    SELECT {_INCIDENT_COLUMNS}
    FROM incidents i JOIN sites s ON s.site_id = i.site_id LEFT JOIN residents r ON r.resident_id = i.resident_id
    {_HEAD_SQL}
    WHERE i.status <> 'resolved' AND i.severity IN ('medium', 'high') AND i.outcome_at IS NULL
      AND (%(sites)s::text[] IS NULL OR i.site_id = ANY(%(sites)s))
      AND NOT coalesce(r.practice, false)  -- practice mode's training resident: nobody is told (H-KIT-07)
      AND NOT {_PRACTICE_DEVICE.format(t='i')}
      AND {_may_be_due('i', 'h.kind')}
    ORDER BY i.incident_id
    FOR UPDATE OF i SKIP LOCKED""", _incident_rows, incident_store.auto_escalate, incident_store.hurry_escalation,
                    incident_store.await_outcome)

#: The one switch between notifying on alerts and on incidents: incidents (issue 15 landed). One incident, one
#: ladder: a component alert joining it never starts a ladder of its own (H-INC-01).
TARGET = INCIDENTS


@dataclass(frozen=True)
class Planned:
    """A step taken: for the caller's log and the tests."""

    target_id: int
    level: int
    reason: str
    delivery_ids: tuple[int, ...]


def _state(row: Mapping[str, Any]) -> NotifyState:
    return NotifyState(kind=row["kind"], severity=Severity(row["severity"]), status=row["status"],
                       acknowledged_at=row["acknowledged_at"], notify_level=row["notify_level"],
                       notify_reason=row["notify_reason"], notify_due_at=row["notify_due_at"],
                       outcome_recorded=bool(row["outcome"]))


def message_for(row: Mapping[str, Any], step: Step, policy: EscalationPolicy, now: datetime,
                link: str | None = None, target_kind: str | None = None) -> Message:
    severity = Severity(row["severity"])
    waited = policy.outcome_window(severity) if step.reason is Reason.NO_OUTCOME else now - row["opened_at"]
    return compose(target_kind=target_kind or TARGET.kind, target_id=row["target_id"], site_id=row["site_id"],
                   site_name=row["site_name"], who=row["who"],
                   what=KIND_WORDS.get(row["kind"], row["kind"].replace("_", " ")) + f" ({row['reason']})",
                   severity=Severity(row["severity"]), step=step, policy=policy,
                   route=route_prompt(row["kind"], Severity(row["severity"]), row["score"], row["risk"]),
                   action=row["action"], waited=waited, link=link)


def escalation_pass(conn: psycopg.Connection, now: datetime, *,
                    site_ids: Sequence[str] | None = None) -> list[Planned]:
    """Take every step that is due now (one transaction); deliveries are left pending for ``deliver_pending``.
    ``site_ids``: only these sites (a scorer replica's share, scoring/replicas.py; an empty list is none, None is
    every site)."""
    planned: list[Planned] = []
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(TARGET.candidates_sql,
                           {"now": now, "sites": None if site_ids is None else list(site_ids)},
                           prepare=SITE_LIST_PREPARE).fetchall()
        if not rows:
            return planned
        policies = store.load_many(conn, {r["site_id"] for r in rows})
        for row in rows:
            policy = policies[row["site_id"]]
            step = next_step(policy, _state(row), now)
            if step is None:
                continue
            if step.reason is Reason.AWAITING_OUTCOME:
                TARGET.await_outcome(conn, row["target_id"], due=step.next_due, at=now)
                continue
            level = policy.level(step.level)
            TARGET.auto_escalate(conn, row["target_id"], level=step.level, reason=step.reason.value,
                                    next_due=step.next_due, level_name=level.name,
                                    recipients=[f"{c.channel.value}:{c.recipient}" for c in step.contacts], at=now)
            ids: list[int] = []
            if not step.contacts:
                deliveries.record_nobody(conn, site_id=row["site_id"], target_kind=TARGET.kind,
                                         target_id=row["target_id"], level=step.level, reason=step.reason.value,
                                         at=now, level_name=level.name)
            for contact in step.contacts:
                ids.append(deliveries.record_pending(
                    conn, site_id=row["site_id"], target_kind=TARGET.kind, target_id=row["target_id"],
                    level=step.level, reason=step.reason.value, channel=contact.channel.value,
                    recipient=contact.recipient, at=now))
            if not step.contacts:
                TARGET.hurry(conn, row["target_id"], level=step.level, reason=step.reason.value, at=now)
            planned.append(Planned(row["target_id"], step.level, step.reason.value, tuple(ids)))
    return planned


def _message_rows(conn: psycopg.Connection, todo: Sequence[deliveries.Pending]) -> dict[tuple[str, int],
                                                                                  dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for target in (INCIDENTS, ALERTS):
        ids = sorted({p.target_id for p in todo if p.target_kind == target.kind})
        if ids:
            out.update({(target.kind, k): v for k, v in target.message_rows(conn, ids).items()})
    return out


def estate_message(row: Mapping[str, Any], link: str | None = None) -> Message:
    """The estate's own notification (scoring stalled at a site): for its admins, not the home's ladder."""
    head = f"Carewatch ESTATE: {row['site_name']}: {KIND_WORDS.get(row['kind'], row['kind'].replace('_', ' '))}"
    return Message("alert", row["target_id"], row["site_id"], row["site_name"], 1, "Estate admins",
                   deliveries.ESTATE, row["severity"], head, f"{head}. {row['reason']} {row['action']}", link)


def deliver_pending(conn: psycopg.Connection, channels: Mapping[str, Channel], now: datetime, *,
                    timeout: float = 5.0, link: str | None = None,
                    site_ids: Sequence[str] | None = None, claimant: str = "notify") -> dict[int, str]:
    """Claim the pending attempts of these sites (atomically: two replicas never send one twice), send them all at
    once, each within ``timeout``, and record the results. A step whose attempts all failed moves on to the next
    level at once (nobody was reached). Returns delivery id -> result."""
    todo = deliveries.claim(conn, claimant, site_ids=site_ids)
    if not todo:
        return {}
    rows = _message_rows(conn, todo)
    policies = store.load_many(conn, {p.site_id for p in todo})
    attempts = []
    for p in todo:
        row = rows.get((p.target_kind, p.target_id))
        if row is None:
            continue
        if p.reason == deliveries.ESTATE:
            attempts.append(Attempt(p.delivery_id, p.channel, p.recipient, estate_message(row, link)))
            continue
        policy = policies[p.site_id]
        step = Step(p.level, Reason(p.reason), tuple(policy.level(p.level).contacts), None)
        attempts.append(Attempt(p.delivery_id, p.channel, p.recipient, message_for(row, step, policy, p.created_at,
                                                                                  link, p.target_kind)))
    results = send_all(channels, attempts, timeout=timeout)
    for p in todo:
        if (p.target_kind, p.target_id) not in rows:
            results[p.delivery_id] = Result("failed", f"{p.target_kind} {p.target_id} no longer exists")
    deliveries.record_results(conn, results, claimant)
    with conn.transaction():
        for kind, target_id, level, reason in deliveries.undelivered_levels(conn, results):
            if kind == TARGET.kind and reason != deliveries.ESTATE:
                TARGET.hurry(conn, target_id, level=level, reason=reason, at=now)
    for key, r in results.items():
        if not r.delivered:
            log.warning("notification_not_delivered delivery_id=%s result=%s detail=%s", key, r.result, r.detail)
    return {k: r.result for k, r in results.items()}


#: Unresolved scoring_stalled alerts the estate's admins have not been told of (alerts.notify_level 0), locked so
#: that of several replicas running this, one records the attempts (the alert's notify_level is set with them).
_STALLED_SQL = """SELECT a.alert_id AS target_id, a.site_id FROM alerts a
    WHERE a.kind = 'scoring_stalled' AND a.status <> 'resolved' AND a.notify_level = 0
    ORDER BY a.alert_id FOR UPDATE SKIP LOCKED"""


def estate_pass(conn: psycopg.Connection, contacts: Sequence[tuple[str, str]], now: datetime) -> list[int]:
    """Tell the estate's admins (``contacts``: (channel, recipient), from settings ``notify_estate_contacts``)
    about every site whose scoring has stalled (H-ESC-12): one pending attempt per contact, once per alert. Its
    bucket may have no holder (that is why it stalled), so any replica runs this and delivers them. With no
    contacts, the attempt is recorded as reaching nobody. Returns the alert ids told about."""
    told: list[int] = []
    with conn.transaction():
        rows = conn.execute(_STALLED_SQL).fetchall()
        for alert_id, site_id in rows:
            if not contacts:
                deliveries.record_nobody(
                    conn, site_id=site_id, target_kind="alert", target_id=alert_id, level=1, reason=deliveries.ESTATE,
                    at=now, detail="no estate contacts are configured (CAREWATCH_NOTIFY_ESTATE_CONTACTS): nobody was "
                                   "told")
            for channel, recipient in contacts:
                deliveries.record_pending(conn, site_id=site_id, target_kind="alert", target_id=alert_id, level=1,
                                          reason=deliveries.ESTATE, channel=channel, recipient=recipient, at=now)
            lifecycle.notify_estate(conn, alert_id, recipients=[f"{c}:{r}" for c, r in contacts], at=now)
            told.append(alert_id)
    return told


def run_once(conn: psycopg.Connection, channels: Mapping[str, Channel], now: datetime, *, timeout: float = 5.0,
             link: str | None = None, site_ids: Sequence[str] | None = None,
             claimant: str = "notify") -> list[Planned]:
    """One round: take the due steps, then deliver (the tests call this; the scorer's tick takes the steps and
    its notify loop delivers)."""
    planned = escalation_pass(conn, now, site_ids=site_ids)
    deliver_pending(conn, channels, now, timeout=timeout, link=link, site_ids=site_ids, claimant=claimant)
    return planned
