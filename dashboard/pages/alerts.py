"""Care-home incidents: one per person (or device, or hub), with the parts that make it up and what to do; then
acknowledge it saying what was done, record what was decided (monitoring plan, GP, NHS 111, 999), or close it.
Alerts outside any incident (evidence for a care review) are listed after them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from carewatch.alerts import ESCALATION_OUTCOMES, FOLLOW_UP_OUTCOMES
from carewatch.dashboard import ui
from carewatch.dashboard.client import ApiClient, ApiError, ago, local_time

OUTCOME_WORDS = {"gp_called": "GP called", "nhs_111": "NHS 111 called", "called_999": "999 called",
            "visit_booked": "Visit booked", "advice_given": "Advice given", "admitted": "Admitted to hospital",
            "other": "Other (say what in the note)"}
#: The outcomes the alert lifecycle accepts (one definition), in the order above; any new one is offered too.
OUTCOMES = [o for o in OUTCOME_WORDS if o in ESCALATION_OUTCOMES] + sorted(ESCALATION_OUTCOMES - OUTCOME_WORDS.keys())
#: What may be recorded on an incident: a monitoring plan kept in the home, or any escalation outcome.
INCIDENT_OUTCOMES = ["monitoring_plan", *OUTCOMES]
INCIDENT_OUTCOME_WORDS = {"monitoring_plan": "Monitoring plan in the home (say what in the note)", **OUTCOME_WORDS}
FOLLOW_UP_WORDS = {"monitoring_plan": "Monitoring plan agreed", "gp_called": "GP called", "nhs_111": "NHS 111 called",
                   "called_999": "999 called", "admitted": "Admitted to hospital"}
#: What was done after acknowledging (one definition in kinds); a medium or high NEWS2 alert needs one.
FOLLOW_UPS = [o for o in FOLLOW_UP_WORDS if o in FOLLOW_UP_OUTCOMES] + sorted(
    FOLLOW_UP_OUTCOMES - FOLLOW_UP_WORDS.keys())
STATUS_WORDS = {"open": "open", "acknowledged": "acknowledged", "escalated": "escalated by staff",
                "auto_escalated": "escalated automatically (nobody answered in time)"}


def act(label: str, call: Any) -> None:
    try:
        call()
    except ApiError as exc:
        st.error(f"{label} failed: {exc}")
        return
    st.toast(f"{label}: saved")
    st.rerun()


def call_form(form: str, key: str, target: int, label: str, escalate: Any) -> None:
    """A person's call outside the home (GP, NHS 111, 999...) on an alert or an incident: status 'escalated'."""
    with st.form(form):
        outcome = st.selectbox("Who did you call, and what happened?", OUTCOMES,
                               format_func=lambda o: OUTCOME_WORDS.get(o, o.replace("_", " ")),
                               key=f"{key}-outcome-{target}")
        note = st.text_input("Note", key=f"{key}-note-{target}", max_chars=2000)
        if st.form_submit_button(label, width="stretch", key=f"{key}-btn-{target}"):
            act("Escalation", lambda: escalate(target, outcome, note.strip() or None))


def alert_block(c: ApiClient, a: dict[str, Any], now: datetime) -> None:
    who = ui.subject_words(a)
    with st.container(border=True):
        st.html(f"<div>{ui.severity_badge(a['severity'])} <b>{ui.esc(who)}</b>: {ui.kind_words(a['kind'])} "
                f"(status: {STATUS_WORDS.get(a['status'], a['status'])}, "
                f"opened {local_time(a['opened_at'], '%d %b %H:%M')}, "
                f"{ago(a['opened_at'], now)})</div>")
        st.markdown(f"{a['reason']}  \n**What to do:** {a['action']}")
        if a.get("acknowledged_by"):
            st.caption(f"Acknowledged by {a['acknowledged_by']} at {local_time(a['acknowledged_at'])}")
        if a.get("notify_level"):
            st.caption(f"Escalation policy: level {a['notify_level']} told"
                       f"{' (no outcome recorded in time)' if a.get('notify_reason') == 'no_outcome' else ''}")
        recovery = (a.get("data") or {}).get("recovery")
        if recovery:
            st.info(f"Recovered: {recovery.get('text')}. A high alert is closed by a person: check the resident, "
                    "then close it below saying how it ended.")
        if a.get("outcome"):
            st.caption(f"Outcome: {FOLLOW_UP_WORDS.get(a['outcome'], a['outcome'])} ({a.get('outcome_by')}, "
                       f"{local_time(a.get('outcome_at'))})")
        aid = a["alert_id"]
        if a.get("acknowledged_at") is None:
            with st.form(f"ack-{aid}"):
                done = st.text_area("What have you done? (optional)", key=f"ack-note-{aid}", max_chars=2000)
                if st.form_submit_button("Acknowledge", type="primary", width="stretch", key=f"ack-btn-{aid}"):
                    act("Acknowledge", lambda: c.acknowledge(aid, done.strip() or None))
        elif a["kind"] == "news2" and a["severity"] in ("medium", "high") and not a.get("outcome"):
            with st.form(f"outcome-{aid}"):
                st.markdown("**What was done?** Record it, or the senior on shift is told.")
                chosen = st.selectbox("Outcome", FOLLOW_UPS, format_func=lambda o: FOLLOW_UP_WORDS.get(o, o),
                                      key=f"outcome-choice-{aid}")
                note = st.text_input("Note (optional)", key=f"outcome-note-{aid}", max_chars=2000)
                if st.form_submit_button("Record the outcome", type="primary", width="stretch",
                                         key=f"outcome-btn-{aid}"):
                    act("Outcome", lambda: c.record_outcome(aid, chosen, note.strip() or None))
        with st.expander("Record a call, or close this alert"):
            call_form(f"escalate-{aid}", "esc", aid, "Record the call", c.escalate)
            with st.form(f"resolve-{aid}"):
                resolution = st.text_input("How did it end? (e.g. 'GP visited, antibiotics started')",
                                           key=f"res-text-{aid}", max_chars=1000)
                if st.form_submit_button("Close the alert", width="stretch", key=f"res-btn-{aid}"):
                    act("Close", lambda: c.resolve(aid, resolution))


def incident_block(c: ApiClient, i: dict[str, Any]) -> None:
    """One incident: the card (headline, severity, band, parts) and what staff can do with it."""
    iid = i["incident_id"]
    with st.container(border=True):
        st.html(ui.incident_card(i))
        if i.get("acknowledged_at") is None:
            with st.form(f"ack-inc-{iid}"):
                done = st.text_area("What have you done? (optional)", key=f"ack-inc-note-{iid}", max_chars=2000)
                if st.form_submit_button("Acknowledge", type="primary", width="stretch", key=f"ack-inc-btn-{iid}"):
                    act("Acknowledge", lambda: c.acknowledge_incident(iid, done.strip() or None))
        with st.expander("Record a call, what was decided, or close this incident"):
            call_form(f"escalate-inc-{iid}", "inc-esc", iid, "Record the call (escalated by me)", c.escalate_incident)
            with st.form(f"outcome-inc-{iid}"):
                outcome = st.selectbox("What was decided?", INCIDENT_OUTCOMES,
                                       format_func=lambda o: INCIDENT_OUTCOME_WORDS.get(o, o.replace("_", " ")),
                                       key=f"inc-outcome-{iid}")
                note = st.text_input("Note", key=f"inc-outcome-note-{iid}", max_chars=2000)
                if st.form_submit_button("Record the decision", width="stretch", key=f"inc-outcome-btn-{iid}"):
                    act("Decision", lambda: c.incident_outcome(iid, outcome, note.strip() or None))
            with st.form(f"resolve-inc-{iid}"):
                resolution = st.text_input("How did it end? (e.g. 'GP visited, antibiotics started')",
                                           key=f"inc-res-text-{iid}", max_chars=1000)
                if st.form_submit_button("Close the incident", width="stretch", key=f"inc-res-btn-{iid}"):
                    act("Close", lambda: c.resolve_incident(iid, resolution))


st.title("Incidents")
c = ui.client()
with ui.api_errors():
    site = ui.care_home_site_or_stop(c)
    incidents = c.incidents(site=site)
    alerts = c.alerts(site=site)
now = datetime.now(UTC)
ui.note_if_cut(incidents, "incidents", "Deal with the most urgent first; the rest appear as these are closed.")
st.caption("One card per person, most urgent first, with everything that makes it up. Acknowledge to show someone "
           "is dealing with it (this stops automatic escalation); a worse NEWS2 band asks again.")
if not incidents:
    st.success("No open incidents.")
for incident in incidents:
    incident_block(c, incident)
loose = [a for a in alerts if a.get("incident_id") is None]
if loose:
    st.subheader("Other alerts")
    for alert in loose:
        alert_block(c, alert, now)
