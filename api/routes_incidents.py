"""Incidents (one thing to act on per person, home, device or hub) and the home's observation task list.

State changes go through ``carewatch.scoring.incident_store`` (the one writer of incidents); an invalid
transition is a 409 with its message. The alert-level routes (``routes_alerts``) keep working: an incident's
components are alerts, with their own history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, HTTPException, Query, status
from psycopg.rows import dict_row

from carewatch.alerts import Severity
from carewatch.api import alerting, scope
from carewatch.api.deps import Context, Ctx, Paging
from carewatch.api.routes_escalation import deliveries_of
from carewatch.api.schemas import (
    AcknowledgeIn,
    CommentIn,
    DeliveryOut,
    EscalateIn,
    IncidentComponent,
    IncidentDetail,
    IncidentEventOut,
    IncidentOut,
    OutcomeIn,
    Page,
    ResolveIn,
    TaskList,
    TaskOut,
    page_of,
)
from carewatch.api.scope import Permission
from carewatch.scoring import incident_store
from carewatch.scoring.schedule import first_obs_due
from carewatch.scoring.tasks import TaskInput, build_tasks, shift_bounds

router = APIRouter(tags=["incidents"])
UNRESOLVED = ["open", "acknowledged", "escalated", "auto_escalated"]
SEVERITY_ORDER = "CASE i.severity WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END"
BAND_ORDER = "CASE i.band WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low-medium' THEN 1 ELSE 0 END"
_FIELDS = set(IncidentOut.model_fields) - {"components"}
_COMPONENT_FIELDS = set(IncidentComponent.model_fields)
_COMPONENT_SQL = """SELECT a.*, r.display_name AS resident_name, s.name AS site_name FROM alerts a
    JOIN sites s ON s.site_id = a.site_id LEFT JOIN residents r ON r.resident_id = a.resident_id
    WHERE a.incident_id = ANY(%s) {extra}
    ORDER BY CASE a.severity WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END DESC,
             a.opened_at, a.alert_id"""


def _components(conn: psycopg.Connection, incident_ids: Sequence[int], *,
                unresolved: bool = True) -> dict[int, list[IncidentComponent]]:
    out: dict[int, list[IncidentComponent]] = {i: [] for i in incident_ids}
    if not incident_ids:
        return out
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(_COMPONENT_SQL.format(extra="AND a.status <> 'resolved'" if unresolved else ""),
                               (list(incident_ids),)).fetchall():
            out[row["incident_id"]].append(IncidentComponent(**{k: v for k, v in row.items()
                                                                if k in _COMPONENT_FIELDS}))
    return out


def _out(row: dict[str, Any], components: list[IncidentComponent]) -> IncidentOut:
    return IncidentOut(**{k: v for k, v in row.items() if k in _FIELDS}, components=components)


@router.get("/incidents", response_model=Page[IncidentOut],
            summary="Incidents you can see, worst first (NEWS2 band, severity), each with its components")
def list_incidents(
    ctx: Context,
    paging: Paging,
    site: str | None = None,
    resident: str | None = None,
    incident_status: Annotated[list[str] | None, Query(alias="status", description="Repeatable; default: "
                                                                                  "unresolved.")] = None,
    category: Annotated[list[str] | None, Query(description="clinical, household, device, data; repeatable.")]
    = None,
    severity: Annotated[list[Severity] | None, Query(description="high, medium, low, info; repeatable (default: "
                                                                "all). Filtered here, not in the page: a client "
                                                                "filtering one page would miss the rest.")] = None,
) -> dict:
    statuses = alerting.statuses(incident_status, UNRESOLVED)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            alerting.named_rows_sql(
                "incidents", "i", scope.incident_predicate(ctx.principal),
                """AND (%(category)s::text[] IS NULL OR i.category = ANY(%(category)s))
                  AND (%(severity)s::text[] IS NULL OR i.severity = ANY(%(severity)s))""",
                f"{SEVERITY_ORDER} DESC, {BAND_ORDER} DESC, i.opened_at DESC, i.incident_id DESC"),
            {**ctx.params, "statuses": statuses, "site": site, "resident": resident, "category": category,
             "severity": [str(v.value) for v in severity] if severity else None,
             "limit": paging.limit + 1, "offset": paging.offset},
        ).fetchall()
    page = alerting.noted_page(ctx, rows, paging, "incident", "incident_id")
    components = _components(ctx.conn, [r["incident_id"] for r in page])
    return page_of([_out(r, components.get(r["incident_id"], [])) for r in rows], paging.limit, paging.offset)


def _detail(ctx: Ctx, row: dict[str, Any]) -> IncidentDetail:
    incident_id = row["incident_id"]
    history = _components(ctx.conn, [incident_id], unresolved=False)[incident_id]
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        events = cur.execute("SELECT * FROM incident_events WHERE incident_id = %s ORDER BY at, event_id",
                             (incident_id,)).fetchall()
    return IncidentDetail(
        **_out(row, [c for c in history if c.status != "resolved"]).model_dump(), history=history,
        events=[IncidentEventOut(**{k: v for k, v in e.items() if k in IncidentEventOut.model_fields})
                for e in events])


def _load(ctx: Ctx, incident_id: int, *, action: str = "read", **detail: Any) -> dict[str, Any]:
    ctx.note(action, "incident", incident_id, **detail)
    return scope.load_incident(ctx.conn, ctx.principal, incident_id)


@router.get("/incidents/{incident_id}", response_model=IncidentDetail,
            summary="One incident: its components (with every past one), and its history")
def get_incident(ctx: Context, incident_id: int) -> IncidentDetail:
    return _detail(ctx, _load(ctx, incident_id))


TRANSITION_ERRORS = (ValueError, LookupError)


def _apply(ctx: Ctx, incident_id: int, action: str, call: Callable[[], Any], **detail: Any) -> IncidentDetail:
    ctx.require(Permission.ACT_ON_ALERT)
    _load(ctx, incident_id, action="update", change=action, **detail)
    alerting.transition(ctx, call, TRANSITION_ERRORS, f"cannot {action} this incident now")
    return _detail(ctx, scope.load_incident(ctx.conn, ctx.principal, incident_id))


@router.post("/incidents/{incident_id}/acknowledge", response_model=IncidentDetail,
             summary="Acknowledge: someone is dealing with it (its components too)",
             responses={409: {"description": "Already acknowledged or resolved"}})
def acknowledge(ctx: Context, incident_id: int, body: AcknowledgeIn) -> IncidentDetail:
    return _apply(ctx, incident_id, "acknowledge",
                  lambda: incident_store.acknowledge(ctx.conn, incident_id, ctx.principal.username, body.comment))


@router.post("/incidents/{incident_id}/outcome", response_model=IncidentDetail,
             summary="Record what was decided (monitoring plan, GP called, NHS 111, 999, admitted...)",
             responses={409: {"description": "Resolved, or an unknown outcome"}})
def outcome(ctx: Context, incident_id: int, body: OutcomeIn) -> IncidentDetail:
    if body.outcome not in incident_store.OUTCOMES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            [{"loc": ["body", "outcome"], "field": "outcome", "type": "value_error",
                              "msg": f"use one of {', '.join(sorted(incident_store.OUTCOMES))}"}])
    return _apply(ctx, incident_id, "outcome",
                  lambda: incident_store.record_outcome(ctx.conn, incident_id, ctx.principal.username, body.outcome,
                                                        body.comment), outcome=body.outcome)


@router.post("/incidents/{incident_id}/escalate", response_model=IncidentDetail,
             summary="A person escalated it outside the home (GP, NHS 111, 999...): status 'escalated' (the ladder's "
                     "own steps are 'auto_escalated')",
             responses={409: {"description": "Resolved, or an unknown outcome"}})
def escalate(ctx: Context, incident_id: int, body: EscalateIn) -> IncidentDetail:
    return _apply(ctx, incident_id, "escalate",
                  lambda: incident_store.escalate(ctx.conn, incident_id, ctx.principal.username, body.outcome.value,
                                                  body.comment), outcome=body.outcome.value)


@router.post("/incidents/{incident_id}/comment", response_model=IncidentDetail,
             summary="Add a comment to the incident's history")
def comment(ctx: Context, incident_id: int, body: CommentIn) -> IncidentDetail:
    return _apply(ctx, incident_id, "comment",
                  lambda: incident_store.comment(ctx.conn, incident_id, ctx.principal.username, body.text))


@router.get("/incidents/{incident_id}/deliveries", response_model=list[DeliveryOut],
            summary="Who was told about this incident, when, over which channel, and whether it arrived")
def incident_deliveries(ctx: Context, incident_id: int) -> list[DeliveryOut]:
    ctx.require(Permission.READ_ESCALATION)
    incident = _load(ctx, incident_id, view="deliveries")
    return deliveries_of(ctx, "incident", incident_id, incident["site_id"])


@router.post("/incidents/{incident_id}/resolve", response_model=IncidentDetail,
             summary="Resolve with what was done (its components too)",
             responses={409: {"description": "Already resolved"}})
def resolve(ctx: Context, incident_id: int, body: ResolveIn) -> IncidentDetail:
    return _apply(ctx, incident_id, "resolve",
                  lambda: incident_store.resolve(ctx.conn, incident_id, ctx.principal.username, body.resolution))


@router.get("/sites/{site_id}/tasks", response_model=TaskList,
            summary="Observations due this shift: who, by when and why (care plan or NEWS2 frequency)")
def site_tasks(ctx: Context, site_id: str) -> TaskList:
    """The home's task list: residents whose observations fall due before the shift ends, overdue first. Overdue
    observations are a task, and part of an incident only when the last set was low-medium or worse or the
    resident has an open clinical incident."""
    ctx.require(Permission.READ_TASKS)
    ctx.site(site_id, view="tasks")
    now = datetime.now(UTC)
    shift, start, end = shift_bounds(now)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT r.resident_id, r.display_name, r.site_id, r.obs_per_day, r.created_at, st.next_obs_due,
                       st.next_obs_why, st.news2_at, st.news2_score, st.news2_risk, st.news2_complete,
                       EXISTS (SELECT 1 FROM incidents i
                               WHERE i.subject_kind = 'resident' AND i.subject_id = r.resident_id
                               AND i.status <> 'resolved' AND i.category = 'clinical') AS open_clinical
                FROM residents r JOIN sites s ON s.site_id = r.site_id
                LEFT JOIN resident_state st ON st.resident_id = r.resident_id
                WHERE r.site_id = %(site)s AND r.monitoring = 'active' AND {scope.resident_predicate(ctx.principal)}
                ORDER BY r.resident_id""",
            {**ctx.params, "site": site_id},
        ).fetchall()
    tasks = build_tasks([TaskInput(r["resident_id"], r["display_name"], r["site_id"],
                                   r["next_obs_due"] or first_obs_due(r["created_at"], r["obs_per_day"]),
                                   r["next_obs_why"], r["news2_at"], r["news2_score"], r["news2_risk"],
                                   r["news2_complete"], r["open_clinical"]) for r in rows], now, end)
    return TaskList(site_id=site_id, shift=shift, shift_start=start, shift_end=end, generated_at=now,
                    tasks=[TaskOut(**{k: getattr(t, k) for k in TaskOut.model_fields if k != "text"}, text=t.text)
                           for t in tasks])
