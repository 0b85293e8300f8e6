"""Notification → readings or dead letters. No I/O: the same input always gives the same output.

The pipeline looks the sender up in the registry, hands the bytes to the right parser, and turns each
measurement into a :class:`ReadingDraft` (a reading without its sequence number, which the outbox assigns). A
value the device distrusts (questionable, invalid, sensor fault) is a draft too, carrying those quality flags:
it is stored and the scorer sets it aside, so it is never lost and never scored as a clean value. Anything it
cannot turn into a credible reading becomes a :class:`DeadLetter` carrying the raw bytes and the reason;
nothing here raises on bad input, so one broken device can never stop the gateway.

It keeps the per-device parser state the formats need (BTHome packet ids and encryption counters,
proprietary oximeter stream buffers), so one Pipeline serves one gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from carewatch.gateway.bthome import BTHomeDecoder
from carewatch.gateway.frames import DecodedFrame, FrameError, resolve_measured_at
from carewatch.gateway.gatt import decode_characteristic
from carewatch.gateway.oximeters import OximeterStream
from carewatch.gateway.transport import Notification
from carewatch.registry import BTHOME, GATT, DeviceRegistry, RegisteredDevice
from carewatch.wire import (
    METRICS,
    UNTRUSTED_FLAGS,
    DeviceKind,
    ImplausibleValue,
    Metric,
    QualityFlag,
    check_plausible,
)

# ------------------------------------------------------------------------------------------------------------
# Urgency: which readings the publisher sends at once instead of waiting to fill a batch
# ------------------------------------------------------------------------------------------------------------
#: A reading is urgent when its value falls in one of these (inclusive) bands: roughly the NEWS2 bands that
#: score 2 or 3 for that parameter, plus any pendant/button press. This is only a *transport* priority (skip
#: the batching delay, typically ≤ publish_batch_ms); the clinical score is computed by the scorer.
URGENT_BANDS: dict[Metric, tuple[tuple[float, float], ...]] = {
    Metric.SPO2: ((float("-inf"), 91.0),),  # NEWS2 scale 1: ≤91 scores 3
    Metric.PULSE_RATE: ((float("-inf"), 49.0), (111.0, float("inf"))),  # <50 or >110 /min
    Metric.RESPIRATION_RATE: ((float("-inf"), 8.0), (21.0, float("inf"))),  # ≤8 or ≥21 /min
    Metric.SYSTOLIC_BP: ((float("-inf"), 100.0), (220.0, float("inf"))),  # ≤100 or ≥220 mmHg
    Metric.TEMPERATURE: ((float("-inf"), 35.0), (38.1, float("inf"))),  # ≤35.0 or ≥38.1 °C
    Metric.BUTTON: ((1.0, float("inf")),),  # any button event: someone is asking for help
}


def is_urgent(metric: Metric, value: float) -> bool:
    """Whether the reading is out of range enough to be flushed at once (see URGENT_BANDS)."""
    return any(low <= value <= high for low, high in URGENT_BANDS.get(metric, ()))


# ------------------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadingDraft:
    """A reading before the outbox gives it a sequence number."""

    device_id: str
    device_kind: DeviceKind
    metric: Metric
    value: float
    unit: str
    measured_at: datetime
    received_at: datetime
    flags: tuple[QualityFlag, ...] = ()
    urgent: bool = False

    @property
    def vital(self) -> bool:
        return METRICS[self.metric].vital

    @property
    def trusted(self) -> bool:
        """False when the device said this value is questionable, invalid or from a faulty sensor."""
        return not UNTRUSTED_FLAGS.intersection(self.flags)


@dataclass(frozen=True)
class DeadLetter:
    """A frame (or one value of it) the gateway could not accept, kept with its raw bytes and the reason."""

    address: str
    source: str
    raw_hex: str
    reason: str
    received_at: datetime
    device_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineResult:
    drafts: tuple[ReadingDraft, ...] = ()
    dead_letters: tuple[DeadLetter, ...] = ()
    device: RegisteredDevice | None = None
    frames: int = 0  # decoded frames (a stream chunk may hold several, or none yet)
    duplicates: int = 0  # BTHome re-broadcasts of a packet already seen


# ------------------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------------------
class Pipeline:
    """Decode notifications from registered devices into reading drafts."""

    def __init__(self, registry: DeviceRegistry) -> None:
        self._bthome = BTHomeDecoder()
        self._streams: dict[str, OximeterStream] = {}
        self.registry = DeviceRegistry()
        self.set_registry(registry)

    def set_registry(self, registry: DeviceRegistry) -> None:
        """Swap in a new registry (pairing/unpairing); parser state of unchanged devices is kept."""
        old = self.registry
        for device in old:
            new = registry.get(device.address)
            if new is None or new.source != device.source or new.bind_key != device.bind_key:
                self._bthome.forget(device.address)
                self._streams.pop(device.address, None)
        for device in registry:
            if device.source == BTHOME:
                self._bthome.set_bindkey(device.address, device.bind_key_bytes)
        self.registry = registry

    def process(self, note: Notification) -> PipelineResult:
        try:
            return self._process(note)
        except Exception as exc:  # a bug here must cost one frame, not the gateway
            device = self.registry.get(note.address)
            reason = f"pipeline error: {type(exc).__name__}: {exc}"
            return PipelineResult(dead_letters=(_dead(note, device, reason),), device=device)

    def _process(self, note: Notification) -> PipelineResult:
        if note.received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware UTC")
        device = self.registry.get(note.address)
        if device is None:
            return PipelineResult(
                dead_letters=(_dead(note, None, f"unknown device {note.address} (not paired)"),)
            )
        if not device.accepts(note.source):
            reason = f"{device.device_id} is registered as {device.source!r} but sent {note.source!r}"
            return PipelineResult(dead_letters=(_dead(note, device, reason),), device=device)
        try:
            frames, rejected = self._decode(device, note)
        except FrameError as exc:
            return PipelineResult(dead_letters=(_dead(note, device, str(exc)),), device=device)
        except Exception as exc:  # a parser bug must cost one frame, not the gateway
            reason = f"parser crashed: {type(exc).__name__}: {exc}"
            return PipelineResult(dead_letters=(_dead(note, device, reason),), device=device)
        drafts: list[ReadingDraft] = []
        dead = [_dead(note, device, reason, raw=raw) for raw, reason in rejected]
        duplicates = 0
        for frame in frames:
            if frame.duplicate:
                duplicates += 1
                continue
            frame_drafts, frame_dead = self._to_drafts(device, note, frame)
            drafts.extend(frame_drafts)
            dead.extend(frame_dead)
        return PipelineResult(tuple(drafts), tuple(dead), device, len(frames), duplicates)

    def _decode(self, device: RegisteredDevice, note: Notification) -> tuple[list[DecodedFrame], list[tuple]]:
        if device.source == GATT:
            return [decode_characteristic(note.source, note.data)], []
        if device.source == BTHOME:
            # packet-id de-dup windows run on the gateway clock (simulated time in the simulator)
            at = note.received_at.timestamp()
            return [self._bthome.decode(device.address, note.data, at=at)], []
        stream = self._streams.get(device.address)
        if stream is None:
            stream = self._streams[device.address] = OximeterStream(device.source)
        frames = stream.feed(note.data)
        rejected = list(stream.rejected)
        stream.rejected.clear()
        return frames, rejected

    def _to_drafts(
        self, device: RegisteredDevice, note: Notification, frame: DecodedFrame
    ) -> tuple[list[ReadingDraft], list[DeadLetter]]:
        # No time field by design (BTHome, heart rate): measured when heard, no flag. A time field that is
        # present but unset: receive time, flagged CLOCK_NOT_SET. A skewed clock: receive time, CLOCK_SKEWED.
        measured_at, clock_flags = resolve_measured_at(
            frame.device_time, note.received_at, clock_not_set=frame.clock_not_set,
            unheard=note.unheard,
        )
        drafts, dead = [], []
        for metric, value in frame.measurements:
            flags = tuple(sorted(frame.flags_for(metric) | clock_flags, key=lambda f: f.value))
            try:
                value = check_plausible(metric, value)
            except ImplausibleValue as exc:
                detail: dict[str, Any] = {"metric": metric.value, "value": value}
                if flags:
                    detail["flags"] = [f.value for f in flags]
                dead.append(_dead(note, device, str(exc), detail=detail))
                continue
            drafts.append(
                ReadingDraft(
                    device_id=device.device_id,
                    device_kind=device.kind,
                    metric=metric,
                    value=value,
                    unit=METRICS[metric].unit,
                    measured_at=measured_at,
                    received_at=note.received_at,
                    flags=flags,
                    # the scorer sets a distrusted value aside, so hurrying it to the platform helps nobody
                    urgent=is_urgent(metric, value) and not UNTRUSTED_FLAGS.intersection(flags),
                )
            )
        return drafts, dead


def _dead(
    note: Notification,
    device: RegisteredDevice | None,
    reason: str,
    *,
    raw: bytes | None = None,
    detail: dict[str, Any] | None = None,
) -> DeadLetter:
    return DeadLetter(
        address=note.address,
        source=note.source,
        raw_hex=(note.data if raw is None else raw).hex(),
        reason=reason,
        received_at=note.received_at,
        device_id=device.device_id if device else None,
        detail=detail or {},
    )
