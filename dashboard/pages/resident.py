"""One resident: vital-sign charts over the NEWS2 bands with their own baseline, observations and soft signs,
alert history, and the GP's response (advice, visit, admission) recorded on the alert."""

from __future__ import annotations

import html
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from carewatch.alerts import SOFT_SIGN_NAMES
from carewatch.dashboard import charts, ui
from carewatch.dashboard.client import ApiClient, ApiError, local_time
from carewatch.news2_chart import METRIC_OF

PERIODS = {"24 hours": timedelta(hours=24), "3 days": timedelta(days=3), "7 days": timedelta(days=7),
           "14 days": timedelta(days=14)}
VITALS = (("spo2", "Oxygen level (SpO2)"), ("pulse", "Pulse"), ("respiration_rate", "Breathing rate"),
          ("systolic_bp", "Blood pressure (systolic)"), ("temperature", "Temperature"))
RESPONSES = {"advice_given": "Advice given", "visit_booked": "Visit booked", "admitted": "Admission arranged"}


def choose_resident(c: ApiClient) -> str | None:
    """Alphabetical (the person is usually already chosen on the previous page); staff see their own home."""
    people = c.residents(site=ui.me().get("site_id"))
    ui.note_if_cut(people, "residents")
    names = {r["resident_id"]: r["display_name"] for r in people}
    return ui.choose("Resident", list(names), lambda r: names[r], "resident_id", "resident-pick")


def age(dob: str) -> int:
    born, today = date.fromisoformat(dob), date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def response_form(c: ApiClient, open_alerts: list[dict[str, Any]]) -> None:
    st.subheader("Record the response" if ui.me()["role"] != "gp" else "Record your response")
    if not open_alerts:
        st.info("No open alerts for this resident: nothing to respond to.")
        return
    ids = [a["alert_id"] for a in open_alerts]
    by_id = {a["alert_id"]: a for a in open_alerts}
    chosen = st.session_state.get("alert_id")
    with st.form("gp-response"):
        alert_id = st.selectbox("Alert", ids, index=ids.index(chosen) if chosen in ids else 0,
                                format_func=lambda i: f"{ui.kind_words(by_id[i]['kind'])} "
                                                      f"({by_id[i]['severity']}): {by_id[i]['reason'][:80]}")
        outcome = st.radio("Response", list(RESPONSES), format_func=RESPONSES.__getitem__, horizontal=True)
        note = st.text_area("Advice or plan (read by the care home)", max_chars=2000)
        close = st.checkbox("This deals with the alert: close it")
        if st.form_submit_button("Save the response", type="primary", width="stretch"):
            incident_id = by_id[alert_id].get("incident_id")
            why = f"{RESPONSES[outcome]}" + (f": {note.strip()}" if note.strip() else "")
            try:  # on its incident when it has one: the incident's ladder stops, its parts follow (H-INC-01)
                if incident_id is not None:
                    c.escalate_incident(incident_id, outcome, note.strip() or None)
                    if close:
                        c.resolve_incident(incident_id, why)
                else:
                    c.escalate(alert_id, outcome, note.strip() or None)
                    if close:
                        c.resolve(alert_id, why)
            except ApiError as exc:
                st.error(f"Not saved: {exc}")
                return
            st.session_state.pop("alert_id", None)
            st.toast("Response saved")
            st.rerun()


st.title("Resident charts and history")
c = ui.client()
with ui.api_errors():
    rid = choose_resident(c)
    if rid is None:
        st.info("No residents to show.")
        st.stop()
    resident = c.resident(rid)
    status = c.monitoring(rid)

now = datetime.now(UTC)
header = (f"<div style='font-size:1.3rem'><b>{html.escape(resident['display_name'])}</b>, age "
          f"{age(resident['date_of_birth'])}" + (f", NHS number {resident['nhs_number']}" if resident['nhs_number']
                                                 else "") + f" &nbsp; {ui.news2_badge(status.get('news2'))}</div>")
st.html(header)
if resident["scale2"]:
    st.info(f"SpO2 Scale 2 (target 88-92%), set by {resident['scale2_set_by']}: {resident['scale2_reason']}")

period = st.segmented_control("Period", list(PERIODS), default="3 days", key="resident-period") or "3 days"
end = now
start = end - PERIODS[period]
with ui.api_errors(), ThreadPoolExecutor(max_workers=4) as pool:
    # independent reads in parallel (the token was checked by the calls above, on this thread)
    baselines_f = pool.submit(c.baselines, rid)
    observations_f = pool.submit(c.observations, rid, start)
    timelines_f = {p: pool.submit(c.readings, rid, METRIC_OF[p].value, start, end) for p, _ in VITALS}
    alerts_f = pool.submit(c.alerts, None, rid, ("open", "acknowledged", "escalated", "resolved"))
    baselines = {b["parameter"]: b for b in baselines_f.result()["baselines"]}
    observations = observations_f.result()
    timelines = {p: f.result() for p, f in timelines_f.items()}
    alerts = alerts_f.result()

st.html(charts.band_key())
for param, title in VITALS:
    tl = timelines[param]
    base = baselines.get(param)
    unit = base["display_unit"] if base else tl["unit"]
    chart = charts.vitals_chart(param, title, unit, tl["points"], observations, base, start, end,
                                scale2=resident["scale2"])
    st.markdown(f"**{title}** ({unit})")
    st.altair_chart(chart, width="stretch")
    if base:
        st.caption(base["meaning"])

st.subheader("Observations")
ui.note_if_cut(observations, "observations (newest first)", "Choose a shorter period to see them all.")
if observations:
    table = pd.DataFrame([{
        "Taken": local_time(o["taken_at"], "%d %b %H:%M"), "By": o["recorded_by"], "Source": o["source"],
        "Breathing": o["respiration_rate"], "SpO2": o["spo2"], "Oxygen": "yes" if o["on_oxygen"] else "no",
        "BP": o["systolic_bp"], "Pulse": o["pulse"], "ACVPU": o["consciousness"], "Temp": o["temperature"],
        "NEWS2": f"{o['score']} {o['risk']}" + ("" if o["complete"] else " (incomplete)"),
        "Soft signs": ", ".join(SOFT_SIGN_NAMES.get(s, s) for s in o["soft_signs"]),
    } for o in observations])
    st.dataframe(table, hide_index=True, width="stretch")
else:
    st.info(f"No observations in the last {period}.")
signs = [o for o in observations if o["soft_signs"] or o.get("note")]
st.subheader("Soft signs and notes")
if not signs:
    st.write("None recorded in this period.")
for o in signs:
    words = ", ".join(SOFT_SIGN_NAMES.get(s, s) for s in o["soft_signs"]) or "no soft signs"
    st.markdown(f"- **{local_time(o['taken_at'], '%d %b %H:%M')}** ({o['recorded_by']}): {words}"
                + (f". Note: {o['note']}" if o.get("note") else ""))

st.subheader("Alert history")
ui.note_if_cut(alerts, "alerts")
if not alerts:
    st.write("No alerts.")
for a in alerts:
    done = f", closed: {a['resolution']}" if a.get("resolution") else ""
    st.html(f"<div>{ui.severity_badge(a['severity'])} {local_time(a['opened_at'], '%d %b %H:%M')}: "
            f"{html.escape(ui.kind_words(a['kind']))}, {html.escape(a['status'])}. {html.escape(a['reason'])}"
            f"{html.escape(done)}</div>")
if ui.me()["role"] != "council":
    response_form(c, [a for a in alerts if a["status"] != "resolved"])
