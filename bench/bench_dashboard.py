"""Dashboard first-render time per page with 200 residents in one home, beside the sign-in page (issue 8).

    .venv/bin/python bench/bench_dashboard.py [--residents 200] [--sessions 3] [--browser]

Builds a fresh database (on CAREWATCH_TEST_DSN / the local PostgreSQL on 127.0.0.1:5432, else a private one),
seeds the estate of tests/dashboard_world.py with ``--residents`` residents in care home A (plus 3 in home B,
two households, devices, a few days of observations), raises the deteriorating resident's alert through the real
API, and serves ``carewatch api`` as a child process.

* **AppTest** (always): for each role, a fresh session signs in, then every page of that role is opened once;
  the time of each page's first full script run (API calls, charts, HTML) is recorded. Baseline: the sign-in
  page's first render in the same run. Repeated ``--sessions`` times; median and worst are printed.
* **Browser** (``--browser``, needs /usr/bin/chromium): the same pages served by ``carewatch dashboard`` and
  opened in headless Chromium from the sidebar; time from the click until the page's heading is shown and
  Streamlit has finished running. Baseline: the sign-in form appearing after loading the app.

Each page's figure is printed beside the baseline measured in the same run (so a loaded machine shows as a slow
baseline too), with the machine's load average before and after, and whether every page's worst first render
met the 2 s target. Exits 0 whether or not the target is met.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from dashboard_world import PASSWORD, DashWorld, deteriorate, seed, serve_stack  # noqa: E402
from scratch import scratch_database  # noqa: E402  (bench/, beside this script)

APP = REPO / "dashboard" / "app.py"
#: Streamlit has finished the page's script run and every chart on it has been drawn.
DRAWN = ("() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning' && "
         "[...document.querySelectorAll('[data-testid=stVegaLiteChart]')].every(e => e.querySelector('canvas, svg'))")
TARGET_S = 2.0
#: The figure every page is compared with: the sign-in page's first render, measured in the same run.
BASELINE = "sign-in page (baseline)"
#: role -> (page file, heading) in the order a person would open them; the first is the page shown on signing in
ROUTES = {
    "care_staff": [("home", None), ("health_check", "Record a physical health check"), ("alerts", "Incidents"),
                   ("sbard", "SBARD summary"), ("resident", "Resident charts and history")],
    "gp": [("inbox", "Incident inbox"), ("resident", "Resident charts and history"), ("sbard", "SBARD summary")],
    "council": [("rightsizing", "Care package review")],
    "manager": [("home", None), ("estate", "Devices and gateways"), ("adoption", "Adoption")],
}
#: page file -> its sidebar title (dashboard/app.py PAGES)
NAV_TITLES = {"home": "Residents", "health_check": "Record a health check", "alerts": "Incidents",
              "sbard": "SBARD summary", "resident": "Resident charts and history", "inbox": "Incident inbox",
              "rightsizing": "Care package review", "estate": "Devices and gateways", "adoption": "Adoption"}


def apptest_round(api_url: str, world: DashWorld, times: dict[str, list[float]]) -> None:
    from streamlit.testing.v1 import AppTest

    for role, pages in ROUTES.items():
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.session_state["api_url"] = api_url
        t0 = time.perf_counter()
        at.run()
        times[BASELINE].append(time.perf_counter() - t0)
        at.text_input(key="username").input(world.users[role])
        at.text_input(key="password").input(PASSWORD)
        at.button[0].click()
        for i, (page, _) in enumerate(pages):
            if i:
                at.switch_page(f"pages/{page}.py")
            t0 = time.perf_counter()
            at.run()  # the first page is rendered by the sign-in rerun itself
            elapsed = time.perf_counter() - t0
            if at.exception:
                raise RuntimeError(f"{role} {page}: {at.exception[0].value}")
            times[f"{role}: {page}" + (" (with sign-in)" if i == 0 else "")].append(elapsed)


def browser_round(dashboard_url: str, world: DashWorld, times: dict[str, list[float]]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            for role, pages in ROUTES.items():
                context = browser.new_context(viewport={"width": 1024, "height": 1366})
                context.set_default_timeout(60_000)
                page = context.new_page()
                t0 = time.perf_counter()
                page.goto(dashboard_url)
                page.get_by_role("textbox", name="Username").wait_for()
                times[BASELINE].append(time.perf_counter() - t0)
                page.get_by_role("textbox", name="Username").fill(world.users[role])
                page.get_by_role("textbox", name="Password").fill(PASSWORD)
                for i, (name, heading) in enumerate(pages):
                    t0 = time.perf_counter()
                    if i == 0:
                        page.get_by_role("button", name="Sign in").click()
                    else:
                        page.locator('[data-testid="stSidebarNav"]').get_by_text(NAV_TITLES[name], exact=True).click()
                    page.get_by_role("heading", name=heading or f"Oakview {world.uid}").first.wait_for()
                    page.wait_for_function(DRAWN)
                    times[f"{role}: {name}" + (" (with sign-in)" if i == 0 else "")].append(time.perf_counter() - t0)
                context.close()
        finally:
            browser.close()


def load() -> str:
    """The 1, 5 and 15 minute load averages and the CPU count: the figures mean little on a busy machine."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def report(title: str, times: dict[str, list[float]]) -> bool:
    """Print each page beside the baseline of the same run; True when every page's worst run is under 2 s."""
    base = statistics.median(times[BASELINE])
    print(f"\n{title} ({load()})")
    print(f"{'page':44} {'median s':>9} {'worst s':>9} {'baseline s':>11} {'x baseline':>11}  "
          f"target < {TARGET_S:g} s")
    slow = []
    for key, values in times.items():
        med, worst = statistics.median(values), max(values)
        if key == BASELINE:
            verdict = "(baseline)"
        else:
            verdict = "met" if worst < TARGET_S else "NOT MET"
            if worst >= TARGET_S:
                slow.append(key)
        print(f"{key:44} {med:9.3f} {worst:9.3f} {base:11.3f} {med / base:11.1f}  {verdict}")
    print(f"target (every page's worst first render < {TARGET_S:g} s): "
          + ("met" if not slow else f"NOT MET by {len(slow)}: {', '.join(slow)}"))
    return not slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--residents", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=3, help="Fresh sessions per role.")
    parser.add_argument("--browser", action="store_true", help="Also measure in headless Chromium.")
    args = parser.parse_args()
    print(f"before: {load()}")
    with scratch_database(prefix="carewatch_bench_dash") as (dsn, _), \
            tempfile.TemporaryDirectory(prefix="bench-dash-state-") as state:
        t0 = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            world = seed(conn, uuid.uuid4().hex[:8], residents=args.residents)
        print(f"seeded {args.residents} residents in home A (+3 in home B, 2 households) in "
              f"{time.perf_counter() - t0:.1f} s")
        with serve_stack(dsn, Path(state)) as stack:
            deteriorate(stack.api_url, world)
            at_times: dict[str, list[float]] = defaultdict(list)
            apptest_round(stack.api_url, world, defaultdict(list))  # warm-up: imports, caches, connections
            for _ in range(args.sessions):
                apptest_round(stack.api_url, world, at_times)
            report(f"AppTest (script run incl. API calls), {args.sessions} sessions per role", at_times)
            if args.browser:
                if not Path("/usr/bin/chromium").exists():
                    print("\nbrowser: skipped (no /usr/bin/chromium)")
                    return
                br_times: dict[str, list[float]] = defaultdict(list)
                browser_round(stack.dashboard_url, world, defaultdict(list))  # warm-up
                for _ in range(args.sessions):
                    browser_round(stack.dashboard_url, world, br_times)
                report(f"Headless Chromium (click to page drawn), {args.sessions} sessions per role", br_times)


if __name__ == "__main__":
    main()
