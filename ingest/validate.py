"""Pure classification of what arrives over MQTT: which readings to store, and which to dead-letter and why.

No I/O here. The caller supplies a :class:`Directory` snapshot (who is registered where) and gets back rows for
the readings table plus :class:`DeadLetter` records whose ``reason`` a person can read. Rules:

* a message whose topic names a different site or gateway than its payload is rejected whole: a gateway may not
  write into another site;
* a message from an unregistered gateway, or from a gateway registered to another site, is rejected whole;
* inside an accepted message each reading stands on its own: implausible/malformed readings (already rejected by
  :func:`carewatch.wire.decode_batch`), readings from unknown devices, from devices registered to another site,
  or from inactive (unbound) devices are dead-lettered; the good ones still go through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import ValidationError

from carewatch.wire import (
    MAX_SEQ,
    BadMessage,
    Channel,
    DecodedBatch,
    GatewayEvent,
    GatewayStatus,
    Reading,
    decode_batch,
    explain,
    parse_topic,
    utcnow,
)

#: Longest identifier we copy from an untrusted payload into a dead letter's id columns.
_MAX_ID = 200


class ReasonClass(StrEnum):
    """Short machine class of a dead letter (metrics label and ``dead_letters.reason_class``)."""

    BAD_MESSAGE = "bad_message"  # not JSON, bad header, unknown topic
    TOPIC_MISMATCH = "topic_mismatch"  # topic site/gateway disagrees with the payload
    UNKNOWN_GATEWAY = "unknown_gateway"
    GATEWAY_SITE_MISMATCH = "gateway_site_mismatch"  # gateway registered to another site
    INVALID_READING = "invalid_reading"  # implausible value, wrong unit, malformed reading
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_SITE_MISMATCH = "device_site_mismatch"  # device registered to another site
    DEVICE_INACTIVE = "device_inactive"  # device unbound / deactivated
    GATEWAY_FRAME = "gateway_frame"  # the gateway's own dead letter (a frame it could not decode)
    STORE_ERROR = "store_error"  # valid on the wire but the database refused it (kept so the batch can go on)


@dataclass(frozen=True)
class DeadLetter:
    """One row for ``dead_letters``: the raw input and a reason a person can act on."""

    reason_class: ReasonClass
    reason: str
    raw: str
    stage: str = "ingest"
    site_id: str | None = None
    gateway_id: str | None = None
    device_id: str | None = None
    seq: int | None = None
    topic: str | None = None

    @property
    def fingerprint(self) -> str:
        """Stable hash so a re-delivered message does not dead-letter twice."""
        parts = (self.stage, self.topic or "", self.gateway_id or "", str(self.seq), self.reason, self.raw)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class DeviceInfo:
    """What ingest needs to know about a registered device."""

    device_id: str
    site_id: str
    subject_id: str  # resident_id, the kit_id for a shared kit's devices, or the site_id for home sensors
    subject_kind: str  # 'resident', 'kit', or the site's: 'household' or 'site' (carewatch.subjects.SubjectKind)
    active: bool = True
    kit_id: str | None = None  # a shared kit's device: attributed through measurement sessions


@dataclass(frozen=True)
class Directory:
    """Snapshot of the registry: gateway -> site, device -> DeviceInfo."""

    gateways: Mapping[str, str] = field(default_factory=dict)
    devices: Mapping[str, DeviceInfo] = field(default_factory=dict)


class StagedReading(NamedTuple):
    """A validated reading, resolved to its subject and site: one row of ``readings``.

    A NamedTuple rather than a frozen dataclass: ingest builds one per reading, and this is several times
    cheaper to construct."""

    measured_at: datetime
    gateway_id: str
    seq: int
    site_id: str
    subject_id: str
    subject_kind: str  # carewatch.subjects.SubjectKind: ids are unique per kind only (issue 13, finding 1)
    device_id: str
    metric: str
    value: float
    received_at: datetime
    flags: tuple[str, ...] = ()
    session_id: int | None = None  # the kit session that attributed it (kit devices only)


@dataclass
class ReadingsMessage:
    """One readings message as received: decoded when possible, with its topic and raw bytes for dead letters.

    ``topic`` is None for readings that did not come over MQTT (the simulator's backfill): no topic check then.
    """

    decoded: DecodedBatch | None
    topic: str | None = None
    raw: bytes | None = None
    error: str | None = None  # why the envelope is unusable (decoded is None)
    received_at: datetime = field(default_factory=utcnow)  # when ingest got it (gateway last_seen)

    @classmethod
    def from_payload(cls, topic: str | None, payload: bytes, received_at: datetime | None = None) -> ReadingsMessage:
        try:
            decoded, error = decode_batch(payload), None
        except BadMessage as exc:
            decoded, error = None, str(exc)
        return cls(decoded, topic, payload, error, received_at or utcnow())

    @classmethod
    def from_readings(cls, site_id: str, gateway_id: str, readings: list[Reading]) -> ReadingsMessage:
        """Wrap readings produced in-process (backfill): no topic, nothing rejected."""
        now = utcnow()
        return cls(DecodedBatch(site_id, gateway_id, now, list(readings), []), None, None, None, now)

    @property
    def reading_count(self) -> int:
        if self.decoded is None:
            return 0
        return len(self.decoded.good) + len(self.decoded.rejected)


@dataclass
class Classified:
    """The outcome of classifying a batch of readings messages."""

    rows: list[StagedReading] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    readings_in: int = 0  # readings seen, good or bad (a whole-message reject counts its readings)
    gateways_heard: dict[str, datetime] = field(default_factory=dict)  # accepted gateway -> latest receive time


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def raw_text(payload: bytes | None) -> str:
    """Payload as text for ``dead_letters.raw``: UTF-8 when it is, else ``hex:...`` (PostgreSQL text has no NUL)."""
    if payload is None:
        return ""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + payload.hex()
    return "hex:" + payload.hex() if "\x00" in text else text


def _clip(value: Any) -> str | None:
    return value[:_MAX_ID] if isinstance(value, str) else None


def topic_mismatch(topic: str | None, site_id: str, gateway_id: str, channel: Channel) -> str | None:
    """Why ``topic`` may not carry a message from (site_id, gateway_id); None when it may."""
    if topic is None:
        return None
    try:
        t_site, t_gateway, t_channel = parse_topic(topic)
    except ValueError as exc:
        return str(exc)
    if t_channel != channel:
        return f"a {channel.value} message arrived on the {t_channel.value} topic {topic!r}"
    if (t_site, t_gateway) != (site_id, gateway_id):
        return (
            f"topic {topic!r} is for site {t_site!r} gateway {t_gateway!r} but the message says site {site_id!r} "
            f"gateway {gateway_id!r}: a gateway may not write into another site"
        )
    return None


def gateway_problem(directory: Directory, site_id: str, gateway_id: str) -> tuple[ReasonClass, str] | None:
    """Why a message from this gateway must be refused as a whole; None when the gateway is registered here."""
    registered_site = directory.gateways.get(gateway_id)
    if registered_site is None:
        return ReasonClass.UNKNOWN_GATEWAY, (
            f"gateway {gateway_id!r} is not registered: register it for site {site_id!r} in device management"
        )
    if registered_site != site_id:
        return ReasonClass.GATEWAY_SITE_MISMATCH, (
            f"gateway {gateway_id!r} is registered to site {registered_site!r}, not {site_id!r}: "
            "a gateway may not write into another site"
        )
    return None


def device_problem(directory: Directory, site_id: str, device_id: str) -> tuple[ReasonClass, str] | None:
    """Why readings from this device cannot be attributed; None when they can."""
    device = directory.devices.get(device_id)
    if device is None:
        return ReasonClass.UNKNOWN_DEVICE, (
            f"device {device_id!r} is not registered: add it to site {site_id!r} in device management"
        )
    if device.site_id != site_id:
        return ReasonClass.DEVICE_SITE_MISMATCH, (
            f"device {device_id!r} is registered to site {device.site_id!r}, not {site_id!r}"
        )
    if not device.active:
        return ReasonClass.DEVICE_INACTIVE, (
            f"device {device_id!r} is not active (unbound): its readings cannot be attributed to anyone"
        )
    return None


# ------------------------------------------------------------------------------------------------------------
# readings
# ------------------------------------------------------------------------------------------------------------
def classify(messages: Iterable[ReadingsMessage], directory: Directory) -> Classified:
    """Split readings messages into rows to store and dead letters."""
    out = Classified()
    for msg in messages:
        out.readings_in += msg.reading_count
        decoded = msg.decoded
        if decoded is None:
            out.dead_letters.append(
                DeadLetter(ReasonClass.BAD_MESSAGE, f"unusable readings message: {msg.error}", raw_text(msg.raw),
                           topic=msg.topic, **_topic_ids(msg.topic))
            )
            continue
        ids: dict[str, Any] = {"site_id": decoded.site_id, "gateway_id": decoded.gateway_id, "topic": msg.topic}
        mismatch = topic_mismatch(msg.topic, decoded.site_id, decoded.gateway_id, Channel.READINGS)
        problem = (ReasonClass.TOPIC_MISMATCH, mismatch) if mismatch else gateway_problem(
            directory, decoded.site_id, decoded.gateway_id)
        if problem is not None:
            raw = raw_text(msg.raw) if msg.raw is not None else _batch_json(decoded)
            out.dead_letters.append(DeadLetter(problem[0], problem[1], raw, **ids))
            continue
        heard = out.gateways_heard.get(decoded.gateway_id)
        out.gateways_heard[decoded.gateway_id] = max(heard, msg.received_at) if heard else msg.received_at
        for bad in decoded.rejected:
            device_id = _clip(bad.raw.get("device_id")) if isinstance(bad.raw, dict) else None
            out.dead_letters.append(
                DeadLetter(ReasonClass.INVALID_READING, bad.reason, json.dumps(bad.raw, ensure_ascii=False),
                           device_id=device_id, seq=bad.seq, **ids)
            )
        devices, site_id, gateway_id, rows = directory.devices, decoded.site_id, decoded.gateway_id, out.rows
        for reading in decoded.good:
            device = devices.get(reading.device_id)
            if device is None or device.site_id != site_id or not device.active or reading.seq > MAX_SEQ:
                trouble = (ReasonClass.INVALID_READING, f"seq {reading.seq} is beyond the 64-bit range") if (
                    reading.seq > MAX_SEQ) else device_problem(directory, site_id, reading.device_id)
                assert trouble is not None
                out.dead_letters.append(
                    DeadLetter(trouble[0], trouble[1], reading.model_dump_json(), device_id=reading.device_id,
                               seq=reading.seq, **ids)
                )
                continue
            rows.append(StagedReading(
                reading.measured_at, gateway_id, reading.seq, site_id, device.subject_id, device.subject_kind,
                reading.device_id,
                reading.metric.value, reading.value, reading.received_at,
                tuple(f.value for f in reading.flags) if reading.flags else (),
            ))
    return out


def _topic_ids(topic: str | None) -> dict[str, Any]:
    """Site and gateway named by a topic, for dead letters of messages we could not decode."""
    try:
        site_id, gateway_id, _ = parse_topic(topic or "")
    except ValueError:
        return {"site_id": None, "gateway_id": None}
    return {"site_id": _clip(site_id), "gateway_id": _clip(gateway_id)}


def _batch_json(decoded: DecodedBatch) -> str:
    return json.dumps({
        "site_id": decoded.site_id, "gateway_id": decoded.gateway_id, "sent_at": decoded.sent_at.isoformat(),
        "readings": [r.model_dump(mode="json") for r in decoded.good] + [r.raw for r in decoded.rejected],
    })


# ------------------------------------------------------------------------------------------------------------
# status and events
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatusUpdate:
    """A gateway status (or last will) accepted for its gateway."""

    status: GatewayStatus
    raw: str
    retained: bool = False  # a retained copy: stale if the row already holds a newer status
    received_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class EventRecord:
    """A gateway event to keep in ``gateway_events``."""

    event: GatewayEvent

    @property
    def fingerprint(self) -> str:
        body = self.event.model_dump_json()
        return hashlib.sha256(body.encode()).hexdigest()[:32]


def classify_status(
    topic: str | None, payload: bytes, directory: Directory, *, retained: bool = False,
    received_at: datetime | None = None,
) -> StatusUpdate | DeadLetter | None:
    """Validate a status message. None for an empty payload (someone clearing the retained status)."""
    if not payload:
        return None
    try:
        status = GatewayStatus.model_validate_json(payload)
    except ValidationError as exc:
        return DeadLetter(ReasonClass.BAD_MESSAGE, f"unusable status message: {explain(exc)}", raw_text(payload),
                          topic=topic, **_topic_ids(topic))
    problem = _sender_problem(topic, status.site_id, status.gateway_id, Channel.STATUS, directory)
    if problem is not None:
        return DeadLetter(problem[0], problem[1], raw_text(payload), site_id=status.site_id,
                          gateway_id=status.gateway_id, topic=topic)
    return StatusUpdate(status, raw_text(payload), retained, received_at or utcnow())


def classify_event(topic: str | None, payload: bytes, directory: Directory) -> EventRecord | DeadLetter:
    """Validate an event. A gateway's own dead letter becomes a DeadLetter with stage 'gateway'."""
    try:
        event = GatewayEvent.model_validate_json(payload)
    except ValidationError as exc:
        return DeadLetter(ReasonClass.BAD_MESSAGE, f"unusable event message: {explain(exc)}", raw_text(payload),
                          topic=topic, **_topic_ids(topic))
    problem = _sender_problem(topic, event.site_id, event.gateway_id, Channel.EVENTS, directory)
    if problem is not None:
        return DeadLetter(problem[0], problem[1], raw_text(payload), site_id=event.site_id,
                          gateway_id=event.gateway_id, topic=topic)
    if event.kind == "dead_letter":
        return DeadLetter(
            ReasonClass.GATEWAY_FRAME, event.message, event.raw_hex or raw_text(payload), stage="gateway",
            site_id=event.site_id, gateway_id=event.gateway_id, device_id=_clip(event.device_id), topic=topic,
        )
    return EventRecord(event)


def _sender_problem(
    topic: str | None, site_id: str, gateway_id: str, channel: Channel, directory: Directory
) -> tuple[ReasonClass, str] | None:
    mismatch = topic_mismatch(topic, site_id, gateway_id, channel)
    if mismatch:
        return ReasonClass.TOPIC_MISMATCH, mismatch
    return gateway_problem(directory, site_id, gateway_id)


def status_devices(update: StatusUpdate, directory: Directory) -> list[tuple[str, float | None, int | None,
                                                                            datetime | None]]:
    """(device_id, battery_pct, rssi_dbm, last_seen) for the status's devices registered at its site only."""
    site_id = update.status.site_id
    rows = []
    for dev in update.status.devices:
        info = directory.devices.get(dev.device_id)
        if info is None or info.site_id != site_id:
            continue
        battery = dev.battery_pct if dev.battery_pct is not None and 0 <= dev.battery_pct <= 100 else None
        rssi = dev.rssi_dbm if dev.rssi_dbm is not None and -200 <= dev.rssi_dbm <= 50 else None
        rows.append((dev.device_id, battery, rssi, dev.last_seen))
    return rows
