"""``carewatch users``: add, list, passwd and disable users from the command line (mounted by carewatch.cli)."""

from __future__ import annotations

import sys
from typing import Annotated

import psycopg
import typer

from carewatch.api.users import Role, UserError, create_user, disable_user, list_users, set_password
from carewatch.settings import get_settings

users_app = typer.Typer(help="Manage users and roles (admin): add, list, passwd, disable.", no_args_is_help=True)


def _connect() -> psycopg.Connection:
    return psycopg.connect(get_settings().dsn)


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@users_app.command("add")
def add(
    username: Annotated[str, typer.Argument(help="Login name (lower case).")],
    role: Annotated[Role, typer.Option(help="care_staff | manager | gp | council | admin")],
    site: Annotated[str | None, typer.Option(help="Site id (care_staff, manager).")] = None,
    practice: Annotated[str | None, typer.Option(help="GP practice code (gp).")] = None,
    council: Annotated[str | None, typer.Option(help="Council (council).")] = None,
    full_name: Annotated[str | None, typer.Option(help="Name shown in the audit log and dashboard.")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from the first line of stdin.")] = False,
) -> None:
    """Add a user. The password is prompted for (twice) unless --password-stdin is given."""
    password = _read_password(password_stdin)
    try:
        with _connect() as conn:
            user = create_user(conn, username, role, password=password, full_name=full_name, site_id=site,
                               practice_code=practice, council=council)
    except UserError as exc:
        raise _fail(exc) from None
    typer.echo(f"added {user.username} ({user.role.value})")


@users_app.command("list")
def list_cmd(
    role: Annotated[Role | None, typer.Option(help="Only this role.")] = None,
    site: Annotated[str | None, typer.Option(help="Only this site.")] = None,
) -> None:
    """List users: username, role, scope, active."""
    with _connect() as conn:
        users = list_users(conn, role=role, site_id=site, limit=10_000)
    for user in users:
        scope = user.site_id or user.practice_code or user.council or "-"
        state = "active" if user.active else "disabled"
        typer.echo(f"{user.username}\t{user.role.value}\t{scope}\t{state}\t{user.full_name}")


@users_app.command("passwd")
def passwd(
    username: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option(help="Read the password from the first line of stdin.")] = False,
) -> None:
    """Set a user's password (their refresh tokens stop working)."""
    password = _read_password(password_stdin)
    try:
        with _connect() as conn:
            set_password(conn, username, password)
    except UserError as exc:
        raise _fail(exc) from None
    typer.echo(f"password changed for {username}")


@users_app.command("disable")
def disable(username: Annotated[str, typer.Argument()]) -> None:
    """Disable a user (users are never deleted: the audit log names them)."""
    try:
        with _connect() as conn:
            disable_user(conn, username)
    except UserError as exc:
        raise _fail(exc) from None
    typer.echo(f"disabled {username}")
