"""Care home: every resident as a card (NEWS2 number, word and colour; observations due; alerts; devices), most
worrying first, with big buttons to act on the chosen resident."""

from __future__ import annotations

import streamlit as st

from carewatch.dashboard import ui
from carewatch.dashboard.client import urgency

c = ui.client()
with ui.api_errors():
    site = ui.care_home_site_or_stop(c)
    overview = c.overview(site)
    incidents = c.incidents(site=site)
    tasks = c.tasks(site)

residents = sorted(overview["residents"], key=urgency)
st.title(overview["site"]["name"])
st.caption("Most worrying first. NEWS2 shows the score, the risk word and a colour.")

due_now = [t for t in tasks["tasks"] if t["status"] in ("overdue", "due")]
cols = st.columns(4)
cols[0].metric("Residents", len(residents))
cols[1].metric("Incidents", len(incidents))
cols[2].metric("Observations due now", len(due_now))
cols[3].metric("Device warnings", len(overview["device_warnings"]))

# Incidents (one per person, with what makes it up) and the observations due are kept apart: a due round is a
# task, not an alert (H-TASK-01).
left, right = st.columns([3, 2])
with left:
    st.subheader("Incidents")
    if incidents:
        st.html('<div class="cw-grid cw-incidents">' + "".join(ui.incident_card(i) for i in incidents) + "</div>")
        if st.button("Open the incidents page to act on them", width="stretch"):
            st.switch_page("pages/alerts.py")
    else:
        st.success("No open incidents.")
with right:
    st.subheader("Due now")
    st.caption(f"Observations due this {tasks['shift']} shift: who, by when and why.")
    if due_now:
        st.html('<ul class="cw-tasks">' + "".join(ui.task_line(t) for t in due_now) + "</ul>")
    else:
        st.info("No observations due right now.")
    later = [t for t in tasks["tasks"] if t["status"] == "upcoming"]
    if later:
        with st.expander(f"Later this shift ({len(later)})"):
            st.html('<ul class="cw-tasks-later">' + "".join(ui.task_line(t) for t in later) + "</ul>")

by_id = {r["resident_id"]: r for r in residents}
if residents:
    ui.choose("Choose a resident", list(by_id), lambda r: ui.resident_label(by_id[r]), "resident_id",
              "home-resident")
    b1, b2, b3 = st.columns(3)
    if b1.button("Record a health check", type="primary", width="stretch"):
        st.switch_page("pages/health_check.py")
    if b2.button("SBARD summary", width="stretch"):
        st.switch_page("pages/sbard.py")
    if b3.button("Charts and history", width="stretch"):
        st.switch_page("pages/resident.py")

show = st.segmented_control("Show", ["Everyone", "Needs attention"], default="Everyone", key="home-filter")
shown = [r for r in residents if show != "Needs attention" or r.get("open_incidents") or r["obs_overdue"]
         or r["device_warnings"] or ((r.get("news2") or {}).get("score") or 0) >= 1]
if not shown:
    st.info("No resident needs attention right now.")
else:
    st.html('<div class="cw-grid cw-residents">' + "".join(ui.resident_card(r) for r in shown) + "</div>")

room_warnings = [w for w in overview["device_warnings"] if w["resident_id"] is None]
if room_warnings:
    st.subheader("Room devices needing attention")
    for w in room_warnings:
        st.markdown(f"- **{w['kind']}** in {w['room'] or 'the home'} ({w['device_id']}): {w['problem']}")
