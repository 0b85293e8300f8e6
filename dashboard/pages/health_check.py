"""Record a physical health check on a tablet: large inputs, device readings from the last minutes offered with
their time and source, the soft-signs checklist, and on saving the NEWS2 score, what it means and what to do now.
The score and advice come from the API (the scoring stage), never from the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from carewatch import palette
from carewatch.dashboard import ui
from carewatch.dashboard.client import ApiError, ago, local_time
from carewatch.scoring.kinds import SOFT_SIGN_NAMES, SoftSign
from carewatch.scoring.news2 import METRIC_OF
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

st.title("Record a physical health check")
c = ui.client()
with ui.api_errors():
    rid, overview = ui.pick_resident_in_home(c, "check-resident")
    if rid is None:
        st.info("No residents to record for.")
        st.stop()
    resident = c.resident(rid)
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
    body["from_device"] = [p for p, v in offered.items() if values.get(p) is not None
                           and abs(float(values[p]) - float(v["value"])) < 1e-9]
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
