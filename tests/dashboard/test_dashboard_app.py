"""The dashboard against a live API (uvicorn in a thread on the test database), driven with AppTest."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import uvicorn
from carewatch.api.app import create_app
from carewatch.api.users import create_user
from carewatch.dashboard.client import news2_text, obs_text
from streamlit.testing.v1 import AppTest

from carewatch.settings import Settings

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PASSWORD = "dashboard pass 1"


@pytest.fixture(scope="module")
def live_api(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(database_url=database, jwt_secret="dash-" + "k" * 40,
                        state_dir=tmp_path_factory.mktemp("dash-api"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("API did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def home(database: str) -> dict[str, str]:
    uid = uuid.uuid4().hex[:8]
    site, resident = f"dash-home-{uid}", f"dash-res-{uid}"
    with psycopg.connect(database) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', %s)", (site, f"Oak {uid}"))
        conn.execute("""INSERT INTO residents (resident_id, site_id, display_name, date_of_birth)
                        VALUES (%s, %s, %s, %s)""", (resident, site, f"Mary {uid}", date(1933, 1, 1)))
        conn.execute("""INSERT INTO resident_state (resident_id, site_id, news2_score, news2_risk, news2_complete,
                                                    news2_at, next_obs_due)
                        VALUES (%s, %s, 6, 'medium', true, now(), %s)""",
                     (resident, site, datetime.now(UTC) - timedelta(minutes=10)))
        conn.execute("""INSERT INTO alerts (site_id, resident_id, subject_id, kind, severity, reason, action)
                        VALUES (%s, %s, %s, 'news2', 'medium', %s, 'Contact the GP or NHS 111 now')""",
                     (site, resident, resident, f"NEWS2 6 for Mary {uid}"))
        create_user(conn, f"carer-{uid}", "care_staff", password=PASSWORD, site_id=site)
    return {"site": site, "resident": resident, "uid": uid, "user": f"carer-{uid}"}


def _signed_in(live_api: str, username: str, password: str = PASSWORD) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.session_state["api_url"] = live_api
    at.run()
    at.text_input(key="username").input(username)
    at.text_input(key="password").input(password)
    at.button[0].click()
    at.run()
    return at


def test_care_staff_sees_grid_with_number_word_and_acknowledges(live_api: str, home: dict[str, str],
                                                               database: str) -> None:
    at = _signed_in(live_api, home["user"])
    assert not at.exception
    grid = at.dataframe[0].value
    row = grid[grid["Resident"] == f"Mary {home['uid']}"].iloc[0]
    assert row["NEWS2"] == "🟠 6 Medium" and row["Observations"] == "OVERDUE"
    assert row["Open alerts"] == "1 (medium)"
    assert any(f"NEWS2 6 for Mary {home['uid']}" in m.value for m in at.markdown)
    ack = [b for b in at.button if b.label == "Acknowledge"]
    assert len(ack) == 1
    ack[0].click()
    at.run()
    with psycopg.connect(database) as conn:
        status, by = conn.execute("SELECT status, acknowledged_by FROM alerts WHERE resident_id = %s",
                                  (home["resident"],)).fetchone()
    assert (status, by) == ("acknowledged", home["user"])


def test_wrong_password_shows_error(live_api: str, home: dict[str, str]) -> None:
    at = _signed_in(live_api, home["user"], "not the password")
    assert any("Sign-in failed" in e.value for e in at.error)
    assert "token" not in at.session_state


def test_formatting_helpers() -> None:
    assert news2_text({"score": 7, "label": "High", "colour": "red"}) == "🔴 7 High"
    assert news2_text(None) == "not shared"
    assert news2_text({"score": None, "label": "No score yet", "colour": "grey"}) == "⚪ No score yet"
    assert obs_text({"obs_overdue": False, "next_obs_due": "2024-05-01T14:30:00+00:00"}) == "due 15:30"  # BST
