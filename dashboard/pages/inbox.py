"""GP alert inbox: alerts about your patients in every home, most severe first then newest, one click to the
resident."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from carewatch.dashboard import ui
from carewatch.dashboard.client import UNRESOLVED, ago, local_time

PAGE = 25

st.title("Alert inbox")
c = ui.client()
cols = st.columns([2, 2, 1])
severities = cols[0].multiselect("Severity", ["high", "medium", "low", "info"], default=["high", "medium", "low"],
                                 format_func=lambda s: ui.SEVERITY_WORDS[s], key="inbox-severity")
statuses = cols[1].multiselect("Status", [*UNRESOLVED, "resolved"], default=list(UNRESOLVED),
                               key="inbox-status")
if not severities:
    st.info("Choose at least one severity to see alerts.")
    st.stop()
with ui.api_errors():
    alerts = c.alerts(statuses=tuple(statuses) or UNRESOLVED, severities=tuple(severities))
cols[2].metric("Shown", f"{len(alerts):,}+" if alerts.truncated else len(alerts))
ui.note_if_cut(alerts, "alerts", "Choose fewer severities or statuses to see the rest.")
now = datetime.now(UTC)
limit = st.session_state.get("inbox-limit", PAGE)
if not alerts:
    st.success("No alerts match.")
for a in alerts[:limit]:
    with st.container(border=True):
        left, right = st.columns([5, 1], vertical_alignment="center")
        who, home = ui.esc(a.get("resident_name") or a["subject_id"]), ui.esc(a.get("site_name") or a["site_id"])
        left.html(f"<div>{ui.severity_badge(a['severity'])} <b>{who}</b>, {home}: "
                  f"{ui.kind_words(a['kind'])}. Opened {local_time(a['opened_at'], '%d %b %H:%M')} "
                  f"({ago(a['opened_at'], now)}), status {a['status']}.</div>"
                  f"<div style='margin-top:0.3rem'>{ui.esc(a['reason'])}</div>")
        if a.get("resident_id") and right.button("Open", key=f"open-{a['alert_id']}", type="primary",
                                                 width="stretch"):
            st.session_state["resident_id"] = a["resident_id"]
            st.session_state["alert_id"] = a["alert_id"]
            st.switch_page("pages/resident.py")
if len(alerts) > limit and st.button(f"Show {min(PAGE, len(alerts) - limit)} more"):
    st.session_state["inbox-limit"] = limit + PAGE
    st.rerun()
