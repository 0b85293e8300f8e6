"""Pure classification rules: what is stored, what is dead-lettered and why."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from carewatch.ingest.validate import (
    DeviceInfo,
    Directory,
    ReadingsMessage,
    ReasonClass,
    classify,
    classify_event,
    classify_status,
    raw_text,
    topic_mismatch,
)
from carewatch.wire import Channel, DeviceKind, GatewayEvent, GatewayStatus, Metric, Reading, encode_batch, topic

T0 = datetime(2025, 1, 1, 12, tzinfo=UTC)
DIRECTORY = Directory(
    gateways={"gw-a": "site-a", "gw-b": "site-b"},
    devices={
        "oxi-1": DeviceInfo("oxi-1", "site-a", "res-1", "resident"),
        "pir-1": DeviceInfo("pir-1", "site-a", "site-a", "household"),
        "oxi-old": DeviceInfo("oxi-old", "site-a", "site-a", "household", active=False),
        "oxi-b": DeviceInfo("oxi-b", "site-b", "res-b", "resident"),
    },
)


def reading(seq: int, device: str = "oxi-1", value: float = 97) -> Reading:
    return Reading(seq=seq, device_id=device, device_kind=DeviceKind.PULSE_OXIMETER, metric=Metric.SPO2,
                   value=value, unit="%", measured_at=T0 + timedelta(seconds=seq),
                   received_at=T0 + timedelta(seconds=seq, milliseconds=200))


def message(readings: list[Reading], *, site: str = "site-a", gateway: str = "gw-a",
            topic_site: str | None = None, topic_gateway: str | None = None, extra: list[dict] = ()) -> ReadingsMessage:
    payload = json.loads(encode_batch(site, gateway, readings))
    payload["readings"].extend(extra)
    name = topic(topic_site or site, topic_gateway or gateway, Channel.READINGS)
    return ReadingsMessage.from_payload(name, json.dumps(payload).encode())


def test_good_readings_resolve_to_subject_and_bad_ones_say_why() -> None:
    implausible = reading(3).model_dump(mode="json") | {"value": 12}
    out = classify([message([reading(1), reading(2, "pir-1")], extra=[implausible])], DIRECTORY)
    assert [(r.seq, r.subject_id, r.site_id) for r in out.rows] == [(1, "res-1", "site-a"), (2, "site-a", "site-a")]
    assert out.readings_in == 3
    [bad] = out.dead_letters
    assert bad.reason_class is ReasonClass.INVALID_READING
    assert "spo2=12 % is outside the plausible range 40-100" in bad.reason
    assert (bad.seq, bad.device_id, bad.gateway_id, bad.site_id) == (3, "oxi-1", "gw-a", "site-a")
    assert json.loads(bad.raw)["value"] == 12


def test_unknown_foreign_and_inactive_devices_are_dead_lettered_one_by_one() -> None:
    out = classify([message([reading(1), reading(2, "ghost"), reading(3, "oxi-b"), reading(4, "oxi-old")])],
                   DIRECTORY)
    assert [r.seq for r in out.rows] == [1]
    by_seq = {d.seq: d for d in out.dead_letters}
    assert by_seq[2].reason_class is ReasonClass.UNKNOWN_DEVICE and "'ghost' is not registered" in by_seq[2].reason
    assert by_seq[3].reason_class is ReasonClass.DEVICE_SITE_MISMATCH and "site-b" in by_seq[3].reason
    assert by_seq[4].reason_class is ReasonClass.DEVICE_INACTIVE
    assert json.loads(by_seq[2].raw)["device_id"] == "ghost"


def test_topic_naming_another_site_rejects_the_whole_message() -> None:
    out = classify([message([reading(1), reading(2)], topic_site="site-b", topic_gateway="gw-b")], DIRECTORY)
    assert out.rows == []
    [letter] = out.dead_letters
    assert letter.reason_class is ReasonClass.TOPIC_MISMATCH
    assert "may not write into another site" in letter.reason
    assert json.loads(letter.raw)["site_id"] == "site-a"  # the raw payload, as received


def test_unregistered_gateway_and_gateway_of_another_site_are_refused() -> None:
    unknown = classify([message([reading(1)], gateway="gw-x")], DIRECTORY)
    assert [d.reason_class for d in unknown.dead_letters] == [ReasonClass.UNKNOWN_GATEWAY]
    assert unknown.rows == [] and unknown.gateways_heard == {}
    moved = classify([message([reading(1)], gateway="gw-b")], DIRECTORY)  # gw-b belongs to site-b
    assert [d.reason_class for d in moved.dead_letters] == [ReasonClass.GATEWAY_SITE_MISMATCH]


def test_unusable_envelope_is_kept_raw() -> None:
    name = topic("site-a", "gw-a", Channel.READINGS)
    out = classify([ReadingsMessage.from_payload(name, b"\xff\x00 not json")], DIRECTORY)
    [letter] = out.dead_letters
    assert letter.reason_class is ReasonClass.BAD_MESSAGE and "not JSON" in letter.reason
    assert letter.raw == "hex:" + b"\xff\x00 not json".hex()
    assert (letter.site_id, letter.gateway_id) == ("site-a", "gw-a")


def test_raw_text_never_holds_nul() -> None:
    assert raw_text(b'{"a": 1}') == '{"a": 1}'
    assert raw_text(b"a\x00b").startswith("hex:")


def test_topic_mismatch_rules() -> None:
    assert topic_mismatch(None, "s", "g", Channel.READINGS) is None  # backfill: no topic
    assert topic_mismatch(topic("s", "g", Channel.READINGS), "s", "g", Channel.READINGS) is None
    assert "status topic" in topic_mismatch(topic("s", "g", Channel.STATUS), "s", "g", Channel.READINGS)
    assert "not a carewatch/v1 topic" in topic_mismatch("x/y", "s", "g", Channel.READINGS)


def test_fingerprint_is_stable_and_distinguishes_reasons() -> None:
    a = classify([message([reading(1, "ghost")])], DIRECTORY).dead_letters[0]
    b = classify([message([reading(1, "ghost")])], DIRECTORY).dead_letters[0]
    c = classify([message([reading(2, "ghost")])], DIRECTORY).dead_letters[0]
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_status_and_events_checked_against_the_registry() -> None:
    status = GatewayStatus(site_id="site-a", gateway_id="gw-a", state="online", at=T0)
    ok = classify_status(topic("site-a", "gw-a", Channel.STATUS), status.model_dump_json().encode(), DIRECTORY)
    assert ok is not None and not hasattr(ok, "reason_class")
    wrong = classify_status(topic("site-b", "gw-b", Channel.STATUS), status.model_dump_json().encode(), DIRECTORY)
    assert wrong.reason_class is ReasonClass.TOPIC_MISMATCH
    assert classify_status(topic("site-a", "gw-a", Channel.STATUS), b"", DIRECTORY) is None

    frame = GatewayEvent(site_id="site-a", gateway_id="gw-a", at=T0, kind="dead_letter", device_id="oxi-1",
                         message="CRC mismatch in PLX frame", raw_hex="deadbeef")
    letter = classify_event(topic("site-a", "gw-a", Channel.EVENTS), frame.model_dump_json().encode(), DIRECTORY)
    assert (letter.stage, letter.reason_class, letter.raw, letter.reason) == (
        "gateway", ReasonClass.GATEWAY_FRAME, "deadbeef", "CRC mismatch in PLX frame")
    alarm = frame.model_copy(update={"kind": "outbox_alarm", "raw_hex": None, "message": "outbox 90% full"})
    record = classify_event(topic("site-a", "gw-a", Channel.EVENTS), alarm.model_dump_json().encode(), DIRECTORY)
    assert record.event.kind == "outbox_alarm"
