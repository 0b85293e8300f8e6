"""Who is told when an alert waits: the home's escalation policy (levels, contacts, windows, gaps) and the
delivery log (every attempt: channel, recipient, time, result). Managers change the policy through the API
(``PUT /sites/{site_id}/escalation-policy``); every change is audited."""

from __future__ import annotations

import streamlit as st

from carewatch.dashboard import ui
from carewatch.dashboard.client import local_time

RESULT_WORDS = {"delivered": "Delivered", "failed": "FAILED", "timeout": "NO ANSWER (timed out)",
                "no_recipient": "NOBODY ON THE ROTA", "pending": "Sending"}
WHY_WORDS = {"unacknowledged": "not acknowledged", "no_outcome": "no outcome recorded",
             "estate": "scoring stalled (estate admins)"}

st.title("Escalation")
c = ui.client()
with ui.api_errors():
    site = ui.care_home_site(c)
    if site is None:
        st.stop()
    policy = c.escalation_policy(site)
    log = c.site_deliveries(site)
if policy["is_default"]:
    st.warning("No escalation policy has been set for this home: only the tablets are told. A manager sets who "
               "else is told (the senior on shift, the manager on call).")
for gap in policy["gaps"]:
    st.warning(f"Gap: {gap}. An alert that reaches this level goes straight on to the next.")
for level in policy["policy"]["levels"]:
    windows = level["window_minutes"]
    who = ", ".join(f"{ct.get('name') or ct['channel']} ({ct['channel']}: {ct['recipient']})"
                    for ct in level["contacts"]) or "nobody"
    st.markdown(f"**Level {level['level']}: {level['name']}**: {who}. Told next level after "
                f"{windows['high']} min (high) or {windows['medium']} min (medium) without acknowledgement.")
outcome = policy["policy"]["outcome_minutes"]
st.caption(f"After acknowledging a NEWS2 alert, record what was done within {outcome['high']} min (high) or "
           f"{outcome['medium']} min (medium), or the senior on shift is told.")
st.subheader("Delivery log")
if not log:
    st.info("Nothing has been sent yet.")
else:
    st.dataframe([{"Time": local_time(d["attempted_at"] or d["created_at"], "%d %b %H:%M:%S"),
                   "For": f"{d['target_kind']} {d['target_id']}", "Level": d["level"],
                   "Why": WHY_WORDS.get(d["reason"], d["reason"]),
                   "Channel": d["channel"], "To": d["recipient"], "Result": RESULT_WORDS.get(d["result"], d["result"]),
                   "Detail": d["detail"] or ""} for d in log], hide_index=True, width="stretch")
