"""The council's exports as the dashboard downloads them (``ApiClient.report_pdf`` / ``report_csv`` against the
real API over a seeded database), read back: the PDF's text and drawings with pypdf, the CSV with csv."""

from __future__ import annotations

import csv
import io

from dashboard_world import PASSWORD, DashWorld, check_council_pdf

from carewatch import palette
from carewatch.api.rightsizing import CSV_COLUMNS
from carewatch.dashboard.client import ApiClient


def _council(live_api: str, estate: DashWorld) -> ApiClient:
    c = ApiClient(live_api)
    c.login(estate.users["council"], PASSWORD)
    return c


def test_pdf_says_the_summary_package_and_benefit_and_draws_the_charts(live_api: str, estate: DashWorld) -> None:
    c = _council(live_api, estate)
    site = estate.households[0]
    priced = c.rightsizing(site, days=28, hours_released=35)  # the calculator as the reviewer set it
    data = c.report_pdf(site, 28, hours_released=35)
    pages = check_council_pdf(data, priced)
    text = " ".join(p.text for p in pages)
    # the figures themselves, not only "whatever the API said"
    assert "In the last 28 nights, 25 had no activity between 00:00 and 06:00 other than at most one bathroom " \
           "visit. 3 nights were busy." in text
    assert "Current package: waking-night care, 70 hours a week at £24.50 an hour = £1,715.00 a week." in text
    assert "Releasing 35 hours a week at £24.50 an hour frees £857.50 a week (£44,590 a year)" in text
    assert "for 2 people" in text  # the council's caseload on the same package
    heat = next(p for p in pages if "Activity by hour of day" in p.text)
    assert sum(heat.fills.values()) >= 28 * 24  # hour x day squares
    out = next(p for p in pages if "Time out of the home per day" in p.text)
    assert out.fills.get(palette.TIME_OUT) == 28  # a bar a day, in the palette's colour


def test_csv_has_a_row_per_night_matching_the_api(live_api: str, estate: DashWorld) -> None:
    c = _council(live_api, estate)
    site = estate.households[0]
    report = c.rightsizing(site, days=14)["report"]
    rows = list(csv.reader(io.StringIO(c.report_csv(site, 14).decode())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r[0] for r in rows[1:]] == [n["night"] for n in report["nights"]]
    assert [r[1] for r in rows[1:]] == [n["activity"] for n in report["nights"]]
