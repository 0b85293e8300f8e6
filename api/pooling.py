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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import anyio.to_thread
import psycopg
from fastapi import Depends, FastAPI, Request
from psycopg_pool import ConnectionPool, PoolTimeout


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
    pool: ConnectionPool = app.state.pool
    gate: anyio.Semaphore = app.state.conn_gate
    wait = pool.timeout if timeout is None else timeout
    with anyio.move_on_after(wait) as waiting:
        await gate.acquire()
    if waiting.cancelled_caught:
        raise PoolTimeout(f"couldn't get a connection after {wait:.2f} sec")
    try:
        yield wait
    finally:
        gate.release()


@asynccontextmanager
async def pooled_connection(app: FastAPI, *, timeout: float | None = None) -> AsyncIterator[psycopg.Connection]:
    """A pool connection held across awaits, committed when the block succeeds and rolled back when it raises
    (as ``pool.connection()``). For work done in one go, take a :func:`permit` and use the pool in the thread."""
    pool: ConnectionPool = app.state.pool
    async with permit(app, timeout=timeout) as wait:
        checkout = pool.connection(timeout=wait)
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
