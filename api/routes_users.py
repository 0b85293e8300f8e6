"""Users (admin only), the caller's own profile, and the audit log (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from psycopg.rows import dict_row

from carewatch.api import errors, users
from carewatch.api.auth import Me
from carewatch.api.deps import Context, Paging, ReportContext, ReportRoute
from carewatch.api.schemas import AuditOut, Page, PasswordIn, UserCreate, UserOut, UserUpdate, page_of
from carewatch.api.scope import Permission
from carewatch.api.users import Role, User, UserError

router = APIRouter(tags=["users"], route_class=ReportRoute)  # its reports: see ReportRoute


def _out(user: User) -> UserOut:
    return UserOut(username=user.username, full_name=user.full_name, role=user.role, site_id=user.site_id,
                   practice_code=user.practice_code, council=user.council, active=user.active,
                   created_at=user.created_at, gateway_id=user.gateway_id)


def _bad(exc: UserError) -> HTTPException:
    code = status.HTTP_409_CONFLICT if "already exists" in str(exc) else status.HTTP_422_UNPROCESSABLE_CONTENT
    if str(exc).startswith("no user"):
        code = status.HTTP_404_NOT_FOUND
    if code == status.HTTP_422_UNPROCESSABLE_CONTENT and exc.fields:
        return HTTPException(code, errors.body_errors(exc.fields, str(exc)))
    return HTTPException(code, str(exc))


@router.get("/auth/me", response_model=Me, tags=["auth"], summary="Who am I (role and scope)")
def me(ctx: Context) -> Me:
    p = ctx.principal
    return Me(username=p.username, full_name=p.full_name, role=p.role.value, site_id=p.site_id,
              practice_code=p.practice_code, council=p.council)


@router.get("/users", response_model=Page[UserOut], summary="List users (admin)")
def list_users(ctx: Context, paging: Paging, role: Role | None = None, site: str | None = None,
               active: bool | None = None) -> dict:
    ctx.require(Permission.MANAGE_USERS)
    found = users.list_users(ctx.conn, role=role, site_id=site, active=active, limit=paging.limit + 1,
                             offset=paging.offset)
    ctx.note("read", "user", None, count=min(len(found), paging.limit))
    return page_of([_out(u) for u in found], paging.limit, paging.offset)


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED, summary="Create a user (admin)")
def create_user(ctx: Context, body: UserCreate) -> UserOut:
    ctx.require(Permission.MANAGE_USERS)
    ctx.note("create", "user", body.username, role=body.role.value)
    try:
        user = users.create_user(ctx.conn, body.username, body.role, password=body.password,
                                 full_name=body.full_name, site_id=body.site_id, practice_code=body.practice_code,
                                 council=body.council, gateway_id=body.gateway_id)
    except UserError as exc:
        raise _bad(exc) from None
    return _out(user)


@router.get("/users/{username}", response_model=UserOut, summary="One user (admin)")
def get_user(ctx: Context, username: str) -> UserOut:
    ctx.require(Permission.MANAGE_USERS)
    ctx.note("read", "user", username)
    user = users.get_user(ctx.conn, username)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
    return _out(user)


@router.patch("/users/{username}", response_model=UserOut, summary="Change a user's name, role, scope or state")
def update_user(ctx: Context, username: str, body: UserUpdate) -> UserOut:
    ctx.require(Permission.MANAGE_USERS)
    changes = body.model_dump(exclude_unset=True)
    ctx.note("update", "user", username, fields=sorted(changes))
    cleared = [name for name in ("full_name", "role", "active") if name in changes and changes[name] is None]
    if cleared:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [
            {"loc": ["body", name], "field": name, "msg": "cannot be cleared", "type": "value_error"}
            for name in cleared])
    try:
        return _out(users.update_user(ctx.conn, username, **changes))
    except UserError as exc:
        raise _bad(exc) from None


@router.delete("/users/{username}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Disable a user (never deleted: the audit log names them)")
def disable_user(ctx: Context, username: str) -> None:
    ctx.require(Permission.MANAGE_USERS)
    ctx.note("delete", "user", username)
    if username.strip().lower() == ctx.principal.username:
        raise HTTPException(status.HTTP_409_CONFLICT, "you cannot disable your own account")
    try:
        users.disable_user(ctx.conn, username)
    except UserError as exc:
        raise _bad(exc) from None


@router.post("/users/{username}/password", status_code=status.HTTP_204_NO_CONTENT,
             summary="Set a user's password (ends their sessions)")
def set_password(ctx: Context, username: str, body: PasswordIn) -> None:
    ctx.require(Permission.MANAGE_USERS)
    ctx.note("update", "user", username, field="password")
    try:
        users.set_password(ctx.conn, username, body.password)
    except UserError as exc:
        raise _bad(exc) from None


@router.get("/audit", response_model=Page[AuditOut], tags=["audit"], summary="Search the audit log (admin)")
def search_audit(
    ctx: ReportContext,
    paging: Paging,
    username: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    action: str | None = None,
    status_code: Annotated[int | None, Query(alias="status", ge=100, le=599)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict:
    ctx.require(Permission.READ_AUDIT)
    ctx.note("read", "audit", None)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT * FROM audit_log
               WHERE (%(username)s::text IS NULL OR username = %(username)s)
                 AND (%(subject_type)s::text IS NULL OR subject_type = %(subject_type)s)
                 AND (%(subject_id)s::text IS NULL OR subject_id = %(subject_id)s)
                 AND (%(action)s::text IS NULL OR action = %(action)s)
                 AND (%(status)s::int IS NULL OR status = %(status)s)
                 AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
                 AND (%(until)s::timestamptz IS NULL OR at < %(until)s)
               ORDER BY audit_id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {"username": username, "subject_type": subject_type, "subject_id": subject_id, "action": action,
             "status": status_code, "since": since, "until": until, "limit": paging.limit + 1,
             "offset": paging.offset},
        ).fetchall()
    return page_of([AuditOut(**r) for r in rows], paging.limit, paging.offset)
