"""Care-home alerts: what happened and what to do, then acknowledge it saying what was done, record an escalation
(GP, NHS 111, 999) with its outcome, or close it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from carewatch.dashboard import ui
from carewatch.dashboard.client import ApiClient, ApiError, ago, local_time
from carewatch.scoring.kinds import ESCALATION_OUTCOMES

OUTCOME_WORDS = {"gp_called": "GP called", "nhs_111": "NHS 111 called", "called_999": "999 called",
            "visit_booked": "Visit booked", "advice_given": "Advice given", "admitted": "Admitted to hospital",
            "other": "Other (say what in the note)"}
#: The outcomes the alert lifecycle accepts (one definition), in the order above; any new one is offered too.
OUTCOMES = [o for o in OUTCOME_WORDS if o in ESCALATION_OUTCOMES] + sorted(ESCALATION_OUTCOMES - OUTCOME_WORDS.keys())


def act(label: str, call: Any) -> None:
    try:
        call()
    except ApiError as exc:
        st.error(f"{label} failed: {exc}")
        return
    st.toast(f"{label}: saved")
    st.rerun()


def alert_block(c: ApiClient, a: dict[str, Any], now: datetime) -> None:
    who = a.get("resident_name") or a["subject_id"]
    with st.container(border=True):
        st.html(f"<div>{ui.severity_badge(a['severity'])} <b>{ui.esc(who)}</b>: {ui.kind_words(a['kind'])} "
                f"(status: {a['status']}, opened {local_time(a['opened_at'], '%d %b %H:%M')}, "
                f"{ago(a['opened_at'], now)})</div>")
        st.markdown(f"{a['reason']}  \n**What to do:** {a['action']}")
        if a.get("acknowledged_by"):
            st.caption(f"Acknowledged by {a['acknowledged_by']} at {local_time(a['acknowledged_at'])}")
        aid = a["alert_id"]
        if a["status"] == "open":
            with st.form(f"ack-{aid}"):
                done = st.text_area("What have you done? (optional)", key=f"ack-note-{aid}", max_chars=2000)
                if st.form_submit_button("Acknowledge", type="primary", width="stretch", key=f"ack-btn-{aid}"):
                    act("Acknowledge", lambda: c.acknowledge(aid, done.strip() or None))
        with st.expander("Record a call, or close this alert"):
            with st.form(f"escalate-{aid}"):
                outcome = st.selectbox("Who did you call, and what happened?", OUTCOMES,
                                       format_func=lambda o: OUTCOME_WORDS.get(o, o.replace("_", " ")),
                                       key=f"esc-outcome-{aid}")
                note = st.text_input("Note", key=f"esc-note-{aid}", max_chars=2000)
                if st.form_submit_button("Record the call", width="stretch", key=f"esc-btn-{aid}"):
                    act("Escalation", lambda: c.escalate(aid, outcome, note.strip() or None))
            with st.form(f"resolve-{aid}"):
                resolution = st.text_input("How did it end? (e.g. 'GP visited, antibiotics started')",
                                           key=f"res-text-{aid}", max_chars=1000)
                if st.form_submit_button("Close the alert", width="stretch", key=f"res-btn-{aid}"):
                    act("Close", lambda: c.resolve(aid, resolution))


st.title("Alerts")
c = ui.client()
with ui.api_errors():
    site = ui.care_home_site(c)
    if site is None:
        st.stop()
    alerts = c.alerts(site=site)
now = datetime.now(UTC)
ui.note_if_cut(alerts, "alerts", "Deal with the most urgent first; the rest appear as these are closed.")
st.caption("Most urgent first. Acknowledge to show someone is dealing with it (this stops automatic escalation).")
if not alerts:
    st.success("No open alerts.")
for alert in alerts:
    alert_block(c, alert, now)
