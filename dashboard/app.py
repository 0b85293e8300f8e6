"""Carewatch dashboard: sign in, then the pages for your role. Talks only to the API, as the signed-in person.

Run with ``carewatch dashboard`` (or ``streamlit run dashboard/app.py``); the API's address comes from
``settings.api_base_url`` (``CAREWATCH_API_URL``). The pages live in ``pages/`` and are chosen by role:

* care staff (tablet): residents grid, record a health check, alerts, SBARD summary, resident charts;
* managers: the same plus devices and gateways, and adoption;
* GPs: the incident inbox (one row per patient problem), resident charts and history (with the response form), SBARD;
* council care teams: the care-package review (rightsizing);
* admins: everything.
"""

from __future__ import annotations

import streamlit as st

from carewatch.dashboard import ui
from carewatch.dashboard.client import ApiError

#: page file (under pages/) -> (title, icon)
PAGES = {
    "home": ("Residents", ":material/grid_view:"),
    "health_check": ("Record a health check", ":material/monitor_heart:"),
    "alerts": ("Incidents", ":material/notifications:"),
    "inbox": ("Incident inbox", ":material/inbox:"),
    "resident": ("Resident charts and history", ":material/show_chart:"),
    "sbard": ("SBARD summary", ":material/record_voice_over:"),
    "rightsizing": ("Care package review", ":material/home:"),
    "estate": ("Devices and gateways", ":material/router:"),
    "adoption": ("Adoption", ":material/trending_up:"),
    "escalation": ("Escalation", ":material/campaign:"),
}
ROLE_PAGES = {
    "care_staff": ("home", "health_check", "alerts", "sbard", "resident", "escalation"),
    "manager": ("home", "health_check", "alerts", "sbard", "resident", "estate", "adoption", "escalation"),
    "gp": ("inbox", "resident", "sbard"),
    "nurse": ("home", "health_check", "alerts", "sbard", "resident"),
    "council": ("rightsizing",),
    "admin": ("home", "inbox", "resident", "sbard", "alerts", "health_check", "estate", "adoption", "rightsizing",
              "escalation"),
}


def sign_in() -> None:
    st.title("Carewatch")
    st.write("Sign in with your Carewatch account.")
    with st.form("login"):
        username = st.text_input("Username", key="username")
        password = st.text_input("Password", type="password", key="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        client = ui.client()
        try:
            client.login(username, password)
            st.session_state["token"] = client.token
            st.session_state["refresh_token"] = client.refresh_token
            st.session_state["me"] = client.me()
        except ApiError as exc:
            ui.sign_out()
            st.error(f"Sign-in failed: {exc}")
            return
        st.rerun()


#: Roles that may use a home's kits, and so train on its practice resident (api/scope.py USE_KIT).
PRACTICE_ROLES = ("care_staff", "manager", "nurse")


def main() -> None:
    st.set_page_config(page_title="Carewatch", page_icon=":material/favorite:", layout="wide",
                       initial_sidebar_state="expanded")
    ui.style()
    if "token" not in st.session_state or "me" not in st.session_state:
        st.navigation([st.Page(sign_in, title="Sign in", default=True)], position="hidden").run()
        return
    me = ui.me()
    names = ROLE_PAGES.get(me["role"], ())
    pages = [st.Page(f"pages/{name}.py", title=PAGES[name][0], icon=PAGES[name][1], default=i == 0)
             for i, name in enumerate(names)]
    with st.sidebar:
        st.write(f"Signed in as **{me['full_name']}** ({me['role'].replace('_', ' ')})")
        st.button("Sign out", key="sign-out", on_click=ui.sign_out)
        if me["role"] in PRACTICE_ROLES and me.get("site_id"):
            st.toggle("Practice mode (training)", key="practice_mode",
                      help="The home's practice resident, measured with the practice kit: nothing is real.")
    if st.session_state.get("practice_mode"):
        with ui.api_errors():
            ui.client().practice_home(me["site_id"])  # made the first time
        ui.practice_badge()
    if me["role"] in ("care_staff", "manager") and me.get("site_id"):
        ui.live_banner(me["site_id"])  # on every page of the home's tablets
    st.navigation(pages).run()


main()
