"""Migrations: ordered, idempotent, recorded; the plain-PostgreSQL store partitions readings by month."""

from __future__ import annotations

import psycopg
import pytest

from carewatch.db.migrate import available_migrations, migrate


def test_migrations_are_ordered_and_unique() -> None:
    for timescale in (False, True):
        versions = [m.version for m in available_migrations(timescale)]
        assert versions == sorted(set(versions))
    assert available_migrations(True)[1].variant == "timescale"


def test_migrate_is_idempotent(database: str) -> None:
    assert migrate(database) == []
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in available_migrations(False)]


def test_readings_are_partitioned_and_reject_duplicates(db: psycopg.Connection, uid: str) -> None:
    parts = db.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass").fetchone()[0]
    assert parts >= 12
    row = ("2026-11-22T08:00:00Z", f"gw-{uid}", 1, "s", "r", "d", "spo2", 95.0, "2026-11-22T08:00:00Z")
    sql = ("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value, "
           "received_at, subject_kind) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,'resident') ON CONFLICT DO NOTHING")
    assert db.execute(sql, row).rowcount == 1
    assert db.execute(sql, row).rowcount == 0
    db.rollback()


def test_audit_log_is_append_only(db: psycopg.Connection) -> None:
    db.execute("INSERT INTO audit_log (action, username) VALUES ('read', 'test')")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("UPDATE audit_log SET username = 'someone else'")
    db.rollback()
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("DELETE FROM audit_log")
    db.rollback()


def test_scale2_needs_who_when_why(db: psycopg.Connection, uid: str) -> None:
    db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Test')", (f"s-{uid}",))
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, scale2) "
                   "VALUES (%s, %s, 'A', '1940-01-01', true)", (f"r-{uid}", f"s-{uid}"))
    db.rollback()
