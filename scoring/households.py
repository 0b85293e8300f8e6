"""Households: home-sensor readings -> behaviour events -> household findings -> alerts.

``evaluate_households`` runs for a batch of households whose locks the caller holds. This module is the one
writer of ``behaviour_events`` (re-derived incrementally, H-HOME-08) and of ``household_state`` (when each
household was evaluated and when time alone can next change a decision: ``households_due`` is what the slow
tick evaluates, H-HOME-11); alerts go through ``scoring/lifecycle.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Any, cast

import numpy as np
import psycopg

from carewatch.scoring.batches import EvaluationSummary, json_safe
from carewatch.scoring.behaviour import (
    EARLIEST_WAKE,
    EVENT_SOURCES,
    KITCHEN_KINDS,
    MOTION_METRICS,
    NIGHT_END,
    ROOM_USUAL_DAYS,
    BehaviourEvent,
    HouseholdData,
    RoomTemperature,
    derive_events_from_columns,
    household_findings,
    household_recheck_times,
    role_of,
)
from carewatch.scoring.lifecycle import ACTOR, apply_findings, resolve_open_alerts
from carewatch.scoring.loading import FUTURE_SLACK
from carewatch.scoring.rules import GATEWAY_SILENT_AFTER, LOCAL_TZ, GatewayState, gateway_offline
from carewatch.subjects import Subject, SubjectKind
from carewatch.wire import Metric

#: Home-sensor readings re-derived into behaviour events on each evaluation.
BEHAVIOUR_LOOKBACK = timedelta(hours=36)
BEHAVIOUR_BASELINE_WINDOW = timedelta(days=16)
#: Events starting this close to the start of the re-derivation window may be truncated: left as they are.
BEHAVIOUR_EDGE = timedelta(minutes=30)

_BEHAVIOUR_METRICS = sorted({m for _, _, metrics, _ in EVENT_SOURCES for m in metrics} | MOTION_METRICS)
_DERIVED_KINDS = sorted({k for k, _, _, _ in EVENT_SOURCES} | {"night_activity"})


DeviceRow = tuple[str, str, str | None, str | None, datetime]  # device_id, kind, role, room, bound_at


#: Incremental re-derivation, per process: (database, household) -> (the ``now`` of its last derivation, the wall
#: time its readings were read). Readings stored since then (``stored_at``, the database's clock) are the only
#: news; a household seen for the first time, or after a long gap, gets the full window.
_DERIVED: dict[tuple[str, str], tuple[datetime, datetime]] = {}
_DERIVED_LOCK = threading.Lock()
#: Re-derive this much before the earliest news: merge gaps (15 min), door and bathroom-trip context (15 min).
DERIVE_CONTEXT = timedelta(hours=1)
#: A reading stored by a transaction that began before the last derivation read (and committed after it) is
#: still caught: ingest transactions last well under a second.
STORED_AT_SLACK = timedelta(minutes=5)
INCREMENTAL_MAX_GAP = timedelta(hours=6)
#: Households evaluated together in one transaction (a dozen set-based queries for the whole batch).
HOUSEHOLD_BATCH = 50
#: The slow tick's bounded cadence (H-HOME-11): a household is evaluated again at least this often even when
#: nothing says it can have changed: the safety net for a deadline ``household_recheck_times`` cannot foresee
#: (the 16-day look-backs sliding) or one missed, and for a change no source of ``_CHANGED_SQL`` marks.
HOUSEHOLD_RECHECK_MAX = timedelta(minutes=5)
#: A change (a setting, a device bound, an alert a person resolved...) counts as news for an evaluation that began
#: up to this long after it: the change's time is its transaction's start, and a transaction that began before an
#: evaluation read the row may commit after it (an extra evaluation or two, never a change missed).
CHANGE_SLACK = timedelta(minutes=1)
#: Every metric, for per-metric index probes (readings are indexed by subject, metric, time; PostgreSQL cannot
#: skip-scan the metric), the ones home sensors send most often first so "any reading?" stops early.
_FREQUENT = (Metric.ROOM_TEMPERATURE.value, Metric.MOTION.value, Metric.HUMIDITY.value, Metric.BATTERY.value)
_METRICS_FREQUENT_FIRST = [*_FREQUENT, *sorted(m.value for m in Metric if m.value not in _FREQUENT)]
_TICK = timedelta(microseconds=1)
#: The kitchen kinds as SQL literals (code constants): the newest kitchen event per household is read through the
#: partial index ``behaviour_events_kitchen_end`` (migration 0028), whose predicate the planner proves only from
#: literals.
_KITCHEN_SQL = ", ".join(f"'{kind}'" for kind in sorted(KITCHEN_KINDS))
#: Night-time (00:00-06:00 local) bathroom visits and night activity: what the night rules look back at, through the
#: partial index ``behaviour_events_night`` (migration 0028; the same literals, or the planner cannot use it).
_NIGHT_EVENTS_SQL = (f"kind IN ('bathroom_visit', 'night_activity') "
                     f"AND (started_at AT TIME ZONE '{LOCAL_TZ.key}')::time < '{NIGHT_END:%H:%M}'")
_EVENT_COLUMNS = ("site_id, event_id, kind, started_at, ended_at, device_id, detail->>'role', "
                  "detail->>'direction', (detail->>'bathroom_trip')::boolean, (detail->>'up')::boolean, "
                  "CASE WHEN started_at >= %(recent)s THEN detail::text END")


def _derived_key(conn: psycopg.Connection, site_id: str) -> tuple[str, str]:
    info = conn.info
    return f"{info.host}:{info.port}/{info.dbname}", site_id


def _local_days(first: datetime, last: datetime) -> list[date]:
    day, end = first.astimezone(LOCAL_TZ).date(), last.astimezone(LOCAL_TZ).date()
    return [day + timedelta(days=i) for i in range((end - day).days + 1)]


def _by_site(rows: Iterable[Sequence[Any]]) -> dict[str, list[Sequence[Any]]]:
    out: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(row[1:])
    return out


@dataclass
class _Household:
    """One household of a batch while it is evaluated."""

    site_id: str
    name: str
    care_package: str | None
    gateways: list[GatewayState]
    last_seen_any: datetime | None
    devices: list[DeviceRow] = field(default_factory=list)
    stored: list[Sequence[Any]] = field(default_factory=list)
    start: datetime | None = None  # re-derivation window start
    long_lie_after: timedelta | None = None  # sites.long_lie_minutes (None: the rule's default)
    home_by: time | None = None  # sites.home_by (None: the rule's default)

    @cached_property
    def roles(self) -> dict[str, str | None]:
        """Each device's behaviour role (read once the batch's devices are loaded)."""
        return {d: role_of(role, room) for d, _, role, room, _ in self.devices}


def evaluate_households(conn: psycopg.Connection, site_ids: Sequence[str], now: datetime,
                         summary: EvaluationSummary, latency: list[tuple[int, datetime]] | None) -> None:
    """A batch of households as of ``now`` (the caller holds their locks): behaviour events re-derived from their
    readings (only what can have changed, H-HOME-08), then what the rules need, each in one set-based query for
    the whole batch (each walks the (subject, metric, time) index a few entries per metric and day rather than
    scanning 16 days of readings), then the pure rules per household and one pass to write the alerts."""
    gateway_column = "ARRAY(SELECT g.{} FROM gateways g WHERE g.site_id = s.site_id ORDER BY g.gateway_id)"
    homes: dict[str, _Household] = {}
    states: dict[str, _State] = {}
    # The newest reading is read before the readings themselves: one stored in between is then seen as news by the
    # next slow tick (an extra evaluation), never as already evaluated.
    for (site_id, name, package, lie_minutes, home_by, statuses, gw_ids, gw_states, gw_seen, seen_any,
         newest_reading) in conn.execute(
        "SELECT s.site_id, s.name, s.care_package, s.long_lie_minutes, s.home_by, "
        "ARRAY(SELECT monitoring FROM residents r "
        "WHERE r.site_id = s.site_id), "
        + ", ".join(gateway_column.format(c) for c in ("gateway_id", "state", "last_seen"))
        + ", (SELECT max(last_seen) FROM devices d WHERE d.site_id = s.site_id), "
        "(SELECT max(measured_at) FROM latest_readings l WHERE l.subject_kind = 'household' "
        " AND l.subject_id = s.site_id) "
        "FROM sites s WHERE s.site_id = ANY(%s) AND s.kind = 'household' ORDER BY s.site_id", (list(site_ids),),
    ).fetchall():
        if statuses and "active" not in statuses:
            resolve_open_alerts(conn, now, "No one in this household is being monitored: alerts closed.",
                                subject=Subject(SubjectKind.HOUSEHOLD, site_id), summary=summary)
            states[site_id] = _State(newest_reading, now + HOUSEHOLD_RECHECK_MAX, None)
            continue
        states[site_id] = _State(newest_reading, now + HOUSEHOLD_RECHECK_MAX, None)
        gateways = [GatewayState(*row) for row in zip(gw_ids, [site_id] * len(gw_ids), gw_states, gw_seen,
                                                      strict=True)]
        homes[site_id] = _Household(site_id, name, package, gateways, seen_any,
                                    long_lie_after=timedelta(minutes=lie_minutes) if lie_minutes else None,
                                    home_by=home_by)
    if not homes:
        _write_states(conn, states, now)
        return
    ids = sorted(homes)
    for site_id, *device in conn.execute(
        "SELECT site_id, device_id, kind, role, room, bound_at FROM devices WHERE site_id = ANY(%s) "
        "AND resident_id IS NULL AND active AND (unbound_at IS NULL OR unbound_at < bound_at)", (ids,),
    ).fetchall():
        homes[site_id].devices.append(tuple(device))
    events = _sync_events(conn, homes, now, summary)
    data = _load_households(conn, homes, events, now)
    by_site = {site_id: household_findings(data[site_id], now) for site_id in ids}
    # The newest stored reading is the evidence time of an alert opened or updated now (stored-to-alert latency):
    # only a raising finding opens or updates one, so it is read only for the households with one (few).
    raising = [site_id for site_id, found in by_site.items() if any(f.state == "raise" for f in found)]
    newest: dict[str, datetime] = {}
    if latency is not None and raising:
        newest = dict(conn.execute(
            "SELECT subject_id, max(stored_at) FROM readings WHERE subject_kind = 'household' AND subject_id = ANY(%s) "
            "AND measured_at > %s "
            "AND measured_at <= %s GROUP BY subject_id", (raising, now - timedelta(hours=2), now + FUTURE_SLACK),
        ).fetchall())
    findings = [replace(f, evidence_stored_at=newest[site_id]) if site_id in newest else f
                for site_id in ids for f in by_site[site_id]]
    apply_findings(conn, findings, now, summary, latency=latency)
    # when time alone can next change a decision (H-HOME-11): the rules' own deadlines, a hub going quiet (the
    # rules hold while it is offline), a snooze ending; the slow tick skips the household until then
    snoozes: dict[str, datetime] = dict(conn.execute(
        "SELECT subject_id, min(until) FROM alert_suppressions WHERE subject_kind = 'household' "
        "AND subject_id = ANY(%s) AND until > %s GROUP BY subject_id", (ids, now)).fetchall())
    for site_id in ids:
        home = homes[site_id]
        deadline, night = household_recheck_times(data[site_id], now, by_site[site_id])
        urgent = [] if deadline is None else [deadline]
        urgent += [gw.last_seen + GATEWAY_SILENT_AFTER + _TICK for gw in home.gateways
                   if gw.last_seen is not None and gw.state != "offline" and gw.last_seen + GATEWAY_SILENT_AFTER >= now]
        if site_id in snoozes:
            urgent.append(snoozes[site_id])
        first_urgent = min(urgent, default=None)
        cadence = min(night, now + HOUSEHOLD_RECHECK_MAX)
        states[site_id] = _State(states[site_id].newest_reading,
                                 cadence if first_urgent is None else min(first_urgent, cadence), first_urgent)
    _write_states(conn, states, now)
    summary.households += len(homes)


@dataclass(frozen=True, slots=True)
class _State:
    """What an evaluation records in ``household_state`` besides its time."""

    newest_reading: datetime | None
    recheck_at: datetime  # the first of urgent_at, the next night completion (06:00) and the bounded cadence
    urgent_at: datetime | None  # the first deadline other than those (None: none)


def _write_states(conn: psycopg.Connection, states: Mapping[str, _State], now: datetime) -> None:
    """Record each household's evaluation: when, the newest reading it had, when it next needs one."""
    if not states:
        return
    ids = sorted(states)
    conn.execute(
        """INSERT INTO household_state (site_id, evaluated_at, newest_reading, recheck_at, urgent_at)
           SELECT v.site_id, %s, v.newest_reading, v.recheck_at, coalesce(v.urgent_at, 'infinity')
           FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[])
                AS v(site_id, newest_reading, recheck_at, urgent_at)
           ON CONFLICT (site_id) DO UPDATE SET evaluated_at = EXCLUDED.evaluated_at,
               newest_reading = EXCLUDED.newest_reading, recheck_at = EXCLUDED.recheck_at,
               urgent_at = EXCLUDED.urgent_at, updated_at = now()""",
        (now, ids, [states[s].newest_reading for s in ids], [states[s].recheck_at for s in ids],
         [states[s].urgent_at for s in ids]),
    )


#: The households whose inputs other than readings changed since their last evaluation (H-HOME-11): a setting, a
#: device bound or unbound, a resident's monitoring, a hub's state or its return from silence (``changed_at``,
#: migration 0032), an alert a person resolved (the rules may raise it again), a snooze ended. Each source is an
#: index range over the last HOUSEHOLD_RECHECK_MAX + CHANGE_SLACK (a household evaluated before that is due by the
#: cadence anyway), then compared with the household's own evaluation time.
_CHANGED_SQL = """
    SELECT c.site_id FROM (
        SELECT site_id, changed_at AS at FROM sites WHERE changed_at > %(recent)s
        UNION ALL SELECT site_id, changed_at FROM devices WHERE changed_at > %(recent)s
        UNION ALL SELECT site_id, changed_at FROM residents WHERE changed_at > %(recent)s
        UNION ALL SELECT site_id, changed_at FROM gateways WHERE changed_at > %(recent)s
        UNION ALL SELECT subject_id, resolved_at FROM alerts WHERE subject_kind = 'household'
            AND resolved_at > %(recent)s AND resolved_by <> %(scorer)s
        UNION ALL SELECT subject_id, until FROM alert_suppressions WHERE subject_kind = 'household'
            AND until > %(recent)s
    ) c JOIN household_state h ON h.site_id = c.site_id
    WHERE c.at > h.evaluated_at - %(slack)s AND c.at <= %(now)s"""


def households_due(conn: psycopg.Connection, now: datetime, site_ids: Sequence[str] | None) -> list[str]:
    """The households the slow tick must evaluate at ``now``, the urgent ones first (``due_by_urgency``)."""
    urgent, routine = due_by_urgency(conn, now, site_ids)
    return urgent + routine


def due_by_urgency(conn: psycopg.Connection, now: datetime,
                   site_ids: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The households the slow tick must evaluate at ``now`` (H-HOME-11), as (urgent, routine).

    Urgent: never evaluated; a clock gone back; a deadline other than the night completion reached (``urgent_at``:
    a long lie, silence...); an input other than readings changed since the last evaluation (``_CHANGED_SQL``); a
    reading newer than the newest it had (the NOTIFY path evaluates fresh readings at once: this catches any it
    missed; one descent per household of migration 0033's index, stopping at the first newer entry). Routine:
    only the night completing at 06:00 (the same instant for every household) or the bounded cadence (evaluated
    HOUSEHOLD_RECHECK_MAX ago). ``site_ids``: only these (a replica's share, ``_in_scope``); None = the estate."""
    # OFFSET 0 keeps the subquery whole: inlined, the planner evaluates ``urgent`` (a probe per household) twice,
    # in the filter and again in the output.
    with _without_jit(conn):
        rows = conn.execute(
            f"""WITH changed AS ({_CHANGED_SQL})
               SELECT site_id, urgent FROM (
                   SELECT s.site_id,
                          (h.site_id IS NULL OR h.evaluated_at > %(now)s OR h.urgent_at <= %(now)s
                           OR s.site_id IN (SELECT site_id FROM changed)
                           OR EXISTS (SELECT 1 FROM latest_readings l WHERE l.subject_kind = 'household'
                                      AND l.subject_id = s.site_id
                                      AND l.measured_at > coalesce(h.newest_reading, '-infinity'::timestamptz)))
                          AS urgent,
                          (h.recheck_at <= %(now)s OR h.evaluated_at <= %(stale)s) AS routine
                   FROM sites s LEFT JOIN household_state h ON h.site_id = s.site_id
                   WHERE s.kind = 'household'
                   OFFSET 0
               ) x WHERE urgent OR routine ORDER BY site_id""",
            _due_parameters(now), prepare=False,
        ).fetchall()
    rows = _in_scope(rows, site_ids)
    return [s for s, urgent in rows if urgent], [s for s, urgent in rows if not urgent]


def urgent_due(conn: psycopg.Connection, now: datetime, site_ids: Sequence[str] | None) -> list[str]:
    """The households with a deadline other than the night completion reached at ``now`` (``urgent_at``, by its
    index) or an input other than readings changed: what the slow tick re-checks between slices of a long pass
    (fresh readings are the NOTIFY path's meanwhile). ``site_ids`` as for ``due_by_urgency``."""
    return [row[0] for row in _in_scope(conn.execute(
        f"""SELECT site_id FROM household_state WHERE urgent_at <= %(now)s
            UNION SELECT site_id FROM ({_CHANGED_SQL}) c ORDER BY site_id""",
        _due_parameters(now), prepare=False,
    ).fetchall(), site_ids)]


def _in_scope(rows: list[Any], site_ids: Sequence[str] | None) -> list[Any]:
    """The rows (site first) of a replica's share. Filtered here, not in SQL: the share is a list of thousands
    of sites, and sending it cost more than the query (at 20,000 households: ~15-30 ms to send, ~25 ms to unnest
    and hash; as ``site_id = ANY(list)`` ~20 ms of planning per occurrence, and seconds once the server switched
    the prepared statement to a generic plan that compares every row with the whole list)."""
    if site_ids is None:
        return rows
    share = set(site_ids)
    return [row for row in rows if row[0] in share]


@contextmanager
def _without_jit(conn: psycopg.Connection) -> Iterator[None]:
    """JIT off for one query: due_by_urgency's plan is estimated near ``jit_above_cost`` at 20,000 households (a
    probe per household), and compiling it took ~150 ms (~700 ms with optimisation) for a ~60 ms query."""
    with conn.transaction():
        conn.execute("SET LOCAL jit = off")
        yield


def _due_parameters(now: datetime) -> dict[str, Any]:
    return {"now": now, "stale": now - HOUSEHOLD_RECHECK_MAX,
            "recent": now - HOUSEHOLD_RECHECK_MAX - CHANGE_SLACK, "slack": CHANGE_SLACK, "scorer": ACTOR}


def _sync_events(conn: psycopg.Connection, homes: Mapping[str, _Household], now: datetime,
                 summary: EvaluationSummary) -> dict[str, list[BehaviourEvent]]:
    """Re-derive each household's recent behaviour events from its readings, write only what changed, and return
    its events of the last 16 days for the rules (one read of the stored events serves both; the newest front-door
    and kitchen events before the re-derivation window are one index probe each per household).

    Up to the last 36 h are re-derived (late uploads included): all of it the first time this process sees the
    household, afterwards from just before whatever can have changed (``_incremental_starts``). A household with
    no derived events yet (new, or history just backfilled) gets its whole baseline window, so night and
    wake-time baselines exist from the first evaluation. Events starting within BEHAVIOUR_EDGE of the window's
    start may be truncated: left alone.
    """
    ids = sorted(homes)
    recent_from = now - BEHAVIOUR_LOOKBACK
    since = now - BEHAVIOUR_BASELINE_WINDOW
    # Every event of the re-derivation window; before it only what the rules look back at (H-HOME-*): night-time
    # bathroom visits and night activity (baselines), and the newest front-door and kitchen events.
    stored = _by_site(conn.execute(
        f"""SELECT * FROM (
              SELECT {_EVENT_COLUMNS} FROM behaviour_events WHERE site_id = ANY(%(sites)s)
                 AND started_at >= %(recent)s AND started_at > %(since)s AND started_at <= %(until)s
              UNION ALL
              SELECT {_EVENT_COLUMNS} FROM behaviour_events WHERE site_id = ANY(%(sites)s)
                 AND started_at > %(since)s AND started_at < %(recent)s AND started_at <= %(until)s
                 AND {_NIGHT_EVENTS_SQL}
              UNION ALL
              SELECT door.* FROM unnest(%(sites)s::text[]) AS h(site) CROSS JOIN LATERAL (
                 SELECT {_EVENT_COLUMNS} FROM behaviour_events
                 WHERE site_id = h.site AND kind = 'front_door' AND started_at > %(since)s
                   AND started_at < %(recent)s ORDER BY started_at DESC LIMIT 1) door
              UNION ALL
              SELECT kitchen.* FROM unnest(%(sites)s::text[]) AS h(site) CROSS JOIN LATERAL (
                 SELECT {_EVENT_COLUMNS} FROM behaviour_events
                 WHERE site_id = h.site AND kind IN ({_KITCHEN_SQL}) AND started_at > %(since)s
                   AND started_at < %(recent)s ORDER BY ended_at DESC NULLS LAST LIMIT 1) kitchen
            ) e ORDER BY site_id, started_at""",
        {"sites": ids, "since": since, "until": now + FUTURE_SLACK, "recent": recent_from},
    ).fetchall())
    for site_id, home in homes.items():
        home.stored = stored.get(site_id, [])
        home.start = recent_from if home.stored else now - BEHAVIOUR_BASELINE_WINDOW
    _incremental_starts(conn, homes, now, recent_from)
    queried_at = datetime.now(UTC)
    starts = cast(list[datetime], [homes[s].start for s in ids])  # every home's start was set above
    readings = _by_site(conn.execute(
        "SELECT h.site, x.device_id, x.metric, x.value, extract(epoch FROM x.measured_at)::float8 "
        "FROM unnest(%s::text[], %s::timestamptz[]) "
        "AS h(site, lo) CROSS JOIN LATERAL (SELECT device_id, metric, value, measured_at FROM readings "
        "  WHERE subject_kind = 'household' "
        "  AND subject_id = h.site AND metric = ANY(%s) AND measured_at > h.lo AND measured_at > %s "
        "  AND measured_at <= %s) x ORDER BY h.site, x.measured_at",
        (ids, starts, _BEHAVIOUR_METRICS, min(starts), now + FUTURE_SLACK),
    ).fetchall())
    with _DERIVED_LOCK:
        for site_id in ids:
            _DERIVED[_derived_key(conn, site_id)] = (now, queried_at)
    out: dict[str, list[BehaviourEvent]] = {}
    changed: list[tuple[str, BehaviourEvent]] = []
    vanished: list[int] = []
    for site_id in ids:
        home = homes[site_id]
        assert home.start is not None
        rows = readings.get(site_id, [])
        # as columns, the measured times as epoch seconds from the database (the exact microseconds, rounded to a
        # double as datetime.timestamp() rounds them): no SensorReading per reading
        found = derive_events_from_columns([r[0] for r in rows], [r[1] for r in rows],
                                           np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows)),
                                           np.fromiter((r[3] for r in rows), dtype=np.float64, count=len(rows)),
                                           home.roles, now)
        window_from = home.start + BEHAVIOUR_EDGE
        # one row per (kind, started_at): the unique key (two devices of one role starting together: the last wins)
        derived = {(e.kind, e.started_at): e for e in found if e.started_at >= window_from}
        events: dict[tuple[str, datetime], BehaviourEvent] = {}
        held: dict[tuple[str, datetime], tuple[datetime | None, Any]] = {}
        for event_id, kind, s, e, dev, role, direction, trip, up, detail in home.stored:
            key = (kind, s)
            if window_from <= s <= now and key not in derived and kind in _DERIVED_KINDS:
                vanished.append(event_id)  # the readings no longer support it (e.g. two visits merged by a late one)
                continue
            held[key] = (e, detail)
            slim = {k: v for k, v in (("role", role), ("direction", direction), ("bathroom_trip", trip),
                                      ("up", up)) if v is not None}
            events[key] = BehaviourEvent(kind, s, e or s, dev, slim)
        # a stored event's detail is parsed only where a derived event is compared with it (psycopg would parse
        # every recent event's jsonb the same way: json.loads)
        changed += [(site_id, ev) for key, ev in derived.items() if key not in held or held[key][0] != ev.ended_at
                    or _parsed(held[key][1]) != json_safe(dict(ev.detail))]
        events.update(derived)
        out[site_id] = sorted(events.values(), key=lambda ev: ev.started_at)
    if changed:
        summary.behaviour_events_written += conn.execute(
            """INSERT INTO behaviour_events (site_id, kind, started_at, ended_at, device_id, detail)
               SELECT v.site_id, v.kind, v.started_at, v.ended_at, v.device_id, v.detail::jsonb
               FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[], %s::text[])
                    AS v(site_id, kind, started_at, ended_at, device_id, detail)
               ON CONFLICT (site_id, kind, started_at) DO UPDATE SET ended_at = EXCLUDED.ended_at,
                   device_id = EXCLUDED.device_id, detail = EXCLUDED.detail
               WHERE behaviour_events.ended_at IS DISTINCT FROM EXCLUDED.ended_at
                  OR behaviour_events.detail IS DISTINCT FROM EXCLUDED.detail""",
            ([s for s, _ in changed], [e.kind for _, e in changed], [e.started_at for _, e in changed],
             [e.ended_at for _, e in changed], [e.device_id for _, e in changed],
             [json.dumps(dict(e.detail), default=str) for _, e in changed]),
        ).rowcount
    if vanished:
        conn.execute("DELETE FROM behaviour_events WHERE event_id = ANY(%s)", (vanished,))
    return out


def _parsed(detail: str | None) -> Any:
    return None if detail is None else json.loads(detail)


def _incremental_starts(conn: psycopg.Connection, homes: Mapping[str, _Household], now: datetime,
                        full_start: datetime) -> None:
    """Move each household's re-derivation start as late as is safe: every event the readings can have changed
    since this process last derived it is re-derived whole - before the earliest reading stored since then
    (late uploads included), before the previous ``now``, and before the start of any stored event still running
    then."""
    candidates: dict[str, tuple[datetime, datetime]] = {}
    with _DERIVED_LOCK:
        for site_id, home in homes.items():
            previous = _DERIVED.get(_derived_key(conn, site_id))
            if home.stored and previous is not None and timedelta(0) <= now - previous[0] <= INCREMENTAL_MAX_GAP:
                candidates[site_id] = previous
    if not candidates:
        return
    ids = sorted(candidates)
    late: dict[str, Any] = dict(conn.execute(
        "SELECT h.site, x.first FROM unnest(%s::text[], %s::timestamptz[]) AS h(site, stored_since) "
        "CROSS JOIN LATERAL (SELECT min(measured_at) AS first FROM readings WHERE subject_kind = 'household' "
        "  AND subject_id = h.site "
        "  AND metric = ANY(%s) AND measured_at > %s AND measured_at <= %s AND stored_at >= h.stored_since) x",
        (ids, [candidates[s][1] - STORED_AT_SLACK for s in ids], _BEHAVIOUR_METRICS, full_start,
         now + FUTURE_SLACK),
    ).fetchall())
    for site_id in ids:
        last_now = candidates[site_id][0]
        anchor = min(last_now, late[site_id]) if late.get(site_id) is not None else last_now
        running = [row[2] for row in homes[site_id].stored
                   if row[2] >= full_start and (row[3] is None or row[3] >= anchor - DERIVE_CONTEXT)]
        home = homes[site_id]
        assert home.start is not None
        home.start = max(home.start, min([anchor, *running]) - DERIVE_CONTEXT - BEHAVIOUR_EDGE)


def _load_households(conn: psycopg.Connection, homes: Mapping[str, _Household],
                     events: Mapping[str, list[BehaviourEvent]], now: datetime) -> dict[str, HouseholdData]:
    """What the household rules need, as of ``now``, for the whole batch."""
    ids = sorted(homes)
    since = now - timedelta(days=16)
    motion = sorted(MOTION_METRICS)
    last_motion: dict[str, tuple[datetime, str]] = {}
    for site_id, at, device_id in conn.execute(
        "SELECT h.site, x.measured_at, x.device_id FROM unnest(%s::text[]) AS h(site) "
        "CROSS JOIN unnest(%s::text[]) AS m(metric) CROSS JOIN LATERAL ("
        "  SELECT measured_at, device_id FROM readings WHERE subject_kind = 'household' "
        "  AND subject_id = h.site AND metric = m.metric"
        "  AND value >= 0.5 AND measured_at > %s AND measured_at <= %s ORDER BY measured_at DESC LIMIT 1) x",
        (ids, motion, since, now + FUTURE_SLACK),
    ).fetchall():
        if site_id not in last_motion or at > last_motion[site_id][0]:
            last_motion[site_id] = (at, device_id)
    # first indoor motion at/after 05:00 local, per local day
    days = _local_days(since, now)
    lows = [max(datetime.combine(d, EARLIEST_WAKE, tzinfo=LOCAL_TZ), since + _TICK) for d in days]
    highs = [min(datetime.combine(d + timedelta(days=1), time(0), tzinfo=LOCAL_TZ), now + _TICK) for d in days]
    indoor = sorted(d for home in homes.values() for d, role in home.roles.items() if role != "front_door")
    first_by_day: dict[str, dict[date, datetime]] = {}
    for site_id, day, at in conn.execute(
        "SELECT h.site, d.day, min(x.measured_at) FROM unnest(%s::text[]) AS h(site) "
        "CROSS JOIN unnest(%s::date[], %s::timestamptz[], %s::timestamptz[]) AS d(day, lo, hi) "
        "CROSS JOIN unnest(%s::text[]) AS m(metric) CROSS JOIN LATERAL ("
        "  SELECT measured_at FROM readings WHERE subject_kind = 'household' "
        "  AND subject_id = h.site AND metric = m.metric AND value >= 0.5"
        "  AND measured_at >= d.lo AND measured_at < d.hi AND measured_at > %s AND measured_at <= %s"
        "  AND device_id = ANY(%s) ORDER BY measured_at LIMIT 1) x GROUP BY h.site, d.day",
        (ids, days, lows, highs, motion, since, now, indoor),
    ).fetchall():
        if at is not None:
            first_by_day.setdefault(site_id, {})[day] = at
    # nights (00:00-06:00 local) with at least one reading of any kind
    night_lo = [max(datetime.combine(d, time(0), tzinfo=LOCAL_TZ), since + _TICK) for d in days]
    night_hi = [min(datetime.combine(d, NIGHT_END, tzinfo=LOCAL_TZ), now + _TICK) for d in days]
    nights: dict[str, set[date]] = {}
    for site_id, day in conn.execute(
        "SELECT h.site, d.day FROM unnest(%s::text[]) AS h(site) "
        "CROSS JOIN unnest(%s::date[], %s::timestamptz[], %s::timestamptz[]) AS d(day, lo, hi) "
        "WHERE d.lo < d.hi AND EXISTS (SELECT 1 FROM unnest(%s::text[]) AS m(metric) CROSS JOIN LATERAL ("
        "  SELECT 1 FROM readings WHERE subject_kind = 'household' "
        "  AND subject_id = h.site AND metric = m.metric AND measured_at >= d.lo"
        "  AND measured_at < d.hi AND measured_at > %s AND measured_at <= %s LIMIT 1) x)",
        (ids, days, night_lo, night_hi, _METRICS_FREQUENT_FIRST, since, now),
    ).fetchall():
        nights.setdefault(site_id, set()).add(day)
    last_heard: dict[str, Any] = dict(conn.execute(
        "SELECT h.site, max(x.measured_at) FROM unnest(%s::text[]) AS h(site) "
        "CROSS JOIN unnest(%s::text[]) AS m(metric) CROSS JOIN LATERAL ("
        "  SELECT measured_at FROM readings WHERE subject_kind = 'household' "
        "  AND subject_id = h.site AND metric = m.metric AND measured_at > %s"
        "  AND measured_at <= %s ORDER BY measured_at DESC LIMIT 1) x GROUP BY h.site",
        (ids, _METRICS_FREQUENT_FIRST, now - timedelta(days=2), now + FUTURE_SLACK),
    ).fetchall())
    # the last 2 h of room temperatures, and the same hour of the day on the previous days (H-HOME-05) with what
    # enters it within the bounded cadence (the known pattern's next change is then foreseen, H-HOME-11)
    temps: dict[str, list[RoomTemperature]] = {}
    past_rooms: dict[str, dict[str, list[tuple[datetime, float]]]] = {}
    ranges = [(now - timedelta(hours=2), now + FUTURE_SLACK)] + [
        (now - timedelta(days=k, hours=1), now - timedelta(days=k) + HOUSEHOLD_RECHECK_MAX)
        for k in range(1, ROOM_USUAL_DAYS + 1)]
    within = " OR ".join(f"(r.measured_at > %(lo{i})s AND r.measured_at <= %(hi{i})s)" for i in range(len(ranges)))
    bounds = {f"{name}{i}": at for i, (lo, hi) in enumerate(ranges) for name, at in (("lo", lo), ("hi", hi))}
    for site_id, d, room, t, v in conn.execute(  # one index range per hour (a bitmap OR), not 7 days of readings
        "SELECT r.subject_id, r.device_id, coalesce(d.room, d.role), r.measured_at, r.value FROM readings r "
        "LEFT JOIN devices d USING (device_id) WHERE r.subject_kind = 'household' AND r.subject_id = ANY(%(sites)s) "
        "AND r.metric = %(metric)s "
        f"AND r.measured_at > %(since)s AND r.measured_at <= %(until)s AND ({within}) "
        "ORDER BY r.subject_id, r.measured_at",
        {"sites": ids, "metric": Metric.ROOM_TEMPERATURE.value, "since": ranges[-1][0],
         "until": now + FUTURE_SLACK, **bounds},
    ):
        if t > now - timedelta(hours=2):
            temps.setdefault(site_id, []).append(RoomTemperature(d, room, t, v))
        else:
            past_rooms.setdefault(site_id, {}).setdefault(room or d, []).append((t, v))
    out = {}
    for site_id in ids:
        home = homes[site_id]
        roles = home.roles
        motion_devices = {d for d, kind, *_ in home.devices if kind in ("motion_sensor", "bathroom_sensor")}
        lm = last_motion.get(site_id)
        heard = last_heard.get(site_id)
        out[site_id] = HouseholdData(
            site_id=site_id, name=home.name, events=events.get(site_id, []),
            roles=frozenset(r for r in roles.values() if r),
            has_other_motion=any(roles[d] not in ("bathroom", "front_door") for d in motion_devices),
            last_motion_at=lm[0] if lm else None, last_motion_role=roles.get(lm[1]) if lm else None,
            first_motion_by_day=first_by_day.get(site_id, {}), nights_heard=frozenset(nights.get(site_id, ())),
            last_heard=heard if heard is not None else home.last_seen_any,
            room_temperatures=temps.get(site_id, []), care_package=home.care_package,
            gateway_offline=any(gateway_offline(gw, now) for gw in home.gateways),
            data_since=min((b for *_, b in home.devices), default=None), room_past=past_rooms.get(site_id, {}),
            long_lie_after=home.long_lie_after, home_by=home.home_by,
        )
    return out
