"""Observation sets (tablet entry with device prefill, NEWS2 scoring) and readings timelines for charts."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from psycopg.rows import dict_row

from carewatch.alerts import SoftSign
from carewatch.api import scope
from carewatch.api.deps import Context, Ctx, Paging, ReportContext, ReportRoute
from carewatch.api.routes_kits import identity_questions
from carewatch.api.schemas import (
    PARAMETER_METRIC,
    AlertBrief,
    News2Parameter,
    ObservationIn,
    ObservationOut,
    ObservationResult,
    Page,
    Prefill,
    PrefillValue,
    Timeline,
    TimelinePoint,
    page_of,
)
from carewatch.api.scope import Permission
from carewatch.ingest import kit_sessions
from carewatch.scoring.engine import evaluate_subjects
from carewatch.scoring.news2 import InvalidObservation, score_observation
from carewatch.scoring.observation_sets import ObservationSetRow, record_observation_set
from carewatch.subjects import Subject, SubjectKind
from carewatch.wire import METRICS, UNTRUSTED_FLAGS, Metric

log = logging.getLogger(__name__)
router = APIRouter(tags=["observations"], route_class=ReportRoute)  # its reports: see ReportRoute

MAX_BACKDATE = timedelta(days=7)
MAX_FUTURE = timedelta(minutes=5)
_UNTRUSTED = [f.value for f in UNTRUSTED_FLAGS]


def recent_device_values(ctx: Ctx, resident_id: str, minutes: int, now: datetime) -> tuple[dict[str, PrefillValue],
                                                                                           dict[str, str]]:
    """Latest trusted device reading per NEWS2 parameter taken in the last ``minutes``; and why others were not."""
    metric_to_param = {m.value: p for p, m in PARAMETER_METRIC.items()}
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT metric, value, device_id, measured_at, flags FROM latest_readings
               WHERE subject_kind = 'resident' AND subject_id = %s AND metric = ANY(%s) AND measured_at >= %s
                 AND measured_at <= %s""",
            (resident_id, list(metric_to_param), now - timedelta(minutes=minutes), now + MAX_FUTURE),
        ).fetchall()
    values: dict[str, PrefillValue] = {}
    skipped: dict[str, str] = {}
    for r in rows:
        param = metric_to_param[r["metric"]]
        bad = sorted(set(r["flags"]) & set(_UNTRUSTED))
        if bad:
            skipped[param.value] = f"the device flagged its reading as {', '.join(bad)}: measure again"
            continue
        values[param.value] = PrefillValue(parameter=param, metric=r["metric"], value=r["value"],
                                           unit=METRICS[r["metric"]].unit, device_id=r["device_id"],
                                           measured_at=r["measured_at"])
    return values, skipped


@router.get("/residents/{resident_id}/observations/prefill", response_model=Prefill,
            summary="Device readings from the last N minutes, to prefill the observation form")
def prefill(ctx: Context, resident_id: str,
            minutes: Annotated[int, Query(ge=1, le=120, description="How far back to look.")] = 15) -> Prefill:
    ctx.resident(resident_id, clinical=True, view="prefill")
    now = datetime.now(UTC)
    values, skipped = recent_device_values(ctx, resident_id, minutes, now)
    return Prefill(resident_id=resident_id, window_minutes=minutes, generated_at=now, values=values, skipped=skipped)


#: 'C' in ACVPU *is* new confusion: ticking the soft sign while recording 'A' says two different things (H-OBS-12).
NEW_CONFUSION_WITH_A = (
    "'new confusion' is ticked but alertness (ACVPU) is A. Which is true? If the confusion is new or worse than "
    "usual, record C (it scores 3). If it is their usual confusion, untick 'new confusion' and keep A."
)


def _unprocessable(field: str, message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         [{"loc": ["body", field], "field": field, "msg": message, "type": "value_error"}])


def _scorer_errors(exc: InvalidObservation, inputs: dict[str, Any]) -> list[dict[str, Any]] | str:
    """The scorer's reasons by field; a value taken from a device says so (the user did not type it)."""
    errors = []
    for field, reason in exc.problems.items():
        source = inputs.get(field, {})
        if source.get("source") == "device":
            reason = f"{reason} (the reading of device {source['device_id']} at {source['measured_at']})"
        errors.append({"loc": ["body", field], "field": field, "msg": reason, "type": "value_error"})
    return errors or str(exc)


@router.post("/residents/{resident_id}/observations", response_model=ObservationResult,
             status_code=status.HTTP_201_CREATED,
             summary="Record an observation set; returns the NEWS2 score and what to do now")
def record_observation(ctx: Context, resident_id: str, body: ObservationIn) -> ObservationResult:
    """Stores the set (its SpO2 scale comes from the resident's recorded Scale 2 decision, never from the form),
    asks the scoring stage to raise or update alerts, and returns the score with plain-English advice."""
    ctx.require(Permission.RECORD_OBSERVATION)
    resident = ctx.resident(resident_id, action="create", clinical=True, record="observation_set")
    if resident["monitoring"] in ("discharged", "deceased"):
        raise HTTPException(status.HTTP_409_CONFLICT, f"resident is {resident['monitoring']}: not monitored")
    now = datetime.now(UTC)
    taken_at = body.taken_at or now
    if taken_at > now + MAX_FUTURE:
        raise _unprocessable("taken_at", "is in the future: check the tablet's clock")
    if taken_at < now - MAX_BACKDATE:
        raise _unprocessable("taken_at", "is more than 7 days ago")
    if body.consciousness == "A" and SoftSign.NEW_CONFUSION in body.soft_signs:
        raise _unprocessable("consciousness", NEW_CONFUSION_WITH_A)

    values: dict[str, Any] = {p.value: getattr(body, p.value) for p in News2Parameter}
    inputs: dict[str, Any] = {}
    device_values, skipped = recent_device_values(ctx, resident_id, body.prefill_minutes, now) \
        if body.from_device else ({}, {})
    for param in body.from_device:
        reading = device_values.get(param.value)
        if reading is None:
            why = skipped.get(param.value, f"no device reading in the last {body.prefill_minutes} minutes")
            raise _unprocessable(param.value, f"cannot use a device value: {why}")
        typed = values[param.value]
        if typed is not None and abs(typed - reading.value) > 1e-6:
            raise _unprocessable(param.value, f"typed value {typed:g} differs from the device reading "
                                              f"{reading.value:g}: either type it or accept the device value")
        values[param.value] = reading.value
        inputs[param.value] = {"source": "device", "device_id": reading.device_id,
                               "measured_at": reading.measured_at.isoformat()}
    for name, value in values.items():
        if value is not None and name not in inputs:
            inputs[name] = {"source": "manual", "by": ctx.principal.username, "at": taken_at.isoformat()}
    session = _kit_session_check(ctx, resident, body, {p.value: values[p.value] for p in body.from_device}, now)
    manual = {"source": "manual", "by": ctx.principal.username, "at": taken_at.isoformat()}
    inputs["on_oxygen"] = manual
    if body.consciousness is not None:
        inputs["consciousness"] = manual

    spo2_scale = 2 if resident["scale2"] else 1
    try:  # a mapping, so the scorer validates it and says which field is wrong (InvalidObservation.problems)
        result = score_observation({**values, "spo2_scale": spo2_scale, "on_oxygen": body.on_oxygen,
                                    "consciousness": body.consciousness})
    except InvalidObservation as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, _scorer_errors(exc, inputs)) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None

    source = "mixed" if body.from_device else "manual"
    obs_id = record_observation_set(ctx.conn, ObservationSetRow(
        resident_id=resident_id, site_id=resident["site_id"], taken_at=taken_at, recorded_by=ctx.principal.username,
        source=source, values=values, result=result, spo2_scale=spo2_scale, on_oxygen=body.on_oxygen,
        consciousness=body.consciousness, soft_signs=[s.value for s in body.soft_signs], note=body.note,
        inputs=inputs))
    ctx.note("create", "observation_set", obs_id, resident_id=resident_id, score=result.score,
             session_id=body.session_id, identity_confirmed=body.identity_confirmed or None)
    if session is not None and session["ended_at"] is None:  # saving ends the kit's measurement session
        kit_sessions.lock_kits(ctx.conn, [session["kit_id"]])
        kit_sessions.end_session(ctx.conn, session["session_id"], by=ctx.principal.username,
                                 at=max(taken_at, session["started_at"]), reason="saved")
        ctx.note("update", "kit_session", session["session_id"], change="ended", reason="saved")
    # Alerts are evaluated as of now; under a data clock (simulated-time demo) "now" is the observation's time.
    data_clock = ctx.request.app.state.settings.clock == "data"
    evaluated = evaluate_alerts(ctx, resident_id, taken_at if data_clock else now)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        alerts = cur.execute(
            """SELECT alert_id, kind, severity, status, reason, action FROM alerts
               WHERE resident_id = %s AND status <> 'resolved' ORDER BY opened_at DESC""", (resident_id,)).fetchall()
    response = result.response
    return ObservationResult(
        obs_id=obs_id, resident_id=resident_id, taken_at=taken_at, source=source, spo2_scale=spo2_scale,
        score=result.score, risk=result.risk.value, label=response.label, colour=response.colour,
        subscores=dict(result.subscores), complete=result.complete, missing=list(result.missing),
        meaning=response.meaning, action=response.action, min_interval_minutes=response.min_interval_minutes,
        continuous_monitoring=response.continuous, soft_signs=[s.value for s in body.soft_signs],
        alerts_evaluated=evaluated, open_alerts=[AlertBrief(**a) for a in alerts])


def _kit_session_check(ctx: Ctx, resident: dict[str, Any], body: ObservationIn, device_values: dict[str, Any],
                       now: datetime) -> dict[str, Any] | None:
    """The shared-kit session these values came from (None without one). Device values implausibly far from this
    resident's usual ones are refused (409) until the carer confirms who they measured: "Is this <name>?"."""
    if body.session_id is None:
        return None
    session = scope.load_kit_session(ctx.conn, ctx.principal, body.session_id)
    if session["resident_id"] != resident["resident_id"]:
        raise HTTPException(status.HTTP_409_CONFLICT, (
            f"session {body.session_id} is measuring {session['resident_name']}, not {resident['display_name']}: "
            "choose the resident again on the tablet"))
    metric_values = {PARAMETER_METRIC[News2Parameter(p)].value: v for p, v in device_values.items() if v is not None}
    questions = identity_questions(ctx, resident, body.session_id, metric_values, now)
    if questions and not body.identity_confirmed:
        raise HTTPException(status.HTTP_409_CONFLICT, " ".join(questions) + (
            " Check the wristband or photo, then confirm, or choose the right resident."))
    return session


def evaluate_alerts(ctx: Ctx, resident_id: str, now: datetime) -> bool:
    """Ask the scoring stage to raise/update alerts for this resident (the API never decides alerts itself).

    Runs in a savepoint: if the scoring stage fails, the observation set is still kept (it is the clinical
    record), the failure is logged, and the caller is told alerts were not evaluated.
    """
    try:
        with ctx.conn.transaction():
            evaluate_subjects(ctx.conn, [Subject(SubjectKind.RESIDENT, resident_id)], now)
    except Exception:
        log.exception("alert evaluation failed for %s", resident_id)
        return False
    return True


@router.get("/residents/{resident_id}/observations", response_model=Page[ObservationOut],
            summary="Observation sets, newest first")
def list_observations(ctx: Context, resident_id: str, paging: Paging, since: datetime | None = None,
                      until: datetime | None = None) -> dict:
    ctx.resident(resident_id, clinical=True, view="observations")
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT * FROM observation_sets WHERE resident_id = %(rid)s
                 AND (%(since)s::timestamptz IS NULL OR taken_at >= %(since)s)
                 AND (%(until)s::timestamptz IS NULL OR taken_at < %(until)s)
               ORDER BY taken_at DESC, obs_id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {"rid": resident_id, "since": since, "until": until, "limit": paging.limit + 1,
             "offset": paging.offset}).fetchall()
    return page_of([ObservationOut(**{k: v for k, v in r.items() if k in ObservationOut.model_fields}) for r in rows],
                   paging.limit, paging.offset)


# ------------------------------------------------------------------------------------------------------------
# Timelines
# ------------------------------------------------------------------------------------------------------------
Bucket = Literal["raw", "1m", "5m", "15m", "30m", "1h", "3h", "6h", "12h", "1d"]
BUCKETS: dict[str, timedelta] = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5),
                                 "15m": timedelta(minutes=15), "30m": timedelta(minutes=30),
                                 "1h": timedelta(hours=1), "3h": timedelta(hours=3), "6h": timedelta(hours=6),
                                 "12h": timedelta(hours=12), "1d": timedelta(days=1)}
MAX_POINTS = 5000
RAW_WINDOW = timedelta(hours=6)
MAX_WINDOW = timedelta(days=400)


def choose_bucket(window: timedelta, requested: str | None) -> str:
    """Raw points for short windows, hourly up to a fortnight, daily beyond (unless the caller chose)."""
    if requested:
        return requested
    if window <= RAW_WINDOW:
        return "raw"
    return "1h" if window <= timedelta(days=14) else "1d"


@router.get("/residents/{resident_id}/readings", response_model=Timeline,
            summary="A vital-sign timeline for charts (raw for short windows, else resampled)")
def readings_timeline(
    ctx: ReportContext,
    resident_id: str,
    metric: Metric,
    start: Annotated[datetime | None, Query(alias="from", description="Default: 24 h before 'to'.")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="Default: now.")] = None,
    bucket: Annotated[Bucket | None, Query(description="raw, or a bucket width; default depends on the window.")]
    = None,
) -> Timeline:
    ctx.resident(resident_id, clinical=METRICS[metric].vital, metric=metric.value)
    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=24)
    if start.tzinfo is None or end.tzinfo is None:
        raise _unprocessable("from", "times must include a time zone (e.g. 2024-05-01T08:00:00Z)")
    if end <= start:
        raise _unprocessable("to", "must be after 'from'")
    if end - start > MAX_WINDOW:
        raise _unprocessable("from", "window is longer than 400 days")
    chosen = choose_bucket(end - start, bucket)
    if chosen != "raw" and (end - start) / BUCKETS[chosen] > MAX_POINTS:
        raise _unprocessable("bucket", f"more than {MAX_POINTS} points: choose a wider bucket")
    values = {"rid": resident_id, "metric": metric.value, "start": start, "end": end, "untrusted": _UNTRUSTED,
              "limit": MAX_POINTS + 1}
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        if chosen == "raw":
            rows = cur.execute(
                """SELECT measured_at AS t, value, NULL::float8 AS min, NULL::float8 AS max, 1 AS n FROM readings
                   WHERE subject_kind = 'resident' AND subject_id = %(rid)s AND metric = %(metric)s
                     AND measured_at >= %(start)s
                     AND measured_at < %(end)s AND NOT (flags && %(untrusted)s::text[])
                   ORDER BY measured_at LIMIT %(limit)s""", values).fetchall()
        else:
            rows = cur.execute(
                """SELECT date_bin(%(width)s, measured_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS t,
                          avg(value) AS value, min(value) AS min, max(value) AS max, count(*) AS n
                   FROM readings
                   WHERE subject_kind = 'resident' AND subject_id = %(rid)s AND metric = %(metric)s
                     AND measured_at >= %(start)s
                     AND measured_at < %(end)s AND NOT (flags && %(untrusted)s::text[])
                   GROUP BY 1 ORDER BY 1 LIMIT %(limit)s""", {**values, "width": BUCKETS[chosen]}).fetchall()
    return Timeline(subject_kind=SubjectKind.RESIDENT, subject_id=resident_id, metric=metric.value,
                    unit=METRICS[metric].unit, start=start, end=end, bucket=None if chosen == "raw" else chosen,
                    points=[TimelinePoint(**r) for r in rows[:MAX_POINTS]],
                    truncated=len(rows) > MAX_POINTS)
