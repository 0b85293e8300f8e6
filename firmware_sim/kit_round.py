"""Simulated carers walking their round with a home's shared kit, driving measurement sessions through the API
exactly as the tablet does, and making the mistakes real carers make (issue 17).

:class:`KitRounds` reads the world's event stream and, for every resident measured with a shared kit, adds the
tablet actions of the carer holding it (:class:`TabletAction`): choose the resident (a session starts), measure,
save. Now and then the carer

* forgets to start a session (noticed a minute later: starts it and claims the readings with one tap; noticed only
  after the 5-minute claim window: moves each unassigned measurement to the resident, within the hour, as staff put
  a reading right; or never noticed: the readings stay unassigned);
* measures before choosing the resident (the first readings wait unassigned and are claimed);
* chooses the wrong resident, notices, chooses the right one and moves the readings over.

The ground truth (:attr:`KitRounds.truth`) says whom every kit reading really belongs to. :class:`TabletCarer`
performs the actions against the API (``POST /kits/{kit}/sessions`` and friends, with the simulated time as
``at``: the platform runs on a data clock); :func:`write_history_sessions` writes the correct sessions of a
history period straight through the sessions' writer module, for backfills.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any

import httpx
import numpy as np

from carewatch.firmware_sim.devices import ID_PREFIX, kit_id_for
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import VitalSample
from carewatch.firmware_sim.wire_output import event_source
from carewatch.wire import DeviceKind

log = logging.getLogger(__name__)

#: The carer picks the resident this long before measuring, and saves this long after the last reading.
LEAD = timedelta(seconds=20)
TAG_KIT_ROUND = 0x4B17


class Mistake(StrEnum):
    NONE = "none"
    FORGOT = "forgot_session"  # no session: noticed a minute later (claim), later still (move), or never
    LATE = "measured_before_choosing"  # the first readings come before the session
    WRONG = "wrong_resident"  # chose someone else, noticed, chose the right one and moved the readings


@dataclass(frozen=True)
class KitRoundOptions:
    forgot: float = 0.02
    forgot_noticed: float = 0.7
    #: of the forgotten sessions not noticed at once, the share noticed later (after the claim window, within the
    #: hour): the carer moves the kit's unassigned readings to the resident they measured (``POST /readings/move``)
    forgot_noticed_late: float = 0.6
    late: float = 0.05
    wrong: float = 0.03


@dataclass(frozen=True)
class TabletAction:
    """One thing the carer does on the tablet, at simulated time ``at``."""

    at: datetime
    site_id: str
    kit_id: str
    kind: str  # 'start' | 'save' | 'claim' | 'correct' | 'claim_late'
    resident_id: str  # the resident chosen (start, claim), or the right one (correct, claim_late)
    wrong_resident_id: str | None = None  # correct: whom the readings went to
    expect: int = 0  # claim, claim_late: how many readings the carer sees waiting
    since: datetime | None = None  # claim: when the carer began measuring this resident (earlier ones are not theirs)
    until: datetime | None = None  # claim_late: when the carer finished measuring them (later ones are not theirs)


@dataclass(frozen=True)
class TruthRow:
    """Whom one kit reading really belongs to."""

    device_id: str
    metric: str
    measured_at: datetime
    resident_id: str
    mistake: str


@dataclass
class _Round:
    """One resident's measurements with the kit at one observation round (as the world drew them)."""

    kit_id: str
    site_id: str
    resident_id: str
    first: datetime
    samples: list[VitalSample] = field(default_factory=list)


def kit_event_source(shared_sites: Collection[str]) -> Callable[[VitalSample | SensorEvent], tuple[str, str, Any]]:
    """``event_source`` for a world whose homes in ``shared_sites`` measure with shared kits."""
    shared = set(shared_sites)

    def source(event: VitalSample | SensorEvent) -> tuple[str, str, Any]:
        if isinstance(event, VitalSample) and event.site_id in shared:
            kit_id = kit_id_for(event.site_id, event.device)
            return event.site_id, f"{ID_PREFIX[event.device_kind]}-{kit_id}", event.device_kind
        return event_source(event)

    return source


#: A resident's measurements at one round are those within this long of their first (the world's round window).
ROUND_WINDOW = timedelta(minutes=30)
#: One kit measures one resident at a time: a measurement every this long, the next resident after a pause.
MEASURE_EVERY = timedelta(seconds=45)
NEXT_RESIDENT_AFTER = timedelta(seconds=30)
#: A carer who forgot the session and did not notice at once notices this long after finishing: past the 5-minute
#: claim window (``ingest/attribution.py`` CLAIM_WINDOW), within the hour a reading may be moved (MOVE_WINDOW).
LATE_NOTICE = timedelta(minutes=15)


class KitRounds:
    """Adds the carers' tablet actions to a world's event stream and keeps the ground truth of kit readings.

    The world draws each resident's measurement times on its own; with one kit a carer measures one resident at
    a time, so each resident's round is laid out on their kit in turn (in the order the world's rounds begin, a
    measurement every 45 s, the next resident after the previous one is saved). Events come out in time order,
    up to 30 simulated minutes after the world produced them.
    """

    def __init__(self, world: Any, shared_sites: Collection[str], *, seed: int = 0,
                 options: KitRoundOptions | None = None, mistakes: bool = True) -> None:
        self.world = world
        self.shared = set(shared_sites)
        self.options = options or KitRoundOptions()
        self.mistakes_on = mistakes
        self.rng = np.random.default_rng([seed, TAG_KIT_ROUND])
        # a stream of its own, so that whether a carer notices late leaves every other draw (and run) as it was
        self.late_rng = np.random.default_rng([seed, TAG_KIT_ROUND, 1])
        self.truth: list[TruthRow] = []
        self.mistakes: Counter[str] = Counter()
        self._neighbours = {s: [r.id for r in world.residents if r.site_id == s] for s in self.shared}
        self._source = kit_event_source(self.shared)
        self._kit_free: dict[str, datetime] = {}

    def _mistake(self) -> Mistake:
        if not self.mistakes_on:
            return Mistake.NONE
        o = self.options
        roll = float(self.rng.random())
        for mistake, p in ((Mistake.FORGOT, o.forgot), (Mistake.LATE, o.late), (Mistake.WRONG, o.wrong)):
            if roll < p:
                return mistake
            roll -= p
        return Mistake.NONE

    def _wrong_resident(self, site_id: str, resident_id: str) -> str:
        others = [r for r in self._neighbours[site_id] if r != resident_id]
        return others[int(self.rng.integers(len(others)))] if others else resident_id

    def wrap(self, events: Iterable[Any]) -> Iterator[Any]:
        """The events, the kit readings laid out one resident at a time, and the carers' tablet actions."""
        out: list[tuple[datetime, int, Any]] = []
        order = 0
        rounds: dict[str, _Round] = {}  # resident -> their open round

        def emit(at: datetime, item: Any) -> None:
            nonlocal order
            order += 1
            heapq.heappush(out, (at, order, item))

        for event in events:
            now = event.at
            for rid, running in sorted(rounds.items(), key=lambda kv: kv[1].first):
                if now - running.first > ROUND_WINDOW:
                    self._lay_out(rounds.pop(rid), emit)
            if isinstance(event, VitalSample) and event.site_id in self.shared:
                rnd = rounds.get(event.resident_id)
                if rnd is None:
                    rnd = rounds[event.resident_id] = _Round(kit_id_for(event.site_id, event.device), event.site_id,
                                                             event.resident_id, event.at)
                rnd.samples.append(event)
            else:
                emit(event.at, event)
            while out and out[0][0] < now - ROUND_WINDOW:
                yield heapq.heappop(out)[2]
        for rnd in sorted(rounds.values(), key=lambda r: r.first):
            self._lay_out(rnd, emit)
        while out:
            yield heapq.heappop(out)[2]

    def _lay_out(self, rnd: _Round, emit: Callable[[datetime, Any], None]) -> None:
        """Place one resident's round on their kit, with the carer's actions and whatever mistake they make."""
        measurements: dict[tuple[DeviceKind, datetime], list[VitalSample]] = {}
        for sample in rnd.samples:
            measurements.setdefault((sample.device_kind, sample.at), []).append(sample)
        begin = max(rnd.first, self._kit_free.get(rnd.kit_id, rnd.first))
        mistake = self._mistake()
        self.mistakes[mistake.value] += 1
        times = [begin + LEAD + i * MEASURE_EVERY for i in range(len(measurements))]
        for at, group in zip(times, measurements.values(), strict=True):
            for sample in group:
                moved = replace(sample, at=at)
                emit(at, moved)
                _, device_id, _ = self._source(moved)
                self.truth.append(TruthRow(device_id, sample.metric.value, at, rnd.resident_id, mistake.value))
        last = times[-1]
        act = partial(TabletAction, site_id=rnd.site_id, kit_id=rnd.kit_id)
        done = last + LEAD
        if mistake is Mistake.NONE:
            emit(begin, act(at=begin, kind="start", resident_id=rnd.resident_id))
        elif mistake is Mistake.WRONG:
            wrong = self._wrong_resident(rnd.site_id, rnd.resident_id)
            emit(begin, act(at=begin, kind="start", resident_id=wrong))
            emit(done, act(at=done, kind="correct", resident_id=rnd.resident_id, wrong_resident_id=wrong))
            done += timedelta(seconds=2)
        elif mistake is Mistake.FORGOT and float(self.rng.random()) >= self.options.forgot_noticed:
            self._kit_free[rnd.kit_id] = done + NEXT_RESIDENT_AFTER
            if float(self.late_rng.random()) < self.options.forgot_noticed_late:
                # noticed after the claim window: the carer finds them on the kit's list and moves them over
                later = done + LATE_NOTICE
                emit(later, act(at=later, kind="claim_late", resident_id=rnd.resident_id, since=times[0], until=done,
                                expect=sum(len(g) for g in measurements.values())))
            return  # else never noticed: the readings stay unassigned, listed on the tablet
        else:
            start = times[len(times) // 2] - timedelta(seconds=10) if (
                mistake is Mistake.LATE and len(times) > 1) else last + timedelta(seconds=40)
            waiting = sum(len(g) for t, g in zip(times, measurements.values(), strict=True)
                          if start - timedelta(minutes=5) <= t < start)
            emit(start, act(at=start, kind="start", resident_id=rnd.resident_id))
            done = max(done, start + timedelta(seconds=2))
            emit(done - timedelta(seconds=1), act(at=done - timedelta(seconds=1), kind="claim",
                                                  resident_id=rnd.resident_id, expect=waiting, since=times[0]))
        emit(done, act(at=done, kind="save", resident_id=rnd.resident_id))
        self._kit_free[rnd.kit_id] = done + NEXT_RESIDENT_AFTER


# ------------------------------------------------------------------------------------------------------------
# The carer's tablet: the API, as the dashboard calls it
# ------------------------------------------------------------------------------------------------------------
@dataclass
class CarerCounters:
    sessions: int = 0
    saved: int = 0
    claimed: int = 0
    claimed_late: int = 0  # unassigned readings moved to the resident measured, after the claim window
    corrections: int = 0  # readings moved to the right resident
    failed: int = 0


class TabletCarer:
    """Performs :class:`TabletAction` s against the API as a care-staff member of the action's home."""

    def __init__(self, api_url: str, token_for: Callable[[str], str | None], *, wait_s: float = 5.0,
                 http: httpx.Client | None = None, forget_tokens: Callable[[], None] | None = None,
                 send_time: bool = True) -> None:
        self.token_for = token_for
        # The simulated time goes with each start and end on a simulated-time platform (data clock); a platform on
        # the wall clock (a simulation in real time) refuses it and uses its own "now", as for a real tablet.
        self.send_time = send_time
        self.forget_tokens = forget_tokens  # an access token expired: sign in again
        self.wait_s = wait_s
        self.sessions: dict[str, int] = {}  # kit -> this carer's open session
        self.counters = CarerCounters()
        self._lock = threading.Lock()
        self._http = http if http is not None else httpx.Client(base_url=api_url.rstrip("/"), timeout=20)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, site_id: str, **kwargs: Any) -> Any:
        token = self.token_for(site_id)
        if token is None:
            raise RuntimeError(f"no care-staff account for {site_id}")
        reply = self._http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        if reply.status_code == 401 and self.forget_tokens is not None:
            self.forget_tokens()
            token = self.token_for(site_id)
            reply = self._http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        reply.raise_for_status()
        return reply.json()

    def _at(self, a: TabletAction) -> dict[str, str]:
        return {"at": a.at.isoformat()} if self.send_time else {}

    def __call__(self, action: TabletAction) -> None:
        with self._lock:
            try:
                getattr(self, f"_{action.kind}")(action)
            except Exception:
                self.counters.failed += 1
                raise

    def _start(self, a: TabletAction, resident_id: str | None = None) -> int:
        s = self._call("POST", f"/kits/{a.kit_id}/sessions", a.site_id, json={
            "resident_id": resident_id or a.resident_id, "replace": True, **self._at(a)})
        self.sessions[a.kit_id] = s["session_id"]
        self.counters.sessions += 1
        return int(s["session_id"])

    def _save(self, a: TabletAction) -> None:
        session = self.sessions.pop(a.kit_id, None)
        if session is not None:
            self._call("POST", f"/kit-sessions/{session}/end", a.site_id, json={"reason": "saved", **self._at(a)})
            self.counters.saved += 1

    def _claim(self, a: TabletAction) -> None:
        """One tap on 'Yes, <name>' for the readings the tablet lists (they may still be on their way)."""
        session = self.sessions.get(a.kit_id)
        if session is None:
            return
        deadline = time.monotonic() + self.wait_s
        while True:
            listed = self._call("GET", f"/kit-sessions/{session}", a.site_id)["claimable"]
            # the tablet shows each waiting reading's time: only those since this resident's measuring began
            waiting = [r for r in listed if a.since is None or datetime.fromisoformat(r["measured_at"]) >= a.since]
            if len(waiting) >= a.expect or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if waiting:
            self._call("POST", f"/kit-sessions/{session}/claim", a.site_id, json={
                "readings": [{"gateway_id": r["gateway_id"], "seq": r["seq"]} for r in waiting]})
            self.counters.claimed += len(waiting)

    def _claim_late(self, a: TabletAction) -> None:
        """Noticed after the 5-minute claim window: on the kit's list of what it measured recently, the readings
        "not yet assigned" at the times the carer measured this resident are moved to them, one measurement at a
        time (its other values move with it), through the route staff use within the hour."""
        assert a.since is not None and a.until is not None
        deadline = time.monotonic() + self.wait_s
        while True:
            recent = self._call("GET", f"/kits/{a.kit_id}/readings", a.site_id, params={"minutes": 60})
            waiting = [r for r in recent if r["resident_id"] is None and r["movable"]
                       and a.since <= datetime.fromisoformat(r["measured_at"]) <= a.until]
            if len(waiting) >= a.expect or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        moved: set[tuple[str, str]] = set()  # (device, measured at): the rest of a measurement moves with it
        for r in sorted(waiting, key=lambda r: (r["measured_at"], r["seq"])):
            if (r["device_id"], r["measured_at"]) in moved:
                continue
            done = self._call("POST", "/readings/move", a.site_id, json={
                "gateway_id": r["gateway_id"], "seq": r["seq"], "to_resident_id": a.resident_id,
                "reason": "measured without starting a session on the tablet; noticed later"})
            moved.add((r["device_id"], r["measured_at"]))
            self.counters.claimed_late += int(done["moved"])

    def _correct(self, a: TabletAction) -> None:
        """The banner named someone else: choose the right resident, then move what the kit measured to them."""
        wrong = self.sessions.get(a.kit_id)
        self._start(a)
        if wrong is None:
            return
        deadline = time.monotonic() + self.wait_s
        while True:
            values = self._call("GET", f"/kit-sessions/{wrong}", a.site_id)["values"]
            for v in values.values():
                moved = self._call("POST", "/readings/move", a.site_id, json={
                    "gateway_id": v["gateway_id"], "seq": v["seq"], "to_resident_id": a.resident_id,
                    "reason": "measured with the wrong resident chosen on the tablet"})
                self.counters.corrections += int(moved["moved"])
            if not values and time.monotonic() > deadline:
                break
            if not values:
                time.sleep(0.3)


# ------------------------------------------------------------------------------------------------------------
# History: the sessions a backfilled period would have had
# ------------------------------------------------------------------------------------------------------------
def write_history_sessions(conn: Any, world: Any, shared_sites: Collection[str], *, start: datetime,
                           end: datetime, by: str = "simulated carer") -> int:
    """Write one correct, saved session per resident measured with a shared kit in [start, end) (no mistakes:
    the history gives residents their baselines). Returns how many."""
    from carewatch.ingest import kit_sessions

    rounds = KitRounds(world, shared_sites, mistakes=False)
    open_sessions: dict[str, int] = {}
    with conn.transaction():
        for item in rounds.wrap(world.events(start, end)):
            if not isinstance(item, TabletAction):
                continue
            if item.kind == "start":
                row = kit_sessions.start_session(conn, kit_id=item.kit_id, site_id=item.site_id,
                                                 resident_id=item.resident_id, by=by, at=item.at, replace=True)
                open_sessions[item.kit_id] = row.session["session_id"]
            elif item.kind == "save" and item.kit_id in open_sessions:
                kit_sessions.end_session(conn, open_sessions.pop(item.kit_id), by=by, at=item.at, reason="saved")
    return rounds.mistakes.total()


# ------------------------------------------------------------------------------------------------------------
# Checking attribution against the ground truth
# ------------------------------------------------------------------------------------------------------------
#: A stored reading matches a true measurement of the same device and metric this close in time (a device
#: clock the gateway replaced moves measured_at by the delivery delay only).
MATCH_WITHIN = timedelta(seconds=120)


@dataclass
class AttributionCheck:
    readings: int = 0
    attributed_right: int = 0
    attributed_wrong: int = 0
    unattributed: int = 0
    unmatched: int = 0  # a stored kit reading with no true measurement near it (should be 0)


def check_attribution(stored: Iterable[tuple[str, str, datetime, str]], truth: Iterable[TruthRow],
                      kit_subjects: Collection[str]) -> AttributionCheck:
    """Compare stored kit readings (device_id, metric, measured_at, subject_id) with the ground truth. A reading is
    matched to the true measurement of its device nearest in time (a device also sends values the world does not
    draw, such as a cuff's mean arterial pressure, with the same time as the rest of its measurement)."""
    import bisect

    index: dict[str, list[tuple[datetime, str]]] = {}
    for t in truth:
        index.setdefault(t.device_id, []).append((t.measured_at, t.resident_id))
    for rows in index.values():
        rows.sort()
    out = AttributionCheck()
    for device_id, _metric, at, subject in stored:
        out.readings += 1
        rows = index.get(device_id, [])
        i = bisect.bisect_left(rows, (at, ""))
        near = [rows[j] for j in (i - 1, i) if 0 <= j < len(rows) and abs(rows[j][0] - at) <= MATCH_WITHIN]
        if subject in kit_subjects:
            out.unattributed += 1
        elif not near:
            out.unmatched += 1
        elif subject == min(near, key=lambda r: abs(r[0] - at))[1]:
            out.attributed_right += 1
        else:
            out.attributed_wrong += 1
    return out
