"""Record a physical health check on a tablet: large inputs, device readings from the last minutes offered with
their time and source, the soft-signs checklist, and on saving the NEWS2 score, what it means and what to do now.
The score and advice come from the API (the scoring stage), never from the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from carewatch import palette
from carewatch.alerts import SOFT_SIGN_NAMES, SoftSign
from carewatch.dashboard import ui
from carewatch.dashboard.client import ApiError, ago, local_time
from carewatch.news2_chart import METRIC_OF
from carewatch.wire import METRICS

PREFILL_MINUTES = 15
FIELDS = (  # parameter, label, step, format
    ("respiration_rate", "Breathing rate (breaths a minute)", 1.0, "%.0f"),
    ("spo2", "Oxygen level, SpO2 (%)", 1.0, "%.0f"),
    ("systolic_bp", "Blood pressure, top number (mmHg)", 1.0, "%.0f"),
    ("pulse", "Pulse (beats a minute)", 1.0, "%.0f"),
    ("temperature", "Temperature (°C)", 0.1, "%.1f"),
)
ACVPU = {"A": "A: Alert", "C": "C: New confusion", "V": "V: Responds to voice only", "P": "P: Responds to pain only",
         "U": "U: Unresponsive"}


def interval_words(minutes: int, continuous: bool) -> str:
    if continuous:
        return "Stay with the resident and keep watching them until help arrives."
    if minutes < 120:
        return f"Take the observations again within {minutes} minutes."
    return f"Take the observations again within {minutes // 60} hours."


def show_result(result: dict[str, Any]) -> None:
    st.subheader("Result")
    news2 = {"score": result["score"], "label": result["label"], "colour": result["colour"]}
    st.html(f"<div>{ui.news2_badge(news2, big=True)}</div>")
    if not result["alerts_evaluated"]:
        st.error("Alerts could not be checked just now: act on this result yourself and tell the senior on shift.")
    box = {"red": st.error, "orange": st.error, "yellow": st.warning}.get(result["colour"], st.info)
    st.markdown(f"**What it means:** {result['meaning']}")
    box(f"**What to do now:** {result['action']}")
    st.markdown(f"**Next:** {interval_words(result['min_interval_minutes'], result['continuous_monitoring'])}")
    if result["soft_signs"]:
        st.markdown("**Soft signs recorded:** " + ", ".join(SOFT_SIGN_NAMES.get(s, s) for s in result["soft_signs"]))
    if result["open_alerts"]:
        st.markdown("**Open alerts for this resident:**")
        for a in result["open_alerts"]:
            st.html(f"<div>{ui.severity_badge(a['severity'])} {ui.kind_words(a['kind'])}: {ui.esc(a['reason'])}</div>")
    cols = st.columns(2)
    if cols[0].button("SBARD summary for a phone call", width="stretch", key="result-sbard"):
        st.switch_page("pages/sbard.py")
    if cols[1].button("Go to alerts", width="stretch", key="result-alerts"):
        st.switch_page("pages/alerts.py")


#: Shown (and the set not sent) when "new confusion" is ticked while ACVPU is A; the API refuses it too.
NEW_CONFUSION_QUESTION = (
    "You ticked 'new or worse confusion' but chose A (alert). Which is true? If the confusion is new or worse than "
    "usual, choose C (new confusion): it scores 3. If it is their usual confusion, untick 'new or worse confusion'. "
    "Nothing has been saved yet."
)

NO_KIT = "-"
#: How often the open form asks the API for the kit's new values (they must show within 2 s of being sent).
POLL_S = 0.5


def _session_for(c: Any, resident: dict[str, Any], kit_id: str) -> dict[str, Any] | None:
    """This tablet's session for the chosen resident and kit: started when they are chosen; choosing another
    resident ends the previous one. Another tablet's open session on the kit: ask before ending it."""
    held = st.session_state.get("kit_session")
    if held and held["kit_id"] == kit_id and held["resident_id"] == resident["resident_id"]:
        return held
    mine = bool(held and held["kit_id"] == kit_id)  # this tablet moves on to the next resident
    try:
        session = c.start_session(kit_id, resident["resident_id"], replace=mine)
    except ApiError as exc:
        if exc.status != 409:
            raise
        st.warning(str(exc))
        if st.button(f"End that session and measure {resident['display_name']}", key=f"kit-replace-{kit_id}",
                     type="primary"):
            session = c.start_session(kit_id, resident["resident_id"], replace=True)
        else:
            return None
    st.session_state["kit_session"] = {"session_id": session["session_id"], "kit_id": kit_id,
                                       "resident_id": resident["resident_id"]}
    st.session_state.pop("obs_result", None)
    return st.session_state["kit_session"]


def _born(value: str) -> str:
    return datetime.fromisoformat(value).strftime("%-d %B %Y")


def _photo(url: str | None, name: str) -> str:
    """The home's photo of the resident beside their name, where it keeps one (the API allows https only)."""
    if not url or not url.startswith("https://"):
        return ""
    return f"<img class='cw-kit-photo' src='{ui.esc(url)}' alt='Photo of {ui.esc(name)}' width='96' height='96'> "


def _chosen(c: Any, resident: dict[str, Any], kit_id: str) -> bool:
    """Has the carer chosen to measure this resident with this kit? Opening the page lists someone first: that is
    not a choice, and a session started for them would take the kit's readings. Picking someone else ends this
    tablet's session on the kit at once (the kit no longer measures the previous resident); the next one starts
    when the carer taps "Start measuring"."""
    wanted = {"kit_id": kit_id, "resident_id": resident["resident_id"]}
    held = st.session_state.get("kit_session")
    if held and {k: held[k] for k in wanted} == wanted:
        return True
    if held and held["kit_id"] == kit_id:
        with ui.api_errors():
            c.end_session(held["session_id"], reason="switched")
        st.session_state.pop("kit_session", None)
    if st.session_state.get("kit_start") == wanted:
        return True
    st.session_state.pop("kit_start", None)
    name = resident["display_name"]
    st.html(f"<div class='cw-kit-choose'>{_photo(resident.get('photo_url'), name)}Measure <b>{ui.esc(name)}</b>, born "
            f"{_born(resident['date_of_birth'])}? Check the wristband first.</div>")
    if st.button(f"Start measuring {name}", type="primary", width="stretch", key=f"kit-start-{kit_id}"):
        st.session_state["kit_start"] = wanted
        st.rerun()
    return False


def kit_session_page(c: Any, resident: dict[str, Any], kit_id: str) -> None:
    """Measure with the home's shared kit: a session for this kit, resident and carer; values arrive live."""
    result = st.session_state.get("obs_result")
    if result and result.get("resident_id") == resident["resident_id"] and result.get("kit_id") == kit_id:
        show_result(result)
        if st.button("Measure this resident again", key="kit-again"):
            st.session_state.pop("obs_result", None)
            st.rerun()
        return
    if not _chosen(c, resident, kit_id):
        return
    with ui.api_errors():
        held = _session_for(c, resident, kit_id)
    if held is None:
        return
    _live_form(c, resident, held["session_id"])
    _put_right(c, resident, kit_id)


def _put_right(c: Any, resident: dict[str, Any], kit_id: str) -> None:
    """The kit's readings of the last hour and whom each went to: one not yet assigned, or on the wrong
    resident, can be moved to the resident chosen above (audited; both residents are scored again)."""
    with ui.api_errors():
        recent = c.kit_readings(kit_id, minutes=60)
    others = [r for r in recent if r["resident_id"] != resident["resident_id"] and r["movable"]]
    if not others:
        return
    with st.expander(f"Readings from this kit not on {resident['display_name']} (last hour)"):
        for r in others:
            cols = st.columns([3, 1])
            cols[0].markdown(f"{r['words'][0].upper()}{r['words'][1:]}: {r['metric'].replace('_', ' ')} "
                             f"{r['value']:g} {r['unit']}")
            if cols[1].button(f"Move to {resident['display_name']}", key=f"move-{r['gateway_id']}-{r['seq']}"):
                with ui.api_errors():
                    c.move_reading(r["gateway_id"], r["seq"], resident["resident_id"],
                                   "moved on the tablet: measured this resident")
                st.rerun()


@st.fragment(run_every=POLL_S)
def _live_form(c: Any, resident: dict[str, Any], session_id: int) -> None:
    with ui.api_errors():
        live = c.kit_session(session_id)
    name = resident["display_name"]
    st.html(f"<div class='cw-kit-banner'>{_photo(live.get('photo_url'), name)}"
            f"{ui.badge(palette.OK, 'Measuring', big=True)} <b>{ui.esc(name)}</b>, "
            f"born {_born(live['date_of_birth'])}<div>{ui.esc(live['kit_name'])}, session started "
            f"{local_time(live['started_at'])}. Check the wristband or photo before you measure.</div></div>")
    if not live["open"]:
        st.warning(f"This session ended ({live['end_reason']}). Choose the resident again to measure them.")
        st.session_state.pop("kit_session", None)
        st.session_state.pop("kit_start", None)
        return
    for r in live["claimable"]:
        cols = st.columns([3, 1])
        cols[0].warning(f"{r['words'][0].upper()}{r['words'][1:]}: {r['metric'].replace('_', ' ')} "
                        f"{r['value']:g} {r['unit']}. Was it {name}?")
        if cols[1].button(f"Yes, {name}", key=f"claim-{r['gateway_id']}-{r['seq']}", width="stretch"):
            with ui.api_errors():
                c.claim(session_id, [{"gateway_id": r["gateway_id"], "seq": r["seq"]}])
            st.rerun(scope="fragment")
    offered: dict[str, dict[str, Any]] = live["values"]
    seen = st.session_state.setdefault(f"kit-seen-{session_id}", {})
    form_cols = st.columns(2)
    values: dict[str, float | None] = {}
    confirmed: dict[str, bool] = {}
    for i, (param, label, step, fmt) in enumerate(FIELDS):
        spec = METRICS[METRIC_OF[param]]
        key = f"kit-{param}-{session_id}"
        pre = offered.get(param) if param != "respiration_rate" else None  # breathing rate is always counted
        if pre is not None and seen.get(param) != pre["seq"]:  # a new value from the kit: show it in the form
            seen[param] = pre["seq"]
            st.session_state[key] = float(pre["value"])
            st.session_state[f"{key}-ok"] = False
        col = form_cols[i % 2]
        # set through session state once it is there
        start: dict[str, Any] = {} if key in st.session_state else {"value": None}
        values[param] = col.number_input(label, min_value=float(spec.low), max_value=float(spec.high), step=step,
                                         format=fmt, key=key, **start)
        if pre is not None:
            source = f"From {live['kit_name']} ({pre['device_id']}) at {local_time(pre['measured_at'], '%H:%M:%S')}"
            if not pre["trusted"]:
                source += f": the device flagged it ({', '.join(pre['flags'])}), measure again"
            col.caption(source)
            confirmed[param] = col.checkbox("Value checked", key=f"{key}-ok")
    oxygen = form_cols[1].radio("Breathing", ["Air", "Oxygen"], horizontal=True, key=f"kit-oxygen-{session_id}")
    hint = " This resident's usual confusion (e.g. dementia) counts as A." if resident.get("baseline_confused") else ""
    consciousness = st.radio(f"Alertness (ACVPU).{hint}", list(ACVPU), format_func=ACVPU.__getitem__, index=None,
                             horizontal=True, key=f"kit-acvpu-{session_id}")
    identity = False
    if live["identity_check"]:
        for question in live["identity_check"]:
            st.error(question)
        identity = st.checkbox(f"Yes, this is {name}: I checked", key=f"kit-identity-{session_id}")
    problem_key = f"kit-problem-{session_id}"  # kept across the form's twice-a-second refreshes until fixed
    if st.button("Work out the NEWS2 score and save", type="primary", width="stretch", key=f"kit-save-{session_id}"):
        st.session_state[problem_key] = None
        from_device = [p for p, v in offered.items() if p in confirmed and (kept := values.get(p)) is not None
                       and abs(kept - float(v["value"])) < 1e-9]
        unchecked = [p for p in from_device if not confirmed.get(p)]
        body: dict[str, Any] = {k: v for k, v in values.items() if v is not None and k not in from_device}
        body.update(on_oxygen=oxygen == "Oxygen", from_device=from_device, session_id=session_id,
                    identity_confirmed=identity, prefill_minutes=120)
        if consciousness:
            body["consciousness"] = consciousness
        saved = None
        if unchecked:
            st.session_state[problem_key] = ("Tick 'Value checked' or correct: "
                                             + ", ".join(p.replace("_", " ") for p in unchecked))
        elif live["identity_check"] and not identity:
            st.session_state[problem_key] = f"Confirm that this is {name}, or choose the right resident."
        elif not any(v is not None for v in values.values()) and not consciousness:
            st.session_state[problem_key] = "Nothing to save: enter at least one observation."
        else:
            try:
                saved = c.record_observation(resident["resident_id"], body)
            except ApiError as exc:
                st.session_state[problem_key] = f"Not saved: {exc}"
        if saved is None:
            st.error(st.session_state[problem_key])
            return
        st.session_state["obs_result"] = {"resident_id": resident["resident_id"],
                                          "kit_id": st.session_state["kit_session"]["kit_id"], **saved}
        st.session_state.pop("kit_session", None)
        st.rerun()
    if st.session_state.get(problem_key):
        st.error(st.session_state[problem_key])


st.title("Record a physical health check")
c = ui.client()
with ui.api_errors():
    rid, overview = ui.pick_resident_in_home(c, "check-resident")
    if rid is None:
        st.info("No residents to record for.")
        st.stop()
    resident = c.resident(rid)
    kits = c.kits(site=resident["site_id"])

if st.session_state.get("practice_mode"):
    with ui.api_errors():
        condition = c.practice_home(resident["site_id"])["condition"]
    cols = st.columns(2)
    if condition == "well" and cols[0].button("Practice: make Pat unwell", key="practice-unwell", width="stretch"):
        with ui.api_errors():
            c.practice_condition(resident["site_id"], "deteriorating")
        st.rerun()
    if condition != "well" and cols[0].button("Practice: make Pat well again", key="practice-well", width="stretch"):
        with ui.api_errors():
            c.practice_condition(resident["site_id"], "well")
        st.rerun()
    cols[1].caption(f"The simulator's practice kit measures Pat as {condition}.")

kit_id = None
if kits:
    names = {k["kit_id"]: k["name"] for k in kits}
    kit_id = ui.choose("Device kit", [*names, NO_KIT], lambda k: names.get(k, "No kit: type the values in"),
                       "kit_id", "check-kit")
if kit_id not in (None, NO_KIT):
    kit_session_page(c, resident, kit_id)
    st.stop()

with ui.api_errors():
    prefill = c.prefill(rid, minutes=PREFILL_MINUTES)

now = datetime.now(UTC)
offered: dict[str, dict[str, Any]] = prefill["values"]
if offered:
    st.markdown(f"**Device readings from the last {PREFILL_MINUTES} minutes are filled in.** Check them; change a "
                "number if you measured it yourself.")
    for param, v in offered.items():
        st.html(f"<div>{ui.badge(palette.OK, 'From device')} {param.replace('_', ' ')} <b>{v['value']:g} "
                f"{v['unit']}</b>, measured at {local_time(v['measured_at'])} ({ago(v['measured_at'], now)}) by "
                f"device {v['device_id']}</div>")
else:
    st.info(f"No device readings in the last {PREFILL_MINUTES} minutes: type in what you measure.")
for param, why in prefill["skipped"].items():
    st.warning(f"{param.replace('_', ' ')}: {why}")
if resident.get("scale2"):
    st.info("This resident uses SpO2 Scale 2 (target 88-92%): the score uses it automatically.")

with st.form(f"obs-{rid}"):
    cols = st.columns(2)
    values: dict[str, float | None] = {}
    for i, (param, label, step, fmt) in enumerate(FIELDS):
        spec = METRICS[METRIC_OF[param]]
        pre = offered.get(param)
        help_text = (f"From device {pre['device_id']} at {local_time(pre['measured_at'])}" if pre
                     else "Leave empty if not measured")
        values[param] = cols[i % 2].number_input(
            label, min_value=float(spec.low), max_value=float(spec.high), step=step, format=fmt,
            value=float(pre["value"]) if pre else None, help=help_text, key=f"obs-{param}-{rid}")
    oxygen = cols[1].radio("Breathing", ["Air", "Oxygen"], horizontal=True, key=f"obs-oxygen-{rid}")
    hint = " This resident's usual confusion (e.g. dementia) counts as A." if resident.get("baseline_confused") else ""
    consciousness = st.radio(f"Alertness (ACVPU).{hint}", list(ACVPU), format_func=ACVPU.__getitem__, index=None,
                             horizontal=True, key=f"obs-acvpu-{rid}")
    st.markdown("**Soft signs** (tick any you have noticed)")
    sign_cols = st.columns(3)
    signs = [s for i, s in enumerate(SoftSign)
             if sign_cols[i % 3].checkbox(SOFT_SIGN_NAMES[s], key=f"obs-sign-{s.value}-{rid}")]
    note = st.text_area("Anything else (optional)", key=f"obs-note-{rid}", max_chars=2000)
    submitted = st.form_submit_button("Work out the NEWS2 score and save", type="primary", width="stretch")

if submitted:
    body: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    body["on_oxygen"] = oxygen == "Oxygen"
    if consciousness:
        body["consciousness"] = consciousness
    body["soft_signs"] = [s.value for s in signs]
    if note.strip():
        body["note"] = note.strip()
    # A device value kept as offered is recorded with its device and time; a changed number is the carer's own.
    body["from_device"] = [p for p, v in offered.items() if (kept := values.get(p)) is not None
                           and abs(kept - float(v["value"])) < 1e-9]
    body["prefill_minutes"] = PREFILL_MINUTES
    if not any(v is not None for v in values.values()) and not consciousness and not signs:
        st.error("Nothing to save: enter at least one observation.")
    elif consciousness == "A" and SoftSign.NEW_CONFUSION in signs:
        # 'C' in ACVPU is new confusion: the two answers disagree, so ask which is true (H-OBS-12).
        st.warning(NEW_CONFUSION_QUESTION)
    else:
        try:
            st.session_state["obs_result"] = {"resident_id": rid, **c.record_observation(rid, body)}
        except ApiError as exc:
            st.error(f"Not saved: {exc}")

result = st.session_state.get("obs_result")
if result and result.get("resident_id") == rid:
    show_result(result)
