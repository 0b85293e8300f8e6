"""Shared kits (issue 17): measurement sessions on the tablet, live values, unassigned readings, claims, moves.

A care home's kit (one oximeter, thermometer and cuff) measures whoever the carer picks. Picking a resident and a
kit starts a session; the kit's readings measured during it are that resident's (``ingest/attribution.py``). The
tablet polls the session for the values as they arrive. A kit reading no session covers is listed as not yet
assigned; a session started within 5 minutes after it may claim it. A reading put on the wrong resident can be
moved within an hour, and both residents are re-scored. Every one of these is audited.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from carewatch.api import scope
from carewatch.api.deps import Context, Ctx
from carewatch.api.schemas import PARAMETER_METRIC, _In
from carewatch.api.scope import Permission
from carewatch.ingest import kit_sessions, store
from carewatch.ingest.attribution import CLAIM_WINDOW, MOVE_WINDOW, identity_doubts
from carewatch.scoring.engine import evaluate_subjects, withdraw_device_values
from carewatch.scoring.rules import LOCAL_TZ
from carewatch.subjects import Subject, SubjectKind
from carewatch.wire import METRICS, UNTRUSTED_FLAGS, Ident, Metric

log = logging.getLogger(__name__)
router = APIRouter(tags=["kits"])

MAX_BACKDATE = timedelta(days=7)
MAX_FUTURE = timedelta(minutes=5)
UNASSIGNED_WINDOW = timedelta(hours=12)
USUAL_WINDOW = timedelta(days=30)
_METRIC_PARAM = {m.value: p.value for p, m in PARAMETER_METRIC.items()}
_UNTRUSTED = sorted(f.value for f in UNTRUSTED_FLAGS)


# ------------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------------
class KitDevice(BaseModel):
    device_id: str
    kind: str
    battery_pct: float | None
    last_seen: datetime | None


class KitOut(BaseModel):
    kit_id: str
    site_id: str
    name: str
    devices: list[KitDevice]
    open_session: SessionBrief | None = None


class SessionBrief(BaseModel):
    session_id: int
    resident_id: str
    resident_name: str
    started_by: str
    started_at: datetime


class SessionIn(_In):
    resident_id: Ident
    replace: bool = Field(default=False, description="End the kit's open session first (the tablet asked).")
    at: datetime | None = Field(default=None, description="Simulated-time platforms only (data clock): when.")


class SessionEndIn(_In):
    reason: Literal["saved", "switched", "ended"] = "ended"
    at: datetime | None = Field(default=None, description="Simulated-time platforms only (data clock): when.")


class LiveValue(BaseModel):
    parameter: str
    metric: str
    value: float
    unit: str
    device_id: str
    measured_at: datetime
    gateway_id: str
    seq: int
    flags: list[str]
    trusted: bool


class KitReading(BaseModel):
    gateway_id: str
    seq: int
    device_id: str
    metric: str
    value: float
    unit: str
    measured_at: datetime
    words: str


class KitReadingRecent(KitReading):
    resident_id: str | None = Field(description="Whom it is attributed to (None: not yet assigned).")
    resident_name: str | None
    movable: bool = Field(description="Still within the hour in which staff may move it.")


class SessionOut(BaseModel):
    session_id: int
    kit_id: str
    kit_name: str
    site_id: str
    resident_id: str
    resident_name: str
    date_of_birth: date
    photo_url: str | None = None
    started_by: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    open: bool
    values: dict[str, LiveValue]
    identity_check: list[str] = Field(description="'Is this <name>?' questions to ask before saving.")
    claimable: list[KitReading] = Field(description="Unassigned readings of this kit this session may claim.")
    ended_session: SessionBrief | None = None


class ClaimIn(_In):
    readings: list[ReadingRef] = Field(default=[], max_length=200, description="Empty: every claimable reading.")


class ReadingRef(_In):
    gateway_id: Ident
    seq: int = Field(ge=1)


class MoveIn(_In):
    gateway_id: Ident
    seq: int = Field(ge=1)
    to_resident_id: Ident
    reason: str | None = Field(default=None, max_length=500)


class MoveOut(BaseModel):
    moved: int
    from_subject_kind: SubjectKind = Field(description="Whose it was: 'resident' (from_resident_id), or 'kit' (not yet "
                                                       "assigned: the kit's own, from_resident_id null).")
    from_resident_id: str | None
    to_resident_id: str
    readings: list[ReadingRef]
    alerts_evaluated: bool


KitOut.model_rebuild()
ClaimIn.model_rebuild()


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------
def _now(ctx: Ctx) -> datetime:
    return datetime.now(UTC)


def _close_idle(ctx: Ctx, kit_ids: list[str]) -> int:
    """Write down the idle end of sessions idle for 10 minutes. Not on a simulated-time platform (data clock):
    its "now" is the simulation's, which only the simulated tablet's own requests carry (``at``)."""
    if ctx.request.app.state.settings.clock == "data":
        return 0
    return kit_sessions.close_idle(ctx.conn, _now(ctx), kit_ids=kit_ids)


def _when(ctx: Ctx, at: datetime | None) -> datetime:
    """Now; or, on a simulated-time platform (data clock), the time the simulated tablet says."""
    now = _now(ctx)
    if at is None:
        return now
    if ctx.request.app.state.settings.clock != "data":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [
            {"loc": ["body", "at"], "field": "at", "type": "value_error",
             "msg": "only a simulated-time platform (data clock) takes 'at': sessions start and end now"}])
    if at.tzinfo is None or at > now + MAX_FUTURE or at < now - MAX_BACKDATE:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [
            {"loc": ["body", "at"], "field": "at", "type": "value_error",
             "msg": "must have a time zone, be at most 7 days ago and not in the future"}])
    return at


def _brief(row: dict[str, Any] | None) -> SessionBrief | None:
    if row is None:
        return None
    return SessionBrief(session_id=row["session_id"], resident_id=row["resident_id"],
                        resident_name=row.get("resident_name") or row["resident_id"], started_by=row["started_by"],
                        started_at=row["started_at"])


def _words(kit_name: str, measured_at: datetime) -> str:
    return f"reading from {kit_name} at {measured_at.astimezone(LOCAL_TZ):%H:%M}, not yet assigned"


def _kit_readings(ctx: Ctx, kit: dict[str, Any], low: datetime, high: datetime) -> list[KitReading]:
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT gateway_id, seq, device_id, metric, value, measured_at FROM readings
               WHERE subject_kind = 'kit' AND subject_id = %s AND measured_at >= %s AND measured_at < %s
                 AND metric <> 'battery' AND site_id = %s
               ORDER BY measured_at DESC, seq DESC LIMIT 200""", (kit["kit_id"], low, high, kit["site_id"])).fetchall()
    return [KitReading(**r, unit=METRICS[r["metric"]].unit, words=_words(kit["name"], r["measured_at"]))
            for r in rows]


def _usual(ctx: Ctx, resident_id: str, session_id: int, now: datetime) -> dict[str, float]:
    """The resident's own usual value per metric: the median of their trusted readings over 30 days (not this
    session's), where there are enough of them."""
    from carewatch.ingest.attribution import IDENTITY_DISTANCE, IDENTITY_MIN_HISTORY

    rows = ctx.conn.execute(
        """SELECT metric, percentile_cont(0.5) WITHIN GROUP (ORDER BY value), count(*) FROM readings
           WHERE subject_kind = 'resident' AND subject_id = %s AND metric = ANY(%s) AND measured_at >= %s
             AND measured_at <= %s AND session_id IS DISTINCT FROM %s AND NOT (flags && %s::text[])
           GROUP BY metric""",
        (resident_id, list(IDENTITY_DISTANCE), now - USUAL_WINDOW, now + MAX_FUTURE, session_id, _UNTRUSTED)
    ).fetchall()
    return {m: float(v) for m, v, n in rows if n >= IDENTITY_MIN_HISTORY}


def session_values(ctx: Ctx, session_id: int) -> dict[str, LiveValue]:
    """The newest reading of each NEWS2 parameter this session has attributed (what the tablet's form shows)."""
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT DISTINCT ON (metric) metric, value, device_id, measured_at, gateway_id, seq, flags
               FROM readings WHERE session_id = %s AND metric = ANY(%s)
               ORDER BY metric, measured_at DESC, seq DESC""", (session_id, list(_METRIC_PARAM))).fetchall()
    out = {}
    for r in rows:
        param = _METRIC_PARAM[r["metric"]]
        out[param] = LiveValue(parameter=param, unit=METRICS[r["metric"]].unit, flags=list(r["flags"]),
                               trusted=not set(r["flags"]) & set(_UNTRUSTED),
                               **{k: r[k] for k in ("metric", "value", "device_id", "measured_at", "gateway_id",
                                                    "seq")})
    return out


def identity_questions(ctx: Ctx, resident: dict[str, Any], session_id: int, values: dict[str, float],
                       now: datetime) -> list[str]:
    """'Is this <name>?' for each value implausibly far from the resident's usual one."""
    doubts = identity_doubts(values, _usual(ctx, resident["resident_id"], session_id, now))
    return [d.words(resident["display_name"] if "display_name" in resident else resident["resident_name"],
                    METRICS[Metric(d.metric)].unit) for d in doubts]


def _session_out(ctx: Ctx, row: dict[str, Any], ended: dict[str, Any] | None = None) -> SessionOut:
    now = _now(ctx)
    values = session_values(ctx, row["session_id"])
    trusted = {v.metric: v.value for v in values.values() if v.trusted}
    is_open = row["ended_at"] is None
    claimable: list[KitReading] = []
    if is_open:
        kit = {"kit_id": row["kit_id"], "name": row["kit_name"], "site_id": row["site_id"]}
        claimable = _kit_readings(ctx, kit, row["started_at"] - CLAIM_WINDOW, row["started_at"])
    return SessionOut(
        session_id=row["session_id"], kit_id=row["kit_id"], kit_name=row["kit_name"], site_id=row["site_id"],
        resident_id=row["resident_id"], resident_name=row["resident_name"], date_of_birth=row["date_of_birth"],
        photo_url=row.get("photo_url"), started_by=row["started_by"], started_at=row["started_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"], open=is_open, values=values,
        identity_check=identity_questions(ctx, row, row["session_id"], trusted, now),
        claimable=claimable, ended_session=_brief(ended))


def _rescore(ctx: Ctx, subjects: list[str], now: datetime) -> bool:
    """Scores and alerts of these residents again (the scoring stage decides); False if that failed."""
    residents = [s for s in subjects if s]
    if not residents:
        return True
    try:
        with ctx.conn.transaction():
            evaluate_subjects(ctx.conn, [Subject(SubjectKind.RESIDENT, r) for r in residents], now)
    except Exception:
        log.exception("re-scoring after a reading moved failed for %s", residents)
        return False
    return True


# ------------------------------------------------------------------------------------------------------------
# Routes
# ------------------------------------------------------------------------------------------------------------
@router.get("/kits", response_model=list[KitOut], summary="The shared kits of a home, their devices and open session")
def list_kits(ctx: Context, site: str | None = None) -> list[KitOut]:
    ctx.require(Permission.USE_KIT)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        kits = cur.execute(
            f"""SELECT k.* FROM kits k WHERE {scope.kit_predicate(ctx.principal)}
                  AND (%(site)s::text IS NULL OR k.site_id = %(site)s) ORDER BY k.site_id, k.name LIMIT 500""",
            {**ctx.params, "site": site}).fetchall()
        ids = [k["kit_id"] for k in kits]
        _close_idle(ctx, ids)
        devices = cur.execute(
            """SELECT kit_id, device_id, kind, battery_pct, last_seen FROM devices
               WHERE kit_id = ANY(%s) AND active ORDER BY device_id""", (ids,)).fetchall()
        sessions = cur.execute(
            """SELECT k.*, r.display_name AS resident_name FROM kit_sessions k
               JOIN residents r ON r.resident_id = k.resident_id
               WHERE k.kit_id = ANY(%s) AND k.ended_at IS NULL""", (ids,)).fetchall()
    ctx.note("read", "kit", None, ids=ids)
    by_kit = {s["kit_id"]: s for s in sessions}
    return [KitOut(kit_id=k["kit_id"], site_id=k["site_id"], name=k["name"],
                   devices=[KitDevice(**{f: d[f] for f in KitDevice.model_fields}) for d in devices
                            if d["kit_id"] == k["kit_id"]],
                   open_session=_brief(by_kit.get(k["kit_id"]))) for k in kits]


@router.post("/kits/{kit_id}/sessions", response_model=SessionOut, status_code=status.HTTP_201_CREATED,
             summary="Start measuring a resident with a shared kit (409 while another session is open)")
def start_session(ctx: Context, kit_id: str, body: SessionIn) -> SessionOut:
    """Opens a session for this kit, resident and member of staff. While the kit has another open session the
    answer is 409 naming it: the tablet asks, and starts again with ``replace`` to end that one first."""
    ctx.require(Permission.USE_KIT)
    ctx.note("create", "kit_session", None, kit_id=kit_id, resident_id=body.resident_id, replace=body.replace)
    kit = scope.load_kit(ctx.conn, ctx.principal, kit_id)
    resident = ctx.resident(body.resident_id, action="update", change="kit_session", kit_id=kit_id)
    if resident["site_id"] != kit["site_id"]:
        raise HTTPException(status.HTTP_409_CONFLICT, "the resident does not live in the kit's home")
    if resident["monitoring"] in ("discharged", "deceased"):
        raise HTTPException(status.HTTP_409_CONFLICT, f"resident is {resident['monitoring']}: not monitored")
    at = _when(ctx, body.at)
    try:
        started = kit_sessions.start_session(ctx.conn, kit_id=kit_id, site_id=kit["site_id"],
                                             resident_id=body.resident_id, by=ctx.principal.username, at=at,
                                             replace=body.replace)
    except kit_sessions.SessionConflict as exc:
        s = exc.open_session
        raise HTTPException(status.HTTP_409_CONFLICT, (
            f"{kit['name']} is in use: measuring {s['resident_name']} since {s['started_at']:%H:%M} UTC "
            f"(started by {s['started_by']}). End that session first, or start again with replace.")) from None
    except kit_sessions.SessionRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    session = started.session
    swept = store.sweep_into_session(ctx.conn, session, max(at, _now(ctx)) + MAX_FUTURE, by=ctx.principal.username)
    ctx.note("create", "kit_session", session["session_id"], kit_id=kit_id, resident_id=body.resident_id,
             ended=started.ended["session_id"] if started.ended else None, swept=len(swept.readings))
    if started.ended is not None:
        ctx.note("update", "kit_session", started.ended["session_id"], change="ended",
                 reason=started.ended["end_reason"])
    row = scope.load_kit_session(ctx.conn, ctx.principal, session["session_id"])
    ended = None
    if started.ended is not None:
        ended = {**started.ended, "resident_name": started.ended["resident_id"]}
    return _session_out(ctx, row, ended)


@router.get("/kit-sessions/{session_id}", response_model=SessionOut,
            summary="A measurement session: banner, live values from the kit, questions, claimable readings")
def get_session(ctx: Context, session_id: int) -> SessionOut:
    """Polled by the tablet (about once a second) while the form is open: the kit's values appear here as soon
    as ingest stores them, each with its device and time."""
    ctx.require(Permission.USE_KIT)
    ctx.note("read", "kit_session", session_id)
    row = scope.load_kit_session(ctx.conn, ctx.principal, session_id)
    if row["ended_at"] is None and _close_idle(ctx, [row["kit_id"]]):
        row = scope.load_kit_session(ctx.conn, ctx.principal, session_id)
    return _session_out(ctx, row)


@router.post("/kit-sessions/{session_id}/claim", response_model=SessionOut,
             summary="Claim the kit's unassigned readings taken up to 5 minutes before this session started")
def claim_readings(ctx: Context, session_id: int, body: ClaimIn) -> SessionOut:
    """One tap: the carer measured first and chose the resident after. Only readings of this session's kit, not
    yet assigned, measured in the 5 minutes before it started; each claim is audited and kept in the history."""
    ctx.require(Permission.USE_KIT)
    ctx.note("update", "kit_session", session_id, change="claim", readings=[r.model_dump() for r in body.readings])
    row = scope.load_kit_session(ctx.conn, ctx.principal, session_id)
    if row["ended_at"] is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "this session has ended: start a new one to claim readings")
    kit_sessions.lock_kits(ctx.conn, [row["kit_id"]])
    allowed = {(r.gateway_id, r.seq) for r in _kit_readings(
        ctx, {"kit_id": row["kit_id"], "name": row["kit_name"], "site_id": row["site_id"]},
        row["started_at"] - CLAIM_WINDOW, row["started_at"])}
    wanted = {(r.gateway_id, r.seq) for r in body.readings} or allowed
    refused = wanted - allowed
    if refused:
        raise HTTPException(status.HTTP_409_CONFLICT, (
            f"{len(refused)} of these readings cannot be claimed: only {row['kit_name']}'s unassigned readings "
            "from the 5 minutes before this session started can"))
    done = store.reassign_readings(ctx.conn, sorted(wanted), to_subject=row["resident_id"], session_id=session_id,
                                   kind="claim", by=ctx.principal.username, reason="claimed on the tablet")
    ctx.note("update", "resident", row["resident_id"], change="readings_claimed", session_id=session_id,
             readings=[[r["gateway_id"], r["seq"]] for r in done.readings])
    if done.readings:
        kit_sessions.note_readings(ctx.conn, {session_id: max(r["measured_at"] for r in done.readings)})
    return _session_out(ctx, scope.load_kit_session(ctx.conn, ctx.principal, session_id))


@router.post("/kit-sessions/{session_id}/end", response_model=SessionOut, summary="End a measurement session")
def end_session(ctx: Context, session_id: int, body: SessionEndIn) -> SessionOut:
    ctx.require(Permission.USE_KIT)
    ctx.note("update", "kit_session", session_id, change="ended", reason=body.reason)
    row = scope.load_kit_session(ctx.conn, ctx.principal, session_id)
    if row["ended_at"] is None:
        kit_sessions.lock_kits(ctx.conn, [row["kit_id"]])
        kit_sessions.end_session(ctx.conn, session_id, by=ctx.principal.username, at=_when(ctx, body.at),
                                 reason=body.reason)
        row = scope.load_kit_session(ctx.conn, ctx.principal, session_id)
    return _session_out(ctx, row)


@router.get("/kits/{kit_id}/unassigned", response_model=list[KitReading],
            summary="The kit's readings no session covered (last 12 hours), newest first")
def unassigned(ctx: Context, kit_id: str,
               hours: Annotated[int, Query(ge=1, le=48, description="How far back.")] = 12) -> list[KitReading]:
    ctx.require(Permission.USE_KIT)
    ctx.note("read", "kit", kit_id, view="unassigned")
    kit = scope.load_kit(ctx.conn, ctx.principal, kit_id)
    now = _now(ctx)
    return _kit_readings(ctx, kit, now - timedelta(hours=hours), now + MAX_FUTURE)


@router.get("/kits/{kit_id}/readings", response_model=list[KitReadingRecent],
            summary="What the kit measured recently and whom each reading went to (to put one right)")
def recent_kit_readings(ctx: Context, kit_id: str,
                        minutes: Annotated[int, Query(ge=1, le=24 * 60, description="How far back.")] = 60,
                        ) -> list[KitReadingRecent]:
    ctx.require(Permission.USE_KIT)
    ctx.note("read", "kit", kit_id, view="readings")
    kit = scope.load_kit(ctx.conn, ctx.principal, kit_id)
    now = _now(ctx)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT r.gateway_id, r.seq, r.device_id, r.metric, r.value, r.measured_at, r.stored_at,
                      res.resident_id, res.display_name AS resident_name
               FROM readings r JOIN devices d ON d.device_id = r.device_id
               LEFT JOIN residents res ON r.subject_kind = 'resident' AND res.resident_id = r.subject_id
               WHERE d.kit_id = %s AND r.stored_at >= %s AND r.metric <> 'battery'
               ORDER BY r.measured_at DESC, r.seq DESC LIMIT 200""",
            (kit_id, now - timedelta(minutes=minutes))).fetchall()
    ctx.note("read", "resident", None, ids=sorted({r["resident_id"] for r in rows if r["resident_id"]}),
             via="kit_readings")
    return [KitReadingRecent(
        gateway_id=r["gateway_id"], seq=r["seq"], device_id=r["device_id"], metric=r["metric"], value=r["value"],
        unit=METRICS[r["metric"]].unit, measured_at=r["measured_at"],
        words=(_words(kit["name"], r["measured_at"]) if r["resident_id"] is None else
               f"reading from {kit['name']} at {r['measured_at'].astimezone(LOCAL_TZ):%H:%M}, "
               f"on {r['resident_name']}"),
        resident_id=r["resident_id"], resident_name=r["resident_name"],
        movable=now - r["stored_at"] <= MOVE_WINDOW) for r in rows]


@router.post("/readings/move", response_model=MoveOut,
             summary="Move a shared kit's reading (and the rest of its measurement) to the right resident")
def move_reading(ctx: Context, body: MoveIn) -> MoveOut:
    """Within an hour of being stored, a kit reading put on the wrong resident (or not yet assigned) can be moved
    to the right one of the same home. The whole measurement moves together (an oximeter's SpO2, pulse and
    perfusion taken at one instant). The device-round scores built from it are withdrawn and both residents
    are scored again, so alerts follow the readings. Audited on both residents."""
    ctx.require(Permission.MOVE_READING)
    ctx.note("update", "reading", f"{body.gateway_id}:{body.seq}", change="move", to=body.to_resident_id)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        reading = cur.execute(
            f"""SELECT r.*, d.kit_id FROM readings r JOIN devices d ON d.device_id = r.device_id
                LEFT JOIN kits k ON k.kit_id = d.kit_id
                WHERE r.gateway_id = %(g)s AND r.seq = %(s)s
                  AND {scope.kit_site_predicate(ctx.principal, 'r.site_id')}
                  AND coalesce(k.practice, false) = %(scope_practice_mode)s""",
            {**ctx.params, "g": body.gateway_id, "s": body.seq}).fetchone()
    if reading is None:
        raise scope.not_found("reading")
    if reading["kit_id"] is None:
        raise HTTPException(status.HTTP_409_CONFLICT, (
            "this reading comes from a device bound to one person or room, not a shared kit: change the "
            "device's binding instead"))
    now = _now(ctx)
    if now - reading["stored_at"] > MOVE_WINDOW:
        raise HTTPException(status.HTTP_409_CONFLICT, (
            "readings can be moved for an hour after they arrive; this one is older: ask a manager to record a "
            "correction in the resident's notes"))
    target = ctx.resident(body.to_resident_id, action="update", change="reading_moved_in",
                          reading=f"{body.gateway_id}:{body.seq}")
    if target["site_id"] != reading["site_id"]:
        raise HTTPException(status.HTTP_409_CONFLICT, "the resident does not live in the home this reading came from")
    old, old_kind = reading["subject_id"], reading["subject_kind"]
    # a resident's reading, or the kit's own (not yet assigned): never by what the id looks like (issue 13)
    from_resident = old if old_kind == SubjectKind.RESIDENT else None
    kit_sessions.lock_kits(ctx.conn, [reading["kit_id"]])
    siblings = ctx.conn.execute(
        "SELECT gateway_id, seq FROM readings WHERE device_id = %s AND measured_at = %s AND subject_kind = %s "
        "AND subject_id = %s", (reading["device_id"], reading["measured_at"], old_kind, old)).fetchall()
    target_session = ctx.conn.execute(
        "SELECT session_id FROM kit_sessions WHERE kit_id = %s AND resident_id = %s AND ended_at IS NULL",
        (reading["kit_id"], body.to_resident_id)).fetchone()
    done = store.reassign_readings(ctx.conn, [(g, q) for g, q in siblings], to_subject=body.to_resident_id,
                                   session_id=target_session[0] if target_session else None, kind="move",
                                   by=ctx.principal.username, reason=body.reason)
    data_clock = ctx.request.app.state.settings.clock == "data"
    as_of = reading["measured_at"] if data_clock else now
    if from_resident is not None:
        ctx.note("update", "resident", from_resident, change="reading_moved_out", to=body.to_resident_id,
                 readings=[[r["gateway_id"], r["seq"]] for r in done.readings])
        withdraw_device_values(ctx.conn, from_resident, [(reading["device_id"], reading["measured_at"])], as_of)
    evaluated = _rescore(ctx, [s for s in (from_resident, body.to_resident_id) if s], as_of)
    return MoveOut(moved=len(done.readings), from_subject_kind=old_kind, from_resident_id=from_resident,
                   to_resident_id=body.to_resident_id,
                   readings=[ReadingRef(gateway_id=r["gateway_id"], seq=r["seq"]) for r in done.readings],
                   alerts_evaluated=evaluated)


# ------------------------------------------------------------------------------------------------------------
# Practice mode (training new staff): docs/kits.md "Practice mode", H-KIT-07
# ------------------------------------------------------------------------------------------------------------
class PracticeOut(BaseModel):
    resident_id: str
    site_id: str
    display_name: str
    date_of_birth: date
    condition: Literal["well", "deteriorating"]
    kit_id: str
    practice: bool = True


class PracticeConditionIn(_In):
    condition: Literal["well", "deteriorating"] = Field(
        description="'deteriorating': the simulator makes the practice resident's vitals worrying (NEWS2 high).")


def _practice_home(ctx: Ctx, site_id: str) -> dict[str, Any]:
    """The caller's care home (404 outside their tenancy), its practice resident and kit made the first time."""
    ctx.require(Permission.USE_KIT)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        site = cur.execute(f"""SELECT s.* FROM sites s
                                WHERE s.site_id = %(id)s AND {scope.kit_site_predicate(ctx.principal, 's.site_id')}""",
                           {**ctx.params, "id": site_id}).fetchone()
    if site is None:
        raise scope.not_found("site")
    if site["kind"] != "care_home":
        raise HTTPException(status.HTTP_409_CONFLICT, "practice mode is for care homes")
    try:
        return kit_sessions.ensure_practice(ctx.conn, site_id)
    except kit_sessions.SessionRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.post("/sites/{site_id}/practice", response_model=PracticeOut,
             summary="Practice mode: the home's practice resident and practice kit (made the first time)")
def practice(ctx: Context, site_id: str) -> PracticeOut:
    """A new carer trains on the practice resident, measured with the practice kit whose devices the simulator
    drives. Everything about it is shown only to a tablet in practice mode (``X-Carewatch-Practice: 1``): no real
    list, export, report, adoption figure or notification includes it."""
    row = _practice_home(ctx, site_id)
    ctx.note("read", "resident", row["resident_id"], view="practice")
    return PracticeOut(**row)


@router.put("/sites/{site_id}/practice", response_model=PracticeOut,
            summary="Practice mode: ask the practice resident to deteriorate (or to be well again)")
def practice_condition(ctx: Context, site_id: str, body: PracticeConditionIn) -> PracticeOut:
    """The simulator makes the practice resident's next kit readings worrying (NEWS2 high) or normal again."""
    row = _practice_home(ctx, site_id)
    ctx.note("update", "resident", row["resident_id"], change="practice_condition", condition=body.condition)
    kit_sessions.set_practice_condition(ctx.conn, row["resident_id"], body.condition)
    return PracticeOut(**{**row, "condition": body.condition})
