"""The Carewatch HTTP API: ``create_app()`` builds it; ``carewatch api`` serves it with uvicorn.

Every route except the allow-list in ``PUBLIC_PATHS`` needs a bearer token; scope and audit are applied by
``deps.Ctx`` (see ``scope`` and ``audit``). Errors never carry stack traces: bad input is a 422 listing each
field and what is wrong with it, conflicts are 409, anything unexpected is a bare 500 with a request id that
is also in the server log.
"""

from __future__ import annotations

import gc
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import carewatch
from carewatch.api import (
    audit,
    auth,
    errors,
    metrics,
    network,
    pooling,
    routes_alerts,
    routes_devices,
    routes_escalation,
    routes_households,
    routes_incidents,
    routes_kits,
    routes_observations,
    routes_reports,
    routes_residents,
    routes_sites,
    routes_users,
)
from carewatch.db import report_conninfo
from carewatch.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Routes that answer without a token. Anything else must depend on ``deps.current_principal`` (or, for heavy
#: reports, ``deps.report_principal``; tests/api/test_api_rbac.py fails when a route is neither here nor
#: authenticated).
PUBLIC_PATHS = frozenset({"/healthz", "/auth/token", "/auth/refresh", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json"})
MAX_BODY_BYTES = 256 * 1024

DESCRIPTION = """
Carewatch's data for people and other systems: care-home dashboards, GP systems, council tools.

* **Sign in** with `POST /auth/token` (OAuth2 password flow; the *Authorize* button above does it for you).
  Access tokens are short-lived; swap the refresh token at `POST /auth/refresh`.
* **Scope**: care staff and managers see their own site, GPs the residents registered with their practice,
  council users their council's households (clinical vitals only with the household's recorded consent),
  admins everything. Another tenant's resource answers **404**; an action your role may never take answers
  **403**.
* **Audit**: every read and write of a person's data is recorded with who, what, when and from where.
* **Paging**: `limit` (at most 500) and `offset`; each page says its `next_offset`.
* **Bad input** is a **422** naming each field and what is wrong with it, whoever found the fault (validation,
  the NEWS2 scorer, a database rule). Bodies over 256 KiB are refused with **413**, whether the size is
  declared (Content-Length) or the body is streamed (chunked).
"""


class Health(BaseModel):
    """``status`` is 'degraded' when the database is unreachable (503) or some site has gone unscored past the
    stall limit (200: the API itself works); ``scoring`` is scoring/replicas.py's view of the scorer replicas;
    ``reports`` where heavy read-only reports read (a report pool that falls back is not degraded: they still
    answer, from the primary)."""

    status: str
    database: str
    scoring: dict[str, Any] | None = None
    reports: dict[str, Any] | None = Field(
        default=None, description="Where heavy read-only reports read: 'standby', 'primary' (the report login's "
        "URL found no standby), 'primary_pool' (no report pool configured), 'stale' (the standby is behind or not "
        "streaming: reports read the primary pool) or 'unavailable' (nothing of the report URL answers: reports "
        "read the primary pool); with the standby's lag in seconds.")


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Field-level messages without echoing the input back (it may hold an NHS number or a password)."""
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "form") else loc)
        errors.append({"loc": loc, "field": field or "request", "msg": str(err.get("msg", "")).removeprefix(
            "Value error, "), "type": err.get("type", "value_error")})
    return errors


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _bad_input(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": errors, "message": summary}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == status.HTTP_422_UNPROCESSABLE_CONTENT:  # one 422 shape, however it was raised
            return errors.unprocessable(errors.field_errors(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(psycopg.errors.IntegrityError)
    async def _conflict(request: Request, exc: psycopg.errors.IntegrityError) -> JSONResponse:
        constraint = exc.diag.constraint_name or "a database rule"
        if isinstance(exc, psycopg.errors.CheckViolation | psycopg.errors.ForeignKeyViolation
                      | psycopg.errors.NotNullViolation):
            fields = await _constraint_fields(request.app, exc)
            if fields:
                return errors.unprocessable(errors.body_errors(fields, errors.constraint_message(exc)))
            return errors.unprocessable(errors.field_errors(
                f"refused by the database rule {constraint}: check the values (and that what they name exists)"))
        return JSONResponse({"detail": f"the change conflicts with existing data ({constraint})"},
                            status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(OverflowError)
    @app.exception_handler(RecursionError)
    @app.exception_handler(psycopg.errors.DataError)
    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        """A date or number too far out to compute with (year 1, year 9999 plus a day), or input too deeply
        nested: the input's fault, so a 422 (audited like any answer), never a 500."""
        log.info("input out of range on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return errors.unprocessable(errors.field_errors(
            "a date, time or number is out of the range that can be handled, or the input is nested too deeply"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", request_id, request.method, request.url.path)
        return JSONResponse({"detail": "internal error", "request_id": request_id},
                            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


async def _constraint_fields(app: FastAPI, exc: psycopg.errors.IntegrityError) -> tuple[str, ...]:
    """The columns of the violated constraint (the request's own connection is gone by now: ask on another).
    () when the catalogue cannot be read right now; the 422 then names the request as a whole."""
    known = errors.known_constraint_columns(exc)
    if known is not None:
        return known

    def lookup(pool: ConnectionPool, wait: float) -> tuple[str, ...]:
        with pool.connection(timeout=wait) as conn:
            return errors.constraint_columns(conn, exc)

    try:
        async with pooling.permit(app, timeout=2) as wait:
            return await run_in_threadpool(lookup, app.state.pool, wait)
    except Exception:
        log.warning("could not look up the columns of constraint %s", exc.diag.constraint_name, exc_info=True)
        return ()


def _ping(pool: ConnectionPool, timeout: float, stall_after_s: float) -> dict[str, Any]:
    """The database answers; and how the scorer replicas are doing (live, buckets held, stalled sites)."""
    from datetime import timedelta

    from carewatch.scoring.replicas import scoring_health

    with pool.connection(timeout=timeout) as conn:
        conn.execute("SELECT 1")
        return dict(scoring_health(conn, timedelta(seconds=stall_after_s)).as_dict())


class BodyLimit:
    """ASGI middleware: a 413 for any request body over ``max_bytes``, before any other code reads it.

    A declared Content-Length is refused at once. The body is then counted as it arrives, so a client cannot get
    round the limit by streaming it chunked (no Content-Length): this reads at most ``max_bytes`` + one chunk,
    then stops. A body within the limit is replayed to the app (``errors.refuse_nul`` reads every body whole
    anyway, so holding it here costs nothing more)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refuse(self) -> JSONResponse:
        return JSONResponse({"detail": f"request body too large (at most {self.max_bytes} bytes)"},
                            status_code=status.HTTP_413_CONTENT_TOO_LARGE, headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client hung up mid-body: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse()(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def create_app(settings: Settings | None = None, *, pool: ConnectionPool | None = None,
               freeze_gc: bool = False) -> FastAPI:
    """Build the API. ``pool`` lets a caller share one; otherwise one is opened (and closed) with the app.

    ``freeze_gc`` (a serving process, see ``create_served_app``): after startup, move every object alive into the
    GC's permanent generation. Not for processes that build many apps (tests): nothing frozen is ever collected."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_pool = pool is None
        # check: a connection to a primary that failed over is found dead at checkout and replaced (through the
        # multi-host DSN, with the new primary), not handed to a request (docs/operations.md)
        app.state.pool = pool or ConnectionPool(settings.dsn, min_size=1, max_size=8, open=False,
                                                name="carewatch-api", kwargs={"application_name": "carewatch-api"},
                                                check=ConnectionPool.check_connection)
        if own_pool:
            app.state.pool.open(wait=False)
        app.state.conn_gate = pooling.gate_for(app.state.pool)  # every checkout waits here, not in a thread
        # heavy read-only reports: their own small pool on a standby, when CAREWATCH_REPORT_DATABASE_URL is set
        app.state.reports = pooling.ReportPool.open(settings)
        if app.state.reports is not None:  # the lag gauge is measured on scrape, through this pool
            metrics.measure_lag_with(app.state.reports.scrape_lag)
        if freeze_gc:
            # Startup objects (routes, schemas, models) live as long as the process: keep them out of the cyclic
            # GC, whose full collections over them were the overview's worst latencies (bench_api.py: p99 ~80 ms).
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if app.state.reports is not None:
                metrics.stop_measuring_lag(app.state.reports.scrape_lag)
                app.state.reports.pool.close()
            if own_pool:
                app.state.pool.close()

    app = FastAPI(title="Carewatch API", version=carewatch.__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url="/docs", redoc_url="/redoc", responses=errors.COMMON_RESPONSES)
    settings.verification_keys()  # refuse to start with a short or published signing key (WeakSecretError)
    if settings.report_database_url:  # and with a short or published report login password
        report_conninfo(settings.report_database_url, settings.report_db_password)
    network.parse_proxies(settings.trusted_proxies)  # and with a malformed proxy list
    app.state.settings = settings
    app.state.hash_slots = threading.BoundedSemaphore(settings.login_hash_concurrency)
    _install_error_handlers(app)
    app.middleware("http")(errors.refuse_nul)  # NUL (PostgreSQL cannot store it), deep JSON: 422, audited
    app.middleware("http")(audit.audit_middleware)
    app.middleware("http")(security_headers)  # outside audit: every answer, even a 503 from the audit trail
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)  # added last = outermost: before anything reads

    @app.get("/healthz", tags=["health"], summary="Liveness and database check (no sign-in)",
             response_model=Health, responses={503: {"model": Health, "description": "Database unreachable"}})
    async def healthz(request: Request) -> JSONResponse:
        try:
            async with pooling.permit(request.app, timeout=2) as wait:
                scoring = await run_in_threadpool(_ping, request.app.state.pool, wait, settings.scorer_stall_after_s)
        except Exception:
            return JSONResponse({"status": "degraded", "database": "unreachable"}, status_code=503)
        reports = await pooling.report_status(request.app)
        return JSONResponse({"status": "ok" if not scoring["stalled_sites"] else "degraded", "database": "ok",
                             "scoring": scoring, "reports": reports})

    app.include_router(auth.router)
    for module in (routes_users, routes_sites, routes_residents, routes_observations, routes_kits, routes_alerts,
                   routes_incidents,
                   routes_households, routes_devices, routes_escalation):
        app.include_router(module.router)
    app.include_router(routes_reports.router)
    return app


#: Paths whose answers hold nothing personal and may be cached.
CACHEABLE_PREFIXES = ("/docs", "/redoc", "/openapi.json")


async def security_headers(request: Request, call_next: Any) -> Response:
    """Headers on every answer: no MIME sniffing, HTTPS only from now on (HSTS; browsers ignore it over plain
    HTTP, the TLS proxy in front makes it count), and no caching of anything that may hold clinical data
    (FHIR, CSV and PDF exports included) by browsers or intermediaries."""
    response: Response = await call_next(request)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not request.url.path.startswith(CACHEABLE_PREFIXES):
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    return response


def server_config(app: Any, host: str, port: int, **options: Any) -> Any:
    """uvicorn's configuration for serving the API. Proxy headers are off: uvicorn would believe
    X-Forwarded-For from any local peer; ``api.network.client_address`` believes only configured proxies."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, proxy_headers=False, server_header=False,
                          **{"log_level": "warning", **options})


def create_served_app() -> FastAPI:
    """The app as a long-running server runs it (``carewatch api``; uvicorn factory for worker processes)."""
    return create_app(freeze_gc=True)
