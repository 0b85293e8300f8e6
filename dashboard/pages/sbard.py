"""SBARD: Situation, Background, Assessment, Recommendation, Decision, ready to read out on the phone to a GP,
NHS 111 or 999 (worded by the API from the resident's latest observations and alerts)."""

from __future__ import annotations

import html

import streamlit as st

from carewatch.dashboard import ui

st.title("SBARD summary")
st.caption("Read this out when you phone the GP, NHS 111 or 999. Record what was agreed on the Alerts page.")
c = ui.client()
with ui.api_errors():
    if ui.me().get("site_id"):
        rid, _ = ui.pick_resident_in_home(c, "sbard-resident")
    else:
        people = c.residents()
        ui.note_if_cut(people, "residents")
        names = {r["resident_id"]: r["display_name"] for r in people}
        rid = ui.choose("Resident", list(names), lambda r: names[r], "resident_id", "sbard-pick")
    if rid is None:
        st.info("No residents to show.")
        st.stop()
    report = c.sbard(rid)
    text = c.sbard_text(rid)

assessment = report["assessment"]
sections = (
    ("S", "Situation", report["situation"]),
    ("B", "Background", report["background"]),
    ("A", "Assessment", assessment["text"]),
    ("R", "Recommendation", report["recommendation"]),
    ("D", "Decision", "\n\n".join([*report["decision"]["previous"], report["decision"]["prompt"]])),
)
for letter, name, body in sections:
    with st.container(border=True):
        st.markdown(f"### {letter}: {name}")
        st.html(f"<div style='font-size:1.2rem;line-height:1.5'>{html.escape(body).replace(chr(10), '<br>')}</div>")
if assessment.get("trend"):
    st.markdown("**Recent NEWS2 scores:** " + ", ".join(
        f"{p['score']}{'' if p['complete'] else ' (incomplete)'}" for p in assessment["trend"]))
with st.expander("Plain text (to copy into a message or record)"):
    st.code(text, language=None, wrap_lines=True)
if ui.me()["role"] in ("care_staff", "manager", "admin") and st.button("Go to alerts to record the call",
                                                                       width="stretch"):
    st.switch_page("pages/alerts.py")
