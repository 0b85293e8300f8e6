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
pool in a READ ONLY transaction. Either way the route's queries are the same; only the connection differs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import psycopg
from fastapi import Depends, FastAPI, Request
from psycopg_pool import ConnectionPool, PoolTimeout

from carewatch.db import StandbyState, make_report_pool, report_conninfo, seeks_standby, standby_state
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

    @classmethod
    def open(cls, settings: Settings) -> ReportPool | None:
        """The pool of ``CAREWATCH_REPORT_DATABASE_URL``; None when unset. Call on the app's event loop."""
        if not settings.report_database_url:
            return None
        conninfo = report_conninfo(settings.report_database_url, settings.report_db_password)
        pool = make_report_pool(conninfo, max_size=settings.report_pool_size)
        return cls(pool, anyio.Semaphore(pool.max_size), settings.report_max_lag_s, seeks_standby(conninfo))

    def note(self, source: str, state: StandbyState | None = None, why: str | None = None) -> None:
        self.last = {"source": source, "lag_s": None if state is None else state.lag_s, "at": time.time(),
                     **({"why": why} if why else {})}

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
async def report_connection(app: FastAPI) -> AsyncIterator[tuple[psycopg.Connection, ReadSource]]:
    """A read-only connection for a heavy report, and where it reads. The report pool when configured, answering
    and fresh (a standby at most ``report_max_lag_s`` behind, or a primary its URL fell back to); otherwise the
    primary pool, in a READ ONLY transaction. Errors of the route itself are never retried elsewhere."""
    reports: ReportPool | None = getattr(app.state, "reports", None)
    async with AsyncExitStack() as stack:
        conn: psycopg.Connection | None = None
        source: ReadSource = "primary_pool"
        if reports is not None and not reports.resting:
            inner = AsyncExitStack()
            try:
                conn = await inner.enter_async_context(
                    _pooled(reports.pool, reports.gate, None, REPORT_CONNECT_WAIT_S))
                state = await _in_thread(standby_state, conn)
            except GateTimeout:  # every report connection busy for the pool's whole timeout: spill over
                conn = None
            except (PoolTimeout, psycopg.OperationalError) as exc:
                await _give_back(inner)  # a connection that broke after checkout: the pool discards it
                conn = None
                reports.failed(exc)
            else:
                if state.fresh(reports.max_lag_s):
                    source = "standby" if state.in_recovery else "primary"
                    reports.note(source, state)
                    stack.push_async_exit(inner)
                    if source == "primary":
                        await reports.look_for_standby()
                else:
                    reports.note("stale", state, why="not streaming" if not state.streaming else "behind")
                    log.info("standby too far behind (%s): this report reads the primary", state)
                    await _give_back(inner)
                    conn = None
        if conn is None:
            conn = await stack.enter_async_context(pooled_connection(app))
            await _in_thread(conn.execute, "SET TRANSACTION READ ONLY")
        yield conn, source


async def report_status(app: FastAPI) -> dict[str, Any]:
    """For /healthz: where reports read now (probed when the pool rests not and has a connection free within a
    second), else what the last report saw."""
    reports: ReportPool | None = getattr(app.state, "reports", None)
    if reports is None:
        return {"source": "primary_pool", "configured": False}
    if not reports.resting:
        try:
            async with _pooled(reports.pool, reports.gate, 1.0, 2.0) as conn:
                state = await _in_thread(standby_state, conn)
            reports.note("standby" if state.in_recovery else "primary", state)
            if not state.in_recovery:
                await reports.look_for_standby()
            if not state.fresh(reports.max_lag_s):
                reports.note("stale", state, why="not streaming" if not state.streaming else "behind")
        except GateTimeout:
            pass  # busy with reports: what the last one saw stands
        except (PoolTimeout, psycopg.OperationalError) as exc:
            reports.failed(exc)
    return {**reports.last, "configured": True}


async def get_report_conn(request: Request) -> AsyncIterator[psycopg.Connection]:
    """A heavy report's connection (see :func:`report_connection`); ``request.state.read_source`` says where."""
    async with report_connection(request.app) as (conn, source):
        request.state.read_source = source
        yield conn


ReportConn = Annotated[psycopg.Connection, Depends(get_report_conn, scope="function")]
