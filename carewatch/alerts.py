"""Alert kinds, severities and statuses: the one definition, a shared contract beside carewatch/wire.py (imported by
the alert engine, notify, the API, the dashboard and the simulator)."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum


class Severity(StrEnum):
    INFO = "info"  # evidence for a care review, no action needed now
    LOW = "low"  # look at it today
    MEDIUM = "medium"  # act within the hour
    HIGH = "high"  # act now


SEVERITY_RANK: dict[str, int] = {Severity.INFO: 0, Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3}


class AlertKind(StrEnum):
    # vital signs
    NEWS2 = "news2"  # NEWS2 low-medium, medium or high; severity follows the band
    NEWS2_RISING = "news2_rising"  # score up by 2 or more within 24 h
    SPO2_BELOW_BASELINE = "spo2_below_baseline"
    TEMPERATURE_ABOVE_BASELINE = "temperature_above_baseline"
    SOFT_SIGNS = "soft_signs"  # staff recorded soft signs of deterioration
    OBS_OVERDUE = "obs_overdue"  # an observation round is overdue
    # home sensors
    NIGHT_BATHROOM = "night_bathroom"  # more night-time bathroom visits than usual (UTI pattern)
    KITCHEN_INACTIVITY = "kitchen_inactivity"  # fridge/kitchen unused (not eating or drinking)
    NO_MORNING_ACTIVITY = "no_morning_activity"  # no activity by the usual wake time
    LONG_BATHROOM_STAY = "long_bathroom_stay"  # no motion for long after entering the bathroom (fall/long lie)
    LONG_LIE = "long_lie"  # no motion anywhere for long in waking hours, last seen outside the bedroom
    OUT_NOT_BACK = "out_not_back"  # left by the front door and not back by the household's expected time
    ROOM_COLD = "room_cold"
    ROOM_HOT = "room_hot"
    CARE_REVIEW = "care_review"  # e.g. settled nights: evidence to review (reduce) waking-night care
    # devices and gateways
    DEVICE_SILENT = "device_silent"
    HOUSEHOLD_SILENT = "household_silent"
    BATTERY_LOW = "battery_low"
    DEVICE_FAULT = "device_fault"  # garbage frames, unset/wrong clock, flapping connection
    GATEWAY_OFFLINE = "gateway_offline"
    # the platform itself
    DATA_FAULT = "data_fault"  # a stored value could not be scored: named with its source, last good state kept
    SCORING_STALLED = "scoring_stalled"  # no scorer replica has evaluated a site for 2 minutes (scoring/replicas.py)


class AlertStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    ESCALATED = "escalated"  # a person escalated it outside the home (GP, NHS 111, 999...)
    AUTO_ESCALATED = "auto_escalated"  # nobody answered in time: the escalation policy's next level was told
    RESOLVED = "resolved"


#: Every status except resolved (the inbox, the banner, the escalation pass).
UNRESOLVED_STATUSES = (AlertStatus.OPEN.value, AlertStatus.ACKNOWLEDGED.value, AlertStatus.ESCALATED.value,
                       AlertStatus.AUTO_ESCALATED.value)


#: How long an alert may stay unacknowledged before the engine escalates it (escalation_level + 1, status
#: 'escalated'), and again after each escalation. 'info' never escalates. See docs/clinical-safety.md (H-ALERT-05).
ACK_WINDOW: dict[Severity, timedelta | None] = {
    Severity.HIGH: timedelta(minutes=15),
    Severity.MEDIUM: timedelta(minutes=60),
    Severity.LOW: timedelta(hours=4),
    Severity.INFO: None,
}

#: Automatic escalations stop at this level; the alert stays 'escalated' and visible until someone acts.
MAX_AUTO_ESCALATION_LEVEL = 3

#: Outcomes staff may record when they escalate an alert outside the home.
ESCALATION_OUTCOMES = frozenset(
    {"gp_called", "nhs_111", "called_999", "visit_booked", "advice_given", "admitted", "other"}
)

#: What was done after acknowledging a medium or high NEWS2 alert (one of these must be recorded within
#: ``OUTCOME_WINDOW`` or the alert escalates again). Escalating to the GP, 111 or 999 records one too.
FOLLOW_UP_OUTCOMES = frozenset({"monitoring_plan", "gp_called", "nhs_111", "called_999", "admitted"})

#: After acknowledgement, how long staff have to record an outcome (medium and high NEWS2 alerts).
OUTCOME_WINDOW: dict[Severity, timedelta] = {
    Severity.HIGH: timedelta(minutes=15),
    Severity.MEDIUM: timedelta(minutes=60),
}

#: Alert kinds about a resident's health (the rest are about homes, devices and gateways).
CLINICAL_KINDS = frozenset(
    {
        AlertKind.NEWS2,
        AlertKind.NEWS2_RISING,
        AlertKind.SPO2_BELOW_BASELINE,
        AlertKind.TEMPERATURE_ABOVE_BASELINE,
        AlertKind.SOFT_SIGNS,
        AlertKind.OBS_OVERDUE,
        AlertKind.DATA_FAULT,
    }
)

#: Clinical kinds may be snoozed for at most this long (H-ALERT-07): a clinical picture a day old says little.
CLINICAL_SNOOZE_MAX = timedelta(hours=24)
#: Any other kind (a known flat battery, a household on holiday) at most this long.
OTHER_SNOOZE_MAX = timedelta(days=7)


def snooze_limit(kind: str | None) -> timedelta:
    """The longest snooze allowed for ``kind`` (None = every kind, so the clinical limit applies)."""
    return CLINICAL_SNOOZE_MAX if kind is None or kind in CLINICAL_KINDS else OTHER_SNOOZE_MAX


class IncidentStatus(StrEnum):
    OPEN = "open"  # needs acknowledging (again, after a band rise)
    ACKNOWLEDGED = "acknowledged"
    ESCALATED = "escalated"  # escalated automatically or by staff, not yet closed
    RESOLVED = "resolved"


#: NEWS2 clinical risk bands in order (RCP Chart 3). An incident re-alerts when its band rises along this
#: order, whatever the alert severity enum says (a red 3 and a 5-6 are both 'medium' severity but different
#: bands, H-INC-02).
NEWS2_BANDS: tuple[str, ...] = ("low", "low-medium", "medium", "high")
BAND_RANK: dict[str, int] = {band: i for i, band in enumerate(NEWS2_BANDS)}
#: Each band's acknowledgement window: a rise into the band needs a fresh acknowledgement within it.
BAND_ACK_WINDOW: dict[str, timedelta] = {
    "low": timedelta(hours=4),
    "low-medium": timedelta(minutes=60),
    "medium": timedelta(minutes=60),
    "high": timedelta(minutes=15),
}


class SoftSign(StrEnum):
    """Soft signs of deterioration as care-home tools record them (the one vocabulary: API, scorer, simulator)."""

    NEW_CONFUSION = "new_confusion"
    NOT_EATING_DRINKING = "not_eating_drinking"
    REDUCED_MOBILITY = "reduced_mobility"
    BEHAVIOUR_CHANGE = "behaviour_change"
    NOT_THEMSELVES = "not_themselves"
    REDUCED_URINE = "reduced_urine"
    NEW_PAIN = "new_pain"
    BREATHLESS = "breathless"
    NEW_COUGH = "new_cough"
    DIARRHOEA_VOMITING = "diarrhoea_vomiting"
    SKIN_CHANGE = "skin_change"
    DROWSY = "drowsy"
    OTHER = "other"


#: How each soft sign reads in alert text and on screen.
SOFT_SIGN_NAMES: dict[str, str] = {
    SoftSign.NEW_CONFUSION: "new or worse confusion",
    SoftSign.NOT_EATING_DRINKING: "not eating or drinking",
    SoftSign.REDUCED_MOBILITY: "less mobile or new falls",
    SoftSign.BEHAVIOUR_CHANGE: "change in behaviour",
    SoftSign.NOT_THEMSELVES: "'not themselves'",
    SoftSign.REDUCED_URINE: "passing less urine",
    SoftSign.NEW_PAIN: "new pain",
    SoftSign.BREATHLESS: "more breathless",
    SoftSign.NEW_COUGH: "new cough",
    SoftSign.DIARRHOEA_VOMITING: "diarrhoea or vomiting",
    SoftSign.SKIN_CHANGE: "skin colour or mottling change",
    SoftSign.DROWSY: "more sleepy than usual",
    SoftSign.OTHER: "other (see note)",
}
