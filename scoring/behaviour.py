"""Home sensors -> behaviour events -> welfare rules, for people living at home.

Motion, door and power sensors are bound to rooms with ``devices.role`` (or ``devices.room``). Their binary
readings become *episodes* (a run of "on" readings no more than a merge gap apart, ended by the next "off"),
and episodes become behaviour events: bathroom visits, kitchen activity, fridge opens, kettle use, front-door
exits/returns and night activity. The rules compare them with the person's own pattern.

All functions are pure; times are timezone-aware datetimes, "night" and "waking hours" are UK local time.
docs/clinical-safety.md (H-HOME-*) gives the hazard, cause, mitigation and test of every threshold here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from carewatch.alerts import AlertKind, Severity
from carewatch.scoring.rules import (
    LOCAL_TZ,
    Finding,
    clear_alert,
    hold,
    iso,
    local_time,
    raise_alert,
)
from carewatch.wire import Metric

# ------------------------------------------------------------------------------------------------------------
# Rooms and roles
# ------------------------------------------------------------------------------------------------------------
#: Role keywords (matched against devices.role, then devices.room, lower-case).
ROLE_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "bathroom": ("bath", "toilet", "wc", "ensuite", "shower"),
    "fridge": ("fridge",),
    "kettle": ("kettle",),
    "kitchen": ("kitchen",),
    "front_door": ("front", "entrance", "main_door"),
    "bedroom": ("bed",),
}
MOTION_METRICS = frozenset({Metric.MOTION.value, Metric.OCCUPANCY.value})
DOOR_METRICS = frozenset({Metric.DOOR_OPEN.value})
POWER_METRICS = frozenset({Metric.POWER.value, Metric.POWER_ON.value})
KETTLE_ON_WATTS: Final = 500.0


def role_of(role: str | None, room: str | None) -> str | None:
    """The behaviour role of a device: bathroom, fridge, kettle, kitchen, front_door, bedroom, or None."""
    for text in (role, room):
        if not text:
            continue
        lowered = text.lower()
        if lowered in ("door", "front_door"):
            return "front_door"
        for name, words in ROLE_KEYWORDS.items():  # order matters: 'fridge' before 'kitchen'
            if any(w in lowered for w in words):
                return name
    return None


@dataclass(frozen=True)
class SensorReading:
    device_id: str
    role: str | None  # behaviour role (role_of), or None for an unspecified room
    metric: str
    value: float
    measured_at: datetime
    room: str | None = None

    @property
    def is_on(self) -> bool:
        if self.metric == Metric.POWER.value:
            return self.value >= KETTLE_ON_WATTS
        return self.value >= 0.5


@dataclass(frozen=True)
class BehaviourEvent:
    kind: str  # bathroom_visit | kitchen_activity | fridge_open | kettle_use | front_door | night_activity
    started_at: datetime
    ended_at: datetime
    device_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def _epoch(ts: Iterable[datetime]) -> NDArray[np.float64]:
    return np.fromiter((t.timestamp() for t in ts), dtype=np.float64)


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)


def episodes(times: NDArray[np.float64], on: NDArray[np.bool_], merge_gap: float) -> list[tuple[float, float]]:
    """(start, end) of each run of "on" readings no more than ``merge_gap`` s apart; a run ends at the first
    "off" reading after its last "on" (if that comes before the next run), else at its last "on"."""
    order = np.argsort(times, kind="stable")
    t, o = times[order], on[order]
    on_t, off_t = t[o], t[~o]
    if on_t.size == 0:
        return []
    split = np.flatnonzero(np.diff(on_t) > merge_gap) + 1
    starts = on_t[np.r_[0, split]]
    last_on = on_t[np.r_[split - 1, on_t.size - 1]]
    next_start = np.r_[starts[1:], np.inf]
    idx = np.searchsorted(off_t, last_on, side="right")
    padded_off = np.r_[off_t, np.inf]  # idx == off_t.size: no "off" after the run
    off_after = padded_off[idx]
    ends = np.where(off_after < next_start, off_after, last_on)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def on_seconds(times: NDArray[np.float64], on: NDArray[np.bool_], start: float, end: float) -> float:
    """Seconds within [start, end] that a motion sensor reported "on" (from each "on" to the next "off"; an
    "on" with no "off" before ``end`` counts to ``end``)."""
    order = np.argsort(times, kind="stable")
    total, since = 0.0, None
    for t, is_on in zip(times[order].tolist(), on[order].tolist(), strict=True):
        if is_on and since is None:
            since = t
        elif not is_on and since is not None:
            total += max(0.0, min(t, end) - max(since, start))
            since = None
    if since is not None:
        total += max(0.0, end - max(since, start))
    return total


def _on_intervals(times: NDArray[np.float64], on: NDArray[np.bool_]) -> tuple[list[float], list[float]]:
    """(starts, ends) of each spell a motion sensor reported "on", as ``on_seconds`` walks them: from an "on"
    that follows an "off" (or opens the series) to the next "off" (an unclosed last spell ends at infinity)."""
    order = np.argsort(times, kind="stable")
    t, o = times[order], on[order]
    before = np.r_[False, o[:-1]]
    starts = t[o & ~before].tolist()
    ends = t[~o & before].tolist()
    if len(ends) < len(starts):
        ends.append(float("inf"))
    return starts, ends


def on_seconds_each(times: NDArray[np.float64], on: NDArray[np.bool_],
                    windows: Sequence[tuple[float, float]]) -> list[float]:
    """``on_seconds(times, on, start, end)`` for each (start, end) of ``windows``, summing the same terms in the same
    order (a spell outside a window adds exactly 0.0 there, so only the spells it overlaps are visited): one
    sort of the readings for all of a device's episodes instead of one walk over them per episode."""
    starts, ends = _on_intervals(times, on)
    s_arr, e_arr = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    out = []
    for start, end in windows:
        lo = int(np.searchsorted(e_arr, start, side="right"))
        hi = int(np.searchsorted(s_arr, end, side="left"))
        total = 0.0
        for k in range(lo, hi):
            total += max(0.0, min(ends[k], end) - max(starts[k], start))
        out.append(total)
    return out


#: A bedroom PIR also sees a sleeper turn over: a bedroom episode counts as someone being up (awake and restless)
#: only when it lasts at least BEDROOM_UP_MINUTES with the motion "on" for at least BEDROOM_UP_ON_SHARE of it;
#: a sleeper's movements are brief blips minutes apart. Any other room (bar the bathroom trip) always counts.
#: Chosen on the simulator's sleepers (H-HOME-07): it removes ~97 % of sleep-motion episodes and keeps ~60 % of
#: wakeful spells in bed, all wakeful spells out of bed.
BEDROOM_UP_MINUTES: Final = 15.0
BEDROOM_UP_ON_SHARE: Final = 0.5


def someone_up(role: str | None, duration_s: float, on_s: float) -> bool:
    """Whether a night-time motion episode shows someone up (see BEDROOM_UP_MINUTES)."""
    if role != "bedroom":
        return True
    return duration_s >= BEDROOM_UP_MINUTES * 60 and on_s >= BEDROOM_UP_ON_SHARE * duration_s


# ------------------------------------------------------------------------------------------------------------
# Local time helpers
# ------------------------------------------------------------------------------------------------------------
NIGHT_START: Final = time(0, 0)
NIGHT_END: Final = time(6, 0)
WAKING_START: Final = time(7, 0)
WAKING_END: Final = time(22, 0)
EARLIEST_WAKE: Final = time(5, 0)


def local_at(day: date, at: time) -> datetime:
    return datetime.combine(day, at, tzinfo=LOCAL_TZ)


def night_of(at: datetime) -> date | None:
    """The date whose 00:00-06:00 night contains ``at``, or None if ``at`` is not at night."""
    local = at.astimezone(LOCAL_TZ)
    return local.date() if NIGHT_START <= local.time() < NIGHT_END else None


def last_complete_night(now: datetime) -> date:
    local = now.astimezone(LOCAL_TZ)
    return local.date() if local.time() >= NIGHT_END else local.date() - timedelta(days=1)


def waking_hours_between(start: datetime, end: datetime) -> float:
    """Hours between ``start`` and ``end`` that fall in waking hours (07:00-22:00 local)."""
    if end <= start:
        return 0.0
    total = 0.0
    day = start.astimezone(LOCAL_TZ).date()
    last = end.astimezone(LOCAL_TZ).date()
    while day <= last:
        lo = max(start, local_at(day, WAKING_START))
        hi = min(end, local_at(day, WAKING_END))
        if hi > lo:
            total += (hi - lo).total_seconds() / 3600
        day += timedelta(days=1)
    return total


# ------------------------------------------------------------------------------------------------------------
# Readings -> behaviour events
# ------------------------------------------------------------------------------------------------------------
#: (event kind, device role, metrics, merge gap)
EVENT_SOURCES: tuple[tuple[str, str, frozenset[str], timedelta], ...] = (
    ("bathroom_visit", "bathroom", MOTION_METRICS | DOOR_METRICS, timedelta(minutes=10)),
    ("kitchen_activity", "kitchen", MOTION_METRICS, timedelta(minutes=15)),
    ("fridge_open", "fridge", DOOR_METRICS, timedelta(minutes=2)),
    ("kettle_use", "kettle", POWER_METRICS, timedelta(minutes=5)),
    ("front_door", "front_door", DOOR_METRICS, timedelta(minutes=2)),
)
KITCHEN_KINDS = frozenset({"kitchen_activity", "fridge_open", "kettle_use"})
NIGHT_MERGE_GAP = timedelta(minutes=15)
#: Indoor motion within this time of a front-door opening tells exit from return; night motion within it of a
#: bathroom visit is part of the trip to the bathroom.
DOOR_CONTEXT = timedelta(minutes=15)
BATHROOM_TRIP_MARGIN = timedelta(minutes=10)


def derive_events(readings: Sequence[SensorReading], now: datetime) -> list[BehaviourEvent]:
    """Behaviour events from a household's sensor readings (idempotent: same readings, same events)."""
    roles: dict[str, str | None] = {}
    for r in readings:
        roles.setdefault(r.device_id, r.role)  # a device's role: its first reading's
    return derive_events_from_columns([r.device_id for r in readings], [r.metric for r in readings],
                                      np.array([r.value for r in readings], dtype=np.float64),
                                      _epoch(r.measured_at for r in readings), roles, now)


_METRIC_CODES: Final = {m.value: i for i, m in enumerate(Metric)}


def _codes(metrics: Iterable[str]) -> list[int]:
    return [_METRIC_CODES[m] for m in metrics if m in _METRIC_CODES]


def derive_events_from_columns(device_ids: Sequence[str], metrics: Sequence[str], values: NDArray[np.float64],
                               times: NDArray[np.float64], roles: Mapping[str, str | None],
                               now: datetime) -> list[BehaviourEvent]:
    """``derive_events`` on a household's readings as columns (what the scorer reads: device, metric, value and
    measured time in epoch seconds, in the same order; ``roles``: each device's behaviour role), without a
    ``SensorReading`` per reading: the same events in the same order."""
    events: list[BehaviourEvent] = []
    order = list(dict.fromkeys(device_ids))  # devices in the order they first appear
    index = {d: i for i, d in enumerate(order)}
    device = np.fromiter((index[d] for d in device_ids), dtype=np.int64, count=len(device_ids))
    metric = np.fromiter((_METRIC_CODES.get(m, -1) for m in metrics), dtype=np.int64, count=len(metrics))
    on = np.where(metric == _METRIC_CODES[Metric.POWER.value], values >= KETTLE_ON_WATTS, values >= 0.5)
    motion_metrics = np.isin(metric, _codes(MOTION_METRICS))
    # indoor motion episodes: start, end, device, role, seconds the motion was "on" within the episode
    motion_eps: list[tuple[float, float, str, str | None, float]] = []
    for k, device_id in enumerate(order):
        mine = device == k
        role = roles.get(device_id)
        for kind, want_role, wanted, gap in EVENT_SOURCES:
            if role != want_role:
                continue
            sel = mine & np.isin(metric, _codes(wanted))
            if not sel.any():
                continue
            for start, end in episodes(times[sel], on[sel], gap.total_seconds()):
                events.append(BehaviourEvent(kind, _dt(start), _dt(end), device_id, {"role": role}))
        sel = mine & motion_metrics
        if sel.any():
            t, o = times[sel], on[sel]
            spans = episodes(t, o, NIGHT_MERGE_GAP.total_seconds())
            for (start, end), on_s in zip(spans, on_seconds_each(t, o, spans), strict=True):
                motion_eps.append((start, end, device_id, role, on_s))

    visits = [e for e in events if e.kind == "bathroom_visit"]
    for start, end, device_id, role, on_s in motion_eps:
        if role == "bathroom" or night_of(_dt(start)) is None:
            continue
        s, e = _dt(start), _dt(end)
        trip = any(v.started_at - BATHROOM_TRIP_MARGIN <= e and s <= v.ended_at + BATHROOM_TRIP_MARGIN
                   for v in visits)
        events.append(BehaviourEvent("night_activity", s, e, device_id,
                                     {"role": role, "bathroom_trip": trip, "up": someone_up(role, end - start, on_s)}))

    indoor = np.array(sorted(t for s, e, _, role, _ in motion_eps if role != "front_door" for t in (s, e)))
    margin = DOOR_CONTEXT.total_seconds()
    out = []
    for ev in events:
        if ev.kind != "front_door":
            out.append(ev)
            continue
        opened, closed = ev.started_at.timestamp(), ev.ended_at.timestamp()
        before = bool(indoor.size and ((indoor >= opened - margin) & (indoor < opened)).any())
        after = bool(indoor.size and ((indoor > closed) & (indoor <= closed + margin)).any())
        if after and not before:
            direction = "return"
        elif before and not after and now.timestamp() >= closed + margin:
            direction = "exit"
        elif not after and now.timestamp() < closed + margin:
            direction = "pending"
        else:
            direction = "unknown"
        out.append(BehaviourEvent(ev.kind, ev.started_at, ev.ended_at, ev.device_id,
                                  {**ev.detail, "direction": direction}))
    return out


# ------------------------------------------------------------------------------------------------------------
# Household rules
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoomTemperature:
    device_id: str
    room: str | None
    measured_at: datetime
    value: float


@dataclass(frozen=True)
class HouseholdData:
    """What the household rules need, loaded by the engine."""

    site_id: str
    name: str
    #: the last ~16 days as the engine loads them: every event of the last 36 h; before that night-time (00-06)
    #: bathroom visits and night activity, and the newest front-door and kitchen events (all the rules use)
    events: Sequence[BehaviourEvent]
    roles: frozenset[str]  # behaviour roles of the household's active devices
    has_other_motion: bool  # a motion sensor outside the bathroom (needed for the long-lie rule)
    last_motion_at: datetime | None  # newest indoor motion "on" reading, any room
    last_motion_role: str | None
    first_motion_by_day: Mapping[date, datetime]  # first indoor motion at/after 05:00 local, per local day
    nights_heard: frozenset[date]  # nights (00:00-06:00) with at least one reading from the household
    last_heard: datetime | None  # newest reading of any kind
    room_temperatures: Sequence[RoomTemperature]  # the last ~2 h
    care_package: str | None = None
    gateway_offline: bool = False
    data_since: datetime | None = None  # oldest time the loaded data covers (first device bound)
    #: room -> its temperature readings (measured_at, value) around this hour of the day on the previous
    #: ROOM_USUAL_DAYS days (the hour before ``now`` on each day, and what enters that hour in the next few minutes):
    #: what this room is usually like at this time (``usually_cold``), as of any ``now`` the data covers
    room_past: Mapping[str, Sequence[tuple[datetime, float]]] = field(default_factory=dict)
    #: the household's own settings (sites.long_lie_minutes, sites.home_by): see LONG_LIE_AFTER and HOME_BY
    long_lie_after: timedelta | None = None
    home_by: time | None = None


def _finding_args(h: HouseholdData) -> tuple[str, str]:
    return h.site_id, h.site_id


def _away(h: HouseholdData) -> bool:
    """The newest front-door event was an exit with no indoor motion since: the person is out."""
    doors = [e for e in h.events if e.kind == "front_door"]
    if not doors:
        return False
    last = max(doors, key=lambda e: e.started_at)
    if last.detail.get("direction") != "exit":
        return False
    return h.last_motion_at is None or h.last_motion_at <= last.ended_at


# --- night-time bathroom visits (UTI pattern) ---------------------------------------------------------------
NIGHT_BATHROOM_BASELINE_NIGHTS: Final = 14
NIGHT_BATHROOM_MIN_NIGHTS: Final = 7
NIGHT_BATHROOM_RECENT_NIGHTS: Final = 2  # both of the last two nights above, or the last night markedly above
NIGHT_BATHROOM_EXTRA: Final = 2  # visits above the usual number
#: scipy.special.ndtri(0.75): SciPy's ``scale="normal"`` for the median absolute deviation.
_NORMAL_MAD_SCALE: Final = 0.6744897501960817


def night_counts(events: Sequence[BehaviourEvent], nights: Sequence[date], kind: str) -> NDArray[np.int64]:
    """Events of ``kind`` starting in each night's 00:00-06:00 window."""
    index = {d: i for i, d in enumerate(nights)}
    counts = np.zeros(len(nights), dtype=np.int64)
    for e in events:
        if e.kind != kind:
            continue
        n = night_of(e.started_at)
        if n in index:
            counts[index[n]] += 1
    return counts


def night_bathroom_threshold(baseline_counts: NDArray[np.int64]) -> tuple[float, float, float]:
    """(median, scaled MAD, threshold): above = at least median + max(2, 2 x MAD) visits.

    The MAD is ``scipy.stats.median_abs_deviation(counts, scale="normal")`` computed as SciPy does (median of the
    absolute deviations from the median, divided by ``ndtri(0.75)``) without its per-call array-API overhead
    (~0.5 ms a household; ``tests/scoring/test_behaviour.py`` holds the two equal)."""
    values = np.asarray(baseline_counts, dtype=np.float64)
    centre = np.median(values)
    median = float(centre)
    mad = float(np.median(np.abs(values - centre)) / _NORMAL_MAD_SCALE)
    return median, mad, median + max(NIGHT_BATHROOM_EXTRA, 2 * mad)


def night_bathroom_finding(h: HouseholdData, now: datetime) -> Finding:
    kind = AlertKind.NIGHT_BATHROOM
    subject, site = _finding_args(h)
    if "bathroom" not in h.roles:
        return hold(kind, subject, site)
    last = last_complete_night(now)
    recent = [last - timedelta(days=i) for i in range(NIGHT_BATHROOM_RECENT_NIGHTS - 1, -1, -1)]
    earlier = [last - timedelta(days=i) for i in range(NIGHT_BATHROOM_RECENT_NIGHTS,
                                                       NIGHT_BATHROOM_RECENT_NIGHTS + NIGHT_BATHROOM_BASELINE_NIGHTS)]
    baseline_nights = [d for d in earlier if d in h.nights_heard]
    if len(baseline_nights) < NIGHT_BATHROOM_MIN_NIGHTS or last not in h.nights_heard:
        return hold(kind, subject, site, "not enough nights of data for a baseline")
    base = night_counts(h.events, baseline_nights, "bathroom_visit")
    now_counts = night_counts(h.events, recent, "bathroom_visit")
    median, mad, threshold = night_bathroom_threshold(base)
    heard = np.array([d in h.nights_heard for d in recent])
    sustained = bool(((now_counts >= threshold) & heard).all())
    # A marked rise on the last night alone is enough: a UTI can turn quickly in a frail person.
    marked = bool(now_counts[-1] >= threshold + NIGHT_BATHROOM_EXTRA)
    nights_text = ", ".join(f"{d:%a %d %b}: {c}" for d, c in zip(recent, now_counts.tolist(), strict=True))
    if not (sustained or marked):
        return clear_alert(kind, subject, site, f"Night-time bathroom visits back to usual ({nights_text}).")
    reason = (f"More night-time bathroom visits than usual: {nights_text} (usually {median:g} a night over "
              f"{len(baseline_nights)} nights, 00:00-06:00).")
    action = ("Ask the person how they are: pain or burning passing urine, fever, new confusion? A rise in "
              "night-time toilet visits can be an early sign of a urine infection. Contact the GP practice today "
              "if so; encourage fluids.")
    return raise_alert(kind, subject, site, Severity.LOW, reason, action,
                       data={"recent": dict(zip([d.isoformat() for d in recent], now_counts.tolist(), strict=True)),
                             "baseline_median": median, "baseline_mad": mad, "threshold": threshold,
                             "baseline_nights": len(baseline_nights)})


# --- kitchen inactivity (not eating or drinking) ------------------------------------------------------------
KITCHEN_INACTIVE_WAKING_HOURS: Final = 8.0


def _last_kitchen(h: HouseholdData, now: datetime) -> datetime | None:
    """The end of the newest kitchen event (fridge, kettle or kitchen movement) started by ``now``."""
    return max((e.ended_at for e in h.events if e.kind in KITCHEN_KINDS and e.started_at <= now), default=None)


def kitchen_inactivity_finding(h: HouseholdData, now: datetime) -> Finding:
    kind = AlertKind.KITCHEN_INACTIVITY
    subject, site = _finding_args(h)
    if not (h.roles & {"kitchen", "fridge", "kettle"}):
        return hold(kind, subject, site)
    last = _last_kitchen(h, now)
    if last is None:
        # never seen in the loaded history: a sensor problem (device_silent), not evidence about eating
        return hold(kind, subject, site, "no kitchen events on record")
    since = last
    hours = waking_hours_between(since, now)
    if hours < KITCHEN_INACTIVE_WAKING_HOURS:
        return clear_alert(kind, subject, site, f"Kitchen in use (last {local_time(since)}).")
    if _away(h) or h.gateway_offline:
        return hold(kind, subject, site, "person appears to be out, or the hub is offline")
    reason = (f"No kitchen activity (fridge, kettle or kitchen movement) since {local_time(last)}: "
              f"{hours:.0f} waking hours, "
              f"more than {KITCHEN_INACTIVE_WAKING_HOURS:g}.")
    action = "Phone or visit: check the person is eating and drinking and is well."
    return raise_alert(kind, subject, site, Severity.MEDIUM, reason, action,
                       data={"last_kitchen_activity": iso(last), "waking_hours": round(hours, 1)})


# --- no activity by the usual wake time ---------------------------------------------------------------------
WAKE_BASELINE_DAYS: Final = 14
WAKE_MIN_DAYS: Final = 5
WAKE_GRACE: Final = timedelta(minutes=90)


def usual_wake_time(first_motion_by_day: Mapping[date, datetime], today: date) -> tuple[float | None, int]:
    """Median minutes after local midnight of the first morning motion over the previous 14 days."""
    minutes = []
    for offset in range(1, WAKE_BASELINE_DAYS + 1):
        at = first_motion_by_day.get(today - timedelta(days=offset))
        if at is not None:
            local = at.astimezone(LOCAL_TZ)
            minutes.append(local.hour * 60 + local.minute + local.second / 60)
    if len(minutes) < WAKE_MIN_DAYS:
        return None, len(minutes)
    return float(np.median(minutes)), len(minutes)


def no_morning_activity_finding(h: HouseholdData, now: datetime) -> Finding:
    kind = AlertKind.NO_MORNING_ACTIVITY
    subject, site = _finding_args(h)
    today = now.astimezone(LOCAL_TZ).date()
    up = h.first_motion_by_day.get(today)
    if up is not None and up <= now:
        return clear_alert(kind, subject, site, f"Up and about at {local_time(up)}.")
    usual, days = usual_wake_time(h.first_motion_by_day, today)
    if usual is None:
        return hold(kind, subject, site, f"only {days} mornings of data for a usual wake time")
    usual_at = local_at(today, time(0)) + timedelta(minutes=usual)
    deadline = usual_at + WAKE_GRACE
    if now <= deadline or _away(h) or h.gateway_offline:
        return hold(kind, subject, site)
    seen = local_time(h.last_motion_at) if h.last_motion_at else "monitoring began"
    reason = (f"No movement at home this morning: usually up by {usual_at.astimezone(LOCAL_TZ):%H:%M} "
              f"(median of {days} days); nothing seen since {seen}.")
    action = "Phone the person now; if there is no answer, arrange for someone to visit (possible fall or illness)."
    return raise_alert(kind, subject, site, Severity.MEDIUM, reason, action,
                       data={"usual_wake_local": f"{usual_at.astimezone(LOCAL_TZ):%H:%M}", "days": days,
                             "last_motion_at": iso(h.last_motion_at)})


# --- long stay in the bathroom (possible fall or long lie) --------------------------------------------------
LONG_BATHROOM_STAY: Final = timedelta(minutes=45)


def long_bathroom_stay_finding(h: HouseholdData, now: datetime) -> Finding:
    kind = AlertKind.LONG_BATHROOM_STAY
    subject, site = _finding_args(h)
    if "bathroom" not in h.roles or not h.has_other_motion or h.last_motion_at is None:
        return hold(kind, subject, site)
    doors_after = [e for e in h.events if e.kind == "front_door" and e.started_at > h.last_motion_at]
    if h.last_motion_role != "bathroom" or doors_after:
        return clear_alert(kind, subject, site, f"Movement outside the bathroom at {local_time(h.last_motion_at)}.")
    still = now - h.last_motion_at
    if still < LONG_BATHROOM_STAY:
        return hold(kind, subject, site)
    if h.gateway_offline:
        return hold(kind, subject, site, "hub offline: no news is not evidence")
    minutes = int(still.total_seconds() // 60)
    reason = (f"Last movement was in the bathroom at {local_time(h.last_motion_at)} and nothing since "
              f"({minutes} minutes; alert after {int(LONG_BATHROOM_STAY.total_seconds() // 60)}).")
    action = "Phone the person now. If there is no answer, send someone or call 999: they may have fallen."
    return raise_alert(kind, subject, site, Severity.HIGH, reason, action,
                       data={"last_motion_at": iso(h.last_motion_at), "minutes": minutes})


# --- long lie anywhere (no motion in waking hours, last seen outside the bedroom) -----------------------------
#: Default waking-hours stillness before a long lie is raised; per household in sites.long_lie_minutes.
LONG_LIE_AFTER: Final = timedelta(hours=2)


def long_lie_finding(h: HouseholdData, now: datetime) -> Finding:
    """No motion anywhere for ``long_lie_after`` of waking hours (07:00-22:00), after motion was last seen in a
    room other than the bedroom (asleep) or the bathroom (``long_bathroom_stay`` covers it sooner), with no
    front-door event since (gone out). Needs a motion sensor outside the bedroom; held while the hub is offline
    (no news is not evidence). Cleared by any movement (H-HOME-09)."""
    kind = AlertKind.LONG_LIE
    subject, site = _finding_args(h)
    after = h.long_lie_after or LONG_LIE_AFTER
    if not h.has_other_motion or h.last_motion_at is None:
        return hold(kind, subject, site)
    still_hours = waking_hours_between(h.last_motion_at, now)
    if still_hours * 3600 < after.total_seconds():
        return clear_alert(kind, subject, site, f"Movement at {local_time(h.last_motion_at)}.")
    doors_after = [e for e in h.events if e.kind == "front_door" and e.started_at > h.last_motion_at]
    if h.last_motion_role in ("bedroom", "bathroom", "front_door") or doors_after or _away(h):
        return hold(kind, subject, site, "last seen in the bedroom or bathroom, or went out")
    if h.gateway_offline:
        return hold(kind, subject, site, "hub offline: no news is not evidence")
    room = h.last_motion_role or "a room"
    minutes = int(after.total_seconds() // 60)
    reason = (f"No movement anywhere at home since {local_time(h.last_motion_at)} (last seen in {room}): "
              f"{still_hours:.1f} waking hours without movement, alert after {minutes} minutes.")
    action = "Phone the person now. If there is no answer, send someone or call 999: they may have fallen."
    return raise_alert(kind, subject, site, Severity.HIGH, reason, action,
                       data={"last_motion_at": iso(h.last_motion_at), "last_room": h.last_motion_role,
                             "still_waking_hours": round(still_hours, 2), "after_minutes": minutes})


# --- out and not back ---------------------------------------------------------------------------------------
#: Default time by which someone who went out is expected home (local); per household in sites.home_by.
HOME_BY: Final = time(21, 0)
#: Someone who leaves after the expected time (or at night) is expected back within this.
LATE_EXIT_GRACE: Final = timedelta(hours=1)


def _expected_back(h: HouseholdData) -> tuple[datetime, datetime]:
    """(when the person went out, when they are expected back) from the newest front-door event."""
    exit_event = max((e for e in h.events if e.kind == "front_door"), key=lambda e: e.started_at)
    left = exit_event.ended_at
    home_by = h.home_by or HOME_BY
    local = left.astimezone(LOCAL_TZ)
    evening = datetime.combine(local.date(), home_by, tzinfo=LOCAL_TZ)
    morning = datetime.combine(local.date(), WAKING_START, tzinfo=LOCAL_TZ)
    return left, left + LATE_EXIT_GRACE if (local >= evening or local < morning) else evening


#: out_not_back is raised medium, then high this long after the expected time.
OUT_NOT_BACK_HIGH_AFTER: Final = timedelta(hours=2)


def out_not_back_finding(h: HouseholdData, now: datetime) -> Finding:
    """A front-door exit with no return (no indoor motion since) by the household's home-by time; an exit in
    the evening or night (after home-by, before 07:00) gets LATE_EXIT_GRACE. Cleared by a return; held while
    the hub is offline (H-HOME-10)."""
    kind = AlertKind.OUT_NOT_BACK
    subject, site = _finding_args(h)
    if "front_door" not in h.roles:
        return hold(kind, subject, site)
    if not _away(h):
        return clear_alert(kind, subject, site, "Not out (or back home).")
    left, deadline = _expected_back(h)
    if now < deadline:
        return hold(kind, subject, site, f"out since {local_time(left)}; expected back by {local_time(deadline)}")
    if h.gateway_offline:
        return hold(kind, subject, site, "hub offline: a return would not be seen")
    reason = (f"Went out by the front door at {local_time(left)} and has not come back: expected home by "
              f"{local_time(deadline)} (no movement indoors since).")
    action = ("Phone the person, then their family or carer. If nobody knows where they are, call the police on "
              "101 (999 if they are at risk).")
    severity = Severity.MEDIUM if now - deadline < OUT_NOT_BACK_HIGH_AFTER else Severity.HIGH
    return raise_alert(kind, subject, site, severity, reason, action,
                       data={"left_at": iso(left), "expected_by": iso(deadline)})


# --- room temperature --------------------------------------------------------------------------------------
ROOM_COLD_BELOW: Final = 18.0
ROOM_VERY_COLD_BELOW: Final = 16.0
ROOM_HOT_ABOVE: Final = 26.0
ROOM_VERY_HOT_ABOVE: Final = 30.0
ROOM_SUSTAINED: Final = timedelta(hours=1)
ROOM_MIN_READINGS: Final = 2
#: A room below 18 °C (not below 16 °C) at an hour when it was also below 18 °C on at least ROOM_USUAL_MIN of
#: the previous ROOM_USUAL_DAYS days is this home's known pattern (e.g. a bedroom cooling overnight): not raised
#: again every day (H-HOME-05).
ROOM_USUAL_DAYS: Final = 7
ROOM_USUAL_MIN: Final = 4


def usually_cold(h: HouseholdData, room: str, now: datetime) -> bool:
    """The room was below ROOM_COLD_BELOW throughout the hour before ``now``'s time of day on most of the previous
    ROOM_USUAL_DAYS days that have readings (its warmest reading of that hour, per day)."""
    warmest: dict[int, float] = {}
    for t, v in h.room_past.get(room, ()):
        day, into = divmod(now - t, timedelta(days=1))  # t in (now - day - 1 h, now - day]: that day's hour
        if 1 <= day <= ROOM_USUAL_DAYS and into < ROOM_SUSTAINED:
            warmest[day] = max(v, warmest.get(day, v))
    past = warmest.values()
    return len(past) >= ROOM_USUAL_MIN and sum(v < ROOM_COLD_BELOW for v in past) >= ROOM_USUAL_MIN


def _known_pattern_rooms(h: HouseholdData, now: datetime) -> list[str]:
    """The rooms cold (not very cold) for the last hour: where ``usually_cold`` decides raise or hold."""
    return [room for room, rows in _rooms_in_window(h, now).items()
            if len(rows) >= ROOM_MIN_READINGS and all(r.value < ROOM_COLD_BELOW for r in rows)
            and not all(r.value < ROOM_VERY_COLD_BELOW for r in rows)]


def known_pattern_changes_at(h: HouseholdData, now: datetime, before: datetime | None) -> datetime | None:
    """The first instant after ``now`` (and before ``before``) at which ``usually_cold`` changes for a room where it
    decides (H-HOME-11): the same hour on the previous days moves with the clock, so a past reading enters a day's
    hour (at its time + k days) or leaves it (1 h later); between those instants nothing changes. None: no change
    the data shows before ``before``."""
    first = before
    for room in _known_pattern_rooms(h, now):
        current = usually_cold(h, room, now)
        moves = sorted({t + timedelta(days=k) + shift for t, _ in h.room_past.get(room, ())
                        for k in range(1, ROOM_USUAL_DAYS + 1) for shift in (timedelta(0), ROOM_SUSTAINED)})
        for at in moves:
            if at <= now:
                continue
            if first is not None and at >= first:
                break
            if usually_cold(h, room, at) != current:
                first = at
                break
    return first if first != before else None


def _rooms_in_window(h: HouseholdData, now: datetime) -> dict[str, list[RoomTemperature]]:
    rooms: dict[str, list[RoomTemperature]] = {}
    for r in h.room_temperatures:
        if now - ROOM_SUSTAINED <= r.measured_at <= now:
            rooms.setdefault(r.room or r.device_id, []).append(r)
    return rooms


def room_temperature_findings(h: HouseholdData, now: datetime) -> list[Finding]:
    """Cold (< 18 °C) or hot (> 26 °C) for every reading of the last hour in a room (at least 2 readings);
    resolved when every room with data has been in range for the last hour. A room colder than 18 °C (but not
    16 °C) at an hour when it usually is (``usually_cold``) is the home's known pattern: held, not raised."""
    subject, site = _finding_args(h)
    rooms = _rooms_in_window(h, now)
    enough = {room: rows for room, rows in rooms.items() if len(rows) >= ROOM_MIN_READINGS}
    out = []
    checks: tuple[tuple[AlertKind, Callable[[float], bool], Callable[[float], bool], float, float, str], ...] = (
        (AlertKind.ROOM_COLD, lambda v: v < ROOM_COLD_BELOW, lambda v: v < ROOM_VERY_COLD_BELOW,
         ROOM_COLD_BELOW, ROOM_VERY_COLD_BELOW, "below"),
        (AlertKind.ROOM_HOT, lambda v: v > ROOM_HOT_ABOVE, lambda v: v > ROOM_VERY_HOT_ABOVE,
         ROOM_HOT_ABOVE, ROOM_VERY_HOT_ABOVE, "above"),
    )
    for kind, test, very, limit, very_limit, word in checks:
        bad = {room: rows for room, rows in enough.items() if all(test(r.value) for r in rows)}
        if not enough:
            out.append(hold(kind, subject, site))
            continue
        if kind is AlertKind.ROOM_COLD and bad:
            # a known pattern (cold at this hour most days) is not news; below 16 °C always is
            new_bad = {room: rows for room, rows in bad.items()
                       if all(very(r.value) for r in rows) or not usually_cold(h, room, now)}
            if not new_bad:
                out.append(hold(kind, subject, site, "below 18 °C as on most days at this time (known pattern)"))
                continue
            bad = new_bad
        if not bad:
            in_range = all(not test(r.value) for rows in enough.values() for r in rows)
            if in_range:
                summary = ", ".join(f"{room} {rows[-1].value:.1f} °C" for room, rows in sorted(enough.items()))
                out.append(clear_alert(kind, subject, site, f"Rooms back in range for the last hour: {summary}."))
            else:
                out.append(hold(kind, subject, site))
            continue
        severe = any(all(very(r.value) for r in rows) for rows in bad.values())
        parts = [f"{room} {min(r.value for r in rows) if word == 'below' else max(r.value for r in rows):.1f} °C"
                 for room, rows in sorted(bad.items())]
        reason = (f"Room temperature {word} {limit:g} °C for the last hour: {', '.join(parts)} "
                  f"({sum(len(r) for r in bad.values())} readings).")
        if kind is AlertKind.ROOM_COLD:
            action = ("Phone or visit: check the heating works and the person is warm, dressed warmly and has hot "
                      "drinks. Cold homes raise the risk of chest infections, strokes and falls.")
        else:
            action = ("Phone or visit: open windows in the cool of the day, close curtains in the sun, offer "
                      "plenty of cool drinks; watch for heat exhaustion.")
        out.append(raise_alert(kind, subject, site, Severity.MEDIUM if severe else Severity.LOW, reason, action,
                               data={"rooms": {room: [r.value for r in rows] for room, rows in bad.items()},
                                     "limit": limit, "severe_limit": very_limit}))
    return out


# --- household silent ---------------------------------------------------------------------------------------
HOUSEHOLD_SILENT_AFTER: Final = timedelta(hours=3)


def household_silent_finding(h: HouseholdData, now: datetime) -> Finding:
    kind = AlertKind.HOUSEHOLD_SILENT
    subject, site = _finding_args(h)
    if h.last_heard is None:
        return hold(kind, subject, site)
    if now - h.last_heard <= HOUSEHOLD_SILENT_AFTER:
        return clear_alert(kind, subject, site, f"Readings arriving again (last {local_time(h.last_heard)}).")
    if h.gateway_offline:
        return hold(kind, subject, site, "the gateway_offline alert covers this")
    reason = (f"No readings from any sensor in {h.name} since {local_time(h.last_heard)} (more than "
              f"{HOUSEHOLD_SILENT_AFTER.total_seconds() / 3600:g} h).")
    action = "Check the hub and sensors have power (a power cut?) and phone the person to check they are well."
    return raise_alert(kind, subject, site, Severity.MEDIUM, reason, action, data={"last_heard": iso(h.last_heard)})


# --- settled nights: evidence for a care review -------------------------------------------------------------
CARE_REVIEW_NIGHTS: Final = 7
CARE_REVIEW_SETTLED: Final = 5
#: Hysteresis: an open care_review is closed only when this few of the last 7 nights were settled (one
#: disturbed night must not close and re-open the evidence every other day).
CARE_REVIEW_CLEAR_AT: Final = 3
SETTLED_MAX_BATHROOM_VISITS: Final = 1


def _awake_at_night(e: BehaviourEvent) -> bool:
    """Someone was up at night, apart from the trip to the bathroom (events derived before ``up`` existed: any
    bedroom episode of BEDROOM_UP_MINUTES or more counts)."""
    if e.kind != "night_activity" or e.detail.get("bathroom_trip"):
        return False
    up = e.detail.get("up")
    if up is None:
        return e.detail.get("role") != "bedroom" or e.ended_at - e.started_at >= timedelta(minutes=BEDROOM_UP_MINUTES)
    return bool(up)


def settled_nights(h: HouseholdData, nights: Sequence[date]) -> NDArray[np.bool_]:
    """A night is settled when the sensors were heard, nobody was up (no activity other than bathroom trips and
    the odd movement in bed), and there was at most one bathroom visit (00:00-06:00)."""
    heard = np.array([d in h.nights_heard for d in nights], dtype=bool)
    visits = night_counts(h.events, nights, "bathroom_visit")
    other = night_counts([e for e in h.events if _awake_at_night(e)], nights, "night_activity")
    settled: NDArray[np.bool_] = heard & (visits <= SETTLED_MAX_BATHROOM_VISITS) & (other == 0)
    return settled


def care_review_finding(h: HouseholdData, now: datetime) -> Finding:
    kind = AlertKind.CARE_REVIEW
    subject, site = _finding_args(h)
    last = last_complete_night(now)
    nights = [last - timedelta(days=i) for i in range(CARE_REVIEW_NIGHTS)]
    if sum(d in h.nights_heard for d in nights) < CARE_REVIEW_SETTLED:
        return hold(kind, subject, site, "not enough nights with sensor data")
    settled = settled_nights(h, nights)
    count = int(settled.sum())
    if count <= CARE_REVIEW_CLEAR_AT:
        return clear_alert(kind, subject, site, f"{count} of the last {len(nights)} nights were settled.")
    if count < CARE_REVIEW_SETTLED:  # between the two: an open review stays open, none is opened
        return hold(kind, subject, site, f"{count} of the last {len(nights)} nights were settled")
    package = f" Current package: {h.care_package}." if h.care_package else ""
    reason = (f"{count} of the last {len(nights)} nights were settled (no activity 00:00-06:00 apart from at most "
              f"one bathroom visit).{package}")
    action = ("No action needed now. Evidence for the next care review: consider whether waking-night care is "
              "still needed (for example a sleeping-night service or a call system instead).")
    return raise_alert(kind, subject, site, Severity.INFO, reason, action,
                       data={"settled_nights": [d.isoformat() for d, s in zip(nights, settled, strict=True) if s],
                             "nights_considered": [d.isoformat() for d in nights]})


# ------------------------------------------------------------------------------------------------------------
# When time alone can change a decision (issue 19: the slow tick skips households that cannot change)
# ------------------------------------------------------------------------------------------------------------
_MICROSECOND = timedelta(microseconds=1)


def waking_instant(start: datetime, reached: Callable[[float], bool], hours: float) -> datetime:
    """The first instant ``t`` (to the microsecond) at which ``reached(waking_hours_between(start, t))`` holds,
    for a rule that is reached after ``hours`` waking hours (07:00-22:00 local) since ``start``."""
    remaining = max(hours, 0.0) * 3600
    day = start.astimezone(LOCAL_TZ).date()
    while True:
        lo = max(start, local_at(day, WAKING_START))
        hi = local_at(day, WAKING_END)
        span = (hi - lo).total_seconds()
        if span > 0 and span >= remaining:
            at = lo + timedelta(seconds=remaining)
            break
        remaining -= max(span, 0.0)
        day += timedelta(days=1)
    # the hours are summed in floating point: settle on the rule's own comparison, to the microsecond
    for _ in range(64):
        if reached(waking_hours_between(start, at)):
            if not reached(waking_hours_between(start, at - _MICROSECOND)) or at <= start:
                return at
            at -= _MICROSECOND
        else:
            at += _MICROSECOND
    return at


def _next_local(now: datetime, at: time) -> datetime:
    """The first local ``at`` strictly after ``now``."""
    day = now.astimezone(LOCAL_TZ).date()
    for offset in range(3):
        candidate = local_at(day + timedelta(days=offset), at)
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: a local time recurs within two days")


def household_recheck_at(h: HouseholdData, now: datetime, findings: Sequence[Finding]) -> datetime:
    """The earliest instant after ``now`` at which time passing alone (no new reading, no other change) can change
    a decision of ``household_findings`` (or the text of a raised finding that counts time): the earlier of
    ``household_recheck_times``'."""
    deadline, night = household_recheck_times(h, now, findings)
    return night if deadline is None else min(deadline, night)


def household_recheck_times(h: HouseholdData, now: datetime,
                            findings: Sequence[Finding]) -> tuple[datetime | None, datetime]:
    """(the earliest deadline after ``now`` at which time alone can change a decision, None if none; the next
    06:00 local, when a night completes). Kept apart so the slow tick can put the deadlines (a long lie...) before
    the night completion, which falls at the same instant for every household (H-HOME-11). Per rule:

    * night-time bathroom visits, care review: the next 06:00 local (a night completes: the second time);
    * no morning activity: the usual wake time + grace, today's and tomorrow's (local midnight itself changes
      nothing written: the new day's answer is a hold until its deadline);
    * kitchen, long lie: the instant the waking hours since the last kitchen use / motion reach the limit;
    * long bathroom stay: the last motion + 45 min; household silent: the last reading + 3 h;
    * out and not back: the expected time and 2 h after it (medium, then high); a front-door event's direction
      (pending, then exit or unknown) 15 min after it closed (``derive_events``);
    * room temperature: each reading of the last hour leaving the hour; the known pattern of a room cold for
      the last hour (``known_pattern_changes_at``: the same hour on the previous days moves with the clock);
    * anything stamped after ``now`` (within the scorer's future slack) when it comes into the rules' view;
    * a raised long bathroom stay, long lie or kitchen inactivity: the next change of the time its text counts
      (the next minute still, the next tenth of a waking hour, the next whole waking hour).

    Not foreseen here (the caller's bounded cadence covers them): the 16-day look-backs sliding past old data (the
    oldest baseline night, a kitchen event or a motion 16 days old), and a past room reading the data does not
    hold yet. The hub's own offline-by-silence time and snoozes ending are the caller's (it knows the hubs and the
    suppressions)."""
    times: list[datetime] = []
    raised = {f.kind for f in findings if f.state == "raise"}
    if h.last_motion_at is not None and AlertKind.LONG_BATHROOM_STAY in raised:
        minutes = int((now - h.last_motion_at).total_seconds() // 60)
        times.append(h.last_motion_at + timedelta(minutes=minutes + 1))
    if h.last_motion_at is not None and AlertKind.LONG_LIE in raised:
        shown = f"{waking_hours_between(h.last_motion_at, now):.1f}"
        times.append(waking_instant(h.last_motion_at, lambda hours: f"{hours:.1f}" != shown, float(shown) + 0.05))
    last_kitchen = _last_kitchen(h, now)
    if last_kitchen is not None and AlertKind.KITCHEN_INACTIVITY in raised:
        shown = f"{waking_hours_between(last_kitchen, now):.0f}"
        times.append(waking_instant(last_kitchen, lambda hours: f"{hours:.0f}" != shown, float(shown) + 0.5))
    # anything stamped in the (near) future enters the rules' view when its time comes
    for e in h.events:
        times += [e.started_at, e.ended_at]
    times += [t for t in (h.last_motion_at, h.last_heard) if t is not None]
    times += list(h.first_motion_by_day.values())
    times += [r.measured_at for r in h.room_temperatures]
    # a front-door event's direction is settled DOOR_CONTEXT after it closed
    times += [e.ended_at + DOOR_CONTEXT for e in h.events if e.kind == "front_door"]
    # room temperatures: a reading leaves the sustained hour
    times += [r.measured_at + ROOM_SUSTAINED + _MICROSECOND for r in h.room_temperatures]
    if h.last_heard is not None:
        times.append(h.last_heard + HOUSEHOLD_SILENT_AFTER + _MICROSECOND)
    if h.last_motion_at is not None:
        if h.last_motion_role == "bathroom":
            times.append(h.last_motion_at + LONG_BATHROOM_STAY)
        after = (h.long_lie_after or LONG_LIE_AFTER).total_seconds()
        times.append(waking_instant(h.last_motion_at, lambda hours: not hours * 3600 < after, after / 3600))
    if last_kitchen is not None:
        times.append(waking_instant(last_kitchen, lambda hours: not hours < KITCHEN_INACTIVE_WAKING_HOURS,
                                    KITCHEN_INACTIVE_WAKING_HOURS))
    # today's deadline, and tomorrow's as the data stands (a new day only turns today's answer into a hold)
    today = now.astimezone(LOCAL_TZ).date()
    for day in (today, today + timedelta(days=1)):
        usual, _days = usual_wake_time(h.first_motion_by_day, day)
        if usual is not None:
            times.append(local_at(day, time(0)) + timedelta(minutes=usual) + WAKE_GRACE + _MICROSECOND)
    if any(e.kind == "front_door" for e in h.events):
        _left, deadline = _expected_back(h)
        times += [deadline, deadline + OUT_NOT_BACK_HIGH_AFTER]
    first = min((t for t in times if t > now), default=None)
    pattern = known_pattern_changes_at(h, now, before=first)
    return (first if pattern is None else pattern), _next_local(now, NIGHT_END)


def household_findings(h: HouseholdData, now: datetime) -> list[Finding]:
    return [
        night_bathroom_finding(h, now),
        kitchen_inactivity_finding(h, now),
        no_morning_activity_finding(h, now),
        long_bathroom_stay_finding(h, now),
        long_lie_finding(h, now),
        out_not_back_finding(h, now),
        *room_temperature_findings(h, now),
        household_silent_finding(h, now),
        care_review_finding(h, now),
    ]
