"""Database connections for requests, taken from the pool without ever parking a worker thread on it.

Why: sync routes and dependencies run on AnyIO's worker threads (40 per process). When a request's connection was
taken inside a worker thread, a burst of more requests than the pool has connections (8) left the surplus threads
blocked in ``pool.getconn()``; once every thread was blocked there, the requests that *had* connections could not
get a thread to run on, so nothing finished until the pool's 30 s timeout turned them all into 500s
(``bench/bench_api.py`` hit it with 50 clients: zero requests served in 20 s).

Here a request waits for a connection on the event loop instead, behind a semaphore with one permit per pool
connection, so a worker thread only ever asks the pool for a connection that is free. Every checkout in the API
goes through the gate: :func:`pooled_connection` (routes via the ``Conn`` dependency, sign-in) or a
:func:`permit` (the audit middleware and ``/healthz``, which take, use and return a connection in one thread
call). Returning the connection is shielded from cancellation (a client that hangs up mid-request must not leak
it).

Heavy read-only reports take their connection from :func:`report_connection` instead: the report pool (a
carewatch_report login, a standby first) when one is configured, answers and is fresh enough, else the primary
pool in a READ ONLY transaction. Either way the route's queries are the same; only the connection differs. A report
whose query the standby stops (a conflict with recovery, a cancellation, a lost session) is read again, once, from
the primary pool (:class:`ReportRoute`); when that fails too it answers 503 with Retry-After. Where reports read, the
standby's lag and the stops are Prometheus metrics (``api/metrics.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import psycopg
from fastapi import Depends, FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from psycopg_pool import ConnectionPool, PoolTimeout

from carewatch.api import metrics
from carewatch.db import (
    StandbyState,
    is_statement_timeout,
    knows_statement_timeout,
    learn_statement_timeout,
    make_report_pool,
    report_conninfo,
    seeks_standby,
    server_build,
    standby_state,
)
from carewatch.settings import Settings

log = logging.getLogger(__name__)


class GateTimeout(PoolTimeout):
    """Every connection of the pool stayed in use for the whole wait (busy, not broken)."""


def gate_for(pool: ConnectionPool) -> anyio.Semaphore:
    """One permit per connection the pool may open (create it in the app's lifespan, on its event loop)."""
    return anyio.Semaphore(pool.max_size)


async def _in_thread(func: Any, *args: Any) -> Any:
    # A limiter of its own: taking or returning a connection never queues behind busy route threads.
    return await anyio.to_thread.run_sync(func, *args, limiter=anyio.CapacityLimiter(1))


@asynccontextmanager
async def permit(app: FastAPI, *, timeout: float | None = None) -> AsyncIterator[float]:
    """The right to take one connection from the pool: inside the block, ``pool.connection()`` (even in a worker
    thread) finds one free. PoolTimeout after ``timeout`` (default: the pool's); yields the timeout to pass on."""
    async with _permit(app.state.pool, app.state.conn_gate, timeout) as wait:
        yield wait


@asynccontextmanager
async def _permit(pool: ConnectionPool, gate: anyio.Semaphore, timeout: float | None) -> AsyncIterator[float]:
    wait = pool.timeout if timeout is None else timeout
    with anyio.move_on_after(wait) as waiting:
        await gate.acquire()
    if waiting.cancelled_caught:
        raise GateTimeout(f"couldn't get a connection after {wait:.2f} sec")
    try:
        yield wait
    finally:
        gate.release()


@asynccontextmanager
async def pooled_connection(app: FastAPI, *, timeout: float | None = None) -> AsyncIterator[psycopg.Connection]:
    """A pool connection held across awaits, committed when the block succeeds and rolled back when it raises
    (as ``pool.connection()``). For work done in one go, take a :func:`permit` and use the pool in the thread."""
    async with _pooled(app.state.pool, app.state.conn_gate, timeout) as conn:
        yield conn


@asynccontextmanager
async def _pooled(pool: ConnectionPool, gate: anyio.Semaphore, timeout: float | None,
                  connect_timeout: float | None = None) -> AsyncIterator[psycopg.Connection]:
    """A connection of ``pool`` behind its gate (waiting up to ``timeout`` for a permit, then up to
    ``connect_timeout`` for the pool to hand one over: with a permit held, only a connection being made takes
    time)."""
    async with _permit(pool, gate, timeout) as wait:
        checkout = pool.connection(timeout=wait if connect_timeout is None else connect_timeout)
        with anyio.CancelScope(shield=True):
            conn = await _in_thread(checkout.__enter__)
        try:
            yield conn
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await _in_thread(checkout.__exit__, type(exc), exc, exc.__traceback__)
            raise
        else:
            with anyio.CancelScope(shield=True):
                await _in_thread(checkout.__exit__, None, None, None)


async def get_conn(request: Request) -> AsyncIterator[psycopg.Connection]:
    """The request's connection: its work commits when the route returns and rolls back on error."""
    async with pooled_connection(request.app) as conn:
        yield conn


Conn = Annotated[psycopg.Connection, Depends(get_conn, scope="function")]


# ------------------------------------------------------------------------------------------------------------
# Heavy read-only reports: a standby when one answers (docs/operations.md, "Reports on the standby")
# ------------------------------------------------------------------------------------------------------------
#: Where a report read: a standby; a primary, through the report login (libpq found no standby); or the primary
#: pool (no report pool configured, none answered, or the standby was too far behind).
ReadSource = Literal["standby", "primary", "primary_pool"]
#: A report pool that failed to give a connection is not asked again for this long (reports read the primary).
REPORT_RETRY_S = 10.0
#: With a permit held the pool has a free slot: longer than this means no node of the report URL answers.
REPORT_CONNECT_WAIT_S = 3.0
#: A Prometheus scrape within this long of the last measurement of the standby's lag shows that one, not a new one.
LAG_FRESH_S = 5.0
#: A scrape waits at most this long for a measurement (else it shows the last one).
LAG_PROBE_TIMEOUT_S = 2.0


@dataclass
class ReportPool:
    """The report pool, its gate (one permit per connection, as the primary's), and what it last saw."""

    pool: ConnectionPool
    gate: anyio.Semaphore
    max_lag_s: float
    seeks_standby: bool = True  # prefer-standby over several hosts: worth asking again when on a primary
    down_until: float = 0.0
    drained_at: float = 0.0
    last: dict[str, Any] = field(default_factory=lambda: {"source": "unknown"})
    lag_s: float = math.nan  # the standby's lag when last measured (NaN: no standby), for the Prometheus gauge
    measured_at: float = -math.inf  # time.monotonic() of that measurement
    loop: anyio.lowlevel.EventLoopToken | None = None  # the app's event loop, where a scrape measures
    loop_thread: int | None = None
    scraping: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings) -> ReportPool | None:
        """The pool of ``CAREWATCH_REPORT_DATABASE_URL``; None when unset. Call on the app's event loop."""
        if not settings.report_database_url:
            return None
        conninfo = report_conninfo(settings.report_database_url, settings.report_db_password)
        pool = make_report_pool(conninfo, max_size=settings.report_pool_size)
        return cls(pool, anyio.Semaphore(pool.max_size), settings.report_max_lag_s, seeks_standby(conninfo),
                   loop=anyio.lowlevel.current_token(), loop_thread=threading.get_ident())

    def note(self, source: str, state: StandbyState | None = None, why: str | None = None) -> None:
        self.last = {"source": source, "lag_s": None if state is None else state.lag_s, "at": time.time(),
                     **({"why": why} if why else {})}
        lag = state.lag_s if state is not None and state.in_recovery else None  # a primary has no replay lag
        self.lag_s = math.nan if lag is None else lag
        self.measured_at = time.monotonic()

    async def probe(self) -> None:
        """Measure where the pool reads and how far behind, now (unless it rests, or no connection is free within
        a second: then what the last measurement saw stands)."""
        if self.resting:
            return
        try:
            async with _pooled(self.pool, self.gate, 1.0, 2.0) as conn:
                state = await _in_thread(standby_state, conn)
            self.note("standby" if state.in_recovery else "primary", state)
            if not state.in_recovery:
                await self.look_for_standby()
            if not state.fresh(self.max_lag_s):
                self.note("stale", state, why="not streaming" if not state.streaming else "behind")
        except GateTimeout:
            pass  # busy with reports: what the last one saw stands
        except (PoolTimeout, psycopg.OperationalError) as exc:
            self.failed(exc)

    def scrape_lag(self) -> float:
        """The standby's lag for a Prometheus scrape (the metrics server's thread): measured now on the app's event
        loop, unless measured within LAG_FRESH_S (by a report, /healthz or a scrape). Scrapes arriving together wait
        for one measurement; one that takes longer than LAG_PROBE_TIMEOUT_S shows the last value."""
        with self.scraping:
            stale = time.monotonic() - self.measured_at >= LAG_FRESH_S
            if stale and self.loop is not None and threading.get_ident() != self.loop_thread:
                try:
                    anyio.from_thread.run(self._probe_briefly, token=self.loop)
                except RuntimeError as exc:  # the app's event loop has stopped
                    log.debug("standby lag not measured on scrape: %s", exc)
            return self.lag_s

    async def _probe_briefly(self) -> None:
        with anyio.move_on_after(LAG_PROBE_TIMEOUT_S):
            await self.probe()

    def failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self.down_until:
            log.warning("report pool unavailable (%s): reports read the primary for %.0f s", exc, REPORT_RETRY_S)
        self.down_until = time.monotonic() + REPORT_RETRY_S
        self.note("unavailable", why=type(exc).__name__)

    @property
    def resting(self) -> bool:
        return time.monotonic() < self.down_until

    async def look_for_standby(self) -> None:
        """The pool reads a primary (libpq found no standby when it connected): every REPORT_RETRY_S, replace its
        connections (those in use once given back), so a standby that came back is read again."""
        if self.seeks_standby and time.monotonic() - self.drained_at >= REPORT_RETRY_S:
            self.drained_at = time.monotonic()
            await _in_thread(self.pool.drain)


async def _give_back(checkout: AsyncExitStack) -> None:
    """Return a report connection unused. Committing a connection that broke fails; the pool still takes it back
    (and discards it), which is all that matters here."""
    with contextlib.suppress(psycopg.Error):
        await checkout.aclose()


@asynccontextmanager
async def report_connection(app: FastAPI, retry: str | None = None
                            ) -> AsyncIterator[tuple[psycopg.Connection, ReadSource]]:
    """A read-only connection for a heavy report, and where it reads. The report pool when configured, answering
    and fresh (a standby at most ``report_max_lag_s`` behind, or a primary its URL fell back to); otherwise the
    primary pool, in a READ ONLY transaction. ``retry``: why this report stopped on the standby (a
    :func:`stop_reason`): read it from the primary pool now. Counted in ``carewatch_api_report_reads_total``."""
    reports: ReportPool | None = getattr(app.state, "reports", None)
    async with AsyncExitStack() as stack:
        conn: psycopg.Connection | None = None
        source: ReadSource = "primary_pool"
        why = retry or ("not_configured" if reports is None else "unreachable")  # unreachable: now or lately
        if retry is None and reports is not None and not reports.resting:
            inner = AsyncExitStack()
            try:
                conn = await inner.enter_async_context(
                    _pooled(reports.pool, reports.gate, None, REPORT_CONNECT_WAIT_S))
                await _learn_statement_timeout(conn)
                state = await _in_thread(standby_state, conn)
            except GateTimeout:  # every report connection busy for the pool's whole timeout: spill over
                conn = None
                why = "busy"
            except (PoolTimeout, psycopg.OperationalError) as exc:
                await _give_back(inner)  # a connection that broke after checkout: the pool discards it
                conn = None
                reports.failed(exc)
            else:
                if state.fresh(reports.max_lag_s):
                    source = "standby" if state.in_recovery else "primary"
                    why = "fresh" if state.in_recovery else "no_standby"
                    reports.note(source, state)
                    stack.push_async_exit(inner)
                    if source == "primary":
                        await reports.look_for_standby()
                else:
                    why = "not_streaming" if not state.streaming else "lag"
                    reports.note("stale", state, why="not streaming" if not state.streaming else "behind")
                    log.info("standby too far behind (%s): this report reads the primary", state)
                    await _give_back(inner)
                    conn = None
        if conn is None:
            conn = await stack.enter_async_context(pooled_connection(app))
            await _learn_statement_timeout(conn)
            await _in_thread(conn.execute, "SET TRANSACTION READ ONLY")
        metrics.READS.labels(source, why).inc()
        yield conn, source


async def _learn_statement_timeout(conn: psycopg.Connection) -> None:
    """Before a report reads from a server build for the first time: where it raises a statement timeout (see
    :func:`stop_reason`)."""
    if not knows_statement_timeout(server_build(conn)):
        await _in_thread(learn_statement_timeout, conn)


async def report_status(app: FastAPI) -> dict[str, Any]:
    """For /healthz: where reports read now (probed when the pool rests not and has a connection free within a
    second), else what the last report saw."""
    reports: ReportPool | None = getattr(app.state, "reports", None)
    if reports is None:
        return {"source": "primary_pool", "configured": False}
    await reports.probe()
    return {**reports.last, "configured": True}


async def get_report_conn(request: Request) -> AsyncIterator[psycopg.Connection]:
    """A heavy report's connection (see :func:`report_connection`); ``request.state.read_source`` says where,
    ``read_build`` which server build (for :func:`stop_reason`). ``request.state.report_retry`` (set by
    :class:`ReportRoute`): the report is being read again, on the primary."""
    async with report_connection(request.app, getattr(request.state, "report_retry", None)) as (conn, source):
        request.state.read_source = source
        request.state.read_build = server_build(conn)
        yield conn


ReportConn = Annotated[psycopg.Connection, Depends(get_report_conn, scope="function")]


# ------------------------------------------------------------------------------------------------------------
# A report the database stopped: read again from the primary pool, else 503 (docs/operations.md, "Replay
# conflicts")
# ------------------------------------------------------------------------------------------------------------
#: Retry-After of a report that could be read neither on the standby nor on the primary.
REPORT_RETRY_AFTER_S = 10

#: What each stop means, for the 503's message (keys: what :func:`stop_reason` returns).
_STOPPED = {
    "conflict": "cancelled by a conflict with recovery: the standby had to replay a change on the primary that "
                "removed or locked what the report was reading",
    "cancelled": "cancelled by the database server (an operator's pg_cancel_backend, or a shutdown)",
    "statement_timeout": "stopped by the database's statement_timeout",
    "connection_lost": "its database session ended (the server restarted, failed over or ended the session)",
    "busy": "no connection to the primary was free in time",
}


def stop_reason(exc: BaseException, build: str | None = None) -> str | None:
    """Why the database stopped a report's query, when that is no fault of the report's (None otherwise: the
    route's own error, raised as it is). ``conflict``: SQLSTATE class 40 (40001 "canceling statement due to
    conflict with recovery", also the FATAL "terminating connection" of an idle transaction; 40P01 a deadlock with
    the startup process) or 57P04 (the database was dropped). ``cancelled``/``statement_timeout``: 57014, told
    apart by where the server ``build`` raised it (:func:`carewatch.db.is_statement_timeout`: not by its message,
    which follows lc_messages; a place not known counts as a timeout). ``connection_lost``: 57P01-57P03
    (pg_terminate_backend, shutdown) or no SQLSTATE (the connection broke). ``busy``: a pool gave no connection in
    time."""
    if isinstance(exc, PoolTimeout):
        return "busy"
    if not isinstance(exc, psycopg.OperationalError):
        return None
    sqlstate = exc.sqlstate or ""
    if sqlstate == "57014":
        return "statement_timeout" if is_statement_timeout(exc, build) else "cancelled"
    if sqlstate.startswith("40") or sqlstate == "57P04":
        return "conflict"
    if not sqlstate or sqlstate in ("57P01", "57P02", "57P03") or sqlstate.startswith("08"):
        return "connection_lost"
    return None


def _depends_on(dependant: Any, target: Any) -> bool:
    return any(d.call is target or _depends_on(d, target) for d in dependant.dependencies)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class ReportRoute(APIRoute):
    """The route class of every router that holds a heavy report (``APIRouter(route_class=ReportRoute)``): a route
    taking :data:`ReportConn` whose query the standby stops (:func:`stop_reason`: most often a replay conflict) is
    run again, once, on the primary pool, so the caller still gets the answer; one the database stops anywhere
    else, or that stops again, answers 503 with Retry-After and what happened. Other routes run as APIRoute's."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if not _depends_on(self.dependant, get_report_conn):
            return handler

        async def report(request: Request) -> Response:
            return await _read_with_retry(request, handler)

        return report


async def _attempt(request: Request, handler: Handler) -> Response:
    """One run of the route, its function-scoped dependencies (the report connection) closed when it ends: a
    report that failed has given its connection back (rolled back, or discarded when broken) before it is read
    again. FastAPI keeps that exit stack in the request's scope (``fastapi_function_astack``)."""
    outer = request.scope.get("fastapi_function_astack")
    if not isinstance(outer, AsyncExitStack):
        raise RuntimeError("FastAPI no longer keeps fastapi_function_astack in the request scope: ReportRoute "
                           "cannot run a report twice")
    try:
        async with AsyncExitStack() as stack:
            request.scope["fastapi_function_astack"] = stack
            return await handler(request)
    finally:
        request.scope["fastapi_function_astack"] = outer


async def _read_with_retry(request: Request, handler: Handler) -> Response:
    before = list(getattr(request.state, "audit_notes", None) or [])
    try:
        return await _attempt(request, handler)
    except Exception as exc:
        reason = stop_reason(exc, getattr(request.state, "read_build", None))
        source = getattr(request.state, "read_source", None)
        if reason is None or source is None:  # the route's own error, or one before it had its connection
            raise
        server = "standby" if source == "standby" else "primary"
        metrics.STOPS.labels(server, reason).inc()
        if server != "standby" or reason == "statement_timeout":  # the primary would stop it, or time out, again
            log.warning("report %s stopped on the %s (%s, SQLSTATE %s): 503", request.url.path, server, reason,
                        getattr(exc, "sqlstate", None))
            return _unavailable(reason)
        log.warning("report %s stopped on the standby (%s, SQLSTATE %s): reading it from the primary",
                    request.url.path, reason, getattr(exc, "sqlstate", None))
    first_notes = getattr(request.state, "audit_notes", None)
    request.state.audit_notes = list(before)  # the second run notes what it reads again
    request.state.read_source = None
    request.state.read_build = None
    request.state.report_retry = reason
    try:
        return await _attempt(request, handler)
    except Exception as exc:
        again = stop_reason(exc, getattr(request.state, "read_build", None))
        if again is None:
            raise
        if getattr(request.state, "read_source", None) is not None:  # it had its primary connection
            metrics.STOPS.labels("primary", again).inc()
        if len(request.state.audit_notes) <= len(before) and first_notes:  # audit what the first run read
            request.state.audit_notes = first_notes
        log.warning("report %s stopped on the standby (%s) and on the primary (%s, SQLSTATE %s): 503",
                    request.url.path, reason, again, getattr(exc, "sqlstate", None))
        return _unavailable(again, first=reason)


def _unavailable(reason: str, first: str | None = None) -> JSONResponse:
    """The 503 of a report the database stopped (``first``: on the standby, before ``reason`` on the primary):
    what happened, why, and what to do."""
    metrics.UNAVAILABLE.labels(reason).inc()
    if reason == "statement_timeout":
        return JSONResponse({"detail": f"This report was {_STOPPED[reason]} before it finished: ask for a shorter "
                                       "period, or ask an administrator about the timeout."},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    if first is not None:
        what = (f"This report was {_STOPPED[first]}, and reading it again from the primary failed too "
                f"({_STOPPED[reason]}).")
    else:
        what = f"This report was {_STOPPED[reason]}."
    return JSONResponse({"detail": f"{what} Nothing is wrong with the request: ask again in "
                                   f"{REPORT_RETRY_AFTER_S} seconds."},
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(REPORT_RETRY_AFTER_S)})
