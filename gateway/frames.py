"""Types shared by every byte parser: the one error type, the one result type, and clock resolution.

Parsers are pure functions over bytes. On any input they either return a :class:`DecodedFrame` or raise
:class:`FrameError` saying what is wrong, so the gateway can dead-letter a bad frame with a useful reason
instead of crashing on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from carewatch.wire import UNTRUSTED_FLAGS, Metric, QualityFlag

#: Reasons recorded in ``DecodedFrame.null_reasons`` (the IEEE-11073 ones come from the special values).
NULL_NAN = "NaN"
NULL_NRES = "NRes"
NULL_POS_INF = "+INF"
NULL_NEG_INF = "-INF"
NULL_RESERVED = "reserved"
NULL_INVALID = "invalid"  # a proprietary "no value" marker (e.g. BerryMed SpO2 127) or a filtered value
NULL_UNSUCCESSFUL = "unsuccessful"  # Weight Scale 0xFFFF "measurement unsuccessful"
NULL_CLOCK_NOT_SET = "clock_not_set"  # a Date Time field that is present but unusable
NULL_UNUSED = "unused"  # a field the characteristic defines but does not use (0x2A36 diastolic and MAP)

DEFAULT_MAX_SKEW = timedelta(minutes=10)


class FrameError(ValueError):
    """A frame that cannot be decoded; the message says what is wrong with it."""


@dataclass(frozen=True)
class DecodedFrame:
    """What one frame said, in one shape for every parser.

    ``fields`` holds exactly the keys the ``carewatch decode`` CLI prints for this source (a value is ``None``
    when the device sent a special value; ``null_reasons`` says which). ``measurements`` holds every value the
    frame carried as a number, trusted or not: a reading the device marks questionable, invalid or faulty is
    still a reading, passed on *with* those ``flags`` (``trusted`` is False) so that it is stored and set aside
    by the scorer instead of vanishing. ``unflagged`` names measurements the frame's quality flags do not
    describe (a battery level sent beside a flagged SpO2). Values are not range-checked here;
    ``wire.check_plausible`` does that when a ``Reading`` is built. ``details`` keeps everything else the frame
    carried (status bits, units, raw values) for logs and dead letters.
    """

    source: str
    fields: dict[str, Any]
    null_reasons: dict[str, str] = field(default_factory=dict)
    flags: frozenset[QualityFlag] = frozenset()
    device_time: datetime | None = None
    clock_not_set: bool = False
    measurements: tuple[tuple[Metric, float], ...] = ()
    unflagged: frozenset[Metric] = frozenset()
    details: dict[str, Any] = field(default_factory=dict)
    duplicate: bool = False  # BTHome: a repeated packet id, i.e. not a new reading

    @property
    def trusted(self) -> bool:
        return not (self.flags & UNTRUSTED_FLAGS)

    def flags_for(self, metric: Metric) -> frozenset[QualityFlag]:
        """The quality flags that apply to ``metric``'s value (device-distrust flags skip ``unflagged`` ones)."""
        return self.flags - UNTRUSTED_FLAGS if metric in self.unflagged else self.flags

    def to_json_dict(self, *, with_status: bool = True) -> dict[str, Any]:
        """``fields`` made JSON-ready (timestamps as ``YYYY-MM-DDTHH:MM:SS``), plus null reasons and flags."""
        out: dict[str, Any] = {k: _jsonable(v) for k, v in self.fields.items()}
        if with_status:
            out["null_reasons"] = dict(self.null_reasons)
            out["flags"] = sorted(flag.value for flag in self.flags)
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds") if value.tzinfo else value.strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def present_values(candidates: list[tuple[Metric, float | None]]) -> tuple[tuple[Metric, float], ...]:
    """The candidates that are numbers (``None``: a special or "no value" marker, not a reading).

    Whether the device trusts them is not decided here: the frame's ``flags`` travel with them.
    """
    return tuple((metric, float(value)) for metric, value in candidates if value is not None)


def resolve_measured_at(
    device_time: datetime | None,
    received_at: datetime,
    *,
    clock_not_set: bool = False,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
    unheard: tuple[datetime, datetime] | None = None,
) -> tuple[datetime, frozenset[QualityFlag]]:
    """Pick the time a reading was measured: the device clock when it is credible, else the receive time.

    GATT Date Time fields carry no zone, so a naive ``device_time`` is taken to be UTC (devices paired by the
    gateway have their clock set in UTC through the Current Time Service); an aware one is converted to UTC.
    A device clock more than ``max_skew`` away from the gateway's (either way) is not trusted: the receive
    time is used and the reading is flagged CLOCK_SKEWED. A frame whose Date Time field is present but unset
    (year 0; ``clock_not_set``) gives CLOCK_NOT_SET. A frame that carries no time by design (heart rate,
    BTHome advertisements) is measured when it is heard: the receive time, with no flag.

    ``unheard``: (from, until) when the radio could not hear this device (it was out of range, or the gateway was
    down) before the connection this frame came on; ``gateway/link.py`` decides it. A device time in that gap is
    a measurement the device stored and sends now (BP cuffs do), so its own time is used; a time outside it is
    still judged by ``max_skew`` (a clock reset to last year stays skewed).
    """
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware (the gateway clock is UTC)")
    received_utc = received_at.astimezone(UTC)
    if device_time is None:
        return received_utc, frozenset({QualityFlag.CLOCK_NOT_SET}) if clock_not_set else frozenset()
    device_utc = device_time.replace(tzinfo=UTC) if device_time.tzinfo is None else device_time.astimezone(UTC)
    if unheard is not None and unheard[0] - max_skew <= device_utc <= min(unheard[1] + max_skew, received_utc):
        return device_utc, frozenset()
    if abs(device_utc - received_utc) > max_skew:
        return received_utc, frozenset({QualityFlag.CLOCK_SKEWED})
    return device_utc, frozenset()
