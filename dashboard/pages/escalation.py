"""Who is told when an incident waits: the home's escalation policy (levels, contacts, windows, gaps) and the
delivery log (every attempt: channel, recipient, time, result). Managers (and admins) change the policy here, in
the form under it (``PUT /sites/{site_id}/escalation-policy``; the API checks it and audits every change)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from carewatch.dashboard import ui
from carewatch.dashboard.client import ApiError, local_time

#: Roles that may change a home's policy (the API enforces it: Permission.SET_ESCALATION_POLICY).
EDITORS = frozenset({"manager", "admin"})
CHANNELS = ("dashboard", "email", "sms", "webhook")


def contacts_text(contacts: list[dict[str, Any]]) -> str:
    """One contact a line: ``channel: recipient, name`` (the name is optional)."""
    return "\n".join(f"{ct['channel']}: {ct['recipient']}" + (f", {ct['name']}" if ct.get("name") else "")
                     for ct in contacts)


def parse_contacts(text: str, level: int) -> list[dict[str, Any]]:
    """The lines of the contacts box back into contacts; a line that does not read is named (ValueError)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        channel, sep, rest = line.partition(":")
        channel = channel.strip().lower()
        if not sep or channel not in CHANNELS:
            raise ValueError(f"level {level}, line {n}: start with one of {', '.join(CHANNELS)} and a colon, "
                             f"e.g. 'sms: 07700 900123, Senior on shift'")
        recipient, _, name = rest.strip().partition(", ")
        out.append({"channel": channel, "recipient": recipient.strip(), **({"name": name.strip()}
                                                                          if name.strip() else {})})
    return out


def policy_form(c: Any, site: str, policy: dict[str, Any]) -> None:
    """The manager's editor: each level's name, contacts and windows, and the outcome windows."""
    with st.form("policy-form"):
        st.markdown("One contact a line: `channel: recipient, name`. Channels: `dashboard: tablets` (level 1 "
                    "always), `email: senior@home.example`, `sms: 07700 900123`, `webhook: https://...`.")
        levels = []
        for level in policy["levels"]:
            n = level["level"]
            st.markdown(f"**Level {n}**")
            name = st.text_input("Name", value=level["name"], key=f"pol-name-{n}", max_chars=100)
            who = st.text_area("Contacts", value=contacts_text(level["contacts"]), key=f"pol-contacts-{n}")
            left, right = st.columns(2)
            high = left.number_input("Minutes to acknowledge, high", 1, 1440, level["window_minutes"]["high"],
                                     key=f"pol-high-{n}")
            medium = right.number_input("Minutes to acknowledge, medium", 1, 1440,
                                        level["window_minutes"]["medium"], key=f"pol-medium-{n}")
            levels.append((n, name, who, high, medium))
        left, right = st.columns(2)
        out_high = left.number_input("Outcome needed within (min), high", 1, 1440,
                                     policy["outcome_minutes"]["high"], key="pol-outcome-high")
        out_medium = right.number_input("Outcome needed within (min), medium", 1, 1440,
                                        policy["outcome_minutes"]["medium"], key="pol-outcome-medium")
        if not st.form_submit_button("Save the policy", type="primary", width="stretch", key="pol-save"):
            return
    try:
        body = {"levels": [{"level": n, "name": name.strip(), "contacts": parse_contacts(who, n),
                            "window_minutes": {"high": int(high), "medium": int(medium)}}
                           for n, name, who, high, medium in levels],
                "outcome_minutes": {"high": int(out_high), "medium": int(out_medium)}}
    except ValueError as exc:
        st.error(str(exc))
        return
    try:
        c.set_escalation_policy(site, body)
    except ApiError as exc:
        st.error(f"The policy was not saved: {exc}")
        return
    st.toast("Escalation policy saved")
    st.rerun()

RESULT_WORDS = {"delivered": "Delivered", "failed": "FAILED", "timeout": "NO ANSWER (timed out)",
                "no_recipient": "NOBODY ON THE ROTA", "pending": "Sending"}
WHY_WORDS = {"unacknowledged": "not acknowledged", "no_outcome": "no outcome recorded",
             "estate": "scoring stalled (estate admins)"}

st.title("Escalation")
c = ui.client()
with ui.api_errors():
    site = ui.care_home_site_or_stop(c)
    policy = c.escalation_policy(site)
    log = c.site_deliveries(site)
if policy["is_default"]:
    st.warning("No escalation policy has been set for this home: only the tablets are told. A manager sets who "
               "else is told (the senior on shift, the manager on call).")
for gap in policy["gaps"]:
    st.warning(f"Gap: {gap}. An incident that reaches this level goes straight on to the next.")
for level in policy["policy"]["levels"]:
    windows = level["window_minutes"]
    who = ", ".join(f"{ct.get('name') or ct['channel']} ({ct['channel']}: {ct['recipient']})"
                    for ct in level["contacts"]) or "nobody"
    st.markdown(f"**Level {level['level']}: {level['name']}**: {who}. Told next level after "
                f"{windows['high']} min (high) or {windows['medium']} min (medium) without acknowledgement.")
outcome = policy["policy"]["outcome_minutes"]
st.caption(f"After acknowledging a NEWS2 incident, record what was done within {outcome['high']} min (high) or "
           f"{outcome['medium']} min (medium), or the senior on shift is told.")
if policy.get("updated_by"):
    st.caption(f"Set by {policy['updated_by']} on {local_time(policy['updated_at'], '%d %b %H:%M')}.")
if ui.me()["role"] in EDITORS:
    with st.expander("Change who is told", expanded=policy["is_default"]):
        policy_form(c, site, policy["policy"])
st.subheader("Delivery log")
if not log:
    st.info("Nothing has been sent yet.")
else:
    st.dataframe([{"Time": local_time(d["attempted_at"] or d["created_at"], "%d %b %H:%M:%S"),
                   "For": f"{d['target_kind']} {d['target_id']}", "Level": d["level"],
                   "Why": WHY_WORDS.get(d["reason"], d["reason"]),
                   "Channel": d["channel"], "To": d["recipient"], "Result": RESULT_WORDS.get(d["result"], d["result"]),
                   "Detail": d["detail"] or ""} for d in log], hide_index=True, width="stretch")
