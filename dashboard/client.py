"""The dashboard's only way to data: the Carewatch API over HTTP (never the database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

LOCAL_TZ = ZoneInfo("Europe/London")  # staff read clock times in UK local time
COLOUR_MARK = {"green": "🟢", "yellow": "🟡", "orange": "🟠", "red": "🔴", "grey": "⚪"}


class ApiError(RuntimeError):
    """The API refused or failed; the message is the API's own explanation."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass
class ApiClient:
    base_url: str
    token: str | None = None
    timeout: float = 10.0

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=headers) as http:
            response = http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("message") or response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail if isinstance(detail, str) else str(detail))
        return response.json() if response.content else None

    def login(self, username: str, password: str) -> dict[str, Any]:
        tokens = self._request("POST", "/auth/token", data={"username": username, "password": password})
        self.token = tokens["access_token"]
        return tokens

    def me(self) -> dict[str, Any]:
        return self._request("GET", "/auth/me")

    def sites(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/sites", params={"limit": 500, **({"kind": kind} if kind else {})})["items"]

    def overview(self, site_id: str) -> dict[str, Any]:
        return self._request("GET", f"/sites/{site_id}/overview")

    def alerts(self, site: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/alerts", params={"limit": 200, **({"site": site} if site else {})})["items"]

    def acknowledge(self, alert_id: int) -> dict[str, Any]:
        return self._request("POST", f"/alerts/{alert_id}/acknowledge", json={})

    def behaviour(self, site_id: str, days: int = 28) -> dict[str, Any]:
        return self._request("GET", f"/households/{site_id}/behaviour", params={"days": days})


def news2_text(badge: dict[str, Any] | None) -> str:
    """NEWS2 as colour mark + number + word: never colour alone."""
    if badge is None:
        return "not shared"
    if badge.get("score") is None:
        return f"{COLOUR_MARK['grey']} {badge.get('label', 'No score yet')}"
    return f"{COLOUR_MARK.get(badge['colour'], '')} {badge['score']} {badge['label']}"


def obs_text(resident: dict[str, Any]) -> str:
    due = resident.get("next_obs_due")
    if resident.get("obs_overdue"):
        return "OVERDUE"
    if due:
        return f"due {datetime.fromisoformat(due).astimezone(LOCAL_TZ):%H:%M}"
    return "-"


def resident_rows(overview: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per resident for the care-home grid."""
    return [{
        "Resident": r["display_name"],
        "NEWS2": news2_text(r["news2"]),
        "Observations": obs_text(r),
        "Open alerts": f"{r['open_alerts']} ({r['worst_severity']})" if r["open_alerts"] else "0",
        "Devices": "; ".join(w["problem"] for w in r["device_warnings"]) or "ok",
    } for r in overview["residents"]]
