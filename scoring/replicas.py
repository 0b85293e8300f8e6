"""Scorer replicas: N ``carewatch score`` processes divide the sites among themselves through PostgreSQL.

Why: one scorer process was a single point of failure for every alert in the estate. Here:

* The sites fall into :data:`BUCKETS` buckets (``carewatch_site_bucket`` in the database is the one definition of
  the hash). A replica *owns* a bucket while it holds a session advisory lock ``(LOCK_CLASS, bucket)`` on its lease
  connection. When a replica dies (kill -9, host lost) PostgreSQL ends its session and the locks go with it; the
  other replicas see the buckets free at their next lease round (every ``lease_s``) and take them.
* Balance: every replica aims at ``ceil(BUCKETS / live replicas)`` buckets. One above its share releases the excess
  only when another live replica is below its share; a bucket nobody took for two rounds is taken by anyone
  (owned beats balanced). A new holder rescores the bucket's subjects at once, so the readings notified while it
  had no holder are not lost (:meth:`LeaseKeeper.take_acquired`).
* Safety does not depend on the buckets: every evaluation still takes the engine's transaction-level lock per
  subject, so two replicas that briefly both act on a site (one just lost its lease) serialise, and the
  one-open-alert index holds.
* Fencing: a replica whose scoring loops stop going round (:data:`FENCE_AFTER`, :data:`FENCE_TICK_AFTER`) gives its
  buckets up
  (and takes none) until they move again; a replica whose heartbeat stopped altogether (a frozen process) has its
  lease session ended by the others after ``3 x REPLICA_TTL``. Either way a hung process cannot sit on sites.
* Watchdog: a heartbeat per replica (``scorer_replicas``) and per bucket (``scorer_buckets.scored_at``, set after
  each tick of the bucket's sites). Any site whose bucket has not been scored for :data:`STALL_AFTER` gets a
  ``scoring_stalled`` alert (:func:`stalled_findings`, applied by :func:`run_watchdog` through the engine); the
  API's ``/healthz`` and the scorer's Prometheus gauges read :func:`scoring_health`.

This module is the one writer of ``scorer_replicas`` and ``scorer_buckets``.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
import structlog

from carewatch.alerts import AlertKind, Severity
from carewatch.db import one
from carewatch.scoring.batches import EvaluationSummary, lock_subjects
from carewatch.scoring.lifecycle import apply_findings, findings_that_change
from carewatch.scoring.rules import Finding, clear_alert, local_time, raise_alert
from carewatch.subjects import Subject, SubjectKind

log = structlog.get_logger("carewatch.scoring.replicas")

#: Fixed for the estate: every replica must agree. 64 buckets spread 20,000 sites ~300 a bucket and allow up to
#: 64 replicas (docs/scaling.md).
BUCKETS = 64
#: First key of the two-key session advisory locks on buckets ('SC'); migrations use the one-key form.
LOCK_CLASS = 0x5343
#: A replica whose heartbeat is older than this is not counted as live (its session may linger a little).
REPLICA_TTL = timedelta(seconds=20)
#: A site unscored for this long raises scoring_stalled (issue 19: 2 minutes).
STALL_AFTER = timedelta(minutes=2)
#: A replica whose evaluation loop (one slice of at most 50 subjects a round) has not come round for this long
#: gives its buckets up. The tick loop gets :data:`FENCE_TICK_AFTER`: one slow tick over a large share of households
#: legitimately takes minutes on a loaded machine (bench/bench_scale.py saw 90 s ticks fence a working replica).
FENCE_AFTER = 90.0
FENCE_TICK_AFTER = 900.0


# ------------------------------------------------------------------------------------------------------------
# Pure core
# ------------------------------------------------------------------------------------------------------------
def fair_share(buckets: int, live: int) -> int:
    """Buckets each of ``live`` replicas should hold."""
    return math.ceil(buckets / max(1, live))


def plan_leases(held: set[int], free: set[int], free_before: set[int], others_held: Sequence[int], *,
                buckets: int = BUCKETS, offset: int = 0) -> tuple[list[int], list[int]]:
    """Which free buckets to try to take and which held ones to release this round.

    ``others_held``: how many buckets each *other* live replica holds. ``free_before``: the buckets that were free
    at this replica's previous round. ``offset`` rotates the order in which buckets are tried, so replicas
    starting together do not all race for bucket 0."""
    target = fair_share(buckets, 1 + len(others_held))
    order = sorted(free, key=lambda b: (b - offset) % buckets)
    take = order[:max(0, target - len(held))]
    take += [b for b in order if b in free_before and b not in take]  # nobody under its share took them
    release: list[int] = []
    starving = any(n < buckets // (1 + len(others_held)) for n in others_held)
    if len(held) > target and starving:
        release = sorted(held, key=lambda b: (b - offset) % buckets)[target:]
    return take, release


def stalled_findings(sites: Iterable[tuple[str, str, datetime]], db_now: datetime,
                     stall_after: timedelta = STALL_AFTER) -> list[Finding]:
    """scoring_stalled raised for each site last scored (``last_scored``, database time) more than ``stall_after``
    before ``db_now``, cleared for the others. ``sites``: (site_id, name, last_scored). The text names the time
    and not the duration, so it stays the same (no update) while the stall lasts."""
    kind = AlertKind.SCORING_STALLED
    minutes = int(stall_after.total_seconds() // 60)
    out = []
    for site_id, name, last_scored in sites:
        if db_now - last_scored <= stall_after:
            out.append(clear_alert(kind, site_id, site_id, "Scoring has resumed for this site."))
            continue
        out.append(raise_alert(
            kind, site_id, site_id, Severity.HIGH,
            f"No Carewatch scorer has evaluated {name or site_id} since {local_time(last_scored)} (more than "
            f"{minutes} minutes): new readings there raise no alerts until scoring resumes.",
            "Take observations by hand and check on residents as if Carewatch were off. Platform on-call: check the "
            "scorer replicas (docs/operations.md).",
            data={"last_scored_at": last_scored.isoformat()},
        ))
    return out


# ------------------------------------------------------------------------------------------------------------
# Lease keeper (its own connection and thread)
# ------------------------------------------------------------------------------------------------------------
def default_replica_id() -> str:
    """host-pid-random: unique even for several replicas in one process (tests, the demo)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


_FREE_SQL = """SELECT b FROM generate_series(0, %(n)s - 1) AS b
WHERE NOT EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database
                                                                  WHERE datname = current_database())
                    AND l.classid = %(cls)s AND l.objid = b AND l.objsubid = 2)"""
_LIVE_SQL = """SELECT replica_id, cardinality(buckets) FROM scorer_replicas r
WHERE heartbeat_at > now() - %s AND replica_id <> %s
  AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.lease_pid)"""


@dataclass
class LeaseState:
    """What the keeper holds; read by the scoring loops (under the keeper's lock)."""

    buckets: frozenset[int] = frozenset()
    acquired: set[int] = field(default_factory=set)  # taken since the scoring loop last asked: rescore them


class LeaseKeeper:
    """Holds this replica's buckets: heartbeat, balance, take over free buckets, release on fencing or stop."""

    def __init__(self, dsn: str, *, replica_id: str | None = None, lease_s: float = 2.0, buckets: int = BUCKETS,
                 stuck: Callable[[], bool] | None = None) -> None:
        self.dsn = dsn
        self.replica_id = replica_id or default_replica_id()
        self.lease_s = lease_s
        self.n = buckets
        self.stuck = stuck
        self.offset = sum(self.replica_id.encode()) % buckets
        self._lock = threading.Lock()
        self._state = LeaseState()
        self._free_before: set[int] = set()
        self._conn: psycopg.Connection | None = None
        self._fenced = False
        self.rounds = 0

    # -- what the scoring loops ask ----------------------------------------------------------------------
    @property
    def buckets(self) -> frozenset[int]:
        with self._lock:
            return self._state.buckets

    def take_acquired(self) -> set[int]:
        """Buckets acquired since the last call (the caller rescores their subjects)."""
        with self._lock:
            out, self._state.acquired = self._state.acquired, set()
            return out

    # -- one round -----------------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        name = f"carewatch-scorer-lease {self.replica_id}"[:63]
        conn = psycopg.connect(self.dsn, autocommit=True, application_name=name, connect_timeout=5, keepalives=1,
                               keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        # the server drops the session (and so our bucket locks) soon after this host vanishes
        conn.execute("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3")
        conn.execute("INSERT INTO scorer_buckets (bucket) SELECT generate_series(0, %s - 1) ON CONFLICT DO NOTHING",
                     (self.n,))
        return conn

    def _set(self, buckets: Iterable[int], acquired: Iterable[int] = ()) -> None:
        with self._lock:
            self._state.buckets = frozenset(buckets)
            self._state.acquired = (self._state.acquired | set(acquired)) & set(self._state.buckets)

    def round(self) -> None:
        """One lease round on the lease connection (opened here when needed). Raises OperationalError when the
        database is unreachable; the holdings are then empty (the server released them with the session)."""
        if self._conn is None or self._conn.closed:
            self._set(())
            self._conn = self._connect()
        conn = self._conn
        held = set(self.buckets)
        stuck = self.stuck is not None and self.stuck()
        if stuck and not self._fenced:
            log.error("scorer_fenced", replica=self.replica_id, buckets=len(held))
        self._fenced = stuck
        # A replica whose lease session lives on but whose heartbeat stopped (a frozen process, a hung host that
        # still answers TCP) would hold its buckets for ever: end that session, which frees them.
        fenced = conn.execute(
            """SELECT replica_id, pg_terminate_backend(lease_pid) FROM scorer_replicas r
               WHERE heartbeat_at < now() - %s AND lease_pid <> pg_backend_pid()
                 AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.lease_pid
                             AND a.application_name LIKE 'carewatch-scorer-lease%%')""",
            (REPLICA_TTL * 3,)).fetchall()
        for replica, _ in fenced:
            log.error("scorer_replica_fenced", replica=replica, by=self.replica_id, reason="heartbeat stopped")
        free = {row[0] for row in conn.execute(_FREE_SQL, {"n": self.n, "cls": LOCK_CLASS})}
        others = [row[1] for row in conn.execute(_LIVE_SQL, (REPLICA_TTL, self.replica_id))]
        if stuck:
            take, release = list[int](), sorted(held)
        else:
            take, release = plan_leases(held, free, self._free_before, others, buckets=self.n, offset=self.offset)
        self._free_before = free
        got: list[int] = []
        if take:
            got = [row[0] for row in conn.execute(
                "SELECT b FROM unnest(%s::int[]) AS b WHERE pg_try_advisory_lock(%s, b)", (take, LOCK_CLASS))]
        if release:
            self._set(held - set(release))  # stop acting on them before they are free
            conn.execute("SELECT pg_advisory_unlock(%s, b) FROM unnest(%s::int[]) AS b", (LOCK_CLASS, release))
        held = (held - set(release)) | set(got)
        self._set(held, got)
        if got:
            conn.execute("UPDATE scorer_buckets SET replica_id = %s, acquired_at = now() WHERE bucket = ANY(%s)",
                         (self.replica_id, got))
        if got or release:
            log.info("scorer_buckets_changed", replica=self.replica_id, took=len(got), released=len(release),
                     held=len(held), live_replicas=1 + len(others))
        conn.execute(
            """INSERT INTO scorer_replicas (replica_id, host, pid, lease_pid, buckets)
               VALUES (%s, %s, %s, pg_backend_pid(), %s)
               ON CONFLICT (replica_id) DO UPDATE SET lease_pid = EXCLUDED.lease_pid, heartbeat_at = now(),
                                                      buckets = EXCLUDED.buckets, host = EXCLUDED.host""",
            (self.replica_id, socket.gethostname(), os.getpid(), sorted(held)))
        self.rounds += 1

    def release_all(self) -> None:
        """Graceful stop: give the buckets back at once and leave the replica list."""
        self._set(())
        conn, self._conn = self._conn, None
        if conn is None or conn.closed:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
            conn.execute("DELETE FROM scorer_replicas WHERE replica_id = %s", (self.replica_id,))
        except psycopg.Error:
            pass
        finally:
            conn.close()

    def run(self, stop: threading.Event) -> None:
        """Lease rounds every ``lease_s`` until ``stop``; a lost connection is re-opened with back-off."""
        backoff = 1.0
        while not stop.is_set():
            try:
                self.round()
                backoff = 1.0
                stop.wait(self.lease_s)
            except psycopg.OperationalError as exc:
                self._set(())
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                log.warning("lease_database_unavailable", replica=self.replica_id, error=str(exc), retry_in_s=backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self.release_all()


# ------------------------------------------------------------------------------------------------------------
# Which subjects a replica holds
# ------------------------------------------------------------------------------------------------------------
class SubjectMap:
    """subject (resident, household or care home, kit) -> (site, bucket), from the database; refreshed when a
    subject is unknown (rate-limited) and every ``max_age_s``. Subjects are (kind, id) pairs
    (``carewatch.subjects.Subject``); a bare id (an old NOTIFY payload) goes by the id alone, as it always did."""

    def __init__(self, buckets: int = BUCKETS, max_age_s: float = 60.0, min_refresh_s: float = 2.0) -> None:
        self.n = buckets
        self.max_age_s = max_age_s
        self.min_refresh_s = min_refresh_s
        self._map: dict[Subject | str, tuple[str, int]] = {}
        self._loaded = -math.inf

    def refresh(self, conn: psycopg.Connection) -> None:
        rows = conn.execute(
            """SELECT 'resident', resident_id, site_id, carewatch_site_bucket(site_id, %(n)s) FROM residents
               UNION ALL SELECT 'kit', kit_id, site_id, carewatch_site_bucket(site_id, %(n)s) FROM kits
               UNION ALL SELECT CASE kind WHEN 'household' THEN 'household' ELSE 'site' END, site_id, site_id,
                                carewatch_site_bucket(site_id, %(n)s) FROM sites""",
            {"n": self.n}).fetchall()
        mapped: dict[Subject | str, tuple[str, int]] = {}
        for kind, subject, site, bucket in rows:
            mapped[Subject(kind, subject)] = (site, bucket)
            if kind != SubjectKind.KIT:
                mapped[subject] = (site, bucket)  # a bare id: a resident's or a site's (the site's wins)
        self._map = mapped
        self._loaded = time.monotonic()

    def _fresh(self, conn: psycopg.Connection, unknown: bool) -> None:
        age = time.monotonic() - self._loaded
        if age > self.max_age_s or (unknown and age > self.min_refresh_s):
            self.refresh(conn)

    def mine(self, conn: psycopg.Connection, subjects: Iterable[Subject | str], held: frozenset[int]
             ) -> list[Subject | str]:
        """The subjects whose site is in ``held``. A subject still unknown after a refresh goes by its own id's
        bucket (the engine will report it unknown: exactly one replica does)."""
        subjects = list(subjects)
        self._fresh(conn, any(s not in self._map for s in subjects))
        out: list[Subject | str] = []
        unknown: list[Subject | str] = []
        for s in subjects:
            hit = self._map.get(s)
            if hit is None:
                unknown.append(s)
            elif hit[1] in held:
                out.append(s)
        if unknown:
            ids = [s if isinstance(s, str) else s[1] for s in unknown]
            ours = {row[0] for row in conn.execute(
                "SELECT s FROM unnest(%b::text[]) AS s WHERE carewatch_site_bucket(s, %s) = ANY(%s)",
                (ids, self.n, sorted(held)))}
            out += [s for s, sid in zip(unknown, ids, strict=True) if sid in ours]
        return out

    def sites(self, conn: psycopg.Connection, held: frozenset[int]) -> list[str]:
        self._fresh(conn, False)
        return sorted({site for site, bucket in self._map.values() if bucket in held})


def subjects_of(conn: psycopg.Connection, buckets: Iterable[int], n: int = BUCKETS) -> list[Subject]:
    """Every active resident and household of these buckets, as (kind, id) (what a new holder rescores)."""
    return [Subject(*row) for row in conn.execute(
        """SELECT 'resident', r.resident_id FROM residents r
           WHERE r.monitoring = 'active' AND carewatch_site_bucket(r.site_id, %(n)s) = ANY(%(b)s)
           UNION ALL SELECT 'household', s.site_id FROM sites s
           WHERE s.kind = 'household' AND carewatch_site_bucket(s.site_id, %(n)s) = ANY(%(b)s) ORDER BY 1, 2""",
        {"n": n, "b": sorted(buckets)})]


def mark_scored(conn: psycopg.Connection, replica_id: str, buckets: Iterable[int]) -> None:
    """The bucket heartbeat: these buckets' sites were just scored by this replica."""
    held = sorted(buckets)
    if held:
        conn.execute("UPDATE scorer_buckets SET scored_at = now(), replica_id = %s WHERE bucket = ANY(%s)",
                     (replica_id, held))


# ------------------------------------------------------------------------------------------------------------
# Watchdog and health
# ------------------------------------------------------------------------------------------------------------
#: When each site was last scored: its bucket's heartbeat (a bucket never scored counts from its creation, i.e. the
#: first replica's start; a site with no bucket row yet counts from now).
_SITE_SCORED_SQL = """SELECT s.site_id, s.name, coalesce(greatest(b.scored_at, b.created_at), now())
FROM sites s LEFT JOIN scorer_buckets b ON b.bucket = carewatch_site_bucket(s.site_id, %s) ORDER BY s.site_id"""


def run_watchdog(conn: psycopg.Connection, now: datetime, summary: EvaluationSummary | None = None,
                 stall_after: timedelta = STALL_AFTER) -> EvaluationSummary:
    """Raise scoring_stalled for every site unscored for ``stall_after`` and clear it where scoring resumed, through
    the engine's :func:`apply_findings` (so notification channels see it like any alert). Any replica may run it:
    the subject locks and the one-open index keep one alert per site however many do."""
    summary = summary or EvaluationSummary()
    db_now = one(conn.execute("SELECT now()"))[0]
    sites = conn.execute(_SITE_SCORED_SQL, (BUCKETS,)).fetchall()
    changing = findings_that_change(conn, stalled_findings(sites, db_now, stall_after))
    for start in range(0, len(changing), 200):
        group = changing[start:start + 200]
        with conn.transaction():
            lock_subjects(conn, [f.subject_id for f in group])
            apply_findings(conn, group, now, summary)
    if summary.opened:
        log.error("scoring_stalled", sites=len(summary.opened))
    return summary


@dataclass(frozen=True)
class ScoringHealth:
    """Estate-wide scoring health from the database (``/healthz``, Prometheus)."""

    live_replicas: int
    buckets_held: int
    buckets: int
    stalled_sites: int
    oldest_scored_s: float | None

    @property
    def ok(self) -> bool:
        return self.live_replicas > 0 and self.stalled_sites == 0

    def as_dict(self) -> Mapping[str, object]:
        return {"status": "ok" if self.ok else "stalled", "live_replicas": self.live_replicas,
                "buckets_held": self.buckets_held, "buckets": self.buckets, "stalled_sites": self.stalled_sites,
                "oldest_scored_s": self.oldest_scored_s}


def scoring_health(conn: psycopg.Connection, stall_after: timedelta = STALL_AFTER) -> ScoringHealth:
    """Live replicas, buckets held, and sites whose bucket has not been scored within ``stall_after``."""
    live, held = one(conn.execute(
        """SELECT count(*), coalesce(sum(cardinality(buckets)), 0) FROM scorer_replicas r
           WHERE heartbeat_at > now() - %s AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.lease_pid)""",
        (REPLICA_TTL,)))
    stalled, oldest = one(conn.execute(
        """SELECT count(*) FILTER (WHERE coalesce(greatest(b.scored_at, b.created_at), now()) < now() - %s),
                  extract(epoch FROM now() - min(coalesce(greatest(b.scored_at, b.created_at), now())))
           FROM sites s LEFT JOIN scorer_buckets b ON b.bucket = carewatch_site_bucket(s.site_id, %s)""",
        (stall_after, BUCKETS)))
    return ScoringHealth(int(live), int(held), BUCKETS, int(stalled),
                         round(float(oldest), 1) if oldest is not None else None)
