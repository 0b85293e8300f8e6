"""Council care-package review ("rightsizing") per household: the plain summary beside the current package,
the evidence as pictures (night-activity heatmap, nights, bathroom visits, kitchen use, time out, room
temperature), a benefit calculator, and CSV/PDF exports. Every figure comes from the API."""

from __future__ import annotations

import streamlit as st

from carewatch import palette
from carewatch.dashboard import charts, ui

PERIODS = (7, 14, 28, 56, 90)

st.title("Care package review")
c = ui.client()
with ui.api_errors():
    households = c.sites(kind="household")
if not households:
    st.info("You have no households to review.")
    st.stop()
ui.note_if_cut(households, "households")
names = {h["site_id"]: h["name"] for h in households}
top = st.columns([3, 2])
with top[0]:
    site = ui.choose("Household", list(names), names.__getitem__, "site_id", "review-household")
    assert site is not None  # there are households (stopped above), so one is chosen
chosen: str = site  # (for the download callbacks below)
with top[1]:
    days = st.select_slider("Evidence period (nights)", PERIODS, value=28, key="review-days")
with ui.api_errors():
    base = c.rightsizing(site, days=days)
report = base["report"]
package = report["care_package"]

left, right = st.columns([3, 2])
with left:
    st.subheader("Summary")
    st.html(f"<div style='font-size:1.25rem;line-height:1.5'><b>{ui.esc(report['summary'])}</b></div>")
    st.caption(f"{report['start']} to {report['end']}. Nights are 00:00-06:00 UK time.")
with right:
    st.subheader("Current package")
    if package["description"]:
        st.markdown(f"**{package['description']}**")
        if package["hours_per_week"] is not None:
            st.markdown(f"{package['hours_per_week']:g} hours a week")
        if package["weekly_cost_gbp"] is not None:
            st.markdown(f"£{package['hourly_rate_gbp']:,.2f} an hour: **£{package['weekly_cost_gbp']:,.2f} a week**")
    else:
        st.write("No package recorded.")

counts = report["night_counts"]
m = st.columns(4)
for col, key in zip(m, ("none", "low", "high", "no_data"), strict=True):
    col.html(f"<div>{ui.badge(palette.NIGHT[key], palette.NIGHT_WORDS[key])}</div>")
    col.metric(f"{palette.NIGHT_WORDS[key]} nights", counts[key])
m3 = st.columns(3)
m3[0].metric("Bathroom visits per night", "-" if report["bathroom_visits_per_night"] is None
            else f"{report['bathroom_visits_per_night']:g} (most {report['max_bathroom_visits']})")
m3[1].metric("Kitchen sessions a day", "-" if report["mean_kitchen_sessions_per_day"] is None
            else f"{report['mean_kitchen_sessions_per_day']:g}")
m3[2].metric("Minutes out a day", "-" if report["mean_minutes_out_per_day"] is None
            else f"{report['mean_minutes_out_per_day']:g}")

st.altair_chart(charts.nights_chart(report["nights"]), width="stretch")
st.altair_chart(charts.heatmap_chart(report["heatmap"]), width="stretch")
st.caption("Darker squares: more activity (motion, doors, kitchen, bathroom) starting in that hour.")
cols = st.columns(2)
with cols[0]:
    st.altair_chart(charts.bar_chart([n for n in report["nights"] if n["activity"] != "no_data"], "night",
                                     "bathroom_visits", "Night", "Visits", "Bathroom visits per night"),
                    width="stretch")
    st.altair_chart(charts.bar_chart(report["daily"], "day", "minutes_out", "Day", "Minutes",
                                     "Time out of the home", colour=palette.TIME_OUT), width="stretch")
with cols[1]:
    st.altair_chart(charts.bar_chart(report["daily"], "day", "kitchen_sessions", "Day", "Sessions",
                                     "Meals and drinks: kitchen sessions per day",
                                     colour=palette.NIGHT["none"].background), width="stretch")
    if report["room_temperatures"]:
        st.altair_chart(charts.temperature_chart(report["room_temperatures"]), width="stretch")
        st.dataframe([{"Room": t["room"], "Lowest °C": t["min"], "Average °C": t["mean"], "Highest °C": t["max"],
                       "Hours below 18 °C": t["hours_below_18"], "Hours above 26 °C": t["hours_above_26"]}
                      for t in report["room_temperatures"]], hide_index=True, width="stretch")
    else:
        st.info("No room-temperature readings in this period.")

st.subheader("Benefit calculator")
st.caption("Your figures: the hours of paid care a week the evidence suggests are no longer needed. Carewatch "
           "does not decide this; talk to the person and their family first.")
default_hours = float(package["hours_per_week"] or 0)
default_rate = float(package["hourly_rate_gbp"] or 0)
default_caseload = base["benefit"]["caseload"] if base["benefit"] else 1
calc = st.columns(3)
hours = calc[0].number_input("Hours a week released", 0.0, 168.0, default_hours, 1.0, key=f"calc-hours-{site}")
rate = calc[1].number_input("Hourly rate (£)", 0.0, 1000.0, default_rate, 0.5, key=f"calc-rate-{site}")
caseload = calc[2].number_input("People in the caseload", 1, 100_000, int(default_caseload), 1,
                                key=f"calc-caseload-{site}",
                                help=base["benefit"]["caseload_basis"] if base["benefit"] else None)
chosen_caseload = None if int(caseload) == int(default_caseload) else int(caseload)  # keep the API's own basis
with ui.api_errors():
    priced = c.rightsizing(site, days=days, hours_released=hours, hourly_rate=rate, caseload=chosen_caseload)
benefit = priced["benefit"]
if benefit:
    st.success(benefit["sentence"])
    b = st.columns(2)
    b[0].metric("Per person, a week", f"£{benefit['weekly_per_person_gbp']:,.2f}")
    b[1].metric("Per person, a year", f"£{benefit['annual_per_person_gbp']:,.0f}")
    b = st.columns(2)
    b[0].metric(f"Caseload of {benefit['caseload']}, a week", f"£{benefit['weekly_caseload_gbp']:,.2f}")
    b[1].metric(f"Caseload of {benefit['caseload']}, a year", f"£{benefit['annual_caseload_gbp']:,.0f}")
elif priced.get("note"):
    st.info(priced["note"])

st.subheader("Export")
e = st.columns(2)
stem = f"carewatch-review-{site}-{report['start']}-{report['end']}"
e[0].download_button("Download the evidence (CSV)", data=lambda: c.report_csv(chosen, days), file_name=f"{stem}.csv",
                     mime="text/csv", width="stretch", key="download-csv", on_click="ignore")
e[1].download_button("Download the report (PDF)", type="primary", file_name=f"{stem}.pdf", mime="application/pdf",
                     data=lambda: c.report_pdf(chosen, days, hours, rate, chosen_caseload), width="stretch",
                     key="download-pdf", on_click="ignore")
