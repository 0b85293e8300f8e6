"""Role-based access: every route x every role x another tenant's resource, and no unauthenticated routes."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
from carewatch.api.app import PUBLIC_PATHS, create_app
from carewatch.api.deps import current_principal
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from carewatch.settings import Settings

if TYPE_CHECKING:
    from conftest import World

NON_ADMIN = ("care_staff", "manager", "gp", "council")


def all_routes(app: Any) -> list[tuple[str, str, Any]]:
    """(method, path, route) for every route the app serves, including those left out of the schema."""
    out = []
    for rc in iter_route_contexts(app.routes):
        for method in sorted((rc.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rc.path, rc))
    return out


def _depends_on(dependant: Any, target: Any) -> bool:
    return any(d.call is target or _depends_on(d, target) for d in dependant.dependencies)


@pytest.fixture(scope="module")
def routes(api_settings: Settings) -> list[tuple[str, str, Any]]:
    return all_routes(create_app(api_settings))


def test_route_list_is_not_empty(routes: list[tuple[str, str, Any]]) -> None:
    paths = {p for _, p, _ in routes}
    assert {"/residents/{resident_id}", "/alerts", "/sites/{site_id}/overview", "/audit",
            "/gateways/{gateway_id}/registry"} <= paths


def test_every_route_is_public_by_name_or_authenticated(routes: list[tuple[str, str, Any]]) -> None:
    """Fails when someone adds a route without the auth dependency and without putting it on the allow-list."""
    unguarded = []
    for method, path, rc in routes:
        if path in PUBLIC_PATHS:
            continue
        dependant = getattr(rc, "dependant", None)
        if dependant is None or not _depends_on(dependant, current_principal):
            unguarded.append(f"{method} {path}")
    assert unguarded == []


def _fill(path: str, w: World, *, own: bool = False) -> str:
    household = w.household_a if own else w.household_b
    values = {
        "resident_id": w.resident_a if own else w.resident_b,
        "site_id": (w.home_a if own else w.home_b) if not path.startswith("/households") else household,
        "alert_id": str(w.alert_a if own else w.alert_b),
        "device_id": w.device_a if own else w.device_b,
        "gateway_id": w.gateway_a if own else w.gateway_b,
        "username": w.other_users["manager"],
    }
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def _body(method: str, path: str, w: World) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(json body, query params) valid enough to get past input validation to the access check."""
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/users"): {"username": f"new-{w.uid}", "role": "care_staff", "password": "long enough 1",
                             "site_id": w.home_b},
        ("PATCH", "/users/{username}"): {"full_name": "Changed"},
        ("POST", "/users/{username}/password"): {"password": "another one 123"},
        ("POST", "/residents"): {"resident_id": f"new-{w.uid}", "site_id": w.home_b, "display_name": "New",
                                 "date_of_birth": "1940-01-01"},
        ("PATCH", "/residents/{resident_id}"): {"display_name": "Changed"},
        ("PUT", "/residents/{resident_id}/scale2"): {"scale2": True, "reason": "respiratory consultant letter"},
        ("POST", "/residents/{resident_id}/observations"): {"pulse": 80, "consciousness": "A"},
        ("POST", "/alerts/{alert_id}/acknowledge"): {},
        ("POST", "/alerts/{alert_id}/escalate"): {"outcome": "gp_called"},
        ("POST", "/alerts/{alert_id}/resolve"): {"resolution": "seen by GP, fine"},
        ("POST", "/alerts/{alert_id}/comment"): {"text": "looked in"},
        ("POST", "/residents/{resident_id}/snooze"): {"reason": "end of life care plan", "minutes": 60},
        ("POST", "/devices/{device_id}/bind"): {"room": "lounge"},
    }
    params = {"metric": "spo2"} if path.endswith("/readings") else None
    return bodies.get((method, path)), params


def _call(client: TestClient, method: str, url: str, headers: dict[str, str], body: Any, params: Any) -> Any:
    return client.request(method, url, headers=headers, json=body, params=params)


def test_no_route_answers_without_a_token(client: TestClient, world: World,
                                          routes: list[tuple[str, str, Any]]) -> None:
    for method, path, _ in routes:
        if path in PUBLIC_PATHS:
            continue
        body, params = _body(method, path, world)
        response = _call(client, method, _fill(path, world), {}, body, params)
        assert response.status_code == 401, f"{method} {path} answered {response.status_code} without a token"
        bad = _call(client, method, _fill(path, world), {"Authorization": "Bearer not-a-jwt"}, body, params)
        assert bad.status_code == 401, f"{method} {path} accepted a forged token"


def test_rbac_matrix_other_tenant_is_never_visible(client: TestClient, world: World, db: Any,
                                                    routes: list[tuple[str, str, Any]]) -> None:
    """Each non-admin role, on every route with a path parameter, against tenant B's resource: 403 or 404, and
    not one of tenant B's identifiers in the answer. Then tenant B's data must be unchanged."""
    checked = 0
    for role in NON_ADMIN:
        headers = world.headers(client, role)
        for method, path, _ in routes:
            if path in PUBLIC_PATHS or "{" not in path:
                continue
            body, params = _body(method, path, world)
            response = _call(client, method, _fill(path, world), headers, body, params)
            assert response.status_code in (403, 404), (
                f"{role} {method} {path} -> {response.status_code}: {response.text[:300]}")
            leaked = [i for i in world.foreign_ids if i in response.text]
            assert not leaked, f"{role} {method} {path} leaked {leaked}"
            checked += 1
    assert checked >= 4 * 25
    resident = db.execute("SELECT display_name, scale2 FROM residents WHERE resident_id = %s",
                          (world.resident_b,)).fetchone()
    assert resident == (f"Name {world.resident_b}", False)
    assert db.execute("SELECT status FROM alerts WHERE alert_id = %s", (world.alert_b,)).fetchone()[0] == "open"
    assert db.execute("SELECT count(*) FROM alert_suppressions WHERE subject_id = %s",
                      (world.resident_b,)).fetchone()[0] == 0
    assert db.execute("SELECT resident_id, room FROM devices WHERE device_id = %s",
                      (world.device_b,)).fetchone() == (world.resident_b, None)
    assert db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s",
                      (world.resident_b,)).fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM users WHERE username = %s", (f"new-{world.uid}",)).fetchone()[0] == 0


def test_lists_never_include_another_tenant(client: TestClient, world: World,
                                            routes: list[tuple[str, str, Any]]) -> None:
    list_routes = [(m, p) for m, p, _ in routes if m == "GET" and "{" not in p and p not in PUBLIC_PATHS]
    assert {"/residents", "/alerts", "/sites", "/devices", "/gateways", "/dead-letters"} <= {p for _, p in list_routes}
    for role in NON_ADMIN:
        headers = world.headers(client, role)
        for _, path in list_routes:
            response = client.get(path, headers=headers, params={"limit": 500})
            assert response.status_code in (200, 403), f"{role} GET {path} -> {response.status_code}"
            leaked = [i for i in world.foreign_ids if i in response.text]
            assert not leaked, f"{role} GET {path} leaked {leaked}"
            if path == "/alerts" and response.status_code == 200:
                ids = {a["alert_id"] for a in response.json()["items"]}
                assert world.alert_b not in ids and world.alert_hb not in ids


# Positive controls: the matrix above would pass trivially if everything answered 404.
OWN_ACCESS = [
    ("care_staff", "GET", "/residents/{resident_id}", 200),
    ("care_staff", "GET", "/sites/{site_id}/overview", 200),
    ("care_staff", "GET", "/alerts/{alert_id}", 200),
    ("care_staff", "GET", "/devices/{device_id}", 200),
    ("care_staff", "GET", "/gateways/{gateway_id}", 403),
    ("care_staff", "PUT", "/residents/{resident_id}/scale2", 403),
    ("manager", "GET", "/gateways/{gateway_id}", 200),
    ("care_staff", "GET", "/gateways/{gateway_id}/registry", 200),  # the gateway's own account
    ("manager", "GET", "/gateways/{gateway_id}/registry", 200),
    ("gp", "GET", "/gateways/{gateway_id}/registry", 403),
    ("council", "GET", "/gateways/{gateway_id}/registry", 403),
    ("manager", "POST", "/devices/{device_id}/bind", 200),
    ("manager", "PATCH", "/residents/{resident_id}", 200),
    ("gp", "GET", "/residents/{resident_id}", 200),
    ("gp", "GET", "/residents/{resident_id}/sbard", 200),
    ("gp", "GET", "/devices/{device_id}", 403),
    ("gp", "PUT", "/residents/{resident_id}/scale2", 200),
    ("council", "GET", "/residents/{resident_id}", 404),  # a care-home resident is not a council's
    ("council", "GET", "/households/{site_id}/behaviour", 200),
    ("council", "POST", "/alerts/{alert_id}/acknowledge", 403),
    ("admin", "GET", "/audit", 200),
    ("gp", "GET", "/residents/{resident_id}/baselines", 200),
    ("care_staff", "GET", "/residents/{resident_id}/baselines", 200),
    ("council", "GET", "/households/{site_id}/rightsizing", 200),
    ("council", "GET", "/households/{site_id}/report.csv", 200),
    ("council", "GET", "/households/{site_id}/report.pdf", 200),
    ("manager", "GET", "/reports/adoption", 200),
    ("care_staff", "GET", "/reports/adoption", 403),
    ("gp", "GET", "/reports/adoption", 403),
    ("council", "GET", "/reports/adoption", 403),
    ("manager", "GET", "/users", 403),
]


@pytest.mark.parametrize(("role", "method", "path", "expected"), OWN_ACCESS)
def test_own_tenant_access(client: TestClient, world: World, role: str, method: str, path: str,
                           expected: int) -> None:
    body, params = _body(method, path, world)
    response = _call(client, method, _fill(path, world, own=True), world.headers(client, role), body, params)
    assert response.status_code == expected, response.text[:300]


def test_admin_sees_other_tenants(client: TestClient, world: World) -> None:
    headers = world.headers(client, "admin")
    for path in ("/residents/{resident_id}", "/sites/{site_id}/overview", "/alerts/{alert_id}",
                 "/devices/{device_id}", "/gateways/{gateway_id}", "/gateways/{gateway_id}/registry",
                 "/residents/{resident_id}/fhir"):
        response = client.get(_fill(path, world), headers=headers)
        assert response.status_code == 200, f"{path}: {response.text[:200]}"


def test_gp_sees_own_patients_across_homes(client: TestClient, world: World) -> None:
    headers = world.headers(client, "gp")
    ids = {r["resident_id"] for r in client.get("/residents", headers=headers).json()["items"]}
    assert ids == {world.resident_a, world.resident_ha, world.resident_ha2}


def test_council_sees_households_and_vitals_only_with_consent(client: TestClient, world: World) -> None:
    headers = world.headers(client, "council")
    ids = {r["resident_id"] for r in client.get("/residents", headers=headers).json()["items"]}
    assert ids == {world.resident_ha, world.resident_ha2}
    assert client.get(f"/residents/{world.resident_ha}/observations", headers=headers).status_code == 200
    refused = client.get(f"/residents/{world.resident_ha2}/observations", headers=headers)
    assert refused.status_code == 403 and "consent" in refused.json()["detail"]
    assert client.get(f"/residents/{world.resident_ha2}/fhir", headers=headers).status_code == 403
    overview = client.get(f"/sites/{world.household_a2}/overview", headers=headers).json()
    assert [r["news2"] for r in overview["residents"]] == [None]
    alerts = {a["alert_id"] for a in client.get("/alerts", headers=headers).json()["items"]}
    assert world.alert_ha2_clinical not in alerts
    assert client.get(f"/alerts/{world.alert_ha2_clinical}", headers=headers).status_code == 404
