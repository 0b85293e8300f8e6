from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from carewatch.gateway.frames import DecodedFrame, resolve_measured_at
from carewatch.wire import QualityFlag

RECEIVED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_device_time_within_skew_is_used_as_utc() -> None:
    device = datetime(2025, 3, 1, 11, 55, 30)  # naive: taken as UTC
    assert resolve_measured_at(device, RECEIVED) == (device.replace(tzinfo=UTC), frozenset())


def test_aware_device_time_is_converted_to_utc() -> None:
    device = datetime(2025, 3, 1, 13, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    measured, flags = resolve_measured_at(device, RECEIVED)
    assert measured == datetime(2025, 3, 1, 12, 1, 0, tzinfo=UTC) and measured.tzinfo is UTC and not flags


@pytest.mark.parametrize("offset", [timedelta(minutes=10, seconds=1), -timedelta(hours=3), timedelta(days=400)])
def test_skewed_device_clock_falls_back_to_receive_time(offset: timedelta) -> None:
    device = (RECEIVED + offset).replace(tzinfo=None)
    assert resolve_measured_at(device, RECEIVED) == (RECEIVED, frozenset({QualityFlag.CLOCK_SKEWED}))


def test_skew_limit_is_inclusive_and_configurable() -> None:
    device = (RECEIVED - timedelta(minutes=10)).replace(tzinfo=None)
    assert resolve_measured_at(device, RECEIVED)[1] == frozenset()
    assert resolve_measured_at(device, RECEIVED, max_skew=timedelta(minutes=5))[1] == {QualityFlag.CLOCK_SKEWED}


def test_missing_device_time_is_clock_not_set() -> None:
    assert resolve_measured_at(None, RECEIVED, clock_not_set=True) == (RECEIVED, frozenset({QualityFlag.CLOCK_NOT_SET}))


def test_frame_without_a_time_field_is_measured_when_heard() -> None:
    assert resolve_measured_at(None, RECEIVED) == (RECEIVED, frozenset())


def test_naive_receive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        resolve_measured_at(None, datetime(2025, 1, 1))


def test_json_dict_formats_timestamps_and_flags() -> None:
    frame = DecodedFrame(
        source="2a1c",
        fields={"temperature_c": None, "timestamp": datetime(2012, 12, 5, 11, 50, 27)},
        null_reasons={"temperature_c": "NaN"},
        flags=frozenset({QualityFlag.QUESTIONABLE, QualityFlag.CLOCK_SKEWED}),
    )
    assert frame.to_json_dict() == {
        "temperature_c": None,
        "timestamp": "2012-12-05T11:50:27",
        "null_reasons": {"temperature_c": "NaN"},
        "flags": ["clock_skewed", "questionable"],
    }
    assert not frame.trusted
