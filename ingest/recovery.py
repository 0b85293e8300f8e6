"""Gap recovery: ask a gateway to publish again the sequence numbers ingest never stored.

Why: a PUBACK from the broker does not mean ingest got the message. Mosquitto 2.0 does not restore *shared*
subscriptions from its persistence file, so what gateways publish between a broker restart and the workers'
re-subscription is acknowledged and dropped; the gateway then marks it sent. ``gateway_seq_runs`` shows the
hole; this module fills it. Gateways keep acknowledged readings for a replay window (``replay_retention_s``),
so ingest publishes a :class:`~carewatch.wire.ResendRequest` on the gateway's ``resend`` topic and the
gateway re-publishes them with their original ``seq``; :func:`~carewatch.ingest.store.store_batch` stores
each once. Delivery stays at-least-once end to end: asking twice, or two workers asking, only costs
duplicates that ingest drops.

Pure core (:func:`missing_ranges`, :class:`HoleAges`, :func:`plan_request`) and a thin database shell
(:func:`plan_resends`). The consumer calls the shell every ``ingest_resend_after_s`` and publishes what it
returns. Rules:

* a hole is asked for only once it is older than ``grace_s`` (holes often fill by themselves: a second
  worker's batch, a gateway's in-flight window re-sent after a reconnect);
* seqs that ingest received and dead-lettered (implausible value, unknown device, ...) are not holes to fill:
  a replay would be refused again. Neither are seqs the gateway reported as no longer kept
  (``replay_unavailable`` events): those readings are lost, and stay counted in ``missing_seqs``;
* per gateway at most one request per ``interval_s``; a hole asked for before waits ``interval_s x 2^(n-1)``
  (at most ``backoff_cap_s``) before the n+1-th request, and after ``max_attempts`` requests within
  REQUEST_HISTORY it is left alone (logged as unrecoverable). Requests are recorded in ``gateway_events``
  (kind ``resend_requested``), so these limits hold across workers; a transaction-scoped advisory lock lets
  one worker plan at a time;
* a gateway that is offline is asked all the same: the request waits in its persistent session (QoS 1), and
  its status is no reliable guide here (the "online" status it sent after a broker restart may have been
  lost in the very hole we are filling);
* one request names at most ``MAX_RESEND_RANGES`` ranges and ``MAX_RESEND_READINGS`` readings, oldest
  first; the rest is asked for next time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from carewatch.db import one
from carewatch.ingest.store import record_gateway_events
from carewatch.wire import (
    MAX_RESEND_RANGES,
    MAX_RESEND_READINGS,
    ResendRequest,
    SeqRun,
    merge_runs,
    run_length,
    runs_from_seqs,
    subtract_runs,
)

#: pg_try_advisory_xact_lock key: one worker plans resend requests at a time ('CWRS').
RESEND_LOCK_KEY = 0x43575253
#: How far back recorded requests count towards a hole's attempts and the per-gateway interval.
REQUEST_HISTORY = timedelta(hours=24)
REQUESTED_KIND = "resend_requested"  # gateway_events rows written by ingest
UNAVAILABLE_KIND = "replay_unavailable"  # gateway_events rows from the gateway's events


@dataclass(frozen=True)
class ResendPolicy:
    grace_s: float = 30.0
    interval_s: float = 60.0
    max_attempts: int = 6
    backoff_cap_s: float = 3600.0
    max_ranges: int = MAX_RESEND_RANGES
    max_readings: int = MAX_RESEND_READINGS

    def backoff_s(self, attempts: int) -> float:
        """Least time after the ``attempts``-th request for a hole before asking again."""
        return min(self.interval_s * 2 ** max(0, attempts - 1), self.backoff_cap_s)


# ------------------------------------------------------------------------------------------------------------
# Pure core
# ------------------------------------------------------------------------------------------------------------
def missing_ranges(runs: Iterable[SeqRun]) -> list[SeqRun]:
    """The holes below the highest stored seq: seqs in 1..max never stored, as ascending runs.

    ``runs`` are a gateway's ``gateway_seq_runs`` (any order; overlapping or adjacent runs are fine).
    Sequences start at 1, so a first run starting above 1 leaves a hole at the start.
    """
    holes: list[SeqRun] = []
    expected = 1
    for first, last in merge_runs(runs):
        if first > expected:
            holes.append((expected, first - 1))
        expected = last + 1
    return holes


def cap_ranges(ranges: Sequence[SeqRun], max_ranges: int, max_readings: int) -> list[SeqRun]:
    """The oldest ``ranges`` that fit one request: at most ``max_ranges`` ranges and ``max_readings`` seqs
    (the last range is cut short if need be)."""
    out: list[SeqRun] = []
    left = max_readings
    for first, last in ranges[:max_ranges]:
        if left <= 0:
            break
        last = min(last, first + left - 1)
        out.append((first, last))
        left -= last - first + 1
    return out


@dataclass
class HoleAges:
    """When each hole was first seen (per worker, in memory): the grace period runs from there.

    A hole never grows once it is below ``last_seq`` — it shrinks or splits as late readings fill it — and a
    new hole never overlaps an old one, so a hole's age is the oldest age of the holes it overlaps.
    """

    _seen: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)

    def observe(self, gateway_id: str, holes: Sequence[SeqRun], now: float) -> list[tuple[SeqRun, float]]:
        """Record ``holes`` as the gateway's current ones; returns each with the time it was first seen."""
        before = self._seen.get(gateway_id, [])
        aged: list[tuple[SeqRun, float]] = []
        for first, last in holes:
            seen = min((t for f, la, t in before if f <= last and la >= first), default=now)
            aged.append(((first, last), seen))
        self._seen[gateway_id] = [(f, la, t) for (f, la), t in aged]
        return aged

    def keep_only(self, gateway_ids: Iterable[str]) -> None:
        """Forget gateways that no longer have holes (or are not looked at now)."""
        keep = set(gateway_ids)
        for gateway_id in [g for g in self._seen if g not in keep]:
            del self._seen[gateway_id]


@dataclass(frozen=True)
class Plan:
    ranges: list[SeqRun]  # to ask for now (empty: nothing due)
    exhausted: list[SeqRun]  # holes asked for max_attempts times: left alone


def plan_request(
    aged_holes: Sequence[tuple[SeqRun, float]],
    requests: Sequence[tuple[float, Sequence[SeqRun]]],
    now: float,
    policy: ResendPolicy,
) -> Plan:
    """Which holes of one gateway to ask for now.

    ``aged_holes``: (hole, first seen) from :class:`HoleAges`; ``requests``: (time, ranges) of the requests
    already made to this gateway within REQUEST_HISTORY (any worker). Times are seconds on one clock.
    """
    if requests and now - max(at for at, _ in requests) < policy.interval_s:
        return Plan([], [])
    due: list[SeqRun] = []
    exhausted: list[SeqRun] = []
    for (first, last), seen in aged_holes:
        if now - seen < policy.grace_s:
            continue
        asked = [at for at, ranges in requests if any(f <= last and la >= first for f, la in ranges)]
        if len(asked) >= policy.max_attempts:
            exhausted.append((first, last))
            continue
        if asked and now - max(asked) < policy.backoff_s(len(asked)):
            continue
        due.append((first, last))
    return Plan(cap_ranges(due, policy.max_ranges, policy.max_readings), exhausted)


# ------------------------------------------------------------------------------------------------------------
# Database shell
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ResendPlan:
    """What one planning pass decided (already recorded in ``gateway_events``)."""

    requests: list[ResendRequest] = field(default_factory=list)
    exhausted: dict[str, list[SeqRun]] = field(default_factory=dict)
    gateways_with_holes: int = 0
    planned: bool = True  # False: another worker held the lock, nothing was looked at


def _as_runs(value: object) -> list[SeqRun]:
    """Ranges from a jsonb ``detail->'ranges'`` (the gateway's or our own); anything malformed is skipped."""
    out: list[SeqRun] = []
    if isinstance(value, list):
        for item in value:
            if (isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) for x in item)
                    and 1 <= item[0] <= item[1]):
                out.append((item[0], item[1]))
    return out


def plan_resends(conn: psycopg.Connection, ages: HoleAges, policy: ResendPolicy) -> ResendPlan:
    """Find gateways with holes, decide what to ask each for, record the requests; one transaction.

    Returns the requests to publish. Safe to run from every worker at once: one plans, the others return
    ``planned=False``; and asking again is harmless anyway.
    """
    plan = ResendPlan()
    with conn.transaction():
        if not one(conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RESEND_LOCK_KEY,)))[0]:
            plan.planned = False
            return plan
        now_at: datetime = one(conn.execute("SELECT now()"))[0]
        now = now_at.timestamp()
        gateways: dict[str, str] = dict(conn.execute(
            """SELECT gateway_id, site_id FROM gateways
               WHERE missing_seqs > 0 ORDER BY gateway_id""").fetchall())
        ages.keep_only(gateways)
        plan.gateways_with_holes = len(gateways)
        if not gateways:
            return plan
        ids = sorted(gateways)
        runs: dict[str, list[SeqRun]] = {g: [] for g in ids}
        for gateway_id, first, last in conn.execute(
                """SELECT gateway_id, first_seq, last_seq FROM gateway_seq_runs
                   WHERE gateway_id = ANY(%s) ORDER BY gateway_id, first_seq""", (ids,)):
            runs[gateway_id].append((first, last))
        holes = {g: missing_ranges(runs[g]) for g in ids}
        skip: dict[str, list[SeqRun]] = {g: [] for g in ids}
        spans = [(g, h[0][0], h[-1][1]) for g, h in holes.items() if h]
        dead: dict[str, list[int]] = {}
        for gateway_id, seq in conn.execute(
                """SELECT d.gateway_id, d.seq FROM dead_letters d
                   JOIN unnest(%s::text[], %s::int8[], %s::int8[]) AS b(gateway_id, lo, hi)
                     ON d.gateway_id = b.gateway_id AND d.seq BETWEEN b.lo AND b.hi""",
                ([g for g, _, _ in spans], [lo for _, lo, _ in spans], [hi for _, _, hi in spans])):
            dead.setdefault(gateway_id, []).append(seq)
        for gateway_id, seqs in dead.items():
            skip[gateway_id].extend(runs_from_seqs(seqs))
        requests: dict[str, list[tuple[float, list[SeqRun]]]] = {g: [] for g in ids}
        for gateway_id, kind, at, ranges in conn.execute(
                """SELECT gateway_id, kind, at, detail->'ranges' FROM gateway_events
                   WHERE gateway_id = ANY(%s)
                     AND (kind = %s OR (kind = %s AND at > %s))""",
                (ids, UNAVAILABLE_KIND, REQUESTED_KIND, now_at - REQUEST_HISTORY)):
            if kind == UNAVAILABLE_KIND:
                skip[gateway_id].extend(_as_runs(ranges))
            else:
                requests[gateway_id].append((at.timestamp(), _as_runs(ranges)))
        rows = []
        for gateway_id in ids:
            wanted = subtract_runs(holes[gateway_id], skip[gateway_id])
            decided = plan_request(ages.observe(gateway_id, wanted, now), requests[gateway_id], now, policy)
            if decided.exhausted:
                plan.exhausted[gateway_id] = decided.exhausted
            if not decided.ranges:
                continue
            request = ResendRequest(site_id=gateways[gateway_id], gateway_id=gateway_id, requested_at=now_at,
                                    ranges=decided.ranges)
            plan.requests.append(request)
            count = run_length(decided.ranges)
            detail = {"ranges": [list(r) for r in decided.ranges], "readings": count}
            fingerprint = hashlib.sha256(
                f"{REQUESTED_KIND}\x1f{gateway_id}\x1f{now_at.isoformat()}\x1f{detail}".encode()).hexdigest()[:32]
            rows.append((request.site_id, gateway_id, REQUESTED_KIND, None, now_at,
                         f"ingest asked for {count} readings never stored, in {len(decided.ranges)} range(s)",
                         json.dumps(detail), fingerprint))
        record_gateway_events(conn, rows)
    return plan
