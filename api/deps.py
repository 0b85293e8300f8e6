"""Request dependencies: a database connection, the authenticated caller, and the request context.

Routes take ``ctx: Ctx`` and never build tenancy rules themselves: ``ctx.resident(...)`` and friends check
scope (``carewatch.api.scope``) and note the access for the audit trail in one step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from starlette.concurrency import run_in_threadpool

from carewatch.api import audit, scope, sessions
from carewatch.api.auth import decode_token, unauthorised
from carewatch.api.pooling import (  # noqa: F401  (get_conn, ReportRoute: the routes')
    Conn,
    ReportConn,
    ReportRoute,
    get_conn,
    pooled_connection,
)
from carewatch.api.scope import Permission, Principal
from carewatch.api.users import get_user
from carewatch.settings import Settings

MAX_LIMIT = 500
#: A tablet in practice mode (training a new carer) sends this: it sees practice residents only (api/scope.py).
PRACTICE_HEADER = "X-Carewatch-Practice"
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def current_principal(request: Request, conn: Conn,
                      token: Annotated[str | None, Depends(oauth2_scheme)]) -> Principal:
    """The caller, from a valid access token and their *current* users row (401 otherwise)."""
    return authenticate(request, conn, token)


async def report_principal(request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]) -> Principal:
    """:func:`current_principal` for heavy reports: the same check on the primary (a session revoked a moment ago
    is refused, whatever a standby still holds), on a connection given back before the report runs."""
    async with pooled_connection(request.app) as conn:
        return await run_in_threadpool(authenticate, request, conn, token)


def authenticate(request: Request, conn: psycopg.Connection, token: str | None) -> Principal:
    """The check both dependencies make, on a connection to the primary (users, auth_sessions)."""
    if not token:
        raise unauthorised("not signed in")
    settings: Settings = request.app.state.settings
    claims = decode_token(token, settings, "access")
    audit.set_identity(request, str(claims["sub"])[:64], None)  # a refusal below is audited under this name
    user = get_user(conn, claims["sub"])
    if user is None or not user.active:
        raise unauthorised("account disabled or removed")
    if not sessions.is_active(conn, str(claims["sid"]), user.username):
        raise unauthorised("session ended (signed out, password or role changed): sign in again")
    principal = Principal.from_user(user)
    if request.headers.get(PRACTICE_HEADER, "").strip().lower() in ("1", "true", "yes"):
        principal = dataclasses.replace(principal, practice=True)  # a tablet in practice mode: practice data only
    audit.set_identity(request, principal.username, principal.role.value)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


@dataclass
class Ctx:
    """Everything a route needs: the connection, the caller, and audit-noting scope checks."""

    request: Request
    conn: psycopg.Connection
    principal: Principal

    # --- permission and scope --------------------------------------------------------------------------
    def require(self, permission: Permission) -> None:
        scope.require(self.principal, permission)

    @property
    def params(self) -> dict[str, Any]:
        return scope.params(self.principal)

    def note(self, action: str, subject_type: str | None = None, subject_id: Any = None, **detail: Any) -> None:
        audit.note(self.request, action, subject_type, None if subject_id is None else str(subject_id), **detail)

    def resident(self, resident_id: str, *, action: str = "read", clinical: bool = False,
                 **detail: Any) -> dict[str, Any]:
        self.note(action, "resident", resident_id, **detail)  # noted first: refused attempts are audited too
        return scope.load_resident(self.conn, self.principal, resident_id, clinical=clinical)

    def site(self, site_id: str, *, action: str = "read", **detail: Any) -> dict[str, Any]:
        self.note(action, "site", site_id, **detail)
        return scope.load_site(self.conn, self.principal, site_id)

    def household(self, site_id: str, *, action: str = "read", **detail: Any) -> dict[str, Any]:
        self.note(action, "household", site_id, **detail)
        return scope.load_household(self.conn, self.principal, site_id)

    def alert(self, alert_id: int, *, action: str = "read", **detail: Any) -> dict[str, Any]:
        self.note(action, "alert", alert_id, **detail)
        return scope.load_alert(self.conn, self.principal, alert_id)

    def device(self, device_id: str, *, action: str = "read", **detail: Any) -> dict[str, Any]:
        self.note(action, "device", device_id, **detail)
        return scope.load_device(self.conn, self.principal, device_id)

    def gateway(self, gateway_id: str, *, action: str = "read", **detail: Any) -> dict[str, Any]:
        self.note(action, "gateway", gateway_id, **detail)
        return scope.load_gateway(self.conn, self.principal, gateway_id)


def context(request: Request, conn: Conn, principal: CurrentPrincipal) -> Ctx:
    return Ctx(request, conn, principal)


Context = Annotated[Ctx, Depends(context)]


def report_context(request: Request, principal: Annotated[Principal, Depends(report_principal)],
                   conn: ReportConn) -> Ctx:
    """The context of a heavy read-only report: the same caller, scope checks and audit notes as :data:`Context`,
    with a read-only connection that reads a standby when one is configured and fresh (``pooling.ReportConn``,
    taken only once the caller is signed in). Audit rows are still written to the primary by the audit
    middleware, as for every request."""
    return Ctx(request, conn, principal)


#: For heavy read-only reports that tolerate a standby's replication lag (docs/operations.md lists them). Their
#: router takes ``route_class=ReportRoute``: a report the standby cancels is read again from the primary.
ReportContext = Annotated[Ctx, Depends(report_context)]


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (at most {MAX_LIMIT}).")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")] = 0,
) -> PageParams:
    return PageParams(limit, offset)


Paging = Annotated[PageParams, Depends(page_params)]
