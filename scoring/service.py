"""The scorer service: LISTEN for new readings, evaluate within about a second, tick time-based rules.

Several replicas may run against one database: each holds some of the site buckets (scoring/replicas.py, a lease
thread of its own) and acts only on its own sites' notifications and ticks. On start it LISTENs first (so nothing
notified during start-up is lost), then rescores every subject of the buckets it holds, and later those of each
bucket it takes over, in slices beside the fresh notifications. Each
loop wakes on the first NOTIFY payload (``{"v": 2, "subjects": ["resident:r-1", ...], "max_received_at": iso}``:
each subject its kind and id, ``carewatch.subjects.subject_key``; at most ``poll_s`` apart), takes every other
payload already queued, and evaluates the notified subjects together, each as its own kind only. A payload without
``v`` (ingest before v2, during a rolling upgrade: upgrade the scorers first) lists bare ids, evaluated as every
kind the id is, as before. A second thread
with its own connection runs the fast tick every ``tick_s`` (escalations, overdue observations) and every
``slow_tick_s`` the slow one (households, devices, gateways), so time-based rules never delay fresh readings.
A third thread delivers the notifications the tick's escalation steps left pending, for this replica's sites
only, each attempt claimed atomically, and tells the estate's admins of stalled scoring (``carewatch.notify``).
The stored-to-alert latency of each alert is logged. A lost database connection is re-opened with back-off; an
error in one evaluation is logged and the loop carries on.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import psycopg
import structlog

from carewatch.db import one
from carewatch.scoring import metrics
from carewatch.scoring.clock import Clock, parse_timestamp
from carewatch.scoring.engine import EvaluationSummary, evaluate_subjects, group_loose_alerts, tick
from carewatch.scoring.memory import SetHistoryMemory
from carewatch.scoring.replicas import (
    FENCE_AFTER,
    FENCE_TICK_AFTER,
    LeaseKeeper,
    SubjectMap,
    mark_scored,
    run_watchdog,
    subjects_of,
)
from carewatch.settings import Settings
from carewatch.subjects import Subject, SubjectKind, parse_subject_key

CHANNEL = "carewatch_readings"
#: ``sys.setswitchinterval`` of the scorer process (Python's default is 0.005 s).
GIL_SWITCH_INTERVAL_S = 0.0005
#: Subjects of newly acquired buckets evaluated per loop, beside whatever was freshly notified: fresh readings wait
#: for the slice in hand, so it stays well under the 1 s stored-to-alert target (200 residents with 15 days of
#: history take ~0.2-0.3 s since the batch loads went columnar; 50, the size for the per-subject scorer, spent
#: a third of each slice on the batch's fixed queries).
CATCH_UP_SLICE = 200
#: How often the scorer moves what survived into the interpreter's permanent generation (``HeapFreezer``).
HEAP_FREEZE_EVERY_S = 60.0
#: Seconds of catch-up work taken beside the fresh notifications per loop (``CatchUpPacer``): a slice is cut to
#: what fits at each kind's measured cost, so a slice of cold households (17-80 ms each, docs/scaling.md) cannot hold
#: fresh readings up for tens of seconds the way 200 of them did (bench_scale: 2 of 60 probes late, H-HA-05).
CATCH_UP_BUDGET_S = 0.3
#: Seconds a subject of each kind is assumed to cost before any is measured (a cold evaluation, docs/scaling.md).
_FIRST_COST_S = {SubjectKind.RESIDENT.value: 0.003, SubjectKind.HOUSEHOLD.value: 0.08}
_OTHER_FIRST_COST_S = 0.01
log = structlog.get_logger("carewatch.scoring.service")


def parse_payload(payload: str) -> tuple[list[Subject | str], datetime | None]:
    """Subjects and max_received_at from a NOTIFY payload; ([], None) for anything unreadable. Payload v2 (ingest's
    ``notify_payloads``) names each subject as ``kind:id``: parsed into :class:`Subject` (an entry that is not one
    is dropped and logged). A payload without ``v`` (ingest before v2, during a rolling upgrade) lists bare ids:
    returned as strings, which ``evaluate_subjects`` still takes as every kind the id is."""
    try:
        doc = json.loads(payload)
    except json.JSONDecodeError:
        return [], None
    if not isinstance(doc, dict):
        return [], None
    subjects = doc.get("subjects")
    entries = [s for s in subjects if isinstance(s, str) and s] if isinstance(subjects, list) else []
    clean: list[Subject | str] = []
    if doc.get("v") is None:
        clean.extend(entries)  # bare ids (payload v1)
    else:
        for entry in entries:
            try:
                clean.append(parse_subject_key(entry))
            except ValueError:
                log.warning("bad_notify_subject", subject=entry[:200])
    stamp = doc.get("max_received_at")
    return clean, parse_timestamp(stamp) if isinstance(stamp, str) else None


class HeapFreezer:
    """Keeps the cyclic garbage collector's full passes short in a scorer replica. The replica's memory
    (``SetHistoryMemory``) holds ~100 Python objects a resident (readings, recent sets, plans): ~1 M at 10,000
    residents, and every full pass of CPython's collector walks all of them while the process stands still (~1 s
    at that size; 144-216 ms at 2,000 residents, measured). Every ``every_s`` seconds
    the scorer collects once and freezes what survived (``gc.freeze``): the collector never walks those objects
    again, so its passes cover only what was made since. Frozen objects are still freed as soon as nothing refers
    to them (reference counting); only a reference cycle formed among them afterwards would stay (the memory's
    entries hold none). Pure timing: nothing the scorer decides depends on it."""

    def __init__(self, every_s: float = HEAP_FREEZE_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last = clock()

    def maybe_freeze(self, *, force: bool = False) -> bool:
        """Collect and freeze if ``every_s`` has passed since the last time (or ``force``); returns whether it did."""
        now = self._clock()
        if not force and now - self._last < self.every_s:
            return False
        gc.collect()
        gc.freeze()
        self._last = now
        return True


class CatchUpPacer:
    """How much catch-up goes with each batch: the subjects from the head of the queue whose estimated cost fits in
    ``budget_s`` (at least one, at most ``CATCH_UP_SLICE``). The cost per subject of each kind is learned from the
    batches themselves (an exponential average of the residents' and the households' measured seconds a subject),
    so the slice follows what this replica's subjects really cost: hundreds of warm residents, a handful of cold
    households. Pure: the service feeds it each batch's summary."""

    def __init__(self, budget_s: float = CATCH_UP_BUDGET_S, most: int = CATCH_UP_SLICE) -> None:
        self.budget_s = budget_s
        self.most = most
        self.cost_s: dict[str, float] = dict(_FIRST_COST_S)

    def _cost(self, subject: Subject | str) -> float:
        kind = SubjectKind.RESIDENT.value if isinstance(subject, str) else str(subject[0])
        return self.cost_s.get(kind, _OTHER_FIRST_COST_S)

    def take(self, queue: Sequence[Subject | str]) -> int:
        """How many subjects from the head of ``queue`` go with the next batch."""
        spent, n = 0.0, 0
        for subject in queue[:self.most]:
            spent += self._cost(subject)
            if n and spent > self.budget_s:
                break
            n += 1
        return n

    def observe(self, summary: EvaluationSummary, elapsed_s: float) -> None:
        """Learn from one batch: the residents' time is the summary's load, rules and write laps (the device step
        included); the households' is the rest of the batch's wall time."""
        residents_s = summary.load_s + summary.rules_s + summary.write_s
        for kind, count, seconds in ((SubjectKind.RESIDENT.value, summary.residents, residents_s),
                                     (SubjectKind.HOUSEHOLD.value, summary.households,
                                      max(elapsed_s - residents_s, 0.0))):
            if count:
                self.cost_s[kind] = 0.5 * self.cost_s[kind] + 0.5 * seconds / count


def _subject_order(subject: Subject | str) -> tuple[str, str]:
    """Sort bare ids (old payloads) and (kind, id) subjects together."""
    return ("", subject) if isinstance(subject, str) else (subject[0], subject[1])


def _seed_data_clock(conn: psycopg.Connection, clock: Clock) -> None:
    """A data clock starts at the newest data already stored (latest_readings is small; readings is not)."""
    if clock.mode != "data" or clock.has_data:
        return
    newest = one(conn.execute("SELECT max(measured_at) FROM latest_readings"))[0]
    clock.observe(newest)


def _log_summary(event: str, summary: EvaluationSummary, **extra: object) -> None:
    if summary.opened or summary.updated or summary.resolved or summary.escalated or summary.errors:
        log.info(event, **summary.as_log(), **extra)
    for alert_id, seconds in summary.latency_s.items():
        log.info("alert_latency", alert_id=alert_id, stored_to_alert_ms=round(seconds * 1000))
    for subject, error in summary.errors.items():
        log.error("evaluation_failed", subject=subject, error=error)


class Progress:
    """When each scoring loop last went round (monotonic): the lease keeper gives the buckets up when a loop
    stops moving (a hung replica must not sit on sites)."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def mark(self, loop: str) -> None:
        self._at[loop] = time.monotonic()

    def stuck(self) -> bool:
        """A loop that has not come round within its limit (replicas.FENCE_AFTER, FENCE_TICK_AFTER)."""
        now = time.monotonic()
        limits = {"evaluate": FENCE_AFTER, "tick": FENCE_TICK_AFTER}
        return any(now - at > limits.get(loop, FENCE_AFTER) for loop, at in self._at.items())


def run_scorer(
    settings: Settings,
    *,
    stop_event: threading.Event | None = None,
    clock: Clock | None = None,
    poll_s: float = 0.25,
    tick_s: float = 5.0,
    slow_tick_s: float = 30.0,
    dsn: str | None = None,
    replica_id: str | None = None,
    notify: bool = True,
) -> None:
    """Run one replica until ``stop_event`` is set. ``clock`` defaults to wall time; the demo passes
    ``Clock.data()``. Any number of replicas may run against one database: they divide the sites between them
    (scoring/replicas.py)."""
    stop = stop_event or threading.Event()
    clock = clock or Clock.wall()
    target = dsn or settings.dsn
    progress = Progress()
    keeper = LeaseKeeper(target, replica_id=replica_id, lease_s=settings.scorer_lease_s, stuck=progress.stuck)
    stall_after = timedelta(seconds=settings.scorer_stall_after_s)
    lease_stop = threading.Event()
    leases = threading.Thread(target=keeper.run, args=(lease_stop,), name="carewatch-scorer-lease", daemon=True)
    leases.start()
    metrics.serve(settings.metrics_port)
    metrics.watch(keeper, target, stall_after)
    backoff = 1.0
    # the residents' set history this replica keeps between evaluations (scoring/memory.py, H-BASE-06)
    memory = SetHistoryMemory(settings.scorer_set_memory_residents, inputs=settings.scorer_input_memory)
    try:
        while not stop.is_set():
            try:
                memory.clear()  # a start or a reconnect: loaded again as needed
                _serve(target, stop, clock, keeper, progress, poll_s, tick_s, slow_tick_s,
                       (settings.scorer_watchdog_s, stall_after), settings if notify else None, memory)
                return
            except psycopg.OperationalError as exc:
                log.warning("database_unavailable", error=str(exc), retry_in_s=backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
    finally:
        lease_stop.set()
        leases.join(timeout=15)


def _scorer_session(conn: psycopg.Connection) -> psycopg.Connection:
    """The scorer's own session settings. JIT off: its statements are set-based but short (index probes over a
    batch, or over a replica's share of sites), and at scale their estimates cross ``jit_above_cost``, where
    compiling costs more than it saves (22,000 sites: the slow tick's ``load_changing_devices`` 4.3-5.2 s with JIT,
    2.8-2.9 s without; ``due_by_urgency`` ~145 ms of compilation for a ~60 ms query), as for any OLTP workload."""
    conn.execute("SET jit = off")
    return conn


def _wait_first_round(keeper: LeaseKeeper, stop: threading.Event, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while keeper.rounds == 0 and time.monotonic() < deadline and not stop.wait(0.05):
        pass


def _serve(dsn: str, stop: threading.Event, clock: Clock, keeper: LeaseKeeper, progress: Progress, poll_s: float,
           tick_s: float, slow_tick_s: float, watchdog: tuple[float, timedelta],
           notify_settings: Settings | None = None, memory: SetHistoryMemory | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True, application_name="carewatch-scorer-listen") as listen, \
            psycopg.connect(dsn, autocommit=True, application_name="carewatch-scorer") as work:
        listen.execute(f"LISTEN {CHANNEL}")
        _scorer_session(work)
        _seed_data_clock(work, clock)
        _wait_first_round(keeper, stop, 10.0)
        subjects = SubjectMap()
        # Everything held now is rescored (a start, or a reconnect after which notifications may have been missed),
        # then whatever the keeper takes over later: the readings notified while a bucket had no holder.
        catch_up: list[Subject | str] = []
        catch_up_started: float | None = None
        catch_up_total = 0
        pacer = CatchUpPacer()
        # only the inputs memory keeps objects enough to make the collector's passes long (H-HA-06)
        freezer = HeapFreezer() if memory is not None and memory.inputs else None
        rescoring: set[int] = set(keeper.buckets) | keeper.take_acquired()
        remembered = keeper.buckets  # the buckets whose residents the memory may hold
        if clock.ready:
            # alerts left outside any incident (from before incidents, or never re-evaluated) join their subject's
            # incident, as rescore_all does at start; safe from every replica (subject locks)
            group_loose_alerts(work, clock.now())
        log.info("scorer_started", replica=keeper.replica_id, clock=clock.mode, buckets=len(keeper.buckets),
                 **({"now": clock.now().isoformat()} if clock.ready else {"waiting_for": "first readings"}))
        # Time-based rules run in their own thread and connection: a slow tick (every household and device) must
        # never hold up the evaluation of freshly notified readings (H-ALERT-10).
        done = threading.Event()
        ticker = threading.Thread(target=_tick_loop,
                                  args=(dsn, stop, done, clock, keeper, progress, tick_s, slow_tick_s, watchdog),
                                  name="carewatch-scorer-tick", daemon=True)
        ticker.start()
        threads = [ticker]
        if notify_settings is not None:
            from carewatch.notify.service import notify_loop

            notifier = threading.Thread(target=notify_loop, args=(dsn, notify_settings, clock, stop, done, keeper),
                                        name="carewatch-notify", daemon=True)
            notifier.start()
            threads.append(notifier)
        try:
            while not stop.is_set():
                progress.mark("evaluate")
                pending: set[Subject | str] = set()
                # wake on the first notification (not at the end of the poll window), then take what else is queued
                wait = 0.0 if catch_up else poll_s
                for note in (*listen.notifies(timeout=wait, stop_after=1), *listen.notifies(timeout=0.0)):
                    got, stamp = parse_payload(note.payload)
                    if not got and stamp is None:
                        log.warning("bad_notify_payload", payload=note.payload[:200])
                    pending.update(got)
                    clock.observe(stamp)
                rescoring |= keeper.take_acquired()
                held = keeper.buckets
                if memory is not None and not remembered <= held:
                    # buckets given up: their residents' sets are the new holder's to keep
                    dropped = memory.retain_sites(set(subjects.sites(work, held)))
                    log.info("set_memory_dropped", residents=dropped, buckets=len(remembered - held))
                remembered = held
                if rescoring and clock.ready:
                    rescoring &= set(held)
                    catch_up = sorted(set(catch_up) | set(subjects_of(work, rescoring)), key=_subject_order)
                    log.info("buckets_to_rescore", replica=keeper.replica_id, buckets=len(rescoring),
                             subjects=len(catch_up))
                    if catch_up_started is None:
                        catch_up_started, catch_up_total = time.monotonic(), 0
                    mark_scored(work, keeper.replica_id, rescoring)
                    rescoring = set()
                if pending:
                    pending = set(subjects.mine(work, pending, held))
                # fresh readings first; the catch-up in slices, so a takeover never holds fresh readings up for long
                # (and only what is still ours: buckets given back meanwhile are the new holder's to rescore)
                taking = pacer.take(catch_up)
                slice_ = subjects.mine(work, catch_up[:taking], held) if catch_up else []
                catch_up_total += len(slice_)
                batch = sorted(pending | set(slice_), key=_subject_order)
                catch_up = catch_up[taking:]
                finishing = catch_up_started is not None and not catch_up
                if batch and clock.ready:
                    started = time.perf_counter()
                    try:
                        summary = evaluate_subjects(work, batch, clock.now(), memory)
                    except psycopg.OperationalError:
                        raise
                    except Exception:
                        log.exception("evaluate_failed", subjects=len(batch))
                    else:
                        pacer.observe(summary, time.perf_counter() - started)
                        _log_summary("evaluated", summary, subjects=len(batch))
                        # one line per batch: its size and where the time went (bench/bench_alert_latency.py)
                        log.info("evaluation_batch", subjects=len(batch), residents=summary.residents,
                                 households=summary.households, load_ms=round(summary.load_s * 1000, 1),
                                 rules_ms=round(summary.rules_s * 1000, 1), write_ms=round(summary.write_s * 1000, 1),
                                 elapsed_ms=round((time.perf_counter() - started) * 1000, 1))
                # a finished catch-up has just filled the memory with its buckets' residents: freeze them at once
                if freezer is not None:
                    freezer.maybe_freeze(force=finishing)
                if finishing and catch_up_started is not None:
                    # how long a start or a takeover took to rescore its buckets (bench/bench_scale.py reads it)
                    seconds = time.monotonic() - catch_up_started
                    log.info("caught_up", replica=keeper.replica_id, subjects=catch_up_total,
                             seconds=round(seconds, 2), per_s=round(catch_up_total / max(seconds, 1e-6), 1))
                    catch_up_started = None
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=60)
        log.info("scorer_stopped", replica=keeper.replica_id)


def _tick_loop(dsn: str, stop: threading.Event, done: threading.Event, clock: Clock, keeper: LeaseKeeper,
               progress: Progress, tick_s: float, slow_tick_s: float, watchdog: tuple[float, timedelta]) -> None:
    """The fast tick every ``tick_s``, the slow one every ``slow_tick_s`` (the first one at once), both over the
    sites this replica holds, then the bucket heartbeat; the watchdog every ``watchdog_s``. On a connection of its
    own; a lost connection is re-opened with back-off without disturbing the evaluation loop."""
    backoff = 1.0
    next_slow = 0.0
    watchdog_s, stall_after = watchdog
    next_watchdog = time.monotonic() + watchdog_s
    subjects = SubjectMap()
    while not (stop.is_set() or done.is_set()):
        try:
            with psycopg.connect(dsn, autocommit=True, application_name="carewatch-scorer-tick") as conn:
                _scorer_session(conn)
                backoff = 1.0
                wait = 0.0
                while not (stop.is_set() or done.is_set()):
                    progress.mark("tick")
                    if done.wait(wait) or stop.is_set():
                        return
                    wait = tick_s
                    if not clock.ready:
                        continue
                    mono = time.monotonic()
                    held = keeper.buckets
                    if held:
                        slow = mono >= next_slow
                        try:
                            summary = tick(conn, clock.now(), slow=slow, site_ids=subjects.sites(conn, held))
                        except psycopg.OperationalError:
                            raise
                        except Exception:
                            log.exception("tick_failed", slow=slow)
                        else:
                            mark_scored(conn, keeper.replica_id, held & keeper.buckets)
                            _log_summary("ticked", summary, slow=slow, buckets=len(held),
                                         tick_ms=round((time.monotonic() - mono) * 1000))
                        if slow:
                            next_slow = time.monotonic() + slow_tick_s
                    if time.monotonic() >= next_watchdog:
                        try:
                            _log_summary("watchdog", run_watchdog(conn, clock.now(), stall_after=stall_after))
                        except psycopg.OperationalError:
                            raise
                        except Exception:
                            log.exception("watchdog_failed")
                        next_watchdog = time.monotonic() + watchdog_s
        except psycopg.OperationalError as exc:
            log.warning("tick_database_unavailable", error=str(exc), retry_in_s=backoff)
            done.wait(backoff)
            backoff = min(backoff * 2, 10.0)


def main(settings: Settings, replica_id: str | None = None) -> None:
    """``carewatch score``: run until SIGTERM or Ctrl-C; the clock follows ``CAREWATCH_CLOCK``."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # The evaluation loop waits on the database many times a batch; each time its reply is in, it needs the GIL back
    # from the tick thread's Python (every device of the estate in the slow tick), by default up to 5 ms later. A
    # shorter switch interval hands it back sooner (issue 19: the batches' reads took ~4x longer in the service
    # than alone).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    clock = Clock.data() if settings.clock == "data" else Clock.wall()
    run_scorer(settings, stop_event=stop, clock=clock, replica_id=replica_id)
