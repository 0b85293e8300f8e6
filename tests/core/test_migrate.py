"""Migrations: ordered, idempotent, recorded; the plain-PostgreSQL store partitions readings by month."""

from __future__ import annotations

import re

import psycopg
import pytest

from carewatch.db.migrate import _split_statements, available_migrations, migrate


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


_HOURLY_VITALS_COLUMNS = ["subject_kind", "subject_id", "metric", "bucket", "avg_value", "min_value", "max_value", "n"]


def test_hourly_vitals_is_per_subject_kind_on_plain_postgresql(db: psycopg.Connection, uid: str) -> None:
    """A resident and a household sharing one id are two rows of the hourly roll-up, not one (0025, 0027)."""
    shared = f"hv-{uid}"
    columns = [r[0] for r in db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'hourly_vitals' "
        "ORDER BY ordinal_position").fetchall()]
    assert columns == _HOURLY_VITALS_COLUMNS
    sql = ("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value, "
           "received_at, subject_kind) VALUES ('2026-11-22T08:10:00Z', %s, %s, %s, %s, 'd', 'spo2', %s, "
           "'2026-11-22T08:10:00Z', %s)")
    db.execute(sql, (f"gw-{uid}", 1, shared, shared, 84.0, "household"))
    db.execute(sql, (f"gw-{uid}", 2, f"home-{uid}", shared, 97.0, "resident"))
    rows = db.execute("SELECT subject_kind, avg_value, n FROM hourly_vitals WHERE subject_id = %s ORDER BY 1",
                      (shared,)).fetchall()
    assert rows == [("household", 84.0, 1), ("resident", 97.0, 1)]
    db.rollback()


def test_timescale_rebuilds_hourly_vitals_per_subject_kind_outside_a_transaction() -> None:
    """TimescaleDB cannot run here: the last TimescaleDB migration that defines ``hourly_vitals`` is held to the
    plain view's columns and grouping, and to what TimescaleDB needs to rebuild a continuous aggregate (no
    transaction: the migration runs statement by statement; drop, create WITH NO DATA, refresh, policy)."""
    defining = [m for m in available_migrations(True) if "hourly_vitals" in m.sql and "CREATE" in m.sql]
    last = defining[-1]
    assert (last.version, last.variant, last.transactional) == (27, "timescale", False)
    statements = [" ".join(line for line in s.splitlines() if not line.lstrip().startswith("--")).strip()
                  for s in _split_statements(last.sql)]
    assert [s.split("(")[0].split(" AS")[0] for s in statements] == [
        "DROP MATERIALIZED VIEW IF EXISTS hourly_vitals;", "CREATE MATERIALIZED VIEW hourly_vitals WITH ",
        "CALL refresh_continuous_aggregate", "SELECT add_continuous_aggregate_policy"]
    create = statements[1]
    assert "timescaledb.continuous" in create and create.endswith("WITH NO DATA;")
    select = create[create.index("SELECT ") + len("SELECT "):create.index(" FROM readings")]
    aliases = [item.split(" AS ")[-1].strip() for item in re.split(r",\s*(?![^()]*\))", select)]
    assert aliases == _HOURLY_VITALS_COLUMNS
    group_by = create[create.index("GROUP BY ") + len("GROUP BY "):create.index(" WITH NO DATA")]
    assert [g.strip() for g in re.split(r",\s*(?![^()]*\))", group_by)][:3] == ["subject_kind", "subject_id", "metric"]
    # the plain store carries the same version (a no-op restating 0025's view)
    assert any(m.version == 27 and m.variant == "plain" for m in available_migrations(False))
