"""Subjects and their kinds (issue 13, finding 1; migration 0025).

A subject is whatever readings, alerts, suppressions and incidents are about: a resident, a household, a care home
(site), a shared kit (its readings no session covered), a device or a gateway. Ids are unique per kind only (a
manager chooses resident ids), so a subject is always the pair (kind, id): every reader and writer of
``readings``, ``latest_readings``, ``alerts``, ``alert_suppressions``, ``incidents`` and ``reading_assignments``
filters on both, and no resident id can alias another kind's data.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import NamedTuple


class SubjectKind(StrEnum):
    RESIDENT = "resident"
    HOUSEHOLD = "household"
    SITE = "site"  # a care home: room sensors, scorer health
    KIT = "kit"  # a shared kit's reading not (yet) attributed to a resident
    DEVICE = "device"
    GATEWAY = "gateway"


class Subject(NamedTuple):
    kind: str
    id: str


#: The one string form of a subject: ``kind:id`` (``subject_key``). The kind never holds a colon, so the first colon
#: splits it whatever the id holds. Ingest's ``NOTIFY carewatch_readings`` payloads carry subjects in this form.
SUBJECT_KEY_SEPARATOR = ":"
_KINDS = frozenset(k.value for k in SubjectKind)


def subject_key(subject: tuple[str, str]) -> str:
    """``'resident:r-17'``: a (kind, id) subject as one string (``parse_subject_key`` reads it back)."""
    if isinstance(subject, str):
        raise TypeError(f"a subject is a (kind, id) pair, not the bare id {subject!r}")
    kind, sid = subject
    return f"{SubjectKind(kind).value}{SUBJECT_KEY_SEPARATOR}{sid}"


def parse_subject_key(text: str) -> Subject:
    """The subject of a ``subject_key`` string; ValueError when it names no known kind or no id (a bare id is not a
    key: it names no kind)."""
    kind, sep, sid = text.partition(SUBJECT_KEY_SEPARATOR)
    if not sep or not sid or kind not in _KINDS:
        raise ValueError(f"not a kind:id subject: {text!r}")
    return Subject(SubjectKind(kind).value, sid)


def site_subject_kind(site_kind: str) -> SubjectKind:
    """The subject kind of a site's own readings and alerts (``sites.kind``: 'household' or 'care_home')."""
    return SubjectKind.HOUSEHOLD if site_kind == "household" else SubjectKind.SITE


#: The subject kind of each alert kind (the same table backfills migration 0025). Vital-sign alerts are about a
#: resident, home-sensor alerts about a household, device and hub alerts about the device or gateway.
ALERT_SUBJECT_KIND: dict[str, SubjectKind] = {
    **dict.fromkeys(("news2", "news2_rising", "spo2_below_baseline", "temperature_above_baseline", "soft_signs",
                     "obs_overdue", "data_fault"), SubjectKind.RESIDENT),
    **dict.fromkeys(("night_bathroom", "kitchen_inactivity", "no_morning_activity", "long_bathroom_stay", "long_lie",
                     "out_not_back", "room_cold", "room_hot", "care_review", "household_silent"),
                    SubjectKind.HOUSEHOLD),
    **dict.fromkeys(("device_silent", "battery_low", "device_fault"), SubjectKind.DEVICE),
    "gateway_offline": SubjectKind.GATEWAY,
    "scoring_stalled": SubjectKind.SITE,
}


def alert_subject_kind(alert_kind: str) -> SubjectKind:
    """The kind of subject an alert of ``alert_kind`` is about (KeyError for an unknown alert kind: fail loudly)."""
    return ALERT_SUBJECT_KIND[str(alert_kind)]


def unnest(subjects: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Sorted, de-duplicated (kinds, ids) for ``unnest(%s::text[], %s::text[]) AS p(subject_kind, subject_id)``."""
    pairs: set[tuple[str, str]] = set()
    for subject in subjects:
        if isinstance(subject, str):
            raise TypeError(f"a subject is a (kind, id) pair, not the bare id {subject!r}")
        kind, sid = subject
        pairs.add((str(kind), str(sid)))
    ordered = sorted(pairs)
    return [k for k, _ in ordered], [i for _, i in ordered]
