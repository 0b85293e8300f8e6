"""GP incident inbox: one row per patient's problem (an incident, with the parts that make it up) in every home,
most severe first then newest, one click to the resident (H-INC-01: never one row per rule that fired)."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from carewatch.dashboard import ui
from carewatch.dashboard.client import UNRESOLVED_INCIDENTS, ago, local_time

PAGE = 25
SEVERITY_RANK = {"high": 3, "medium": 2, "low": 1, "info": 0}

st.title("Incident inbox")
c = ui.client()
cols = st.columns([2, 2, 1])
severities = cols[0].multiselect("Severity", ["high", "medium", "low", "info"], default=["high", "medium", "low"],
                                 format_func=lambda s: ui.SEVERITY_WORDS[s], key="inbox-severity")
statuses = cols[1].multiselect("Status", [*UNRESOLVED_INCIDENTS, "resolved"], default=list(UNRESOLVED_INCIDENTS),
                               key="inbox-status")
if not severities:
    st.info("Choose at least one severity to see incidents.")
    st.stop()
with ui.api_errors():
    found = c.incidents(statuses=tuple(statuses) or UNRESOLVED_INCIDENTS, severities=tuple(severities))
incidents = sorted(found,
                   key=lambda i: (-SEVERITY_RANK.get(i["severity"], 0), -datetime.fromisoformat(
                       str(i["opened_at"])).timestamp(), i["incident_id"]))
cols[2].metric("Shown", f"{len(incidents):,}+" if found.truncated else len(incidents))
ui.note_if_cut(found, "incidents", "Choose fewer statuses to see the rest.")
now = datetime.now(UTC)
limit = st.session_state.get("inbox-limit", PAGE)
if not incidents:
    st.success("No incidents match.")
for i in incidents[:limit]:
    with st.container(border=True):
        left, right = st.columns([5, 1], vertical_alignment="center")
        who, home = ui.esc(ui.subject_words(i)), ui.esc(i.get("site_name") or i["site_id"])
        parts = i.get("components") or []
        kinds = ", ".join(dict.fromkeys(ui.kind_words(p["kind"]) for p in parts))
        left.html(f'<div class="cw-inbox-incident" data-incident="{i["incident_id"]}">'
                  f"{ui.severity_badge(i['severity'])} <b>{who}</b>, {home}: {ui.esc(i['headline'])}. "
                  f"Opened {local_time(i['opened_at'], '%d %b %H:%M')} ({ago(i['opened_at'], now)}), "
                  f"{ui.esc(ui.incident_status_words(i))}.</div>"
                  + (f"<div style='margin-top:0.3rem'>{len(parts)} part{'s' if len(parts) != 1 else ''}: "
                     f"{ui.esc(kinds)}</div>" if parts else ""))
        if i.get("resident_id") and right.button("Open", key=f"open-{i['incident_id']}", type="primary",
                                                 width="stretch"):
            st.session_state["resident_id"] = i["resident_id"]
            if parts:  # its worst part: the one the response form answers first
                st.session_state["alert_id"] = parts[0]["alert_id"]
            st.switch_page("pages/resident.py")
if len(incidents) > limit and st.button(f"Show {min(PAGE, len(incidents) - limit)} more"):
    st.session_state["inbox-limit"] = limit + PAGE
    st.rerun()
