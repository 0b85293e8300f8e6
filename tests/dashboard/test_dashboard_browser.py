"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against ``carewatch api`` and
``carewatch dashboard`` child processes over a real, seeded PostgreSQL database.

Care staff sign in on a tablet-sized screen, see the deteriorating resident (one incident card with its parts, the
observations due listed apart), record observations and acknowledge the incident (the grid and the form must fit
the tablet's width with finger-sized buttons); a GP opens the alert from the inbox; a council reviewer downloads
the CSV evidence and the PDF report, both checked against the API.
Screenshots and the downloads go to ``$CAREWATCH_TEST_ARTIFACTS`` (default tests/artifacts/).
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from dashboard_world import PASSWORD, DashWorld, Stack, check_council_pdf, deteriorate, seed, serve_stack

from carewatch.api.rightsizing import CSV_COLUMNS

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CAREWATCH_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
TABLET = {"width": 1024, "height": 1366}  # a 12.9" tablet held upright
TIMEOUT_MS = 30_000
#: Smallest touch target, CSS px (WCAG 2.5.5; Apple's and Android's guidance are 44 and 48).
TOUCH_PX = 44

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium; scripts/ensure-test-services.sh)"),
]


@pytest.fixture(scope="module")
def stack(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serve_stack(database, tmp_path_factory.mktemp("browser-stack")) as running:
        yield running


@pytest.fixture(scope="module")
def world(database: str, stack: Stack) -> DashWorld:
    with psycopg.connect(database) as conn:
        w = seed(conn, uuid.uuid4().hex[:8])
    deteriorate(stack.api_url, w)
    return w


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM),
                                     args=["--no-sandbox", "--headless=new", "--disable-gpu",
                                           "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    folder = ARTIFACTS / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _sign_in(browser: Any, stack: Stack, username: str) -> Any:
    """A fresh browser context (its own Streamlit session) signed in as ``username``."""
    context = browser.new_context(viewport=TABLET, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(stack.dashboard_url)
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in as").wait_for()
    return page


#: Streamlit has finished the script run and every chart on the page has been drawn.
DRAWN = ("() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning' && "
         "[...document.querySelectorAll('[data-testid=stVegaLiteChart]')].every(e => e.querySelector('canvas, svg'))")


def _settle(page: Any) -> None:
    """Wait until Streamlit has finished the current run and drawn its charts."""
    page.wait_for_timeout(200)
    page.wait_for_function(DRAWN, timeout=TIMEOUT_MS)


def _shot(page: Any, path: Path) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so grow the window to fit it."""
    height = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], "
                           "[data-testid=\"stAppViewContainer\"]')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": TABLET["width"], "height": max(TABLET["height"], min(int(height) + 40, 8000))})
    page.wait_for_timeout(400)
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size(TABLET)


#: Widths that tell whether anything is wider than the window: the document and Streamlit's scrolling main block.
WIDTHS = ("() => { const m = document.querySelector('[data-testid=stMain]'); return {window: window.innerWidth, "
          "document: document.documentElement.scrollWidth, main: m.scrollWidth, main_visible: m.clientWidth, "
          "widest_right: Math.max(0, ...[...document.querySelectorAll('.cw-card, [data-testid=stMain] button, "
          "[data-testid=stMain] input')].map(e => e.getBoundingClientRect().right))}; }")


def _assert_fits_tablet(page: Any, buttons: Sequence[str], spinbuttons: Sequence[str] = ()) -> dict[str, float]:
    """At tablet width nothing scrolls sideways, and the buttons (and number boxes) a person taps are at least
    ``TOUCH_PX`` tall and inside the window."""
    assert page.viewport_size == TABLET
    widths = page.evaluate(WIDTHS)
    assert widths["document"] <= widths["window"], widths  # no horizontal scroll of the page
    assert widths["main"] <= widths["main_visible"], widths  # ... nor of Streamlit's main block
    assert widths["widest_right"] <= widths["window"], widths  # no card, button or box cut off on the right
    for role, names in (("button", buttons), ("spinbutton", spinbuttons)):
        for name in names:
            box = page.get_by_role(role, name=name, exact=True).first.bounding_box()
            assert box is not None, f"{role} {name!r} is not shown"
            assert box["height"] >= TOUCH_PX, f"{role} {name!r} is {box['height']:.0f} px tall"
            assert box["x"] >= 0 and box["x"] + box["width"] <= widths["window"], (name, box)
    return widths


def _api(stack: Stack, username: str, path: str, **params: Any) -> Any:
    """What the API itself says (the reference the downloads are checked against), as ``username``."""
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        token = http.post("/auth/token", data={"username": username, "password": PASSWORD})
        token.raise_for_status()
        reply = http.get(path, params=params, headers={"Authorization": f"Bearer {token.json()['access_token']}"})
        reply.raise_for_status()
        return reply.json()


def _nav(page: Any, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title).first.wait_for()
    _settle(page)


def test_care_staff_record_observations_and_acknowledge(browser: Any, stack: Stack, world: DashWorld,
                                                        database: str, shots: Path) -> None:
    page = _sign_in(browser, stack, world.users["care_staff"])
    page.get_by_role("heading", name=f"Oakview {world.uid}").wait_for()
    name = world.names[world.deteriorating]
    card = page.locator(".cw-residents .cw-card", has_text=name)
    card.wait_for()
    assert "NEWS2 7 High" in card.inner_text()  # number and word beside the colour
    assert "HIGH: act now" in card.inner_text()
    first_card = page.locator(".cw-residents .cw-card").first.inner_text()
    assert name in first_card  # most worrying first
    # H-INC-01: the deteriorating resident is ONE incident card listing its parts, not a badge per rule
    incident = page.locator(".cw-incidents .cw-incident", has_text=name)
    assert incident.count() == 1
    parts = {li.get_attribute("data-kind") for li in incident.locator(".cw-components li").all()}
    assert {"news2", "soft_signs"} <= parts, parts
    assert "NEWS2 band HIGH" in incident.inner_text()
    # H-TASK-01: observations due are a task list beside the incidents, not inside them
    page.get_by_role("heading", name="Due now").wait_for()
    assert page.locator(".cw-tasks .cw-task").count() >= 1
    assert page.locator(".cw-incidents .cw-task").count() == 0
    assert page.locator(".cw-tasks .cw-incident").count() == 0
    _settle(page)
    _assert_fits_tablet(page, ["Record a health check", "SBARD summary", "Charts and history", "Sign out"])
    _shot(page, shots / "01-care-home-grid.png")

    page.get_by_role("button", name="Record a health check").click()
    page.get_by_role("heading", name="Record a physical health check").wait_for()
    _settle(page)
    page.get_by_text("From device").first.wait_for()
    spo2 = page.get_by_role("spinbutton", name="Oxygen level, SpO2 (%)", exact=True)
    assert spo2.input_value() == "92"  # prefilled from the device reading 2 minutes ago
    page.get_by_role("spinbutton", name="Breathing rate (breaths a minute)", exact=True).fill("25")
    page.get_by_role("spinbutton", name="Blood pressure, top number (mmHg)", exact=True).fill("96")
    page.get_by_role("spinbutton", name="Temperature (°C)", exact=True).fill("39.1")
    page.get_by_text("A: Alert", exact=True).click()
    page.get_by_text("more breathless", exact=True).click()
    _assert_fits_tablet(page, ["Work out the NEWS2 score and save"],
                        ["Oxygen level, SpO2 (%)", "Breathing rate (breaths a minute)",
                         "Blood pressure, top number (mmHg)", "Pulse (beats a minute)", "Temperature (°C)"])
    _shot(page, shots / "02-health-check-form.png")
    page.get_by_role("button", name="Work out the NEWS2 score and save").click()
    page.get_by_text("What to do now:").wait_for()
    _settle(page)
    assert page.get_by_text("Call 999 now").count() >= 1
    _shot(page, shots / "03-health-check-result.png")
    with psycopg.connect(database) as conn:
        spo2_value, source, score = conn.execute(
            """SELECT spo2, inputs->'spo2'->>'source', score FROM observation_sets WHERE resident_id = %s
               AND recorded_by = %s ORDER BY obs_id DESC LIMIT 1""",
            (world.deteriorating, world.users["care_staff"])).fetchone()
    assert (spo2_value, source) == (92, "device") and score >= 7

    _nav(page, "Incidents")
    with psycopg.connect(database) as conn:
        iid = conn.execute("SELECT incident_id FROM alerts WHERE alert_id = %s", (world.alert_id,)).fetchone()[0]
    assert page.locator(".cw-incident", has_text=name).count() == 1
    page.locator(f".st-key-ack-inc-note-{iid} textarea").fill("Sat with her, phoned 111, obs every 30 min")
    page.locator(f".st-key-ack-inc-btn-{iid} button").click()
    page.locator(f".st-key-ack-inc-btn-{iid}").wait_for(state="detached")
    _settle(page)
    _shot(page, shots / "04-incident-acknowledged.png")
    with psycopg.connect(database) as conn:
        status, by = conn.execute("SELECT status, acknowledged_by FROM incidents WHERE incident_id = %s",
                                  (iid,)).fetchone()
        comment = conn.execute("SELECT comment FROM incident_events WHERE incident_id = %s "
                               "AND action = 'acknowledged'", (iid,)).fetchone()[0]
        alert_by = conn.execute("SELECT acknowledged_by FROM alerts WHERE alert_id = %s",
                                (world.alert_id,)).fetchone()[0]
    assert (status, by, comment, alert_by) == ("acknowledged", world.users["care_staff"],
                                               "Sat with her, phoned 111, obs every 30 min",
                                               world.users["care_staff"])
    page.context.close()


def test_gp_opens_the_alert(browser: Any, stack: Stack, world: DashWorld, shots: Path) -> None:
    page = _sign_in(browser, stack, world.users["gp"])
    page.get_by_role("heading", name="Alert inbox").wait_for()
    _settle(page)
    name = world.names[world.deteriorating]
    page.get_by_text(name).first.wait_for()
    _shot(page, shots / "05-gp-inbox.png")
    top = page.locator('[class*="st-key-open-"]').first
    assert f"st-key-open-{world.alert_id}" in (top.get_attribute("class") or "")  # the NEWS2 alert is first
    first = page.locator('[class*="st-key-open-"] button').first  # the inbox is most severe first
    first.click()
    page.get_by_role("heading", name="Resident charts and history").wait_for()
    _settle(page)
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    charts.nth(4).wait_for()
    assert charts.count() == 5
    assert page.get_by_text(name).count() >= 1
    page.get_by_text("Record your response").wait_for()
    _shot(page, shots / "06-gp-resident.png")
    page.context.close()


def test_council_downloads_the_csv_and_the_pdf(browser: Any, stack: Stack, world: DashWorld, shots: Path) -> None:
    page = _sign_in(browser, stack, world.users["council"])
    page.get_by_role("heading", name="Care package review").wait_for()
    _settle(page)
    page.get_by_text("In the last 28 nights, 25 had no activity between 00:00 and 06:00").wait_for()
    page.wait_for_timeout(500)
    _shot(page, shots / "07-council-review.png")
    site = world.households[0]  # the first household is shown first
    priced = _api(stack, world.users["council"], f"/households/{site}/rightsizing", days=28)

    with page.expect_download() as info:
        page.get_by_role("button", name="Download the evidence (CSV)").click()
    download = info.value
    target = shots / "care-package-evidence.csv"
    download.save_as(target)
    assert download.suggested_filename.endswith(".csv") and site in download.suggested_filename
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    nights = priced["report"]["nights"]
    assert len(rows) - 1 == len(nights) == 28  # a row per night of the evidence period
    assert [(r[0], r[1]) for r in rows[1:]] == [(n["night"], n["activity"]) for n in nights]

    with page.expect_download() as info:
        page.get_by_role("button", name="Download the report (PDF)").click()
    download = info.value
    target = shots / "care-package-review.pdf"
    download.save_as(target)
    data = target.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert download.suggested_filename.endswith(".pdf")
    check_council_pdf(data, priced)  # summary, package and hours, benefit figures, and the charts drawn
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("textbox", name="Username").wait_for()  # back to the sign-in form
    page.context.close()
