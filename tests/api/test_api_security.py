"""Issue 13: the findings of the security review, each proven against the served API on the run's database.

Secrets (2), sign-in limits and the real client address (4), the hashing cap (5), sessions (6), the existence
oracle (8), out-of-range input (9), the password policy (10), bind keys (11) and audit and headers (14). The
database roles (3) are in tests/core/test_db_roles.py, the broker (12) in tests/gateway/test_broker_security.py,
the deployment (7) in tests/test_compose.py, the seed (13) in tests/firmware_sim/test_seed.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr
from serving import serve

from carewatch.api.app import create_app
from carewatch.api.auth import ALGORITHM, ISSUER
from carewatch.api.users import UserError, check_password_policy, create_user
from carewatch.db import report_conninfo
from carewatch.settings import EXAMPLE_SECRETS, Settings, WeakSecretError

from .conftest import PASSWORD

if TYPE_CHECKING:
    from conftest import World

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "test-signing-key-" + "x" * 32


def settings_for(app_database: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": app_database, "jwt_secret": KEY, "state_dir": tmp_path,
                              "login_max_failures_per_client": 100_000, **overrides}
    return Settings(**values)


@pytest.fixture
def served(app_database: str, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(base URL, app) of an app of this test's own under the production uvicorn configuration."""
    app = create_app(settings_for(app_database, tmp_path))
    with serve(app) as url:
        yield url, app


def sign_in(url: str, username: str, password: str = PASSWORD, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/auth/token", data={"username": username, "password": password}, timeout=30, **kwargs)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_rows(db: psycopg.Connection, where: str, *args: Any) -> list[tuple[Any, ...]]:
    db.rollback()
    return db.execute(f"SELECT username, action, status, subject_type, subject_id, client, detail FROM audit_log "
                      f"WHERE {where} ORDER BY audit_id", args).fetchall()


# ------------------------------------------------------------------------------------------------------------
# 2: secrets
# ------------------------------------------------------------------------------------------------------------
def example_secrets_in_repo() -> set[str]:
    """Every value given to a secret-looking variable in the repository's examples and docs."""
    found: set[str] = set()
    names = ("SECRET", "PASSWORD")
    files = [REPO_ROOT / ".env.example", REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for path in files:
        for line in path.read_text().splitlines():
            line = line.strip().lstrip("#").strip()
            key, sep, value = line.partition("=")
            if sep and any(n in key for n in names) and key.replace("_", "").isalnum() and value:
                found.add(value.strip().strip("'\""))
    return found


def test_every_secret_in_the_repository_examples_is_refused() -> None:
    examples = example_secrets_in_repo()
    assert "change-me-to-a-long-random-string" in examples  # the finding: 33 bytes, long enough, yet public
    assert examples <= EXAMPLE_SECRETS
    for value in examples:
        with pytest.raises(WeakSecretError):
            Settings(jwt_secret=value).signing_key()


@pytest.mark.parametrize("secret", ["<shared HMAC key for signed webhooks>", "short-but-random-Zq9"])
def test_notifications_refuse_a_weak_or_published_webhook_key(secret: str) -> None:
    from carewatch.notify.service import channels_from_settings

    with pytest.raises(WeakSecretError, match="CAREWATCH_NOTIFY_WEBHOOK_SECRET"):
        channels_from_settings(Settings(notify_webhook_secret=secret))
    assert "webhook" in channels_from_settings(Settings(notify_webhook_secret=secrets.token_urlsafe(32)))


def test_database_logins_refuse_a_published_password(app_database: str) -> None:
    """`carewatch db migrate --app-login` refuses the .env.example password before touching any role."""
    env = {**os.environ, "CAREWATCH_DATABASE_URL": app_database, "CAREWATCH_APP_DB_PASSWORD": "change-me"}
    done = subprocess.run([sys.executable, "-m", "carewatch", "db", "migrate", "--app-login", "carewatch_api_weak"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "CAREWATCH_APP_DB_PASSWORD" in done.stderr + done.stdout


@pytest.mark.parametrize("secret", ["change-me-to-a-long-random-string", "short-but-random-Zq9", "x" * 31])
def test_api_refuses_to_start_with_a_weak_or_published_secret(app_database: str, tmp_path: Path,
                                                               secret: str) -> None:
    with pytest.raises(WeakSecretError):
        create_app(settings_for(app_database, tmp_path, jwt_secret=secret))
    with pytest.raises(WeakSecretError):
        create_app(settings_for(app_database, tmp_path, jwt_previous_secret=secret))
    env = {**os.environ, "CAREWATCH_DATABASE_URL": app_database, "CAREWATCH_JWT_SECRET": secret,
           "CAREWATCH_API_PORT": "1", "CAREWATCH_STATE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "carewatch", "api"], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 2 and "refusing to start" in run.stderr


@pytest.mark.parametrize("secret", ["change-me-to-a-long-random-string", "short-but-random-Zq9"])
def test_api_refuses_a_weak_or_published_report_login_password(app_database: str, tmp_path: Path,
                                                               secret: str) -> None:
    """The report pool's login (CAREWATCH_REPORT_DATABASE_URL): its password, given in the URL or as
    CAREWATCH_REPORT_DB_PASSWORD (the one `db migrate --report-login` sets), is held to the same rule."""
    url = "postgresql://carewatch_reader@127.0.0.1:1,127.0.0.1:2/carewatch?target_session_attrs=prefer-standby"
    with pytest.raises(WeakSecretError, match="CAREWATCH_REPORT_DB_PASSWORD"):
        create_app(settings_for(app_database, tmp_path, report_database_url=url, report_db_password=secret))
    with pytest.raises(WeakSecretError, match="CAREWATCH_REPORT_DATABASE_URL"):
        create_app(settings_for(app_database, tmp_path,
                                report_database_url=url.replace("reader@", f"reader:{secret}@")))
    good = secrets.token_urlsafe(32)
    made = conninfo_to_dict(report_conninfo(url, SecretStr(good)))
    assert made["password"] == good and made["user"] == "carewatch_reader"
    assert made["host"] == "127.0.0.1,127.0.0.1" and made["target_session_attrs"] == "prefer-standby"
    env = {**os.environ, "CAREWATCH_DATABASE_URL": app_database, "CAREWATCH_JWT_SECRET": KEY,
           "CAREWATCH_REPORT_DATABASE_URL": url, "CAREWATCH_REPORT_DB_PASSWORD": secret,
           "CAREWATCH_API_PORT": "1", "CAREWATCH_STATE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "carewatch", "api"], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 2 and "CAREWATCH_REPORT_DB_PASSWORD" in run.stderr


def test_forged_token_with_the_placeholder_key_is_refused(client: Any, world: World) -> None:
    """The attack of the finding: an admin token signed with the .env.example key (with a session id, even)."""
    now = datetime.now(UTC)
    forged = jwt.encode({"iss": ISSUER, "sub": world.users["admin"], "typ": "access", "iat": now, "sid": "x",
                         "jti": "y", "exp": now + timedelta(minutes=5)}, "change-me-to-a-long-random-string",
                        algorithm=ALGORITHM)
    assert client.get("/users", headers=bearer(forged)).status_code == 401


def test_rotation_accepts_the_previous_key_until_it_is_dropped(app_database: str, tmp_path: Path,
                                                               world: World) -> None:
    old_key, new_key = "old-signing-key-" + "o" * 32, "new-signing-key-" + "n" * 32
    with serve(create_app(settings_for(app_database, tmp_path, jwt_secret=old_key))) as url:
        tokens = sign_in(url, world.users["gp"]).json()
    rotating = settings_for(app_database, tmp_path, jwt_secret=new_key, jwt_previous_secret=old_key)
    with serve(create_app(rotating)) as url:
        assert httpx.get(f"{url}/auth/me", headers=bearer(tokens["access_token"])).status_code == 200
        renewed = httpx.post(f"{url}/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert renewed.status_code == 200
        assert jwt.decode(renewed.json()["access_token"], new_key, algorithms=[ALGORITHM], issuer=ISSUER)
    with serve(create_app(settings_for(app_database, tmp_path, jwt_secret=new_key))) as url:
        assert httpx.get(f"{url}/auth/me", headers=bearer(tokens["access_token"])).status_code == 401
        assert httpx.get(f"{url}/auth/me", headers=bearer(renewed.json()["access_token"])).status_code == 200


# ------------------------------------------------------------------------------------------------------------
# 4: sign-in limits per account and per real client address, in PostgreSQL
# ------------------------------------------------------------------------------------------------------------
def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(served: tuple[str, Any], world: World,
                                                                     db: psycopg.Connection) -> None:
    """Rotating X-Forwarded-For no longer picks the address the limits and the audit trail see."""
    url, _ = served
    victim = world.users["manager"]
    for i in range(5):
        spoofed = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
        assert sign_in(url, victim, "wrong guess 123", headers=spoofed).status_code == 401
    blocked = sign_in(url, victim, headers={"X-Forwarded-For": "198.51.100.77"})
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    clients = {row[5].split(";")[0] for row in audit_rows(db, "username = %s AND action = 'login_failed'", victim)}
    assert clients == {"127.0.0.1"}


def test_trusted_proxy_forwards_the_real_address(app_database: str, tmp_path: Path, world: World,
                                                 db: psycopg.Connection) -> None:
    settings = settings_for(app_database, tmp_path, trusted_proxies="127.0.0.1", login_max_failures_per_client=3)
    with serve(create_app(settings)) as url:
        name = world.users["council"]
        real = unique_address(world.uid)
        for i in range(3):  # three accounts from one real address (the client's own claim, left of it, ignored)
            assert sign_in(url, f"nobody{i}-{world.uid}", "wrong guess 123",
                           headers={"X-Forwarded-For": f"1.2.3.{i}, {real}"}).status_code == 401
        assert sign_in(url, name, headers={"X-Forwarded-For": real}).status_code == 429
        assert sign_in(url, name, headers={"X-Forwarded-For": "198.51.100.10"}).status_code == 200
    rows = audit_rows(db, "username LIKE %s AND action = 'login_failed'", f"nobody%-{world.uid}")
    assert [r[5].split(";")[0] for r in rows] == [real] * 3


def unique_address(uid: str) -> str:
    """A client address of this test's own (every test's requests come from 127.0.0.1, through a trusted proxy)."""
    return "10.{}.{}.{}".format(*bytes.fromhex(uid[:6]))


def test_one_address_trying_many_usernames_is_limited(app_database: str, tmp_path: Path, world: World) -> None:
    settings = settings_for(app_database, tmp_path, login_max_failures_per_client=4, trusted_proxies="127.0.0.1")
    client = {"X-Forwarded-For": unique_address(world.uid)}
    with serve(create_app(settings)) as url:
        for i in range(4):
            assert sign_in(url, f"spray{i}-{world.uid}", "Summer2026!xyz", headers=client).status_code == 401
        blocked = sign_in(url, world.users["gp"], headers=client)  # even a correct password, from this address
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
        elsewhere = {"X-Forwarded-For": f"192.0.2.{int(world.uid[:2], 16)}"}
        assert sign_in(url, world.users["gp"], headers=elsewhere).status_code == 200


def test_limits_hold_across_restarts_and_workers(app_database: str, tmp_path: Path, world: World) -> None:
    """Failures recorded by one API process block sign-in at another (or after a restart)."""
    victim = world.users["care_staff"]
    with serve(create_app(settings_for(app_database, tmp_path))) as first:
        for _ in range(5):
            assert sign_in(first, victim, "wrong guess 123").status_code == 401
    with serve(create_app(settings_for(app_database, tmp_path))) as second:
        assert sign_in(second, victim).status_code == 429


# ------------------------------------------------------------------------------------------------------------
# 5: concurrent password hashing is capped
# ------------------------------------------------------------------------------------------------------------
def test_sign_ins_beyond_the_hashing_cap_get_429(app_database: str, tmp_path: Path, world: World,
                                                 db: psycopg.Connection) -> None:
    app = create_app(settings_for(app_database, tmp_path, login_hash_concurrency=1))
    with serve(app) as url:
        assert app.state.hash_slots.acquire(timeout=5)  # one sign-in is hashing (held here)
        try:
            busy = sign_in(url, f"ghost-{world.uid}", "any password 123")
        finally:
            app.state.hash_slots.release()
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        assert sign_in(url, world.users["gp"]).status_code == 200
    assert audit_rows(db, "username = %s AND detail->>'reason' = 'busy'", f"ghost-{world.uid}")


# ------------------------------------------------------------------------------------------------------------
# 6: sessions
# ------------------------------------------------------------------------------------------------------------
def test_refresh_tokens_rotate_and_reuse_revokes_the_family(served: tuple[str, Any], world: World,
                                                            db: psycopg.Connection) -> None:
    url, _ = served
    first = sign_in(url, world.users["gp"]).json()
    second = httpx.post(f"{url}/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert httpx.get(f"{url}/auth/me", headers=bearer(second["access_token"])).status_code == 200
    # the spent token again (a thief, or the owner after the thief): the whole family ends
    assert httpx.post(f"{url}/auth/refresh", json={"refresh_token": first["refresh_token"]}).status_code == 401
    assert httpx.post(f"{url}/auth/refresh", json={"refresh_token": second["refresh_token"]}).status_code == 401
    assert httpx.get(f"{url}/auth/me", headers=bearer(second["access_token"])).status_code == 401
    stored = db.execute("SELECT refresh_hash, revoked_why FROM auth_sessions WHERE username = %s",
                        (world.users["gp"],)).fetchall()
    assert stored and all(len(h) == 64 and why == "refresh token reused" for h, why in stored)
    assert not any(first["refresh_token"] in h or second["refresh_token"] in h for h, _ in stored)
    # another sign-in is a new session and works
    assert httpx.get(f"{url}/auth/me", headers=bearer(sign_in(url, world.users["gp"]).json()["access_token"]))\
        .status_code == 200


@pytest.mark.parametrize("change", ["disable", "password", "role"])
def test_disabling_password_or_role_change_ends_every_session(served: tuple[str, Any], world: World,
                                                              change: str) -> None:
    url, _ = served
    name = world.users["manager"]
    admin = bearer(sign_in(url, world.users["admin"]).json()["access_token"])
    tokens = sign_in(url, name).json()
    mine = bearer(tokens["access_token"])
    assert httpx.get(f"{url}/auth/me", headers=mine).status_code == 200
    if change == "disable":
        assert httpx.delete(f"{url}/users/{name}", headers=admin).status_code == 204
        # re-enabled: the old tokens stay dead (they were revoked, not merely refused while disabled)
        assert httpx.patch(f"{url}/users/{name}", headers=admin, json={"active": True}).status_code == 200
    elif change == "password":
        assert httpx.post(f"{url}/users/{name}/password", headers=admin,
                          json={"password": "a new long passphrase"}).status_code == 204
    else:
        assert httpx.patch(f"{url}/users/{name}", headers=admin, json={"role": "care_staff"}).status_code == 200
    assert httpx.get(f"{url}/auth/me", headers=mine).status_code == 401
    assert httpx.post(f"{url}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401


def test_access_token_without_a_live_session_is_refused(client: Any, world: World) -> None:
    now = datetime.now(UTC)
    made_up = jwt.encode({"iss": ISSUER, "sub": world.users["admin"], "typ": "access", "iat": now,
                          "sid": "00000000-0000-0000-0000-000000000000", "jti": "z",
                          "exp": now + timedelta(minutes=5)}, KEY, algorithm=ALGORITHM)
    assert client.get("/users", headers=bearer(made_up)).status_code == 401
    no_sid = jwt.encode({"iss": ISSUER, "sub": world.users["admin"], "typ": "access", "iat": now, "jti": "z",
                         "exp": now + timedelta(minutes=5)}, KEY, algorithm=ALGORITHM)
    assert client.get("/users", headers=bearer(no_sid)).status_code == 401


# ------------------------------------------------------------------------------------------------------------
# 8: no existence oracle across tenants
# ------------------------------------------------------------------------------------------------------------
def test_taken_id_or_nhs_number_is_409_only_in_your_own_tenant(client: Any, world: World,
                                                               db: psycopg.Connection) -> None:
    manager = world.headers(client, "manager")
    nhs_b = db.execute("SELECT nhs_number FROM residents WHERE resident_id = %s", (world.resident_b,)).fetchone()[0]
    nhs_a = db.execute("SELECT nhs_number FROM residents WHERE resident_id = %s", (world.resident_a,)).fetchone()[0]
    body = {"site_id": world.home_a, "display_name": "New", "date_of_birth": "1940-01-01"}
    other_id = client.post("/residents", headers=manager, json={**body, "resident_id": world.resident_b})
    other_nhs = client.post("/residents", headers=manager,
                            json={**body, "resident_id": f"n-{world.uid}", "nhs_number": nhs_b})
    missing_site = client.get(f"/residents/ghost-{world.uid}", headers=manager)
    assert other_id.status_code == other_nhs.status_code == missing_site.status_code == 404
    assert other_id.json() == other_nhs.json() == missing_site.json()
    own_id = client.post("/residents", headers=manager, json={**body, "resident_id": world.resident_a})
    own_nhs = client.post("/residents", headers=manager,
                          json={**body, "resident_id": f"m-{world.uid}", "nhs_number": nhs_a})
    assert own_id.status_code == own_nhs.status_code == 409


# ------------------------------------------------------------------------------------------------------------
# 9: extreme dates and deep JSON: 422, audited
# ------------------------------------------------------------------------------------------------------------
def test_deep_json_is_422_and_audited_even_unauthenticated(served: tuple[str, Any], world: World,
                                                           db: psycopg.Connection) -> None:
    url, _ = served
    deep = b"[" * 50_000 + b"]" * 50_000
    marker = f"deep-{world.uid}"
    refused = httpx.post(f"{url}/auth/refresh", content=deep, headers={"Content-Type": "application/json",
                                                                        "User-Agent": marker})
    assert refused.status_code == 422 and "nested" in refused.json()["message"]
    manager = bearer(sign_in(url, world.users["manager"]).json()["access_token"])
    body = b'{"pulse": 80, "note": ' + b"[" * 40 + b"]" * 40 + b"}"
    nested = httpx.post(f"{url}/residents/{world.resident_a}/observations", content=body,
                        headers={**manager, "Content-Type": "application/json", "User-Agent": marker})
    assert nested.status_code == 422
    rows = audit_rows(db, "client LIKE %s", f"%; {marker}")
    assert [r[2] for r in rows] == [422, 422]  # refused before any route ran, so before sign-in was checked


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_extreme_dates_are_422_and_audited(served: tuple[str, Any], world: World, db: psycopg.Connection,
                                           when: str) -> None:
    url, _ = served
    marker = f"date-{world.uid}"
    staff = {**bearer(sign_in(url, world.users["care_staff"]).json()["access_token"]), "User-Agent": marker}
    answers = [
        httpx.post(f"{url}/residents/{world.resident_a}/observations", headers=staff,
                   json={"pulse": 80, "consciousness": "A", "taken_at": when}),
        httpx.get(f"{url}/residents/{world.resident_a}/observations", headers=staff,
                  params={"since": when, "until": when}),
        httpx.get(f"{url}/alerts", headers=staff, params={"since": when}),
        httpx.get(f"{url}/residents/{world.resident_a}/readings", headers=staff,
                  params={"metric": "spo2", "since": when}),
    ]
    codes = [a.status_code for a in answers]
    assert all(code in (200, 422) for code in codes), [(a.status_code, a.text[:200]) for a in answers]
    assert answers[0].status_code == 422
    rows = audit_rows(db, "client LIKE %s", f"%; {marker}")
    assert len(rows) >= len(answers) and {r[2] for r in rows} <= {200, 422}


# ------------------------------------------------------------------------------------------------------------
# 10: password policy
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("password", ["12345678", " " * 12, "passwordpassword", "Password1234!", "qwertyuiop123",
                                      "aaaaaaaaaaaaaaaa", "abababababab", "carehome-manager-7"])
def test_weak_passwords_are_refused(password: str) -> None:
    with pytest.raises(UserError):
        check_password_policy(password, "carehome-manager-7")


def test_password_equal_to_or_containing_the_username_is_refused(client: Any, world: World,
                                                                 db: psycopg.Connection) -> None:
    with pytest.raises(UserError, match="username"):
        # long enough and ending in letters, so no earlier rule (length; "nurse" + digits is a common password)
        # can refuse it first, whatever the world's random uid
        create_user(db, f"nurse-{world.uid}-ward", "admin", password=f"nurse-{world.uid}-ward")
    admin = world.headers(client, "admin")
    for password in ("12345678", " " * 12, "123456789012", f"x{world.users['gp']}x"):
        answer = client.post(f"/users/{world.users['gp']}/password", headers=admin, json={"password": password})
        assert answer.status_code == 422, password
        assert answer.json()["detail"][0]["field"] == "password"
    check_password_policy("correct horse 42", "someone")  # a passphrase passes


# ------------------------------------------------------------------------------------------------------------
# 11: bind keys only for the gateway's own account and admins
# ------------------------------------------------------------------------------------------------------------
def test_bind_keys_only_for_the_gateways_own_account_and_admins(client: Any, world: World,
                                                                db: psycopg.Connection) -> None:
    path = f"/gateways/{world.gateway_a}/registry"
    account = f"gwacct-{world.uid}"
    create_user(db, account, "care_staff", password=PASSWORD, site_id=world.home_a, gateway_id=world.gateway_a)
    db.commit()
    token = client.post("/auth/token", data={"username": account, "password": PASSWORD}).json()["access_token"]
    assert client.get(path, headers=bearer(token)).status_code == 200
    assert client.get(path, headers=world.headers(client, "admin")).status_code == 200
    for role in ("care_staff", "manager"):
        refused = client.get(path, headers=world.headers(client, role))
        assert refused.status_code == 403 and "secret-bind-key" not in refused.text, role
    # the gateway's account cannot read another gateway's keys
    assert client.get(f"/gateways/{world.gateway_b}/registry", headers=bearer(token)).status_code == 404


# ------------------------------------------------------------------------------------------------------------
# 14: audit of 401 and of the subject of 403; headers
# ------------------------------------------------------------------------------------------------------------
def test_401_and_403_are_audited_with_the_subject(client: Any, world: World, db: psycopg.Connection) -> None:
    marker = f"probe-{world.uid}"
    assert client.get(f"/residents/{world.resident_b}", headers={"User-Agent": marker}).status_code == 401
    assert client.get(f"/residents/{world.resident_b}", headers={"User-Agent": marker,
                                                                 "Authorization": "Bearer junk"}).status_code == 401
    council = {**world.headers(client, "council"), "User-Agent": marker}
    assert client.post(f"/alerts/{world.alert_b}/acknowledge", headers=council, json={}).status_code == 403
    rows = audit_rows(db, "client LIKE %s", f"%; {marker}")
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        (None, 401, "resident", world.resident_b), (None, 401, "resident", world.resident_b),
        (world.users["council"], 403, "alert", str(world.alert_b))]


def test_security_headers_and_no_store_on_clinical_answers(client: Any, world: World) -> None:
    staff = world.headers(client, "admin")
    for path in (f"/residents/{world.resident_a}/fhir", f"/households/{world.household_a}/report.csv",
                 f"/households/{world.household_a}/report.pdf", f"/residents/{world.resident_a}", "/alerts"):
        answer = client.get(path, headers=staff)
        assert answer.status_code == 200, path
        assert answer.headers["Cache-Control"] == "no-store", path
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
    refused = client.get(f"/residents/{world.resident_a}")
    assert refused.status_code == 401 and refused.headers["Cache-Control"] == "no-store"
    assert "no-store" not in client.get("/openapi.json").headers.get("Cache-Control", "")
