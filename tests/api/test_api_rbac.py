"""Role-based access: every route x every role x another tenant's resource, and no unauthenticated routes.

Everything here is driven by the app's own route list, so a new route is in the matrix the day it is added:

* **Foreign resources** (``test_rbac_matrix_other_tenant_is_never_visible``): each non-admin role, on every
  route with a path parameter, against tenant B's care home; on every resident, site and alert route also
  against council B's household (its resident, its site, its behaviour and clinical alerts); for GPs also
  against practice B's resident (and alert) in home A, the home the GP can otherwise see. Write routes also get
  bodies naming another tenant (a resident at another site, a device bound to another home's resident), and
  every write route without a path parameter must have one. Then tenant B's rows must be unchanged.
* **Own resources** (``test_own_tenant_access``): every role on every route against its own resources, the
  expected answer derived from ``ROUTE_PERMISSION`` and ``scope.GRANTS``: 2xx when the role holds the
  permission, 403 when it does not, 404 when the role has no resource of that kind. ``ROUTE_PERMISSION`` must
  list every route, and every route must answer 2xx to someone, so a route that 404s for everyone fails.
* **Subject ids that collide across kinds** (``test_rbac_matrix_subject_id_collisions``, issue 13 finding 1):
  residents created with a household's, a care home's, a gateway's, a device's and a shared kit's id; on every
  resident route and every list the collided resident's users get that resident's own data only, never the
  other kinds' readings, alerts, incidents or snoozes, and the household's users see none of the residents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from carewatch.api.app import PUBLIC_PATHS, create_app
from carewatch.api.auth import issue_tokens
from carewatch.api.deps import current_principal, report_principal
from carewatch.api.scope import GRANTS, Permission
from carewatch.api.users import get_user
from carewatch.ingest import kit_sessions
from carewatch.ingest.store import store_batch
from carewatch.ingest.validate import ReadingsMessage
from carewatch.settings import Settings
from carewatch.subjects import alert_subject_kind
from carewatch.wire import METRICS, DeviceKind, Metric, Reading, encode_batch

from .conftest import incident_of

if TYPE_CHECKING:
    from conftest import World

NON_ADMIN = ("care_staff", "manager", "gp", "nurse", "council")
ROLES = (*NON_ADMIN, "admin")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Body fields that name another tenant's resource (``gp_practice`` is not one: any home may register a
#: resident with any practice).
TENANT_FIELDS = frozenset({"site_id", "resident_id", "alert_id", "device_id", "gateway_id", "practice_code",
                           "incident_id", "kit_id", "session_id", "to_resident_id"})
Route = tuple[str, str, Any]
Target = dict[str, str | None]


def all_routes(app: Any) -> list[Route]:
    """(method, path, route) for every route the app serves, including those left out of the schema."""
    out = []
    for rc in iter_route_contexts(app.routes):
        for method in sorted((rc.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rc.path, rc))
    return out


def _depends_on(dependant: Any, target: Any) -> bool:
    return any(d.call is target or _depends_on(d, target) for d in dependant.dependencies)


def body_fields(rc: Any) -> set[str]:
    """Top-level fields of the route's JSON body model."""
    fields: set[str] = set()
    for param in getattr(getattr(rc, "dependant", None), "body_params", ()):
        fields |= set(getattr(param.field_info.annotation, "model_fields", {}))
    return fields


@pytest.fixture(scope="module")
def routes(api_settings: Settings) -> list[Route]:
    return [r for r in all_routes(create_app(api_settings)) if r[1] not in PUBLIC_PATHS]


# ------------------------------------------------------------------------------------------------------------
# The world, plus the rows only the matrix needs (other tests count home A's residents)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Tenancy:
    w: World
    resident_a_pb: str  # home A, practice B: GP A sees home A but not this resident
    alert_a_pb: int  # about resident_a_pb
    alert_ha: int  # council A's own alert (household A, consent recorded)
    alert_hb_clinical: int  # council B's clinical alert (household B, resident HB)
    incident_a_pb: int = 0  # the incidents of the three alerts above
    incident_ha: int = 0
    incident_hb_clinical: int = 0
    kit_a: str = ""  # home A's shared kit (sessions start on it)
    session_a: int = 0  # an open session on home A's second kit
    seq_a: int = 0  # a kit reading of home A (gateway A)
    kit_b: str = ""
    session_b: int = 0
    seq_b: int = 0  # a kit reading of home B (gateway B)

    def own(self, role: str) -> Target:
        """The role's own resources by path parameter; None where the role has none of that kind."""
        w = self.w
        home = {"resident_id": w.resident_a, "site_id": w.home_a, "alert_id": str(w.alert_a),
                "device_id": w.device_a, "gateway_id": w.gateway_a, "incident_id": str(w.incident_a),
                "kit_id": self.kit_a, "session_id": str(self.session_a), "reading_gateway": w.gateway_a,
                "reading_seq": str(self.seq_a)}
        no_config = {"device_id": None, "gateway_id": None, "kit_id": None, "session_id": None}
        target: Target = {
            "care_staff": {**home, "household": None},
            "manager": {**home, "household": None},
            "nurse": {**home, "household": None},
            "gp": {**home, "household": w.household_a, **no_config},
            "council": {"resident_id": w.resident_ha, "site_id": w.household_a, "household": w.household_a,
                        "alert_id": str(self.alert_ha), "incident_id": str(self.incident_ha),
                        "reading_gateway": w.gateway_a, "reading_seq": str(self.seq_a), **no_config},
            "admin": {**home, "household": w.household_a},
        }[role]
        return {**target, "username": w.other_users["manager"]}

    def foreign(self) -> Target:
        """Tenant B's care home (and council B's household for household routes)."""
        w = self.w
        return {"resident_id": w.resident_b, "site_id": w.home_b, "household": w.household_b,
                "alert_id": str(w.alert_b), "device_id": w.device_b, "gateway_id": w.gateway_b,
                "incident_id": str(w.incident_b), "kit_id": self.kit_b, "session_id": str(self.session_b),
                "reading_gateway": w.gateway_b, "reading_seq": str(self.seq_b), "username": w.other_users["manager"]}

    def probes(self, role: str) -> list[tuple[str, Target, frozenset[str] | None]]:
        """(what, target, path parameters it varies: only routes with one of them are probed; None = all)."""
        w, base = self.w, self.foreign()
        found: list[tuple[str, Target, frozenset[str] | None]] = [
            ("tenant B's care home", base, None),
            ("council B's household", {**base, "resident_id": w.resident_hb, "site_id": w.household_b,
                                       "alert_id": str(w.alert_hb), "incident_id": str(w.incident_hb)},
             frozenset({"resident_id", "site_id", "alert_id", "incident_id"})),
            ("council B's clinical alert", {**base, "alert_id": str(self.alert_hb_clinical),
                                            "incident_id": str(self.incident_hb_clinical)},
             frozenset({"alert_id", "incident_id"})),
        ]
        if role == "gp":
            found.append(("practice B's resident in home A", {**base, "resident_id": self.resident_a_pb,
                                                              "alert_id": str(self.alert_a_pb),
                                                              "incident_id": str(self.incident_a_pb)},
                          frozenset({"resident_id", "alert_id", "incident_id"})))
        return found

    def hidden_from(self, role: str) -> list[str]:
        """Identifiers this role must never see in any answer (the scope rules, written out for this world)."""
        w = self.w
        where = {w.resident_a: (w.home_a, w.practice_a), w.resident_b: (w.home_b, w.practice_b),
                 w.resident_ha: (w.household_a, w.practice_a), w.resident_ha2: (w.household_a2, w.practice_a),
                 w.resident_hb: (w.household_b, w.practice_b), self.resident_a_pb: (w.home_a, w.practice_b)}
        council_a = {w.household_a, w.household_a2}
        if role in ("care_staff", "manager", "nurse"):
            seen = {r for r, (site, _) in where.items() if site == w.home_a}
        elif role == "gp":
            seen = {r for r, (_, practice) in where.items() if practice == w.practice_a}
        else:
            seen = {r for r, (site, _) in where.items() if site in council_a}
        sites = {site for r, (site, _) in where.items() if r in seen}
        practices = {practice for r, (_, practice) in where.items() if r in seen}
        hidden = [i for r in where if r not in seen for i in (r, f"Name {r}")]
        hidden += [s for s in (w.home_a, w.home_b, w.household_a, w.household_a2, w.household_b) if s not in sites]
        hidden += [p for p in (w.practice_a, w.practice_b) if p not in practices]
        hidden += [w.device_b, w.gateway_b, f"raw-{w.home_b}", f"CouncilB-{w.uid}"]
        if role == "council":
            hidden += [w.device_a, w.gateway_a, f"raw-{w.home_a}"]
        return hidden


@pytest.fixture
def tenancy(world: World, db: psycopg.Connection) -> Tenancy:
    w, now = world, datetime.now(UTC)
    resident = f"resApb-{w.uid}"
    db.execute("""INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, gp_practice)
                  VALUES (%s, %s, %s, '1931-07-02', %s)""", (resident, w.home_a, f"Name {resident}", w.practice_b))
    db.execute("""INSERT INTO resident_state (resident_id, site_id, news2_score, news2_risk, news2_complete, news2_at)
                  VALUES (%s, %s, 6, 'medium', true, %s)""", (resident, w.home_a, now - timedelta(hours=1)))

    def alert(site: str, subject: str, resident_id: str | None, kind: str) -> int:
        return db.execute(
            """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action,
                                   opened_at)
               VALUES (%s, %s, %s, %s, %s, 'medium', %s, 'test action', %s) RETURNING alert_id""",
            (site, resident_id, alert_subject_kind(kind), subject, kind, f"rbac {subject} {kind}", now)).fetchone()[0]

    t = Tenancy(w, resident, alert(w.home_a, resident, resident, "news2"),
                alert(w.household_a, w.resident_ha, w.resident_ha, "news2"),
                alert(w.household_b, w.resident_hb, w.resident_hb, "news2"))
    t.incident_a_pb, t.incident_ha, t.incident_hb_clinical = (
        incident_of(db, a) for a in (t.alert_a_pb, t.alert_ha, t.alert_hb_clinical))
    # shared kits: each home has two, a kit device, an open session on its second kit and a kit reading
    for home, gateway, rid, side in ((w.home_a, w.gateway_a, w.resident_a, "a"), (w.home_b, w.gateway_b,
                                                                                  w.resident_b, "b")):
        kit_sessions.ensure_kits(db, [(f"{home}-kit-01", home, "kit-01"), (f"{home}-kit-02", home, "kit-02")])
        db.execute("INSERT INTO devices (device_id, site_id, gateway_id, kind, kit_id) "
                   "VALUES (%s, %s, %s, 'pulse_oximeter', %s)", (f"kox-{home}", home, gateway, f"{home}-kit-01"))
        session = kit_sessions.start_session(db, kit_id=f"{home}-kit-02", site_id=home, resident_id=rid,
                                             by="rbac", at=now).session
        seq = 9001
        store_batch(db, [ReadingsMessage.from_payload(None, encode_batch(home, gateway, [Reading(
            seq=seq, device_id=f"kox-{home}", device_kind=DeviceKind.PULSE_OXIMETER, metric=Metric.SPO2,
            value=95, unit="%", measured_at=now, received_at=now)]))])
        setattr(t, f"kit_{side}", f"{home}-kit-01")
        setattr(t, f"session_{side}", session["session_id"])
        setattr(t, f"seq_{side}", seq)
    db.commit()
    return t


# ------------------------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------------------------
def path_params(path: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", path)


def _key(path: str, name: str) -> str:
    return "household" if name == "site_id" and path.startswith("/households") else name


def fill(path: str, target: Target) -> str | None:
    """The path with the target's ids; None when the target has no resource for one of its parameters."""
    if any(target.get(_key(path, name)) is None for name in path_params(path)):
        return None
    return re.sub(r"\{(\w+)\}", lambda m: str(target[_key(path, m.group(1))]), path)


def body_for(method: str, path: str, w: World, target: Target) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(json body, query params) valid enough to get past input validation to the access check; bodies that
    name a site name the target's."""
    site = target["site_id"] or w.home_a
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/users"): {"username": f"new-{w.uid}", "role": "care_staff", "password": "long enough 1",
                             "site_id": site},
        ("PATCH", "/users/{username}"): {"full_name": "Changed"},
        ("POST", "/users/{username}/password"): {"password": "another one 123"},
        ("POST", "/residents"): {"resident_id": f"new-{w.uid}", "site_id": site, "display_name": "New",
                                 "date_of_birth": "1940-01-01"},
        ("PATCH", "/residents/{resident_id}"): {"display_name": "Changed"},
        ("PUT", "/residents/{resident_id}/scale2"): {"scale2": True, "reason": "respiratory consultant letter"},
        ("PUT", "/residents/{resident_id}/oxygen"): {"on_oxygen": True, "flow_lpm": 2},
        ("POST", "/incidents/{incident_id}/acknowledge"): {},
        ("POST", "/incidents/{incident_id}/outcome"): {"outcome": "monitoring_plan", "comment": "hourly obs"},
        ("POST", "/incidents/{incident_id}/resolve"): {"resolution": "seen by GP, fine"},
        ("POST", "/incidents/{incident_id}/escalate"): {"outcome": "gp_called"},
        ("POST", "/incidents/{incident_id}/comment"): {"text": "looked in"},
        ("POST", "/residents/{resident_id}/observations"): {"pulse": 80, "consciousness": "A"},
        ("POST", "/alerts/{alert_id}/acknowledge"): {},
        ("POST", "/alerts/{alert_id}/escalate"): {"outcome": "gp_called"},
        ("POST", "/alerts/{alert_id}/resolve"): {"resolution": "seen by GP, fine"},
        ("POST", "/alerts/{alert_id}/comment"): {"text": "looked in"},
        ("POST", "/residents/{resident_id}/snooze"): {"reason": "end of life care plan", "minutes": 60},
        ("POST", "/devices/{device_id}/bind"): {"room": "lounge"},
        ("POST", "/kits/{kit_id}/sessions"): {"resident_id": target["resident_id"] or w.resident_a, "replace": True},
        ("POST", "/kit-sessions/{session_id}/end"): {"reason": "ended"},
        ("POST", "/kit-sessions/{session_id}/claim"): {},
        ("POST", "/readings/move"): {"gateway_id": target["reading_gateway"], "seq": int(target["reading_seq"] or 1),
                                    "to_resident_id": target["resident_id"] or w.resident_a},
        ("POST", "/alerts/{alert_id}/outcome"): {"outcome": "monitoring_plan"},
        ("PUT", "/sites/{site_id}/practice"): {"condition": "deteriorating"},
        ("PUT", "/sites/{site_id}/escalation-policy"): {"levels": [
            {"level": 1, "name": "Staff on shift", "contacts": [{"channel": "dashboard", "recipient": "tablets"}]},
            {"level": 2, "name": "Senior on shift", "contacts": [{"channel": "sms", "recipient": "07700900001"}]},
            {"level": 3, "name": "Manager on call", "contacts": [{"channel": "email", "recipient": "m@home.test"}]},
        ]},
    }
    params = {"metric": "spo2"} if path.endswith("/readings") else None
    return bodies.get((method, path)), params


def _call(client: TestClient, method: str, url: str, headers: dict[str, str], body: Any, params: Any) -> Any:
    return client.request(method, url, headers=headers, json=body, params=params)


#: Write requests whose *body* names another tenant's resource: (method, path, body fields it targets, body).
#: The path names the caller's own resource, so only the body can be refused.
FOREIGN_BODIES: list[tuple[str, str, frozenset[str], Callable[[Tenancy], dict[str, Any]]]] = [
    ("POST", "/residents", frozenset({"site_id"}), lambda t: {
        "resident_id": f"new-{t.w.uid}", "site_id": t.w.home_b, "display_name": "New", "date_of_birth": "1940-01-01"}),
    # Taking another tenant's resident id for a new resident at one's own site: 404 like anything of another
    # tenant (409 only when the existing resident is the caller's own), the existing row untouched.
    ("POST", "/residents", frozenset({"resident_id"}), lambda t: {
        "resident_id": t.w.resident_b, "site_id": t.w.home_a, "display_name": "Taken", "date_of_birth": "1940-01-01"}),
    ("POST", "/residents", frozenset({"site_id"}), lambda t: {
        "resident_id": f"new-{t.w.uid}-hh", "site_id": t.w.household_b, "display_name": "New",
        "date_of_birth": "1940-01-01"}),
    ("POST", "/users", frozenset({"site_id"}), lambda t: {
        "username": f"new-{t.w.uid}", "role": "manager", "password": "long enough 1", "site_id": t.w.home_b}),
    ("POST", "/users", frozenset({"practice_code"}), lambda t: {
        "username": f"new-{t.w.uid}-gp", "role": "gp", "password": "long enough 1",
        "practice_code": t.w.practice_b}),
    ("PATCH", "/users/{username}", frozenset({"site_id", "practice_code"}), lambda t: {
        "site_id": t.w.household_b, "practice_code": t.w.practice_b}),
    ("POST", "/users", frozenset({"gateway_id"}), lambda t: {
        "username": f"new-{t.w.uid}-gw", "role": "care_staff", "password": "long enough 1", "site_id": t.w.home_b,
        "gateway_id": t.w.gateway_b}),
    ("PATCH", "/users/{username}", frozenset({"gateway_id"}), lambda t: {"gateway_id": t.w.gateway_b}),
    ("POST", "/devices/{device_id}/bind", frozenset({"resident_id"}), lambda t: {"resident_id": t.w.resident_b}),
    ("POST", "/devices/{device_id}/bind", frozenset({"resident_id"}), lambda t: {"resident_id": t.w.resident_hb}),
    ("POST", "/devices/{device_id}/bind", frozenset({"kit_id"}), lambda t: {"kit_id": t.kit_b}),
    ("POST", "/kits/{kit_id}/sessions", frozenset({"resident_id"}), lambda t: {
        "resident_id": t.w.resident_b, "replace": True}),
    ("POST", "/residents/{resident_id}/observations", frozenset({"session_id"}), lambda t: {
        "pulse": 80, "session_id": t.session_b}),
    # another home's reading, and a reading of one's own home moved onto another home's resident
    ("POST", "/readings/move", frozenset({"gateway_id"}), lambda t: {
        "gateway_id": t.w.gateway_b, "seq": t.seq_b, "to_resident_id": t.w.resident_a}),
    ("POST", "/readings/move", frozenset({"to_resident_id"}), lambda t: {
        "gateway_id": t.w.gateway_a, "seq": t.seq_a, "to_resident_id": t.w.resident_b}),
]


# ------------------------------------------------------------------------------------------------------------
# Authentication
# ------------------------------------------------------------------------------------------------------------
def test_route_list_is_not_empty(routes: list[Route]) -> None:
    paths = {p for _, p, _ in routes}
    assert {"/residents/{resident_id}", "/alerts", "/sites/{site_id}/overview", "/audit",
            "/gateways/{gateway_id}/registry"} <= paths


def test_every_route_is_public_by_name_or_authenticated(api_settings: Settings) -> None:
    """Fails when someone adds a route without the auth dependency and without putting it on the allow-list."""
    unguarded = []
    for method, path, rc in all_routes(create_app(api_settings)):
        if path in PUBLIC_PATHS:
            continue
        dependant = getattr(rc, "dependant", None)
        if dependant is None or not (_depends_on(dependant, current_principal)  # or, for heavy reports:
                                     or _depends_on(dependant, report_principal)):  # the same check
            unguarded.append(f"{method} {path}")
    assert unguarded == []


def test_no_route_answers_without_a_token(client: TestClient, tenancy: Tenancy, routes: list[Route]) -> None:
    target = tenancy.foreign()
    for method, path, _ in routes:
        body, params = body_for(method, path, tenancy.w, target)
        url = fill(path, target)
        assert url is not None
        response = _call(client, method, url, {}, body, params)
        assert response.status_code == 401, f"{method} {path} answered {response.status_code} without a token"
        bad = _call(client, method, url, {"Authorization": "Bearer not-a-jwt"}, body, params)
        assert bad.status_code == 401, f"{method} {path} accepted a forged token"


# ------------------------------------------------------------------------------------------------------------
# Other tenants' resources
# ------------------------------------------------------------------------------------------------------------
def test_every_body_that_can_name_a_tenant_is_probed(routes: list[Route]) -> None:
    """The matrix below covers write routes without a path parameter, and body fields naming another tenant's
    resource, only through FOREIGN_BODIES: a new one fails here until it has a probe."""
    probed = {(m, p, f) for m, p, fields, _ in FOREIGN_BODIES for f in fields}
    needed = {(m, p, f) for m, p, rc in routes if m in WRITE_METHODS for f in body_fields(rc) & TENANT_FIELDS}
    assert needed - probed == set()
    unprobed = {(m, p) for m, p, _ in routes if m in WRITE_METHODS and not path_params(p)}
    assert unprobed - {(m, p) for m, p, _, _ in FOREIGN_BODIES} == set()


def _tenant_b_unchanged(db: psycopg.Connection, t: Tenancy) -> None:
    w = t.w
    residents = db.execute("SELECT resident_id, display_name, scale2, oxygen_prescribed FROM residents "
                           "WHERE resident_id = ANY(%s) ORDER BY resident_id",
                           ([w.resident_b, w.resident_hb, t.resident_a_pb],)).fetchall()
    assert residents == sorted((r, f"Name {r}", False, None) for r in (w.resident_b, w.resident_hb, t.resident_a_pb))
    alerts = db.execute("SELECT alert_id, status FROM alerts WHERE alert_id = ANY(%s)",
                        ([w.alert_b, w.alert_hb, t.alert_hb_clinical, t.alert_a_pb],)).fetchall()
    assert sorted(alerts) == sorted((a, "open") for a in (w.alert_b, w.alert_hb, t.alert_hb_clinical, t.alert_a_pb))
    assert db.execute("SELECT count(*) FROM alert_events WHERE alert_id = ANY(%s)",
                      ([w.alert_b, w.alert_hb, t.alert_hb_clinical, t.alert_a_pb],)).fetchone()[0] == 0
    incidents = db.execute("SELECT incident_id, status, acknowledged_at, outcome FROM incidents "
                           "WHERE incident_id = ANY(%s)", ([w.incident_b, w.incident_hb, t.incident_hb_clinical,
                                                            t.incident_a_pb],)).fetchall()
    assert sorted(incidents) == sorted((i, "open", None, None) for i in (
        w.incident_b, w.incident_hb, t.incident_hb_clinical, t.incident_a_pb))
    assert db.execute("SELECT count(*) FROM incident_events WHERE incident_id = ANY(%s) AND action <> 'opened'",
                      ([w.incident_b, w.incident_hb, t.incident_hb_clinical, t.incident_a_pb],)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM alert_suppressions WHERE subject_id = ANY(%s)",
                      ([w.resident_b, w.resident_hb, t.resident_a_pb],)).fetchone()[0] == 0
    devices = db.execute("SELECT device_id, resident_id, room FROM devices WHERE device_id = ANY(%s) ORDER BY 1",
                         ([w.device_a, w.device_b],)).fetchall()
    assert devices == [(w.device_a, w.resident_a, None), (w.device_b, w.resident_b, None)]
    assert db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = ANY(%s)",
                      ([w.resident_b, w.resident_hb, t.resident_a_pb],)).fetchone()[0] == 1  # resident B's seed
    assert db.execute("SELECT count(*) FROM escalation_policies WHERE site_id = ANY(%s)",
                      ([w.home_b, w.household_b],)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM residents WHERE resident_id LIKE %s",
                      (f"new-{w.uid}%",)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM users WHERE username LIKE %s", (f"new-{w.uid}%",)).fetchone()[0] == 0
    assert db.execute("SELECT site_id, practice_code, full_name FROM users WHERE username = %s",
                      (w.other_users["manager"],)).fetchone() == (w.home_b, None, "manager B")
    sessions = db.execute("SELECT session_id, resident_id, ended_at FROM kit_sessions WHERE site_id = %s",
                          (w.home_b,)).fetchall()
    assert sessions == [(t.session_b, w.resident_b, None)]
    assert db.execute("SELECT subject_id FROM readings WHERE gateway_id = %s AND seq = %s",
                      (w.gateway_b, t.seq_b)).fetchone()[0] == f"{w.home_b}-kit-01"
    assert db.execute("SELECT subject_id FROM readings WHERE gateway_id = %s AND seq = %s",
                      (w.gateway_a, t.seq_a)).fetchone()[0] == f"{w.home_a}-kit-01"
    assert db.execute("SELECT kit_id FROM devices WHERE device_id = %s", (w.device_a,)).fetchone()[0] is None


def test_rbac_matrix_other_tenant_is_never_visible(client: TestClient, tenancy: Tenancy, db: psycopg.Connection,
                                                    routes: list[Route]) -> None:
    """Each non-admin role against other tenants' resources (see the module docstring): 403 or 404, and none of
    the identifiers the role may not see in the answer. Then none of those rows has changed."""
    w = tenancy.w
    checked: dict[str, int] = {}
    for role in NON_ADMIN:
        headers, hidden = w.headers(client, role), tenancy.hidden_from(role)

        def probe(what: str, method: str, path: str, url: str, body: Any, params: Any,
                  role: str = role, headers: dict[str, str] = headers, hidden: list[str] = hidden) -> None:
            response = _call(client, method, url, headers, body, params)
            assert response.status_code in (403, 404), (
                f"{role} {method} {path} on {what} -> {response.status_code}: {response.text[:300]}")
            leaked = [i for i in hidden if i in response.text]
            assert not leaked, f"{role} {method} {path} on {what} leaked {leaked}"
            checked[what] = checked.get(what, 0) + 1

        for what, target, varies in tenancy.probes(role):
            for method, path, _ in routes:
                names = set(path_params(path))
                if not names or (varies is not None and not names & varies):
                    continue
                url = fill(path, target)
                assert url is not None
                probe(what, method, path, url, *body_for(method, path, w, target))
        for method, path, _, make in FOREIGN_BODIES:
            url = fill(path, tenancy.own(role) | {"device_id": w.device_a, "kit_id": tenancy.kit_a})
            assert url is not None
            probe("a body naming another tenant", method, path, url, make(tenancy), None)
    resident_routes = sum(1 for _, p, _ in routes if "{resident_id}" in p)
    assert checked["tenant B's care home"] >= 4 * 25
    assert checked["council B's household"] >= 4 * (resident_routes + 5)
    assert checked["practice B's resident in home A"] >= resident_routes
    assert checked["a body naming another tenant"] == len(NON_ADMIN) * len(FOREIGN_BODIES)
    _tenant_b_unchanged(db, tenancy)


def test_lists_never_include_another_tenant(client: TestClient, tenancy: Tenancy, routes: list[Route]) -> None:
    """Every list, unfiltered and filtered on another tenant's ids (a filter narrows the scope, never widens it)."""
    w = tenancy.w
    list_routes = [p for m, p, _ in routes if m == "GET" and not path_params(p)]
    assert {"/residents", "/alerts", "/sites", "/devices", "/gateways", "/dead-letters"} <= set(list_routes)
    filters = {"site": w.home_b, "resident": w.resident_b, "gateway": w.gateway_b, "practice": w.practice_b}
    for role in NON_ADMIN:
        headers, hidden = w.headers(client, role), tenancy.hidden_from(role)
        for path in list_routes:
            for params in ({"limit": 500}, {"limit": 500, **filters}, {"limit": 500, "site": w.household_b}):
                response = client.get(path, headers=headers, params=params)
                assert response.status_code in (200, 403), f"{role} GET {path} {params} -> {response.status_code}"
                leaked = [i for i in hidden if i in response.text]
                assert not leaked, f"{role} GET {path} {params} leaked {leaked}"
                if path == "/alerts" and response.status_code == 200:
                    ids = {a["alert_id"] for a in response.json()["items"]}
                    assert not ids & {w.alert_b, w.alert_hb, tenancy.alert_hb_clinical}
                    assert role in ("care_staff", "manager", "nurse") or tenancy.alert_a_pb not in ids


# ------------------------------------------------------------------------------------------------------------
# Own resources: derived from the route list and scope.GRANTS
# ------------------------------------------------------------------------------------------------------------
#: The permission each route checks (``scope.GRANTS`` says which roles hold it). Every route is listed:
#: ``test_every_route_has_a_permission`` fails until a new one is.
ROUTE_PERMISSION: dict[tuple[str, str], Permission] = {
    ("GET", "/auth/me"): Permission.READ,
    ("GET", "/users"): Permission.MANAGE_USERS,
    ("POST", "/users"): Permission.MANAGE_USERS,
    ("GET", "/users/{username}"): Permission.MANAGE_USERS,
    ("PATCH", "/users/{username}"): Permission.MANAGE_USERS,
    ("DELETE", "/users/{username}"): Permission.MANAGE_USERS,
    ("POST", "/users/{username}/password"): Permission.MANAGE_USERS,
    ("GET", "/audit"): Permission.READ_AUDIT,
    ("GET", "/sites"): Permission.READ,
    ("GET", "/sites/{site_id}"): Permission.READ,
    ("GET", "/sites/{site_id}/overview"): Permission.READ,
    ("GET", "/residents"): Permission.READ,
    ("GET", "/residents/{resident_id}"): Permission.READ,
    ("POST", "/residents"): Permission.WRITE_RESIDENT,
    ("PATCH", "/residents/{resident_id}"): Permission.WRITE_RESIDENT,
    ("PUT", "/residents/{resident_id}/scale2"): Permission.SET_SCALE2,
    ("GET", "/residents/{resident_id}/monitoring"): Permission.READ,
    ("GET", "/residents/{resident_id}/sbard"): Permission.READ,
    ("GET", "/residents/{resident_id}/fhir"): Permission.READ,
    ("GET", "/residents/{resident_id}/observations/prefill"): Permission.READ,
    ("POST", "/residents/{resident_id}/observations"): Permission.RECORD_OBSERVATION,
    ("GET", "/residents/{resident_id}/observations"): Permission.READ,
    ("GET", "/residents/{resident_id}/readings"): Permission.READ,
    ("GET", "/residents/{resident_id}/baselines"): Permission.READ,
    ("GET", "/alerts"): Permission.READ,
    ("GET", "/alerts/{alert_id}"): Permission.READ,
    ("POST", "/alerts/{alert_id}/acknowledge"): Permission.ACT_ON_ALERT,
    ("POST", "/alerts/{alert_id}/escalate"): Permission.ACT_ON_ALERT,
    ("POST", "/alerts/{alert_id}/resolve"): Permission.ACT_ON_ALERT,
    ("POST", "/alerts/{alert_id}/comment"): Permission.ACT_ON_ALERT,
    ("POST", "/residents/{resident_id}/snooze"): Permission.SNOOZE,
    ("PUT", "/residents/{resident_id}/oxygen"): Permission.SET_OXYGEN,
    ("GET", "/incidents"): Permission.READ,
    ("GET", "/incidents/{incident_id}"): Permission.READ,
    ("POST", "/incidents/{incident_id}/acknowledge"): Permission.ACT_ON_ALERT,
    ("POST", "/incidents/{incident_id}/outcome"): Permission.ACT_ON_ALERT,
    ("POST", "/incidents/{incident_id}/resolve"): Permission.ACT_ON_ALERT,
    ("POST", "/incidents/{incident_id}/escalate"): Permission.ACT_ON_ALERT,
    ("POST", "/incidents/{incident_id}/comment"): Permission.ACT_ON_ALERT,
    ("GET", "/incidents/{incident_id}/deliveries"): Permission.READ_ESCALATION,
    ("GET", "/sites/{site_id}/tasks"): Permission.READ_TASKS,
    ("GET", "/households/{site_id}/behaviour"): Permission.READ_BEHAVIOUR,
    ("GET", "/households/{site_id}/rightsizing"): Permission.READ_BEHAVIOUR,
    ("GET", "/households/{site_id}/report.csv"): Permission.READ_BEHAVIOUR,
    ("GET", "/households/{site_id}/report.pdf"): Permission.READ_BEHAVIOUR,
    ("GET", "/devices"): Permission.READ_DEVICES,
    ("GET", "/devices/{device_id}"): Permission.READ_DEVICES,
    ("POST", "/devices/{device_id}/bind"): Permission.CONFIGURE_DEVICES,
    ("POST", "/devices/{device_id}/unbind"): Permission.CONFIGURE_DEVICES,
    ("GET", "/gateways"): Permission.READ_GATEWAYS,
    ("GET", "/gateways/{gateway_id}"): Permission.READ_GATEWAYS,
    ("GET", "/gateways/{gateway_id}/registry"): Permission.READ_GATEWAY_REGISTRY,
    ("GET", "/dead-letters"): Permission.READ_DEAD_LETTERS,
    ("GET", "/reports/adoption"): Permission.READ_ADOPTION,
    ("GET", "/kits"): Permission.USE_KIT,
    ("POST", "/kits/{kit_id}/sessions"): Permission.USE_KIT,
    ("GET", "/kit-sessions/{session_id}"): Permission.USE_KIT,
    ("POST", "/kit-sessions/{session_id}/claim"): Permission.USE_KIT,
    ("POST", "/kit-sessions/{session_id}/end"): Permission.USE_KIT,
    ("GET", "/kits/{kit_id}/unassigned"): Permission.USE_KIT,
    ("GET", "/kits/{kit_id}/readings"): Permission.USE_KIT,
    ("POST", "/readings/move"): Permission.MOVE_READING,
    ("GET", "/sites/{site_id}/escalation-policy"): Permission.READ_ESCALATION,
    ("PUT", "/sites/{site_id}/escalation-policy"): Permission.SET_ESCALATION_POLICY,
    ("GET", "/sites/{site_id}/deliveries"): Permission.READ_ESCALATION,
    ("GET", "/alerts/{alert_id}/deliveries"): Permission.READ_ESCALATION,
    ("GET", "/sites/{site_id}/banner"): Permission.READ,
    ("POST", "/alerts/{alert_id}/outcome"): Permission.ACT_ON_ALERT,
    ("POST", "/sites/{site_id}/practice"): Permission.USE_KIT,
    ("PUT", "/sites/{site_id}/practice"): Permission.USE_KIT,
}


#: Routes only a gateway's own account (and admins) may use, on top of the permission (scope.require_gateway_account):
#: the world's users are nobody's gateway account, so these answer them 403 (test_api_sites_devices has the rest).
GATEWAY_ACCOUNT_ONLY = frozenset({("GET", "/gateways/{gateway_id}/registry")})


def expected_own(role: str, method: str, path: str, own: Target) -> str:
    """'2xx', '403' (the role may never do this) or '404' (the role has no resource of this kind)."""
    if role not in GRANTS[ROUTE_PERMISSION[(method, path)]]:
        return "403"
    if role != "admin" and (method, path) in GATEWAY_ACCOUNT_ONLY:
        return "403" if fill(path, own) is not None else "404"
    return "404" if fill(path, own) is None else "2xx"


def test_every_route_has_a_permission_and_someone_may_use_it(routes: list[Route], tenancy: Tenancy) -> None:
    assert {(m, p) for m, p, _ in routes} == set(ROUTE_PERMISSION)
    for method, path, _ in routes:
        usable = [role for role in ROLES if expected_own(role, method, path, tenancy.own(role)) == "2xx"]
        assert usable, f"{method} {path}: no role has both the permission and a resource to use it on"


#: Acting on an alert of an open incident acts on the incident (H-ESC-13). The alert routes run first, so the own
#: incident (alert A's) is already acknowledged, by this very user, when its own acknowledge route comes: a 409
#: saying so is the right answer there (test_api_incidents has the incident route's own 2xx).
ACKNOWLEDGED_THROUGH_ITS_ALERT = ("POST", "/incidents/{incident_id}/acknowledge")


@pytest.mark.parametrize("role", ROLES)
def test_own_tenant_access(client: TestClient, tenancy: Tenancy, routes: list[Route], role: str) -> None:
    """Every route, the role's own resources: the answer ``expected_own`` derives, and in a 2xx none of the
    identifiers the role may not see. Routes run in the app's order (acknowledge before resolve, ...)."""
    w, own = tenancy.w, tenancy.own(role)
    target = own | {k: v for k, v in tenancy.foreign().items() if own.get(k) is None}  # someone else's if none
    headers = w.headers(client, role)
    hidden = tenancy.hidden_from(role) if role != "admin" else []
    wrong = []
    for method, path, _ in routes:
        expected = expected_own(role, method, path, own)
        url = fill(path, target)
        assert url is not None
        response = _call(client, method, url, headers, *body_for(method, path, w, target))
        got = "2xx" if 200 <= response.status_code < 300 else str(response.status_code)
        if (expected, got, (method, path)) == ("2xx", "409", ACKNOWLEDGED_THROUGH_ITS_ALERT) and (
                f"already acknowledged by {w.users[role]}" in response.text):
            continue
        if got != expected:
            wrong.append(f"{method} {path}: expected {expected}, got {response.status_code} {response.text[:200]}")
        elif got == "2xx":
            leaked = [i for i in hidden if i in response.text]
            if leaked:
                wrong.append(f"{method} {path} leaked {leaked}")
    assert wrong == []


# ------------------------------------------------------------------------------------------------------------
# What each role sees, in detail
# ------------------------------------------------------------------------------------------------------------
def test_admin_sees_other_tenants(client: TestClient, tenancy: Tenancy) -> None:
    headers = tenancy.w.headers(client, "admin")
    for path in ("/residents/{resident_id}", "/sites/{site_id}/overview", "/alerts/{alert_id}",
                 "/devices/{device_id}", "/gateways/{gateway_id}", "/gateways/{gateway_id}/registry",
                 "/residents/{resident_id}/fhir", "/households/{site_id}/behaviour"):
        url = fill(path, tenancy.foreign())
        assert url is not None
        response = client.get(url, headers=headers)
        assert response.status_code == 200, f"{path}: {response.text[:200]}"


def test_gp_sees_own_patients_across_homes(client: TestClient, tenancy: Tenancy) -> None:
    w = tenancy.w
    headers = w.headers(client, "gp")
    ids = {r["resident_id"] for r in client.get("/residents", headers=headers).json()["items"]}
    assert ids == {w.resident_a, w.resident_ha, w.resident_ha2}
    overview = client.get(f"/sites/{w.home_a}/overview", headers=headers).json()
    assert [r["resident_id"] for r in overview["residents"]] == [w.resident_a]  # not practice B's resident
    care_staff = client.get(f"/sites/{w.home_a}/overview", headers=w.headers(client, "care_staff")).json()
    assert {r["resident_id"] for r in care_staff["residents"]} == {w.resident_a, tenancy.resident_a_pb}


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


# ------------------------------------------------------------------------------------------------------------
# Subject ids that collide across kinds (issue 13, finding 1)
# ------------------------------------------------------------------------------------------------------------
#: In the reason of every alert (so the headline of every incident) of the subjects collided with, and nowhere else.
COLLISION_MARK = "collision-marker"


@dataclass
class Collisions:
    residents: dict[str, str]  # what the id was taken from -> the resident of home A created with it
    alerts: list[int]  # the other kinds' alerts (council B's household, tenant B's home, device and gateway)
    marks: list[str]  # strings only the other kinds' data contain: alert reasons and reading values


@pytest.fixture
def collisions(client: TestClient, tenancy: Tenancy, db: psycopg.Connection) -> Collisions:
    """Home A's manager creates residents of home A whose ids are council B's household's, tenant B's care home's,
    gateway's and device's, a gateway of council B's household, and home A's own shared kit. Those subjects have
    data of their own: readings stored through ingest (a hall oximeter in the household, a room oximeter in home
    B, an unassigned reading of the kit), and alerts and incidents (the household's, home B's, its device's and its
    gateway's)."""
    w, now = tenancy.w, datetime.now(UTC) - timedelta(minutes=2)
    hb_gateway = f"gwHB-{w.uid}"
    db.execute("INSERT INTO gateways (gateway_id, site_id, state) VALUES (%s, %s, 'online')",
               (hb_gateway, w.household_b))
    for device, site, gateway, room in ((f"hallox-{w.uid}", w.household_b, hb_gateway, "hall"),
                                        (f"roomox-{w.uid}", w.home_b, w.gateway_b, "lounge")):
        db.execute("INSERT INTO devices (device_id, site_id, gateway_id, kind, room) "
                   "VALUES (%s, %s, %s, 'pulse_oximeter', %s)", (device, site, gateway, room))
    db.commit()
    for site, gateway, device, values, seq in (
            (w.household_b, hb_gateway, f"hallox-{w.uid}", {Metric.SPO2: 81.5, Metric.PULSE_RATE: 141.5}, 1),
            (w.home_b, w.gateway_b, f"roomox-{w.uid}", {Metric.SPO2: 82.5}, 9101),
            (w.home_a, w.gateway_a, f"kox-{w.home_a}", {Metric.SPO2: 84.5}, 9102)):
        store_batch(db, [ReadingsMessage.from_payload(None, encode_batch(site, gateway, [Reading(
            seq=seq + i, device_id=device, device_kind=DeviceKind.PULSE_OXIMETER, metric=metric, value=value,
            unit=METRICS[metric].unit, measured_at=now, received_at=now)
            for i, (metric, value) in enumerate(values.items())]))])
    alerts = []
    for site, resident, subject, kind in ((w.household_b, None, w.household_b, "long_lie"),
                                          (w.home_b, None, w.home_b, "scoring_stalled"),
                                          (w.home_b, w.resident_b, w.device_b, "battery_low"),
                                          (w.home_b, None, w.gateway_b, "gateway_offline")):
        alerts.append(db.execute(
            """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action)
               VALUES (%s, %s, %s, %s, %s, 'medium', %s, 'look') RETURNING alert_id""",
            (site, resident, alert_subject_kind(kind), subject, kind, f"{COLLISION_MARK} {kind}")).fetchone()[0])
        incident_of(db, alerts[-1])
    db.commit()
    residents = {"council B's household": w.household_b, "tenant B's care home": w.home_b,
                 "tenant B's gateway": w.gateway_b, "tenant B's device": w.device_b,
                 "council B's household's gateway": hb_gateway, "home A's shared kit": tenancy.kit_a}
    manager = w.headers(client, "manager")
    for what, rid in residents.items():
        response = client.post("/residents", headers=manager, json={
            "resident_id": rid, "site_id": w.home_a, "display_name": f"Collided {what}",
            "date_of_birth": "1940-01-01", "gp_practice": w.practice_a})
        assert response.status_code == 201, f"{what}: {response.status_code} {response.text[:200]}"
    return Collisions(residents, alerts, [COLLISION_MARK, "81.5", "141.5", "82.5", "84.5"])


def _tenant_headers(client: TestClient, username: str) -> dict[str, str]:
    with client.app.state.pool.connection() as conn:
        user = get_user(conn, username)
        assert user is not None
        return {"Authorization": f"Bearer {issue_tokens(conn, user, client.app.state.settings).access_token}"}


def test_rbac_matrix_subject_id_collisions(client: TestClient, tenancy: Tenancy, collisions: Collisions,
                                           db: psycopg.Connection, routes: list[Route]) -> None:
    """Every role that sees the collided residents (home A's staff, practice A's GP, admins), on every route with a
    resident in its path (readings, prefill, SBARD, FHIR, observations, monitoring, baselines, snooze...; writes by
    the manager): the answer ``expected_own`` derives, the resident's own data only, none of the other kinds'
    readings, alerts or incidents. Then the home's lists, alerts, incidents, banner and deliveries; the shared
    kit's routes (the kit's unassigned reading is nobody's until claimed, then the claiming resident's, then
    moved); and the household's own users, who see none of the residents. Nothing of the other kinds changed."""
    w = tenancy.w
    resident_routes = [(m, p) for m, p, _ in routes if "{resident_id}" in p]
    assert len(resident_routes) >= 12
    wrong: list[str] = []

    def check(role: str, method: str, path: str, url: str, expected: str, body: Any, params: Any,
              headers: dict[str, str]) -> Any:
        response = _call(client, method, url, headers, body, params)
        got = "2xx" if 200 <= response.status_code < 300 else str(response.status_code)
        if got != expected:
            wrong.append(f"{role} {method} {url}: expected {expected}, got {response.status_code} "
                         f"{response.text[:200]}")
        # (the kit's unassigned reading is the kit's own data on the kit's routes)
        leaked = [m for m in collisions.marks if m in response.text and not (m == "84.5" and "/kits/" in url)]
        if leaked:
            wrong.append(f"{role} {method} {url} leaked {leaked}")
        return response

    for role in ("manager", "care_staff", "nurse", "gp", "admin"):  # the manager writes first
        headers = w.headers(client, role)
        for what, rid in collisions.residents.items():
            target = tenancy.own(role) | {"resident_id": rid}
            for method, path in resident_routes:
                if method in WRITE_METHODS and role != "manager":
                    continue
                url = fill(path, target)
                assert url is not None
                check(role, method, f"{path} ({what})", url, expected_own(role, method, path, target),
                      *body_for(method, path, w, target), headers)
        for method, path, _ in routes:  # the home's lists and pages (admins see every tenant's: not theirs)
            if role != "admin" and method == "GET" and ("{resident_id}" not in path and "{alert_id}" not in path
                                    and "{incident_id}" not in path and "{username}" not in path):
                url = fill(path, tenancy.own(role))
                if url is not None:
                    check(role, method, path, url, expected_own(role, method, path, tenancy.own(role)),
                          *body_for(method, path, w, tenancy.own(role)), headers)
    assert wrong == [], "\n".join(wrong)

    # the snoozes (every kind, by the manager) are the residents': no event on the other kinds' alerts
    assert db.execute("SELECT count(*) FROM alert_events WHERE alert_id = ANY(%s) AND action <> 'opened'",
                      (collisions.alerts,)).fetchone()[0] == 0
    assert sorted(db.execute("SELECT subject_kind, subject_id, site_id FROM alert_suppressions "
                             "WHERE subject_id = ANY(%s)", (list(collisions.residents.values()),)).fetchall()) == \
        sorted(("resident", rid, w.home_a) for rid in collisions.residents.values())
    assert db.execute("SELECT count(*) FROM alerts WHERE alert_id = ANY(%s) AND status = 'open'",
                      (collisions.alerts,)).fetchone()[0] == len(collisions.alerts)
    assert db.execute("SELECT count(*) FROM incidents WHERE subject_kind = 'resident' AND subject_id = ANY(%s)",
                      (list(collisions.residents.values()),)).fetchone()[0] == 0
    assert sorted(db.execute("SELECT subject_kind, subject_id, value FROM readings WHERE value IN (81.5, 141.5, 82.5)"
                             " AND site_id = ANY(%s)", ([w.household_b, w.home_b],)).fetchall()) == sorted([
        ("household", w.household_b, 81.5), ("household", w.household_b, 141.5), ("site", w.home_b, 82.5)])

    # the shared kit: its unassigned reading is nobody's (not the resident named like the kit) until claimed
    kit_resident, staff = tenancy.kit_a, w.headers(client, "care_staff")
    recent = client.get(f"/kits/{tenancy.kit_a}/readings", headers=staff).json()
    [mine] = [r for r in recent if r["value"] == 84.5]
    assert mine["resident_id"] is None and mine["resident_name"] is None
    assert 84.5 in [r["value"] for r in client.get(f"/kits/{tenancy.kit_a}/unassigned", headers=staff).json()]
    session = client.post(f"/kits/{tenancy.kit_a}/sessions", headers=staff,
                          json={"resident_id": kit_resident, "replace": True})
    assert session.status_code in (200, 201), session.text
    claimed = client.post(f"/kit-sessions/{session.json()['session_id']}/claim", headers=staff, json={})
    assert claimed.status_code == 200, claimed.text
    spo2 = client.get(f"/residents/{kit_resident}/readings", headers=staff,
                      params={"metric": "spo2", "bucket": "raw"}).json()
    assert 84.5 in [p["value"] for p in spo2["points"]]  # now the resident's own
    moved = client.post("/readings/move", headers=w.headers(client, "manager"), json={
        "gateway_id": w.gateway_a, "seq": 9102, "to_resident_id": w.resident_a})
    assert moved.status_code == 200 and moved.json()["from_resident_id"] == kit_resident, moved.text
    assert db.execute("SELECT subject_kind, subject_id FROM readings WHERE gateway_id = %s AND seq = 9102",
                      (w.gateway_a,)).fetchone() == ("resident", w.resident_a)
    assert db.execute("SELECT array_agg(from_kind || '>' || to_kind ORDER BY assignment_id) FROM reading_assignments "
                      "WHERE gateway_id = %s AND seq = 9102", (w.gateway_a,)).fetchone()[0] == [
        "kit>resident", "resident>resident"]

    # the household's own users (council B) see none of the collided residents, their sets or snoozes
    council_b = _tenant_headers(client, w.other_users["council"])
    for path in ("/residents", "/alerts", "/incidents", f"/sites/{w.household_b}/overview",
                 f"/households/{w.household_b}/behaviour", f"/households/{w.household_b}/rightsizing",
                 f"/households/{w.household_b}/report.csv", f"/households/{w.household_b}/report.pdf"):
        response = client.get(path, headers=council_b)
        assert response.status_code == 200, f"{path}: {response.text[:200]}"
        assert "Collided" not in response.text and "end of life care plan" not in response.text, path
