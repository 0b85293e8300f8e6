"""The live banner in a real browser (Debian's headless Chromium, Playwright) against ``carewatch api`` and
``carewatch dashboard`` child processes: two care-staff tablets of one home, a high NEWS2 score recorded through
the API, the banner on the *other* tablet within 5 s, sounding; acknowledging on one tablet stops the sound on
both. Headless Chromium has no audio device, so the sound is checked as state: ``data-sound`` on the banner and
on the sound frame's body, and the frame's beep counter (its script ran)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from dashboard_world import BROWSER_MARKS, PASSWORD, DashWorld, Stack, chromium, deteriorate, seed
from dashboard_world import sign_in_tablet as _sign_in

from carewatch.api.users import create_user

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # pragma: no cover - the module is skipped without Chromium anyway
    PlaywrightTimeout = TimeoutError  # type: ignore[misc,assignment]

pytestmark = BROWSER_MARKS
SOUND_FRAME = 'iframe[srcdoc*="data-beeps"]'


@pytest.fixture(scope="module")
def world(database: str, stack: Stack) -> DashWorld:
    with psycopg.connect(database) as conn:
        w = seed(conn, uuid.uuid4().hex[:8])
        second = f"carestaff2-{w.uid}"
        create_user(conn, second, "care_staff", password=PASSWORD, full_name="Second Carer", site_id=w.home_a)
        conn.commit()
    w.extra["second"] = second
    return w


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium("--autoplay-policy=no-user-gesture-required") as running:
        yield running


def _sound(page: Any) -> str | None:
    banner = page.locator(".cw-banner")
    return banner.first.get_attribute("data-sound") if banner.count() else None


def _frame_sound(page: Any) -> tuple[str | None, int]:
    body = page.frame_locator(SOUND_FRAME).first.locator("body")
    return body.get_attribute("data-sound"), int(body.get_attribute("data-beeps") or 0)


def test_second_tablet_sees_the_banner_within_5_s_and_acknowledging_stops_the_sound_everywhere(
        browser: Any, stack: Stack, world: DashWorld) -> None:
    first = _sign_in(browser, stack, world.users["care_staff"])
    second = _sign_in(browser, stack, world.extra["second"])
    for page in (first, second):
        try:
            page.get_by_role("heading", name=f"Oakview {world.uid}").wait_for()
        except PlaywrightTimeout:
            raise AssertionError(page.locator("[data-testid=stMain]").inner_text()[:2000]) from None
    first.wait_for_timeout(2500)  # a poll or two with nothing waiting
    assert second.locator(".cw-banner").count() == 0

    alert_id = deteriorate(stack.api_url, world)  # NEWS2 7+ recorded on the first tablet's account
    scored = time.monotonic()
    second.locator('.cw-banner[data-sound="on"]').wait_for(timeout=5000)
    seen_after = time.monotonic() - scored
    assert seen_after < 5.0, seen_after
    banner = second.locator(".cw-banner").first
    assert str(alert_id) in (banner.get_attribute("data-alerts") or "").split(",")
    assert world.names[world.deteriorating] in banner.inner_text()
    assert "Call 999 now" in banner.inner_text()
    second.wait_for_function(f"() => Number(document.querySelector('{SOUND_FRAME}')?.contentDocument?.body"
                             "?.dataset.beeps || 0) >= 1", timeout=5000)
    assert _frame_sound(second)[0] == "on"
    first.locator('.cw-banner[data-sound="on"]').wait_for(timeout=5000)

    # acknowledge everything waiting, from the first tablet's banner
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        buttons = first.locator('[class*="st-key-banner-ack-"] button')
        if buttons.count() == 0:
            break
        try:  # the banner re-renders every 2 s: a button may go between counting and clicking
            buttons.first.click(timeout=3000)
        except PlaywrightTimeout:
            continue
        first.wait_for_timeout(1500)
    assert first.locator('[class*="st-key-banner-ack-"] button').count() == 0
    acknowledged = time.monotonic()
    for page in (first, second):
        page.locator('.cw-banner[data-sound="off"]').wait_for(timeout=5000)
        page.wait_for_function(f"() => document.querySelector('{SOUND_FRAME}')?.contentDocument?.body"
                               "?.dataset.sound === 'off'", timeout=5000)
    stopped_after = time.monotonic() - acknowledged
    assert stopped_after < 6.0, stopped_after
    assert _sound(second) == "off"
    # the high alert still waits for an outcome: the banner says so, silently
    assert "record what was done" in second.locator(".cw-banner").first.inner_text()
    for page in (first, second):
        page.context.close()
