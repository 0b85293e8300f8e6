"""The alert engine: load what the rules need, run them, and persist observation sets, state and alerts.

``evaluate_subjects`` is the one entry point after new data (the scorer service on NOTIFY, the API after a
manual observation). ``rescore_all`` re-evaluates everything (service start-up). ``tick`` runs the rules that
depend on time passing rather than on new data: unacknowledged escalation, overdue observations, silence,
long lies, gateways offline.

Concurrency: every subject's work runs under a transaction-level advisory lock on the subject id, taken in
sorted order (two callers never race on a subject and never deadlock). The functions work on an autocommit
connection (one transaction per batch) or inside a caller's transaction (savepoints). Alert rows follow the
partial unique index ``alerts_one_open``: one unresolved alert per subject and kind, updated, never repeated;
every change is an ``alert_events`` row.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from carewatch.scoring import baselines as bl
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
    SensorReading,
    derive_events,
    household_findings,
    role_of,
)
from carewatch.scoring.kinds import (
    ACK_WINDOW,
    CLINICAL_KINDS,
    MAX_AUTO_ESCALATION_LEVEL,
    SEVERITY_RANK,
    AlertKind,
    Severity,
)
from carewatch.scoring.news2 import PARAMETERS as NEWS2_PARAMETERS
from carewatch.scoring.news2 import InvalidObservation, News2Result, score_observations
from carewatch.scoring.rules import (
    LOCAL_TZ,
    NUMERIC_SET_FIELDS,
    VITAL_METRICS,
    DeviceState,
    Finding,
    GatewayState,
    ResidentFacts,
    SetPlan,
    StoredSet,
    VitalReading,
    build_rounds,
    clear_alert,
    device_findings,
    gateway_finding,
    gateway_offline,
    hold,
    iso,
    local_time,
    news2_finding,
    plan_observation_sets,
    raise_alert,
    sbard,
    soft_signs_finding,
)
from carewatch.scoring.schedule import LastObservation, first_obs_due, next_obs_due, overdue_finding
from carewatch.wire import ImplausibleValue, Metric

log = logging.getLogger("carewatch.scoring.engine")

ACTOR = "scorer"
#: Device readings this far back are (re)grouped into rounds on every evaluation (late uploads included).
ROUND_LOOKBACK = timedelta(hours=26)
#: Observation-set history for baselines and trends.
HISTORY = timedelta(days=15)
#: Readings stamped up to this far after ``now`` still count (device clocks run a little fast).
FUTURE_SLACK = timedelta(minutes=10)
#: Home-sensor readings re-derived into behaviour events on each evaluation.
BEHAVIOUR_LOOKBACK = timedelta(hours=36)
BEHAVIOUR_BASELINE_WINDOW = timedelta(days=16)
#: Events starting this close to the start of the re-derivation window may be truncated: left as they are.
BEHAVIOUR_EDGE = timedelta(minutes=30)
#: Residents evaluated together in one transaction (see evaluate_subjects).
RESIDENT_BATCH = 250
#: Only readings stored this recently count for the stored-to-alert latency (older ones: rescore, not news).
LATENCY_RELEVANT = timedelta(minutes=10)


# ------------------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------------------
@dataclass
class EvaluationSummary:
    """What one evaluate/rescore/tick call did."""

    residents: int = 0
    households: int = 0
    devices: int = 0
    unknown_subjects: list[str] = field(default_factory=list)
    observation_sets_written: int = 0
    behaviour_events_written: int = 0
    opened: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    suppressed: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    #: alert id -> seconds from the newest contributing reading's stored_at to the alert being committed
    latency_s: dict[int, float] = field(default_factory=dict)

    def merge(self, other: EvaluationSummary) -> EvaluationSummary:
        for name in ("residents", "households", "devices", "observation_sets_written", "behaviour_events_written",
                     "suppressed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("unknown_subjects", "opened", "updated", "resolved", "escalated"):
            getattr(self, name).extend(getattr(other, name))
        self.errors.update(other.errors)
        self.latency_s.update(other.latency_s)
        return self

    def as_log(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "residents": self.residents, "households": self.households, "sets": self.observation_sets_written,
            "events": self.behaviour_events_written, "opened": len(self.opened), "updated": len(self.updated),
            "resolved": len(self.resolved), "escalated": len(self.escalated), "suppressed": self.suppressed,
            "errors": len(self.errors),
        }
        if self.latency_s:
            values = list(self.latency_s.values())
            out["latency_max_ms"] = round(max(values) * 1000)
            out["latency_median_ms"] = round(float(np.median(values)) * 1000)
        return out


# ------------------------------------------------------------------------------------------------------------
# Transactions and locks
# ------------------------------------------------------------------------------------------------------------
@contextmanager
def _transaction(conn: psycopg.Connection) -> Iterator[None]:
    with conn.transaction():
        yield


def lock_subjects(conn: psycopg.Connection, subject_ids: Iterable[str]) -> None:
    """Transaction-level advisory locks on the subjects, in sorted order (no deadlocks between callers).

    One statement for the lot: unnest walks the (Python-sorted) array in order, so the locks are taken in the
    same order by every caller, without a round trip per subject."""
    keys = [f"carewatch:subject:{subject}" for subject in sorted(set(subject_ids))]
    if keys:
        conn.execute("SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) "
                     "FROM unnest(%s::text[]) AS t(k)", (keys,))


def _finish_latency(summary: EvaluationSummary, pending: list[tuple[int, datetime]]) -> None:
    """After commit: how long from the newest contributing reading being stored to its alert existing."""
    committed = datetime.now(UTC)
    for alert_id, stored_at in pending:
        delay = committed - stored_at
        if timedelta(0) <= delay <= LATENCY_RELEVANT:
            summary.latency_s[alert_id] = delay.total_seconds()


# ------------------------------------------------------------------------------------------------------------
# Findings -> alert rows
# ------------------------------------------------------------------------------------------------------------
def _active_suppressions(conn: psycopg.Connection, subjects: Sequence[str],
                         now: datetime) -> set[tuple[str, str | None]]:
    rows = conn.execute(
        "SELECT subject_id, kind FROM alert_suppressions WHERE subject_id = ANY(%s) AND until > %s",
        (list(subjects), now),
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def _event(conn: psycopg.Connection, alert_id: int, at: datetime, action: str, *, actor: str = ACTOR,
           comment: str | None = None, outcome: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO alert_events (alert_id, at, actor, action, outcome, comment, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (alert_id, at, actor, action, outcome, comment, Jsonb(dict(detail or {}))),
    )


def _ack_due(severity: Severity, now: datetime) -> datetime | None:
    window = ACK_WINDOW[severity]
    return now + window if window is not None else None


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


OpenAlert = tuple[int, str, str, str, str, datetime | None, datetime | None]
_OPEN_ALERT_SQL = """SELECT a.subject_id, a.kind, a.alert_id, a.severity, a.status, a.reason, a.action,
       a.acknowledged_at, a.ack_due_at
FROM alerts a JOIN unnest(%s::text[], %s::text[]) AS p(subject_id, kind) USING (subject_id, kind)
WHERE a.status <> 'resolved' ORDER BY a.alert_id"""


def _open_alerts(conn: psycopg.Connection, findings: Sequence[Finding], *,
                 lock: bool) -> dict[tuple[str, str], OpenAlert]:
    """The unresolved alert (if any) of each finding's subject and kind, in one query (``lock``: FOR UPDATE)."""
    pairs = sorted({(f.subject_id, f.kind.value) for f in findings})
    if not pairs:
        return {}
    rows = conn.execute(_OPEN_ALERT_SQL + (" FOR UPDATE OF a" if lock else ""),
                        ([s for s, _ in pairs], [k for _, k in pairs])).fetchall()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}  # type: ignore[misc]


def findings_that_change(conn: psycopg.Connection, findings: Sequence[Finding]) -> list[Finding]:
    """The findings that would open, update or resolve an alert, by one unlocked read: lets a pass over every
    resident lock and write only the few that change. ``apply_findings`` re-checks under the locks."""
    active = [f for f in findings if f.state != "hold"]
    open_rows = _open_alerts(conn, active, lock=False)
    out = []
    for f in active:
        row = open_rows.get((f.subject_id, f.kind.value))
        if f.state == "clear":
            if row is not None:
                out.append(f)
        elif row is None or not (row[1] == f.severity.value and row[3] == f.reason and row[4] == f.action):
            out.append(f)
    return out


def apply_findings(conn: psycopg.Connection, findings: Sequence[Finding], now: datetime,
                   summary: EvaluationSummary, *, latency: list[tuple[int, datetime]] | None = None) -> None:
    """Open, update or resolve alerts so they match the findings. Call inside a transaction holding the
    subjects' locks. 'hold' findings change nothing; a suppression hides new evidence (never a 'high')."""
    active = [f for f in findings if f.state != "hold"]
    if not active:
        return
    open_rows = _open_alerts(conn, active, lock=True)
    if not any(f.state == "raise" or (f.subject_id, f.kind.value) in open_rows for f in active):
        return  # only 'clear' findings with nothing open: nothing to write
    suppressions = _active_suppressions(conn, sorted({f.subject_id for f in active}), now)
    for f in active:
        key = (f.subject_id, f.kind.value)
        row = open_rows.get(key)
        if f.state == "clear":
            if row is not None:
                _auto_resolve(conn, row[0], f.reason, now)
                summary.resolved.append(row[0])
                del open_rows[key]
            continue
        assert f.severity is not None
        suppressed = (f.subject_id, f.kind.value) in suppressions or (f.subject_id, None) in suppressions
        if suppressed and f.severity is not Severity.HIGH:
            summary.suppressed += 1
            continue
        data = _json_safe(dict(f.data))
        if row is None:
            alert_id = conn.execute(
                """INSERT INTO alerts (site_id, resident_id, subject_id, kind, severity, status, reason, action, data,
                                       score, opened_at, updated_at, ack_due_at)
                   VALUES (%s, %s, %s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s) RETURNING alert_id""",
                (f.site_id, f.resident_id, f.subject_id, f.kind.value, f.severity.value, f.reason, f.action,
                 Jsonb(data), f.score, now, now, _ack_due(f.severity, now)),
            ).fetchone()[0]
            open_rows[key] = (alert_id, f.severity.value, "open", f.reason, f.action, None, _ack_due(f.severity, now))
            _event(conn, alert_id, now, "opened", detail={"severity": f.severity.value, "reason": f.reason,
                                                          **({"suppression_overridden": True} if suppressed else {})})
            summary.opened.append(alert_id)
            if latency is not None and f.evidence_stored_at is not None:
                latency.append((alert_id, f.evidence_stored_at))
            continue
        alert_id, old_severity, status, old_reason, old_action, acked_at, ack_due_at = row
        old = Severity(old_severity)
        new = f.severity
        if not f.allow_downgrade and SEVERITY_RANK[new] < SEVERITY_RANK[old]:
            new = old
        if new == old and f.reason == old_reason and f.action == old_action:
            continue
        rose = SEVERITY_RANK[new] > SEVERITY_RANK[old]
        new_status, new_acked_at, new_due = status, acked_at, ack_due_at
        if rose and new is not Severity.INFO:
            # a worse alert needs acknowledging again, within the new severity's window
            new_acked_at = None
            due = _ack_due(new, now)
            new_due = min(d for d in (due, ack_due_at if acked_at is None else None) if d is not None)
            if status == "acknowledged":
                new_status = "open"
        conn.execute(
            """UPDATE alerts SET severity = %s, status = %s, reason = %s, action = %s, data = %s, score = %s,
                      updated_at = %s, acknowledged_at = %s,
                      acknowledged_by = CASE WHEN %s::timestamptz IS NULL THEN NULL ELSE acknowledged_by END,
                      ack_due_at = %s
               WHERE alert_id = %s""",
            (new.value, new_status, f.reason, f.action, Jsonb(data), f.score, now, new_acked_at, new_acked_at,
             new_due, alert_id),
        )
        _event(conn, alert_id, now, "updated", detail={
            "from_severity": old.value, "to_severity": new.value, "reason": f.reason,
            **({"needs_acknowledging_again": True} if rose and acked_at is not None else {}),
        })
        open_rows[key] = (alert_id, new.value, new_status, f.reason, f.action, new_acked_at, new_due)
        summary.updated.append(alert_id)
        if latency is not None and f.evidence_stored_at is not None:
            latency.append((alert_id, f.evidence_stored_at))


def _auto_resolve(conn: psycopg.Connection, alert_id: int, why: str, now: datetime) -> None:
    conn.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s, "
        "updated_at = %s, ack_due_at = NULL WHERE alert_id = %s",
        (now, ACTOR, why, now, alert_id),
    )
    _event(conn, alert_id, now, "auto_resolved", comment=why)


def resolve_open_alerts(conn: psycopg.Connection, now: datetime, why: str, *, resident_id: str | None = None,
                        subject_id: str | None = None, summary: EvaluationSummary | None = None) -> list[int]:
    """Resolve every open alert of a resident (or subject): e.g. monitoring paused, discharged."""
    if resident_id is None and subject_id is None:
        raise ValueError("name a resident or a subject")
    rows = conn.execute(
        "SELECT alert_id FROM alerts WHERE status <> 'resolved' AND (resident_id = %s OR subject_id = %s) "
        "FOR UPDATE", (resident_id, subject_id),
    ).fetchall()
    for (alert_id,) in rows:
        _auto_resolve(conn, alert_id, why, now)
    ids = [r[0] for r in rows]
    if summary is not None:
        summary.resolved.extend(ids)
    return ids


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------
_RESIDENT_COLUMNS = """r.resident_id, r.site_id, r.display_name, r.date_of_birth, r.obs_per_day, r.monitoring,
    r.baseline_confused, r.scale2, r.scale2_reason, r.gp_practice, s.name, r.created_at"""


def _load_residents(conn: psycopg.Connection, where: str, params: Sequence[Any]) -> list[ResidentFacts]:
    rows = conn.execute(
        f"SELECT {_RESIDENT_COLUMNS} FROM residents r JOIN sites s USING (site_id) WHERE {where} "
        "ORDER BY r.site_id, r.resident_id", params,
    ).fetchall()
    return [ResidentFacts(*row) for row in rows]


_SET_COLUMNS = """obs_id, resident_id, taken_at, source, round_key, respiration_rate, spo2, systolic_bp, pulse,
    temperature, consciousness, on_oxygen, spo2_scale, soft_signs, inputs, recorded_by, score, risk, complete,
    missing, subscores, note"""
#: Older sets only feed baselines and trends: their ``inputs`` (provenance JSON) are not loaded and their subscores
#: come as plain integers (JSON decoding 15 days of sets on every evaluation was most of its cost).
_SUBSCORE_COLUMNS = ", ".join(f"(subscores->>'{name}')::int" for name in NEWS2_PARAMETERS)
_LIGHT_SET_COLUMNS = f"""obs_id, resident_id, taken_at, source, round_key, respiration_rate, spo2, systolic_bp,
    pulse, temperature, consciousness, on_oxygen, spo2_scale, soft_signs, NULL, recorded_by, score, risk, complete,
    missing, NULL, note, {_SUBSCORE_COLUMNS}"""
#: Sets younger than this are loaded whole (round planning, soft signs, the newest set's alert text).
FULL_SETS = ROUND_LOOKBACK + timedelta(hours=2)


def _stored_set(row: Sequence[Any]) -> tuple[str, StoredSet]:
    (obs_id, resident_id, taken_at, source, round_key, rr, spo2, sbp, pulse, temp, acvpu, oxygen, scale, soft,
     inputs, by, score, risk, complete, missing, subscores, note) = row[:22]
    if len(row) > 22:  # a light row: subscores as columns
        subscores = dict(zip(NEWS2_PARAMETERS, row[22:], strict=True))
    values = dict(zip(NUMERIC_SET_FIELDS, (rr, spo2, sbp, pulse, temp), strict=True))
    return resident_id, StoredSet(
        obs_id, taken_at, source, round_key, values, acvpu.strip() if acvpu else None, bool(oxygen), scale,
        tuple(soft or ()), inputs or {}, by, score, risk, complete, tuple(missing or ()), subscores or {}, note,
    )


def _load_sets(conn: psycopg.Connection, resident_ids: Sequence[str], now: datetime) -> dict[str, list[StoredSet]]:
    out: dict[str, list[StoredSet]] = {rid: [] for rid in resident_ids}
    recent = now - FULL_SETS
    rows = conn.execute(
        f"SELECT {_LIGHT_SET_COLUMNS} FROM observation_sets WHERE resident_id = ANY(%s) AND taken_at > %s "
        "AND taken_at <= %s ORDER BY taken_at, obs_id",
        (list(resident_ids), now - HISTORY, recent),
    ).fetchall()
    rows += conn.execute(
        f"SELECT {_SET_COLUMNS} FROM observation_sets WHERE resident_id = ANY(%s) AND taken_at > %s "
        "AND taken_at <= %s ORDER BY taken_at, obs_id",
        (list(resident_ids), recent, now + FUTURE_SLACK),
    ).fetchall()
    for row in rows:
        rid, stored = _stored_set(row)
        out[rid].append(stored)
    # a resident's newest set is loaded whole even when it is old (its alert text names what was set aside)
    stale = {sets[-1].obs_id: rid for rid, sets in out.items() if sets and sets[-1].taken_at <= recent}
    if stale:
        for row in conn.execute(f"SELECT {_SET_COLUMNS} FROM observation_sets WHERE obs_id = ANY(%s)",
                                (list(stale),)).fetchall():
            rid, stored = _stored_set(row)
            out[rid][-1] = stored
    return out


def _load_vitals(conn: psycopg.Connection, resident_ids: Sequence[str], now: datetime) -> dict[str, list[VitalReading]]:
    out: dict[str, list[VitalReading]] = {rid: [] for rid in resident_ids}
    rows = conn.execute(
        "SELECT subject_id, metric, value, measured_at, device_id, flags, stored_at FROM readings "
        "WHERE subject_id = ANY(%s) AND metric = ANY(%s) AND measured_at > %s AND measured_at <= %s "
        "ORDER BY measured_at",
        (list(resident_ids), list(VITAL_METRICS), now - ROUND_LOOKBACK, now + FUTURE_SLACK),
    ).fetchall()
    for subject, metric, value, measured_at, device_id, flags, stored_at in rows:
        out[subject].append(VitalReading(metric, value, measured_at, device_id, tuple(flags or ()), stored_at))
    return out


# ------------------------------------------------------------------------------------------------------------
# Residents
# ------------------------------------------------------------------------------------------------------------
def _write_sets(conn: psycopg.Connection, resident: ResidentFacts, plans: Sequence[SetPlan],
                results: Sequence[News2Result]) -> None:
    for plan, result in zip(plans, results, strict=True):
        if plan.supersedes is not None:
            conn.execute("DELETE FROM observation_sets WHERE obs_id = %s AND recorded_by = 'scorer'",
                         (plan.supersedes,))
        v = plan.values
        params = {
            "resident_id": resident.resident_id, "site_id": resident.site_id, "taken_at": plan.taken_at,
            "recorded_by": plan.recorded_by, "source": plan.source, "round_key": plan.round_key,
            "rr": v.get("respiration_rate"), "spo2": v.get("spo2"), "scale": plan.spo2_scale,
            "sbp": v.get("systolic_bp"), "pulse": v.get("pulse"), "temp": v.get("temperature"),
            "inputs": Jsonb(_json_safe(dict(plan.inputs))), "score": result.score, "risk": result.risk.value,
            "subscores": Jsonb(dict(result.subscores)), "complete": result.complete, "missing": list(result.missing),
            "obs_id": plan.obs_id,
        }
        if plan.obs_id is None:
            conn.execute(
                """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, round_key,
                       respiration_rate, spo2, spo2_scale, systolic_bp, pulse, temperature, inputs, score, risk,
                       subscores, complete, missing)
                   VALUES (%(resident_id)s, %(site_id)s, %(taken_at)s, %(recorded_by)s, %(source)s, %(round_key)s,
                       %(rr)s, %(spo2)s, %(scale)s, %(sbp)s, %(pulse)s, %(temp)s, %(inputs)s, %(score)s, %(risk)s,
                       %(subscores)s, %(complete)s, %(missing)s)
                   ON CONFLICT (resident_id, round_key) DO UPDATE SET taken_at = EXCLUDED.taken_at,
                       source = EXCLUDED.source, respiration_rate = EXCLUDED.respiration_rate,
                       spo2 = EXCLUDED.spo2, spo2_scale = EXCLUDED.spo2_scale, systolic_bp = EXCLUDED.systolic_bp,
                       pulse = EXCLUDED.pulse, temperature = EXCLUDED.temperature, inputs = EXCLUDED.inputs,
                       score = EXCLUDED.score, risk = EXCLUDED.risk, subscores = EXCLUDED.subscores,
                       complete = EXCLUDED.complete, missing = EXCLUDED.missing""",
                params,
            )
        else:
            conn.execute(
                """UPDATE observation_sets SET taken_at = %(taken_at)s, source = %(source)s,
                       round_key = %(round_key)s, respiration_rate = %(rr)s, spo2 = %(spo2)s,
                       spo2_scale = %(scale)s, systolic_bp = %(sbp)s, pulse = %(pulse)s, temperature = %(temp)s,
                       inputs = %(inputs)s, score = %(score)s, risk = %(risk)s, subscores = %(subscores)s,
                       complete = %(complete)s, missing = %(missing)s
                   WHERE obs_id = %(obs_id)s""",
                params,
            )


def _score_sets(sets: Sequence[StoredSet | SetPlan]) -> list[News2Result] | None:
    observations = [
        s.observation() if isinstance(s, SetPlan) else {
            **s.values, "consciousness": s.consciousness, "on_oxygen": s.on_oxygen, "spo2_scale": s.spo2_scale}
        for s in sets
    ]
    try:
        return score_observations(observations)
    except (InvalidObservation, ImplausibleValue) as exc:
        log.error("observation set cannot be scored: %s", exc)
        return None


def _epoch_rows(rows: Sequence[Sequence[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray]:
    return bl.pad_rows([[v for v, _ in r] for r in rows]), bl.pad_rows([[t for _, t in r] for r in rows])


def _baseline_findings(residents: Sequence[ResidentFacts], history: Mapping[str, list[StoredSet]],
                       now: datetime) -> list[Finding]:
    """SpO2 below, temperature above the resident's own baseline, and NEWS2 rising: one 2-D pass per rule for
    all the residents at once."""
    t_now = now.timestamp()
    spo2_rows, temp_rows, score_rows, complete_rows = [], [], [], []
    for r in residents:
        sets = history.get(r.resident_id, [])
        spo2_rows.append([(s.values["spo2"], s.taken_at.timestamp()) for s in sets
                          if s.values.get("spo2") is not None and not s.on_oxygen])
        temp_rows.append([(s.values["temperature"], s.taken_at.timestamp()) for s in sets
                          if s.values.get("temperature") is not None])
        scored = [s for s in sets if s.score is not None]
        score_rows.append([(float(s.score), s.taken_at.timestamp()) for s in scored])
        complete_rows.append([bool(s.complete) for s in scored])
    out: list[Finding] = []
    for kind, rows, direction, delta, label, unit in (
        (AlertKind.SPO2_BELOW_BASELINE, spo2_rows, "below", bl.SPO2_DROP_POINTS, "SpO2", "%"),
        (AlertKind.TEMPERATURE_ABOVE_BASELINE, temp_rows, "above", bl.TEMPERATURE_RISE_C, "temperature", " °C"),
    ):
        values, times = _epoch_rows(rows)
        base = bl.rolling_baselines(values, times, t_now)
        dev = bl.sustained_deviation(values, times, base, t_now, direction=direction, delta=delta)  # type: ignore[arg-type]
        for i, r in enumerate(residents):
            out.append(_deviation_finding(kind, r, base, dev, i, label, unit, direction, delta, now))
    scores, times = _epoch_rows(score_rows)
    complete = np.zeros(scores.shape, dtype=bool)
    for i, row in enumerate(complete_rows):
        complete[i, : len(row)] = row
    rise = bl.news2_rise(scores, times, complete, t_now)
    for i, r in enumerate(residents):
        out.append(_rise_finding(r, rise, i, now))
    return out


def _usual_news2(residents: Sequence[ResidentFacts], history: Mapping[str, list[StoredSet]],
                 now: datetime) -> bl.UsualNews2:
    """Each resident's usual values and subscores from their complete sets (H-OBS-09), all in one 2-D pass."""
    complete = [[s for s in history.get(r.resident_id, []) if s.complete] for r in residents]
    times = bl.pad_rows([[s.taken_at.timestamp() for s in sets] for sets in complete])
    values = {
        name: bl.pad_rows([[np.nan if s.values.get(name) is None else float(s.values[name]) for s in sets]
                           for sets in complete])
        for name in NUMERIC_SET_FIELDS
    }
    subscores = {
        name: bl.pad_rows([[np.nan if s.subscores.get(name) is None else float(s.subscores[name]) for s in sets]
                           for sets in complete])
        for name in NEWS2_PARAMETERS if name not in NUMERIC_SET_FIELDS
    }
    return bl.usual_news2(values, subscores, times, now.timestamp())


def _deviation_finding(kind: AlertKind, r: ResidentFacts, base: bl.Baselines, dev: bl.Deviation, i: int,
                       label: str, unit: str, direction: str, delta: float, now: datetime) -> Finding:
    rid, site = r.resident_id, r.site_id
    if not base.trusted[i]:
        return hold(kind, rid, site, f"baseline from {int(base.count[i])} values, not yet trusted", resident_id=rid)
    if np.isnan(dev.latest_value[i]):
        return hold(kind, rid, site, resident_id=rid)
    median, mad = float(base.median[i]), float(base.mad[i])
    if not dev.alert[i]:
        if dev.run_length[i] == 0:
            return clear_alert(kind, rid, site, f"{label} {dev.latest_value[i]:g}{unit} is within {delta:g} of the "
                               f"usual {median:g}{unit}.", resident_id=rid)
        return hold(kind, rid, site, "one deviating value: waiting for a second", resident_id=rid)
    started = datetime.fromtimestamp(float(dev.run_start[i]), UTC)
    latest = datetime.fromtimestamp(float(dev.latest_time[i]), UTC)
    reason = (f"{label} {dev.latest_value[i]:g}{unit} at {local_time(latest)} is {abs(dev.deviation[i]):.1f} "
              f"{'points below' if direction == 'below' else 'above'} {r.display_name}'s usual {median:g}{unit} "
              f"(median of {int(base.count[i])} readings over 14 days); {int(dev.run_length[i])} readings in a row "
              f"since {local_time(started)}.")
    if kind is AlertKind.SPO2_BELOW_BASELINE:
        action = ("Take a full set of observations now (NEWS2) and look for a chest infection or breathlessness. "
                  "Contact the GP today; sooner if NEWS2 is 5 or more or they are getting worse.")
    else:
        action = ("Take a full set of observations now (NEWS2); look for infection (chest, urine, skin), offer "
                  "fluids. Contact the GP today; sooner if NEWS2 is 5 or more or they are getting worse.")
    data = {
        "baseline_median": median, "baseline_mad": mad, "baseline_count": int(base.count[i]),
        "latest": float(dev.latest_value[i]), "latest_at": iso(latest), "run_length": int(dev.run_length[i]),
        "sbard": sbard(f"{r.display_name}: {label} {dev.latest_value[i]:g}{unit}, usual {median:g}{unit}.",
                       r.background(now), [reason], action),
    }
    return raise_alert(kind, rid, site, Severity.LOW, reason, action, resident_id=rid, data=data)


def _rise_finding(r: ResidentFacts, rise: bl.Rise, i: int, now: datetime) -> Finding:
    kind, rid, site = AlertKind.NEWS2_RISING, r.resident_id, r.site_id
    if np.isnan(rise.reference[i]):
        return hold(kind, rid, site, "no complete set in the previous 24 h to compare with", resident_id=rid)
    latest_at = datetime.fromtimestamp(float(rise.latest_time[i]), UTC)
    ref_at = datetime.fromtimestamp(float(rise.reference_time[i]), UTC)
    if not rise.alert[i]:
        if not rise.latest_complete[i]:  # a partial set's total can only be an underestimate (H-BASE-04)
            return hold(kind, rid, site, "newest set is incomplete: it cannot show that NEWS2 has come down",
                        resident_id=rid)
        return clear_alert(kind, rid, site, f"NEWS2 {rise.latest[i]:g} at {local_time(latest_at)}, not 2 above "
                           f"{rise.reference[i]:g} at {local_time(ref_at)}.", resident_id=rid)
    reason = (f"NEWS2 has risen from {rise.reference[i]:g} ({local_time(ref_at)}) to {rise.latest[i]:g} "
              f"({local_time(latest_at)}): up {rise.rise[i]:g} in 24 h.")
    action = ("Tell the nurse or senior carer. Look for what has changed (infection, dehydration, pain, new "
              "medicines) and repeat the observations within 4 hours or as the NEWS2 band says.")
    data = {"from": float(rise.reference[i]), "to": float(rise.latest[i]), "from_at": iso(ref_at),
            "to_at": iso(latest_at),
            "sbard": sbard(f"{r.display_name}: NEWS2 up from {rise.reference[i]:g} to {rise.latest[i]:g}.",
                           r.background(now), [reason], action)}
    return raise_alert(kind, rid, site, Severity.LOW, reason, action, resident_id=rid, data=data,
                       score=int(rise.latest[i]))


def _evaluate_residents(conn: psycopg.Connection, residents: Sequence[ResidentFacts], now: datetime,
                        summary: EvaluationSummary, latency: list[tuple[int, datetime]]) -> None:
    """Rounds -> sets -> scores -> findings for residents of one site. Caller holds the locks."""
    active = [r for r in residents if r.monitoring == "active"]
    for r in residents:
        if r.monitoring != "active":
            resolve_open_alerts(conn, now, f"Monitoring is {r.monitoring}: alerts closed.",
                                resident_id=r.resident_id, summary=summary)
    if not active:
        return
    ids = [r.resident_id for r in active]
    vitals = _load_vitals(conn, ids, now)
    history = _load_sets(conn, ids, now)
    newest_stored: dict[str, datetime | None] = {}
    for r in active:
        rounds = build_rounds(vitals[r.resident_id])
        newest_stored[r.resident_id] = max((x.newest_stored_at for x in rounds if x.newest_stored_at),
                                           default=None)
        recent = [s for s in history[r.resident_id] if s.taken_at > now - ROUND_LOOKBACK - timedelta(hours=1)]
        plans = plan_observation_sets(rounds, recent, scale2=r.scale2)
        if not plans:
            continue
        results = _score_sets(plans)
        if results is None:
            summary.errors[r.resident_id] = "device readings could not be scored (see log)"
            continue
        _write_sets(conn, r, plans, results)
        summary.observation_sets_written += len(plans)
    if summary.observation_sets_written:
        history = _load_sets(conn, ids, now)

    findings: list[Finding] = []
    usual = _usual_news2(active, history, now)
    latest_sets = {rid: sets[-1] for rid, sets in history.items() if sets}
    scored_latest = _score_sets(list(latest_sets.values())) if latest_sets else []
    latest_results = dict(zip(latest_sets, scored_latest or [], strict=False))
    index = {r.resident_id: i for i, r in enumerate(active)}
    for r in active:
        rid = r.resident_id
        obs = latest_sets.get(rid)
        result = latest_results.get(rid)
        if obs is not None and result is not None:
            findings.append(news2_finding(r, obs, result, now))
            stable = result.complete and result.score > 0 and bl.at_usual(dict(result.subscores),
                                                                          dict(obs.values), usual, index[rid])
            due = next_obs_due(obs.taken_at, result.response, result.score, result.complete, r.obs_per_day,
                               at_usual=stable)
            last = LastObservation(obs.taken_at, result.score, result.risk.value, result.complete, result.missing)
            _upsert_state(conn, r, now, obs, result, due)
        else:
            due, last = (first_obs_due(r.created_at, r.obs_per_day) if r.created_at else None), None
            _upsert_state(conn, r, now, None, None, due)
        findings.append(soft_signs_finding(r, history.get(rid, []), now))
        findings.append(overdue_finding(r, due, last, now))
    findings.extend(_baseline_findings(active, history, now))
    stamped = [replace(f, evidence_stored_at=newest_stored.get(f.subject_id)) for f in findings]
    apply_findings(conn, stamped, now, summary, latency=latency)


def _upsert_state(conn: psycopg.Connection, r: ResidentFacts, now: datetime, obs: StoredSet | None,
                  result: News2Result | None, due: datetime | None) -> None:
    conn.execute(
        """INSERT INTO resident_state (resident_id, site_id, news2_score, news2_risk, news2_complete, news2_at,
                                       last_obs_id, next_obs_due, updated_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (resident_id) DO UPDATE SET site_id = EXCLUDED.site_id,
               news2_score = EXCLUDED.news2_score, news2_risk = EXCLUDED.news2_risk,
               news2_complete = EXCLUDED.news2_complete, news2_at = EXCLUDED.news2_at,
               last_obs_id = EXCLUDED.last_obs_id, next_obs_due = EXCLUDED.next_obs_due,
               updated_at = EXCLUDED.updated_at""",
        (r.resident_id, r.site_id, result.score if result else None, result.risk.value if result else None,
         result.complete if result else None, obs.taken_at if obs else None, obs.obs_id if obs else None, due, now),
    )


# ------------------------------------------------------------------------------------------------------------
# Households
# ------------------------------------------------------------------------------------------------------------
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
#: Every metric, for per-metric index probes (readings are indexed by subject, metric, time; PostgreSQL cannot
#: skip-scan the metric), the ones home sensors send most often first so "any reading?" stops early.
_FREQUENT = (Metric.ROOM_TEMPERATURE.value, Metric.MOTION.value, Metric.HUMIDITY.value, Metric.BATTERY.value)
_METRICS_FREQUENT_FIRST = [*_FREQUENT, *sorted(m.value for m in Metric if m.value not in _FREQUENT)]
_TICK = timedelta(microseconds=1)
_EVENT_COLUMNS = ("site_id, event_id, kind, started_at, ended_at, device_id, detail->>'role', "
                  "detail->>'direction', (detail->>'bathroom_trip')::boolean, (detail->>'up')::boolean, "
                  "CASE WHEN started_at >= %(recent)s THEN detail END")


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

    @property
    def roles(self) -> dict[str, str | None]:
        return {d: role_of(role, room) for d, _, role, room, _ in self.devices}


def _evaluate_households(conn: psycopg.Connection, site_ids: Sequence[str], now: datetime,
                         summary: EvaluationSummary, latency: list[tuple[int, datetime]] | None) -> None:
    """A batch of households as of ``now`` (the caller holds their locks): behaviour events re-derived from their
    readings (only what can have changed, H-HOME-08), then what the rules need, each in one set-based query for
    the whole batch (each walks the (subject, metric, time) index a few entries per metric and day rather than
    scanning 16 days of readings), then the pure rules per household and one pass to write the alerts."""
    gateway_column = "ARRAY(SELECT g.{} FROM gateways g WHERE g.site_id = s.site_id ORDER BY g.gateway_id)"
    homes: dict[str, _Household] = {}
    for site_id, name, package, statuses, gw_ids, gw_states, gw_seen, seen_any in conn.execute(
        "SELECT s.site_id, s.name, s.care_package, ARRAY(SELECT monitoring FROM residents r "
        "WHERE r.site_id = s.site_id), "
        + ", ".join(gateway_column.format(c) for c in ("gateway_id", "state", "last_seen"))
        + ", (SELECT max(last_seen) FROM devices d WHERE d.site_id = s.site_id) "
        "FROM sites s WHERE s.site_id = ANY(%s) AND s.kind = 'household' ORDER BY s.site_id", (list(site_ids),),
    ).fetchall():
        if statuses and "active" not in statuses:
            resolve_open_alerts(conn, now, "No one in this household is being monitored: alerts closed.",
                                subject_id=site_id, summary=summary)
            continue
        gateways = [GatewayState(*row) for row in zip(gw_ids, [site_id] * len(gw_ids), gw_states, gw_seen,
                                                      strict=True)]
        homes[site_id] = _Household(site_id, name, package, gateways, seen_any)
    if not homes:
        return
    ids = sorted(homes)
    for site_id, *device in conn.execute(
        "SELECT site_id, device_id, kind, role, room, bound_at FROM devices WHERE site_id = ANY(%s) "
        "AND resident_id IS NULL AND active AND (unbound_at IS NULL OR unbound_at < bound_at)", (ids,),
    ).fetchall():
        homes[site_id].devices.append(tuple(device))  # type: ignore[arg-type]
    events = _sync_events(conn, homes, now, summary)
    data = _load_households(conn, homes, events, now)
    newest: dict[str, datetime] = {}
    if latency is not None:
        newest = dict(conn.execute(
            "SELECT subject_id, max(stored_at) FROM readings WHERE subject_id = ANY(%s) AND measured_at > %s "
            "AND measured_at <= %s GROUP BY subject_id", (ids, now - timedelta(hours=2), now + FUTURE_SLACK),
        ).fetchall())
    findings = [replace(f, evidence_stored_at=newest.get(site_id)) for site_id in ids
                for f in household_findings(data[site_id], now)]
    apply_findings(conn, findings, now, summary, latency=latency)
    summary.households += len(homes)


def _sync_events(conn: psycopg.Connection, homes: Mapping[str, _Household], now: datetime,
                 summary: EvaluationSummary) -> dict[str, list[BehaviourEvent]]:
    """Re-derive each household's recent behaviour events from its readings, write only what changed, and return
    its events of the last 16 days for the rules (one read of the stored events serves both).

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
                 AND started_at > %(since)s AND started_at <= %(until)s
                 AND (started_at >= %(recent)s OR (kind = ANY(%(night_kinds)s)
                      AND (started_at AT TIME ZONE '{LOCAL_TZ.key}')::time < %(night_end)s))
              UNION ALL
              SELECT * FROM (SELECT DISTINCT ON (site_id) {_EVENT_COLUMNS} FROM behaviour_events
                 WHERE site_id = ANY(%(sites)s) AND kind = 'front_door' AND started_at > %(since)s
                   AND started_at < %(recent)s ORDER BY site_id, started_at DESC) door
              UNION ALL
              SELECT * FROM (SELECT DISTINCT ON (site_id) {_EVENT_COLUMNS} FROM behaviour_events
                 WHERE site_id = ANY(%(sites)s) AND kind = ANY(%(kitchen)s) AND started_at > %(since)s
                   AND started_at < %(recent)s ORDER BY site_id, ended_at DESC NULLS LAST) kitchen
            ) e ORDER BY site_id, started_at""",
        {"sites": ids, "since": since, "until": now + FUTURE_SLACK, "recent": recent_from,
         "night_kinds": ["bathroom_visit", "night_activity"], "night_end": NIGHT_END,
         "kitchen": sorted(KITCHEN_KINDS)},
    ).fetchall())
    for site_id, home in homes.items():
        home.stored = stored.get(site_id, [])
        home.start = recent_from if home.stored else now - BEHAVIOUR_BASELINE_WINDOW
    _incremental_starts(conn, homes, now, recent_from)
    queried_at = datetime.now(UTC)
    starts = [homes[s].start for s in ids]
    readings = _by_site(conn.execute(
        "SELECT h.site, x.device_id, x.metric, x.value, x.measured_at FROM unnest(%s::text[], %s::timestamptz[]) "
        "AS h(site, lo) CROSS JOIN LATERAL (SELECT device_id, metric, value, measured_at FROM readings "
        "  WHERE subject_id = h.site AND metric = ANY(%s) AND measured_at > h.lo AND measured_at > %s "
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
        roles, rooms = home.roles, {d: room for d, _, _, room, _ in home.devices}
        sensor = [SensorReading(d, roles.get(d), m, v, t, rooms.get(d)) for d, m, v, t in readings.get(site_id, [])]
        window_from = home.start + BEHAVIOUR_EDGE
        # one row per (kind, started_at): the unique key (two devices of one role starting together: the last wins)
        derived = {(e.kind, e.started_at): e for e in derive_events(sensor, now) if e.started_at >= window_from}
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
        changed += [(site_id, ev) for key, ev in derived.items() if key not in held or held[key][0] != ev.ended_at
                    or held[key][1] != _json_safe(dict(ev.detail))]
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
    late = dict(conn.execute(
        "SELECT h.site, x.first FROM unnest(%s::text[], %s::timestamptz[]) AS h(site, stored_since) "
        "CROSS JOIN LATERAL (SELECT min(measured_at) AS first FROM readings WHERE subject_id = h.site "
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
        "  SELECT measured_at, device_id FROM readings WHERE subject_id = h.site AND metric = m.metric"
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
        "  SELECT measured_at FROM readings WHERE subject_id = h.site AND metric = m.metric AND value >= 0.5"
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
        "  SELECT 1 FROM readings WHERE subject_id = h.site AND metric = m.metric AND measured_at >= d.lo"
        "  AND measured_at < d.hi AND measured_at > %s AND measured_at <= %s LIMIT 1) x)",
        (ids, days, night_lo, night_hi, _METRICS_FREQUENT_FIRST, since, now),
    ).fetchall():
        nights.setdefault(site_id, set()).add(day)
    last_heard = dict(conn.execute(
        "SELECT h.site, max(x.measured_at) FROM unnest(%s::text[]) AS h(site) "
        "CROSS JOIN unnest(%s::text[]) AS m(metric) CROSS JOIN LATERAL ("
        "  SELECT measured_at FROM readings WHERE subject_id = h.site AND metric = m.metric AND measured_at > %s"
        "  AND measured_at <= %s ORDER BY measured_at DESC LIMIT 1) x GROUP BY h.site",
        (ids, _METRICS_FREQUENT_FIRST, now - timedelta(days=2), now + FUTURE_SLACK),
    ).fetchall())
    # the last 2 h of room temperatures, and the same hour of the day on the previous days (H-HOME-05)
    temps: dict[str, list[RoomTemperature]] = {}
    past_by_day: dict[str, dict[tuple[str, int], float]] = {}
    ranges = [(now - timedelta(hours=2), now + FUTURE_SLACK)] + [
        (now - timedelta(days=k, hours=1), now - timedelta(days=k)) for k in range(1, ROOM_USUAL_DAYS + 1)]
    within = " OR ".join(f"(r.measured_at > %(lo{i})s AND r.measured_at <= %(hi{i})s)" for i in range(len(ranges)))
    bounds = {f"{name}{i}": at for i, (lo, hi) in enumerate(ranges) for name, at in (("lo", lo), ("hi", hi))}
    for site_id, d, room, t, v in conn.execute(  # one index range per hour (a bitmap OR), not 7 days of readings
        "SELECT r.subject_id, r.device_id, coalesce(d.room, d.role), r.measured_at, r.value FROM readings r "
        "LEFT JOIN devices d USING (device_id) WHERE r.subject_id = ANY(%(sites)s) AND r.metric = %(metric)s "
        f"AND r.measured_at > %(since)s AND r.measured_at <= %(until)s AND ({within}) "
        "ORDER BY r.subject_id, r.measured_at",
        {"sites": ids, "metric": Metric.ROOM_TEMPERATURE.value, "since": ranges[-1][0],
         "until": now + FUTURE_SLACK, **bounds},
    ):
        if t > now - timedelta(hours=2):
            temps.setdefault(site_id, []).append(RoomTemperature(d, room, t, v))
        else:  # warmest reading in this hour of the day, per room and previous day
            per_day = past_by_day.setdefault(site_id, {})
            key = (room or d, int((now - t) // timedelta(days=1)))
            per_day[key] = max(v, per_day.get(key, v))
    out = {}
    for site_id in ids:
        home = homes[site_id]
        roles = home.roles
        motion_devices = {d for d, kind, *_ in home.devices if kind in ("motion_sensor", "bathroom_sensor")}
        past: dict[str, list[float]] = {}
        for (room, _day), warmest in sorted(past_by_day.get(site_id, {}).items(), key=lambda item: item[0][1]):
            past.setdefault(room, []).append(warmest)
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
            data_since=min((b for *_, b in home.devices), default=None), room_past_max=past,
        )
    return out


# ------------------------------------------------------------------------------------------------------------
# Devices and gateways
# ------------------------------------------------------------------------------------------------------------
def _load_devices(conn: psycopg.Connection, now: datetime, *, site_ids: Sequence[str] | None = None,
                  subject_ids: Sequence[str] | None = None) -> list[DeviceState]:
    """Active devices with what the device rules need. Their readings of the last 2 days are aggregated in one
    pass over the subjects' rows (not one scan of a subject's readings per device: a household has a dozen)."""
    where, params = "", []
    if site_ids is not None:
        where += " AND d.site_id = ANY(%s)"
        params.append(list(site_ids))
    if subject_ids is not None:
        where += " AND coalesce(d.resident_id, d.site_id) = ANY(%s)"
        params.append(list(subject_ids))
    rows = conn.execute(
        f"""WITH dev AS (
                SELECT d.*, coalesce(d.resident_id, d.site_id) AS subject FROM devices d
                WHERE d.active AND (d.unbound_at IS NULL OR d.unbound_at < d.bound_at) {where}
            ), rd AS (  -- readings stored without maintaining devices.last_seen (ingest maintains it)
                SELECT x.subject_id, x.device_id, max(x.measured_at) AS last_reading
                FROM readings x
                WHERE x.subject_id = ANY(ARRAY(SELECT DISTINCT subject FROM dev WHERE last_seen IS NULL))
                  AND x.measured_at > %s AND x.measured_at <= %s
                GROUP BY x.subject_id, x.device_id
            ), ck AS (
                SELECT x.subject_id, x.device_id, count(*) AS clock_flagged
                FROM readings x
                WHERE x.subject_id = ANY(ARRAY(SELECT DISTINCT subject FROM dev))
                  AND x.measured_at > %s AND x.measured_at <= %s
                  AND x.flags && ARRAY['clock_not_set', 'clock_skewed']
                GROUP BY x.subject_id, x.device_id
            )
            SELECT d.device_id, d.site_id, d.kind, d.resident_id, d.room, d.role, d.gateway_id,
                   greatest(d.last_seen, rd.last_reading), d.bound_at, d.battery_pct,
                   coalesce(g.state = 'offline' OR g.last_seen < %s, false),
                   coalesce(dl.n, 0), coalesce(ck.clock_flagged, 0), dl.latest,
                   coalesce(r.monitoring, 'active')
            FROM dev d
            LEFT JOIN rd ON rd.subject_id = d.subject AND rd.device_id = d.device_id
            LEFT JOIN ck ON ck.subject_id = d.subject AND ck.device_id = d.device_id
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


def _apply_device_findings(conn: psycopg.Connection, devices: Sequence[DeviceState], now: datetime,
                           summary: EvaluationSummary) -> None:
    if not devices:
        return
    # most devices' alerts do not change from one pass to the next: lock and write only those that do
    changing = findings_that_change(conn, device_findings(devices, now))
    for start in range(0, len(changing), 500):
        chunk = changing[start:start + 500]
        with _transaction(conn):
            lock_subjects(conn, [f.subject_id for f in chunk])
            apply_findings(conn, chunk, now, summary)
    summary.devices += len(devices)


def _gateway_pass(conn: psycopg.Connection, now: datetime, summary: EvaluationSummary) -> None:
    rows = conn.execute(
        "SELECT g.gateway_id, g.site_id, g.state, g.last_seen, s.kind, s.name FROM gateways g "
        "JOIN sites s USING (site_id) ORDER BY g.gateway_id").fetchall()
    changing = findings_that_change(conn, [gateway_finding(GatewayState(*row), now) for row in rows])
    if changing:
        with _transaction(conn):
            lock_subjects(conn, [f.subject_id for f in changing])
            apply_findings(conn, changing, now, summary)


# ------------------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------------------
def _classify(conn: psycopg.Connection, subject_ids: Sequence[str]) -> tuple[list[ResidentFacts], list[str], list[str]]:
    residents = _load_residents(conn, "r.resident_id = ANY(%s)", (list(subject_ids),))
    known = {r.resident_id for r in residents}
    rest = [s for s in subject_ids if s not in known]
    households = [row[0] for row in conn.execute(
        "SELECT site_id FROM sites WHERE site_id = ANY(%s) AND kind = 'household' ORDER BY site_id", (rest,))]
    unknown = sorted(set(rest) - set(households))
    return residents, households, unknown


def evaluate_subjects(conn: psycopg.Connection, subject_ids: Iterable[str], now: datetime) -> EvaluationSummary:
    """Evaluate residents and households that have new data: observation sets, scores, state and alerts."""
    ids = sorted({s for s in subject_ids if s})
    summary = EvaluationSummary()
    if not ids:
        return summary
    residents, households, unknown = _classify(conn, ids)
    summary.unknown_subjects.extend(unknown)
    # Residents of every site together, in batches: one transaction and a dozen queries per batch however many
    # homes a burst of readings touches (vectorised baselines across the batch); a failing batch is retried site by
    # site, then resident by resident, so one bad subject cannot block the others.
    for start in range(0, len(residents), RESIDENT_BATCH):
        _run_resident_batch(conn, residents[start:start + RESIDENT_BATCH], now, summary)
    _run_household_batches(conn, households, now, summary, latency=True)
    devices = _load_devices(conn, now, subject_ids=ids)
    _apply_device_findings(conn, devices, now, summary)
    return summary


def _run_guarded(conn: psycopg.Connection, subjects: Sequence[str], now: datetime, summary: EvaluationSummary,
                 work: Any) -> bool:
    local = EvaluationSummary()
    latency: list[tuple[int, datetime]] = []
    try:
        with _transaction(conn):
            lock_subjects(conn, subjects)
            work(local, latency)
    except psycopg.OperationalError:
        raise
    except Exception as exc:
        log.exception("evaluation failed for %s", ", ".join(subjects))
        for s in subjects:
            summary.errors[s] = f"{type(exc).__name__}: {exc}"
        return False
    _finish_latency(local, latency)
    summary.merge(local)
    return True


def _run_resident_batch(conn: psycopg.Connection, group: Sequence[ResidentFacts], now: datetime,
                        summary: EvaluationSummary) -> None:
    def work(s: EvaluationSummary, lat: list[tuple[int, datetime]], batch: Sequence[ResidentFacts]) -> None:
        _evaluate_residents(conn, batch, now, s, lat)
        s.residents += len(batch)

    ok = _run_guarded(conn, [r.resident_id for r in group], now, summary, lambda s, lat: work(s, lat, group))
    if ok or len(group) == 1:
        return
    for r in group:
        summary.errors.pop(r.resident_id, None)
    sites: dict[str, list[ResidentFacts]] = {}
    for r in group:
        sites.setdefault(r.site_id, []).append(r)
    if len(sites) > 1:
        for site_group in sites.values():
            _run_resident_batch(conn, site_group, now, summary)
        return
    for r in group:
        _run_guarded(conn, [r.resident_id], now, summary, lambda s, lat, one=r: work(s, lat, [one]))


def _run_household_batches(conn: psycopg.Connection, site_ids: Sequence[str], now: datetime,
                           summary: EvaluationSummary, *, latency: bool) -> None:
    """Households in batches, one transaction each; a failing batch is retried household by household."""
    for start in range(0, len(site_ids), HOUSEHOLD_BATCH):
        batch = list(site_ids[start:start + HOUSEHOLD_BATCH])

        def work(s: EvaluationSummary, lat: list[tuple[int, datetime]], group: Sequence[str] = batch) -> None:
            _evaluate_households(conn, group, now, s, lat if latency else None)

        if not _run_guarded(conn, batch, now, summary, work) and len(batch) > 1:
            for site_id in batch:
                summary.errors.pop(site_id, None)
                _run_guarded(conn, [site_id], now, summary,
                             lambda s, lat, one=site_id: _evaluate_households(conn, [one], now, s,
                                                                              lat if latency else None))


def rescore_all(conn: psycopg.Connection, now: datetime) -> EvaluationSummary:
    """Re-evaluate every active resident and every household (e.g. on scorer start-up)."""
    ids = [row[0] for row in conn.execute(
        "SELECT resident_id FROM residents WHERE monitoring = 'active' "
        "UNION ALL SELECT site_id FROM sites WHERE kind = 'household' ORDER BY 1")]
    summary = EvaluationSummary()
    for start in range(0, len(ids), 200):
        summary.merge(evaluate_subjects(conn, ids[start:start + 200], now))
    summary.merge(tick(conn, now))
    return summary


def escalate_unacknowledged(conn: psycopg.Connection, now: datetime) -> list[int]:
    """Alerts not acknowledged within their severity's window: escalation_level + 1, status 'escalated'."""
    with _transaction(conn):
        rows = conn.execute(
            """UPDATE alerts SET escalation_level = escalation_level + 1, status = 'escalated', escalated_at = %(now)s,
                      updated_at = %(now)s,
                      ack_due_at = CASE WHEN escalation_level + 1 >= %(max)s THEN NULL
                                        ELSE %(now)s + CASE severity WHEN 'high' THEN %(high)s
                                                                     WHEN 'medium' THEN %(medium)s
                                                                     ELSE %(low)s END END
               WHERE status <> 'resolved' AND acknowledged_at IS NULL AND ack_due_at IS NOT NULL
                 AND ack_due_at <= %(now)s
               RETURNING alert_id, escalation_level, severity""",
            {"now": now, "max": MAX_AUTO_ESCALATION_LEVEL, "high": ACK_WINDOW[Severity.HIGH],
             "medium": ACK_WINDOW[Severity.MEDIUM], "low": ACK_WINDOW[Severity.LOW]},
        ).fetchall()
        for alert_id, level, severity in rows:
            window = ACK_WINDOW[Severity(severity)]
            minutes = int(window.total_seconds() // 60) if window else 0
            _event(conn, alert_id, now, "escalated",
                   comment=f"Not acknowledged within {minutes} minutes ({severity}): escalated to level {level}.",
                   detail={"level": level, "automatic": True})
    return [r[0] for r in rows]


def _overdue_findings(conn: psycopg.Connection, now: datetime,
                      resident_ids: Sequence[str] | None = None) -> list[Finding]:
    where, params = "r.monitoring = 'active'", []
    if resident_ids is not None:
        where += " AND r.resident_id = ANY(%s)"
        params.append(list(resident_ids))
    residents = _load_residents(conn, where, params)
    state = {row[0]: row[1:] for row in conn.execute(
        "SELECT resident_id, next_obs_due, news2_at, news2_score, news2_risk, news2_complete FROM resident_state "
        "WHERE resident_id = ANY(%s)", ([r.resident_id for r in residents],))}
    findings = []
    for r in residents:
        due, taken, score, risk, complete = state.get(r.resident_id, (None,) * 5)
        last = LastObservation(taken, score, risk, bool(complete)) if taken is not None and score is not None else None
        if due is None:
            due = first_obs_due(r.created_at, r.obs_per_day) if r.created_at else None
        findings.append(overdue_finding(r, due, last, now))
    return findings


def _overdue_pass(conn: psycopg.Connection, now: datetime, summary: EvaluationSummary) -> None:
    # Most residents' overdue state is unchanged since the last tick: lock and write only those that change.
    changing = findings_that_change(conn, _overdue_findings(conn, now))
    for start in range(0, len(changing), 200):
        ids = [f.subject_id for f in changing[start:start + 200]]
        with _transaction(conn):
            lock_subjects(conn, ids)
            # again under the locks: an evaluation may just have recorded a set and moved next_obs_due
            apply_findings(conn, _overdue_findings(conn, now, ids), now, summary)


def tick(conn: psycopg.Connection, now: datetime, *, slow: bool = True, gateways: bool = False) -> EvaluationSummary:
    """Time-based rules. Fast part (every few seconds): escalations and overdue observations (and the gateway
    pass with ``gateways=True``: one cheap query). Slow part (``slow=True``): households (long lie, morning,
    kitchen, rooms, silence), devices and gateways."""
    summary = EvaluationSummary()
    summary.escalated.extend(escalate_unacknowledged(conn, now))
    _overdue_pass(conn, now, summary)
    if slow:
        households = [row[0] for row in conn.execute(
            "SELECT site_id FROM sites WHERE kind = 'household' ORDER BY site_id").fetchall()]
        _run_household_batches(conn, households, now, summary, latency=False)
        _apply_device_findings(conn, _load_devices(conn, now), now, summary)
    if slow or gateways:
        _gateway_pass(conn, now, summary)
    return summary


__all__ = [
    "ACTOR",
    "CLINICAL_KINDS",
    "EvaluationSummary",
    "apply_findings",
    "escalate_unacknowledged",
    "evaluate_subjects",
    "lock_subjects",
    "rescore_all",
    "resolve_open_alerts",
    "tick",
]

