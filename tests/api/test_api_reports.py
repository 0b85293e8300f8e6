"""Reports for the dashboard: personal baselines, care-package review (benefit, CSV, PDF) and adoption."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
import pytest
from behaviour_seed import local, seed_quiet_nights
from fastapi.testclient import TestClient

from carewatch.api.adoption import DROP_RATIO, RECENT_DAYS, AlertTiming, DayCount, adoption_report
from carewatch.api.household_report import Event, behaviour_report
from carewatch.api.report_pdf import render_pdf
from carewatch.api.rightsizing import CSV_COLUMNS, RightsizingReport, benefit, evidence_csv

if TYPE_CHECKING:
    from conftest import World


# ------------------------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------------------------
def test_benefit_arithmetic_per_person_and_caseload() -> None:
    b = benefit(35, 24.5, 12, "households on waking-night care")
    assert b.weekly_per_person_gbp == 857.5 and b.annual_per_person_gbp == 857.5 * 52
    assert b.weekly_caseload_gbp == 857.5 * 12 and b.hours_released_caseload_per_week == 420
    assert b.sentence.startswith("Releasing 35 hours a week at £24.50 an hour frees £857.50 a week (£44,590 a year)")
    assert "for 12 people" in b.sentence
    assert benefit(10, 20, 0, "x").caseload == 1  # never less than the person under review
    with pytest.raises(ValueError, match="negative"):
        benefit(-1, 20, 1, "x")


def _report(days: int = 7) -> RightsizingReport:
    last = date(2024, 3, 28)
    nights = [last - timedelta(days=i) for i in range(days)]
    events = [Event("bathroom_visit", local(n, 2), local(n, 2, 5), {}) for n in nights]
    events += [Event("kettle_use", local(n, 8), local(n, 8, 3), {}) for n in nights]
    site = {"site_id": "h1", "name": "Elm – Ünïcode", "care_package": "waking-night care",
            "package_hours_per_week": 70, "hourly_rate_gbp": 24.5}
    report = behaviour_report(site, events, set(nights[:-1]), [], last_day=last, days=days, now=local(last, 12))
    return RightsizingReport(report=report, benefit=benefit(70, 24.5, 3, "test"))


def test_evidence_csv_has_a_row_per_night_with_the_heatmap() -> None:
    data = _report()
    rows = list(csv.reader(io.StringIO(evidence_csv(data.report))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 1 + 7
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["date"] == "2024-03-22" and first["night_activity"] == "no_data"  # not heard: never "settled"
    last = dict(zip(rows[0], rows[-1], strict=True))
    assert (last["night_activity"], last["night_bathroom_visits"], last["kitchen_sessions"]) == ("none", "1", "1")
    assert last["events_02h"] == "1" and last["events_08h"] == "1" and last["events_03h"] == "0"


@pytest.mark.parametrize("days", [1, 7, 90])
def test_pdf_is_a_real_pdf_for_any_period(days: int) -> None:
    pdf = render_pdf(_report(days), datetime(2024, 3, 28, 12, tzinfo=UTC))
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert int(re.search(rb"/Count (\d+)", pdf).group(1)) >= 1
    assert len(pdf) > 3000


def test_adoption_flags_dropping_use_and_times_responses() -> None:
    end = date(2024, 5, 28)
    start = end - timedelta(days=27)
    homes = {"a": ("Ash House", 10), "b": ("Birch Court", 10)}
    counts = []
    for i in range(28):
        day = start + timedelta(days=i)
        recent = day > end - timedelta(days=RECENT_DAYS)
        counts.append(DayCount("a", day, 10 if recent else 20, 5))  # halves in the last week: dropping
        counts.append(DayCount("b", day, 20, 0))  # steady
    counts.append(DayCount("elsewhere", end, 99, 0))  # not a home in scope: ignored
    opened = datetime(2024, 5, 20, 9, tzinfo=UTC)
    alerts = [AlertTiming("a", opened, opened + timedelta(minutes=10), opened + timedelta(minutes=40), True),
              AlertTiming("a", opened, opened + timedelta(minutes=30), None, False),
              AlertTiming("a", opened, None, None, False)]
    report = adoption_report(homes, counts, alerts, start=start, end=end)
    a, b = report.homes
    assert a.site_id == "a" and a.dropping and b.site_id == "b" and not b.dropping
    assert a.recent_per_resident_per_day == 1.0 and a.earlier_per_resident_per_day == 2.0 < 1.0 / DROP_RATIO * 2
    assert b.trend == "steady" and report.dropping == ["a"]
    assert a.staff_observations == 21 * 20 + 7 * 10 and a.device_observations == 28 * 5
    assert (a.alerts, a.acknowledged, a.median_minutes_to_acknowledge, a.responded) == (3, 2, 20.0, 1)
    assert a.median_minutes_to_response == 40.0 and a.open_not_acknowledged == 1
    assert "Ash House (2 -> 1 observations a day per resident)" in report.summary
    assert len(report.daily) == 2 * 28
    short = adoption_report(homes, counts, alerts, start=end - timedelta(days=6), end=end)
    assert not any(h.dropping for h in short.homes) and "too short" in short.homes[0].trend


# ------------------------------------------------------------------------------------------------------------
# Endpoints on the two-tenant world
# ------------------------------------------------------------------------------------------------------------
def test_baselines_use_the_residents_own_history(client: TestClient, world: World, db: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    with db.cursor() as cur:
        for i in range(10):
            cur.execute(
                """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, spo2,
                       temperature, pulse, on_oxygen, score, risk, subscores, complete, missing)
                   VALUES (%s, %s, %s, 'seed', 'manual', %s, 36.8, 70, %s, 0, 'low', '{}', false, '{}')""",
                (world.resident_a, world.home_a, now - timedelta(days=2 + i), 93 if i % 2 else 94, False))
        cur.execute(  # on oxygen: not part of the SpO2 baseline
            """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, spo2, on_oxygen,
                   score, risk, subscores, complete, missing)
               VALUES (%s, %s, %s, 'seed', 'manual', 99, true, 2, 'low', '{}', false, '{}')""",
            (world.resident_a, world.home_a, now - timedelta(days=3)))
    db.commit()
    response = client.get(f"/residents/{world.resident_a}/baselines", headers=world.headers(client, "gp"))
    assert response.status_code == 200, response.text
    by = {b["parameter"]: b for b in response.json()["baselines"]}
    spo2 = by["spo2"]
    assert (spo2["median"], spo2["count"], spo2["trusted"]) == (93.5, 10, True)
    assert (spo2["alert_direction"], spo2["alert_threshold"]) == ("below", 90.5)
    assert "alert is raised when it stays 3 % below" in spo2["meaning"]
    assert by["temperature"]["alert_threshold"] == 37.8 and by["temperature"]["display_unit"] == "°C"
    assert "36.8 °C" in by["temperature"]["meaning"] and by["pulse"]["alert_threshold"] is None
    assert by["respiration_rate"]["median"] is None and "No usual breathing rate" in by["respiration_rate"]["meaning"]
    assert client.get(f"/residents/{world.resident_ha2}/baselines",
                      headers=world.headers(client, "council")).status_code == 403  # no vitals consent


def test_rightsizing_benefit_csv_and_pdf(client: TestClient, world: World, db: psycopg.Connection) -> None:
    seed_quiet_nights(db, world, first_seq=70_000)
    headers = world.headers(client, "council")
    base = f"/households/{world.household_a}"
    response = client.get(f"{base}/rightsizing", params={"days": 28, "hours_released": 35}, headers=headers)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["report"]["summary"].startswith("In the last 28 nights, 28 had no activity between 00:00 and 06:00")
    b = data["benefit"]
    # rate from the package (£25.50); caseload = council A's two households on waking-night care (A and A2)
    assert (b["hourly_rate_gbp"], b["weekly_per_person_gbp"], b["caseload"]) == (25.5, 892.5, 2)
    assert b["weekly_caseload_gbp"] == 1785.0 and "waking-night care" in b["caseload_basis"]
    whole = client.get(f"{base}/rightsizing", params={"caseload": 40, "hourly_rate": 30}, headers=headers).json()
    assert whole["benefit"]["hours_released_per_week"] == 70 and whole["benefit"]["weekly_caseload_gbp"] == 84000
    assert client.get(f"{base}/rightsizing", params={"hourly_rate": "nan"}, headers=headers).status_code == 422

    csv_reply = client.get(f"{base}/report.csv", params={"days": 14}, headers=headers)
    assert csv_reply.status_code == 200 and csv_reply.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_reply.headers["content-disposition"]
    assert len(csv_reply.text.strip().splitlines()) == 1 + 14
    pdf = client.get(f"{base}/report.pdf", params={"days": 28, "hours_released": 35}, headers=headers)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    exports = db.execute("""SELECT detail->>'format' FROM audit_log WHERE subject_id = %s AND action = 'export'
                            ORDER BY audit_id""", (world.household_a,)).fetchall()
    assert [e[0] for e in exports] == ["csv", "pdf"]
    assert client.get(f"/households/{world.household_b}/report.pdf", headers=headers).status_code == 404


def test_adoption_endpoint_scoped_to_the_managers_home(client: TestClient, world: World,
                                                       db: psycopg.Connection) -> None:
    staff = world.headers(client, "care_staff")
    assert client.post(f"/alerts/{world.alert_a}/acknowledge", json={"comment": "seen"},
                       headers=staff).status_code == 200
    response = client.get("/reports/adoption", params={"days": 28}, headers=world.headers(client, "manager"))
    assert response.status_code == 200, response.text
    report = response.json()
    (home,) = report["homes"]
    assert home["site_id"] == world.home_a and home["residents"] == 1
    assert home["staff_observations"] == 1 and home["alerts"] == 1 and home["acknowledged"] == 1
    assert home["median_minutes_to_acknowledge"] is not None and len(report["daily"]) == 28
    assert world.home_b not in response.text
    for role in ("care_staff", "gp", "council"):
        assert client.get("/reports/adoption", headers=world.headers(client, role)).status_code == 403
    everyone = client.get("/reports/adoption", headers=world.headers(client, "admin")).json()
    assert {world.home_a, world.home_b} <= {h["site_id"] for h in everyone["homes"]}
