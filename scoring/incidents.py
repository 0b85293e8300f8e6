"""Incidents: one thing to act on per subject. Pure: plain data in, a plan out (scoring/incident_store.py writes it).

A subject (resident, household, device, gateway) has at most one open incident. Its *components* are the
subject's unresolved alerts (NEWS2 and its parameters, the trend, baseline deviations, soft signs, overdue
observations, household and device rules), each keeping its own row and history in ``alerts``/``alert_events``.
The incident takes its headline, action and severity from its worst component and has one acknowledgement,
one owner and one outcome.

Re-alerting (H-INC-02): an incident needs a fresh acknowledgement when its NEWS2 clinical band rises (low ->
low-medium -> medium -> high, by RCP risk band, not by the severity enum, so a red 3 becoming a 5-6 re-alerts),
or when its severity rises. New components and changed values only update it.

Snooze (H-ALERT-07): ``snooze_hides`` says whether a suppression may hide a finding; it never hides a high
finding, a band rise or new soft signs.

docs/clinical-safety.md (H-INC-*) gives the hazard, cause, control and test of each rule here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from carewatch.alerts import (
    ACK_WINDOW,
    BAND_ACK_WINDOW,
    BAND_RANK,
    CLINICAL_KINDS,
    SEVERITY_RANK,
    AlertKind,
    Severity,
)

#: Which component heads an incident when severities tie: the most specific clinical evidence first.
KIND_PRIORITY: tuple[str, ...] = (
    AlertKind.NEWS2, AlertKind.SOFT_SIGNS, AlertKind.NEWS2_RISING, AlertKind.SPO2_BELOW_BASELINE,
    AlertKind.TEMPERATURE_ABOVE_BASELINE, AlertKind.DATA_FAULT, AlertKind.OBS_OVERDUE,
    AlertKind.LONG_BATHROOM_STAY, AlertKind.LONG_LIE, AlertKind.OUT_NOT_BACK, AlertKind.NO_MORNING_ACTIVITY,
    AlertKind.KITCHEN_INACTIVITY, AlertKind.NIGHT_BATHROOM, AlertKind.ROOM_COLD, AlertKind.ROOM_HOT,
    AlertKind.HOUSEHOLD_SILENT, AlertKind.SCORING_STALLED, AlertKind.GATEWAY_OFFLINE, AlertKind.DEVICE_SILENT,
    AlertKind.DEVICE_FAULT, AlertKind.BATTERY_LOW,
)
_PRIORITY = {str(k): i for i, k in enumerate(KIND_PRIORITY)}
#: Risk bands of the last set that make overdue observations part of an incident rather than a task.
OVERDUE_JOINS_FROM_BANDS = frozenset({"low-medium", "medium", "high"})

PlanAction = Literal["none", "open", "update", "resolve"]


@dataclass(frozen=True)
class Component:
    """One unresolved alert of the subject, as the incident needs it."""

    alert_id: int
    kind: str
    severity: Severity
    reason: str
    action: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def band(self) -> str | None:
        """The NEWS2 risk band this component states (only the news2 component states one)."""
        if self.kind == AlertKind.NEWS2:
            risk = self.data.get("risk")
            return risk if risk in BAND_RANK else None
        return None

    @property
    def clinical(self) -> bool:
        return self.kind in CLINICAL_KINDS

    @property
    def soft_signs(self) -> frozenset[str]:
        if self.kind != AlertKind.SOFT_SIGNS:
            return frozenset()
        return frozenset(self.data.get("soft_signs") or ())


@dataclass(frozen=True)
class OpenIncident:
    """The subject's open incident as stored."""

    incident_id: int
    severity: Severity
    band: str | None
    status: str
    acknowledged_at: datetime | None
    ack_due_at: datetime | None
    headline: str
    action: str
    components: frozenset[int] = frozenset()


@dataclass(frozen=True)
class IncidentPlan:
    """What to write: open a new incident, update or resolve the open one, or nothing."""

    action: PlanAction
    severity: Severity | None = None
    band: str | None = None
    headline: str = ""
    action_text: str = ""
    category: str = ""
    components: tuple[Component, ...] = ()
    #: True: the incident needs acknowledging now (new, or its band/severity rose): acknowledgement cleared
    realert: bool = False
    ack_due_at: datetime | None = None
    #: plain-English events for incident_events: (action, detail)
    events: tuple[tuple[str, dict[str, Any]], ...] = ()


def band_rank(band: str | None) -> int:
    """-1 for no band, else the band's place in low < low-medium < medium < high."""
    return BAND_RANK.get(band, -1) if band is not None else -1


def overdue_joins_incident(last_risk: str | None, open_clinical: bool) -> bool:
    """Overdue observations are a task; they join an incident (and escalate) only when the last set was
    low-medium or worse, or the resident already has an open clinical incident (H-TASK-02)."""
    return open_clinical or last_risk in OVERDUE_JOINS_FROM_BANDS


def category_of(components: Sequence[Component]) -> str:
    kinds = {c.kind for c in components}
    if kinds & {str(k) for k in CLINICAL_KINDS} - {AlertKind.DATA_FAULT.value}:
        return "clinical"
    if AlertKind.DATA_FAULT.value in kinds:
        return "data"
    if kinds & {"device_silent", "device_fault", "battery_low", "gateway_offline", "scoring_stalled"} == kinds:
        return "device"  # the kit and the platform: nothing about the person's health or home life
    return "household"


def worst(components: Sequence[Component]) -> Component:
    """The component that heads the incident: highest severity, then KIND_PRIORITY, then the oldest alert."""
    return min(components, key=lambda c: (-SEVERITY_RANK[c.severity], _PRIORITY.get(c.kind, len(_PRIORITY)),
                                          c.alert_id))


def actionable(components: Sequence[Component]) -> list[Component]:
    """Components that make or keep an incident: not 'info' (evidence for a care review, never an incident)."""
    return [c for c in components if c.severity is not Severity.INFO]


def incident_band(components: Sequence[Component]) -> str | None:
    """The incident's NEWS2 band: the news2 component's, else 'low' for a clinical incident without one (soft
    signs or a trend at a low score), else none (households, devices)."""
    bands = [c.band for c in components if c.band is not None]
    if bands:
        return max(bands, key=band_rank)
    return "low" if any(c.clinical for c in components) else None


def _ack_window_due(severity: Severity, band: str | None, now: datetime) -> datetime | None:
    windows = [w for w in (ACK_WINDOW[severity], BAND_ACK_WINDOW.get(band) if band else None) if w is not None]
    if severity is Severity.INFO or not windows:
        return None
    return now + min(windows)


def plan_incident(current: OpenIncident | None, components: Sequence[Component], now: datetime) -> IncidentPlan:
    """Group a subject's unresolved alerts into its incident.

    Opens an incident on the first actionable component; afterwards new components and changed values update it,
    and a rise in NEWS2 band or severity clears its acknowledgement and sets a new deadline (the new band's
    window). When no actionable component is left the incident resolves.
    """
    live = actionable(components)
    if not live:
        if current is None:
            return IncidentPlan("none")
        return IncidentPlan("resolve", events=(("auto_resolved", {"why": "every component has cleared"}),))
    head = worst(live)
    severity, band = head.severity, incident_band(live)
    ordered = tuple(sorted(live, key=lambda c: (-SEVERITY_RANK[c.severity], _PRIORITY.get(c.kind, 99), c.alert_id)))
    common: dict[str, Any] = {"severity": severity, "band": band, "headline": head.reason, "action_text": head.action,
              "category": category_of(live), "components": ordered}
    if current is None:
        return IncidentPlan("open", realert=True, ack_due_at=_ack_window_due(severity, band, now),
                            events=(("opened", {"severity": severity.value, "band": band, "kind": head.kind}),),
                            **common)
    events: list[tuple[str, dict[str, Any]]] = []
    added = sorted({c.alert_id for c in live} - set(current.components))
    gone = sorted(set(current.components) - {c.alert_id for c in live})
    by_id = {c.alert_id: c for c in live}
    if added:
        events.append(("components_added", {"alerts": added, "kinds": [by_id[a].kind for a in added]}))
    if gone:
        events.append(("components_cleared", {"alerts": gone}))
    band_rose = band_rank(band) > band_rank(current.band)
    severity_rose = SEVERITY_RANK[severity] > SEVERITY_RANK[current.severity]
    realert = band_rose or severity_rose
    due = current.ack_due_at
    if realert:
        fresh = _ack_window_due(severity, band, now)
        # a rise never postpones a deadline that was already running
        pending = current.ack_due_at if current.acknowledged_at is None else None
        due = min((d for d in (fresh, pending) if d is not None), default=None)
        what = "band_rose" if band_rose else "severity_rose"
        events.append((what, {"from_band": current.band, "to_band": band, "from_severity": current.severity.value,
                              "to_severity": severity.value,
                              "needs_acknowledging_again": current.acknowledged_at is not None}))
    changed = (realert or added or gone or severity != current.severity or band != current.band
               or head.reason != current.headline or head.action != current.action)
    if not changed:
        return IncidentPlan("none", **common)
    if not realert and (severity != current.severity or band != current.band):
        events.append(("updated", {"from_band": current.band, "to_band": band,
                                   "from_severity": current.severity.value, "to_severity": severity.value}))
    return IncidentPlan("update", realert=realert, ack_due_at=due, events=tuple(events), **common)


# ------------------------------------------------------------------------------------------------------------
# Snooze
# ------------------------------------------------------------------------------------------------------------
def snooze_hides(kind: str, severity: Severity, data: Mapping[str, Any], open_data: Mapping[str, Any] | None,
                 open_severity: Severity | None) -> bool:
    """Whether an active snooze may hide this raised finding (H-ALERT-07).

    Never: a high finding; a NEWS2 band above the open news2 alert's band (or any band from low-medium up when
    none is open: a rise from low); soft signs not already in the open soft-signs alert; a severity rise.
    Otherwise the snooze holds the finding back (a refresh of what staff already decided to live with)."""
    if severity is Severity.HIGH:
        return False
    if open_severity is not None and SEVERITY_RANK[severity] > SEVERITY_RANK[open_severity]:
        return False
    if kind == AlertKind.NEWS2:
        new_band = data.get("risk")
        old_band = (open_data or {}).get("risk") if open_data is not None else "low"
        if band_rank(new_band) > band_rank(old_band):
            return False
    if kind == AlertKind.SOFT_SIGNS:
        new = set(data.get("soft_signs") or ())
        old = set((open_data or {}).get("soft_signs") or ())
        if new - old:
            return False
    return True
