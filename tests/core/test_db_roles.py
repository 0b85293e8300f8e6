"""Database roles (issue 13, finding 3): the application role cannot remove or change an audit row by any means,
the reporting role only reads, and creating the roles is idempotent and safe when runs race."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import psycopg
import pytest
from databases import fresh_database, role_login

from carewatch.db.migrate import migrate

#: Every way we know to remove or change an audit row, or to switch off what stops that. Each must fail.
TAMPERING = {
    "update": "UPDATE audit_log SET username = 'someone else'",
    "delete": "DELETE FROM audit_log",
    "truncate": "TRUNCATE audit_log",
    "upsert": "INSERT INTO audit_log (audit_id, action) SELECT audit_id, 'x' FROM audit_log LIMIT 1 "
              "ON CONFLICT (audit_id) DO UPDATE SET action = 'rewritten'",
    "disable trigger": "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
    "disable all triggers": "ALTER TABLE audit_log DISABLE TRIGGER ALL",
    "drop trigger": "DROP TRIGGER audit_log_append_only ON audit_log",
    "replace trigger function": "CREATE OR REPLACE FUNCTION carewatch_audit_append_only() RETURNS trigger "
                                "LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
    "replication role": "SET session_replication_role = replica",
    "drop table": "DROP TABLE audit_log",
    "rename table": "ALTER TABLE audit_log RENAME TO audit_log_old",
    "alter column": "ALTER TABLE audit_log ALTER COLUMN username TYPE varchar(1)",
    "rule": "CREATE RULE no_audit AS ON INSERT TO audit_log DO INSTEAD NOTHING",
    "policy": "ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY",
    "owner": "ALTER TABLE audit_log OWNER TO CURRENT_USER",
    "grant to self": "GRANT UPDATE, DELETE ON audit_log TO CURRENT_USER",
    "become owner": "SET ROLE postgres",
    "shadow table": "CREATE TABLE public.audit_log_shadow (x int)",
    "re-grant": "SELECT carewatch_apply_grants()",
}


@pytest.fixture(scope="module")
def app_dsn(pg_server: str, database: str) -> Iterator[str]:
    with role_login(pg_server, database, "app") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def report_dsn(pg_server: str, database: str) -> Iterator[str]:
    with role_login(pg_server, database, "report") as dsn:
        yield dsn


def _fails(dsn: str, statement: str, audit_id: int) -> bool:
    """Whether the statement fails, or leaves the role still unable to change or remove the row (a GRANT
    without the right to grant only warns, for instance)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(statement)
        except psycopg.Error:
            return True
        for follow_up in ("UPDATE audit_log SET username = 'x' WHERE audit_id = %s",
                          "DELETE FROM audit_log WHERE audit_id = %s"):
            try:
                conn.execute(follow_up, (audit_id,))
                return False
            except psycopg.Error:
                pass
    return True


@pytest.mark.parametrize("what", list(TAMPERING))
def test_application_role_cannot_change_or_remove_audit_rows(app_dsn: str, database: str, what: str) -> None:
    with psycopg.connect(app_dsn) as conn:  # what the role may do: add a row, read rows
        audit_id = conn.execute("INSERT INTO audit_log (action, username) VALUES ('read', %s) RETURNING audit_id",
                                (f"roles-{what}",)).fetchone()[0]
        conn.commit()
        assert conn.execute("SELECT username FROM audit_log WHERE audit_id = %s", (audit_id,)).fetchone() == (
            f"roles-{what}",)
    assert _fails(app_dsn, TAMPERING[what], audit_id), f"the application role could: {what}"
    with psycopg.connect(database) as conn:  # as the owner: the row and the table are as they were
        assert conn.execute("SELECT username, action FROM audit_log WHERE audit_id = %s",
                            (audit_id,)).fetchone() == (f"roles-{what}", "read")
        assert conn.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_log_append_only'").fetchone() \
            == ("O",)


def test_application_role_has_what_the_services_need(app_dsn: str, uid: str) -> None:
    """Enough for the API, ingest and the scorer (the API suite runs as this role throughout); no DDL."""
    with psycopg.connect(app_dsn) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'x')", (f"rl-{uid}",))
        conn.execute("UPDATE sites SET name = 'y' WHERE site_id = %s", (f"rl-{uid}",))
        conn.execute("DELETE FROM sites WHERE site_id = %s", (f"rl-{uid}",))
        assert conn.execute("SELECT carewatch_ensure_partitions(now(), now() + interval '1 month')").fetchone()
        assert conn.execute("SELECT carewatch_apply_retention(interval '10 years')").fetchone() == (0,)
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.anything (x int)")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM schema_migrations")


def test_reporting_role_only_reads_and_sees_no_secret(report_dsn: str) -> None:
    with psycopg.connect(report_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] >= 0
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] >= 0
        conn.rollback()
        assert conn.execute("SELECT count(username), count(role) FROM users").fetchone() is not None
        assert conn.execute("SELECT count(device_id), count(battery_pct) FROM devices").fetchone() is not None
        conn.rollback()
        for statement in ("INSERT INTO audit_log (action) VALUES ('x')", "UPDATE sites SET name = name",
                          "DELETE FROM alerts", "SELECT carewatch_apply_retention(interval '1 day')",
                          "SELECT password_hash FROM users", "SELECT bind_key FROM devices",
                          "SELECT * FROM auth_sessions", "SELECT * FROM login_failures"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()


def test_roles_are_created_idempotently_by_concurrent_migrations(pg_server: str) -> None:
    """Roles are cluster-wide: several databases migrating at once (other test runs, other deployments on the
    server) must all succeed, and each gets the grants."""
    def one(_: int) -> list[str]:
        with fresh_database(pg_server, prefix="carewatch_roles") as dsn:
            migrate(dsn)  # a second time: idempotent
            with psycopg.connect(dsn) as conn:
                return [r[0] for r in conn.execute(
                    "SELECT privilege_type FROM information_schema.role_table_grants "
                    "WHERE grantee = 'carewatch_app' AND table_name = 'audit_log' ORDER BY 1").fetchall()]

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, range(3)))
    assert results == [["INSERT", "SELECT"]] * 3
