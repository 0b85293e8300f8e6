"""How clinical and device facts are shown: NEWS2 badges and device warnings, worded once for every route."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from carewatch.alerts import SEVERITY_RANK, Severity
from carewatch.api.schemas import DeviceWarning, News2Badge
from carewatch.scoring.clinical_response import RESPONSES, Risk

BATTERY_WARN_PCT = 20.0
SILENT_AFTER = timedelta(hours=1)
VITAL_METRICS_SQL = "metric = ANY(%(vital_metrics)s)"


def news2_badge(score: int | None, risk: str | None, complete: bool | None, at: datetime | None) -> News2Badge:
    """Number, word and colour together (never colour alone); an incomplete score says so in its label."""
    if score is None or risk is None:
        return News2Badge(score=None, risk=None, label="No score yet", colour="grey", complete=None, at=at)
    try:
        response = RESPONSES[Risk(risk)]
        label, colour = response.label, response.colour
    except ValueError:
        label, colour = risk, "grey"
    if complete is False:
        label = f"{label} (incomplete)"
    return News2Badge(score=score, risk=risk, label=label, colour=colour, complete=complete, at=at)


def worst_severity(severities: list[str]) -> str | None:
    ranked = [Severity(s) for s in severities if s in Severity._value2member_map_]
    return max(ranked, key=SEVERITY_RANK.__getitem__).value if ranked else None


def device_problem(row: dict[str, Any], now: datetime) -> str | None:
    """A plain-words warning for a device, or None when it looks healthy."""
    battery = row.get("battery_pct")
    last_seen = row.get("last_seen")
    if last_seen is None:
        return "never heard from: check it is paired and near the gateway"
    if now - last_seen > SILENT_AFTER:
        hours = (now - last_seen).total_seconds() / 3600
        return f"no data for {hours:.0f} h: check it is switched on, charged and near the gateway"
    if battery is not None and battery <= BATTERY_WARN_PCT:
        return f"battery {battery:.0f}%: change or charge it today"
    return None


def device_warning(row: dict[str, Any], now: datetime) -> DeviceWarning | None:
    problem = device_problem(row, now)
    if problem is None:
        return None
    return DeviceWarning(device_id=row["device_id"], kind=row["kind"], resident_id=row.get("resident_id"),
                         room=row.get("room"), battery_pct=row.get("battery_pct"), last_seen=row.get("last_seen"),
                         problem=problem)
