"""Heavy read-only reports on a real standby (issue 19 part 2): a private primary, a streaming replica of it
(``pg_basebackup -R``, tests/replica.py), and the API with ``CAREWATCH_REPORT_DATABASE_URL`` naming a
carewatch_report login, standby first, ``target_session_attrs=prefer-standby``.

Proved here, each with the real servers: (a) the reports' queries run on the standby, as the report login, read-only
(a hook in ``Ctx.note`` asks the request's own connection); (b) they answer exactly what the primary answers, tenancy
included; (c) their audit rows land on the primary; (d) with the standby stopped they still answer, from the primary
(through the report login when its URL names the primary too, else through the primary pool), and a standby that
comes back is read again.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databases import role_login
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict
from replica import StreamingStandby, skip_reason

from carewatch.api import pooling
from carewatch.api.app import create_app
from carewatch.api.deps import Ctx
from carewatch.db import REPORT_POOL_NAME, PrivilegedReportLogin, configure_report_connection
from carewatch.db.migrate import migrate
from carewatch.embedded import EmbeddedPostgres, free_port
from carewatch.settings import Settings

from .conftest import World, build_world

SIGNING_KEY = "test-signing-key-" + "x" * 32


@pytest.fixture(scope="module")
def pair(scratch_dir: Path) -> Iterator[tuple[EmbeddedPostgres, StreamingStandby]]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:8]
    primary = EmbeddedPostgres(scratch_dir / f"reports-primary-{tag}", free_port())
    standby = StreamingStandby(primary, scratch_dir / f"reports-standby-{tag}", free_port())
    try:
        primary.start()
        migrate(primary.dsn)
        standby.start()
        yield primary, standby
    finally:
        standby.stop(mode="immediate")
        primary.stop(mode="immediate")


@pytest.fixture(scope="module")
def logins(pair: tuple[EmbeddedPostgres, StreamingStandby]) -> Iterator[tuple[str, str]]:
    """(the services' application-role DSN on the primary, the name of a carewatch_report login)."""
    primary, standby = pair
    with role_login(primary.admin_dsn, primary.dsn, "app") as app_dsn, \
            role_login(primary.admin_dsn, primary.dsn, "report") as report_dsn:
        standby.catch_up()  # roles are in the WAL too
        yield app_dsn, str(conninfo_to_dict(report_dsn)["user"])


def _settings(tmp: Path, app_dsn: str, report_url: str | None) -> Settings:
    return Settings(database_url=app_dsn, report_database_url=report_url, jwt_secret=SIGNING_KEY, state_dir=tmp,
                    login_max_failures_per_client=100_000)


@pytest.fixture(scope="module")
def clients(pair: tuple[EmbeddedPostgres, StreamingStandby], logins: tuple[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """'reports': the report URL names the standby, then the primary (prefer-standby); 'standby_only': it names the
    standby alone; 'primary': no report URL (every report reads the primary pool, read-only)."""
    primary, standby = pair
    app_dsn, reader = logins
    both = (f"postgresql://{reader}@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/{primary.database}"
            "?target_session_attrs=prefer-standby&connect_timeout=2")
    alone = f"postgresql://{reader}@127.0.0.1:{standby.port}/{primary.database}?connect_timeout=2"
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(TestClient(create_app(_settings(
                   tmp_path_factory.mktemp(f"reports-{name}"), app_dsn, url))))
               for name, url in (("reports", both), ("standby_only", alone), ("primary", None))}


@pytest.fixture(scope="module")
def world(pair: tuple[EmbeddedPostgres, StreamingStandby], logins: tuple[str, str]) -> World:
    primary, standby = pair
    with psycopg.connect(primary.dsn) as conn:
        made = build_world(conn, uuid.uuid4().hex[:8])
    standby.catch_up()
    return made


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The test hook: every ``ctx.note`` (each report notes what it reads) also asks the request's own connection
    where it is: in recovery (a standby)?, which server port, which login, read-only?"""
    seen: list[dict[str, Any]] = []
    note = Ctx.note

    def noting(self: Ctx, action: str, subject_type: str | None = None, subject_id: Any = None,
               **detail: Any) -> None:
        recovery, port, user, read_only = self.conn.execute(
            "SELECT pg_is_in_recovery(), inet_server_port(), current_user, current_setting('transaction_read_only')"
        ).fetchone()
        seen.append({"path": self.request.url.path, "standby": recovery, "port": port, "user": user,
                     "read_only": read_only == "on"})
        note(self, action, subject_type, subject_id, **detail)

    monkeypatch.setattr(Ctx, "note", noting)
    return seen


def _report_paths(w: World, until: datetime) -> list[tuple[str, str]]:
    """(role, path) of every report the API sends to the standby, each as a tenant-A user who may read it."""
    return [
        ("manager", "/reports/adoption?days=7"),
        ("council", f"/households/{w.household_a}/behaviour?days=7"),
        ("council", f"/households/{w.household_a}/rightsizing?days=7"),
        ("council", f"/households/{w.household_a}/report.csv?days=7"),
        ("council", f"/households/{w.household_a}/report.pdf?days=7"),
        ("gp", f"/residents/{w.resident_a}/fhir"),
        ("gp", f"/residents/{w.resident_a}/baselines"),
        ("gp", f"/residents/{w.resident_a}/readings?metric=spo2"),
        ("admin", f"/audit?subject_id={w.resident_a}&until={until.isoformat().replace('+00:00', 'Z')}"),
    ]


VOLATILE = {"generated_at", "window_start", "window_end", "lastUpdated", "timestamp", "start", "end"}


def _comparable(body: Any) -> Any:
    """An answer without the moment it was made (the rest must be equal wherever it was read)."""
    if isinstance(body, dict):
        bundle = body.get("resourceType") == "Bundle"  # its id is made from the moment too
        return {k: _comparable(v) for k, v in body.items() if k not in VOLATILE and not (bundle and k == "id")}
    if isinstance(body, list):
        return [_comparable(v) for v in body]
    return body


def _audit_rows(primary: EmbeddedPostgres, path: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(primary.dsn) as conn:
        return conn.execute("SELECT username, action, status FROM audit_log WHERE path = %s ORDER BY audit_id",
                            (path,)).fetchall()


def test_reports_read_the_standby_answer_as_the_primary_does_and_audit_on_the_primary(
        pair: tuple[EmbeddedPostgres, StreamingStandby], logins: tuple[str, str], clients: dict[str, TestClient],
        world: World, reads: list[dict[str, Any]]) -> None:
    primary, standby = pair
    _, reader = logins
    on_standby, on_primary = clients["reports"], clients["primary"]
    # something for the audit search to find, replicated before the comparisons
    assert on_primary.get(f"/residents/{world.resident_a}", headers=world.headers(on_primary, "gp")).status_code == 200
    until = datetime.now(UTC)
    standby.catch_up()
    for role, path in _report_paths(world, until):
        headers = world.headers(on_standby, role)
        reads.clear()
        got = on_standby.get(path, headers=headers)
        assert got.status_code == 200, (path, got.text)
        # (a) the route's own queries ran on the standby, as the report login, read-only
        assert reads, path
        assert all(r["standby"] and r["port"] == standby.port and r["user"] == reader and r["read_only"]
                   for r in reads), (path, reads)
        # (c) the audit row is on the primary (written by the audit middleware, on the primary pool)
        bare = path.split("?")[0]
        assert _audit_rows(primary, bare)[-1][1:] == (
            "export" if bare.endswith(("fhir", ".csv", ".pdf")) else "read", 200), path
        # (b) the same answer the primary gives (tenant A's data, nothing of tenant B)
        reads.clear()
        expected = on_primary.get(path, headers=headers)
        assert expected.status_code == 200
        assert reads and not any(r["standby"] for r in reads) and all(r["read_only"] for r in reads), reads
        if path.split("?")[0].endswith(".pdf"):
            assert got.headers["content-type"] == "application/pdf" and got.content.startswith(b"%PDF")
        elif path.split("?")[0].endswith(".csv"):
            assert got.text == expected.text
        else:
            assert _comparable(got.json()) == _comparable(expected.json()), path
        assert not [i for i in world.foreign_ids if i in got.text], path

    # the audit search found the earlier read (so the comparison above compared something)
    found = on_standby.get(f"/audit?subject_id={world.resident_a}", headers=world.headers(on_standby, "admin"))
    assert any(item["path"] == f"/residents/{world.resident_a}" for item in found.json()["items"])
    # tenancy on the standby: another tenant's household and resident are not there (404), the adoption report
    # names tenant A's home only
    council, gp = world.headers(on_standby, "council"), world.headers(on_standby, "gp")
    assert on_standby.get(f"/households/{world.household_b}/behaviour", headers=council).status_code == 404
    assert on_standby.get(f"/residents/{world.resident_b}/fhir", headers=gp).status_code == 404
    assert on_standby.get(f"/residents/{world.resident_hb}/readings?metric=spo2", headers=gp).status_code == 404
    homes = on_standby.get("/reports/adoption", headers=world.headers(on_standby, "manager")).json()
    assert world.home_a in str(homes) and world.home_b not in str(homes)
    # a refused report is audited on the primary too
    assert _audit_rows(primary, f"/residents/{world.resident_b}/fhir")[-1] == (
        world.users["gp"], "export", 404)

    # seen from the standby itself: the API's report pool is connected there, as the report login
    with psycopg.connect(standby.admin_dsn) as conn:
        assert conn.execute("SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name = %s",
                            (REPORT_POOL_NAME,)).fetchall() == [(reader,)]
    health = on_standby.get("/healthz").json()
    assert health["reports"]["source"] == "standby" and health["reports"]["lag_s"] is not None, health
    assert on_primary.get("/healthz").json()["reports"] == {"source": "primary_pool", "configured": False}


def test_the_report_pool_is_read_only_on_the_standby(
        pair: tuple[EmbeddedPostgres, StreamingStandby], logins: tuple[str, str]) -> None:
    """What the report login can do on the standby: read; not write, not see a secret; refused as a report login
    is any login that could (the owner here)."""
    primary, standby = pair
    _, reader = logins
    dsn = f"postgresql://{reader}@127.0.0.1:{standby.port}/{primary.database}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        configure_report_connection(conn)
        assert conn.execute("SELECT count(*) FROM sites").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO audit_log (action) VALUES ('x')")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT password_hash FROM users")
    with psycopg.connect(dsn.replace(f"{reader}@", f"{primary.user}@"), autocommit=True) as conn, \
            pytest.raises(PrivilegedReportLogin):
        configure_report_connection(conn)


def test_with_the_standby_stopped_reports_read_the_primary_and_return_when_it_is_back(
        pair: tuple[EmbeddedPostgres, StreamingStandby], logins: tuple[str, str], clients: dict[str, TestClient],
        world: World, reads: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    primary, standby = pair
    app_dsn, reader = logins
    app_login = str(conninfo_to_dict(app_dsn)["user"])
    monkeypatch.setattr(pooling, "REPORT_RETRY_S", 1.0)
    path = f"/residents/{world.resident_a}/fhir"
    expected = clients["primary"].get(path, headers=world.headers(clients["primary"], "gp"))
    assert expected.status_code == 200
    for name in ("reports", "standby_only"):  # both pools hold standby connections before it stops
        assert clients[name].get(path, headers=world.headers(clients[name], "gp")).status_code == 200
    standby.stop(mode="fast")
    try:
        # (d) the URL names the primary too: libpq falls back to it, still as the report login, read-only
        reads.clear()
        got = clients["reports"].get(path, headers=world.headers(clients["reports"], "gp"))
        assert got.status_code == 200
        assert _comparable(got.json()) == _comparable(expected.json())
        assert reads and all(not r["standby"] and r["port"] == primary.port and r["user"] == reader
                             and r["read_only"] for r in reads), reads
        assert clients["reports"].get("/healthz").json()["reports"]["source"] == "primary"
        # (d) the URL names the standby alone: nothing answers, so the primary pool, read-only; then at once
        for _ in range(2):
            reads.clear()
            started = time.monotonic()
            got = clients["standby_only"].get(path, headers=world.headers(clients["standby_only"], "gp"))
            assert got.status_code == 200
            assert _comparable(got.json()) == _comparable(expected.json())
            assert reads and all(not r["standby"] and r["port"] == primary.port and r["user"] == app_login
                                 and r["read_only"] for r in reads), reads
        assert time.monotonic() - started < pooling.REPORT_CONNECT_WAIT_S  # resting: the pool was not asked
        assert clients["standby_only"].get("/healthz").json()["reports"]["source"] == "unavailable"
        assert _audit_rows(primary, path)[-1] == (world.users["gp"], "export", 200)
    finally:
        standby.start()
    standby.catch_up()

    def back_on_standby(name: str) -> bool:
        reads.clear()
        got = clients[name].get(path, headers=world.headers(clients[name], "gp"))
        assert got.status_code == 200
        return bool(reads) and all(r["standby"] and r["port"] == standby.port for r in reads)

    for name in ("reports", "standby_only"):
        deadline = time.monotonic() + 60
        while not back_on_standby(name):
            assert time.monotonic() < deadline, f"{name}: reports never went back to the standby"
            time.sleep(0.5)


def test_a_standby_further_behind_than_the_limit_is_not_read(
        pair: tuple[EmbeddedPostgres, StreamingStandby], logins: tuple[str, str], clients: dict[str, TestClient],
        world: World, reads: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Staleness is bounded by CAREWATCH_REPORT_MAX_LAG_S, not by how long a standby may lag: with replay paused
    on the standby, a change on the primary makes it fall behind, and the report reads the primary pool."""
    primary, standby = pair
    app_login = str(conninfo_to_dict(logins[0])["user"])
    client = clients["reports"]
    monkeypatch.setattr(client.app.state.reports, "max_lag_s", 0.5)
    path = f"/residents/{world.resident_a}/fhir"
    gp = world.headers(client, "gp")
    with psycopg.connect(standby.admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        with psycopg.connect(primary.dsn) as conn:
            conn.execute("UPDATE residents SET display_name = display_name || ' (renamed)' WHERE resident_id = %s",
                         (world.resident_a,))
        time.sleep(1.0)
        reads.clear()
        got = client.get(path, headers=gp)
        assert got.status_code == 200 and "(renamed)" in got.text  # what the primary holds now
        assert reads and all(not r["standby"] and r["user"] == app_login and r["read_only"] for r in reads), reads
        health = client.get("/healthz").json()["reports"]
        assert health["source"] == "stale" and health["lag_s"] >= 0.5, health
    finally:
        with psycopg.connect(standby.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        with psycopg.connect(primary.dsn) as conn:
            conn.execute("UPDATE residents SET display_name = replace(display_name, ' (renamed)', '') "
                         "WHERE resident_id = %s", (world.resident_a,))
    standby.catch_up()
    reads.clear()
    assert client.get(path, headers=gp).status_code == 200
    assert reads and all(r["standby"] for r in reads), reads
