"""The wire contract: topics, plausibility, and per-reading validation of a batch."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carewatch import wire
from carewatch.wire import Channel, ImplausibleValue, Metric, Reading

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def reading(seq: int = 1, metric: str = "spo2", value: float = 95, unit: str = "%", **extra) -> dict:
    return {"seq": seq, "device_id": "oxi-1", "device_kind": "pulse_oximeter", "metric": metric, "value": value,
            "unit": unit, "measured_at": T0.isoformat(), "received_at": T0.isoformat(), "flags": [], **extra}


def batch(*readings: dict, site: str = "home-a", gateway: str = "gw-1") -> bytes:
    return json.dumps({"v": 1, "site_id": site, "gateway_id": gateway, "sent_at": T0.isoformat(),
                       "readings": list(readings)}).encode()


def test_topics_round_trip() -> None:
    name = wire.topic("home-a", "gw-1", Channel.READINGS)
    assert name == "carewatch/v1/home-a/gw-1/readings"
    assert wire.parse_topic(name) == ("home-a", "gw-1", Channel.READINGS)
    assert wire.topic_filter(Channel.READINGS, share_group="ingest") == "$share/ingest/carewatch/v1/+/+/readings"


@pytest.mark.parametrize("bad", ["carewatch/v2/a/b/readings", "carewatch/v1/a/readings", "carewatch/v1/a/b/x"])
def test_foreign_topics_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        wire.parse_topic(bad)


@pytest.mark.parametrize(
    ("metric", "value"),
    [("spo2", 150), ("pulse_rate", -5), ("temperature", 60), ("motion", 0.5), ("spo2", float("nan"))],
)
def test_implausible_values_are_refused_with_a_reason(metric: str, value: float) -> None:
    with pytest.raises(ImplausibleValue) as info:
        wire.check_plausible(metric, value)
    assert metric in str(info.value)


def test_every_metric_has_a_spec() -> None:
    assert set(wire.METRICS) == set(Metric)


def test_batch_keeps_good_readings_and_explains_bad_ones() -> None:
    decoded = wire.decode_batch(batch(reading(1), reading(2, value=150), reading(3, unit="mmHg"), reading(4)))
    assert [r.seq for r in decoded.good] == [1, 4]
    reasons = {r.seq: r.reason for r in decoded.rejected}
    assert "outside the plausible range 40-100" in reasons[2]
    assert "must be sent in '%'" in reasons[3]


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"not json", "not JSON"), (b"[]", "JSON object"), (b'{"v": 2}', "bad header"),
     (batch(reading(1))[:-20] + b"}", "not JSON")],
)
def test_unusable_envelopes_raise_bad_message(payload: bytes, message: str) -> None:
    with pytest.raises(wire.BadMessage, match=message):
        wire.decode_batch(payload)


def test_naive_timestamps_and_unknown_fields_are_rejected() -> None:
    decoded = wire.decode_batch(batch(reading(1, measured_at="2026-11-22T08:00:00"), reading(2, colour="red")))
    assert not decoded.good
    assert "timezone" in decoded.rejected[0].reason
    assert "colour" in decoded.rejected[1].reason


def test_encode_then_decode_is_identity() -> None:
    readings = [Reading.model_validate(reading(i, value=90 + i)) for i in range(1, 6)]
    decoded = wire.decode_batch(wire.encode_batch("home-a", "gw-1", readings, sent_at=T0))
    assert decoded.good == readings and not decoded.rejected


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_errors(payload: bytes) -> None:
    with contextlib.suppress(wire.BadMessage):  # anything else escaping fails the test
        wire.decode_batch(payload)


# ------------------------------------------------------------------------------------------------------------
# resend requests (ingest -> gateway)
# ------------------------------------------------------------------------------------------------------------
def resend(ranges: object) -> dict:
    return {"v": 1, "site_id": "home-a", "gateway_id": "gw-1", "requested_at": T0.isoformat(), "ranges": ranges}


def test_resend_request_round_trips_on_its_own_topic() -> None:
    request = wire.ResendRequest.model_validate(resend([[3, 5], [9, 9]]))
    assert request.ranges == [(3, 5), (9, 9)]
    assert wire.ResendRequest.model_validate_json(request.model_dump_json()) == request
    name = wire.topic("home-a", "gw-1", Channel.RESEND)
    assert name == "carewatch/v1/home-a/gw-1/resend" and wire.parse_topic(name)[2] is Channel.RESEND


@pytest.mark.parametrize(
    ("ranges", "why"),
    [
        ([], "at least 1 item"),
        ([[5, 3]], "ends before it starts"),
        ([[0, 3]], "greater than or equal to 1"),
        ([[3, 5], [5, 8]], "overlaps or precedes"),
        ([[10, 12], [1, 2]], "overlaps or precedes"),
        ([[1, wire.MAX_RESEND_READINGS + 1]], "at most 100000"),
        ([[i * 3, i * 3 + 1] for i in range(1, wire.MAX_RESEND_RANGES + 2)], "at most 100 items"),
        ([[1, 2, 3]], "at most 2 items"),
        ([[1, wire.MAX_SEQ + 1]], "less than or equal to"),
    ],
)
def test_resend_request_limits_are_enforced_with_a_reason(ranges: object, why: str) -> None:
    with pytest.raises(wire.ValidationError) as info:
        wire.ResendRequest.model_validate(resend(ranges))
    assert why in wire.explain(info.value)
