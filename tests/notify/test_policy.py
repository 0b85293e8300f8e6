"""The escalation policy's pure rules: validation, which level is told when, and what the message says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from carewatch.alerts import Severity
from carewatch.notify.policy import (
    ChannelName,
    Contact,
    EscalationPolicy,
    Level,
    NotifyState,
    Reason,
    compose,
    default_policy,
    next_step,
    route_prompt,
)

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


def policy(**outcome: int) -> EscalationPolicy:
    return EscalationPolicy(levels=[
        Level(level=1, name="Staff on shift", contacts=[Contact(channel=ChannelName.DASHBOARD, recipient="tablets")],
              window_minutes={"high": 5, "medium": 30}),
        Level(level=2, name="Senior on shift", contacts=[Contact(channel=ChannelName.SMS, recipient="07700900001")],
              window_minutes={"high": 7, "medium": 40}),
        Level(level=3, name="Manager on call", contacts=[Contact(channel=ChannelName.EMAIL, recipient="m@x.test")]),
    ], outcome_minutes={"high": 15, "medium": 60, **outcome})


def state(**kw: object) -> NotifyState:
    base: dict[str, object] = {"kind": "news2", "severity": Severity.HIGH, "status": "open", "acknowledged_at": None,
                               "notify_level": 0, "notify_reason": None, "notify_due_at": None,
                               "outcome_recorded": False}
    return NotifyState(**{**base, **kw})  # type: ignore[arg-type]


def test_unacknowledged_walks_the_levels_at_their_windows() -> None:
    p = policy()
    first = next_step(p, state(), T0)
    assert first is not None and (first.level, first.reason, first.next_due) == (1, Reason.UNACKNOWLEDGED,
                                                                                T0 + timedelta(minutes=5))
    told_1 = state(notify_level=1, notify_reason="unacknowledged", notify_due_at=first.next_due)
    assert next_step(p, told_1, T0 + timedelta(minutes=4, seconds=59)) is None
    second = next_step(p, told_1, T0 + timedelta(minutes=5))
    assert second is not None and second.level == 2 and second.next_due == T0 + timedelta(minutes=12)
    assert [c.recipient for c in second.contacts] == ["07700900001"]
    told_2 = state(notify_level=2, notify_reason="unacknowledged", notify_due_at=second.next_due,
                   status="auto_escalated")
    third = next_step(p, told_2, T0 + timedelta(minutes=12))
    assert third is not None and third.level == 3 and third.next_due is None
    assert next_step(p, state(notify_level=3, notify_reason="unacknowledged", notify_due_at=None),
                     T0 + timedelta(hours=5)) is None


def test_medium_uses_its_own_windows_and_low_or_info_never_notify() -> None:
    step = next_step(policy(), state(severity=Severity.MEDIUM), T0)
    assert step is not None and step.next_due == T0 + timedelta(minutes=30)
    for sev in (Severity.LOW, Severity.INFO):
        assert next_step(policy(), state(severity=sev), T0) is None
    assert next_step(policy(), state(status="resolved"), T0) is None


def test_after_acknowledgement_a_news2_alert_needs_an_outcome_or_goes_to_the_senior() -> None:
    p = policy()
    acked = state(acknowledged_at=T0, notify_level=1, notify_reason="unacknowledged",
                  notify_due_at=T0 + timedelta(minutes=5))
    start = next_step(p, acked, T0 + timedelta(minutes=1))  # the pass sees the acknowledgement: the clock starts
    assert start is not None and (start.reason, start.contacts, start.next_due) == (
        Reason.AWAITING_OUTCOME, (), T0 + timedelta(minutes=16))
    waiting = state(acknowledged_at=T0, notify_level=1, notify_reason="awaiting_outcome",
                    notify_due_at=start.next_due)
    assert next_step(p, waiting, T0 + timedelta(minutes=15)) is None  # within the 15 min outcome window
    step = next_step(p, waiting, T0 + timedelta(minutes=16))
    assert step is not None and (step.level, step.reason) == (2, Reason.NO_OUTCOME)
    again = state(acknowledged_at=T0, notify_level=2, notify_reason="no_outcome", notify_due_at=step.next_due)
    last = next_step(p, again, step.next_due)  # type: ignore[arg-type]
    assert last is not None and (last.level, last.reason) == (3, Reason.NO_OUTCOME)
    assert next_step(p, state(acknowledged_at=T0, notify_level=3, notify_reason="no_outcome",
                              notify_due_at=None), T0 + timedelta(hours=3)) is None
    assert next_step(p, state(acknowledged_at=T0, outcome_recorded=True), T0 + timedelta(hours=3)) is None
    # other kinds need no outcome: acknowledging ends their escalation
    assert next_step(p, state(kind="soft_signs", severity=Severity.MEDIUM, acknowledged_at=T0),
                     T0 + timedelta(hours=3)) is None
    # medium: 60 minutes
    med = next_step(p, state(severity=Severity.MEDIUM, acknowledged_at=T0, notify_level=1,
                             notify_reason="unacknowledged"), T0)
    assert med is not None and med.next_due == T0 + timedelta(minutes=60)


def test_worse_again_tells_the_level_last_told_at_once() -> None:
    reopened = state(notify_level=2, notify_reason="no_outcome", notify_due_at=T0 + timedelta(hours=1))
    step = next_step(policy(), reopened, T0)
    assert step is not None and (step.level, step.reason) == (1, Reason.UNACKNOWLEDGED)
    risen = state(notify_level=2, notify_reason="risen", notify_due_at=T0 + timedelta(hours=1))
    step = next_step(policy(), risen, T0)
    assert step is not None and (step.level, step.reason, step.next_due) == (
        2, Reason.UNACKNOWLEDGED, T0 + timedelta(minutes=7))  # the high window of level 2, from now


def test_policy_validation() -> None:
    assert default_policy().gaps() == ["level 2 (Senior on shift) has nobody on it",
                                       "level 3 (Manager on call) has nobody on it"]
    with pytest.raises(ValidationError, match="level 1 must include the dashboard"):
        EscalationPolicy(levels=[Level(level=1, name="a"), Level(level=2, name="b"), Level(level=3, name="c")])
    with pytest.raises(ValidationError, match="not a valid email"):
        Contact(channel=ChannelName.EMAIL, recipient="not-an-address")
    with pytest.raises(ValidationError, match="not a valid sms"):
        Contact(channel=ChannelName.SMS, recipient="call me")
    with pytest.raises(ValidationError, match="high window cannot be longer"):
        Level(level=2, name="b", window_minutes={"high": 90, "medium": 60})
    with pytest.raises(ValidationError, match="never longer"):
        policy(high=30)
    with pytest.raises(ValidationError, match="levels must be 1, 2 and 3"):
        EscalationPolicy(levels=[*policy().levels[:1], *policy().levels[2:], *policy().levels[1:2]])


def test_news2_5_or_more_prompts_the_route_of_its_response() -> None:
    assert route_prompt("news2", Severity.HIGH, 8, "high") is not None
    assert "Call 999 now" in (route_prompt("news2", Severity.HIGH, 8, "high") or "")
    assert "GP or NHS 111" in (route_prompt("news2", Severity.MEDIUM, 5, "medium") or "")
    assert route_prompt("news2", Severity.MEDIUM, 3, "low-medium") is None
    assert route_prompt("soft_signs", Severity.MEDIUM, None, None) is None
    p = policy()
    step = next_step(p, state(notify_level=1, notify_reason="unacknowledged", notify_due_at=T0), T0)
    assert step is not None
    msg = compose(target_kind="alert", target_id=7, site_id="oak", site_name="Oakview", who="Mrs A",
                  what="NEWS2 score", severity=Severity.HIGH, step=step, policy=p,
                  route=route_prompt("news2", Severity.HIGH, 8, "high"), action="x",
                  waited=timedelta(minutes=5))
    assert msg.subject == "Carewatch HIGH: Mrs A at Oakview: NEWS2 score"
    assert "Nobody has acknowledged it for 5 min: you are level 2 (Senior on shift)" in msg.text
    assert "Call 999 now" in msg.text
