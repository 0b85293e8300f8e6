"""The dashboard's lists are whole: the client follows the API's ``next_offset`` up to ``MAX_ITEMS`` and the page
says so when it stops there; filters (the inbox's severities) go to the API so the server does the filtering."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from dashboard_world import DashWorld
from streamlit.testing.v1 import AppTest

from carewatch.dashboard import client as client_module
from carewatch.dashboard.client import PAGE_SIZE, ApiClient
from carewatch.scoring.incident_store import sync_incidents

SignIn = Callable[..., AppTest]


class FakeApi:
    """GET /alerts over ``total`` items, paged like the API (``limit`` at most 500, ``next_offset``)."""

    def __init__(self, total: int, shift_after_first: int = 0) -> None:
        self.items = [{"alert_id": i, "severity": "low"} for i in range(total)]
        self.requests: list[httpx.QueryParams] = []
        self.shift_after_first = shift_after_first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        self.requests.append(params)
        limit, offset = int(params["limit"]), int(params.get("offset", 0))
        assert 1 <= limit <= PAGE_SIZE
        page = self.items[offset: offset + limit]
        if len(self.requests) == 1 and self.shift_after_first:  # new alerts arrive at the top meanwhile
            self.items = [{"alert_id": -i - 1, "severity": "high"} for i in range(self.shift_after_first)] + self.items
        more = offset + limit < len(self.items)
        return httpx.Response(200, json={"items": page, "limit": limit, "offset": offset,
                                         "next_offset": offset + limit if more else None})


@pytest.fixture
def fake() -> Iterator[Callable[[FakeApi], ApiClient]]:
    """An ApiClient whose shared connection pool is replaced by an in-memory transport serving ``FakeApi``."""
    bases: list[str] = []

    def make(api: FakeApi) -> ApiClient:
        base = f"http://fake-{len(bases)}.invalid"
        bases.append(base)
        client = ApiClient(base, token="t")
        client_module._http_clients[(base, client.timeout)] = httpx.Client(base_url=base,
                                                                          transport=httpx.MockTransport(api))
        return client

    yield make
    for base in bases:
        client_module._http_clients.pop((base, 15.0)).close()


def test_follows_next_offset_to_the_last_page(fake: Callable[[FakeApi], ApiClient]) -> None:
    api = FakeApi(1234)
    alerts = fake(api).alerts()
    assert [a["alert_id"] for a in alerts] == list(range(1234)) and not alerts.truncated
    assert [int(p["offset"]) for p in api.requests] == [0, 500, 1000]


def test_stops_at_the_upper_bound_and_says_so(fake: Callable[[FakeApi], ApiClient],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_ITEMS", 700)
    alerts = fake(FakeApi(1234)).alerts()
    assert len(alerts) == 700 and alerts.truncated
    exactly = fake(FakeApi(700)).alerts()  # as many as the bound and no more: complete
    assert len(exactly) == 700 and not exactly.truncated
    assert fake(FakeApi(50)).alerts(most=10).truncated


def test_an_item_seen_on_an_earlier_page_is_not_shown_twice(fake: Callable[[FakeApi], ApiClient]) -> None:
    alerts = fake(FakeApi(800, shift_after_first=3)).alerts()  # rows slide down by 3 between the pages
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids)) and set(range(800)) <= set(ids)


def test_severities_and_statuses_are_sent_to_the_api(fake: Callable[[FakeApi], ApiClient]) -> None:
    api = FakeApi(3)
    fake(api).alerts(statuses=("open",), severities=("high", "low"), site="oak")
    [params] = api.requests
    assert params.get_list("severity") == ["high", "low"] and params.get_list("status") == ["open"]
    assert params["site"] == "oak"


def _dead_letters(database: str, world: DashWorld, count: int) -> None:
    with psycopg.connect(database) as conn:
        conn.cursor().executemany(
            "INSERT INTO dead_letters (stage, site_id, gateway_id, reason, raw) VALUES ('ingest', %s, %s, %s, '{}')",
            [(world.home_a, world.gateway, f"bad reading {i}") for i in range(count)])


def test_estate_page_shows_every_dead_letter_past_one_api_page(sign_in: SignIn, estate: DashWorld,
                                                              database: str) -> None:
    _dead_letters(database, estate, 620)  # + the world's own one: 621, more than one API page of 500
    at = sign_in(estate.users["manager"])
    at.switch_page("pages/estate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.label for t in at.tabs][2] == "Dead letters (621)"
    assert len(at.dataframe[2].value) == 621
    assert not any("Showing the first" in w.value for w in at.warning)


def test_estate_page_says_when_the_list_was_cut(sign_in: SignIn, estate: DashWorld, database: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _dead_letters(database, estate, 320)
    monkeypatch.setattr(client_module, "MAX_ITEMS", 300)
    at = sign_in(estate.users["manager"])
    at.switch_page("pages/estate.py").run()
    assert [t.label for t in at.tabs][2] == "Dead letters (300+)"
    assert any(w.value.startswith("Showing the first 300 dead letters (newest first) only") for w in at.warning)


def test_inbox_severity_filter_is_done_by_the_api(sign_in: SignIn, estate: DashWorld, database: str) -> None:
    """510 medium incidents sort ahead of one low incident: filtering the first 500 in the page would lose it."""
    rid = estate.residents_b[0]
    # at most one open alert per subject and kind: 511 made-up subjects (of kind 'device', which has no registry
    # constraint; a resident subject must be the alert's resident)
    rows: list[tuple[Any, ...]] = [(estate.home_b, rid, f"{rid}-probe{i}", "soft_signs", "medium", f"medium {i}")
                                   for i in range(510)]
    rows.append((estate.home_b, rid, f"{rid}-probe-low", "soft_signs", "low", "the one low alert"))
    with psycopg.connect(database) as conn:
        conn.cursor().executemany(
            """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action)
               VALUES (%s, %s, 'device', %s, %s, %s, %s, 'look')""", rows)
        sync_incidents(conn, [("device", row[2]) for row in rows], datetime.now(UTC))  # one incident per subject
        unresolved = dict(conn.execute(
            """SELECT severity, count(*) FROM incidents WHERE status <> 'resolved' AND site_id IN (%s, %s)
               GROUP BY severity""", (estate.home_a, estate.home_b)).fetchall())
    assert unresolved["medium"] > PAGE_SIZE
    at = sign_in(estate.users["gp"])
    at.multiselect(key="inbox-severity").set_value(["low"]).run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Shown"] == str(unresolved["low"]) and "the one low alert" in "\n".join(h.value for h in at.html)
    at.multiselect(key="inbox-severity").set_value(["medium"]).run()
    assert {m.label: m.value for m in at.metric}["Shown"] == str(unresolved["medium"])  # 510+: two API pages
