"""Sign-in, tokens, refresh, rate limiting, and user management (API and CLI)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from carewatch.api import sessions, users_cli
from carewatch.api.auth import ALGORITHM, ISSUER, issue_tokens
from carewatch.api.users import UserError, authenticate, create_user, get_user

from .conftest import login

if TYPE_CHECKING:
    from conftest import World

PASSWORD = "correct horse 42"


def test_login_and_me(client: TestClient, world: World) -> None:
    response = client.post("/auth/token", data={"username": world.users["gp"], "password": PASSWORD})
    assert response.status_code == 200
    tokens = response.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 15 * 60
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert me == {"username": world.users["gp"], "full_name": "gp A", "role": "gp", "site_id": None,
                  "practice_code": world.practice_a, "council": None}


def test_wrong_password_is_401_and_does_not_say_which_part_was_wrong(client: TestClient, world: World) -> None:
    wrong = client.post("/auth/token", data={"username": world.users["gp"], "password": "nope nope nope"})
    unknown = client.post("/auth/token", data={"username": f"ghost-{world.uid}", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_refresh_issues_new_tokens_and_access_token_cannot_refresh(client: TestClient, world: World) -> None:
    tokens = client.post("/auth/token", data={"username": world.users["manager"], "password": PASSWORD}).json()
    renewed = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert renewed.status_code == 200
    fresh = {"Authorization": f"Bearer {renewed.json()['access_token']}"}
    assert client.get("/auth/me", headers=fresh).status_code == 200
    assert client.post("/auth/refresh", json={"refresh_token": tokens["access_token"]}).status_code == 401
    # a refresh token is not an access token either
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}).status_code == 401


def test_password_change_ends_refresh_and_disable_ends_access(client: TestClient, world: World,
                                                              db: psycopg.Connection) -> None:
    username = world.users["council"]
    tokens = client.post("/auth/token", data={"username": username, "password": PASSWORD}).json()
    admin = world.headers(client, "admin")
    assert client.post(f"/users/{username}/password", json={"password": "brand new secret"},
                       headers=admin).status_code == 204
    assert client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/auth/me", headers=access).status_code == 401  # the password change ended the session
    second = {"Authorization": f"Bearer {login(client, username, 'brand new secret')}"}
    assert client.get("/auth/me", headers=second).status_code == 200
    assert client.delete(f"/users/{username}", headers=admin).status_code == 204
    assert client.get("/auth/me", headers=second).status_code == 401
    assert client.post("/auth/token", data={"username": username, "password": "brand new secret"}).status_code == 401


def test_expired_and_forged_tokens_are_refused(client: TestClient, world: World) -> None:
    settings = client.app.state.settings
    with client.app.state.pool.connection() as conn:
        user = get_user(conn, world.users["care_staff"])
    assert user is not None
    with client.app.state.pool.connection() as conn:
        old = issue_tokens(conn, user, settings, now=datetime.now(UTC) - timedelta(hours=1)).access_token
    expired = client.get("/auth/me", headers={"Authorization": f"Bearer {old}"})
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    forged = jwt.encode({"iss": ISSUER, "sub": world.users["admin"], "typ": "access", "iat": datetime.now(UTC),
                         "exp": datetime.now(UTC) + timedelta(minutes=5)}, "wrong-key-" + "y" * 40,
                        algorithm=ALGORITHM)
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_login_rate_limited_per_username_and_client(client: TestClient, world: World) -> None:
    username = world.users["care_staff"]
    for _ in range(5):
        assert client.post("/auth/token", data={"username": username, "password": "bad guess"}).status_code == 401
    blocked = client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    other = client.post("/auth/token", data={"username": world.users["gp"], "password": PASSWORD})
    assert other.status_code == 200


def test_failures_leave_the_count_when_the_window_passes(db: psycopg.Connection, uid: str) -> None:
    """The limits count failures in PostgreSQL within the window; older ones and a success no longer count."""
    name, client = f"win-{uid}", f"10.9.{int(uid[:2], 16)}.1"
    limits = {"per_account": 3, "per_client": 100, "window_s": 60}
    db.execute("INSERT INTO login_failures (at, username, client) SELECT now() - interval '61 s', %s, %s "
               "FROM generate_series(1, 3)", (name, client))
    assert sessions.retry_after(db, name, client, **limits) is None
    for _ in range(3):
        sessions.record_failure(db, name, client)
    wait = sessions.retry_after(db, name, client, **limits)
    assert wait is not None and 55 <= wait <= 60
    sessions.clear_failures(db, name, client)
    assert sessions.retry_after(db, name, client, **limits) is None


def test_users_crud_by_admin(client: TestClient, world: World, db: psycopg.Connection) -> None:
    admin = world.headers(client, "admin")
    name = f"nurse-{world.uid}"
    created = client.post("/users", headers=admin, json={"username": name.upper(), "role": "care_staff",
                                                         "password": "a long password", "site_id": world.home_a})
    assert created.status_code == 201 and created.json()["username"] == name
    assert "password" not in created.text and "hash" not in created.text
    duplicate = client.post("/users", headers=admin, json={"username": name, "role": "care_staff",
                                                           "password": "a long password", "site_id": world.home_a})
    assert duplicate.status_code == 409
    no_site = client.post("/users", headers=admin, json={"username": f"x-{world.uid}", "role": "manager",
                                                         "password": "a long password"})
    assert no_site.status_code == 422 and "site" in no_site.json()["message"]
    assert "site" in no_site.json()["detail"][0]["msg"]  # one 422 shape: a list of field errors
    changed = client.patch(f"/users/{name}", headers=admin, json={"role": "manager"})
    assert changed.json()["role"] == "manager"
    listed = client.get("/users", headers=admin, params={"site": world.home_a, "limit": 500}).json()["items"]
    assert name in {u["username"] for u in listed}
    assert client.get(f"/users/ghost-{world.uid}", headers=admin).status_code == 404


def test_user_functions(db: psycopg.Connection, uid: str) -> None:
    with pytest.raises(UserError, match="at least 12"):
        create_user(db, f"short-{uid}", "admin", password="short")
    with pytest.raises(UserError, match="needs a practice"):
        create_user(db, f"gp-{uid}", "gp", password="long enough pw")
    with pytest.raises(UserError, match="role must be"):
        create_user(db, f"who-{uid}", "superuser", password="long enough pw")
    user = create_user(db, f"Admin-{uid}", "admin", password="long enough pw")
    assert user.username == f"admin-{uid}"
    assert authenticate(db, f"ADMIN-{uid}", "long enough pw") is not None
    assert authenticate(db, f"admin-{uid}", "wrong password") is None
    stored = db.execute("SELECT password_hash FROM users WHERE username = %s", (user.username,)).fetchone()[0]
    assert stored.startswith("$argon2id$") and "long enough pw" not in stored


def test_users_cli(database: str, uid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users_cli, "_connect", lambda: psycopg.connect(database))
    runner = CliRunner()
    name = f"cli-{uid}"
    added = runner.invoke(users_cli.users_app, ["add", name, "--role", "admin", "--full-name", "CLI Admin",
                                                "--password-stdin"], input="cli password 1\n")
    assert added.exit_code == 0, added.output
    listed = runner.invoke(users_cli.users_app, ["list", "--role", "admin"])
    assert f"{name}\tadmin\t-\tactive\tCLI Admin" in listed.output
    missing_site = runner.invoke(users_cli.users_app, ["add", f"cs-{uid}", "--role", "care_staff",
                                                       "--password-stdin"], input="cli password 1\n")
    assert missing_site.exit_code == 1 and "needs a site" in missing_site.output
    assert runner.invoke(users_cli.users_app, ["passwd", name, "--password-stdin"],
                         input="new cli password\n").exit_code == 0
    with psycopg.connect(database) as conn:
        assert authenticate(conn, name, "new cli password") is not None
    assert runner.invoke(users_cli.users_app, ["disable", name]).exit_code == 0
    with psycopg.connect(database) as conn:
        assert authenticate(conn, name, "new cli password") is None
    assert runner.invoke(users_cli.users_app, ["disable", f"ghost-{uid}"]).exit_code == 1

