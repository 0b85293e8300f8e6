"""Adoption per care home: staff observations per resident per day, alert acknowledgement and response times,
and homes whose use is dropping (computed by the API from the database)."""

from __future__ import annotations

import streamlit as st

from carewatch.dashboard import charts, ui

st.title("Adoption")
c = ui.client()
days = st.select_slider("Period (days)", (14, 28, 56, 90), value=28, key="adoption-days")
with ui.api_errors():
    report = c.adoption(days=days)
if report["dropping"]:
    st.warning(report["summary"])
else:
    st.success(report["summary"])


def minutes(value: float | None) -> str:
    return "-" if value is None else f"{value:g} min"


st.dataframe([{
    "Home": h["name"], "Residents": h["residents"],
    "Staff observations per resident a day": h["obs_per_resident_per_day"],
    f"Last {report['recent_days']} days": h["recent_per_resident_per_day"],
    "Before": h["earlier_per_resident_per_day"], "Trend": h["trend"].upper() if h["dropping"] else h["trend"],
    "Alerts": h["alerts"], "Acknowledged": h["acknowledged"],
    "Median time to acknowledge": minutes(h["median_minutes_to_acknowledge"]),
    "90% acknowledged within": minutes(h["p90_minutes_to_acknowledge"]),
    "Median time to respond": minutes(h["median_minutes_to_response"]),
    "Open, not acknowledged": h["open_not_acknowledged"],
} for h in report["homes"]], hide_index=True, width="stretch")
st.caption("Staff observations are sets typed in on the tablet; device rounds are counted apart. Response means "
           "the first call recorded (GP, NHS 111, 999) or the alert being closed by a person.")
names = {h["site_id"]: h["name"] for h in report["homes"]}
if report["daily"]:
    st.altair_chart(charts.adoption_chart(report["daily"], names), width="stretch")
