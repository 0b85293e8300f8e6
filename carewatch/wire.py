"""The wire contract between gateways and the platform: topics, metrics and message models.

This is the one definition. ``docs/wire-format.md`` explains it with examples; the gateway builds these
messages, ingest validates them, the simulator emits them. Version 1 JSON over MQTT.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

WIRE_VERSION: Final = 1
TOPIC_ROOT = f"carewatch/v{WIRE_VERSION}"
#: Largest sequence number the platform stores (PostgreSQL bigint).
MAX_SEQ = 2**63 - 1

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]


# ------------------------------------------------------------------------------------------------------------
# Topics
# ------------------------------------------------------------------------------------------------------------
class Channel(StrEnum):
    READINGS = "readings"  # batches of readings (QoS 1)
    STATUS = "status"  # retained gateway status, and its last will
    EVENTS = "events"  # dead-letter frames, alarms, pairing events (QoS 1)
    RESEND = "resend"  # platform -> gateway: publish these sequence numbers again (QoS 1)


def topic(site_id: str, gateway_id: str, channel: Channel) -> str:
    return f"{TOPIC_ROOT}/{site_id}/{gateway_id}/{channel.value}"


def topic_filter(channel: Channel, *, share_group: str | None = None) -> str:
    """Subscription filter for every gateway's ``channel``; ``$share/<group>/...`` when sharing the load."""
    base = f"{TOPIC_ROOT}/+/+/{channel.value}"
    return f"$share/{share_group}/{base}" if share_group else base


def parse_topic(name: str) -> tuple[str, str, Channel]:
    """Split a topic into (site_id, gateway_id, channel); ValueError when it is not one of ours."""
    parts = name.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise ValueError(f"not a {TOPIC_ROOT} topic: {name!r}")
    try:
        channel = Channel(parts[4])
    except ValueError:
        raise ValueError(f"unknown channel {parts[4]!r} in topic {name!r}") from None
    return parts[2], parts[3], channel


# ------------------------------------------------------------------------------------------------------------
# Metrics: name, unit and plausibility range (the one place these ranges live)
# ------------------------------------------------------------------------------------------------------------
class Metric(StrEnum):
    # vital signs
    SPO2 = "spo2"
    PULSE_RATE = "pulse_rate"
    RESPIRATION_RATE = "respiration_rate"
    SYSTOLIC_BP = "systolic_bp"
    DIASTOLIC_BP = "diastolic_bp"
    MEAN_ARTERIAL_PRESSURE = "mean_arterial_pressure"
    TEMPERATURE = "temperature"
    PERFUSION_INDEX = "perfusion_index"
    WEIGHT = "weight"
    # home sensors
    MOTION = "motion"
    OCCUPANCY = "occupancy"
    DOOR_OPEN = "door_open"
    WINDOW_OPEN = "window_open"
    ROOM_TEMPERATURE = "room_temperature"
    HUMIDITY = "humidity"
    ILLUMINANCE = "illuminance"
    POWER = "power"
    POWER_ON = "power_on"
    BUTTON = "button"
    # device health
    BATTERY = "battery"


@dataclass(frozen=True)
class MetricSpec:
    unit: str
    low: float
    high: float
    why: str
    vital: bool = False


#: Plausibility ranges. A value outside its range is not physiologically or physically credible from a
#: working device: ingest dead-letters it with a reason, and NEWS2 refuses to score it. The limits are wide on
#: purpose (a real but extreme value must never be thrown away); see docs/clinical-safety.md.
METRICS: dict[Metric, MetricSpec] = {
    Metric.SPO2: MetricSpec("%", 40, 100, "oxygen saturation is a percentage; below 40% a probe is not reading", True),
    Metric.PULSE_RATE: MetricSpec("/min", 20, 250, "heart rate outside 20-250/min is a device artefact", True),
    Metric.RESPIRATION_RATE: MetricSpec("/min", 3, 70, "breathing outside 3-70/min is a counting error", True),
    Metric.SYSTOLIC_BP: MetricSpec("mmHg", 40, 300, "systolic pressure outside 40-300 mmHg is a cuff error", True),
    Metric.DIASTOLIC_BP: MetricSpec("mmHg", 15, 200, "diastolic pressure outside 15-200 mmHg is a cuff error", True),
    Metric.MEAN_ARTERIAL_PRESSURE: MetricSpec("mmHg", 20, 250, "mean pressure outside 20-250 mmHg", True),
    Metric.TEMPERATURE: MetricSpec("Cel", 25.0, 45.0, "body temperature outside 25-45 °C is not a live reading", True),
    Metric.PERFUSION_INDEX: MetricSpec("%", 0, 30, "perfusion index is 0-30%", True),
    Metric.WEIGHT: MetricSpec("kg", 20, 350, "adult weight outside 20-350 kg", True),
    Metric.MOTION: MetricSpec("1", 0, 1, "binary sensor: 0 or 1"),
    Metric.OCCUPANCY: MetricSpec("1", 0, 1, "binary sensor: 0 or 1"),
    Metric.DOOR_OPEN: MetricSpec("1", 0, 1, "binary sensor: 0 or 1"),
    Metric.WINDOW_OPEN: MetricSpec("1", 0, 1, "binary sensor: 0 or 1"),
    Metric.ROOM_TEMPERATURE: MetricSpec("Cel", -30, 60, "indoor temperature outside -30-60 °C"),
    Metric.HUMIDITY: MetricSpec("%", 0, 100, "relative humidity is 0-100%"),
    Metric.ILLUMINANCE: MetricSpec("lx", 0, 200_000, "illuminance 0-200000 lx"),
    Metric.POWER: MetricSpec("W", 0, 15_000, "a domestic socket draws 0-15 kW"),
    Metric.POWER_ON: MetricSpec("1", 0, 1, "binary sensor: 0 or 1"),
    Metric.BUTTON: MetricSpec("1", 0, 255, "button event code 0-255"),
    Metric.BATTERY: MetricSpec("%", 0, 100, "battery level is 0-100%"),
}

BINARY_METRICS = frozenset(m for m, s in METRICS.items() if s.unit == "1" and s.high == 1)
#: METRICS by the metric's string (a Metric is that string too: a StrEnum).
_SPEC_BY_NAME: dict[str, MetricSpec] = {m.value: s for m, s in METRICS.items()}


class ImplausibleValue(ValueError):
    """A value outside its metric's plausibility range (or not a finite number)."""


def check_plausible(metric: Metric | str, value: float) -> float:
    """Return ``value`` if it is credible for ``metric``; raise ImplausibleValue saying why otherwise (ValueError
    for a metric that is not a ``Metric``)."""
    spec = _SPEC_BY_NAME.get(metric)  # (no Metric(...) lookup per reading: history loads check millions)
    if spec is None:
        spec = METRICS[Metric(metric)]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ImplausibleValue(f"{metric}={value!r} is not a finite number")
    if not spec.low <= value <= spec.high:
        raise ImplausibleValue(
            f"{metric}={value:g} {spec.unit} is outside the plausible range "
            f"{spec.low:g}-{spec.high:g} ({spec.why})"
        )
    if metric in BINARY_METRICS and value not in (0, 1):
        raise ImplausibleValue(f"{metric}={value:g} must be 0 or 1")
    return float(value)


# ------------------------------------------------------------------------------------------------------------
# Devices and quality flags
# ------------------------------------------------------------------------------------------------------------
class DeviceKind(StrEnum):
    PULSE_OXIMETER = "pulse_oximeter"
    THERMOMETER = "thermometer"
    BP_CUFF = "bp_cuff"
    HEART_RATE = "heart_rate"
    WEIGHT_SCALE = "weight_scale"
    MOTION_SENSOR = "motion_sensor"
    DOOR_SENSOR = "door_sensor"
    BATHROOM_SENSOR = "bathroom_sensor"
    FRIDGE_SENSOR = "fridge_sensor"
    PLUG = "plug"
    CLIMATE_SENSOR = "climate_sensor"
    BUTTON = "button"


class QualityFlag(StrEnum):
    QUESTIONABLE = "questionable"  # device says the measurement may be unreliable
    INVALID = "invalid"  # device says the measurement is invalid
    SENSOR_FAULT = "sensor_fault"  # device reports a probe or sensor fault
    LOW_PERFUSION = "low_perfusion"
    MOTION_ARTEFACT = "motion_artefact"
    CLOCK_NOT_SET = "clock_not_set"  # device timestamp missing or year 0: gateway receive time used
    CLOCK_SKEWED = "clock_skewed"  # device timestamp too far from gateway time: gateway receive time used
    EARLY_ESTIMATE = "early_estimate"  # e.g. PLX "early estimated SpO2"
    MANUAL = "manual"  # typed in by staff rather than read from a device


#: Flags that mean the value must not be used as a clean clinical value: the device itself distrusts it. Motion
#: (a BP cuff's "body movement", an oximeter's motion artefact) means "measure again", as for questionable.
#: Low perfusion is not here: poor perfusion can be the illness itself (shock), so that value is scored, flag shown.
UNTRUSTED_FLAGS = frozenset({QualityFlag.QUESTIONABLE, QualityFlag.INVALID, QualityFlag.SENSOR_FAULT,
                             QualityFlag.MOTION_ARTEFACT})


# ------------------------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------------------------
class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reading(_Wire):
    """One measured value from one device."""

    seq: int = Field(ge=1, description="Per-gateway sequence number; strictly increasing, never reused.")
    device_id: Ident
    device_kind: DeviceKind
    metric: Metric
    value: float
    unit: str
    measured_at: AwareDatetime = Field(description="Device clock (or received_at when the clock is unusable).")
    received_at: AwareDatetime = Field(description="Gateway clock when the frame arrived.")
    flags: tuple[QualityFlag, ...] = ()

    @model_validator(mode="after")
    def _plausible_and_in_unit(self) -> Reading:
        spec = METRICS[self.metric]
        if self.unit != spec.unit:
            raise ValueError(f"{self.metric.value} must be sent in {spec.unit!r}, not {self.unit!r}")
        check_plausible(self.metric, self.value)
        return self


class ReadingBatch(_Wire):
    """A readings message: up to 1000 readings from one gateway, in sequence order."""

    v: Literal[1] = WIRE_VERSION
    site_id: Ident
    gateway_id: Ident
    sent_at: AwareDatetime
    readings: list[Reading] = Field(min_length=1, max_length=1000)


class DeviceStatus(_Wire):
    device_id: Ident
    battery_pct: float | None = None
    rssi_dbm: int | None = None
    last_seen: AwareDatetime | None = None
    connected: bool | None = None


class GatewayStatus(_Wire):
    """Retained status message; the MQTT last will is a bare one with ``state='offline'``.

    ``at`` is when the gateway wrote the message. A last will is written when its connection opens and sent by
    the broker whenever it notices that connection gone, so its ``at`` equals ``connected_at``: the gateway
    was online then, and the will says nothing about when it stopped.
    """

    v: Literal[1] = WIRE_VERSION
    site_id: Ident
    gateway_id: Ident
    state: Literal["online", "offline"]
    at: AwareDatetime
    connected_at: AwareDatetime | None = None  # when the MQTT connection this message belongs to was opened
    uptime_s: float | None = None
    outbox_depth: int | None = None
    outbox_bytes: int | None = None
    outbox_budget_pct: float | None = None
    oldest_unsent: AwareDatetime | None = None
    last_seq: int | None = None
    devices: list[DeviceStatus] = []


class GatewayEvent(_Wire):
    """Something the platform should know that is not a reading: a bad frame, an alarm, a pairing."""

    v: Literal[1] = WIRE_VERSION
    site_id: Ident
    gateway_id: Ident
    at: AwareDatetime
    kind: Literal[
        "dead_letter", "outbox_alarm", "device_paired", "device_unpaired", "clock_alarm", "replay_unavailable",
        "device_fault", "device_silent", "device_back",
    ]
    device_id: str | None = None
    message: str
    raw_hex: str | None = None
    detail: dict[str, Any] = {}


SeqRun = tuple[int, int]  # (first_seq, last_seq), inclusive


def runs_from_seqs(seqs: Iterable[int]) -> list[SeqRun]:
    """Contiguous runs covering ``seqs`` (any order, repeats allowed): [1,2,3,7,8] -> [(1,3),(7,8)]."""
    runs: list[SeqRun] = []
    for seq in sorted(set(seqs)):
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def merge_runs(*groups: Iterable[SeqRun]) -> list[SeqRun]:
    """Union of runs, with overlapping or adjacent runs joined."""
    merged: list[SeqRun] = []
    for first, last in sorted(r for group in groups for r in group):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def subtract_runs(runs: Iterable[SeqRun], remove: Iterable[SeqRun]) -> list[SeqRun]:
    """The sequence numbers of ``runs`` that are not in ``remove``, as sorted runs."""
    cut = merge_runs(remove)
    out: list[SeqRun] = []
    for first, last in merge_runs(runs):
        start = first
        for r_first, r_last in cut:
            if r_last < start:
                continue
            if r_first > last:
                break
            if r_first > start:
                out.append((start, r_first - 1))
            start = max(start, r_last + 1)
            if start > last:
                break
        if start <= last:
            out.append((start, last))
    return out


def run_length(runs: Iterable[SeqRun]) -> int:
    """How many sequence numbers ``runs`` (non-overlapping) cover."""
    return sum(last - first + 1 for first, last in runs)


#: Limits of one resend request: enough for any gap a broker restart leaves, small enough that a request can
#: never make a gateway re-send its whole history at once (ingest asks again for what is left).
MAX_RESEND_RANGES = 100
MAX_RESEND_READINGS = 100_000

SeqRange = tuple[Annotated[int, Field(ge=1, le=MAX_SEQ)], Annotated[int, Field(ge=1, le=MAX_SEQ)]]


class ResendRequest(_Wire):
    """Ingest asks a gateway to publish readings again: sequence numbers it never stored (a gap).

    Sent to the gateway's own ``resend`` topic (QoS 1, not retained). The gateway re-publishes what it still
    keeps (readings stay in its outbox for a replay window after the broker acknowledged them) as ordinary
    readings messages with their original ``seq``, and reports what it no longer has as a
    ``replay_unavailable`` event. Ingest de-duplicates, so asking twice is harmless.
    """

    v: Literal[1] = WIRE_VERSION
    site_id: Ident
    gateway_id: Ident
    requested_at: AwareDatetime
    ranges: list[SeqRange] = Field(
        min_length=1, max_length=MAX_RESEND_RANGES,
        description="Inclusive [first_seq, last_seq] pairs, ascending and not overlapping.",
    )

    @model_validator(mode="after")
    def _ordered_and_bounded(self) -> ResendRequest:
        previous = 0
        for first, last in self.ranges:
            if first > last:
                raise ValueError(f"range [{first}, {last}] ends before it starts")
            if first <= previous:
                raise ValueError(f"range [{first}, {last}] overlaps or precedes the one before it (ascending only)")
            previous = last
        total = run_length(self.ranges)
        if total > MAX_RESEND_READINGS:
            raise ValueError(f"{total} readings asked for in one request (at most {MAX_RESEND_READINGS})")
        return self


# ------------------------------------------------------------------------------------------------------------
# Decoding a readings message reading by reading (so one bad reading cannot sink its batch)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class RejectedReading:
    raw: Any
    reason: str
    seq: int | None = None


@dataclass
class DecodedBatch:
    site_id: str
    gateway_id: str
    sent_at: datetime
    good: list[Reading]
    rejected: list[RejectedReading]


class BadMessage(ValueError):
    """The message as a whole cannot be used (not JSON, wrong version, no header)."""


def explain(error: ValidationError) -> str:
    """A one-line, human-readable summary of a pydantic validation error."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "message"
        msg = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


_HEADER_FIELDS = ("v", "site_id", "gateway_id", "sent_at")


class _BatchHeader(_Wire):
    v: Literal[1]
    site_id: Ident
    gateway_id: Ident
    sent_at: AwareDatetime


def decode_batch(payload: bytes | str) -> DecodedBatch:
    """Decode a readings message, validating each reading on its own.

    Raises BadMessage when the envelope is unusable; otherwise returns the good readings and, for each bad
    one, its raw JSON and the reason it was rejected.
    """
    try:  # the common case, a wholly valid message, in one pass of pydantic-core over the bytes
        batch = ReadingBatch.model_validate_json(payload)
        return DecodedBatch(batch.site_id, batch.gateway_id, batch.sent_at, batch.readings, [])
    except ValidationError:
        pass  # sort out what is wrong, reading by reading
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadMessage("a readings message must be a JSON object")
    try:
        header = _BatchHeader.model_validate({k: doc.get(k) for k in _HEADER_FIELDS})
    except ValidationError as exc:
        raise BadMessage(f"bad header: {explain(exc)}") from None
    raw_readings = doc.get("readings")
    if not isinstance(raw_readings, list) or not raw_readings:
        raise BadMessage("readings must be a non-empty list")
    if len(raw_readings) > 1000:
        raise BadMessage(f"too many readings in one message ({len(raw_readings)} > 1000)")
    good: list[Reading] = []
    rejected: list[RejectedReading] = []
    for raw in raw_readings:
        try:
            good.append(Reading.model_validate(raw))
        except ValidationError as exc:
            seq = raw.get("seq") if isinstance(raw, dict) and isinstance(raw.get("seq"), int) else None
            rejected.append(RejectedReading(raw=raw, reason=explain(exc), seq=seq))
    return DecodedBatch(header.site_id, header.gateway_id, header.sent_at, good, rejected)


def encode_batch(site_id: str, gateway_id: str, readings: list[Reading], sent_at: datetime | None = None) -> bytes:
    """Serialise readings as one version-1 readings message."""
    batch = ReadingBatch(
        site_id=site_id, gateway_id=gateway_id, sent_at=sent_at or datetime.now(UTC), readings=readings
    )
    return batch.model_dump_json(exclude_defaults=False).encode()


def utcnow() -> datetime:
    return datetime.now(UTC)
