"""Every dashboard page, driven with Streamlit's AppTest against the real API (HTTP) over a seeded database.

The pages are reached the way a person reaches them: sign in through the form, then follow the navigation
(``switch_page``) or the page's own buttons. Assertions read what is on screen and what the API stored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from dashboard_world import DashWorld
from streamlit.testing.v1 import AppTest

from carewatch.dashboard.client import ago, local_time, urgency

SignIn = Callable[..., AppTest]
APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def html_text(at: AppTest) -> str:
    return "\n".join(h.value for h in at.html)


def all_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [h.value for h in at.html] + [c.value for c in at.caption]
    parts += [e.value for e in at.error] + [w.value for w in at.warning] + [i.value for i in at.info]
    parts += [s.value for s in at.success] + [t.value for t in at.title] + [s.value for s in at.subheader]
    return "\n".join(str(p) for p in parts)


def button(at: AppTest, label: str) -> Any:
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r} in {[b.label for b in at.button]}"
    return matches[0]


def save_health_check(at: AppTest) -> None:
    """Press the health check's one save button (it scores the observations and saves them)."""
    [submit] = [b for b in at.button if b.label == "Work out the NEWS2 score and save"]
    submit.click().run()


def go(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[Any]:
    return at.get("vega_lite_chart")


def test_wrong_password_shows_error(sign_in: SignIn, estate: DashWorld) -> None:
    at = sign_in(estate.users["care_staff"], "not the password")
    assert any("Sign-in failed" in e.value for e in at.error)
    assert "token" not in at.session_state


def test_care_home_grid_shows_number_word_colour_and_warnings(sign_in: SignIn, estate: DashWorld) -> None:
    at = sign_in(estate.users["care_staff"])
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == f"Oakview {estate.uid}"
    page = html_text(at)
    assert 'class="cw-banner"' in page  # the live banner comes first (tests/dashboard/test_banner_browser.py)
    grid = page[page.index('cw-grid cw-residents'):]  # the resident grid (incidents and tasks come before it)
    name = estate.names[estate.deteriorating]
    assert grid.index(name) < min(grid.index(estate.names[r]) for r in estate.residents[1:])  # most worrying first
    card = grid[grid.index(name): grid.index("</div></div>", grid.index(name))]
    assert "NEWS2 7 High" in card and "background:#B3261E" in card  # number + word + colour together
    assert "HIGH: act now" in card
    assert "1 open incident:" in card and "open alert" not in card  # one problem, however many rules (H-INC-01)
    assert "battery 12%: change or charge it today" in grid
    assert "no data for 5 h" in grid  # the silent device
    assert "Observations OVERDUE" in grid
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Incidents"]) >= 1 and "Observations due now" in metrics
    incident = page[page.index("cw-incidents"):page.index('class="cw-tasks')]
    assert incident.count(f"<h4>{name}</h4>") == 1 and 'data-kind="news2"' in incident  # one card, its parts
    assert metrics["Residents"] == str(len(estate.residents))
    # the residents of another home are never shown
    assert all(estate.names[r] not in grid for r in estate.residents_b)
    # filter: only people needing attention
    at.segmented_control(key="home-filter").set_value("Needs attention").run()
    assert name in html_text(at)


def test_record_health_check_with_prefill_then_advice(sign_in: SignIn, estate: DashWorld, database: str) -> None:
    at = sign_in(estate.users["care_staff"])
    button(at, "Record a health check").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Record a physical health check"
    rid = estate.deteriorating
    assert at.selectbox(key="check-resident").value == rid
    text = all_text(at)
    assert "From device" in text and f"device ox-{rid}" in text and "92 %" in text
    assert at.number_input(key=f"obs-spo2-{rid}").value == 92.0  # prefilled from the device
    assert at.number_input(key=f"obs-pulse-{rid}").value == 118.0
    at.number_input(key=f"obs-pulse-{rid}").set_value(121.0)  # the carer counted it herself: manual
    at.number_input(key=f"obs-respiration_rate-{rid}").set_value(26.0)
    at.number_input(key=f"obs-temperature-{rid}").set_value(39.2)
    at.number_input(key=f"obs-systolic_bp-{rid}").set_value(95.0)
    at.radio(key=f"obs-acvpu-{rid}").set_value("A")
    at.checkbox(key=f"obs-sign-breathless-{rid}").check()
    save_health_check(at)
    assert not at.exception, [e.value for e in at.exception]
    result = at.session_state["obs_result"]
    assert result["resident_id"] == rid and result["score"] >= 7 and result["label"] == "High"
    text = all_text(at)
    assert "NEWS2" in html_text(at) and f"NEWS2 {result['score']} High" in html_text(at)
    assert "What it means:" in text and "What to do now:" in text and "Call 999 now" in text
    assert "Stay with the resident" in text
    with psycopg.connect(database) as conn:
        inputs, signs = conn.execute(
            "SELECT inputs, soft_signs FROM observation_sets WHERE resident_id = %s ORDER BY obs_id DESC LIMIT 1",
            (rid,)).fetchone()
    assert inputs["spo2"]["source"] == "device" and inputs["spo2"]["device_id"] == f"ox-{rid}"
    assert inputs["pulse"]["source"] == "manual"  # changed from the device value
    assert signs == ["breathless"]


def test_new_confusion_with_acvpu_a_asks_which_is_true_before_saving(sign_in: SignIn, estate: DashWorld,
                                                                     database: str) -> None:
    """H-OBS-12: the form asks, and saves nothing, when 'new confusion' is ticked with ACVPU A."""
    at = go(sign_in(estate.users["care_staff"]), "health_check")
    rid = estate.residents[4]
    at.selectbox(key="check-resident").set_value(rid).run()
    with psycopg.connect(database) as conn:
        before = conn.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s", (rid,)).fetchone()[0]
    at.number_input(key=f"obs-pulse-{rid}").set_value(80.0)
    at.radio(key=f"obs-acvpu-{rid}").set_value("A")
    at.checkbox(key=f"obs-sign-new_confusion-{rid}").check()
    save_health_check(at)
    assert not at.exception, [e.value for e in at.exception]
    assert any("Which is true?" in w.value for w in at.warning)
    with psycopg.connect(database) as conn:
        after = conn.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s", (rid,)).fetchone()[0]
    assert after == before
    at.radio(key=f"obs-acvpu-{rid}").set_value("C")
    save_health_check(at)
    assert at.session_state["obs_result"]["resident_id"] == rid


def test_empty_health_check_is_refused_in_plain_words(sign_in: SignIn, estate: DashWorld) -> None:
    at = go(sign_in(estate.users["care_staff"]), "health_check")
    at.selectbox(key="check-resident").set_value(estate.residents[3]).run()
    rid = estate.residents[3]
    save_health_check(at)
    assert any("Nothing to save" in e.value for e in at.error)
    assert "obs_result" not in at.session_state or at.session_state["obs_result"]["resident_id"] != rid


def test_acknowledge_incident_recording_what_was_done(sign_in: SignIn, estate: DashWorld, database: str) -> None:
    """One card per person (H-INC-01): acknowledging it acknowledges its parts; the decision is recorded on it."""
    at = go(sign_in(estate.users["care_staff"]), "alerts")
    assert at.title[0].value == "Incidents"
    assert estate.names[estate.deteriorating] in html_text(at)
    assert "HIGH: act now" in html_text(at)
    with psycopg.connect(database) as conn:
        iid = conn.execute("SELECT incident_id FROM alerts WHERE alert_id = %s", (estate.alert_id,)).fetchone()[0]
    assert iid is not None
    at.text_area(key=f"ack-inc-note-{iid}").input("Sat with her, called 111, obs every 30 min")
    at.button(key=f"ack-inc-btn-{iid}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    with psycopg.connect(database) as conn:
        status, by = conn.execute("SELECT status, acknowledged_by FROM incidents WHERE incident_id = %s",
                                  (iid,)).fetchone()
        comment = conn.execute("SELECT comment FROM incident_events WHERE incident_id = %s "
                               "AND action = 'acknowledged'", (iid,)).fetchone()[0]
        parts = conn.execute("SELECT count(*), count(acknowledged_at) FROM alerts WHERE incident_id = %s "
                             "AND status <> 'resolved'", (iid,)).fetchone()
    assert (status, by) == ("acknowledged", estate.users["care_staff"])
    assert comment == "Sat with her, called 111, obs every 30 min"
    assert parts[0] >= 2 and parts[0] == parts[1]  # every part acknowledged with it
    assert f"ack-inc-btn-{iid}" not in {b.key for b in at.button}  # acknowledged: the button has gone
    # then record the 111 call on the same page
    at.selectbox(key=f"inc-outcome-{iid}").set_value("nhs_111")
    at.text_input(key=f"inc-outcome-note-{iid}").input("111: GP to visit today")
    at.button(key=f"inc-outcome-btn-{iid}").click().run()
    with psycopg.connect(database) as conn:
        outcome = conn.execute("SELECT outcome FROM incidents WHERE incident_id = %s", (iid,)).fetchone()[0]
    assert outcome == "nhs_111"


def test_sbard_ready_to_read_out(sign_in: SignIn, estate: DashWorld) -> None:
    at = sign_in(estate.users["care_staff"])
    button(at, "SBARD summary").click().run()
    assert not at.exception, [e.value for e in at.exception]
    text = all_text(at)
    for heading in ("S: Situation", "B: Background", "A: Assessment", "R: Recommendation", "D: Decision"):
        assert heading in text
    assert estate.names[estate.deteriorating] in html_text(at)
    assert at.code and "SITUATION" in at.code[0].value  # the plain text to copy


def test_gp_inbox_one_click_to_resident_and_response(sign_in: SignIn, estate: DashWorld, database: str) -> None:
    at = sign_in(estate.users["gp"])
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Incident inbox"
    inbox = html_text(at)
    assert estate.names[estate.deteriorating] in inbox and f"Oakview {estate.uid}" in inbox
    # one row per patient's problem (H-INC-01): the deteriorating resident's alerts are one incident with its parts
    with psycopg.connect(database) as conn:
        iid, parts = conn.execute("SELECT incident_id, (SELECT count(*) FROM alerts a WHERE a.incident_id = "
                                  "i.incident_id AND a.status <> 'resolved') FROM incidents i WHERE subject_id = %s "
                                  "AND status <> 'resolved'", (estate.deteriorating,)).fetchone()
    assert inbox.count(f'data-incident="{iid}"') == 1 and f"{parts} parts:" in inbox and parts >= 2
    assert inbox.count(estate.names[estate.deteriorating]) == 1
    button(at, "Open").click().run()  # the most severe incident is first
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Resident charts and history"
    assert at.session_state["resident_id"] == estate.deteriorating
    assert len(charts(at)) == 5  # SpO2, pulse, breathing rate, blood pressure, temperature
    spec = charts(at)[0].proto.spec
    assert '"NEWS2 points here"' in spec and "#FFCDD2" in spec  # band shading with its legend
    assert "\"rule\"" in spec and "\"Baseline\"" in spec  # the resident's own baseline
    text = all_text(at)
    assert "Usual oxygen level (SpO2)" in text and "not eating or drinking" in text  # baseline + soft signs
    assert at.dataframe and len(at.dataframe[0].value) >= 3  # observations table
    form_radio = next(r for r in at.radio if r.label == "Response")
    form_radio.set_value("visit_booked")
    [note] = [t for t in at.text_area if t.label.startswith("Advice or plan")]
    note.input("Visiting at 2pm; push fluids, repeat obs hourly")
    button(at, "Save the response").click().run()
    assert not at.exception, [e.value for e in at.exception]
    with psycopg.connect(database) as conn:
        row = conn.execute("""SELECT e.actor, e.outcome, e.comment, a.status FROM alert_events e
                              JOIN alerts a USING (alert_id)
                              WHERE alert_id = %s AND e.action = 'escalated'""", (estate.alert_id,)).fetchone()
    assert row == (estate.users["gp"], "visit_booked", "Visiting at 2pm; push fluids, repeat obs hourly", "escalated")


def test_gp_sees_only_gp_pages(sign_in: SignIn, estate: DashWorld) -> None:
    at = sign_in(estate.users["gp"])
    for page in ("home", "estate", "rightsizing"):
        try:
            at.switch_page(f"pages/{page}.py")
        except ValueError:
            continue
        raise AssertionError(f"a GP can open {page}")


def test_council_rightsizing_summary_calculator_and_exports(sign_in: SignIn, estate: DashWorld) -> None:
    at = sign_in(estate.users["council"])
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Care package review"
    text = all_text(at)
    assert "In the last 28 nights, 25 had no activity between 00:00 and 06:00 other than at most one bathroom " \
           "visit. 3 nights were busy." in text
    assert "waking-night care" in text and "£24.50 an hour: **£1,715.00 a week**" in text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Settled nights"] == "25" and metrics["Busy nights"] == "3"
    assert len(charts(at)) >= 5  # nights, heatmap, bathroom, time out, kitchen, temperature
    assert any('"Hour of the day (UK time)"' in c.proto.spec for c in charts(at))
    assert any("Releasing 70 hours a week at £24.50 an hour frees £1,715 a week" in s.value for s in at.success)
    at.number_input(key=f"calc-hours-{estate.households[0]}").set_value(35.0).run()
    benefit = next(s.value for s in at.success if s.value.startswith("Releasing"))
    assert benefit.startswith("Releasing 35 hours a week at £24.50 an hour frees £857.50 a week (£44,590 a year)")
    assert "for 2 people" in benefit  # the council's two households on waking-night care
    labels = [d.label for d in at.get("download_button")]
    assert labels == ["Download the evidence (CSV)", "Download the report (PDF)"]
    at.select_slider(key="review-days").set_value(14).run()
    assert "In the last 14 nights" in all_text(at)


def test_manager_estate_pages(sign_in: SignIn, estate: DashWorld) -> None:
    at = go(sign_in(estate.users["manager"]), "estate")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Battery below 20%"] == "1" and metrics["Silent (no data for 1 h)"] == "1"
    devices, gateways, dead = (df.value for df in at.dataframe)
    assert set(devices["Status"]) == {"SILENT", "active"} and "12% LOW" in set(devices["Battery"])
    gw = gateways.iloc[0]
    assert (gw["Gateway"], gw["Status"], gw["Readings waiting (outbox)"]) == (estate.gateway, "online", 42)
    assert "outside 40-100" in dead.iloc[0]["Why"]


def test_manager_adoption_page(sign_in: SignIn, estate: DashWorld) -> None:
    at = go(sign_in(estate.users["manager"]), "adoption")
    table = at.dataframe[0].value
    assert list(table["Home"]) == [f"Oakview {estate.uid}"]  # only the manager's own home
    assert table.iloc[0]["Residents"] == len(estate.residents)
    assert table.iloc[0]["Staff observations per resident a day"] > 0
    assert charts(at)


def test_admin_chooses_a_home(sign_in: SignIn, estate: DashWorld) -> None:
    at = sign_in(estate.users["admin"])
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="pick-site").set_value(estate.home_b).run()
    assert at.title[0].value == f"Elm Lodge {estate.uid}"
    assert estate.names[estate.residents_b[0]] in html_text(at)


def test_sign_out_returns_to_sign_in(sign_in: SignIn, estate: DashWorld) -> None:
    at = sign_in(estate.users["care_staff"])
    at.button(key="sign-out").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not {"token", "refresh_token", "me"} & set(at.session_state)
    fresh = AppTest.from_file(str(APP), default_timeout=60).run()  # what a reload shows
    assert fresh.text_input(key="username") and fresh.text_input(key="password")


def test_formatting_helpers() -> None:
    from datetime import UTC, datetime, timedelta

    assert local_time("2024-05-01T14:30:00+00:00") == "15:30"  # staff read UK local time (BST here)
    assert local_time("2024-01-01T14:30:00+00:00") == "14:30" and local_time(None) == "-"
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert ago(now - timedelta(minutes=5), now) == "5 min ago" and ago(None, now) == "never"
    calm = {"display_name": "A", "news2": {"score": 0}, "worst_severity": None, "obs_overdue": False}
    ill = {"display_name": "B", "news2": {"score": 6}, "worst_severity": "medium", "obs_overdue": False}
    assert sorted([calm, ill], key=urgency)[0] is ill


def test_result_says_when_alerts_were_not_evaluated_and_keeps_incomplete_wording(sign_in: SignIn,
                                                                                 estate: DashWorld) -> None:
    """H-DASH-04: the page shows the API's result as given, and warns when the alerting stage failed."""
    from carewatch.scoring.clinical_response import Risk, clinical_response

    at = go(sign_in(estate.users["care_staff"]), "health_check")
    rid = at.selectbox(key="check-resident").value
    response = clinical_response(Risk.LOW, 1, ["respiration_rate", "consciousness"])
    at.session_state["obs_result"] = {
        "resident_id": rid, "score": 1, "label": response.label, "colour": response.colour,
        "meaning": response.meaning, "action": response.action, "min_interval_minutes": 60,
        "continuous_monitoring": False, "soft_signs": [], "open_alerts": [], "alerts_evaluated": False}
    at.run()
    assert any("Alerts could not be checked" in e.value for e in at.error)
    text = all_text(at)
    assert "INCOMPLETE SCORE: breathing rate, alertness (ACVPU) not measured" in text
    assert "Take the observations again within 60 minutes." in text


def test_incident_card_says_who_escalated() -> None:
    """H-ESC-05 on the card: the ladder's own steps and a person's call outside the home read differently."""
    from carewatch.dashboard import ui

    base = {"incident_id": 7, "subject_id": "r1", "resident_name": "Mrs A", "severity": "high", "band": "high",
            "headline": "NEWS2 8", "action": "Call 999", "opened_at": "2026-03-01T03:00:00+00:00", "components": [],
            "acknowledged_by": None, "escalated_by": None, "outcome": None, "notify_level": 2}
    auto = ui.incident_card({**base, "status": "auto_escalated"})
    assert "AUTO-ESCALATED: nobody answered in time; level 2 of the escalation policy told" in auto
    assert 'data-status="auto_escalated"' in auto and "ESCALATED by" not in auto
    person = ui.incident_card({**base, "status": "escalated", "escalated_by": "senior1", "outcome": "called_999"})
    assert "ESCALATED by senior1 (called 999)" in person and "AUTO-ESCALATED" not in person


def test_a_subject_without_a_resident_name_is_labelled_with_its_kind() -> None:
    """Issue 13: ids are unique per kind only, so the inbox and alert cards say which kind an unnamed subject is."""
    from carewatch.dashboard import ui

    assert ui.subject_words({"resident_name": "Mrs A", "subject_kind": "resident", "subject_id": "r-1"}) == "Mrs A"
    assert ui.subject_words({"resident_name": None, "subject_kind": "household", "subject_id": "r-1"}) == \
        "household r-1"
    assert ui.subject_words({"subject_kind": "gateway", "subject_id": "gw-1"}) == "hub gw-1"
    assert ui.subject_words({"subject_kind": "site", "subject_id": "oak"}) == "care home oak"
    card = ui.incident_card({"incident_id": 7, "subject_kind": "household", "subject_id": "r-1", "resident_name": None,
                             "severity": "medium", "band": None, "headline": "Long lie", "action": "Visit",
                             "opened_at": "2026-03-01T03:00:00+00:00", "components": [], "status": "open",
                             "acknowledged_by": None, "escalated_by": None, "outcome": None, "notify_level": 0})
    assert "<h4>household r-1</h4>" in card
