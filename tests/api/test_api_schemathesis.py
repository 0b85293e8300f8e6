"""Property-based tests of every API operation against the app's own OpenAPI schema (schemathesis 4).

A real uvicorn serves the real app over real HTTP on the run's PostgreSQL database, seeded with the two-tenant
world of ``conftest.build_world`` (sites, residents, devices, gateways, alerts, observations, users). Path and
query parameters named like ids (``resident_id``, ``site``, ...) are drawn half the time from that world's real
rows, own tenant's and the other tenant's alike, so generated requests reach the code behind the 404 as well as
the 404 itself. Each operation runs as every role (admin, and tenant A's care worker, manager, GP and council
user), each on a world of its own (the admin and manager runs write: they bind devices, resolve alerts, disable
users); ``EXAMPLES`` says how hard each role fuzzes (the whole file takes under two minutes on two cores).

Checks, on every response: no 5xx (``not_a_server_error``), the status code is one the schema declares
(``status_code_conformance``), the body matches the schema declared for that status
(``response_schema_conformance``) and the content type is the declared one (``content_type_conformance``).
Positive and negative (schema-violating) inputs are both generated; ``derandomize`` makes a run reproducible.

Edge cases found by the security review (issue 13) are mixed in: every date and date-time parameter or body field
is, a third of the time, one at the edge of what Python and PostgreSQL can hold (year 1, year 9999, with offsets
that push it past either end), and ``test_deep_json_is_a_422_on_every_operation_with_a_body`` sends JSON nested
far deeper than any parser recursion limit to every operation that takes a body.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import hypothesis
import psycopg
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving import serve

from carewatch.api.app import PUBLIC_PATHS, create_app
from carewatch.api.auth import issue_tokens
from carewatch.api.users import get_user
from carewatch.ingest import kit_sessions
from carewatch.settings import Settings

from .conftest import World, build_world

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
ROLES = ("admin", "care_staff", "manager", "gp", "council")
#: Fuzzing examples per operation. The admin reaches the most code (every route's writes and its own 422s), so
#: it also runs schemathesis' coverage phase (boundary and schema-violating values of every parameter, about
#: 40 more requests per operation) and the public operations (sign-in answers the same whoever calls); the
#: other roles differ in what they may see and do, which fewer positive examples on real rows exercise.
#: CAREWATCH_SCHEMATHESIS_EXAMPLES=200 for a deeper local hunt (the other roles get a third); CI keeps it short.
ADMIN_EXAMPLES = int(os.environ.get("CAREWATCH_SCHEMATHESIS_EXAMPLES", "25"))
EXAMPLES = {role: ADMIN_EXAMPLES if role == "admin" else max(5, ADMIN_EXAMPLES // 3) for role in ROLES}
SETTINGS = hypothesis.settings(
    deadline=None, derandomize=True, database=None, print_blob=True, suppress_health_check=list(hypothesis.HealthCheck),
)


@dataclass
class LiveApi:
    base_url: str
    settings: Settings


@pytest.fixture(scope="module")
def live_api(api_settings: Settings) -> Iterator[LiveApi]:
    """The real app under uvicorn on a free port, in a thread of this process (stopped after the module)."""
    with serve(create_app(api_settings)) as url:
        yield LiveApi(url, api_settings)


# ------------------------------------------------------------------------------------------------------------
# The schema, and real ids for generated requests
# ------------------------------------------------------------------------------------------------------------
#: The app's OpenAPI document, built without a server (create_app opens nothing until it starts), so pytest can
#: collect one test per operation; ``test_live_app_serves_this_schema`` proves the live app serves the same one.
#: (schemathesis' fixture-based loader does not work with pytest 9, which dropped ``Node._nodeid``.)
OPENAPI = create_app(Settings(jwt_secret="schema-only-" + "x" * 32)).openapi()


def kit_of(site_id: str) -> str:
    return f"{site_id}-kit-01"


def add_kits(conn: psycopg.Connection, w: World) -> list[int]:
    """A shared kit in each care home, and an open measurement session on each (home A's first), so the kit and
    session routes reach real rows too."""
    kit_sessions.ensure_kits(conn, [(kit_of(w.home_a), w.home_a, "kit-01"), (kit_of(w.home_b), w.home_b, "kit-01")])
    now = datetime.now(UTC)
    return [kit_sessions.start_session(conn, kit_id=kit_of(site), site_id=site, resident_id=resident, by="seed",
                                       at=now).session["session_id"]
            for site, resident in ((w.home_a, w.resident_a), (w.home_b, w.resident_b))]


def id_pools(world: World, role: str, sessions: list[int]) -> dict[str, tuple[list[Any], list[Any]]]:
    """Parameter name -> (ids the caller may see, everyone else's). ``username`` names only users no run signs in
    as, so a generated PATCH or DELETE cannot demote or disable the caller mid-run."""
    w = world
    everything = {
        "site": [w.home_a, w.home_b, w.household_a, w.household_a2, w.household_b],
        "resident": [w.resident_a, w.resident_b, w.resident_ha, w.resident_ha2, w.resident_hb],
        "alert": [w.alert_a, w.alert_b, w.alert_hb, w.alert_ha2_clinical],
        "device": [w.device_a, w.device_b], "gateway": [w.gateway_a, w.gateway_b],
        "practice": [w.practice_a, w.practice_b],
        "incident": [w.incident_a, w.incident_b, w.incident_hb],
        "kit": [kit_of(w.home_a), kit_of(w.home_b)], "session": list(sessions),
    }
    home_a = {"site": [w.home_a], "resident": [w.resident_a], "alert": [w.alert_a], "device": [w.device_a],
              "gateway": [w.gateway_a], "practice": [w.practice_a], "incident": [w.incident_a],
              "kit": [kit_of(w.home_a)], "session": sessions[:1]}
    visible = {
        "admin": everything, "care_staff": home_a, "manager": home_a,
        "gp": {**home_a, "site": [w.home_a, w.household_a, w.household_a2],
               "resident": [w.resident_a, w.resident_ha, w.resident_ha2]},
        # No alert of council A's is visible (the clinical one has no consent): theirs are drawn from everyone's.
        "council": {**home_a, "site": [w.household_a, w.household_a2], "resident": [w.resident_ha, w.resident_ha2],
                    "alert": everything["alert"]},
    }[role]
    kinds = {"site_id": "site", "site": "site", "resident_id": "resident", "resident": "resident",
             "alert_id": "alert", "device_id": "device", "gateway_id": "gateway", "gateway": "gateway",
             "practice": "practice", "practice_code": "practice", "gp_practice": "practice",
             "incident_id": "incident", "kit_id": "kit", "session_id": "session"}
    pools = {name: (visible[kind], everything[kind]) for name, kind in kinds.items()}
    victims = sorted(w.other_users.values())
    pools["username"] = (victims, victims)
    return pools


#: Dates at the edges of Python's datetime and PostgreSQL's timestamptz: year 1 and 9999, and offsets that move
#: them past either end once converted to UTC (the review's OverflowError came from year 1).
EXTREME = {
    "date-time": ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999Z",
                  "9999-12-31T23:59:59-14:00", "1000-01-01T00:00:00Z"],
    "date": ["0001-01-01", "9999-12-31", "1000-02-29"],
}


def date_fields(document: dict[str, Any]) -> dict[str, str]:
    """Every parameter and body property of the schema holding a date or date-time: name -> format."""
    found: dict[str, str] = {}

    def walk(node: Any, name: str | None = None) -> None:
        if isinstance(node, dict):
            fmt = node.get("format")
            if name and fmt in EXTREME:
                found[name] = fmt
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    for prop, sub in value.items():
                        walk(sub, prop)
                elif key == "parameters" and isinstance(value, list):
                    for param in value:
                        walk(param.get("schema", {}), param.get("name"))
                elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
                    for sub in value:
                        walk(sub, name)
                elif key != "properties":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return found


DATE_FIELDS = date_fields(OPENAPI)


def with_real_ids(values: Any, pools: dict[str, tuple[list[Any], list[Any]]]) -> st.SearchStrategy[Any]:
    """The generated values, each id-like entry kept, or swapped for one the caller may see, or for any real id
    (a third of the time each), so requests reach real rows, and other tenants' rows; each date kept or swapped
    for an extreme one (half the time each)."""
    if not isinstance(values, dict):
        return st.just(values)
    choices: dict[str, st.SearchStrategy[Any]] = {}
    for name, value in values.items():
        if name in pools:
            choices[name] = st.one_of(st.just(value), st.sampled_from(pools[name][0]),
                                      st.sampled_from(pools[name][1]))
        elif name in DATE_FIELDS and isinstance(value, str):
            choices[name] = st.one_of(st.just(value), st.sampled_from(EXTREME[DATE_FIELDS[name]]))
        else:
            choices[name] = st.just(value)
    return st.fixed_dictionaries(choices)


def seeded_schema(role: str, pools: dict[str, tuple[list[Any], list[Any]]]) -> Any:
    """The schema as ``role`` fuzzes it (see EXAMPLES), with ids from ``pools`` (filled in once the role's world
    exists) mixed into paths, queries and bodies."""
    loaded = schemathesis.openapi.from_dict(OPENAPI)
    if role != "admin":
        loaded.config.phases.coverage.enabled = False
        loaded = loaded.exclude(path=sorted(PUBLIC_PATHS))

    @loaded.hook("flatmap_path_parameters")
    def _paths(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy[Any]:
        return with_real_ids(path_parameters, pools)

    @loaded.hook("flatmap_query")
    def _query(context: Any, query: dict[str, Any]) -> st.SearchStrategy[Any]:
        return with_real_ids(query, pools)

    @loaded.hook("flatmap_body")
    def _body(context: Any, body: Any) -> st.SearchStrategy[Any]:
        return with_real_ids(body, pools)

    return loaded


#: (role, operation) -> status code -> responses seen, for ``test_generated_requests_reached_real_rows``.
STATUSES: defaultdict[tuple[str, str], Counter[int]] = defaultdict(Counter)
POOLS: dict[str, dict[str, tuple[list[Any], list[Any]]]] = {role: {} for role in ROLES}
SCHEMAS = {role: seeded_schema(role, POOLS[role]) for role in ROLES}


@dataclass
class Caller:
    """One signed-in role on a world of its own."""

    base_url: str
    headers: dict[str, str]
    session: requests.Session

    role: str

    def call(self, case: schemathesis.Case) -> None:
        response = case.call(base_url=self.base_url, session=self.session, headers=self.headers)
        STATUSES[(self.role, f"{case.method.upper()} {case.path}")][response.status_code] += 1
        case.validate_response(response, checks=CHECKS)


class Callers:
    """Each role's caller, made on first use: a world of its own (the admin and manager runs write: they bind
    devices, resolve alerts, disable users) and that world's ids in the role's pools."""

    def __init__(self, live: LiveApi, database: str, session: requests.Session) -> None:
        self.live, self.database, self.session = live, database, session
        self.made: dict[str, Caller] = {}

    def __getitem__(self, role: str) -> Caller:
        if role not in self.made:
            with psycopg.connect(self.database) as conn:
                world = build_world(conn, f"st{role.replace('_', '')[:6]}")
                sessions = add_kits(conn, world)
                user = get_user(conn, world.users[role])
                assert user is not None
                token = issue_tokens(conn, user, self.live.settings).access_token
            POOLS[role].update(id_pools(world, role, sessions))
            self.made[role] = Caller(self.live.base_url, {"Authorization": f"Bearer {token}"}, self.session, role)
        return self.made[role]


@pytest.fixture(scope="module")
def callers(live_api: LiveApi, database: str) -> Iterator[Callers]:
    with requests.Session() as session:
        yield Callers(live_api, database, session)
    for pools in POOLS.values():
        pools.clear()


def _operation_test(role: str) -> Any:
    @SCHEMAS[role].parametrize()
    @hypothesis.settings(SETTINGS, max_examples=EXAMPLES[role])
    def test(case: schemathesis.Case, callers: Callers) -> None:
        callers[role].call(case)

    test.__name__ = f"test_every_operation_as_{role}"
    return test


test_every_operation_as_admin = _operation_test("admin")
test_every_operation_as_care_staff = _operation_test("care_staff")
test_every_operation_as_manager = _operation_test("manager")
test_every_operation_as_gp = _operation_test("gp")
test_every_operation_as_council = _operation_test("council")


def test_extreme_dates_are_mixed_into_the_generated_requests() -> None:
    """The date fields the hooks above vary: the review's finding came from the query and body ones."""
    assert {"since", "until", "taken_at", "date_of_birth"} <= set(DATE_FIELDS), DATE_FIELDS


def test_deep_json_is_a_422_on_every_operation_with_a_body(live_api: LiveApi, callers: Callers) -> None:
    """JSON nested 20 000 deep (past any parser's recursion limit, inside the body size limit) to every operation
    that takes a JSON body, signed in and not: a 422 in the declared shape, never a 500."""
    deep = b"[" * 20_000 + b"]" * 20_000
    admin = callers["admin"]
    sent = 0
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            url = live_api.base_url + path.replace("{", "").replace("}", "")
            for headers in ({}, admin.headers):
                response = admin.session.request(method.upper(), url, data=deep, timeout=30,
                                                 headers={**headers, "Content-Type": "application/json"})
                assert response.status_code == 422, (method, path, response.status_code, response.text[:200])
                body = response.json()
                assert body["detail"][0]["msg"].startswith("JSON nested") and body["message"]
                sent += 1
    assert sent >= 2 * 10


def test_live_app_serves_this_schema(live_api: LiveApi) -> None:
    response = requests.get(f"{live_api.base_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.json() == OPENAPI
    assert len(OPENAPI["paths"]) >= 30  # every router is in it


#: Least share of each role's operations that must answer 2xx at least once (what the role may do at all bounds
#: it: care staff cannot touch users, gateways or the audit log; council users can do least of all).
MIN_REACHED = {"admin": 0.75, "care_staff": 0.35, "manager": 0.5, "gp": 0.35, "council": 0.2}


def test_generated_requests_reached_real_rows() -> None:
    """The runs above prove little if requests never got past the 404s and 422s: most operations must have
    answered 2xx at least once for the admin, and a fair share for each other role, who may do less."""
    if not STATUSES:
        pytest.skip("runs only together with the schemathesis tests above (it reads what they saw)")
    for role in ROLES:
        operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in SCHEMAS[role].get_all_operations())}
        reached = {op for (r, op), seen in STATUSES.items() if r == role and op in operations
                   and any(200 <= code < 300 for code in seen)}
        assert len(reached) >= MIN_REACHED[role] * len(operations), (role, sorted(operations - reached))
    server_errors = {key: seen for key, seen in STATUSES.items() if any(code >= 500 for code in seen)}
    assert not server_errors
