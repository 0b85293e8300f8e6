"""Property-based tests of every API operation against the app's own OpenAPI schema (schemathesis 4).

A real uvicorn serves the real app over real HTTP on the run's PostgreSQL database, seeded with the two-tenant
world of ``conftest.build_world`` (sites, residents, devices, gateways, alerts, observations, users). Path and
query parameters named like ids (``resident_id``, ``site``, ...) are drawn half the time from that world's real
rows, own tenant's and the other tenant's alike, so generated requests reach the code behind the 404 as well as
the 404 itself. Each operation runs as an admin and as a tenant-A care worker, each on a world of its own (the
admin run writes: it binds devices, resolves alerts, disables users).

Checks, on every response: no 5xx (``not_a_server_error``), the status code is one the schema declares
(``status_code_conformance``), the body matches the schema declared for that status
(``response_schema_conformance``) and the content type is the declared one (``content_type_conformance``).
Positive and negative (schema-violating) inputs are both generated; ``derandomize`` makes a run reproducible.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis
import psycopg
import pytest
import requests
import schemathesis
import uvicorn
from carewatch.api.app import create_app
from carewatch.api.auth import issue_tokens
from carewatch.api.users import get_user
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from carewatch.embedded import free_port
from carewatch.settings import Settings

from .conftest import World, build_world

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
#: Per operation and role; CAREWATCH_SCHEMATHESIS_EXAMPLES=200 for a deeper local hunt (CI keeps it short).
MAX_EXAMPLES = int(os.environ.get("CAREWATCH_SCHEMATHESIS_EXAMPLES", "25"))
SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)


@dataclass
class LiveApi:
    base_url: str
    settings: Settings


@pytest.fixture(scope="module")
def live_api(api_settings: Settings) -> Iterator[LiveApi]:
    """The real app under uvicorn on a free port, in a thread of this process (stopped after the module)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(api_settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="schemathesis-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield LiveApi(f"http://127.0.0.1:{port}", api_settings)
    server.should_exit = True
    thread.join(timeout=30)


# ------------------------------------------------------------------------------------------------------------
# The schema, and real ids for generated requests
# ------------------------------------------------------------------------------------------------------------
#: The app's OpenAPI document, built without a server (create_app opens nothing until it starts), so pytest can
#: collect one test per operation; ``test_live_app_serves_this_schema`` proves the live app serves the same one.
#: (schemathesis' fixture-based loader does not work with pytest 9, which dropped ``Node._nodeid``.)
OPENAPI = create_app(Settings(jwt_secret="schema-only-" + "x" * 32)).openapi()


def id_pools(world: World, role: str) -> dict[str, tuple[list[Any], list[Any]]]:
    """Parameter name -> (ids the caller may see, everyone else's). ``username`` names only users no run signs in
    as, so a generated PATCH or DELETE cannot demote or disable the caller mid-run."""
    w = world
    own_tenant = {
        "site": [w.home_a], "resident": [w.resident_a], "alert": [w.alert_a], "device": [w.device_a],
        "gateway": [w.gateway_a], "practice": [w.practice_a],
    }
    everything = {
        "site": [w.home_a, w.home_b, w.household_a, w.household_a2, w.household_b],
        "resident": [w.resident_a, w.resident_b, w.resident_ha, w.resident_ha2, w.resident_hb],
        "alert": [w.alert_a, w.alert_b, w.alert_hb, w.alert_ha2_clinical],
        "device": [w.device_a, w.device_b], "gateway": [w.gateway_a, w.gateway_b],
        "practice": [w.practice_a, w.practice_b],
    }
    visible = everything if role == "admin" else own_tenant
    kinds = {"site_id": "site", "site": "site", "resident_id": "resident", "resident": "resident",
             "alert_id": "alert", "device_id": "device", "gateway_id": "gateway", "gateway": "gateway",
             "practice": "practice", "practice_code": "practice", "gp_practice": "practice"}
    pools = {name: (visible[kind], everything[kind]) for name, kind in kinds.items()}
    victims = sorted(w.other_users.values())
    pools["username"] = (victims, victims)
    return pools


def with_real_ids(values: Any, pools: dict[str, tuple[list[Any], list[Any]]]) -> st.SearchStrategy[Any]:
    """The generated values, each id-like entry kept, or swapped for one the caller may see, or for any real id
    (a third of the time each), so requests reach real rows, and other tenants' rows."""
    if not isinstance(values, dict) or not pools:
        return st.just(values)
    choices = {name: st.one_of(st.just(value), st.sampled_from(pools[name][0]), st.sampled_from(pools[name][1]))
               if name in pools else st.just(value) for name, value in values.items()}
    return st.fixed_dictionaries(choices)


def seeded_schema(pools: dict[str, tuple[list[Any], list[Any]]]) -> Any:
    """The schema with ids from ``pools`` (filled in by a fixture once its world exists) mixed into paths,
    queries and bodies."""
    loaded = schemathesis.openapi.from_dict(OPENAPI)

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
ADMIN_IDS: dict[str, tuple[list[Any], list[Any]]] = {}
CARE_STAFF_IDS: dict[str, tuple[list[Any], list[Any]]] = {}
admin_api = seeded_schema(ADMIN_IDS)
care_staff_api = seeded_schema(CARE_STAFF_IDS)


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


def caller(live: LiveApi, database: str, role: str, uid: str,
           pools: dict[str, tuple[list[Any], list[Any]]]) -> Iterator[Caller]:
    with psycopg.connect(database) as conn:
        world = build_world(conn, uid)
        user = get_user(conn, world.users[role])
    assert user is not None
    pools.update(id_pools(world, role))
    token = issue_tokens(user, live.settings).access_token
    with requests.Session() as session:
        yield Caller(live.base_url, {"Authorization": f"Bearer {token}"}, session, role)
    pools.clear()


@pytest.fixture(scope="module")
def as_admin(live_api: LiveApi, database: str) -> Iterator[Caller]:
    yield from caller(live_api, database, "admin", "stadm", ADMIN_IDS)


@pytest.fixture(scope="module")
def as_care_staff(live_api: LiveApi, database: str) -> Iterator[Caller]:
    yield from caller(live_api, database, "care_staff", "ststf", CARE_STAFF_IDS)


def test_live_app_serves_this_schema(live_api: LiveApi) -> None:
    response = requests.get(f"{live_api.base_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.json() == OPENAPI
    assert len(OPENAPI["paths"]) >= 30  # every router is in it


@admin_api.parametrize()
@SETTINGS
def test_every_operation_as_admin(case: schemathesis.Case, as_admin: Caller) -> None:
    as_admin.call(case)


@care_staff_api.parametrize()
@SETTINGS
def test_every_operation_as_care_staff(case: schemathesis.Case, as_care_staff: Caller) -> None:
    as_care_staff.call(case)


def test_generated_requests_reached_real_rows() -> None:
    """The runs above prove little if requests never got past the 404s and 422s: most operations must have
    answered 2xx at least once for the admin, and a fair share for the care worker, who may do less."""
    if not STATUSES:
        pytest.skip("runs only together with the schemathesis tests above (it reads what they saw)")
    operations = {f"{method.upper()} {path}" for path, item in OPENAPI["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    reached = {role: {op for (r, op), seen in STATUSES.items() if r == role and op in operations
                      and any(200 <= code < 300 for code in seen)} for role in ("admin", "care_staff")}
    assert len(reached["admin"]) >= 0.75 * len(operations), sorted(operations - reached["admin"])
    assert len(reached["care_staff"]) >= 0.3 * len(operations), sorted(operations - reached["care_staff"])
    server_errors = {key: seen for key, seen in STATUSES.items() if any(code >= 500 for code in seen)}
    assert not server_errors
