"""The audit trail: who read or changed whose data, from where, and with what result.

Routes *note* what they touch (:func:`note`, usually through the request context in ``deps``); a middleware
writes one ``audit_log`` row per note after the route has run, with the final HTTP status, on its own
autocommit connection, so refused and failed attempts are recorded too (a rolled-back request still leaves its
audit row). Every request outside ``UNAUDITED_PREFIXES`` leaves at least one row, including anonymous ones (a
401, a 422 before sign-in): probing is visible. A request with no note of its own names the subject in its
path (``/residents/{resident_id}`` -> resident), so a 403 says whose data was asked for. If the audit row cannot
be written, the response is replaced by a 503: health data is not served without a record of who saw it.

``audit_log`` is append-only: the application's database role may only INSERT and SELECT it (migration 0008),
and a trigger refuses UPDATE, DELETE and TRUNCATE even to its owner.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from carewatch.api.network import client_address
from carewatch.api.pooling import permit

log = logging.getLogger(__name__)

#: Paths that are never audited (no personal data, no authentication).
UNAUDITED_PREFIXES = ("/healthz", "/docs", "/redoc", "/openapi.json")
_METHOD_ACTION = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "PATCH": "update",
                  "DELETE": "delete"}


@dataclass
class AuditNote:
    action: str  # read, create, update, delete, export, login, login_failed
    subject_type: str | None = None  # resident, household, site, alert, device, gateway, user, audit
    subject_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def note(request: Request, action: str, subject_type: str | None = None, subject_id: str | None = None,
         **detail: Any) -> None:
    """Record (at the end of the request) that this request did ``action`` on this subject."""
    _notes(request).append(AuditNote(action, subject_type, None if subject_id is None else str(subject_id), detail))


def _notes(request: Request) -> list[AuditNote]:
    notes = getattr(request.state, "audit_notes", None)
    if notes is None:
        notes = []
        request.state.audit_notes = notes
    return notes


def set_identity(request: Request, username: str | None, role: str | None) -> None:
    """Who is making this request (set by authentication, or by the login route for the attempted name)."""
    request.state.audit_user = (username, role)


def client_of(request: Request) -> str:
    address = client_address(request)
    agent = request.headers.get("user-agent", "-")[:200]
    return f"{address}; {agent}"


def default_action(method: str) -> str:
    return _METHOD_ACTION.get(method.upper(), method.lower())


def rows_for(request: Request, status_code: int) -> list[dict[str, Any]]:
    """The audit rows this request should leave (empty for unaudited, anonymous and note-less requests)."""
    path = request.url.path
    if path.startswith(UNAUDITED_PREFIXES):
        return []
    notes = list(getattr(request.state, "audit_notes", []))
    username, role = getattr(request.state, "audit_user", (None, None))
    if not notes:
        notes = [AuditNote(default_action(request.method), *path_subject(request))]
    base = {"username": username, "role": role, "method": request.method, "path": path[:500],
            "status": status_code, "client": client_of(request)}
    return [{**base, "action": n.action, "subject_type": n.subject_type, "subject_id": n.subject_id,
             "detail": Jsonb(n.detail)} for n in notes]


#: Path parameters that name a subject, and its kind, most specific first.
_PATH_SUBJECTS = (("alert_id", "alert"), ("resident_id", "resident"), ("device_id", "device"),
                  ("gateway_id", "gateway"), ("household_id", "household"), ("site_id", "site"),
                  ("username", "user"))


def path_subject(request: Request) -> tuple[str | None, str | None]:
    """(kind, id) of the subject the request's path names, e.g. ('resident', 'r-17'); (None, None) if none."""
    path_params = request.scope.get("path_params") or {}
    for name, kind in _PATH_SUBJECTS:
        if path_params.get(name) is not None:
            return kind, str(path_params[name])[:200]
    return None, None


def insert_rows(pool: ConnectionPool, rows: list[dict[str, Any]]) -> None:
    with pool.connection() as conn, conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO audit_log (username, role, action, method, path, subject_type, subject_id, status,
                                      client, detail)
               VALUES (%(username)s, %(role)s, %(action)s, %(method)s, %(path)s, %(subject_type)s,
                       %(subject_id)s, %(status)s, %(client)s, %(detail)s)""",
            rows,
        )


async def write_rows(request: Request, rows: list[dict[str, Any]]) -> None:
    """Insert and commit on a pool connection of its own (not the request's, which may roll back)."""
    async with permit(request.app):
        await run_in_threadpool(insert_rows, request.app.state.pool, rows)


async def audit_middleware(request: Request, call_next: Any) -> Response:
    """Run the request, then write its audit rows (fail closed: no audit row, no data)."""
    try:
        response: Response = await call_next(request)
    except Exception:
        rows = rows_for(request, 500)
        if rows:
            try:
                await write_rows(request, rows)
            except Exception:  # the original error matters more; it is re-raised below
                log.exception("audit write failed")
        raise
    rows = rows_for(request, response.status_code)
    if rows:
        try:
            await write_rows(request, rows)
        except Exception:
            log.exception("audit write failed; withholding the response")
            return JSONResponse({"detail": "the audit trail is unavailable; try again shortly"}, status_code=503)
    return response
