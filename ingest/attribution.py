"""Which resident a shared kit's reading belongs to: pure rules, no I/O (issue 17, docs/kits.md).

A kit (one oximeter, thermometer and cuff shared by a home) measures whoever the carer chose on the tablet. The
tablet opens a *measurement session* for kit + resident + staff member; a kit reading belongs to the resident of
the session covering its **measurement time** (``measured_at``: the device clock, or the gateway's receive time
when that clock is unset or wrong, as the gateway already substitutes). Late store-and-forward readings are
attributed the same way, whenever they arrive. Never guess:

* a reading no session covers stays unassigned (its subject is the kit) until a session started within
  :data:`CLAIM_WINDOW` after it claims it, with one tap, or staff move it;
* a kit has at most one open session, and sessions of one kit never overlap, so at most one session covers any
  instant and a reading is never attributed to two residents;
* a session ends when saved, when another resident is chosen, or after :data:`IDLE` without readings.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from carewatch.wire import Metric

#: A session with no readings for this long is over (the carer has moved on without saving).
IDLE = timedelta(minutes=10)
#: A session started this long after an unassigned kit reading may claim it.
CLAIM_WINDOW = timedelta(minutes=5)
#: Staff may move a reading to the right resident this long after it was stored.
MOVE_WINDOW = timedelta(hours=1)


@dataclass
class SessionWindow:
    """One measurement session as attribution sees it."""

    session_id: int
    kit_id: str
    resident_id: str
    started_at: datetime
    ended_at: datetime | None = None
    last_reading_at: datetime | None = None

    @property
    def end(self) -> datetime:
        """Exclusive end: when it was ended, else 10 minutes after its newest reading (or its start)."""
        if self.ended_at is not None:
            return self.ended_at
        return max(self.started_at, self.last_reading_at or self.started_at) + IDLE

    def covers(self, at: datetime) -> bool:
        return self.started_at <= at < self.end


#: Device clocks count whole seconds: a reading stamped at a whole second was measured somewhere in that second.
CLOCK_RESOLUTION = timedelta(seconds=1)


def covering(sessions: Sequence[SessionWindow], at: datetime) -> SessionWindow | None:
    """The session of one kit (sorted by start, never overlapping) that covers ``at``; None when none does, and
    None when ``at`` is a whole-second stamp and the kit switched to another session inside that second: it was
    measured before or after the switch, and the device clock cannot tell which (never guess: it stays
    unassigned, and the new session may claim it with one tap)."""
    starts = [s.started_at for s in sessions]
    i = bisect.bisect_right(starts, at) - 1
    if i < 0 or not sessions[i].covers(at):
        return None
    if at.microsecond == 0 and i + 1 < len(sessions) and at < sessions[i + 1].started_at < at + CLOCK_RESOLUTION:
        return None
    return sessions[i]


def attribute(readings: Iterable[tuple[str, datetime]], sessions: Mapping[str, Sequence[SessionWindow]]
              ) -> list[SessionWindow | None]:
    """For each (kit_id, measured_at), the session it belongs to (None: unassigned).

    Readings are taken in measurement order, so one attributed reading keeps its session open for the next
    (the idle timer counts from the newest reading); ``last_reading_at`` of the sessions is advanced in place.
    """
    items = list(readings)
    out: list[SessionWindow | None] = [None] * len(items)
    for index in sorted(range(len(items)), key=lambda i: items[i][1]):
        kit_id, at = items[index]
        session = covering(sessions.get(kit_id, ()), at)
        if session is not None:
            out[index] = session
            if session.ended_at is None and (session.last_reading_at is None or at > session.last_reading_at):
                session.last_reading_at = at
    return out


def claimable(started_at: datetime, measured_at: datetime) -> bool:
    """May a session started at ``started_at`` claim an unassigned reading measured at ``measured_at``?"""
    return started_at - CLAIM_WINDOW <= measured_at < started_at


# ------------------------------------------------------------------------------------------------------------
# Wrong-resident check: a value implausibly far from this resident's own usual asks "Is this <name>?"
# ------------------------------------------------------------------------------------------------------------
#: How far from the resident's usual value (median of their own recent readings) makes the carer confirm who
#: they are measuring. Wide on purpose: an ill resident's values move, and the question costs one tap.
IDENTITY_DISTANCE: dict[str, float] = {
    Metric.SPO2.value: 10.0,
    Metric.PULSE_RATE.value: 40.0,
    Metric.SYSTOLIC_BP.value: 50.0,
    Metric.TEMPERATURE.value: 2.0,
}
#: Fewer of the resident's own readings than this: no usual value, no question.
IDENTITY_MIN_HISTORY = 5


@dataclass(frozen=True)
class IdentityDoubt:
    metric: str
    value: float
    usual: float

    def words(self, name: str, unit: str) -> str:
        direction = "below" if self.value < self.usual else "above"
        return (f"Is this {name}? {self.metric.replace('_', ' ')} {self.value:g} {unit} is "
                f"{abs(self.value - self.usual):g} {direction} their usual {self.usual:g} {unit}.")


def identity_doubts(values: Mapping[str, float], usual: Mapping[str, float]) -> list[IdentityDoubt]:
    """The values implausibly far from this resident's usual ones (metrics without a usual value are skipped)."""
    out = []
    for metric, value in sorted(values.items()):
        limit = IDENTITY_DISTANCE.get(metric)
        base = usual.get(metric)
        if limit is not None and base is not None and abs(value - base) >= limit:
            out.append(IdentityDoubt(metric, value, round(base, 1)))
    return out
