"""Dashboard fixtures: a seeded estate (tests/dashboard_world.py) and the real API serving it over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from dashboard_world import PASSWORD, DashWorld, Stack, deteriorate, seed, serve_stack
from serving import serve
from streamlit.testing.v1 import AppTest

from carewatch.api.app import create_app
from carewatch.settings import Settings

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


@pytest.fixture(scope="module")
def stack(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``carewatch api`` and ``carewatch dashboard`` as child processes (the browser tests), one per module."""
    with serve_stack(database, tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def live_api(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API on a free port (uvicorn in a thread: real HTTP, same process so AppTest runs stay quick)."""
    settings = Settings(database_url=database, jwt_secret="dash-" + "k" * 40,
                        state_dir=tmp_path_factory.mktemp("dash-api"))
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture
def estate(database: str, live_api: str) -> DashWorld:
    """A fresh estate per test (unique ids), with the deteriorating resident's alert raised by the real engine."""
    with psycopg.connect(database) as conn:
        world = seed(conn, uuid.uuid4().hex[:8])
    deteriorate(live_api, world)
    return world


@pytest.fixture
def sign_in(live_api: str) -> Callable[..., AppTest]:
    """sign_in(username, password=PASSWORD): the app after typing the credentials into the sign-in form."""

    def run(username: str, password: str = PASSWORD) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.session_state["api_url"] = live_api
        at.run()
        at.text_input(key="username").input(username)
        at.text_input(key="password").input(password)
        at.button[0].click()
        at.run()
        return at

    return run
