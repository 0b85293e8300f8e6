"""Escalation: each home's policy (managers and admins change it, audited), the delivery log (who was told
what, when, and whether it arrived), and the banner every signed-in tablet of a home polls every 2 seconds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from psycopg.rows import dict_row

from carewatch.alerts import Severity
from carewatch.api import scope
from carewatch.api.deps import Context, Ctx, Paging
from carewatch.api.schemas import Banner, BannerItem, DeliveryOut, EscalationPolicyOut, Page, page_of
from carewatch.api.scope import Permission
from carewatch.notify import store
from carewatch.notify.policy import EscalationPolicy, NotifyState, outcome_due, route_prompt

router = APIRouter(tags=["escalation"])


def _policy_out(site_id: str, policy: EscalationPolicy, by: str | None, at: datetime | None) -> EscalationPolicyOut:
    return EscalationPolicyOut(site_id=site_id, policy=policy.model_dump(mode="json"), is_default=by is None,
                               updated_by=by, updated_at=at, gaps=policy.gaps())


@router.get("/sites/{site_id}/escalation-policy", response_model=EscalationPolicyOut,
            summary="The home's escalation policy: who is told at each level, and each level's window")
def get_policy(ctx: Context, site_id: str) -> EscalationPolicyOut:
    ctx.require(Permission.READ_ESCALATION)
    ctx.site(site_id, view="escalation_policy")
    return _policy_out(site_id, *store.load(ctx.conn, site_id))


@router.put("/sites/{site_id}/escalation-policy", response_model=EscalationPolicyOut,
            summary="Set the home's escalation policy (managers and admins; audited)")
def put_policy(ctx: Context, site_id: str, body: EscalationPolicy) -> EscalationPolicyOut:
    ctx.require(Permission.SET_ESCALATION_POLICY)
    ctx.site(site_id, action="update", change="escalation_policy", policy=body.model_dump(mode="json"))
    with ctx.conn.transaction():
        at = store.save(ctx.conn, site_id, body, ctx.principal.username)
    return _policy_out(site_id, body, ctx.principal.username, at)


@router.get("/sites/{site_id}/deliveries", response_model=Page[DeliveryOut],
            summary="Delivery log of the home: every notification attempt, newest first")
def site_deliveries(ctx: Context, site_id: str, paging: Paging) -> dict:
    ctx.require(Permission.READ_ESCALATION)
    ctx.site(site_id, view="deliveries")
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT d.* FROM notification_deliveries d
                WHERE d.site_id = %(site)s AND {scope.config_predicate(ctx.principal, 'd.site_id')}
                ORDER BY d.delivery_id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {**ctx.params, "site": site_id, "limit": paging.limit + 1, "offset": paging.offset}).fetchall()
    return page_of([DeliveryOut(**r) for r in rows], paging.limit, paging.offset)


@router.get("/alerts/{alert_id}/deliveries", response_model=list[DeliveryOut],
            summary="Who was told about this alert, when, over which channel, and whether it arrived")
def alert_deliveries(ctx: Context, alert_id: int) -> list[DeliveryOut]:
    ctx.require(Permission.READ_ESCALATION)
    alert = ctx.alert(alert_id, view="deliveries")
    return deliveries_of(ctx, "alert", alert_id, alert["site_id"])


def deliveries_of(ctx: Ctx, target_kind: str, target_id: int, site_id: str) -> list[DeliveryOut]:
    """Every attempt about one alert or incident (already loaded through the caller's scope), oldest first."""
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT d.* FROM notification_deliveries d
                WHERE d.target_kind = %(kind)s AND d.target_id = %(id)s
                  AND {scope.config_predicate(ctx.principal, 'd.site_id')} AND d.site_id = %(site)s
                ORDER BY d.delivery_id""",
            {**ctx.params, "kind": target_kind, "id": target_id, "site": site_id}).fetchall()
    return [DeliveryOut(**r) for r in rows]


def _needs(row: dict[str, Any]) -> str:
    if row["acknowledged_at"] is None:
        return "acknowledgement"
    return "outcome" if row["kind"] == "news2" and row["outcome_at"] is None else "closing"


@router.get("/sites/{site_id}/banner", response_model=Banner,
            summary="What every tablet of the home shows on top of every page (polled every 2 s): medium and high "
                    "incidents waiting for acknowledgement (with sound), an outcome, or a person to close them")
def banner(ctx: Context, site_id: str) -> Banner:
    ctx.site(site_id, view="banner")
    policy, _, _ = store.load(ctx.conn, site_id)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT * FROM (
                  SELECT i.incident_id, h.alert_id, i.resident_id, coalesce(r.display_name, i.subject_id) AS who,
                         coalesce(h.kind, i.category) AS kind, i.severity, i.status, h.score, i.headline AS reason,
                         i.action, i.opened_at, i.acknowledged_at, i.acknowledged_by, i.notify_level,
                         i.notify_reason, i.notify_due_at, i.outcome_at, h.risk,
                         (SELECT a.data->'recovery'->>'text' FROM alerts a WHERE a.incident_id = i.incident_id
                            AND a.status <> 'resolved' AND a.data ? 'recovery' ORDER BY a.alert_id LIMIT 1) AS recovery
                  FROM incidents i JOIN sites s ON s.site_id = i.site_id
                  LEFT JOIN residents r ON r.resident_id = i.resident_id
                  LEFT JOIN LATERAL (
                      SELECT a.alert_id, a.kind, a.score, a.data->>'risk' AS risk FROM alerts a
                      WHERE a.incident_id = i.incident_id AND a.status <> 'resolved'
                      ORDER BY (a.kind = 'news2' AND a.severity IN ('medium', 'high')) DESC,
                               CASE a.severity WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END
                               DESC, a.alert_id
                      LIMIT 1) h ON true
                  WHERE i.site_id = %(site)s AND i.status <> 'resolved' AND i.severity IN ('medium', 'high')
                    AND h.alert_id IS NOT NULL AND {scope.incident_predicate(ctx.principal)}) b
                WHERE b.acknowledged_at IS NULL OR (b.kind = 'news2' AND b.outcome_at IS NULL)
                   OR b.recovery IS NOT NULL
                ORDER BY b.acknowledged_at IS NULL DESC, CASE b.severity WHEN 'high' THEN 0 ELSE 1 END, b.opened_at
                LIMIT 50""",
            {**ctx.params, "site": site_id}).fetchall()
    items = []
    for row in rows:
        severity = Severity(row["severity"])
        state = NotifyState(row["kind"], severity, row["status"], row["acknowledged_at"], row["notify_level"],
                            row["notify_reason"], row["notify_due_at"], row["outcome_at"] is not None)
        items.append(BannerItem(
            incident_id=row["incident_id"], alert_id=row["alert_id"], resident_id=row["resident_id"], who=row["who"],
            kind=row["kind"], severity=row["severity"], status=row["status"], score=row["score"],
            reason=row["reason"], action=row["action"], opened_at=row["opened_at"],
            acknowledged_by=row["acknowledged_by"], notify_level=row["notify_level"],
            needs=_needs(row),
            route=route_prompt(row["kind"], severity, row["score"], row["risk"]), recovery=row["recovery"],
            outcome_due_at=outcome_due(policy, state)))
    ctx.note("read", "incident", None, ids=[i.incident_id for i in items], view="banner")
    return Banner(site_id=site_id, generated_at=datetime.now(UTC),
                  sound=any(i.needs == "acknowledgement" for i in items), items=items)
