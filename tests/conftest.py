"""Shared pytest fixtures: external conformance vectors and the real servers the suite talks to."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conformance import CONFORMANCE_DIR, REPO_ROOT, load_conformance  # noqa: F401  (re-exported)
from databases import fresh_database, role_login

from carewatch.embedded import EmbeddedBroker, EmbeddedPostgres, free_port, port_open, postgres_answers
from carewatch.settings import Settings

# Every test's requests come from 127.0.0.1 (or TestClient's "testclient") into one database per run, so the
# per-address sign-in limit would pool the whole suite's failed sign-ins: lift it for every Settings() made here.
# Tests of that limit set it themselves (tests/api/test_api_security.py).
os.environ.setdefault("CAREWATCH_LOGIN_MAX_FAILURES_PER_CLIENT", "100000")

# ------------------------------------------------------------------------------------------------------------
# Real servers. PostgreSQL: CAREWATCH_TEST_DSN, else the local server on 127.0.0.1:5432, else a private
# cluster.
# MQTT: CAREWATCH_TEST_MQTT, else Mosquitto on 127.0.0.1:1883, else a private mosquitto on a free port.
# ------------------------------------------------------------------------------------------------------------




@pytest.fixture(scope="session")
def test_settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def scratch_dir() -> Iterator[Path]:
    """A world-traversable temp dir (postgres may run as another account when we are root)."""
    path = Path(tempfile.mkdtemp(prefix="carewatch-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(test_settings: Settings, scratch_dir: Path) -> Iterator[str]:
    """DSN of a PostgreSQL server we may create databases on (its 'postgres' database)."""
    if test_settings.test_dsn:
        yield test_settings.test_dsn
        return
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if port_open("127.0.0.1", 5432) and postgres_answers(local):
        yield local
        return
    private = EmbeddedPostgres(scratch_dir / "pg", free_port())
    private.start()
    yield private.admin_dsn
    private.stop(mode="immediate")


@pytest.fixture(scope="session")
def database(pg_server: str) -> Iterator[str]:
    """A fresh, migrated database for this test run; dropped afterwards."""
    with fresh_database(pg_server) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def app_database(pg_server: str, database: str) -> Iterator[str]:
    """The run's database as the application role (carewatch_app: what the API, ingest and the scorer use in a
    deployment), so the suite proves the role's privileges are enough."""
    with role_login(pg_server, database, "app") as dsn:
        yield dsn


@pytest.fixture
def db(database: str) -> Iterator[psycopg.Connection]:
    """A connection to the test database. Tests own their rows: use unique ids (see `uid`)."""
    with psycopg.connect(database) as conn:
        yield conn


@pytest.fixture
def uid() -> str:
    """A short unique suffix so tests sharing the run's database never collide."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def mqtt_url(test_settings: Settings, scratch_dir: Path) -> Iterator[str]:
    """URL of a real MQTT broker (Mosquitto)."""
    if test_settings.test_mqtt:
        yield test_settings.test_mqtt
        return
    if port_open("127.0.0.1", 1883):
        yield "mqtt://127.0.0.1:1883"
        return
    broker = EmbeddedBroker(scratch_dir / "mqtt", free_port())
    broker.start()
    yield broker.url
    broker.stop()


@pytest.fixture
def private_broker(scratch_dir: Path, uid: str) -> Iterator[EmbeddedBroker]:
    """A Mosquitto this test may stop and restart (fault tests)."""
    broker = EmbeddedBroker(scratch_dir / f"mqtt-{uid}", free_port())
    if broker.kind != "mosquitto":
        pytest.skip("fault tests need the mosquitto binary (apt-get install mosquitto)")
    broker.start()
    yield broker
    with contextlib.suppress(Exception):
        broker.stop()
