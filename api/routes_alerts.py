"""Alerts: the inbox (most severe first), one alert with its history, and the actions people take on them.

State changes go through ``carewatch.scoring.lifecycle`` (the one implementation of alert transitions); an
invalid transition (e.g. acknowledging a resolved alert) is a 409 with the lifecycle's own message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, HTTPException, Query, status
from psycopg.rows import dict_row

from carewatch.alerts import UNRESOLVED_STATUSES, AlertKind, Severity, snooze_limit
from carewatch.api import alerting, scope
from carewatch.api.deps import Context, Ctx, Paging
from carewatch.api.schemas import (
    AcknowledgeIn,
    AlertDetail,
    AlertEventOut,
    AlertOut,
    AlertOutcomeIn,
    CommentIn,
    EscalateIn,
    Page,
    ResolveIn,
    SnoozeIn,
    SnoozeOut,
    page_of,
)
from carewatch.api.scope import Permission
from carewatch.scoring import incident_store, lifecycle
from carewatch.subjects import Subject, SubjectKind

router = APIRouter(tags=["alerts"])
UNRESOLVED = list(UNRESOLVED_STATUSES)
_ALERT_FIELDS = set(AlertOut.model_fields)
SEVERITY_ORDER = "CASE a.severity WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END"


def _alert_out(row: dict[str, Any]) -> AlertOut:
    return AlertOut(**{k: v for k, v in row.items() if k in _ALERT_FIELDS})


@router.get("/alerts", response_model=Page[AlertOut],
            summary="Alerts you can see, most severe first, then newest (the GP inbox)")
def list_alerts(
    ctx: Context,
    paging: Paging,
    site: str | None = None,
    resident: str | None = None,
    alert_status: Annotated[list[str] | None, Query(alias="status", description="Repeatable; default: unresolved.")]
    = None,
    severity: Annotated[list[Severity] | None, Query(description="Repeatable.")] = None,
    kind: Annotated[list[AlertKind] | None, Query(description="Repeatable.")] = None,
    since: Annotated[datetime | None, Query(description="Opened or updated at or after this time.")] = None,
) -> dict:
    statuses = alerting.statuses(alert_status, UNRESOLVED)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            alerting.named_rows_sql(
                "alerts", "a", scope.alert_predicate(ctx.principal),
                """AND (%(severity)s::text[] IS NULL OR a.severity = ANY(%(severity)s))
                  AND (%(kind)s::text[] IS NULL OR a.kind = ANY(%(kind)s))
                  AND (%(since)s::timestamptz IS NULL OR a.updated_at >= %(since)s)""",
                f"{SEVERITY_ORDER} DESC, a.opened_at DESC, a.alert_id DESC"),
            {**ctx.params, "statuses": statuses, "site": site, "resident": resident,
             "severity": [s.value for s in severity] if severity else None,
             "kind": [k.value for k in kind] if kind else None, "since": since, "limit": paging.limit + 1,
             "offset": paging.offset},
        ).fetchall()
    alerting.noted_page(ctx, rows, paging, "alert", "alert_id")
    return page_of([_alert_out(r) for r in rows], paging.limit, paging.offset)


def _detail(ctx: Ctx, row: dict[str, Any]) -> AlertDetail:
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        events = cur.execute("SELECT * FROM alert_events WHERE alert_id = %s ORDER BY at, event_id",
                             (row["alert_id"],)).fetchall()
    return AlertDetail(**_alert_out(row).model_dump(), events=[AlertEventOut(**{
        k: v for k, v in e.items() if k in AlertEventOut.model_fields}) for e in events])


@router.get("/alerts/{alert_id}", response_model=AlertDetail, summary="One alert with its history")
def get_alert(ctx: Context, alert_id: int) -> AlertDetail:
    return _detail(ctx, ctx.alert(alert_id))


# ------------------------------------------------------------------------------------------------------------
def _transition_errors(module: Any) -> tuple[type[Exception], ...]:
    """Exceptions that mean "not allowed in this state": ValueError/LookupError and any error class the
    lifecycle module defines itself. Database errors are not among them (they are real failures)."""
    own = tuple(v for v in vars(module).values()
                if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == module.__name__)
    return (ValueError, LookupError, *own)


TRANSITION_ERRORS = _transition_errors(lifecycle)


def _apply(ctx: Ctx, alert_id: int, action: str, call: Callable[[Any], Any], **detail: Any) -> AlertDetail:
    ctx.require(Permission.ACT_ON_ALERT)
    ctx.alert(alert_id, action="update", change=action, **detail)
    alerting.transition(ctx, lambda: call(lifecycle), TRANSITION_ERRORS, f"cannot {action} this alert now")
    return _detail(ctx, scope.load_alert(ctx.conn, ctx.principal, alert_id))


def _open_incident(ctx: Ctx, alert_id: int) -> tuple[int, bool] | None:
    """The unresolved incident this alert is part of, and whether it is acknowledged. Notifications follow the
    incident (H-ESC-13): acknowledging, escalating or recording an outcome on one of its alerts acts on the
    incident, so its ladder stops exactly as it does from the incident's own card."""
    row = ctx.conn.execute(
        "SELECT i.incident_id, i.acknowledged_at IS NOT NULL FROM alerts a JOIN incidents i "
        "ON i.incident_id = a.incident_id WHERE a.alert_id = %s AND i.resolved_at IS NULL", (alert_id,)).fetchone()
    return (row[0], row[1]) if row else None


def _decided_on_its_incident(ctx: Ctx, alert_id: int, action: str, outcome: str, comment: str | None,
                             on_incident: Callable[..., None], on_alert: Callable[..., None]) -> AlertDetail:
    """Escalating or recording an outcome: on the alert's open incident when it has one (which records it on its
    components, this alert among them), else on the alert alone."""
    user = ctx.principal.username

    def act(_lifecycle: Any) -> None:
        incident = _open_incident(ctx, alert_id)
        if incident is not None:
            on_incident(ctx.conn, incident[0], user, outcome, comment=comment)
        else:
            on_alert(ctx.conn, alert_id, user, outcome, comment=comment)

    return _apply(ctx, alert_id, action, act, outcome=outcome)


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertDetail,
             summary="Acknowledge: someone is looking at it (its incident too, when it is part of one)",
             responses={409: {"description": "Not open"}})
def acknowledge(ctx: Context, alert_id: int, body: AcknowledgeIn) -> AlertDetail:
    user = ctx.principal.username

    def act(m: Any) -> None:
        incident = _open_incident(ctx, alert_id)
        if incident is not None and not incident[1]:
            incident_store.acknowledge(ctx.conn, incident[0], user, body.comment)  # acknowledges this alert too
        else:
            m.acknowledge(ctx.conn, alert_id, user, comment=body.comment)

    return _apply(ctx, alert_id, "acknowledge", act)


@router.post("/alerts/{alert_id}/escalate", response_model=AlertDetail,
             summary="Record an escalation and its outcome (GP called, NHS 111, 999, ...); on its incident too",
             responses={409: {"description": "Already resolved"}})
def escalate(ctx: Context, alert_id: int, body: EscalateIn) -> AlertDetail:
    return _decided_on_its_incident(ctx, alert_id, "escalate", body.outcome.value, body.comment,
                                    incident_store.escalate, lifecycle.escalate)


@router.post("/alerts/{alert_id}/outcome", response_model=AlertDetail,
             summary="Record what was done after acknowledging (monitoring plan, GP, 111, 999, admitted): a medium "
                     "or high NEWS2 alert without one escalates again; recorded on its incident too",
             responses={409: {"description": "Resolved"}})
def outcome(ctx: Context, alert_id: int, body: AlertOutcomeIn) -> AlertDetail:
    return _decided_on_its_incident(ctx, alert_id, "outcome", body.outcome.value, body.comment,
                                    incident_store.record_outcome, lifecycle.record_outcome)


@router.post("/alerts/{alert_id}/resolve", response_model=AlertDetail, summary="Resolve with what was done",
             responses={409: {"description": "Already resolved"}})
def resolve(ctx: Context, alert_id: int, body: ResolveIn) -> AlertDetail:
    return _apply(ctx, alert_id, "resolve",
                  lambda m: m.resolve(ctx.conn, alert_id, ctx.principal.username, body.resolution))


@router.post("/alerts/{alert_id}/comment", response_model=AlertDetail, summary="Add a comment to the history")
def comment(ctx: Context, alert_id: int, body: CommentIn) -> AlertDetail:
    return _apply(ctx, alert_id, "comment", lambda m: m.comment(ctx.conn, alert_id, ctx.principal.username, body.text))




@router.post("/residents/{resident_id}/snooze", response_model=SnoozeOut, status_code=status.HTTP_201_CREATED,
             tags=["alerts"], summary="Snooze one alert kind (or all) for a resident, with a reason and an end")
def snooze(ctx: Context, resident_id: str, body: SnoozeIn) -> SnoozeOut:
    ctx.require(Permission.SNOOZE)
    resident = ctx.resident(resident_id, action="update", clinical=True, change="snooze", kind=body.kind,
                            reason=body.reason)
    if body.kind is not None and body.kind not in AlertKind._value2member_map_:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            [{"loc": ["body", "kind"], "field": "kind", "type": "value_error",
                              "msg": f"unknown alert kind {body.kind!r}"}])
    now = datetime.now(UTC)
    until = body.until or now + timedelta(minutes=body.minutes or 0)
    limit = snooze_limit(body.kind)  # clinical kinds (and 'every kind'): 24 h at most (H-ALERT-07)
    if until <= now or until - now > limit:
        hours = int(limit.total_seconds() // 3600)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            [{"loc": ["body", "until"], "field": "until", "type": "value_error",
                              "msg": f"must be in the future and at most {hours} hours ahead for this kind"}])
    try:
        with ctx.conn.transaction():
            # the resident as a (kind, id) subject of their own home: never a household, device or gateway whose
            # id happens to be the same (issue 13, finding 1)
            lifecycle.snooze(ctx.conn, Subject(SubjectKind.RESIDENT, resident_id), resident["site_id"], body.kind,
                             ctx.principal.username, body.reason, until)
    except psycopg.Error:
        raise
    except TRANSITION_ERRORS as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return SnoozeOut(subject_kind=SubjectKind.RESIDENT, subject_id=resident_id, kind=body.kind, until=until,
                     reason=body.reason, created_by=ctx.principal.username)
