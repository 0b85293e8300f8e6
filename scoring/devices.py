"""Devices and gateways: battery, silence, dead letters and clock faults per device; gateways offline.

Alerts go through ``scoring/lifecycle.py``; only the few findings that change are locked and written. The slow tick
does not even build the others: ``load_changing_devices`` selects in SQL the devices whose finding can change (an
alert of theirs open, or a rule that could raise now), and only those are turned into ``DeviceState``.

A practice kit's devices (``kits.practice``: training equipment, silent between trainings) raise no device alert:
their state carries ``practice`` and the rules clear every device alert kind for them, so one left open from before
they were practice equipment is resolved saying why (H-KIT-08).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from carewatch.db import SITE_LIST_PREPARE, text_array
from carewatch.scoring.batches import EvaluationSummary, lock_subjects, transaction
from carewatch.scoring.lifecycle import apply_findings, findings_that_change
from carewatch.scoring.loading import FUTURE_SLACK
from carewatch.scoring.rules import (
    BATTERY_LOW_PCT,
    CLOCK_FLAGS_FAULT_COUNT,
    DEAD_LETTERS_FAULT_COUNT,
    DEFAULT_EXPECTED_INTERVAL,
    EXPECTED_INTERVAL,
    GATEWAY_SILENT_AFTER,
    DeviceState,
    Finding,
    GatewayState,
    device_findings,
    gateway_finding,
)
from carewatch.subjects import SubjectKind

#: Windows of the device rules' evidence: readings that stand in for ``devices.last_seen``, dead letters and clock
#: flags.
_HEARD_WINDOW = timedelta(days=2)
_FAULT_WINDOW = timedelta(hours=24)

#: A reading with a clock fault flag: the literal of migration 0031's partial index (readings_clock_flagged), which
#: the planner uses only for a query sending this same text.
_CLOCK_FLAGGED = "flags && ARRAY['clock_not_set', 'clock_skewed']"

_DEVICE = """SELECT d.*, coalesce(d.resident_id, d.site_id) AS subject,
                    CASE WHEN d.resident_id IS NOT NULL THEN 'resident'
                         ELSE carewatch_site_subject_kind(d.site_id) END AS subject_kind,
                    coalesce(k.practice, false) AS practice  -- a practice kit's device: no device alerts (H-KIT-08)
             FROM devices d LEFT JOIN kits k ON k.kit_id = d.kit_id
             WHERE d.active AND (d.unbound_at IS NULL OR d.unbound_at < d.bound_at)"""
_COLUMNS = """d.device_id, d.site_id, d.kind, d.resident_id, d.room, d.role, d.gateway_id,
              greatest(d.last_seen, rd.last_reading), d.bound_at, d.battery_pct,
              coalesce(g.state = 'offline' OR g.last_seen < %(gateway_since)s, false),
              coalesce(dl.n, 0), coalesce(ck.clock_flagged, 0), dl.latest,
              coalesce(r.monitoring, 'active'), d.practice"""
_JOINS = """LEFT JOIN rd ON rd.subject_kind = d.subject_kind AND rd.subject_id = d.subject
                        AND rd.device_id = d.device_id
            LEFT JOIN ck ON ck.subject_kind = d.subject_kind AND ck.subject_id = d.subject
                        AND ck.device_id = d.device_id
            LEFT JOIN gateways g ON g.gateway_id = d.gateway_id
            LEFT JOIN residents r ON r.resident_id = d.resident_id"""


def _windows(now: datetime) -> dict[str, Any]:
    return {"heard_since": now - _HEARD_WINDOW, "fault_since": now - _FAULT_WINDOW, "until": now + FUTURE_SLACK,
            "gateway_since": now - GATEWAY_SILENT_AFTER}


def _scope(site_ids: Sequence[str] | None, subjects: Iterable[tuple[str, str]] | None
           ) -> tuple[str, dict[str, Any]]:
    """`` AND <column> = ANY(...)`` for each filter given (None: no filter), and its named parameters. ``subjects``:
    a resident's devices, or a household's or care home's own (room, kit) devices, by (kind, id)."""
    sql, params = "", {}
    if site_ids is not None:
        sql += " AND d.site_id = ANY(%(sites)s::text[])"
        params["sites"] = text_array(site_ids)
    if subjects is not None:  # (kind, coalesce(resident_id, site_id)), written so the two indexes serve it
        residents: set[str] = set()
        sites: set[str] = set()
        for kind, sid in subjects:
            (residents if kind == SubjectKind.RESIDENT else sites).add(sid)
        sql += (" AND (d.resident_id = ANY(%(subject_residents)s::text[])"
                " OR (d.resident_id IS NULL AND d.site_id = ANY(%(subject_sites)s::text[])))")
        params["subject_residents"] = text_array(sorted(residents))
        params["subject_sites"] = text_array(sorted(sites))
    return sql, params


def _states(rows: Sequence[Sequence[Any]]) -> list[DeviceState]:
    out = []
    for (device_id, site_id, kind, resident_id, room, role, gateway_id, last_heard, bound_at, battery, gw_off,
         dead, clock, dead_latest, monitoring, practice) in rows:
        if monitoring != "active":
            continue
        out.append(DeviceState(device_id, site_id, kind, resident_id, room, role, gateway_id, last_heard, bound_at,
                               battery, bool(gw_off), int(dead), int(clock), dead_latest, bool(practice)))
    return out


def load_devices(conn: psycopg.Connection, now: datetime, *, site_ids: Sequence[str] | None = None,
                 subjects: Iterable[tuple[str, str]] | None = None, changing_only: bool = False) -> list[DeviceState]:
    """Active devices with what the device rules need (``subjects``: only those of these residents, households and
    care homes, as (kind, id): a household's devices are not a resident's who shares its id). Their readings of the
    last 2 days are aggregated in one pass over the subjects' rows (not one scan of a subject's readings per device:
    a household has a dozen). ``changing_only``: only the devices whose finding can change, as
    ``load_changing_devices`` selects them (``evaluate_subjects``; tests/scoring/test_devices.py holds it equal)."""
    where, scope = _scope(site_ids, subjects)
    rows = conn.execute(
        f"""WITH dev AS ({_DEVICE} {where}
            ), rd AS (  -- readings stored without maintaining devices.last_seen (ingest maintains it)
                SELECT x.subject_kind, x.subject_id, x.device_id, max(x.measured_at) AS last_reading
                FROM (SELECT DISTINCT subject_kind, subject FROM dev WHERE last_seen IS NULL) s
                JOIN readings x ON x.subject_kind = s.subject_kind AND x.subject_id = s.subject
                WHERE x.measured_at > %(heard_since)s AND x.measured_at <= %(until)s
                GROUP BY x.subject_kind, x.subject_id, x.device_id
            ), ck AS (  -- by (kind, id), the readings index's leading columns: by id alone it scanned the window
                SELECT x.subject_kind, x.subject_id, x.device_id, count(*) AS clock_flagged
                FROM (SELECT DISTINCT subject_kind, subject FROM dev) s
                JOIN readings x ON x.subject_kind = s.subject_kind AND x.subject_id = s.subject
                WHERE x.measured_at > %(fault_since)s AND x.measured_at <= %(until)s
                  AND x.{_CLOCK_FLAGGED}
                GROUP BY x.subject_kind, x.subject_id, x.device_id
            )
            SELECT {_COLUMNS}
            FROM dev d
            {_JOINS}
            LEFT JOIN LATERAL (
                SELECT count(*) AS n, (array_agg(reason ORDER BY at DESC))[1] AS latest FROM dead_letters
                WHERE device_id = d.device_id AND at > %(fault_since)s AND at <= %(until)s) dl ON true
            {_CAN_CHANGE if changing_only else ""}
            ORDER BY d.device_id""",
        {**scope, **_windows(now), **(_can_change_params(now) if changing_only else {})},
    ).fetchall()
    return _states(rows)


#: The devices whose finding can change (``load_changing_devices``); over ``dev d`` with ``rd``, ``ck`` and ``dl``.
_CAN_CHANGE = """
            LEFT JOIN unnest(%(kinds)s::text[], %(silent_before)s::timestamptz[]) AS e(kind, silent_before)
                   ON e.kind = d.kind
            WHERE EXISTS (SELECT 1 FROM alerts a WHERE a.subject_kind = %(device)s AND a.subject_id = d.device_id
                          AND a.status <> 'resolved')
               OR (NOT d.practice  -- a practice kit's device raises nothing: only an open alert of its can change
                   AND (d.battery_pct <= %(battery_low)s
                        OR coalesce(greatest(d.last_seen, rd.last_reading), d.bound_at)
                           <= coalesce(e.silent_before, %(default_silent_before)s)
                        OR coalesce(dl.n, 0) >= %(dead_letters)s
                        OR coalesce(ck.clock_flagged, 0) >= %(clock_flags)s))"""


def _can_change_params(now: datetime) -> dict[str, Any]:
    kinds = sorted(EXPECTED_INTERVAL)
    return {"kinds": kinds, "silent_before": [now - EXPECTED_INTERVAL[k] for k in kinds],
            "default_silent_before": now - DEFAULT_EXPECTED_INTERVAL, "device": SubjectKind.DEVICE.value,
            "battery_low": BATTERY_LOW_PCT, "dead_letters": DEAD_LETTERS_FAULT_COUNT,
            "clock_flags": CLOCK_FLAGS_FAULT_COUNT}


def load_changing_devices(conn: psycopg.Connection, now: datetime, *,
                          site_ids: Sequence[str] | None = None) -> list[DeviceState]:
    """The devices of ``load_devices`` (all of them, or those of ``site_ids``) whose finding can open, update or
    resolve an alert, each with the same state: those with an alert of theirs unresolved (a clear or changed
    finding can change only an open alert), and those (not a practice kit's: no rule raises for those) for which
    a device rule could raise now - battery at or
    below BATTERY_LOW_PCT, heard (or, never heard, fitted) at or before ``now`` less its kind's expected interval,
    DEAD_LETTERS_FAULT_COUNT dead letters or CLOCK_FLAGS_FAULT_COUNT clock flags in 24 h. Every other device's
    findings are clear or hold with nothing open, which ``findings_that_change`` drops: the slow tick need not
    walk the whole estate's devices in Python (tests/scoring/test_devices.py holds the two paths equal).

    Set-based: the same columns as ``load_devices``, each evidence table aggregated once for the estate (joins,
    not ``= ANY`` over thousands of subjects); the conditions are a superset of the rules' (``<=`` where a rule
    raises on ``<``, a silent device behind an offline hub kept too), so a boundary case is built, never lost."""
    where, scope = _scope(site_ids, None)
    rows = conn.execute(
        f"""WITH dev AS ({_DEVICE} {where}
            ), rd AS (  -- readings stored without maintaining devices.last_seen (ingest maintains it)
                SELECT x.subject_kind, x.subject_id, x.device_id, max(x.measured_at) AS last_reading
                FROM readings x
                JOIN (SELECT DISTINCT subject_kind, subject FROM dev WHERE last_seen IS NULL) s
                  ON s.subject_kind = x.subject_kind AND s.subject = x.subject_id
                WHERE x.measured_at > %(heard_since)s AND x.measured_at <= %(until)s
                GROUP BY x.subject_kind, x.subject_id, x.device_id
            ), ck AS (  -- every subject's, joined to the devices below
                SELECT x.subject_kind, x.subject_id, x.device_id, count(*) AS clock_flagged
                FROM readings x
                WHERE x.measured_at > %(fault_since)s AND x.measured_at <= %(until)s
                  AND x.{_CLOCK_FLAGGED}
                GROUP BY x.subject_kind, x.subject_id, x.device_id
            ), dl AS (
                SELECT device_id, count(*) AS n, (array_agg(reason ORDER BY at DESC))[1] AS latest FROM dead_letters
                WHERE device_id IS NOT NULL AND at > %(fault_since)s AND at <= %(until)s GROUP BY device_id
            )
            SELECT {_COLUMNS}
            FROM dev d
            {_JOINS}
            LEFT JOIN dl ON dl.device_id = d.device_id
            {_CAN_CHANGE}
            ORDER BY d.device_id""",
        {**scope, **_windows(now), **_can_change_params(now)},
    ).fetchall()
    return _states(rows)


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
        (scope, scope), prepare=SITE_LIST_PREPARE).fetchall()
    changing = findings_that_change(conn, [gateway_finding(GatewayState(*row), now) for row in rows])
    if changing:
        with transaction(conn):
            lock_subjects(conn, [f.subject_id for f in changing])
            apply_findings(conn, changing, now, summary)
