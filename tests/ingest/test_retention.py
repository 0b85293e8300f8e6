"""Retention and partition upkeep of the plain-PostgreSQL store (in a database of its own: it drops partitions)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from databases import fresh_database

from carewatch.ingest.store import apply_retention, ensure_partitions


@pytest.fixture
def own_db(pg_server: str) -> Iterator[psycopg.Connection]:
    with fresh_database(pg_server, "carewatch_retention") as dsn, psycopg.connect(dsn) as conn:
        yield conn


def _store(conn: psycopg.Connection, seq: int, at: datetime) -> None:
    conn.execute("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_kind, subject_id, device_id, "
                 "metric, value, received_at, flags) "
                 "VALUES (%s, 'gw-r', %s, 'site-r', 'resident', 'res-r', 'ox-r', 'spo2', 96, %s, '{}')",
                 (at, seq, at))
    conn.commit()


def _partitions(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'readings'::regclass")}


def test_retention_drops_whole_old_months_and_trims_the_default_partition(own_db: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    if own_db.execute("SELECT to_regclass('readings_default')").fetchone()[0] is None:
        pytest.skip("TimescaleDB store: retention is drop_chunks there")
    _store(own_db, 1, now - timedelta(days=2))
    _store(own_db, 2, now - timedelta(days=300))  # a monthly partition the migration made
    _store(own_db, 3, now - timedelta(days=500))  # before the partitions: the default partition
    old_month = f"readings_{(now - timedelta(days=300)):%Y_%m}"
    assert old_month in _partitions(own_db)

    dropped = apply_retention(own_db, retention_days=200)
    assert dropped >= 3  # months 7-13 back, at least
    assert old_month not in _partitions(own_db)
    assert f"readings_{now:%Y_%m}" in _partitions(own_db)
    assert [r[0] for r in own_db.execute("SELECT seq FROM readings ORDER BY seq")] == [1]
    assert apply_retention(own_db, retention_days=200) == 0  # idempotent


def test_partitions_are_kept_three_months_ahead_and_made_once(own_db: psycopg.Connection) -> None:
    if own_db.execute("SELECT to_regclass('readings_default')").fetchone()[0] is None:
        pytest.skip("TimescaleDB store: chunks are made by the extension")
    ahead = datetime.now(UTC) + timedelta(days=80)
    assert f"readings_{ahead:%Y_%m}" in _partitions(own_db)
    assert ensure_partitions(own_db) == 0  # the migration already made them
    _store(own_db, 1, ahead)  # lands in its month, not in the default partition
    assert own_db.execute("SELECT count(*) FROM readings_default").fetchone()[0] == 0
