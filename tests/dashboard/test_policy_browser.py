"""The manager edits the home's escalation policy from the dashboard, in a real browser (Debian's headless Chromium,
Playwright) against ``carewatch api`` and ``carewatch dashboard`` child processes: the form saves it through the
API (audited), it is stored, and the page shows it back; a contact that does not read is refused in plain words and
nothing is stored. Care staff see the policy but not the form (H-ESC-09)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from dashboard_world import BROWSER_MARKS, DashWorld, Stack, chromium, seed
from dashboard_world import sign_in_tablet as _sign_in

pytestmark = BROWSER_MARKS
DONE = "() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning'"


@pytest.fixture(scope="module")
def world(database: str, stack: Stack) -> DashWorld:
    with psycopg.connect(database) as conn:
        return seed(conn, uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as running:
        yield running


def _escalation_page(page: Any) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Escalation", exact=True).click()
    page.get_by_role("heading", name="Escalation").first.wait_for()
    page.wait_for_timeout(300)
    page.wait_for_function(DONE)


def _stored(database: str, site: str) -> tuple[Any, ...] | None:
    with psycopg.connect(database) as conn:
        return conn.execute("SELECT levels, outcome_minutes, updated_by FROM escalation_policies WHERE site_id = %s",
                            (site,)).fetchone()


def test_manager_edits_the_escalation_policy_and_it_is_stored(browser: Any, stack: Stack, world: DashWorld,
                                                              database: str) -> None:
    page = _sign_in(browser, stack, world.users["manager"])
    _escalation_page(page)
    page.get_by_text("No escalation policy has been set for this home").wait_for()
    form = page.locator('[data-testid="stForm"]')
    form.wait_for()  # the editor is open while the home has only the default policy

    # a contact that does not read: refused in plain words, nothing stored
    form.locator(".st-key-pol-contacts-2 textarea").fill("pager 1234")
    form.get_by_role("button", name="Save the policy").click()
    page.get_by_text("level 2, line 1: start with one of dashboard, email, sms, webhook").wait_for()
    assert _stored(database, world.home_a) is None

    form.locator(".st-key-pol-contacts-2 textarea").fill("sms: 07700 900555, Senior Sue")
    form.locator(".st-key-pol-contacts-3 textarea").fill("email: manager@oakview.test, Manager on call\n"
                                                        "sms: 07700 900777")
    high = form.locator(".st-key-pol-high-2 input")
    high.fill("10")
    high.press("Tab")
    outcome = form.locator(".st-key-pol-outcome-high input")
    outcome.fill("12")
    outcome.press("Tab")
    form.get_by_role("button", name="Save the policy").click()
    page.get_by_text("Senior Sue (sms: 07700 900555)").wait_for()  # shown back from the API after the rerun

    levels, outcome_minutes, by = _stored(database, world.home_a)
    assert by == world.users["manager"]
    assert levels[1]["contacts"] == [{"channel": "sms", "recipient": "07700 900555", "name": "Senior Sue"}]
    assert levels[1]["window_minutes"]["high"] == 10
    assert [c["recipient"] for c in levels[2]["contacts"]] == ["manager@oakview.test", "07700 900777"]
    assert levels[0]["contacts"] == [{"channel": "dashboard", "recipient": "tablets", "name": None}]
    assert outcome_minutes == {"high": 12, "medium": 60}
    with psycopg.connect(database) as conn:
        audited = conn.execute("SELECT count(*) FROM audit_log WHERE username = %s AND action = 'update' "
                               "AND detail->>'change' = 'escalation_policy'", (world.users["manager"],)).fetchone()[0]
    assert audited >= 1
    assert page.get_by_text("Gap:").count() == 0  # every level has someone now

    # care staff of the home see who is told, but not the editor
    staff = _sign_in(browser, stack, world.users["care_staff"])
    _escalation_page(staff)
    staff.get_by_text("Senior Sue (sms: 07700 900555)").wait_for()
    assert staff.locator('[data-testid="stForm"]').count() == 0
