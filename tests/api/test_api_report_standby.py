"""Heavy read-only reports on a real standby (issue 19 part 2): a private primary, a streaming replica of it
(``pg_basebackup -R``, tests/replica.py), and the API with ``CAREWATCH_REPORT_DATABASE_URL`` naming a
carewatch_report login, standby first, ``target_session_attrs=prefer-standby``.

Proved here, each with the real servers: (a) the reports' queries run on the standby, as the report login, read-only
(a hook in ``Ctx.note`` asks the request's own connection); (b) they answer exactly what the primary answers, tenancy
included; (c) their audit rows land on the primary; (d) with the standby stopped they still answer, from the primary
(through the report login when its URL names the primary too, else through the primary pool), and a standby that
comes back is read again; (e) a report the standby cancels (a genuine replay conflict, an operator's cancel or
terminate) is read again from the primary, one stopped there too answers 503 with Retry-After, one stopped by its
own statement_timeout is not read again (told from a cancellation without reading the message: the servers here
speak German where the translation is installed), a session the standby ends between two statements is read again
and not handed out again; each counted in the API's Prometheus metrics, the standby's lag measured when scraped.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databases import role_login
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict
from replica import StreamingStandby, skip_reason

from carewatch.api import metrics, pooling
from carewatch.api.app import create_app
from carewatch.api.deps import Ctx
from carewatch.db import (
    REPORT_POOL_NAME,
    PrivilegedReportLogin,
    configure_report_connection,
    knows_statement_timeout,
    learn_statement_timeout,
    server_build,
)
from carewatch.db.migrate import migrate
from carewatch.embedded import EmbeddedPostgres, free_port
from carewatch.settings import Settings

from .conftest import World, build_world

SIGNING_KEY = "test-signing-key-" + "x" * 32


#: The language the servers here speak: gettext's LANGUAGE, which PostgreSQL's messages follow when a session's
#: lc_messages is not plain "C" (initdb's C.UTF-8 here), for every session whose server has the translation.
SERVER_LANGUAGE = "de"


@pytest.fixture(scope="module")
def pair(scratch_dir: Path) -> Iterator[tuple[EmbeddedPostgres, StreamingStandby]]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as env:  # for every start of the servers in this module (the standby's too)
        env.setenv("LANGUAGE", SERVER_LANGUAGE)
        yield from _pair(scratch_dir)


def speaks_english(conn: psycopg.Connection) -> bool:
    """Whether this session's server messages are in English (its lc_messages is "C", or no translation)."""
    with pytest.raises(psycopg.errors.UndefinedTable) as missing, conn.transaction():
        conn.execute("SELECT * FROM no_such_table")
    return "does not exist" in str(missing.value.diag.message_primary)


def _pair(scratch_dir: Path) -> Iterator[tuple[EmbeddedPostgres, StreamingStandby]]:
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
        made = {name: stack.enter_context(TestClient(create_app(_settings(
                    tmp_path_factory.mktemp(f"reports-{name}"), app_dsn, url))))
                for name, url in (("reports", both), ("standby_only", alone), ("primary", None))}
        # one lag gauge per process: here it follows the 'reports' app (in `carewatch api`, the one app)
        metrics.measure_lag_with(made["reports"].app.state.reports.scrape_lag)
        yield made


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
    no_standby, unreachable = _reads("primary", "no_standby"), _reads("primary_pool", "unreachable")
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
        assert _reads("primary", "no_standby") == no_standby + 1
        assert math.isnan(_sample("carewatch_api_report_standby_lag_seconds"))  # no standby, no lag to show
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
        assert _reads("primary_pool", "unreachable") == unreachable + 2
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


# ------------------------------------------------------------------------------------------------------------
# A report the database stops (a replay conflict on the standby, a cancellation, a lost session): read again from
# the primary, else 503 with Retry-After; and the Prometheus metrics of where reports read (api/metrics.py)
# ------------------------------------------------------------------------------------------------------------
def _sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _reads(target: str, reason: str) -> float:
    return _sample("carewatch_api_report_reads_total", target=target, reason=reason)


def _stops(server: str, reason: str) -> float:
    return _sample("carewatch_api_report_cancellations_total", server=server, reason=reason)


def _conflicts(standby: StreamingStandby, database: str) -> dict[str, int]:
    """The standby's own count of queries it cancelled for recovery, by kind (pg_stat_database_conflicts)."""
    with psycopg.connect(standby.admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT confl_lock, confl_snapshot FROM pg_stat_database_conflicts WHERE datname = %s",
                           (database,)).fetchone()
    return {"lock": row[0], "snapshot": row[1]}


@pytest.fixture
def conflicts_at_once(pair: tuple[EmbeddedPostgres, StreamingStandby]) -> Iterator[None]:
    """The standby cancels a conflicting query as soon as replay needs to (max_standby_streaming_delay = 0), as
    it does after 30 s by default; and vacuum on the primary does not wait for the standby's queries."""
    _, standby = pair
    with psycopg.connect(standby.admin_dsn, autocommit=True) as conn:
        assert conn.execute("SHOW hot_standby_feedback").fetchone() == ("off",)
        conn.execute("ALTER SYSTEM SET max_standby_streaming_delay = 0")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with psycopg.connect(standby.admin_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_standby_streaming_delay")
            conn.execute("SELECT pg_reload_conf()")


class Stopper:
    """A test hook in ``Ctx.note`` (as ``reads``): the first note a report makes on the standby (and, when asked,
    on the primary) turns it into a long report, ``SELECT pg_sleep(30)``, which something real then stops while it
    runs: the primary replays a change the standby must cancel it for (``lock``: LOCK TABLE on a table it read;
    ``snapshot``: VACUUM of rows deleted after its snapshot was taken), an operator cancels or terminates its
    backend (``cancel``, ``terminate``), or its own ``statement_timeout`` (``timeout``). Or, between two of the
    report's statements, while its session is idle in its transaction, the session is ended: by the standby for a
    conflict with recovery (``idle_conflict``: the FATAL "terminating connection", after LOCK TABLE on a table the
    report read) or by an operator (``idle_terminate``); the report's next statement finds it gone. ``pids``: the
    backends stopped; ``raised``: what the report's statement raised, for ``timeout``."""

    def __init__(self, primary: EmbeddedPostgres, standby: StreamingStandby,
                 on_standby: str, on_primary: str | None = None) -> None:
        self.primary, self.standby = primary, standby
        self.how = {True: on_standby, False: on_primary}
        self.done: set[bool] = set()
        self.errors: list[BaseException] = []
        self.pids: list[int] = []
        self.raised: list[psycopg.Error] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        inner = Ctx.note
        stopper = self

        def note(ctx: Ctx, action: str, subject_type: str | None = None, subject_id: Any = None,
                 **detail: Any) -> None:
            inner(ctx, action, subject_type, subject_id, **detail)
            stopper.stop(ctx.conn)

        monkeypatch.setattr(Ctx, "note", note)

    def stop(self, conn: psycopg.Connection) -> None:
        on_standby, pid = conn.execute("SELECT pg_is_in_recovery(), pg_backend_pid()").fetchone()
        how = self.how[on_standby]
        if how is None or on_standby in self.done:
            return
        self.done.add(on_standby)
        self.pids.append(pid)
        server = self.standby if on_standby else self.primary
        if how in ("lock", "idle_conflict"):
            conn.execute("SELECT count(*) FROM residents")  # AccessShareLock on residents until the report ends
        if how == "timeout":
            conn.execute("SET LOCAL statement_timeout = '200ms'")
            try:
                conn.execute("SELECT pg_sleep(30)")
            except psycopg.Error as exc:
                self.raised.append(exc)
                raise
            return
        if how.startswith("idle_"):
            self._end_idle_session(how, server, pid)  # here, in the report's thread: its session sits idle
            return
        thread = threading.Thread(target=self._meanwhile, args=(how, server, pid), daemon=True)
        thread.start()
        try:
            conn.execute("SELECT pg_sleep(30)")
        finally:
            thread.join(60)

    def _meanwhile(self, how: str, server: EmbeddedPostgres, pid: int) -> None:
        try:
            with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
                deadline = time.monotonic() + 20
                while conn.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s",
                                   (pid,)).fetchone() != ("PgSleep",):
                    assert time.monotonic() < deadline, "the report never started sleeping"
                    time.sleep(0.05)
                if how in ("cancel", "terminate"):
                    assert conn.execute(f"SELECT pg_{how}_backend(%s)", (pid,)).fetchone() == (True,)
                    return
            with psycopg.connect(self.primary.dsn, autocommit=True) as conn:  # the owner, in the database
                if how == "lock":
                    with conn.transaction():
                        conn.execute("LOCK TABLE residents IN ACCESS EXCLUSIVE MODE")
                elif how == "snapshot":
                    conn.execute("DELETE FROM conflict_scratch")
                    conn.execute("VACUUM conflict_scratch")
        except BaseException as exc:  # seen by the test, not lost in the thread
            self.errors.append(exc)

    def _end_idle_session(self, how: str, server: EmbeddedPostgres, pid: int) -> None:
        if how == "idle_conflict":  # replayed on the standby, which must end the session holding the lock
            with psycopg.connect(self.primary.dsn) as conn:
                conn.execute("LOCK TABLE residents IN ACCESS EXCLUSIVE MODE")
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            if how == "idle_terminate":
                assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            deadline = time.monotonic() + 20
            while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, f"the report's session {pid} was never ended"
                time.sleep(0.05)


@pytest.fixture
def scratch(pair: tuple[EmbeddedPostgres, StreamingStandby]) -> Iterator[None]:
    """A table of the primary's whose rows the snapshot conflict deletes and vacuums away."""
    primary, standby = pair
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE conflict_scratch AS SELECT g AS n FROM generate_series(1, 1000) AS g")
    standby.catch_up()
    try:
        yield
    finally:
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE conflict_scratch")


def _report_sessions(server: EmbeddedPostgres) -> set[int]:
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                               (REPORT_POOL_NAME,))}


#: The kind of each conflict in the standby's pg_stat_database_conflicts.
CONFLICT_KIND = {"lock": "lock", "snapshot": "snapshot", "idle_conflict": "lock"}


@pytest.mark.parametrize("conflict", ["lock", "snapshot", "idle_conflict"])
def test_a_report_cancelled_by_a_replay_conflict_on_the_standby_is_read_again_from_the_primary(
        pair: tuple[EmbeddedPostgres, StreamingStandby], logins: tuple[str, str], clients: dict[str, TestClient],
        world: World, reads: list[dict[str, Any]], conflicts_at_once: None, scratch: None, conflict: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A genuine recovery conflict: the standby cancels the report's query (SQLSTATE 40001, counted in its own
    pg_stat_database_conflicts), or, when it comes while the report's session sits idle between two statements
    (``idle_conflict``), ends the session (FATAL 40001) and the next statement finds it gone; the caller still
    gets the answer, read from the primary, audited once. An ended session's connection is discarded by the report
    pool when given back (returns_bad), never handed out again; a cancelled query's session lives on."""
    primary, standby = pair
    app_login = str(conninfo_to_dict(logins[0])["user"])
    kind = CONFLICT_KIND[conflict]
    client = clients["reports"]
    pool = client.app.state.reports.pool
    path = f"/residents/{world.resident_a}/fhir"
    expected = clients["primary"].get(path, headers=world.headers(clients["primary"], "gp"))
    gp = world.headers(client, "gp")
    audited = len(_audit_rows(primary, path))
    before = (_conflicts(standby, primary.database), _stops("standby", "conflict"),
              _reads("primary_pool", "conflict"), pool.get_stats().get("returns_bad", 0))
    stopper = Stopper(primary, standby, conflict)
    stopper.install(monkeypatch)
    reads.clear()
    got = client.get(path, headers=gp)
    assert not stopper.errors, stopper.errors
    assert got.status_code == 200, got.text
    assert _comparable(got.json()) == _comparable(expected.json())
    # first on the standby (cancelled there), then every query of the second run on the primary, read-only
    assert reads[0]["standby"] and reads[0]["port"] == standby.port, reads
    again = reads[1:]
    assert again and all(not r["standby"] and r["port"] == primary.port and r["user"] == app_login
                         and r["read_only"] for r in again), reads
    # the standby really cancelled it for recovery, and said so; the API counted it
    deadline = time.monotonic() + 10  # a backend flushes its statistics within a second or so of going idle
    while (after := _conflicts(standby, primary.database))[kind] == before[0][kind]:
        assert time.monotonic() < deadline, (before[0], after)
        time.sleep(0.2)
    assert after[kind] == before[0][kind] + 1, (before[0], after)
    assert _stops("standby", "conflict") == before[1] + 1
    assert _reads("primary_pool", "conflict") == before[2] + 1
    # one audit row for the one request, with the answer's status
    rows = _audit_rows(primary, path)
    assert rows[audited:] == [(world.users["gp"], "export", 200)], rows[audited:]
    # the connection: discarded when its session was ended, kept when only its query was cancelled; the next
    # reports read the standby either way (the stopper stops one report a server)
    ended = conflict == "idle_conflict"
    assert pool.get_stats().get("returns_bad", 0) == before[3] + ended
    assert (stopper.pids[0] in _report_sessions(standby)) != ended
    for _ in range(3):
        reads.clear()
        assert client.get(path, headers=gp).status_code == 200
        assert reads and all(r["standby"] for r in reads), reads


@pytest.mark.parametrize(("how", "reason"), [("cancel", "cancelled"), ("terminate", "connection_lost")])
def test_a_report_an_operator_stops_on_the_standby_is_read_again_from_the_primary(
        pair: tuple[EmbeddedPostgres, StreamingStandby], clients: dict[str, TestClient], world: World,
        reads: list[dict[str, Any]], how: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pg_cancel_backend (57014) or pg_terminate_backend (57P01) of the report's backend on the standby: stopped
    there, not by its own timeout, so the primary answers it."""
    primary, standby = pair
    client = clients["reports"]
    path = f"/residents/{world.resident_a}/baselines"
    before = _stops("standby", reason), _reads("primary_pool", reason)
    stopper = Stopper(primary, standby, how)
    stopper.install(monkeypatch)
    reads.clear()
    got = client.get(path, headers=world.headers(client, "gp"))
    assert not stopper.errors, stopper.errors
    assert got.status_code == 200, got.text
    assert reads[0]["standby"] and reads[1:] and not any(r["standby"] for r in reads[1:]), reads
    assert (_stops("standby", reason), _reads("primary_pool", reason)) == (before[0] + 1, before[1] + 1)
    # the report pool still works on the standby (a terminated connection was discarded, not handed out again)
    monkeypatch.undo()
    for _ in range(3):
        assert client.get(path, headers=world.headers(client, "gp")).status_code == 200
    assert client.get("/healthz").json()["reports"]["source"] == "standby"


def test_a_report_stopped_on_the_standby_and_again_on_the_primary_answers_503_with_retry_after(
        pair: tuple[EmbeddedPostgres, StreamingStandby], clients: dict[str, TestClient], world: World,
        reads: list[dict[str, Any]], conflicts_at_once: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled by a replay conflict on the standby, then cancelled on the primary too: a 503 that says what
    happened and when to ask again, counted and audited (once), never a 500."""
    primary, standby = pair
    client = clients["reports"]
    path = f"/households/{world.household_a}/report.csv"
    audited = len(_audit_rows(primary, path))
    before = _stops("standby", "conflict"), _stops("primary", "cancelled"), _sample(
        "carewatch_api_report_unavailable_total", reason="cancelled")
    stopper = Stopper(primary, standby, "lock", on_primary="cancel")
    stopper.install(monkeypatch)
    reads.clear()
    got = client.get(f"{path}?days=7", headers=world.headers(client, "council"))
    assert not stopper.errors, stopper.errors
    assert got.status_code == 503, got.text
    assert got.headers["retry-after"] == str(pooling.REPORT_RETRY_AFTER_S)
    detail = got.json()["detail"]
    assert "conflict with recovery" in detail and "from the primary failed too" in detail, detail
    assert "cancelled by the database server" in detail and "ask again in 10 seconds" in detail, detail
    assert reads[0]["standby"] and not reads[-1]["standby"], reads
    assert (_stops("standby", "conflict"), _stops("primary", "cancelled"),
            _sample("carewatch_api_report_unavailable_total", reason="cancelled")) == tuple(b + 1 for b in before)
    # audited once, with its status: what the second run had noted when it was stopped (the household read; the
    # export is noted once the file is made)
    assert _audit_rows(primary, path)[audited:] == [(world.users["council"], "read", 503)]


def test_a_report_whose_session_ends_between_statements_on_the_standby_and_on_the_primary_answers_503(
        pair: tuple[EmbeddedPostgres, StreamingStandby], clients: dict[str, TestClient], world: World,
        reads: list[dict[str, Any]], conflicts_at_once: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ended between statements twice: by the standby (a replay conflict), then on the primary (an operator's
    pg_terminate_backend of the idle session): 503 with Retry-After and what happened; both pools discard the
    broken connection, and the API goes on answering."""
    primary, standby = pair
    client = clients["reports"]
    path = f"/residents/{world.resident_a}/fhir"
    pools = client.app.state.reports.pool, client.app.state.pool
    before = (_stops("standby", "conflict"), _stops("primary", "connection_lost"),
              _sample("carewatch_api_report_unavailable_total", reason="connection_lost"),
              *(pool.get_stats().get("returns_bad", 0) for pool in pools))
    stopper = Stopper(primary, standby, "idle_conflict", on_primary="idle_terminate")
    stopper.install(monkeypatch)
    reads.clear()
    got = client.get(path, headers=world.headers(client, "gp"))
    assert not stopper.errors, stopper.errors
    assert got.status_code == 503, got.text
    assert got.headers["retry-after"] == str(pooling.REPORT_RETRY_AFTER_S)
    detail = got.json()["detail"]
    assert "conflict with recovery" in detail and "its database session ended" in detail, detail
    assert reads[0]["standby"] and not reads[-1]["standby"], reads
    assert (_stops("standby", "conflict"), _stops("primary", "connection_lost"),
            _sample("carewatch_api_report_unavailable_total", reason="connection_lost"),
            *(pool.get_stats().get("returns_bad", 0) for pool in pools)) == tuple(b + 1 for b in before)
    reads.clear()  # (the stopper stops one report a server)
    assert client.get(path, headers=world.headers(client, "gp")).status_code == 200
    assert reads and all(r["standby"] for r in reads), reads
    assert client.get(f"/residents/{world.resident_a}", headers=world.headers(client, "gp")).status_code == 200


def test_a_report_stopped_by_its_statement_timeout_is_not_read_again(
        pair: tuple[EmbeddedPostgres, StreamingStandby], clients: dict[str, TestClient], world: World,
        reads: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement_timeout (57014 too) is a limit of our own: the primary would take as long, so no second run; a
    503 that says so, without Retry-After (asking again the same is no use)."""
    primary, standby = pair
    client = clients["reports"]
    before = _stops("standby", "statement_timeout")
    stopper = Stopper(primary, standby, "timeout")
    stopper.install(monkeypatch)
    reads.clear()
    got = client.get(f"/residents/{world.resident_a}/readings?metric=spo2", headers=world.headers(client, "gp"))
    assert got.status_code == 503, got.text
    assert "retry-after" not in got.headers
    assert "statement_timeout" in got.json()["detail"] and "shorter period" in got.json()["detail"]
    assert reads and all(r["standby"] for r in reads), reads  # never on the primary
    assert _stops("standby", "statement_timeout") == before + 1
    # told apart without the message: where the translation is installed, the standby said it in German
    with psycopg.connect(standby.admin_dsn, autocommit=True) as conn:
        english = speaks_english(conn)
    message = str(stopper.raised[0].diag.message_primary)
    assert ("statement timeout" in message) == english, message


def test_report_metrics_say_where_reports_read_and_the_standby_lag(
        clients: dict[str, TestClient], world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """carewatch_api_report_reads_total by target and reason, and the lag gauge, on the metrics port."""
    path = f"/residents/{world.resident_a}/fhir"
    before = {key: _reads(*key) for key in (("standby", "fresh"), ("primary_pool", "not_configured"),
                                            ("primary_pool", "lag"))}
    for name in ("reports", "primary"):
        assert clients[name].get(path, headers=world.headers(clients[name], "gp")).status_code == 200
    assert _reads("standby", "fresh") == before["standby", "fresh"] + 1
    assert _reads("primary_pool", "not_configured") == before["primary_pool", "not_configured"] + 1
    lag = _sample("carewatch_api_report_standby_lag_seconds")
    assert 0 <= lag < 5, lag
    # behind the limit: read from the primary pool, reason lag
    monkeypatch.setattr(clients["reports"].app.state.reports, "max_lag_s", -1.0)
    assert clients["reports"].get(path, headers=world.headers(clients["reports"], "gp")).status_code == 200
    assert _reads("primary_pool", "lag") == before["primary_pool", "lag"] + 1
    # served as `carewatch api` serves them (CAREWATCH_METRICS_PORT)
    port = free_port()
    metrics.serve(port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in ("carewatch_api_report_reads_total{reason=\"fresh\",target=\"standby\"}",
                 "carewatch_api_report_standby_lag_seconds", "carewatch_api_report_cancellations_total",
                 "carewatch_api_report_unavailable_total"):
        assert name in text, name


def _scrape(port: int, name: str) -> float:
    """One sample of the API's metrics port, as Prometheus reads it."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


def test_the_standby_lag_gauge_is_measured_when_prometheus_scrapes(
        pair: tuple[EmbeddedPostgres, StreamingStandby], clients: dict[str, TestClient], world: World,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With replay paused on the standby and no report asked for, each scrape of the metrics port shows the lag as
    it is then (it grows between two scrapes), not what the last report saw; scrapes together measure once."""
    primary, standby = pair
    client = clients["reports"]
    gauge = "carewatch_api_report_standby_lag_seconds"
    monkeypatch.setattr(pooling, "LAG_FRESH_S", 0.5)
    measured: list[float] = []
    measure = pooling.standby_state

    def counting(conn: psycopg.Connection) -> Any:
        measured.append(time.monotonic())
        return measure(conn)

    monkeypatch.setattr(pooling, "standby_state", counting)
    port = free_port()
    metrics.serve(port)
    assert client.get(f"/residents/{world.resident_a}/fhir", headers=world.headers(client, "gp")).status_code == 200
    assert _scrape(port, gauge) < 1.0  # caught up: what that report saw
    with psycopg.connect(standby.admin_dsn, autocommit=True) as conn:
        paused_at = time.monotonic()
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        with psycopg.connect(primary.dsn) as conn:  # WAL the standby receives and does not replay
            conn.execute("UPDATE residents SET display_name = display_name WHERE resident_id = %s",
                          (world.resident_a,))
        time.sleep(1.2)
        count, since_pause = len(measured), time.monotonic() - paused_at
        first = _scrape(port, gauge)
        assert first >= since_pause, (first, since_pause)  # measured at the scrape: no report since
        time.sleep(1.2)
        second = _scrape(port, gauge)
        assert second >= first + 1.0, (first, second)
        assert len(measured) == count + 2
        # scrapes arriving together: one measurement, one value
        time.sleep(0.6)
        with ThreadPoolExecutor(4) as scrapers:
            values = list(scrapers.map(lambda _: _scrape(port, gauge), range(4)))
        assert len(measured) == count + 3 and len(set(values)) == 1 and values[0] > second, (values, measured)
    finally:
        with psycopg.connect(standby.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
    standby.catch_up()
    time.sleep(0.6)
    assert _scrape(port, gauge) < 1.0


def test_every_report_route_is_read_again_when_the_standby_stops_it() -> None:
    """Every route on a report connection has ReportRoute's retry (its router's route_class), so a new report
    cannot forget it; no other route does."""
    app = create_app(Settings(database_url="postgresql://unused/none", jwt_secret=SIGNING_KEY))
    reports = {rc.path for rc in iter_route_contexts(app.routes) if isinstance(rc.original_route, APIRoute)
               and pooling._depends_on(rc.original_route.dependant, pooling.get_report_conn)}
    assert reports >= {"/audit", "/residents/{resident_id}/fhir", "/reports/adoption",
                       "/households/{site_id}/report.pdf"}
    for rc in iter_route_contexts(app.routes):
        if rc.path in reports:
            assert isinstance(rc.original_route, pooling.ReportRoute), rc.path


def test_stop_reasons_of_real_server_errors(pair: tuple[EmbeddedPostgres, StreamingStandby]) -> None:
    """What the database raises, classified: a timeout and a cancellation (both 57014) told apart whatever language
    the session's messages are in (English under lc_messages C; the server's default, German here where the
    translation is installed), a terminated session, and the route's own faults (left alone)."""
    primary, _ = pair
    languages = []
    for lc_messages in ("C", None):
        with psycopg.connect(primary.admin_dsn, autocommit=True) as conn:
            if lc_messages:
                conn.execute("SELECT set_config('lc_messages', %s, false)", (lc_messages,))
            languages.append(speaks_english(conn))
            build = server_build(conn)
            learn_statement_timeout(conn)
            assert knows_statement_timeout(build)
            conn.execute("SET statement_timeout = '50ms'")
            with pytest.raises(psycopg.errors.QueryCanceled) as timeout:
                conn.execute("SELECT pg_sleep(5)")
            conn.execute("RESET statement_timeout")
            with pytest.raises(psycopg.errors.QueryCanceled) as cancel:
                conn.execute("SELECT pg_cancel_backend(pg_backend_pid()), pg_sleep(5)")
            with pytest.raises(psycopg.errors.UndefinedTable) as own:
                conn.execute("SELECT * FROM no_such_table")
            with pytest.raises(psycopg.errors.DivisionByZero) as data:
                conn.execute("SELECT 1 / 0")
            with pytest.raises(psycopg.OperationalError) as ended:
                conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert [pooling.stop_reason(e.value, build) for e in (timeout, cancel, own, data, ended)] == [
            "statement_timeout", "cancelled", None, None, "connection_lost"], lc_messages
        # a build whose place of a timeout is not known: both count as a timeout (never read twice)
        assert [pooling.stop_reason(e.value, "9.9 (never seen)") for e in (timeout, cancel)] == [
            "statement_timeout", "statement_timeout"]
    assert languages[0], "lc_messages C is English"


def test_the_servers_here_speak_another_language(pair: tuple[EmbeddedPostgres, StreamingStandby]) -> None:
    """The tests above tell a timeout from a cancellation in another language only where PostgreSQL's
    translation is installed (Debian: in the server package; C.UTF-8 needs glibc's built-in locale)."""
    for server in pair:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            if speaks_english(conn):
                pytest.skip(f"PostgreSQL speaks English only here (no '{SERVER_LANGUAGE}' translation, or "
                            "lc_messages C): timeouts were told from cancellations in English only")
