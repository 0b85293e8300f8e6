"""The Carewatch HTTP API: ``create_app()`` builds it; ``carewatch api`` serves it with uvicorn.

Every route except the allow-list in ``PUBLIC_PATHS`` needs a bearer token; scope and audit are applied by
``deps.Ctx`` (see ``scope`` and ``audit``). Errors never carry stack traces: bad input is a 422 listing each
field and what is wrong with it, conflicts are 409, anything unexpected is a bare 500 with a request id that
is also in the server log.
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from carewatch.api import (
    audit,
    auth,
    errors,
    pooling,
    routes_alerts,
    routes_devices,
    routes_households,
    routes_observations,
    routes_reports,
    routes_residents,
    routes_sites,
    routes_users,
)
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import carewatch
from carewatch.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Routes that answer without a token. Anything else must depend on ``deps.current_principal``
#: (tests/api/test_rbac.py fails when a route is neither here nor authenticated).
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
"""


class Health(BaseModel):
    status: str
    database: str


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
        code = status.HTTP_409_CONFLICT
        if isinstance(exc, psycopg.errors.CheckViolation | psycopg.errors.ForeignKeyViolation
                      | psycopg.errors.NotNullViolation):
            return errors.unprocessable(errors.field_errors(
                f"refused by the database rule {constraint}: check the values (and that what they name exists)"))
        return JSONResponse({"detail": f"the change conflicts with existing data ({constraint})"}, status_code=code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", request_id, request.method, request.url.path)
        return JSONResponse({"detail": "internal error", "request_id": request_id},
                            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)


def _ping(pool: ConnectionPool, timeout: float) -> None:
    with pool.connection(timeout=timeout) as conn:
        conn.execute("SELECT 1")


async def _limit_body(request: Request, call_next: Any) -> Any:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return JSONResponse({"detail": f"request body too large (at most {MAX_BODY_BYTES} bytes)"},
                            status_code=status.HTTP_413_CONTENT_TOO_LARGE)
    return await call_next(request)


def create_app(settings: Settings | None = None, *, pool: ConnectionPool | None = None,
               freeze_gc: bool = False) -> FastAPI:
    """Build the API. ``pool`` lets a caller share one; otherwise one is opened (and closed) with the app.

    ``freeze_gc`` (a serving process, see ``create_served_app``): after startup, move every object alive into the
    GC's permanent generation. Not for processes that build many apps (tests): nothing frozen is ever collected."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_pool = pool is None
        app.state.pool = pool or ConnectionPool(settings.dsn, min_size=1, max_size=8, open=False,
                                                name="carewatch-api", kwargs={"application_name": "carewatch-api"})
        if own_pool:
            app.state.pool.open(wait=False)
        app.state.conn_gate = pooling.gate_for(app.state.pool)  # every checkout waits here, not in a thread
        if freeze_gc:
            # Startup objects (routes, schemas, models) live as long as the process: keep them out of the cyclic
            # GC, whose full collections over them were the overview's worst latencies (bench_api.py: p99 ~80 ms).
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if own_pool:
                app.state.pool.close()

    app = FastAPI(title="Carewatch API", version=carewatch.__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url="/docs", redoc_url="/redoc", responses=errors.COMMON_RESPONSES)
    app.state.settings = settings
    app.state.login_limiter = auth.LoginRateLimiter()
    _install_error_handlers(app)
    app.middleware("http")(audit.audit_middleware)
    app.middleware("http")(errors.refuse_nul)  # PostgreSQL cannot store NUL: a 422 before any route runs
    app.middleware("http")(_limit_body)  # added last = outermost: refuses huge bodies before anything else

    @app.get("/healthz", tags=["health"], summary="Liveness and database check (no sign-in)",
             response_model=Health, responses={503: {"model": Health, "description": "Database unreachable"}})
    async def healthz(request: Request) -> JSONResponse:
        try:
            async with pooling.permit(request.app, timeout=2) as wait:
                await run_in_threadpool(_ping, request.app.state.pool, wait)
        except Exception:
            return JSONResponse({"status": "degraded", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    app.include_router(auth.router)
    for module in (routes_users, routes_sites, routes_residents, routes_observations, routes_alerts,
                   routes_households, routes_devices):
        app.include_router(module.router)
    app.include_router(routes_reports.router)
    return app


def create_served_app() -> FastAPI:
    """The app as a long-running server runs it (``carewatch api``; uvicorn factory for worker processes)."""
    return create_app(freeze_gc=True)
