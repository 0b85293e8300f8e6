"""Devices and gateways: battery, silence, dead letters and clock faults per device; gateways offline.

Alerts go through ``scoring/lifecycle.py``; only the few findings that change are locked and written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from carewatch.db import any_of
from carewatch.scoring.batches import EvaluationSummary, lock_subjects, transaction
from carewatch.scoring.lifecycle import apply_findings, findings_that_change
from carewatch.scoring.loading import FUTURE_SLACK
from carewatch.scoring.rules import DeviceState, Finding, GatewayState, device_findings, gateway_finding


def load_devices(conn: psycopg.Connection, now: datetime, *, site_ids: Sequence[str] | None = None,
                  subject_ids: Sequence[str] | None = None) -> list[DeviceState]:
    """Active devices with what the device rules need. Their readings of the last 2 days are aggregated in one
    pass over the subjects' rows (not one scan of a subject's readings per device: a household has a dozen)."""
    params: list[Any] = []
    where = any_of([("d.site_id", site_ids), ("coalesce(d.resident_id, d.site_id)", subject_ids)], params)
    rows = conn.execute(
        f"""WITH dev AS (
                SELECT d.*, coalesce(d.resident_id, d.site_id) AS subject,
                       CASE WHEN d.resident_id IS NOT NULL THEN 'resident'
                            ELSE carewatch_site_subject_kind(d.site_id) END AS subject_kind
                FROM devices d
                WHERE d.active AND (d.unbound_at IS NULL OR d.unbound_at < d.bound_at) {where}
            ), rd AS (  -- readings stored without maintaining devices.last_seen (ingest maintains it)
                SELECT x.subject_kind, x.subject_id, x.device_id, max(x.measured_at) AS last_reading
                FROM readings x
                WHERE x.subject_id = ANY(ARRAY(SELECT DISTINCT subject FROM dev WHERE last_seen IS NULL))
                  AND x.measured_at > %s AND x.measured_at <= %s
                GROUP BY x.subject_kind, x.subject_id, x.device_id
            ), ck AS (
                SELECT x.subject_kind, x.subject_id, x.device_id, count(*) AS clock_flagged
                FROM readings x
                WHERE x.subject_id = ANY(ARRAY(SELECT DISTINCT subject FROM dev))
                  AND x.measured_at > %s AND x.measured_at <= %s
                  AND x.flags && ARRAY['clock_not_set', 'clock_skewed']
                GROUP BY x.subject_kind, x.subject_id, x.device_id
            )
            SELECT d.device_id, d.site_id, d.kind, d.resident_id, d.room, d.role, d.gateway_id,
                   greatest(d.last_seen, rd.last_reading), d.bound_at, d.battery_pct,
                   coalesce(g.state = 'offline' OR g.last_seen < %s, false),
                   coalesce(dl.n, 0), coalesce(ck.clock_flagged, 0), dl.latest,
                   coalesce(r.monitoring, 'active')
            FROM dev d
            LEFT JOIN rd ON rd.subject_kind = d.subject_kind AND rd.subject_id = d.subject
                        AND rd.device_id = d.device_id
            LEFT JOIN ck ON ck.subject_kind = d.subject_kind AND ck.subject_id = d.subject
                        AND ck.device_id = d.device_id
            LEFT JOIN gateways g ON g.gateway_id = d.gateway_id
            LEFT JOIN residents r ON r.resident_id = d.resident_id
            LEFT JOIN LATERAL (
                SELECT count(*) AS n, (array_agg(reason ORDER BY at DESC))[1] AS latest FROM dead_letters
                WHERE device_id = d.device_id AND at > %s AND at <= %s) dl ON true
            ORDER BY d.device_id""",
        [*params, now - timedelta(days=2), now + FUTURE_SLACK, now - timedelta(hours=24), now + FUTURE_SLACK,
         now - timedelta(minutes=10), now - timedelta(hours=24), now + FUTURE_SLACK],
    ).fetchall()
    out = []
    for (device_id, site_id, kind, resident_id, room, role, gateway_id, last_heard, bound_at, battery, gw_off,
         dead, clock, dead_latest, monitoring) in rows:
        if monitoring != "active":
            continue
        out.append(DeviceState(device_id, site_id, kind, resident_id, room, role, gateway_id, last_heard, bound_at,
                               battery, bool(gw_off), int(dead), int(clock), dead_latest))
    return out


def apply_device_findings(conn: psycopg.Connection, devices: Sequence[DeviceState], now: datetime,
                           summary: EvaluationSummary, *, findings: Sequence[Finding] | None = None) -> None:
    """``findings``: ``device_findings(devices, now)`` when the caller has them already."""
    if not devices:
        return
    # most devices' alerts do not change from one pass to the next: lock and write only those that do
    changing = findings_that_change(conn, device_findings(devices, now) if findings is None else findings)
    for start in range(0, len(changing), 500):
        chunk = changing[start:start + 500]
        with transaction(conn):
            lock_subjects(conn, [f.subject_id for f in chunk])
            apply_findings(conn, chunk, now, summary)
    summary.devices += len(devices)


def gateway_pass(conn: psycopg.Connection, now: datetime, summary: EvaluationSummary,
                 site_ids: Sequence[str] | None = None) -> None:
    scope = None if site_ids is None else list(site_ids)
    rows = conn.execute(
        "SELECT g.gateway_id, g.site_id, g.state, g.last_seen, s.kind, s.name FROM gateways g JOIN sites s "
        "USING (site_id) WHERE %s::text[] IS NULL OR g.site_id = ANY(%s::text[]) ORDER BY g.gateway_id",
        (scope, scope)).fetchall()
    changing = findings_that_change(conn, [gateway_finding(GatewayState(*row), now) for row in rows])
    if changing:
        with transaction(conn):
            lock_subjects(conn, [f.subject_id for f in changing])
            apply_findings(conn, changing, now, summary)
