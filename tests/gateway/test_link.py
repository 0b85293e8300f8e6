"""What every radio backend decides (``gateway/link.py``), without a radio: characteristics, retries and giving up,
silence, repeated measurements and the unheard gap that makes a stored measurement keep its own time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from carewatch.firmware_sim import frames
from carewatch.gateway import link
from carewatch.gateway.frames import resolve_measured_at
from carewatch.gateway.transport import Backoff
from carewatch.registry import RegisteredDevice
from carewatch.wire import DeviceKind, QualityFlag

OX = RegisteredDevice(address="C0:00:00:00:00:01", device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER)
RING = RegisteredDevice(address="C0:00:00:00:00:02", device_id="ring-1", kind=DeviceKind.PULSE_OXIMETER,
                        source="o2ring")
AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_each_characteristic_is_subscribed_read_or_skipped_with_a_reason() -> None:
    assert link.characteristics_for(OX) == ("2a5e", "2a5f", "2a19")
    assert link.characteristics_for(RING) == ("0734594a-a8e7-4b1a-a6b1-cd5243059a57",)
    assert link.plan_characteristic(OX, "2a5e", frozenset({"indicate"})) == ("subscribe", "")
    assert link.plan_characteristic(OX, "2a5f", None) == ("skip", "absent")
    assert link.plan_characteristic(OX, "2a19", frozenset({"read"})) == (
        "read", "cannot notify (properties: read); read every 3600 s instead")
    assert link.plan_characteristic(OX, "2a5e", frozenset({"read"}))[0] == "skip"  # only the battery is polled
    assert link.after_refusal(OX, "2a19", frozenset({"read", "notify"}), "refused")[0] == "read"
    assert link.after_refusal(OX, "2a5e", frozenset({"indicate"}), "refused") == ("skip", "refused")
    assert link.commands_for(RING) is link.LINK_COMMANDS["o2ring"] and link.commands_for(OX) is None


def test_backoff_grows_resets_after_a_stable_session_and_pairing_refusals_give_up_after_three() -> None:
    policy = link.Reconnect(Backoff(base=1.0, cap=8.0, rand=lambda: 1.0), stable_s=30.0)
    assert [policy.closed(0.0, TimeoutError()).delay_s for _ in range(3)] == [1.0, 2.0, 4.0]
    policy.connected(10.0)
    assert policy.closed(50.0) == link.Decision(True, 1.0)  # it lasted: back to the first delay
    refused = link.PairingError("bp-1 refused the stored bond key")
    first, second = policy.closed(60.0, refused), policy.closed(61.0, refused)
    assert first.retry and second.retry and first.fault == "bp-1 refused the stored bond key"
    last = policy.closed(62.0, refused)
    assert not last.retry and "gave up after 3 attempts" in (last.fault or "")
    fresh = link.Reconnect(Backoff(rand=lambda: 1.0))
    fresh.closed(0.0, refused)
    fresh.connected(1.0)
    fresh.closed(2.0)  # a session that got going: the count starts again
    assert fresh.pairing_failures == 0


def test_a_device_is_silent_after_ten_minutes_once_and_back_when_heard() -> None:
    watch = link.SilenceWatch(["A", "B"], now=0.0)
    watch.heard("B", 300.0)
    assert watch.check(599.0) == []
    assert watch.check(600.0) == ["A"]
    assert watch.check(700.0) == []  # said once
    assert watch.check(900.0) == ["B"]
    assert watch.heard("A", 901.0) is True and watch.heard("A", 902.0) is False
    assert watch.heard("stranger", 903.0) is False


def test_the_same_time_stamped_measurement_twice_is_one_measurement() -> None:
    guard = link.RepeatGuard(memory=2)
    stamped = frames.encode_blood_pressure(120, 80, 93, timestamp=AT.replace(tzinfo=None))
    unset = frames.encode_blood_pressure(120, 80, 93, with_timestamp=True)  # the "unknown" year 0
    assert not guard.is_repeat("A", "2a35", stamped) and guard.is_repeat("A", "2a35", stamped)
    assert not guard.is_repeat("B", "2a35", stamped)  # another device
    assert not guard.is_repeat("A", "2a35", unset) and not guard.is_repeat("A", "2a35", unset)
    battery = frames.encode_battery_level(50)
    assert not guard.is_repeat("A", "2a19", battery) and not guard.is_repeat("A", "2a19", battery)
    assert guard.repeats == 1


def test_a_device_time_in_the_unheard_gap_is_a_stored_measurement_and_outside_it_a_skewed_clock() -> None:
    gap = link.unheard_gap(AT - timedelta(hours=5), AT - timedelta(days=1), AT)
    assert gap == (AT - timedelta(hours=5), AT)
    first = link.unheard_gap(None, AT - timedelta(minutes=1), AT)  # first session since the gateway started
    assert first == (AT - timedelta(minutes=1) - timedelta(seconds=link.FIRST_GAP_S), AT)
    stored = (AT - timedelta(hours=3)).replace(tzinfo=None)
    assert resolve_measured_at(stored, AT, unheard=gap) == (AT - timedelta(hours=3), frozenset())
    assert resolve_measured_at(stored, AT) == (AT, frozenset({QualityFlag.CLOCK_SKEWED}))  # no gap known
    last_year = (AT - timedelta(days=365)).replace(tzinfo=None)
    assert resolve_measured_at(last_year, AT, unheard=gap) == (AT, frozenset({QualityFlag.CLOCK_SKEWED}))
    future = (AT + timedelta(hours=1)).replace(tzinfo=None)
    assert resolve_measured_at(future, AT, unheard=gap) == (AT, frozenset({QualityFlag.CLOCK_SKEWED}))
