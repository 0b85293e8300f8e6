"""The scorer service: LISTEN for new readings, evaluate within about a second, tick time-based rules.

On start it LISTENs first (so nothing notified during start-up is lost), then batch-rescores everything. Each
loop wakes on the first NOTIFY payload (``{"subjects": [...], "max_received_at": iso}``; at most ``poll_s``
apart), takes every other payload already queued, and evaluates the notified subjects together. A second thread
with its own connection runs the fast tick every ``tick_s`` (escalations, overdue observations) and every
``slow_tick_s`` the slow one (households, devices, gateways), so time-based rules never delay fresh readings.
The stored-to-alert latency of each alert is logged. A lost database connection is re-opened with back-off; an
error in one evaluation is logged and the loop carries on.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import psycopg
import structlog

from carewatch.scoring.clock import Clock, parse_timestamp
from carewatch.scoring.engine import EvaluationSummary, evaluate_subjects, rescore_all, tick
from carewatch.settings import Settings

CHANNEL = "carewatch_readings"
log = structlog.get_logger("carewatch.scoring.service")


def parse_payload(payload: str) -> tuple[list[str], datetime | None]:
    """Subjects and max_received_at from a NOTIFY payload; ([], None) for anything unreadable."""
    try:
        doc = json.loads(payload)
    except json.JSONDecodeError:
        return [], None
    if not isinstance(doc, dict):
        return [], None
    subjects = doc.get("subjects")
    clean = [s for s in subjects if isinstance(s, str) and s] if isinstance(subjects, list) else []
    stamp = doc.get("max_received_at")
    return clean, parse_timestamp(stamp) if isinstance(stamp, str) else None


def _seed_data_clock(conn: psycopg.Connection, clock: Clock) -> None:
    """A data clock starts at the newest data already stored (latest_readings is small; readings is not)."""
    if clock.mode != "data" or clock.has_data:
        return
    newest = conn.execute("SELECT max(measured_at) FROM latest_readings").fetchone()[0]
    clock.observe(newest)


def _log_summary(event: str, summary: EvaluationSummary, **extra: object) -> None:
    if summary.opened or summary.updated or summary.resolved or summary.escalated or summary.errors:
        log.info(event, **summary.as_log(), **extra)
    for alert_id, seconds in summary.latency_s.items():
        log.info("alert_latency", alert_id=alert_id, stored_to_alert_ms=round(seconds * 1000))
    for subject, error in summary.errors.items():
        log.error("evaluation_failed", subject=subject, error=error)


def run_scorer(
    settings: Settings,
    *,
    stop_event: threading.Event | None = None,
    clock: Clock | None = None,
    poll_s: float = 0.25,
    tick_s: float = 5.0,
    slow_tick_s: float = 30.0,
    dsn: str | None = None,
) -> None:
    """Run until ``stop_event`` is set. ``clock`` defaults to wall time; the demo passes ``Clock.data()``."""
    stop = stop_event or threading.Event()
    clock = clock or Clock.wall()
    target = dsn or settings.dsn
    backoff = 1.0
    while not stop.is_set():
        try:
            _serve(target, stop, clock, poll_s, tick_s, slow_tick_s)
            return
        except psycopg.OperationalError as exc:
            log.warning("database_unavailable", error=str(exc), retry_in_s=backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)


def _serve(dsn: str, stop: threading.Event, clock: Clock, poll_s: float, tick_s: float,
           slow_tick_s: float) -> None:
    with psycopg.connect(dsn, autocommit=True, application_name="carewatch-scorer-listen") as listen, \
            psycopg.connect(dsn, autocommit=True, application_name="carewatch-scorer") as work:
        listen.execute(f"LISTEN {CHANNEL}")
        _seed_data_clock(work, clock)
        started = time.monotonic()
        if clock.ready:
            summary = rescore_all(work, clock.now())
            log.info("scorer_started", clock=clock.mode, now=clock.now().isoformat(),
                     rescore_s=round(time.monotonic() - started, 2), **summary.as_log())
            _log_summary("rescored", summary)
        else:
            log.info("scorer_started", clock=clock.mode, waiting_for="first readings")
        # Time-based rules run in their own thread and connection: a slow tick (every household and device) must
        # never hold up the evaluation of freshly notified readings (H-ALERT-10).
        done = threading.Event()
        ticker = threading.Thread(target=_tick_loop, args=(dsn, stop, done, clock, tick_s, slow_tick_s),
                                  name="carewatch-scorer-tick", daemon=True)
        ticker.start()
        try:
            while not stop.is_set():
                pending: set[str] = set()
                # wake on the first notification (not at the end of the poll window), then take what else is queued
                for note in (*listen.notifies(timeout=poll_s, stop_after=1), *listen.notifies(timeout=0.0)):
                    subjects, stamp = parse_payload(note.payload)
                    if not subjects and stamp is None:
                        log.warning("bad_notify_payload", payload=note.payload[:200])
                    pending.update(subjects)
                    clock.observe(stamp)
                if pending:
                    try:
                        summary = evaluate_subjects(work, sorted(pending), clock.now())
                    except psycopg.OperationalError:
                        raise
                    except Exception:
                        log.exception("evaluate_failed", subjects=len(pending))
                    else:
                        _log_summary("evaluated", summary, subjects=len(pending))
        finally:
            done.set()
            ticker.join(timeout=60)
        log.info("scorer_stopped")


def _tick_loop(dsn: str, stop: threading.Event, done: threading.Event, clock: Clock, tick_s: float,
               slow_tick_s: float) -> None:
    """Every ``tick_s`` the fast tick, every ``slow_tick_s`` the slow one, on a connection of its own; a lost
    connection is re-opened with back-off without disturbing the evaluation loop."""
    backoff = 1.0
    next_slow = time.monotonic() + slow_tick_s
    while not (stop.is_set() or done.is_set()):
        try:
            with psycopg.connect(dsn, autocommit=True, application_name="carewatch-scorer-tick") as conn:
                backoff = 1.0
                while not (stop.is_set() or done.is_set()):
                    if done.wait(tick_s) or stop.is_set():
                        return
                    if not clock.ready:
                        continue
                    mono = time.monotonic()
                    slow = mono >= next_slow
                    try:
                        summary = tick(conn, clock.now(), slow=slow)
                    except psycopg.OperationalError:
                        raise
                    except Exception:
                        log.exception("tick_failed", slow=slow)
                    else:
                        _log_summary("ticked", summary, slow=slow, tick_ms=round((time.monotonic() - mono) * 1000))
                    if slow:
                        next_slow = time.monotonic() + slow_tick_s
        except psycopg.OperationalError as exc:
            log.warning("tick_database_unavailable", error=str(exc), retry_in_s=backoff)
            done.wait(backoff)
            backoff = min(backoff * 2, 30.0)


def main(settings: Settings) -> None:
    """``carewatch score``: run until SIGTERM or Ctrl-C; the clock follows ``CAREWATCH_CLOCK``."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    clock = Clock.data() if settings.clock == "data" else Clock.wall()
    run_scorer(settings, stop_event=stop, clock=clock)
