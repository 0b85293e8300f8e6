"""Home overview, devices (bind/unbind, filters, no bind keys), gateways, dead letters, and app-level behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg_pool import ConnectionPool

from carewatch.api.app import MAX_BODY_BYTES, create_app
from carewatch.settings import Settings

from .conftest import incident_of

if TYPE_CHECKING:
    from conftest import World


def test_overview(client: TestClient, world: World, db: psycopg.Connection) -> None:
    db.execute("""INSERT INTO latest_readings (subject_kind, subject_id, metric, site_id, device_id, value, measured_at)
                  VALUES ('resident', %s, 'spo2', %s, %s, 94, now() - interval '10 minutes')""",
               (world.resident_a, world.home_a, world.device_a))
    db.execute("""INSERT INTO devices (device_id, site_id, kind, room, battery_pct, last_seen)
                  VALUES (%s, %s, 'motion_sensor', 'lounge', 80, now() - interval '5 hours')""",
               (f"pir-{world.uid}", world.home_a))
    db.execute("""INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action)
                  VALUES (%s, %s, 'resident', %s, 'soft_signs', 'low', 'r', 'a')""",
               (world.home_a, world.resident_a, world.resident_a))
    incident_of(db, world.alert_a)  # grouped as the engine does: two alerts, one problem
    db.commit()
    response = client.get(f"/sites/{world.home_a}/overview", headers=world.headers(client, "care_staff"))
    assert response.status_code == 200
    body = response.json()
    (resident,) = body["residents"]
    assert resident["resident_id"] == world.resident_a
    assert resident["news2"] == {"score": 5, "risk": "medium", "label": "Medium", "colour": "orange",
                                 "complete": True, "at": resident["news2"]["at"]}
    assert resident["obs_overdue"] is True
    assert (resident["open_alerts"], resident["worst_severity"]) == (2, "medium")
    assert (resident["open_incidents"], resident["worst_incident_severity"]) == (1, "medium")  # H-INC-01
    assert resident["latest_vitals"]["spo2"]["value"] == 94 and resident["latest_vitals"]["spo2"]["unit"] == "%"
    assert [w["device_id"] for w in resident["device_warnings"]] == [world.device_a]
    assert "battery 12%" in resident["device_warnings"][0]["problem"]
    site_warnings = {w["device_id"]: w["problem"] for w in body["device_warnings"]}
    assert "no data for 5 h" in site_warnings[f"pir-{world.uid}"]
    gp_view = client.get(f"/sites/{world.home_a}/overview", headers=world.headers(client, "gp")).json()
    assert [w["device_id"] for w in gp_view["device_warnings"]] == [world.device_a]  # no room sensors for GPs


def test_overview_query_count_does_not_grow_with_residents(api_settings: Settings, world: World,
                                                           db: psycopg.Connection) -> None:
    """O(residents) rows from a fixed number of queries: trace every statement on the app's own pool."""
    statements: list[str] = []

    class Tracing(psycopg.Cursor):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            statements.append(str(query))
            return super().execute(query, params, **kwargs)

    def configure(conn: psycopg.Connection) -> None:
        conn.cursor_factory = Tracing

    pool = ConnectionPool(api_settings.dsn, min_size=1, max_size=2, configure=configure, open=True)
    try:
        with TestClient(create_app(api_settings, pool=pool)) as traced:
            headers = world.headers(traced, "care_staff")
            statements.clear()
            traced.get(f"/sites/{world.home_a}/overview", headers=headers)
            few = len(statements)
            for i in range(5):
                db.execute("""INSERT INTO residents (resident_id, site_id, display_name, date_of_birth)
                              VALUES (%s, %s, 'x', '1940-01-01')""", (f"more-{i}-{world.uid}", world.home_a))
            db.commit()
            statements.clear()
            body = traced.get(f"/sites/{world.home_a}/overview", headers=headers).json()
    finally:
        pool.close()
    assert len(body["residents"]) == 6
    assert 4 <= len(statements) == few <= 10


def test_devices_filters_and_no_bind_key(client: TestClient, world: World) -> None:
    headers = world.headers(client, "manager")
    listed = client.get("/devices", headers=headers, params={"battery_below": 20})
    assert [d["device_id"] for d in listed.json()["items"]] == [world.device_a]
    assert "secret-bind-key" not in listed.text and "bind_key" not in listed.text
    assert client.get("/devices", headers=headers, params={"battery_below": 10}).json()["items"] == []
    assert client.get("/devices", headers=headers, params={"silent": True}).json()["items"] == []
    quiet = client.get("/devices", headers=headers, params={"silent": False}).json()["items"]
    assert [d["device_id"] for d in quiet] == [world.device_a]


def test_bind_and_unbind(client: TestClient, world: World, db: psycopg.Connection) -> None:
    headers = world.headers(client, "manager")
    url = f"/devices/{world.device_a}"
    unbound = client.post(f"{url}/unbind", headers=headers).json()
    assert unbound["resident_id"] is None and unbound["unbound_at"] is not None
    to_room = client.post(f"{url}/bind", json={"room": "Room 4", "role": "bedside"}, headers=headers).json()
    assert (to_room["room"], to_room["role"], to_room["resident_id"], to_room["unbound_at"]) == (
        "Room 4", "bedside", None, None)
    to_person = client.post(f"{url}/bind", json={"resident_id": world.resident_a}, headers=headers).json()
    assert (to_person["resident_id"], to_person["room"]) == (world.resident_a, None)
    both = client.post(f"{url}/bind", json={"resident_id": world.resident_a, "room": "x"}, headers=headers)
    assert both.status_code == 422 and "exactly one" in both.json()["message"]
    elsewhere = client.post(f"{url}/bind", json={"resident_id": world.resident_b}, headers=world.headers(
        client, "admin"))
    assert elsewhere.status_code == 409
    assert client.post(f"{url}/unbind", headers=world.headers(client, "care_staff")).status_code == 403


def test_gateways_and_dead_letters(client: TestClient, world: World) -> None:
    headers = world.headers(client, "manager")
    (gateway,) = client.get("/gateways", headers=headers).json()["items"]
    assert gateway["gateway_id"] == world.gateway_a and gateway["online"] is True
    assert (gateway["outbox_depth"], gateway["outbox_bytes"], gateway["last_seq"], gateway["missing_seqs"]) == (
        17, 4096, 120, 3)
    assert datetime.now(UTC) - datetime.fromisoformat(gateway["oldest_unsent"]) < timedelta(minutes=10)
    letters = client.get("/dead-letters", headers=headers).json()["items"]
    assert [d["raw"] for d in letters] == [f"raw-{world.home_a}"]
    assert client.get("/dead-letters", headers=world.headers(client, "care_staff")).status_code == 403


# ------------------------------------------------------------------------------------------------------------
def test_healthz_docs_and_openapi(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["database"] == "ok" and health["scoring"]["buckets"] == 64
    # the session's database is shared: a scorer another test ran and stopped leaves its sites stalled later on
    assert health["status"] == ("ok" if health["scoring"]["stalled_sites"] == 0 else "degraded")
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/residents/{resident_id}/observations" in schema["paths"]
    assert "OAuth2PasswordBearer" in schema["components"]["securitySchemes"]


def test_body_size_limit(client: TestClient, world: World) -> None:
    response = client.post(f"/residents/{world.resident_a}/observations", content=b"{" + b" " * MAX_BODY_BYTES + b"}",
                           headers={**world.headers(client, "care_staff"), "Content-Type": "application/json"})
    assert response.status_code == 413


@pytest.fixture
def broken_app(api_settings: Settings) -> FastAPI:
    app = create_app(api_settings)

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    return app


def test_unexpected_errors_have_no_stack_trace(broken_app: FastAPI) -> None:
    with TestClient(broken_app, raise_server_exceptions=False) as c:
        response = c.get("/boom")
    assert response.status_code == 500
    assert set(response.json()) == {"detail", "request_id"}
    assert "hunter2" not in response.text and "Traceback" not in response.text
