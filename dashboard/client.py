"""The dashboard's only way to data: the Carewatch API over HTTP (never the database).

``ApiClient`` signs in as the person using the dashboard, so the API's role scoping and audit trail apply to
everything they see. When the short-lived access token expires it swaps the refresh token once and retries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from carewatch.alerts import SEVERITY_RANK, UNRESOLVED_STATUSES

LOCAL_TZ = ZoneInfo("Europe/London")  # staff read clock times in UK local time
UNRESOLVED = UNRESOLVED_STATUSES  # alerts (automatic escalation has its own status)
UNRESOLVED_INCIDENTS = ("open", "acknowledged", "escalated", "auto_escalated")
#: Items the API serves per page at most (``limit``); the client follows ``next_offset`` from page to page.
PAGE_SIZE = 500
#: Most items one list gathers: enough for any real home, practice or council, small enough that a page still
#: draws quickly. A list stopped here says so (``Items.truncated``) and the page shows a note.
MAX_ITEMS = 5000

_http_lock = threading.Lock()
_http_clients: dict[tuple[str, float], httpx.Client] = {}


def _http(base_url: str, timeout: float) -> httpx.Client:
    """One keep-alive connection pool per API address, shared by every session of this dashboard process."""
    with _http_lock:
        client = _http_clients.get((base_url, timeout))
        if client is None or client.is_closed:
            client = httpx.Client(base_url=base_url, timeout=timeout)
            _http_clients[(base_url, timeout)] = client
        return client


class Items(list[dict[str, Any]]):
    """The items of a paged API list, all pages gathered; ``truncated`` says it stopped at the upper bound with
    more still on the server (so a page can say so instead of silently showing part of the list)."""

    truncated: bool = False


class ApiError(RuntimeError):
    """The API refused or failed; the message is the API's own explanation."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail")
        if isinstance(detail, list):
            return "; ".join(f"{d.get('field', '')}: {d.get('msg', '')}" if isinstance(d, dict) else str(d)
                             for d in detail)
        return detail if isinstance(detail, str) else str(detail)
    return str(body)


#: Sent in practice mode (the API's carewatch.api.deps.PRACTICE_HEADER; the dashboard imports no API code).
PRACTICE_HEADER = "X-Carewatch-Practice"


def _with_comment(body: dict[str, Any], comment: str | None) -> dict[str, Any]:
    """A request body with the person's comment added when they wrote one (an empty one is not sent)."""
    return {**body, "comment": comment} if comment else body


@dataclass
class ApiClient:
    base_url: str
    token: str | None = None
    refresh_token: str | None = None
    timeout: float = 15.0
    on_tokens: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)
    practice: bool = False  # practice mode (training): the API shows the practice resident only

    # -- transport ---------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.practice:
            headers[PRACTICE_HEADER] = "1"
        return _http(self.base_url, self.timeout).request(method, path, headers=headers, **kwargs)

    def _raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
        if response.status_code == 401 and self.refresh_token and not path.startswith("/auth/"):
            self._refresh()
            response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        return response

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._raw(method, path, **kwargs)
        return response.json() if response.content else None

    def _items(self, path: str, params: dict[str, Any], most: int | None = None, key: str | None = None) -> Items:
        """Every item of a paged list, following ``next_offset`` until the last page or ``most`` items
        (default ``MAX_ITEMS``). ``key`` drops an item seen on an earlier page (rows can shift between pages
        while new ones arrive)."""
        most = MAX_ITEMS if most is None else most
        out, seen, offset = Items(), set(), 0
        while True:
            page = self._request("GET", path, params={**params, "limit": max(1, min(PAGE_SIZE, most - len(out))),
                                                      "offset": offset})
            for item in page["items"]:
                if key is None or item[key] not in seen:
                    out.append(item)
                    if key is not None:
                        seen.add(item[key])
            offset = page.get("next_offset")
            if offset is None:
                return out
            if len(out) >= most:
                out.truncated = True
                return out

    def _refresh(self) -> None:
        response = self._send("POST", "/auth/refresh", json={"refresh_token": self.refresh_token})
        if response.status_code != 200:
            self.refresh_token = None
            raise ApiError(401, "your session has expired: sign in again")
        self._take(response.json())

    def _take(self, tokens: dict[str, Any]) -> None:
        self.token = tokens["access_token"]
        self.refresh_token = tokens.get("refresh_token")
        if self.on_tokens is not None:
            self.on_tokens(tokens)

    # -- sign-in -----------------------------------------------------------------------------------------
    def login(self, username: str, password: str) -> dict[str, Any]:
        tokens = self._request("POST", "/auth/token", data={"username": username, "password": password})
        self._take(tokens)
        return tokens

    def me(self) -> dict[str, Any]:
        return self._request("GET", "/auth/me")

    # -- sites and residents -----------------------------------------------------------------------------
    def sites(self, kind: str | None = None) -> Items:
        return self._items("/sites", {"kind": kind} if kind else {}, key="site_id")

    def overview(self, site_id: str) -> dict[str, Any]:
        return self._request("GET", f"/sites/{site_id}/overview")

    def residents(self, site: str | None = None) -> Items:
        return self._items("/residents", {"site": site} if site else {}, key="resident_id")

    def resident(self, resident_id: str) -> dict[str, Any]:
        return self._request("GET", f"/residents/{resident_id}")

    def monitoring(self, resident_id: str) -> dict[str, Any]:
        return self._request("GET", f"/residents/{resident_id}/monitoring")

    def baselines(self, resident_id: str) -> dict[str, Any]:
        return self._request("GET", f"/residents/{resident_id}/baselines")

    def readings(self, resident_id: str, metric: str, start: datetime, end: datetime) -> dict[str, Any]:
        return self._request("GET", f"/residents/{resident_id}/readings",
                             params={"metric": metric, "from": start.isoformat(), "to": end.isoformat()})

    def sbard(self, resident_id: str) -> dict[str, Any]:
        return self._request("GET", f"/residents/{resident_id}/sbard")

    def sbard_text(self, resident_id: str) -> str:
        return self._raw("GET", f"/residents/{resident_id}/sbard", params={"format": "text"}).text

    # -- observations ------------------------------------------------------------------------------------
    def prefill(self, resident_id: str, minutes: int = 15) -> dict[str, Any]:
        return self._request("GET", f"/residents/{resident_id}/observations/prefill", params={"minutes": minutes})

    def record_observation(self, resident_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", f"/residents/{resident_id}/observations", json=body)

    def observations(self, resident_id: str, since: datetime | None = None, most: int | None = None) -> Items:
        params: dict[str, Any] = {"since": since.isoformat()} if since is not None else {}
        return self._items(f"/residents/{resident_id}/observations", params, most, key="obs_id")

    # -- shared kits (measurement sessions) ---------------------------------------------------------------
    def kits(self, site: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/kits", params={"site": site} if site else {})

    def start_session(self, kit_id: str, resident_id: str, *, replace: bool = False) -> dict[str, Any]:
        return self._request("POST", f"/kits/{kit_id}/sessions", json={"resident_id": resident_id,
                                                                         "replace": replace})

    def practice_home(self, site_id: str) -> dict[str, Any]:
        return self._request("POST", f"/sites/{site_id}/practice")

    def practice_condition(self, site_id: str, condition: str) -> dict[str, Any]:
        return self._request("PUT", f"/sites/{site_id}/practice", json={"condition": condition})

    def kit_session(self, session_id: int) -> dict[str, Any]:
        return self._request("GET", f"/kit-sessions/{session_id}")

    def end_session(self, session_id: int, reason: str = "ended") -> dict[str, Any]:
        return self._request("POST", f"/kit-sessions/{session_id}/end", json={"reason": reason})

    def claim(self, session_id: int, readings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return self._request("POST", f"/kit-sessions/{session_id}/claim", json={"readings": readings or []})

    def kit_readings(self, kit_id: str, minutes: int = 60) -> list[dict[str, Any]]:
        return self._request("GET", f"/kits/{kit_id}/readings", params={"minutes": minutes})

    def unassigned(self, kit_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/kits/{kit_id}/unassigned")

    def move_reading(self, gateway_id: str, seq: int, to_resident_id: str, reason: str | None = None
                     ) -> dict[str, Any]:
        return self._request("POST", "/readings/move", json={"gateway_id": gateway_id, "seq": seq,
                                                              "to_resident_id": to_resident_id, "reason": reason})

    # -- alerts ------------------------------------------------------------------------------------------
    def alerts(self, site: str | None = None, resident: str | None = None, statuses: tuple[str, ...] = UNRESOLVED,
               severities: tuple[str, ...] | None = None, most: int | None = None) -> Items:
        """Most severe first, then newest (the API's order). ``severities`` is filtered by the API, so a long
        list of low alerts cannot push the high ones past the upper bound."""
        params: dict[str, Any] = {"status": list(statuses)}
        if site:
            params["site"] = site
        if resident:
            params["resident"] = resident
        if severities:
            params["severity"] = list(severities)
        return self._items("/alerts", params, most, key="alert_id")

    def alert(self, alert_id: int) -> dict[str, Any]:
        return self._request("GET", f"/alerts/{alert_id}")

    def acknowledge(self, alert_id: int, comment: str | None = None) -> dict[str, Any]:
        return self._request("POST", f"/alerts/{alert_id}/acknowledge", json=_with_comment({}, comment))

    def escalate(self, alert_id: int, outcome: str, comment: str | None = None) -> dict[str, Any]:
        return self._request("POST", f"/alerts/{alert_id}/escalate",
                             json=_with_comment({"outcome": outcome}, comment))

    def record_outcome(self, alert_id: int, outcome: str, comment: str | None = None) -> dict[str, Any]:
        return self._request("POST", f"/alerts/{alert_id}/outcome",
                             json=_with_comment({"outcome": outcome}, comment))

    def deliveries(self, alert_id: int) -> list[dict[str, Any]]:
        return self._request("GET", f"/alerts/{alert_id}/deliveries")

    def banner(self, site_id: str) -> dict[str, Any]:
        return self._request("GET", f"/sites/{site_id}/banner")

    def site_deliveries(self, site_id: str, most: int = 200) -> Items:
        return self._items(f"/sites/{site_id}/deliveries", {}, most, key="delivery_id")

    def escalation_policy(self, site_id: str) -> dict[str, Any]:
        return self._request("GET", f"/sites/{site_id}/escalation-policy")

    def set_escalation_policy(self, site_id: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Managers and admins (audited)."""
        return self._request("PUT", f"/sites/{site_id}/escalation-policy", json=policy)

    def resolve(self, alert_id: int, resolution: str) -> dict[str, Any]:
        return self._request("POST", f"/alerts/{alert_id}/resolve", json={"resolution": resolution})

    def comment(self, alert_id: int, text: str) -> dict[str, Any]:
        return self._request("POST", f"/alerts/{alert_id}/comment", json={"text": text})

    # -- incidents and tasks ------------------------------------------------------------------------------
    def incidents(self, site: str | None = None, resident: str | None = None,
                  statuses: tuple[str, ...] = UNRESOLVED_INCIDENTS, most: int | None = None,
                  severities: tuple[str, ...] = ()) -> Items:
        """One per person, home, device or hub, worst first, each with its unresolved components. Severities are
        filtered by the API (a page filtered here would miss the rest)."""
        params: dict[str, Any] = {"status": list(statuses)}
        if severities:
            params["severity"] = list(severities)
        if site:
            params["site"] = site
        if resident:
            params["resident"] = resident
        return self._items("/incidents", params, most, key="incident_id")

    def incident(self, incident_id: int) -> dict[str, Any]:
        return self._request("GET", f"/incidents/{incident_id}")

    def acknowledge_incident(self, incident_id: int, comment: str | None = None) -> dict[str, Any]:
        return self._request("POST", f"/incidents/{incident_id}/acknowledge",
                             json=_with_comment({}, comment))

    def incident_outcome(self, incident_id: int, outcome: str, comment: str | None = None) -> dict[str, Any]:
        return self._request("POST", f"/incidents/{incident_id}/outcome",
                             json=_with_comment({"outcome": outcome}, comment))

    def escalate_incident(self, incident_id: int, outcome: str, comment: str | None = None) -> dict[str, Any]:
        """A person escalated it outside the home (GP, NHS 111, 999...)."""
        return self._request("POST", f"/incidents/{incident_id}/escalate",
                             json=_with_comment({"outcome": outcome}, comment))

    def resolve_incident(self, incident_id: int, resolution: str) -> dict[str, Any]:
        return self._request("POST", f"/incidents/{incident_id}/resolve", json={"resolution": resolution})

    def tasks(self, site_id: str) -> dict[str, Any]:
        return self._request("GET", f"/sites/{site_id}/tasks")

    # -- households --------------------------------------------------------------------------------------
    def behaviour(self, site_id: str, days: int = 28) -> dict[str, Any]:
        return self._request("GET", f"/households/{site_id}/behaviour", params={"days": days})

    @staticmethod
    def _calculator(days: int, hours_released: float | None, hourly_rate: float | None,
                    caseload: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {"days": days}
        for name, value in (("hours_released", hours_released), ("hourly_rate", hourly_rate),
                            ("caseload", caseload)):
            if value is not None:
                params[name] = value
        return params

    def rightsizing(self, site_id: str, days: int = 28, hours_released: float | None = None,
                    hourly_rate: float | None = None, caseload: int | None = None) -> dict[str, Any]:
        return self._request("GET", f"/households/{site_id}/rightsizing",
                             params=self._calculator(days, hours_released, hourly_rate, caseload))

    def report_csv(self, site_id: str, days: int = 28) -> bytes:
        return self._raw("GET", f"/households/{site_id}/report.csv", params={"days": days}).content

    def report_pdf(self, site_id: str, days: int = 28, hours_released: float | None = None,
                   hourly_rate: float | None = None, caseload: int | None = None) -> bytes:
        return self._raw("GET", f"/households/{site_id}/report.pdf",
                         params=self._calculator(days, hours_released, hourly_rate, caseload)).content

    # -- estate ------------------------------------------------------------------------------------------
    def devices(self, site: str | None = None) -> Items:
        return self._items("/devices", {"site": site} if site else {}, key="device_id")

    def gateways(self, site: str | None = None) -> Items:
        return self._items("/gateways", {"site": site} if site else {}, key="gateway_id")

    def dead_letters(self, site: str | None = None, most: int | None = None) -> Items:
        return self._items("/dead-letters", {"site": site} if site else {}, most, key="dl_id")

    def adoption(self, days: int = 28, site: str | None = None) -> dict[str, Any]:
        return self._request("GET", "/reports/adoption", params={"days": days, **({"site": site} if site else {})})


# ------------------------------------------------------------------------------------------------------------
# Wording shared by the pages (pure)
# ------------------------------------------------------------------------------------------------------------
def local_time(value: str | datetime | None, fmt: str = "%H:%M") -> str:
    if value is None:
        return "-"
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.astimezone(LOCAL_TZ).strftime(fmt)


def ago(value: str | datetime | None, now: datetime) -> str:
    """'5 min ago', '3 h ago', '2 days ago' (or 'never')."""
    if value is None:
        return "never"
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    minutes = int((now - at).total_seconds() // 60)
    if minutes < 1:
        return "just now"
    if minutes < 90:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        return f"{minutes // 60} h ago"
    return f"{minutes // (24 * 60)} days ago"


def urgency(resident: dict[str, Any]) -> tuple[int, int, int, int, str]:
    """Sort key: most worrying first (worst open alert, NEWS2, overdue observations, device problems), then name."""
    score = (resident.get("news2") or {}).get("score")
    return (-SEVERITY_RANK.get(resident.get("worst_severity") or "", -1), -(score if score is not None else -1),
            -int(bool(resident.get("obs_overdue"))), -len(resident.get("device_warnings") or []),
            resident["display_name"])
