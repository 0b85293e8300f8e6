"""Error shapes and the bad input schemathesis found (test_api_schemathesis.py), pinned as plain regressions.

Each case here was a 5xx or an undeclared response before: NUL characters (PostgreSQL text cannot hold them, so
they reached the database as a DataError, or broke the audit insert), clearing a user's role (ValueError), a
battery filter that underflowed a ``real``, and 422s whose ``detail`` was a string where the schema says a list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.testclient import TestClient

from carewatch.api import errors
from carewatch.api.app import create_app
from carewatch.api.errors import NUL_MESSAGE, nul_locations
from carewatch.api.pooling import Conn
from carewatch.settings import Settings

if TYPE_CHECKING:
    from conftest import World


def _is_problem_422(body: dict[str, Any]) -> bool:
    """The one 422 shape: a list of field errors and a one-line summary."""
    return (isinstance(body["detail"], list) and body["detail"] and isinstance(body["message"], str)
            and all({"loc", "field", "msg", "type"} <= set(e) for e in body["detail"]))


def test_nul_in_query_is_a_field_level_422(client: TestClient, world: World) -> None:
    response = client.get("/devices", params={"kind": "oxi\x00meter", "site": world.home_a},
                          headers=world.headers(client, "admin"))
    assert response.status_code == 422
    body = response.json()
    assert _is_problem_422(body)
    assert [e["field"] for e in body["detail"]] == ["kind"]
    assert body["detail"][0]["msg"] == NUL_MESSAGE


def test_nul_in_json_body_names_the_field_and_nothing_is_stored(client: TestClient, world: World) -> None:
    headers = world.headers(client, "admin")
    response = client.post(f"/alerts/{world.alert_a}/comment", json={"text": "called\x00GP"}, headers=headers)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "text"]]
    events = client.get(f"/alerts/{world.alert_a}", headers=headers).json()["events"]
    assert not any("called" in (e["comment"] or "") for e in events)
    fine = client.post(f"/alerts/{world.alert_a}/comment", json={"text": "called GP"}, headers=headers)
    assert fine.status_code == 200  # the same request without the NUL goes through


def test_nul_in_sign_in_form_is_422_not_500(client: TestClient, world: World) -> None:
    response = client.post("/auth/token", data={"username": "x\x00y", "password": "whatever it is"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "username"]


def test_nul_locations_pure() -> None:
    assert nul_locations("/sites/a\x00b", b"", "", b"") == [("path",)]
    assert nul_locations("/x", b"a=1&b=%00", "", b"") == [("query", "b")]
    assert nul_locations("/x", b"", "application/json", b'{"a": {"b": ["ok", "x\\u0000"]}}') == [
        ("body", "a", "b", "1")]
    assert nul_locations("/x", b"", "application/json", b'{"a": "\\\\u0000 is text"}') == []  # an escaped backslash
    assert nul_locations("/x", b"", "application/json", b"not json \\u0000") == []  # FastAPI reports bad JSON


def test_clearing_a_users_role_or_name_is_422(client: TestClient, world: World) -> None:
    headers = world.headers(client, "admin")
    victim = world.other_users["gp"]
    for body in ({"role": None}, {"full_name": None}, {"active": None}):
        response = client.patch(f"/users/{victim}", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"][0]["msg"] == "cannot be cleared"


def test_route_raised_422s_have_the_same_shape(client: TestClient, world: World) -> None:
    headers = world.headers(client, "admin")
    cleared = client.patch(f"/residents/{world.resident_a}", json={"display_name": None}, headers=headers)
    assert cleared.status_code == 422 and _is_problem_422(cleared.json())
    assert cleared.json()["detail"][0]["field"] == "display_name"
    no_council = client.post("/users", headers=headers, json={"username": f"c-{world.uid}", "role": "council",
                                                              "password": "a long password"})
    assert no_council.status_code == 422 and _is_problem_422(no_council.json())


def test_tiny_battery_filter_does_not_underflow(client: TestClient, world: World) -> None:
    response = client.get("/devices", params={"battery_below": 2.8e-92}, headers=world.headers(client, "admin"))
    assert response.status_code == 200
    assert response.json()["items"] == []


def test_every_route_declares_the_common_error_responses(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            declared = set(operation["responses"])
            assert {"401", "403", "404", "422", "500"} <= declared, (method, path, sorted(declared))
    problem = schema["components"]["schemas"]["ValidationProblem"]
    assert set(problem["required"]) == {"detail", "message"}


def _fields(body: dict[str, Any]) -> list[tuple[list[str], str]]:
    assert _is_problem_422(body), body
    return [(e["loc"], e["field"]) for e in body["detail"]]


def test_foreign_key_refusals_name_the_field(client: TestClient, world: World) -> None:
    """The database's foreign keys (an unknown GP practice or site) are 422s on the field that names it."""
    headers = world.headers(client, "admin")
    unknown = f"NOPE{world.uid}"
    created = client.post("/residents", headers=headers, json={
        "resident_id": f"fk-{world.uid}", "site_id": world.home_a, "display_name": "New",
        "date_of_birth": "1940-01-01", "gp_practice": unknown})
    assert created.status_code == 422, created.text
    assert _fields(created.json()) == [(["body", "gp_practice"], "gp_practice")]
    assert "residents_gp_practice_fkey" in created.json()["detail"][0]["msg"]
    patched = client.patch(f"/residents/{world.resident_a}", json={"gp_practice": unknown}, headers=headers)
    assert patched.status_code == 422 and _fields(patched.json()) == [(["body", "gp_practice"], "gp_practice")]
    user = {"username": f"fk-{world.uid}", "password": "a long password"}
    no_site = client.post("/users", headers=headers, json={**user, "role": "care_staff", "site_id": unknown})
    assert no_site.status_code == 422 and _fields(no_site.json()) == [(["body", "site_id"], "site_id")]
    no_practice = client.post("/users", headers=headers, json={**user, "role": "gp", "practice_code": unknown})
    assert _fields(no_practice.json()) == [(["body", "practice_code"], "practice_code")]
    missing = client.post("/users", headers=headers, json={**user, "role": "gp"})
    assert _fields(missing.json()) == [(["body", "practice_code"], "practice_code")]


def test_check_constraint_refusals_name_the_rules_columns(api_settings: Settings, world: World) -> None:
    """A CHECK violation (its message names no column) is a 422 on the columns of the rule, read from the
    catalogue; a rule over several columns names them all. The schemas normally stop such input first, so a
    route of this test's own breaks the rules."""
    app = create_app(api_settings)

    @app.post("/break/{rule}")
    def break_rule(conn: Conn, rule: str) -> None:
        change = {"obs": "obs_per_day = 99", "scale2": "scale2 = true"}[rule]
        conn.execute(f"UPDATE residents SET {change} WHERE resident_id = %s", (world.resident_a,))

    errors._columns_of.clear()  # so the lookup runs on a connection of its own, as after a deploy
    with TestClient(app) as fresh:
        obs = fresh.post("/break/obs")
        scale2 = fresh.post("/break/scale2")
    assert obs.status_code == 422, obs.text
    assert _fields(obs.json()) == [(["body", "obs_per_day"], "obs_per_day")]
    assert "residents_obs_per_day_check" in obs.json()["message"]
    assert [f for _, f in _fields(scale2.json())] == ["scale2", "scale2_set_by", "scale2_set_at", "scale2_reason"]
