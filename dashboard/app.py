"""Carewatch dashboard (thin first version): sign in, then the view for your role. Talks only to the API.

Run with ``carewatch dashboard`` (or ``streamlit run dashboard/app.py``); the API's address comes from
``settings.api_base_url`` (``CAREWATCH_API_URL``).
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from carewatch.dashboard.client import ApiClient, ApiError, resident_rows

from carewatch.settings import get_settings


def api() -> ApiClient:
    base = st.session_state.get("api_url") or get_settings().api_base_url
    return ApiClient(base, token=st.session_state.get("token"))


def login_form() -> None:
    st.title("Carewatch")
    with st.form("login"):
        username = st.text_input("Username", key="username")
        password = st.text_input("Password", type="password", key="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        client = api()
        try:
            client.login(username, password)
            st.session_state["token"] = client.token
            st.session_state["me"] = client.me()
            st.rerun()
        except ApiError as exc:
            st.error(f"Sign-in failed: {exc}")


def alert_list(client: ApiClient, alerts: list[dict[str, Any]], heading: str) -> None:
    st.subheader(heading)
    if not alerts:
        st.info("No open alerts.")
        return
    for alert in alerts:
        who = alert.get("resident_name") or alert["subject_id"]
        st.markdown(f"**{alert['severity'].upper()}** · {who} · {alert['kind']} · {alert['status']}  \n"
                    f"{alert['reason']}  \n_What to do:_ {alert['action']}")
        if alert["status"] == "open" and st.button("Acknowledge", key=f"ack-{alert['alert_id']}"):
            try:
                client.acknowledge(alert["alert_id"])
                st.success(f"Alert {alert['alert_id']} acknowledged.")
                st.rerun()
            except ApiError as exc:
                st.error(str(exc))


def care_home_view(client: ApiClient, site_id: str) -> None:
    overview = client.overview(site_id)
    st.header(overview["site"]["name"])
    st.caption("NEWS2 shows the number, the risk word and a colour mark.")
    st.dataframe(resident_rows(overview), hide_index=True, use_container_width=True)
    if overview["device_warnings"]:
        st.subheader("Devices needing attention")
        for warning in overview["device_warnings"]:
            st.markdown(f"- {warning['device_id']} ({warning['room'] or warning['resident_id']}): {warning['problem']}")
    alert_list(client, client.alerts(site=site_id), "Alerts")


def gp_view(client: ApiClient) -> None:
    alert_list(client, client.alerts(), "Alert inbox (most urgent first)")


def council_view(client: ApiClient) -> None:
    households = client.sites(kind="household")
    if not households:
        st.info("No households.")
        return
    names = {h["name"]: h["site_id"] for h in households}
    chosen = st.selectbox("Household", list(names))
    report = client.behaviour(names[chosen])
    st.header(chosen)
    st.write(report["summary"])
    counts = report["night_counts"]
    cols = st.columns(4)
    for col, (key, label) in zip(cols, (("none", "Settled nights"), ("low", "Some activity"), ("high", "Busy nights"),
                                        ("no_data", "No data")), strict=True):
        col.metric(label, counts[key])
    package = report["care_package"]
    if package["description"]:
        st.write(f"Care package: {package['description']}, {package['hours_per_week']} h/week"
                 + (f", £{package['weekly_cost_gbp']:.2f}/week" if package["weekly_cost_gbp"] else ""))


def main() -> None:
    st.set_page_config(page_title="Carewatch", layout="wide")
    if "token" not in st.session_state:
        login_form()
        return
    me = st.session_state["me"]
    client = api()
    st.sidebar.write(f"Signed in as **{me['full_name']}** ({me['role']})")
    if st.sidebar.button("Sign out"):
        for key in ("token", "me"):
            st.session_state.pop(key, None)
        st.rerun()
    try:
        if me["role"] in ("care_staff", "manager"):
            care_home_view(client, me["site_id"])
        elif me["role"] == "gp":
            gp_view(client)
        elif me["role"] == "council":
            council_view(client)
        else:
            sites = client.sites()
            chosen = st.selectbox("Site", [s["site_id"] for s in sites if s["kind"] == "care_home"])
            if chosen:
                care_home_view(client, chosen)
    except ApiError as exc:
        if exc.status == 401:
            st.session_state.pop("token", None)
            st.warning("Your session has expired: sign in again.")
        else:
            st.error(str(exc))


main()
