"""Devices and gateways for managers and admins: device batteries, last seen and silent devices; gateways online
and their outbox backlog; and dead letters (input that could not be used, with the reason)."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from carewatch.dashboard import ui
from carewatch.dashboard.client import ago, local_time

BATTERY_LOW = 20

st.title("Devices and gateways")
c = ui.client()
site = ui.me().get("site_id")
with ui.api_errors():
    devices = c.devices(site=site)
    gateways = c.gateways(site=site)
    dead = c.dead_letters(site=site)
now = datetime.now(UTC)
ui.note_if_cut(devices, "devices")
ui.note_if_cut(gateways, "gateways")
ui.note_if_cut(dead, "dead letters (newest first)")

silent = [d for d in devices if d["silent"]]
low = [d for d in devices if d["battery_pct"] is not None and d["battery_pct"] < BATTERY_LOW]
offline = [g for g in gateways if not g["online"]]
m = st.columns(4)
m[0].metric("Devices", len(devices))
m[1].metric("Silent (no data for 1 h)", len(silent))
m[2].metric(f"Battery below {BATTERY_LOW}%", len(low))
m[3].metric("Gateways offline", len(offline))
practice = sum(g.get("practice_devices") or 0 for g in gateways)
if practice:  # the practice kit is training equipment: never among the home's devices (H-KIT-07)
    st.caption(f"Not counted above: the practice kit's {practice} device{'s' if practice != 1 else ''} (training).")

dead_count = f"{len(dead):,}+" if dead.truncated else f"{len(dead):,}"
devices_tab, gateways_tab, dead_tab = st.tabs(["Devices", "Gateways", f"Dead letters ({dead_count})"])
with devices_tab:
    only = st.toggle("Only devices needing attention", value=bool(silent or low), key="estate-only")
    rows = [d for d in devices if not only or d in silent or d in low]
    st.dataframe([{
        "Device": d["device_id"], "Kind": d["kind"], "Site": d["site_id"],
        "For": (f"resident {d['resident_id']}" if d["resident_id"] else f"shared kit {d['kit_id']}"
                if d.get("kit_id") else f"room {d['room']}" if d["room"] else "-"),
        "Battery": "-" if d["battery_pct"] is None else (f"{d['battery_pct']:.0f}% LOW" if d["battery_pct"] <
                                                         BATTERY_LOW else f"{d['battery_pct']:.0f}%"),
        "Last seen": ago(d["last_seen"], now), "Status": "SILENT" if d["silent"] else ("active" if d["active"]
                                                                                       else "unbound"),
    } for d in rows], hide_index=True, width="stretch")
with gateways_tab:
    st.dataframe([{
        "Gateway": g["gateway_id"], "Site": g["site_id"], "Status": "online" if g["online"] else "OFFLINE",
        "Devices": g.get("devices", 0), "Practice kit devices (training)": g.get("practice_devices", 0),
        "Last seen": ago(g["last_seen"], now), "Readings waiting (outbox)": g["outbox_depth"],
        "Outbox budget used": "-" if g["outbox_budget_pct"] is None else f"{g['outbox_budget_pct']:.1f}%",
        "Oldest unsent": local_time(g["oldest_unsent"], "%d %b %H:%M") if g["oldest_unsent"] else "-",
        "Readings never received": g["missing_seqs"],
    } for g in gateways], hide_index=True, width="stretch")
with dead_tab:
    if not dead:
        st.success("No dead letters.")
    else:
        st.dataframe([{"At": local_time(d["at"], "%d %b %H:%M"), "Stage": d["stage"], "Gateway": d["gateway_id"],
                       "Device": d["device_id"], "Why": d["reason"], "Raw (start)": d["raw"][:80]} for d in dead],
                     hide_index=True, width="stretch")
