"""A small estate for the dashboard's tests and benchmark, written straight into a migrated database.

Care home A (``residents`` people, resident 0 is the one who will deteriorate), care home B (3 residents, same GP
practice: the GP inbox spans homes), two households of one council on waking-night care (28 nights of behaviour
events, kitchen use, time out, room temperatures), devices (one battery low, one silent), a gateway with an outbox
backlog, a dead letter, a few days of observation sets scored by the real NEWS2 scorer, device readings for the
charts and recent ones for the prefill, and one user per role. ``deteriorate`` then records an observation set
through the real API, so the real alert engine raises the alert.

Imported by tests/dashboard (``pythonpath = tests``) and bench/bench_dashboard.py (adds tests/ to sys.path).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from carewatch.api.users import create_user, hash_password
from carewatch.embedded import free_port, wait_for
from carewatch.procs import Supervisor
from carewatch.scoring.behaviour import last_complete_night
from carewatch.scoring.news2 import ObservationSet, score_observation
from carewatch.scoring.rules import LOCAL_TZ
from carewatch.settings import Settings

PASSWORD = "dashboard pass 1"
FIRST = ("Mary", "John", "Edith", "Arthur", "Joan", "Harold", "Doris", "Albert", "Vera", "Stanley", "Irene", "Frank")
LAST = ("Smith", "Jones", "Taylor", "Brown", "Evans", "Walker", "Wright", "Hughes", "Green", "Hall", "Wood", "Clarke")
#: What the deteriorating resident's carer measures: NEWS2 7 (high: 2 + 2 + 1 + 1 + 0 + 1) and soft signs.
DETERIORATING = {"respiration_rate": 24, "spo2": 93, "systolic_bp": 105, "pulse": 105, "consciousness": "A",
                 "temperature": 38.5, "soft_signs": ["reduced_mobility", "not_eating_drinking"]}


@dataclass
class DashWorld:
    uid: str
    home_a: str
    home_b: str
    practice: str
    council: str
    households: list[str]
    residents: list[str]  # home A, resident 0 deteriorates
    residents_b: list[str]
    names: dict[str, str]
    users: dict[str, str]  # role -> username
    gateway: str
    alert_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def deteriorating(self) -> str:
        return self.residents[0]


def _name(i: int, uid: str) -> str:
    return f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]} {uid[:4]}{i}"


def _obs_row(rid: str, site: str, at: datetime, values: dict[str, Any], by: str, source: str) -> dict[str, Any]:
    result = score_observation(ObservationSet(**{k: v for k, v in values.items() if k != "soft_signs"}))
    return {"rid": rid, "site": site, "at": at, "by": by, "source": source,
            **{k: values.get(k) for k in ("respiration_rate", "spo2", "systolic_bp", "pulse", "consciousness",
                                          "temperature")},
            "signs": values.get("soft_signs", []), "score": result.score, "risk": result.risk.value,
            "subscores": Jsonb(dict(result.subscores)), "complete": result.complete, "missing": list(result.missing)}


def seed(conn: psycopg.Connection, uid: str, residents: int = 6, households: int = 2, days: int = 4) -> DashWorld:
    """Insert the estate (commits). ``days`` of observation history, 3 sets a day per resident."""
    rng = random.Random(uid)
    now = datetime.now(UTC)
    w = DashWorld(uid=uid, home_a=f"oak-{uid}", home_b=f"elm-{uid}", practice=f"P{uid}", council=f"Council {uid}",
                  households=[f"hh{i}-{uid}" for i in range(households)],
                  residents=[f"ra{i}-{uid}" for i in range(residents)], residents_b=[f"rb{i}-{uid}" for i in range(3)],
                  names={}, users={}, gateway=f"gw-{uid}")
    cur = conn.cursor()
    if cur.execute("SELECT to_regproc('carewatch_ensure_partitions')").fetchone()[0] is not None:
        # monthly partitions first: rows in the default partition would block creating them later
        cur.execute("SELECT carewatch_ensure_partitions(%s, %s)",
                    (now - timedelta(days=days + 40), now + timedelta(days=1)))
    cur.execute("INSERT INTO gp_practices VALUES (%s, %s)", (w.practice, f"Riverside Surgery {uid}"))
    cur.executemany(
        """INSERT INTO sites (site_id, kind, name, council, care_package, package_hours_per_week, hourly_rate_gbp,
                              consent_vitals) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        [(w.home_a, "care_home", f"Oakview {uid}", None, None, None, None, False),
         (w.home_b, "care_home", f"Elm Lodge {uid}", None, None, None, None, False)]
        + [(h, "household", f"{['Rose', 'Ivy', 'Fern'][i % 3]} Cottage {uid}", w.council, "waking-night care", 70,
            24.5, True) for i, h in enumerate(w.households)])
    people = [(r, w.home_a, i) for i, r in enumerate(w.residents)] + \
             [(r, w.home_b, residents + i) for i, r in enumerate(w.residents_b)]
    for rid, _site, i in people:
        w.names[rid] = _name(i, uid)
    cur.executemany(
        """INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, gp_practice, obs_per_day)
           VALUES (%s, %s, %s, %s, %s, 3)""",
        [(rid, site, w.names[rid], date(1930 + i % 15, 1 + i % 12, 1 + i % 28), w.practice) for rid, site, i in people])

    # Observation history: 3 sets a day around each person's own normal, scored by the real NEWS2 scorer.
    rows = []
    for rid, site, _ in people:
        usual = {"spo2": rng.choice([94, 95, 96, 97]), "pulse": rng.randint(62, 84), "respiration_rate": 16,
                 "systolic_bp": rng.randint(118, 145), "temperature": round(rng.uniform(36.3, 37.0), 1)}
        for k in range(days * 3):
            at = now - timedelta(hours=8 * (days * 3 - k)) - timedelta(minutes=rng.randint(0, 30))
            values = {**{p: round(v + rng.uniform(-1, 1), 1) if p == "temperature" else v + rng.randint(-1, 1)
                         for p, v in usual.items()}, "consciousness": "A"}
            values["temperature"] = round(values["temperature"], 1)
            rows.append(_obs_row(rid, site, at, values, f"carestaff-{uid}", "manual"))
    cur.executemany(
        """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, respiration_rate, spo2,
               systolic_bp, pulse, consciousness, temperature, soft_signs, score, risk, subscores, complete, missing)
           VALUES (%(rid)s, %(site)s, %(at)s, %(by)s, %(source)s, %(respiration_rate)s, %(spo2)s, %(systolic_bp)s,
                   %(pulse)s, %(consciousness)s, %(temperature)s, %(signs)s, %(score)s, %(risk)s, %(subscores)s,
                   %(complete)s, %(missing)s)""", rows)
    latest = {}
    for r in rows:
        latest[r["rid"]] = r
    cur.executemany(
        """INSERT INTO resident_state (resident_id, site_id, news2_score, news2_risk, news2_complete, news2_at,
                                       next_obs_due) VALUES (%s, %s, %s, %s, %s, %s, %s)""",
        [(rid, r["site"], r["score"], r["risk"], r["complete"], r["at"],
          r["at"] + timedelta(hours=8) if i % 5 else now - timedelta(minutes=20))
         for i, (rid, r) in enumerate(latest.items())])

    # Devices, gateway, a dead letter; readings for the deteriorating resident's charts and prefill.
    cur.execute(
        """INSERT INTO gateways (gateway_id, site_id, state, status, status_at, last_seen, last_seq, missing_seqs)
           VALUES (%s, %s, 'online', %s, %s, %s, 5000, 2)""",
        (w.gateway, w.home_a, Jsonb({"outbox_depth": 42, "outbox_bytes": 8192, "outbox_budget_pct": 1.5,
                                     "oldest_unsent": (now - timedelta(minutes=4)).isoformat()}), now, now))
    cur.executemany(
        """INSERT INTO devices (device_id, site_id, gateway_id, kind, model, resident_id, battery_pct, last_seen)
           VALUES (%s, %s, %s, 'pulse_oximeter', 'PO3', %s, %s, %s)""",
        [(f"ox-{rid}", w.home_a, w.gateway, rid, 12.0 if i == 1 else 80.0 - i % 50,
          now - (timedelta(hours=5) if i == 2 else timedelta(minutes=3))) for i, rid in enumerate(w.residents)])
    cur.execute("""INSERT INTO dead_letters (stage, site_id, gateway_id, device_id, reason, raw)
                   VALUES ('ingest', %s, %s, %s, 'spo2 value 140 is outside 40-100', '{"metric":"spo2"}')""",
                (w.home_a, w.gateway, f"ox-{w.residents[0]}"))
    rid = w.deteriorating
    readings, seq = [], 0
    for h in range(days * 24, 0, -1):
        at = now - timedelta(hours=h)
        worse = max(0.0, 1 - h / 12)  # drifting over the last 12 hours
        for metric, value in (("spo2", 96 - 4 * worse), ("pulse_rate", 72 + 40 * worse),
                              ("temperature", 36.7 + 2.0 * worse)):
            seq += 1
            readings.append((at, w.gateway, seq, w.home_a, rid, f"ox-{rid}", metric, round(value, 1), at))
    recent = now - timedelta(minutes=2)
    for metric, value in (("spo2", 92.0), ("pulse_rate", 118.0)):
        seq += 1
        readings.append((recent, w.gateway, seq, w.home_a, rid, f"ox-{rid}", metric, value, recent))
    cur.executemany("""INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric,
                                             value, received_at, subject_kind)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'resident')""",
                    readings)
    cur.executemany("""INSERT INTO latest_readings (subject_kind, subject_id, metric, site_id, device_id, value,
                                                    measured_at)
                       VALUES ('resident', %s, %s, %s, %s, %s, %s)""",
                    [(rid, m, w.home_a, f"ox-{rid}", v, recent) for m, v in (("spo2", 92.0), ("pulse_rate", 118.0))])

    # Households: 28 nights, mostly settled (one bathroom visit), some busy; kitchen use; time out; rooms.
    last = last_complete_night(now)
    events, hh_readings = [], []
    for h_index, hh in enumerate(w.households):
        hgw = f"gwh{h_index}-{uid}"
        cur.execute("INSERT INTO gateways (gateway_id, site_id, state) VALUES (%s, %s, 'online')", (hgw, hh))
        cur.execute("""INSERT INTO devices (device_id, site_id, gateway_id, kind, room, role, battery_pct, last_seen)
                       VALUES (%s, %s, %s, 'thermometer', 'Living room', 'room_temperature', 90, %s)""",
                    (f"t-{hh}", hh, hgw, now))
        for i in range(28):
            day = last - timedelta(days=i)

            def at(hour: int, minute: int = 0, d: date = day) -> datetime:
                return datetime.combine(d, time(hour, minute), tzinfo=LOCAL_TZ)

            events.append((hh, "bathroom_visit", at(2, 30), at(2, 36), Jsonb({"role": "bathroom"})))
            if i % 9 == 4:
                for hour in (1, 3, 4):
                    events.append((hh, "night_activity", at(hour, 10), at(hour, 25), Jsonb({"bathroom_trip": False})))
            for hour in (8, 12, 17):
                events.append((hh, "kettle_use", at(hour, 5), at(hour, 8), Jsonb({})))
                events.append((hh, "fridge_open", at(hour, 10), at(hour, 11), Jsonb({})))
            events.append((hh, "front_door", at(10, 0), at(10, 1), Jsonb({"direction": "exit"})))
            events.append((hh, "front_door", at(11, 15 + i % 40), at(11, 16 + i % 40), Jsonb({"direction": "return"})))
            for k, hour in enumerate((2, 9, 15, 21)):
                hh_readings.append((at(hour), hgw, i * 10 + k + 1, hh, hh, f"t-{hh}", "room_temperature",
                                    round(19.5 + (hour - 12) / 10 - (2.5 if i % 11 == 3 else 0), 1), at(hour)))
    cur.executemany("""INSERT INTO behaviour_events (site_id, kind, started_at, ended_at, detail)
                       VALUES (%s, %s, %s, %s, %s)""", events)
    cur.executemany("""INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric,
                                             value, received_at, subject_kind)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'household')""",
                    hh_readings)

    # One user per role (the same password; hashed once).
    digest = hash_password(PASSWORD)
    scopes = {"care_staff": {"site_id": w.home_a}, "manager": {"site_id": w.home_a},
              "gp": {"practice_code": w.practice}, "council": {"council": w.council}, "admin": {}}
    full = {"care_staff": "Sam Carer", "manager": "Morgan Manager", "gp": "Dr Jo Patel", "council": "Alex Reviewer",
            "admin": "Ada Admin"}
    for role, extra in scopes.items():
        name = f"{role.replace('_', '')}-{uid}"
        if role == "care_staff":
            create_user(conn, name, role, password=PASSWORD, full_name=full[role], **extra)
        else:
            cur.execute("""INSERT INTO users (username, full_name, role, site_id, practice_code, council, password_hash)
                           VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                        (name, full[role], role, extra.get("site_id"), extra.get("practice_code"),
                         extra.get("council"), digest))
        w.users[role] = name
    conn.commit()
    return w


def deteriorate(api_url: str, w: DashWorld) -> int:
    """Record the deteriorating resident's observations through the API as care staff; returns the open alert
    the real alert engine raised."""
    with httpx.Client(base_url=api_url, timeout=30) as http:
        token = http.post("/auth/token", data={"username": w.users["care_staff"], "password": PASSWORD})
        token.raise_for_status()
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        reply = http.post(f"/residents/{w.deteriorating}/observations", json=DETERIORATING, headers=headers)
        reply.raise_for_status()
        result = reply.json()
    news2 = [a for a in result["open_alerts"] if a["kind"] == "news2"]
    if not news2:
        raise RuntimeError(f"the alert engine raised no NEWS2 alert for score {result['score']}: {result}")
    w.alert_id = news2[0]["alert_id"]
    return w.alert_id


@dataclass
class Stack:
    api_url: str
    dashboard_url: str
    supervisor: Supervisor


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serve_stack(database_url: str, state_dir: Path) -> Iterator[Stack]:
    """``carewatch api`` (uvicorn) and ``carewatch dashboard`` (Streamlit) as child processes on free ports, the
    way users run them; stopped (whole process groups) on exit. Logs are in ``state_dir/logs``."""
    api_port, dash_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    env = Settings().child_env(database_url=database_url, jwt_secret="browser-" + "s" * 40, state_dir=str(state_dir),
                               api_host="127.0.0.1", api_port=str(api_port), api_url=api_url,
                               dashboard_port=str(dash_port), log_level="WARNING")
    supervisor = Supervisor(env, state_dir / "logs")
    try:
        api = supervisor.start("api", "api")
        dashboard = supervisor.start("dashboard", "dashboard")
        for child, url in ((api, f"{api_url}/healthz"), (dashboard, f"http://127.0.0.1:{dash_port}/_stcore/health")):
            try:
                wait_for(lambda url=url, child=child: _healthy(url) or not child.alive(), 60, f"{child.name} at {url}")
            except Exception as exc:
                raise RuntimeError(f"{child.name} did not start: {exc}\n{child.log_tail()}") from exc
            if not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        yield Stack(api_url, f"http://127.0.0.1:{dash_port}", supervisor)
    finally:
        supervisor.stop_all()



@dataclass
class PdfPage:
    """What one PDF page says and draws: its text (whitespace collapsed) and its filled rectangles by colour."""

    text: str
    fills: dict[str, int]  # "#RRGGBB" -> filled rectangles drawn in that colour


def read_pdf(data: bytes) -> list[PdfPage]:
    """Parse a PDF with pypdf: each page's text and the rectangles it fills, by fill colour (the report's charts
    are fpdf2 vector drawings, not embedded pictures, so the rectangles are the charts)."""
    import io

    from pypdf import PdfReader
    from pypdf.generic import ContentStream

    reader = PdfReader(io.BytesIO(data))
    pages = []
    for page in reader.pages:
        fills: dict[str, int] = {}
        colour, saved, pending = "#000000", [], 0
        for operands, op in ContentStream(page.get_contents(), reader).operations:
            if op == b"q":
                saved.append(colour)
            elif op == b"Q" and saved:
                colour = saved.pop()
            elif op == b"rg":
                colour = "#" + "".join(f"{round(float(v) * 255):02X}" for v in operands)
            elif op == b"g":
                colour = "#" + f"{round(float(operands[0]) * 255):02X}" * 3
            elif op == b"re":
                pending += 1
            elif op in (b"f", b"F", b"f*", b"B", b"B*", b"b", b"b*"):
                if pending:
                    fills[colour] = fills.get(colour, 0) + pending
                pending = 0
            elif op in (b"S", b"s", b"n"):
                pending = 0
        pages.append(PdfPage(" ".join(page.extract_text().split()), fills))
    return pages


def check_council_pdf(data: bytes, priced: dict[str, Any]) -> list[PdfPage]:
    """Assert that the care-package PDF carries what the API's ``/rightsizing`` answer ``priced`` says (the plain
    summary, the package and its hours and cost, the benefit figures) and draws each chart from that data on
    the page with the chart's heading. Returns the parsed pages."""
    from carewatch import palette

    report, benefit = priced["report"], priced["benefit"]
    pages = read_pdf(data)
    text = " ".join(p.text for p in pages)
    assert report["summary"] in text, report["summary"]
    package = report["care_package"]
    assert (f"Current package: {package['description']}, {package['hours_per_week']:g} hours a week at "
            f"£{package['hourly_rate_gbp']:,.2f} an hour = £{package['weekly_cost_gbp']:,.2f} a week.") in text
    assert benefit is not None and benefit["sentence"] in text, benefit

    def page_with(heading: str) -> PdfPage:
        """The page with a chart's heading (not a sentence that starts the same way, "...per night: 1 on")."""
        found = [p for p in pages if re.search(re.escape(heading) + "(?!:)", p.text)]
        assert found, f"no page has the heading {heading!r}"
        return found[0]

    nights, daily = report["nights"], report["daily"]
    strip = page_with("Night by night")
    for key in palette.NIGHT:  # a square per night in its class colour (+1: the legend swatch)
        expected = sum(n["activity"] == key for n in nights) + 1
        assert strip.fills.get(palette.NIGHT[key].background, 0) >= expected, (key, strip.fills)
    counts = report["heatmap"]["counts"]
    peak = max((c for row in counts for c in row), default=0) or 1
    cells: dict[str, int] = {}
    for row in counts:
        for c in row:
            colour = palette.mix(palette.HEAT_LOW, palette.HEAT_HIGH, c / peak)
            cells[colour] = cells.get(colour, 0) + 1
    heat = page_with("Activity by hour of day")
    assert sum(cells.values()) == 24 * len(report["heatmap"]["days"])
    assert {k: heat.fills.get(k, 0) for k in cells} == cells, heat.fills  # every square, shaded by its count
    bathroom = page_with("Bathroom visits per night")
    assert bathroom.fills.get(palette.BASELINE, 0) == sum(n["activity"] != "no_data" for n in nights)
    kitchen = page_with("Meals and drinks: kitchen sessions per day")
    assert kitchen.fills.get(palette.NIGHT["none"].background, 0) >= sum(d["kitchen_sessions"] is not None
                                                                          for d in daily)
    out = page_with("Time out of the home per day")
    assert out.fills.get(palette.TIME_OUT, 0) == sum(d["minutes_out"] is not None for d in daily)
    return pages


# ------------------------------------------------------------------------------------------------------------
# Headless Chromium (the browser tests): one launcher and one tablet sign-in
# ------------------------------------------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
TABLET = {"width": 1024, "height": 1366}  # a 12.9" tablet held upright
BROWSER_TIMEOUT_MS = 30_000
#: ``pytestmark`` of every browser test module.
BROWSER_MARKS = [pytest.mark.browser,
                 pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                                  "(apt-get install chromium; "
                                                                  "scripts/ensure-test-services.sh)")]


@contextmanager
def chromium(*extra_args: str) -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--headless=new", "--disable-gpu",
                                          "--disable-dev-shm-usage", *extra_args])
        try:
            yield browser
        finally:
            browser.close()


def sign_in_tablet(browser: Any, stack: Stack, username: str, **context: Any) -> Any:
    """A fresh browser context (its own Streamlit session) on a tablet-sized screen, signed in as ``username``
    (``context``: more Playwright context options, e.g. ``accept_downloads=True``)."""
    context = browser.new_context(viewport=TABLET, **context)
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    page = context.new_page()
    page.goto(stack.dashboard_url)
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in as").wait_for()
    return page
