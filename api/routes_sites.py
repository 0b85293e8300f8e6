"""Sites and the home overview (every resident's NEWS2, observations due, alerts, vitals and device warnings)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter
from psycopg.rows import dict_row

from carewatch.api import scope
from carewatch.api.deps import Context, Paging
from carewatch.api.present import device_warning, news2_badge, worst_severity
from carewatch.api.schemas import (
    DeviceWarning,
    LatestValue,
    Page,
    ResidentOverview,
    SiteOut,
    SiteOverview,
    page_of,
)
from carewatch.api.scope import Permission
from carewatch.api.users import Role
from carewatch.wire import METRICS

router = APIRouter(tags=["sites"])
VITAL_METRICS = [m.value for m, spec in METRICS.items() if spec.vital]


@router.get("/sites", response_model=Page[SiteOut], summary="Sites (care homes and households) you can see")
def list_sites(ctx: Context, paging: Paging, kind: Literal["care_home", "household"] | None = None) -> dict:
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT s.* FROM sites s
                WHERE {scope.site_predicate(ctx.principal)} AND (%(kind)s::text IS NULL OR s.kind = %(kind)s)
                ORDER BY s.site_id LIMIT %(limit)s OFFSET %(offset)s""",
            {**ctx.params, "kind": kind, "limit": paging.limit + 1, "offset": paging.offset},
        ).fetchall()
    ctx.note("read", "site", None, ids=[r["site_id"] for r in rows[: paging.limit]])
    return page_of([SiteOut(**r) for r in rows], paging.limit, paging.offset)


@router.get("/sites/{site_id}", response_model=SiteOut, summary="One site")
def get_site(ctx: Context, site_id: str) -> SiteOut:
    return SiteOut(**ctx.site(site_id))


@router.get("/sites/{site_id}/overview", response_model=SiteOverview,
            summary="Home overview: each resident's NEWS2, observations due, alerts, latest vitals, device warnings")
def site_overview(ctx: Context, site_id: str) -> SiteOverview:
    """Four queries whatever the history: residents with their state, open alerts, latest vitals, devices."""
    site = ctx.site(site_id)
    now = datetime.now(UTC)
    p = ctx.principal
    values = {**ctx.params, "site": site_id, "vital_metrics": VITAL_METRICS}
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        residents = cur.execute(
            f"""SELECT r.resident_id, r.display_name, r.monitoring, r.scale2,
                       ({scope.vitals_predicate(p)}) AS vitals_allowed,
                       rs.news2_score, rs.news2_risk, rs.news2_complete, rs.news2_at, rs.next_obs_due
                FROM residents r JOIN sites s ON s.site_id = r.site_id
                LEFT JOIN resident_state rs ON rs.resident_id = r.resident_id
                WHERE r.site_id = %(site)s AND r.monitoring IN ('active', 'paused') AND {scope.resident_predicate(p)}
                ORDER BY r.display_name, r.resident_id""",
            values,
        ).fetchall()
        ids = [r["resident_id"] for r in residents]
        alerts = cur.execute(
            f"""SELECT a.resident_id, a.severity FROM alerts a JOIN sites s ON s.site_id = a.site_id
                LEFT JOIN residents r ON r.resident_id = a.resident_id
                WHERE a.site_id = %(site)s AND a.status <> 'resolved' AND {scope.alert_predicate(p)}""",
            values,
        ).fetchall()
        incidents = cur.execute(
            f"""SELECT i.resident_id, i.severity FROM incidents i JOIN sites s ON s.site_id = i.site_id
                LEFT JOIN residents r ON r.resident_id = i.resident_id
                WHERE i.site_id = %(site)s AND i.status <> 'resolved' AND i.resident_id IS NOT NULL
                  AND {scope.incident_predicate(p)}""",
            values,
        ).fetchall()
        latest = cur.execute(
            """SELECT subject_id, metric, value, measured_at, device_id, flags FROM latest_readings
                WHERE site_id = %(site)s AND subject_kind = 'resident' AND subject_id = ANY(%(ids)s)
                  AND metric = ANY(%(vital_metrics)s)""",
            {**values, "ids": ids},
        ).fetchall()
        devices = cur.execute(
            f"""SELECT device_id, kind, resident_id, room, battery_pct, last_seen FROM devices d
               WHERE site_id = %(site)s AND active AND {scope.device_practice_match()}""",
            values,
        ).fetchall()
    site_config_visible = p.role in scope.GRANTS[Permission.READ_DEVICES] or p.role is Role.COUNCIL
    warnings_by_resident: dict[str | None, list[DeviceWarning]] = defaultdict(list)
    site_warnings: list[DeviceWarning] = []
    visible = set(ids)
    for row in devices:
        if row["resident_id"] not in visible and not site_config_visible:
            continue
        if row["resident_id"] is not None and row["resident_id"] not in visible:
            continue
        warning = device_warning(row, now)
        if warning is not None:
            warnings_by_resident[row["resident_id"]].append(warning)
            site_warnings.append(warning)
    severities: dict[str, list[str]] = defaultdict(list)
    for a in alerts:
        severities[a["resident_id"]].append(a["severity"])
    problems: dict[str, list[str]] = defaultdict(list)  # one incident per person's problem (H-INC-01)
    for i in incidents:
        problems[i["resident_id"]].append(i["severity"])
    vitals: dict[str, dict[str, LatestValue]] = defaultdict(dict)
    for v in latest:
        vitals[v["subject_id"]][v["metric"]] = LatestValue(
            value=v["value"], unit=METRICS[v["metric"]].unit, measured_at=v["measured_at"], device_id=v["device_id"],
            flags=list(v["flags"]))
    out = []
    for r in residents:
        allowed = r["vitals_allowed"]
        due = r["next_obs_due"]
        out.append(ResidentOverview(
            resident_id=r["resident_id"], display_name=r["display_name"], monitoring=r["monitoring"],
            scale2=r["scale2"],
            news2=news2_badge(r["news2_score"], r["news2_risk"], r["news2_complete"], r["news2_at"])
            if allowed else None,
            next_obs_due=due if allowed else None,
            obs_overdue=bool(allowed and due is not None and due < now and r["monitoring"] == "active"),
            open_alerts=len(severities[r["resident_id"]]),
            worst_severity=worst_severity(severities[r["resident_id"]]),
            open_incidents=len(problems[r["resident_id"]]),
            worst_incident_severity=worst_severity(problems[r["resident_id"]]),
            latest_vitals=dict(vitals[r["resident_id"]]) if allowed else None,
            device_warnings=warnings_by_resident[r["resident_id"]],
        ))
    ctx.note("read", "resident", None, site=site_id, ids=ids, view="overview")
    return SiteOverview(site=SiteOut(**site), generated_at=now, residents=out, device_warnings=site_warnings)
