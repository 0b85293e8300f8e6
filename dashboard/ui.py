"""Streamlit helpers shared by the pages: the signed-in client, badges (colour + number + word), resident
choice that follows the person across pages, and the tablet-friendly style."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import streamlit as st

from carewatch import palette
from carewatch.alerts import AlertKind
from carewatch.dashboard.client import ApiClient, ApiError, Items
from carewatch.settings import get_settings

SESSION_KEYS = ("token", "refresh_token", "me", "resident_id", "alert_id", "obs_result", "site_id")

#: Touch targets over 44 px (buttons 3rem = 48 px, number and text boxes 2.8rem), readable type, badge/card styles.
CSS = f"""
<style>
.stButton button, .stDownloadButton button, .stFormSubmitButton button {{ min-height: 3rem; font-size: 1.05rem; }}
.stNumberInput input, .stTextInput input, .stTextArea textarea {{ font-size: 1.15rem; min-height: 2.8rem; }}
.stCheckbox label, .stRadio label {{ font-size: 1.05rem; min-height: 2rem; }}
.cw-badge {{ display: inline-block; padding: 0.15rem 0.6rem; border-radius: 0.4rem; font-weight: 700; }}
.cw-grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: 0.6rem; }}
.cw-card {{ border: 2px solid {palette.BORDER}; border-radius: 0.6rem; padding: 0.6rem 0.8rem;
           background: {palette.PAGE}; color: {palette.INK}; line-height: 1.45; }}
.cw-card h4 {{ margin: 0 0 0.3rem 0; font-size: 1.1rem; color: {palette.INK}; }}
.cw-card .cw-line {{ font-size: 0.95rem; }}
.cw-big {{ font-size: 1.6rem; padding: 0.3rem 0.9rem; }}
.cw-banner {{ border: 3px solid {palette.SEVERITY["high"].background}; border-radius: 0.6rem; padding: 0.5rem 0.8rem;
             background: {palette.PAGE}; color: {palette.INK}; font-size: 1.05rem; line-height: 1.45; }}
.cw-banner[data-sound="off"] {{ border-color: {palette.WARNING.background}; }}
.cw-banner .cw-line {{ margin: 0.2rem 0; }}
</style>
"""

ALERT_KIND_WORDS: dict[str, str] = {
    AlertKind.NEWS2: "NEWS2 score", AlertKind.NEWS2_RISING: "NEWS2 rising",
    AlertKind.SPO2_BELOW_BASELINE: "oxygen below usual",
    AlertKind.TEMPERATURE_ABOVE_BASELINE: "temperature above usual",
    AlertKind.SOFT_SIGNS: "soft signs", AlertKind.OBS_OVERDUE: "observations overdue",
    AlertKind.NIGHT_BATHROOM: "more bathroom visits at night", AlertKind.KITCHEN_INACTIVITY: "kitchen not used",
    AlertKind.NO_MORNING_ACTIVITY: "no morning activity", AlertKind.LONG_BATHROOM_STAY: "long stay in bathroom",
    AlertKind.ROOM_COLD: "room cold", AlertKind.ROOM_HOT: "room hot", AlertKind.CARE_REVIEW: "care review evidence",
    AlertKind.DEVICE_SILENT: "device silent", AlertKind.HOUSEHOLD_SILENT: "household silent",
    AlertKind.BATTERY_LOW: "battery low", AlertKind.DEVICE_FAULT: "device fault",
    AlertKind.GATEWAY_OFFLINE: "gateway offline", AlertKind.SCORING_STALLED: "monitoring stalled",
}
SEVERITY_WORDS = {"high": "HIGH: act now", "medium": "MEDIUM: within the hour", "low": "LOW: today",
                  "info": "INFO: for review"}


esc = html.escape


def style() -> None:
    st.html(CSS)


def client() -> ApiClient:
    """The API client for the signed-in person (tokens are kept in their session)."""
    base = st.session_state.get("api_url") or get_settings().api_base_url

    def keep(tokens: dict[str, Any]) -> None:
        st.session_state["token"] = tokens["access_token"]
        st.session_state["refresh_token"] = tokens.get("refresh_token")

    return ApiClient(base, token=st.session_state.get("token"), refresh_token=st.session_state.get("refresh_token"),
                     on_tokens=keep, practice=bool(st.session_state.get("practice_mode")))


def real_client() -> ApiClient:
    """The client without practice mode: the live banner always shows the home's real alerts, even on a tablet a
    trainee has switched to practice mode (a real emergency is never hidden by training, H-KIT-07)."""
    c = client()
    c.practice = False
    return c


PRACTICE_WORDS = ("Practice mode: a training resident, not a real person. Nothing you do here reaches a real "
                  "record, report or notification.")


def practice_badge() -> None:
    """At the top of every page while the tablet is in practice mode."""
    st.html(f"<div class='cw-practice'>{badge(palette.WARNING, 'Practice', big=True)} {html.escape(PRACTICE_WORDS)}"
            "</div>")


def me() -> dict[str, Any]:
    """The signed-in person (a page reached after signing out stops here and says so)."""
    if "me" not in st.session_state:
        st.info("You are signed out. Reload the page to sign in again.")
        st.stop()
    return st.session_state["me"]


def sign_out() -> None:
    for key in SESSION_KEYS:
        st.session_state.pop(key, None)


@contextmanager
def api_errors() -> Iterator[None]:
    """Show an API refusal in plain words instead of a stack trace; an expired session goes back to sign-in."""
    try:
        yield
    except ApiError as exc:
        if exc.status == 401:
            sign_out()
            st.warning("Your session has expired: please sign in again.")
            st.stop()
        elif exc.status == 403:
            st.error(f"You do not have access to this: {exc}")
        elif exc.status == 404:
            st.error(f"Not found, or not yours to see: {exc}")
        else:
            st.error(f"The server refused this: {exc}")
        st.stop()


def note_if_cut(items: Items, what: str, narrow: str = "") -> None:
    """Say so when a list stopped at the dashboard's upper bound, so nobody takes part of a list for all of it."""
    if items.truncated:
        st.warning(f"Showing the first {len(items):,} {what} only: there are more than the dashboard shows at "
                   f"once.{' ' + narrow if narrow else ''}")


def badge(swatch: palette.Swatch, text: str, big: bool = False) -> str:
    """A coloured label that always carries its words (HTML)."""
    size = " cw-big" if big else ""
    return (f'<span class="cw-badge{size}" style="background:{swatch.background};color:{swatch.text}">'
            f"{html.escape(text)}</span>")


def news2_badge(news2: dict[str, Any] | None, big: bool = False) -> str:
    if news2 is None:
        return badge(palette.NEWS2["grey"], "NEWS2 not shared", big)
    if news2.get("score") is None:
        return badge(palette.NEWS2["grey"], f"NEWS2: {news2.get('label') or 'no score yet'}", big)
    return badge(palette.NEWS2.get(news2["colour"], palette.NEWS2["grey"]),
                 f"NEWS2 {news2['score']} {news2['label']}", big)


def severity_badge(severity: str) -> str:
    return badge(palette.SEVERITY.get(severity, palette.SEVERITY["info"]), SEVERITY_WORDS.get(severity, severity))


def kind_words(kind: str) -> str:
    return ALERT_KIND_WORDS.get(kind, kind.replace("_", " "))


#: How a subject of each kind is named when it has no resident's name (the API's ``subject_kind``).
SUBJECT_KIND_WORDS = {"resident": "resident", "household": "household", "site": "care home", "kit": "shared kit",
                      "device": "device", "gateway": "hub"}


def subject_words(x: dict[str, Any]) -> str:
    """Whom an alert or incident is about: the resident's name, else its subject labelled with its kind ("household
    r-1", "hub gw-3"), since ids are unique per kind only (a resident r-1 and a household r-1 are two subjects)."""
    if x.get("resident_name"):
        return str(x["resident_name"])
    label = SUBJECT_KIND_WORDS.get(x.get("subject_kind") or "")
    return f"{label} {x['subject_id']}" if label else str(x["subject_id"])


def choose(label: str, options: Sequence[str], names: Callable[[str], str], state_key: str, widget_key: str,
           ) -> str | None:
    """A selectbox whose choice is kept in ``state_key`` across pages (widget keys are forgotten off-page)."""
    if not options:
        return None
    current = st.session_state.get(state_key)
    index = options.index(current) if current in options else 0

    def remember() -> None:
        st.session_state[state_key] = st.session_state[widget_key]

    chosen = st.selectbox(label, options, index=index, format_func=names, key=widget_key, on_change=remember)
    st.session_state[state_key] = chosen
    return chosen


def care_home_site(c: ApiClient) -> str | None:
    """The signed-in person's care home; an admin chooses one."""
    mine = me().get("site_id")
    if mine:
        return mine
    homes = c.sites(kind="care_home")
    note_if_cut(homes, "care homes")
    names = {h["site_id"]: h["name"] for h in homes}
    if not names:
        st.info("There are no care homes to show.")
        return None
    return choose("Care home", list(names), lambda s: names[s], "site_id", "pick-site")


def care_home_site_or_stop(c: ApiClient) -> str:
    """The signed-in person's care home (an admin chooses one); the page stops here when there is none to show."""
    site = care_home_site(c)
    if site is None:
        st.stop()
    return site


def pick_resident_in_home(c: ApiClient, widget_key: str) -> tuple[str | None, dict[str, Any] | None]:
    """Choose a resident of the caller's home (most worrying first); returns (resident_id, overview)."""
    from carewatch.dashboard.client import urgency

    site = care_home_site(c)
    if site is None:
        return None, None
    overview = c.overview(site)
    residents = sorted(overview["residents"], key=urgency)
    by_id = {r["resident_id"]: r for r in residents}
    rid = choose("Resident", list(by_id), lambda r: resident_label(by_id[r]), "resident_id", widget_key)
    return rid, overview


def resident_label(r: dict[str, Any]) -> str:
    news2 = r.get("news2") or {}
    score = news2.get("score")
    text = f"{r['display_name']}: NEWS2 {score} {news2.get('label', '')}" if score is not None else \
        f"{r['display_name']}: {news2.get('label', 'no score yet')}"
    if r.get("open_incidents"):
        text += f", {r['open_incidents']} open incident{'s' if r['open_incidents'] != 1 else ''}"
    if r.get("obs_overdue"):
        text += ", observations overdue"
    return text


def resident_card(r: dict[str, Any]) -> str:
    """One resident on the home grid (HTML): NEWS2 number + word + colour, observations due, incidents, devices."""
    from carewatch.dashboard.client import local_time

    lines = [f"<h4>{html.escape(r['display_name'])}</h4>", f"<div>{news2_badge(r.get('news2'))}</div>"]
    if r.get("obs_overdue"):
        lines.append(f'<div class="cw-line">{badge(palette.WARNING, "Observations OVERDUE")} '
                     f"(were due {local_time(r.get('next_obs_due'))})</div>")
    elif r.get("next_obs_due"):
        lines.append(f'<div class="cw-line">Observations due at {local_time(r["next_obs_due"])}</div>')
    if r.get("open_incidents"):  # one per problem, however many rules fired (H-INC-01)
        count = r["open_incidents"]
        lines.append(f'<div class="cw-line">{count} open incident{"s" if count != 1 else ""}: '
                     f"{severity_badge(r.get('worst_incident_severity') or 'info')}</div>")
    else:
        lines.append('<div class="cw-line">No open incidents</div>')
    for w in r.get("device_warnings") or []:
        lines.append(f'<div class="cw-line">{badge(palette.WARNING, "Device")} {html.escape(w["kind"])}: '
                     f"{html.escape(w['problem'])}</div>")
    if r.get("scale2"):
        lines.append('<div class="cw-line">SpO2 Scale 2 (target 88-92%)</div>')
    if r.get("monitoring") == "paused":
        lines.append('<div class="cw-line">Monitoring paused</div>')
    border = palette.SEVERITY[r["worst_severity"]].background if r.get("worst_severity") in palette.SEVERITY \
        else palette.BORDER
    return f'<div class="cw-card" style="border-color:{border}">{"".join(lines)}</div>'


BAND_WORDS = {"low": "low", "low-medium": "low-medium (a red 3)", "medium": "medium", "high": "HIGH"}


def incident_status_words(i: dict[str, Any]) -> str:
    """The incident's status in words, keeping apart a person's escalation (GP, 111, 999) and the policy's own
    steps when nobody answered (H-ESC-05)."""
    level = i.get("notify_level") or 0
    told = f"; level {level} of the escalation policy told" if level > 1 else ""
    if i["status"] == "escalated":
        outcome = (i.get("outcome") or "").replace("_", " ")
        return f"ESCALATED by {i.get('escalated_by') or 'staff'}" + (f" ({outcome})" if outcome else "")
    if i["status"] == "auto_escalated":
        return f"AUTO-ESCALATED: nobody answered in time{told}"
    if i["status"] == "acknowledged":
        return f"acknowledged by {i.get('acknowledged_by')}{told}"
    return {"open": "needs acknowledging"}.get(i["status"], i["status"]) + told


def incident_card(i: dict[str, Any]) -> str:
    """One incident (HTML): who, severity, NEWS2 band, the headline and what to do, then its components with
    their evidence. One card per person however many rules fired (H-INC-01)."""
    from carewatch.dashboard.client import local_time

    who = subject_words(i)
    band = f" NEWS2 band {BAND_WORDS.get(i['band'], i['band'])}" if i.get("band") else ""
    status = incident_status_words(i)
    lines = [f"<h4>{html.escape(who)}</h4>",
             f"<div>{severity_badge(i['severity'])}{html.escape(band)} ({html.escape(status)})</div>",
             f'<div class="cw-line"><b>{html.escape(i["headline"])}</b></div>',
             f'<div class="cw-line">What to do: {html.escape(i["action"])}</div>']
    parts = i.get("components") or []
    if parts:
        items = "".join(f'<li data-kind="{html.escape(c["kind"])}">{html.escape(kind_words(c["kind"]))}: '
                        f"{html.escape(c['reason'])}</li>" for c in parts)
        lines.append(f'<div class="cw-line">{len(parts)} part{"s" if len(parts) != 1 else ""}:<ul '
                     f'class="cw-components">{items}</ul></div>')
    if i.get("outcome"):
        lines.append(f'<div class="cw-line">Outcome: {html.escape(i["outcome"].replace("_", " "))}</div>')
    lines.append(f'<div class="cw-line">Opened {local_time(i["opened_at"], "%d %b %H:%M")}</div>')
    border = palette.SEVERITY[i["severity"]].background if i["severity"] in palette.SEVERITY else palette.BORDER
    return (f'<div class="cw-card cw-incident" data-incident="{i["incident_id"]}" data-status="{i["status"]}" '
            f'style="border-color:{border}">'
            f'{"".join(lines)}</div>')


def task_line(t: dict[str, Any]) -> str:
    """One row of the "due now" list (HTML): who, by when, why."""
    from carewatch.dashboard.client import local_time

    flag = {"overdue": badge(palette.WARNING, "OVERDUE"), "due": badge(palette.OK, "Due now")}.get(t["status"], "")
    return (f'<li class="cw-task" data-status="{t["status"]}">{flag} <b>{html.escape(t["display_name"])}</b>: '
            f"by {local_time(t['due_at'])} ({html.escape(t['why_text'])})</li>")


# ------------------------------------------------------------------------------------------------------------
# The live banner: every signed-in tablet of a home, on every page, polled every 2 seconds
# ------------------------------------------------------------------------------------------------------------
BANNER_POLL_S = 2
NEEDS_WORDS = {"acknowledgement": "Waiting for someone to acknowledge",
               "outcome": "Acknowledged: record what was done (monitoring plan, GP, 111, 999, admitted)",
               "closing": "Needs a person to close it"}

#: A beep every 1.5 s while the banner sounds (Web Audio; headless browsers and muted tablets stay silent, the
#: state is kept on the frame's body as data-sound / data-beeps so it can be checked).
SOUND_FRAME = """<body data-sound="{state}" data-beeps="0" style="margin:0">
<script>
const on = document.body.dataset.sound === "on";
if (on) {{
  const beep = () => {{
    document.body.dataset.beeps = String(Number(document.body.dataset.beeps) + 1);
    try {{
      const ctx = window.cwAudio || (window.cwAudio = new (window.AudioContext || window.webkitAudioContext)());
      const osc = ctx.createOscillator(); const gain = ctx.createGain();
      osc.frequency.value = 880; gain.gain.value = 0.2; osc.connect(gain); gain.connect(ctx.destination);
      osc.start(); osc.stop(ctx.currentTime + 0.35);
    }} catch (e) {{ document.body.dataset.audioError = String(e); }}
  }};
  beep(); window.cwTimer = setInterval(beep, 1500);
}}
</script></body>"""


def banner_html(banner: dict[str, Any]) -> str:
    """The banner (HTML): each incident that waits for a person, what it waits for, and the route to take."""
    from carewatch.dashboard.client import local_time

    items = banner.get("items") or []
    sound = "on" if banner.get("sound") else "off"
    ids = ",".join(str(i["alert_id"]) for i in items)
    incidents = ",".join(str(i["incident_id"]) for i in items)
    lines = []
    for i in items:
        text = f"{severity_badge(i['severity'])} <b>{esc(i['who'])}</b>: {esc(kind_words(i['kind']))}"
        if i.get("score") is not None:
            text += f" (NEWS2 {i['score']})"
        text += f". {esc(NEEDS_WORDS.get(i['needs'], i['needs']))}"
        if i.get("outcome_due_at"):
            text += f" by {local_time(i['outcome_due_at'])}"
        if i.get("notify_level", 0) > 1:
            text += f"; level {i['notify_level']} of the escalation policy has been told"
        text += "."
        if i.get("route") and i["needs"] != "closing":
            text += f" <b>{esc(i['route'])}</b>"
        if i.get("recovery"):
            text += f" Recovered: {esc(i['recovery'])}"
        lines.append(f'<div class="cw-line">{text}</div>')
    return (f'<div class="cw-banner" role="alert" data-sound="{sound}" data-alerts="{ids}" '
            f'data-incidents="{incidents}">{"".join(lines)}</div>')


def live_banner(site_id: str) -> None:
    """Every page of a home's tablet: re-asks the API every 2 s, shows what waits for a person, sounds until
    someone acknowledges, and offers Acknowledge right there (which stops the sound on every tablet)."""
    import streamlit.components.v1 as components

    @st.fragment(run_every=BANNER_POLL_S)
    def _banner() -> None:
        try:
            banner = real_client().banner(site_id)
        except ApiError as exc:
            st.caption(f"Live alerts unavailable: {exc}")
            return
        if not banner["items"]:
            return
        st.html(banner_html(banner))
        components.html(SOUND_FRAME.format(state="on" if banner["sound"] else "off"), height=0)
        waiting = [i for i in banner["items"] if i["needs"] == "acknowledgement"]
        for item in waiting[:3]:
            if st.button(f"Acknowledge: {item['who']}, {kind_words(item['kind'])}",
                         key=f"banner-ack-{item['incident_id']}", type="primary", width="stretch"):
                try:  # the incident: its components follow, one acknowledgement for one problem (H-INC-01)
                    real_client().acknowledge_incident(item["incident_id"], "acknowledged from the banner")
                except ApiError as exc:
                    st.error(f"Acknowledge failed: {exc}")
                st.rerun()

    _banner()
