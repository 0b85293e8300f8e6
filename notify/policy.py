"""Escalation policy, as data and pure rules: who is told at which level, and when the next level is due.

A site's policy has three levels: 1 the staff on shift (the home's tablets, always), 2 the senior on shift, 3 the
manager on call. Each level has contacts (channel + recipient) and a window per severity: how long that level
has to acknowledge before the next is told. After acknowledgement, a medium or high NEWS2 alert needs an outcome
(monitoring plan, GP, 111, 999, admitted) within ``outcome_minutes``; without one it escalates again, from
level 2. :func:`next_step` decides; the shell (``carewatch.notify.escalation``) applies and delivers.

Only medium and high alerts are notified (alert fatigue: low and info alerts stay on the home's lists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from carewatch.alerts import ACK_WINDOW, OUTCOME_WINDOW, AlertKind, Severity
from carewatch.scoring.clinical_response import RESPONSES, Risk

MAX_LEVEL = 3
#: Severities that notify anyone; the rest stay on the dashboard's lists (H-ESC-04, alert fatigue).
NOTIFIED = frozenset({Severity.MEDIUM, Severity.HIGH})
#: ``notify_reason`` the alert transitions set when an alert gets worse: the level last told is told again at once.
RISEN = "risen"
#: The recipient of the dashboard channel: every signed-in tablet of the site.
TABLETS = "tablets"


class ChannelName(StrEnum):
    DASHBOARD = "dashboard"
    EMAIL = "email"
    SMS = "sms"
    WEBHOOK = "webhook"


class Reason(StrEnum):
    UNACKNOWLEDGED = "unacknowledged"
    #: Acknowledged: the outcome window runs from when the escalation pass first saw the acknowledgement, on the
    #: scorer's clock (a simulated-time demo acknowledges on the wall clock). Nobody is told.
    AWAITING_OUTCOME = "awaiting_outcome"
    NO_OUTCOME = "no_outcome"


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9 ]{10,16}$")


class Contact(BaseModel):
    channel: ChannelName
    recipient: str = Field(min_length=1, max_length=300, description="tablets, an email address, a mobile number "
                                                                       "or an https:// URL")
    name: str | None = Field(default=None, max_length=200, description="Who this is (for the delivery log)")

    @model_validator(mode="after")
    def _recipient_fits_channel(self) -> Contact:
        r = self.recipient.strip()
        ok = {ChannelName.DASHBOARD: r == TABLETS, ChannelName.EMAIL: bool(_EMAIL.match(r)),
              ChannelName.SMS: bool(_PHONE.match(r)),
              ChannelName.WEBHOOK: r.startswith(("https://", "http://"))}[self.channel]
        if not ok:
            raise ValueError(f"recipient {r!r} is not a valid {self.channel.value} recipient "
                             f"({'must be ' + repr(TABLETS) if self.channel is ChannelName.DASHBOARD else 'check it'})")
        self.recipient = r
        return self


def _minutes(window: timedelta | None) -> int:
    return int(window.total_seconds() // 60) if window else 0


DEFAULT_WINDOWS = {s.value: _minutes(ACK_WINDOW[s]) for s in (Severity.HIGH, Severity.MEDIUM)}
DEFAULT_OUTCOME_MINUTES = {s.value: _minutes(w) for s, w in OUTCOME_WINDOW.items()}
LEVEL_NAMES = {1: "Staff on shift", 2: "Senior on shift", 3: "Manager on call"}


class Level(BaseModel):
    level: int = Field(ge=1, le=MAX_LEVEL)
    name: str = Field(min_length=1, max_length=100)
    contacts: list[Contact] = Field(default_factory=list, max_length=20)
    window_minutes: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_WINDOWS),
        description="Minutes this level has to acknowledge, per severity (high, medium), before the next is told")

    @field_validator("window_minutes")
    @classmethod
    def _windows(cls, value: dict[str, int]) -> dict[str, int]:
        if set(value) != {"high", "medium"}:
            raise ValueError("give a window for 'high' and 'medium'")
        if any(not 1 <= v <= 24 * 60 for v in value.values()):
            raise ValueError("windows are 1 to 1440 minutes")
        if value["high"] > value["medium"]:
            raise ValueError("the high window cannot be longer than the medium one")
        return value


class EscalationPolicy(BaseModel):
    """A site's escalation policy (the API's body and what ``escalation_policies`` stores)."""

    levels: list[Level] = Field(min_length=MAX_LEVEL, max_length=MAX_LEVEL)
    outcome_minutes: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_OUTCOME_MINUTES))

    @model_validator(mode="after")
    def _shape(self) -> EscalationPolicy:
        if [lv.level for lv in self.levels] != list(range(1, MAX_LEVEL + 1)):
            raise ValueError("levels must be 1, 2 and 3, in order")
        if not any(c.channel is ChannelName.DASHBOARD for c in self.levels[0].contacts):
            raise ValueError("level 1 must include the dashboard (the home's tablets)")
        if set(self.outcome_minutes) != {"high", "medium"} or any(
                not 1 <= v <= 24 * 60 for v in self.outcome_minutes.values()):
            raise ValueError("outcome_minutes needs 'high' and 'medium', each 1 to 1440 minutes")
        if self.outcome_minutes["high"] > DEFAULT_OUTCOME_MINUTES["high"] or \
                self.outcome_minutes["medium"] > DEFAULT_OUTCOME_MINUTES["medium"]:
            raise ValueError(f"outcome windows may be shorter, never longer, than {DEFAULT_OUTCOME_MINUTES}")
        return self

    def level(self, n: int) -> Level:
        return self.levels[n - 1]

    def window(self, level: int, severity: Severity) -> timedelta:
        return timedelta(minutes=self.level(level).window_minutes[severity.value])

    def outcome_window(self, severity: Severity) -> timedelta:
        return timedelta(minutes=self.outcome_minutes[severity.value])

    def gaps(self) -> list[str]:
        """Levels nobody would be told at, in words (shown beside the policy and in the hazard log, H-ESC-01)."""
        return [f"level {lv.level} ({lv.name}) has nobody on it" for lv in self.levels if not lv.contacts]


def default_policy() -> EscalationPolicy:
    """A site without a policy: the tablets at level 1; levels 2 and 3 empty until a manager fills them in."""
    return EscalationPolicy(levels=[
        Level(level=1, name=LEVEL_NAMES[1], contacts=[Contact(channel=ChannelName.DASHBOARD, recipient=TABLETS)]),
        Level(level=2, name=LEVEL_NAMES[2]),
        Level(level=3, name=LEVEL_NAMES[3]),
    ])


# ------------------------------------------------------------------------------------------------------------
# The decision
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NotifyState:
    """What the rules need of one alert (or incident)."""

    kind: str
    severity: Severity
    status: str
    acknowledged_at: datetime | None
    notify_level: int  # the level last told (0: nobody yet)
    notify_reason: str | None  # why it was told ('unacknowledged', 'no_outcome')
    notify_due_at: datetime | None  # when the next level is due if nobody answers
    outcome_recorded: bool


@dataclass(frozen=True)
class Step:
    """Tell ``level``'s contacts now, because of ``reason``; the next step is due at ``next_due`` (None: last)."""

    level: int
    reason: Reason
    contacts: tuple[Contact, ...]
    next_due: datetime | None


def needs_outcome(kind: str, severity: Severity) -> bool:
    """A medium or high NEWS2 alert needs an outcome recorded after acknowledgement."""
    return kind == AlertKind.NEWS2.value and severity in OUTCOME_WINDOW


def outcome_due(policy: EscalationPolicy, state: NotifyState) -> datetime | None:
    """When the outcome is due (None: acknowledged not yet, recorded already, or no outcome needed)."""
    if state.acknowledged_at is None or state.outcome_recorded or not needs_outcome(state.kind, state.severity):
        return None
    if state.notify_reason == Reason.AWAITING_OUTCOME.value and state.notify_due_at is not None:
        return state.notify_due_at
    return state.acknowledged_at + policy.outcome_window(state.severity)


def next_step(policy: EscalationPolicy, state: NotifyState, now: datetime) -> Step | None:
    """The step due now for this alert, or None. Pure: the shell applies it and records every delivery.

    Unacknowledged: level 1 at once (new, or worse again after an acknowledgement), then each next level when
    the last one's window has passed, up to level 3. Acknowledged without the outcome it needs: when the outcome
    window has passed, the senior (level 2, or the level after the one that acknowledged) and then level 3."""
    if state.status == "resolved" or state.severity not in NOTIFIED:
        return None
    step_due = state.notify_due_at is not None and state.notify_due_at <= now
    if state.acknowledged_at is None:
        reason = Reason.UNACKNOWLEDGED
        if state.notify_reason == RISEN:
            level = max(1, state.notify_level)  # worse again: the level last told hears it now, at once
        elif state.notify_level == 0 or state.notify_reason != reason.value:
            level = 1  # new, or acknowledged and then worse again: the staff on shift first
        elif step_due and state.notify_level < MAX_LEVEL:
            level = state.notify_level + 1
        else:
            return None
    else:
        if outcome_due(policy, state) is None:
            return None
        reason = Reason.NO_OUTCOME
        if state.notify_reason not in (Reason.AWAITING_OUTCOME.value, reason.value):
            # just acknowledged: the outcome clock starts now; nobody is told
            return Step(state.notify_level, Reason.AWAITING_OUTCOME, (), now + policy.outcome_window(state.severity))
        if not step_due:
            return None
        if state.notify_reason == Reason.AWAITING_OUTCOME.value:
            level = min(MAX_LEVEL, max(2, state.notify_level + 1))  # the senior first, whoever acknowledged
        elif state.notify_level < MAX_LEVEL:
            level = state.notify_level + 1
        else:
            return None
    next_due = now + policy.window(level, state.severity) if level < MAX_LEVEL else None
    return Step(level, reason, tuple(policy.level(level).contacts), next_due)


# ------------------------------------------------------------------------------------------------------------
# What the message says
# ------------------------------------------------------------------------------------------------------------
def route_prompt(kind: str, severity: Severity, score: int | None, risk: str | None) -> str | None:
    """For NEWS2 5+ (medium or high band): the GP / NHS 111 / 999 route its clinical response gives."""
    if kind != AlertKind.NEWS2.value or score is None or score < 5:
        return None
    band = Risk.HIGH if (risk == Risk.HIGH.value or score >= 7) else Risk.MEDIUM
    return f"NEWS2 {score}: {RESPONSES[band].action}"


@dataclass(frozen=True)
class Message:
    """One notification, the same facts on every channel."""

    target_kind: str
    target_id: int
    site_id: str
    site_name: str
    level: int
    level_name: str
    reason: str
    severity: str
    subject: str
    text: str
    link: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"target_kind": self.target_kind, "target_id": self.target_id, "site_id": self.site_id,
                "site_name": self.site_name, "level": self.level, "level_name": self.level_name,
                "reason": self.reason, "severity": self.severity, "subject": self.subject, "text": self.text,
                "link": self.link}


def compose(*, target_kind: str, target_id: int, site_id: str, site_name: str, who: str, what: str,
            severity: Severity, step: Step, policy: EscalationPolicy, route: str | None, action: str,
            waited: timedelta | None, link: str | None = None) -> Message:
    """The words of one notification: who, what, why it reached this level, and what to do now."""
    level = policy.level(step.level)
    head = f"Carewatch {severity.value.upper()}: {who} at {site_name}: {what}"
    if step.reason is Reason.UNACKNOWLEDGED:
        why = ("New alert: please acknowledge it on the home's tablet." if step.level == 1 else
               f"Nobody has acknowledged it for {_minutes(waited)} min: you are level {step.level} "
               f"({level.name}).")
    else:
        why = (f"Acknowledged, but no outcome (monitoring plan, GP, 111, 999, admitted) was recorded within "
               f"{_minutes(waited)} min: you are level {step.level} ({level.name}).")
    text = " ".join(p for p in (head + ".", why, route or f"What to do: {action}") if p)
    return Message(target_kind, target_id, site_id, site_name, step.level, level.name, step.reason.value,
                   severity.value, head, text, link)
