"""Residents: records, Scale 2 decisions, monitoring status, the SBARD handover and the FHIR export."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg.rows import dict_row

from carewatch.api import fhir, sbard, scope
from carewatch.api.deps import Context, Ctx, Paging, ReportContext, ReportRoute
from carewatch.api.present import news2_badge
from carewatch.api.schemas import (
    BoundDevice,
    MonitoringStatus,
    OxygenUpdate,
    Page,
    ResidentCreate,
    ResidentOut,
    ResidentUpdate,
    Scale2Update,
    page_of,
)
from carewatch.api.scope import Permission
from carewatch.db import one
from carewatch.wire import METRICS

router = APIRouter(tags=["residents"], route_class=ReportRoute)  # its reports: see ReportRoute
#: Heads the practice resident's SBARD script (the call a new carer rehearses must never be made).
PRACTICE_WORDS = "PRACTICE ONLY: a training resident, not a real person. Do not phone anyone."
_RESIDENT_FIELDS = set(ResidentOut.model_fields)


def _out(row: dict[str, Any]) -> ResidentOut:
    return ResidentOut(**{k: v for k, v in row.items() if k in _RESIDENT_FIELDS})


@router.get("/residents", response_model=Page[ResidentOut], summary="Residents you can see")
def list_residents(
    ctx: Context,
    paging: Paging,
    site: str | None = None,
    practice: str | None = None,
    monitoring: Literal["active", "paused", "discharged", "deceased"] | None = None,
    q: Annotated[str | None, Query(max_length=100, description="Name, id or NHS number contains this.")] = None,
) -> dict:
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT r.* FROM residents r JOIN sites s ON s.site_id = r.site_id
                WHERE {scope.resident_predicate(ctx.principal)}
                  AND (%(site)s::text IS NULL OR r.site_id = %(site)s)
                  AND (%(practice)s::text IS NULL OR r.gp_practice = %(practice)s)
                  AND (%(monitoring)s::text IS NULL OR r.monitoring = %(monitoring)s)
                  AND (%(q)s::text IS NULL OR r.display_name ILIKE %(q)s OR r.resident_id ILIKE %(q)s
                       OR r.nhs_number = replace(%(q_exact)s, ' ', ''))
                ORDER BY r.display_name, r.resident_id LIMIT %(limit)s OFFSET %(offset)s""",
            {**ctx.params, "site": site, "practice": practice, "monitoring": monitoring,
             "q": None if q is None else "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
             "q_exact": q, "limit": paging.limit + 1, "offset": paging.offset},
        ).fetchall()
    ctx.note("read", "resident", None, ids=[r["resident_id"] for r in rows[: paging.limit]])
    return page_of([_out(r) for r in rows], paging.limit, paging.offset)


@router.get("/residents/{resident_id}", response_model=ResidentOut, summary="One resident")
def get_resident(ctx: Context, resident_id: str) -> ResidentOut:
    return _out(ctx.resident(resident_id))


@router.post("/residents", response_model=ResidentOut, status_code=status.HTTP_201_CREATED,
             summary="Add a resident (manager of the site, admin)")
def create_resident(ctx: Context, body: ResidentCreate) -> ResidentOut:
    ctx.require(Permission.WRITE_RESIDENT)
    ctx.note("create", "resident", body.resident_id)
    ctx.site(body.site_id, action="update")  # 404 unless the caller manages this site
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """INSERT INTO residents (resident_id, site_id, display_name, nhs_number, date_of_birth, gp_practice,
                                      obs_per_day, baseline_confused)
               VALUES (%(resident_id)s, %(site_id)s, %(display_name)s, %(nhs_number)s, %(date_of_birth)s,
                       %(gp_practice)s, %(obs_per_day)s, %(baseline_confused)s)
               ON CONFLICT DO NOTHING RETURNING *""",
            body.model_dump(),
        ).fetchone()
    if row is None:
        raise _taken(ctx, body.resident_id, body.nhs_number)
    return _out(row)


def _taken(ctx: Ctx, resident_id: str, nhs_number: str | None) -> HTTPException:
    """409 when the resident holding this id or NHS number is one the caller can see; 404 (as for anything of
    another tenant) when it is not, so the answer does not say "someone else has this person"."""
    with ctx.conn.cursor() as cur:
        (all_visible,) = one(cur.execute(
            f"""SELECT coalesce(bool_and({scope.resident_predicate(ctx.principal)}), false)
                FROM residents r JOIN sites s ON s.site_id = r.site_id
                WHERE r.resident_id = %(id)s OR r.nhs_number = %(nhs)s""",
            {**ctx.params, "id": resident_id, "nhs": nhs_number}))
    if all_visible:
        return HTTPException(status.HTTP_409_CONFLICT, "a resident with this id or NHS number already exists")
    return scope.not_found("resident")


@router.patch("/residents/{resident_id}", response_model=ResidentOut,
              summary="Change a resident's record or monitoring status (manager of the site, admin)")
def update_resident(ctx: Context, resident_id: str, body: ResidentUpdate) -> ResidentOut:
    ctx.require(Permission.WRITE_RESIDENT)
    changes = body.model_dump(exclude_unset=True)
    ctx.resident(resident_id, action="update", fields=sorted(changes))
    for required in ("display_name", "date_of_birth", "obs_per_day", "baseline_confused", "monitoring"):
        if required in changes and changes[required] is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [
                {"loc": ["body", required], "field": required, "msg": "cannot be cleared", "type": "value_error"}])
    if not changes:
        return get_resident(ctx, resident_id)
    assignments = ", ".join(f"{name} = %({name})s" for name in changes)  # names come from the model, not input
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        row = one(cur.execute(f"UPDATE residents SET {assignments} WHERE resident_id = %(rid)s RETURNING *",
                              {**changes, "rid": resident_id}))
    return _out(row)


@router.put("/residents/{resident_id}/scale2", response_model=ResidentOut,
            summary="Set or clear SpO2 Scale 2 (records who, when and why)")
def set_scale2(ctx: Context, resident_id: str, body: Scale2Update) -> ResidentOut:
    """Scale 2 (target SpO2 88-92%) is a clinical decision: the record keeps who set it, when and why."""
    ctx.require(Permission.SET_SCALE2)
    ctx.resident(resident_id, action="update", clinical=True, scale2=body.scale2, reason=body.reason)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        row = one(cur.execute(
            """UPDATE residents SET scale2 = %(scale2)s, scale2_set_by = %(by)s, scale2_set_at = now(),
                      scale2_reason = %(reason)s
               WHERE resident_id = %(rid)s RETURNING *""",
            {"scale2": body.scale2, "by": ctx.principal.username, "reason": body.reason, "rid": resident_id},
        ))
    return _out(row)


@router.put("/residents/{resident_id}/oxygen", response_model=ResidentOut,
            summary="Set the oxygen prescription (clinical roles; records who and when)")
def set_oxygen(ctx: Context, resident_id: str, body: OxygenUpdate) -> ResidentOut:
    """Oxygen on or off (and the flow) is a clinical decision (H-OBS-11): device-only rounds are scored with it,
    marked "air/oxygen unconfirmed" until staff confirm air or oxygen on the form."""
    ctx.require(Permission.SET_OXYGEN)
    ctx.resident(resident_id, action="update", clinical=True, oxygen=body.on_oxygen, flow_lpm=body.flow_lpm)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        row = one(cur.execute(
            """UPDATE residents SET oxygen_prescribed = %(on)s, oxygen_flow_lpm = %(flow)s, oxygen_set_by = %(by)s,
                      oxygen_set_at = now()
               WHERE resident_id = %(rid)s RETURNING *""",
            {"on": body.on_oxygen, "flow": body.flow_lpm, "by": ctx.principal.username, "rid": resident_id},
        ))
    return _out(row)


@router.get("/residents/{resident_id}/monitoring", response_model=MonitoringStatus,
            summary="Monitoring status: state, last seen, observations due, devices")
def monitoring_status(ctx: Context, resident_id: str) -> MonitoringStatus:
    resident = ctx.resident(resident_id)
    allowed = resident["vitals_allowed"]
    now = datetime.now(UTC)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        state = cur.execute("SELECT * FROM resident_state WHERE resident_id = %s", (resident_id,)).fetchone() or {}
        devices = cur.execute(
            """SELECT device_id, kind, battery_pct, last_seen FROM devices
               WHERE resident_id = %s AND active ORDER BY device_id""", (resident_id,)).fetchall()
    due = state.get("next_obs_due")
    return MonitoringStatus(
        resident_id=resident_id, monitoring=resident["monitoring"],
        news2=news2_badge(state.get("news2_score"), state.get("news2_risk"), state.get("news2_complete"),
                          state.get("news2_at")) if allowed else None,
        last_seen=state.get("last_seen"), next_obs_due=due if allowed else None,
        obs_overdue=bool(allowed and due is not None and due < now and resident["monitoring"] == "active"),
        devices=[BoundDevice(**d) for d in devices])


# ------------------------------------------------------------------------------------------------------------
# SBARD and FHIR: both gather the same clinical picture
# ------------------------------------------------------------------------------------------------------------
def clinical_picture(ctx: Ctx, resident: dict[str, Any], *, obs_limit: int = 12) -> dict[str, Any]:
    """Recent observation sets (newest first), open alerts with their events, latest vitals, practice name."""
    rid = resident["resident_id"]
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        observations = cur.execute(
            """SELECT * FROM observation_sets WHERE resident_id = %s AND taken_at > now() - interval '72 hours'
               ORDER BY taken_at DESC LIMIT %s""", (rid, obs_limit)).fetchall()
        if not observations:
            observations = cur.execute(
                "SELECT * FROM observation_sets WHERE resident_id = %s ORDER BY taken_at DESC LIMIT 1",
                (rid,)).fetchall()
        alerts = cur.execute(
            """SELECT * FROM alerts WHERE resident_id = %s AND status <> 'resolved'
               ORDER BY opened_at DESC LIMIT 50""", (rid,)).fetchall()
        events = cur.execute(
            """SELECT e.* FROM alert_events e WHERE e.alert_id = ANY(%s) ORDER BY e.at""",
            ([a["alert_id"] for a in alerts],)).fetchall()
        latest = cur.execute(
            "SELECT * FROM latest_readings WHERE subject_kind = 'resident' AND subject_id = %s AND metric = ANY(%s)",
            (rid, [m.value for m, spec in METRICS.items() if spec.vital])).fetchall()
        practice = cur.execute("SELECT name FROM gp_practices WHERE practice_code = %s",
                               (resident["gp_practice"],)).fetchone()
        incidents = cur.execute(
            """SELECT * FROM incidents WHERE subject_kind = 'resident' AND subject_id = %s AND status <> 'resolved'
               ORDER BY opened_at""",
            (rid,)).fetchall()
        incident_events = cur.execute(
            "SELECT * FROM incident_events WHERE incident_id = ANY(%s) ORDER BY at",
            ([i["incident_id"] for i in incidents],)).fetchall()
    for incident in incidents:
        incident["components"] = [a for a in alerts if a.get("incident_id") == incident["incident_id"]]
    return {"observations": observations, "alerts": alerts, "events": events, "latest": latest,
            "practice_name": practice["name"] if practice else None, "incidents": incidents,
            "incident_events": incident_events}


@router.get("/residents/{resident_id}/sbard", summary="SBARD handover for a phone call to a GP, NHS 111 or 999",
            response_model=sbard.Sbard, responses={200: {"content": {"text/plain": {}}}})
def get_sbard(ctx: Context, resident_id: str,
              format: Annotated[Literal["json", "text"], Query(description="json, or text to read out")] = "json",
              ) -> Any:
    resident = ctx.resident(resident_id, action="export", clinical=True, export="sbard")
    picture = clinical_picture(ctx, resident)
    report = sbard.build_sbard(resident, now=datetime.now(UTC), **picture)
    if resident["practice"]:
        report.situation = f"{PRACTICE_WORDS} {report.situation}"
    if format == "text":
        return PlainTextResponse(sbard.render_text(report))
    return report


@router.get("/residents/{resident_id}/fhir", summary="FHIR R4 Bundle: Patient, vital-sign Observations, NEWS2, Flags",
            responses={200: {"content": {"application/fhir+json": {}}}})
def get_fhir(ctx: ReportContext, resident_id: str) -> Any:
    resident = ctx.resident(resident_id, action="export", clinical=True, export="fhir")
    if resident["practice"]:  # a training resident never leaves Carewatch (H-KIT-07)
        raise HTTPException(status.HTTP_409_CONFLICT, "the practice resident is not a real person: nothing to export")
    picture = clinical_picture(ctx, resident, obs_limit=1)
    bundle = fhir.build_bundle(resident, picture["observations"][:1], picture["latest"], picture["alerts"],
                               generated_at=datetime.now(UTC), incidents=picture["incidents"])
    return JSONResponse(bundle, media_type="application/fhir+json")
