"""Request and response models of the API (they are the OpenAPI schema at /docs)."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from carewatch.alerts import ESCALATION_OUTCOMES, FOLLOW_UP_OUTCOMES, SoftSign
from carewatch.api.users import USERNAME_PATTERN, Role
from carewatch.nhs import normalise_nhs_number
from carewatch.subjects import SubjectKind
from carewatch.wire import Ident, Metric, check_plausible

T = TypeVar("T")

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=1000)]
Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]

#: What a subject id names (carewatch/subjects.py): ids are unique per kind only, so a client tells a resident
#: ``r-1`` from a household ``r-1`` by the pair (``subject_kind``, ``subject_id``), never by the id alone.
SUBJECT_KIND_DOC = ("What subject_id names: resident, household, site (a care home), kit, device or gateway. Ids are "
                    "unique per kind only: the subject is the pair (subject_kind, subject_id).")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page, or null on the last page.")


def page_of(items: list[Any], limit: int, offset: int) -> dict[str, Any]:
    """Page fields from ``limit + 1`` fetched rows (the extra row only says whether there is more)."""
    more = len(items) > limit
    return {"items": items[:limit], "limit": limit, "offset": offset, "next_offset": offset + limit if more else None}


# ------------------------------------------------------------------------------------------------------------
# Sites and overview
# ------------------------------------------------------------------------------------------------------------
class SiteOut(BaseModel):
    site_id: str
    kind: Literal["care_home", "household"]
    name: str
    council: str | None = None
    care_package: str | None = None
    package_hours_per_week: float | None = None
    hourly_rate_gbp: float | None = None
    consent_vitals: bool
    created_at: datetime


class News2Badge(BaseModel):
    """A NEWS2 score as shown to staff: number, word and colour together (never colour alone)."""

    score: int | None
    risk: str | None
    label: str = Field(description="e.g. 'Medium' or 'No score yet'.")
    colour: str = Field(description="green / yellow / orange / red / grey.")
    complete: bool | None = None
    at: datetime | None = None


class LatestValue(BaseModel):
    value: float
    unit: str
    measured_at: datetime
    device_id: str
    flags: list[str] = []


class DeviceWarning(BaseModel):
    device_id: str
    kind: str
    resident_id: str | None
    room: str | None
    battery_pct: float | None
    last_seen: datetime | None
    problem: str = Field(description="Plain words, e.g. 'battery 12%: change it today'.")


class ResidentOverview(BaseModel):
    resident_id: str
    display_name: str
    monitoring: str
    scale2: bool
    news2: News2Badge | None = Field(description="null when the caller may not see this resident's vitals.")
    next_obs_due: datetime | None
    obs_overdue: bool
    open_alerts: int = Field(description="Unresolved alerts (the components of its incidents, and any outside one)")
    worst_severity: str | None
    open_incidents: int = Field(0, description="Unresolved incidents: one per problem of this person (H-INC-01)")
    worst_incident_severity: str | None = None
    latest_vitals: dict[str, LatestValue] | None
    device_warnings: list[DeviceWarning]


class SiteOverview(BaseModel):
    site: SiteOut
    generated_at: datetime
    residents: list[ResidentOverview]
    device_warnings: list[DeviceWarning] = Field(description="Every warning at the site, room sensors included.")


# ------------------------------------------------------------------------------------------------------------
# Residents
# ------------------------------------------------------------------------------------------------------------
def _nhs(value: str | None) -> str | None:
    return None if value is None or value.strip() == "" else normalise_nhs_number(value)


class ResidentOut(BaseModel):
    resident_id: str
    site_id: str
    display_name: str
    nhs_number: str | None
    date_of_birth: date
    gp_practice: str | None
    obs_per_day: int
    monitoring: str
    baseline_confused: bool
    scale2: bool
    scale2_set_by: str | None
    scale2_set_at: datetime | None
    scale2_reason: str | None
    oxygen_prescribed: bool | None = Field(default=None, description="Oxygen prescription: true on oxygen, "
                                           "false on air, null not recorded (device-only sets are then unconfirmed).")
    oxygen_flow_lpm: float | None = None
    oxygen_set_by: str | None = None
    oxygen_set_at: datetime | None = None
    created_at: datetime
    practice: bool = Field(default=False, description="Practice mode's training resident (not a real person).")
    photo_url: str | None = Field(default=None, description="The home's photo of the resident (https), if kept.")


MonitoringState = Literal["active", "paused", "discharged", "deceased"]


class ResidentCreate(_In):
    resident_id: Ident
    site_id: Ident
    display_name: ShortText
    nhs_number: str | None = Field(default=None, description="10 digits, spaces allowed; modulus-11 checked.")
    date_of_birth: date
    gp_practice: Ident | None = None
    obs_per_day: int = Field(default=2, ge=1, le=24)
    baseline_confused: bool = Field(default=False, description="Confusion is this person's norm (e.g. dementia).")

    @field_validator("nhs_number")
    @classmethod
    def _check_nhs(cls, value: str | None) -> str | None:
        return _nhs(value)

    @field_validator("date_of_birth")
    @classmethod
    def _dob(cls, value: date) -> date:
        if value > date.today() or value.year < 1890:
            raise ValueError("date of birth must be in the past (and after 1890)")
        return value


class ResidentUpdate(_In):
    display_name: ShortText | None = None
    nhs_number: str | None = None
    date_of_birth: date | None = None
    gp_practice: Ident | None = None
    obs_per_day: int | None = Field(default=None, ge=1, le=24)
    baseline_confused: bool | None = None
    monitoring: MonitoringState | None = None
    photo_url: str | None = Field(default=None, max_length=500, pattern=r"^https://[^\s\"'<>]+$",
                                  description="Where the home keeps the resident's photo (https); null removes it.")

    @field_validator("nhs_number")
    @classmethod
    def _check_nhs(cls, value: str | None) -> str | None:
        return _nhs(value)


class Scale2Update(_In):
    scale2: bool = Field(description="true: use SpO2 Scale 2 (target 88-92%); false: back to Scale 1.")
    reason: Reason = Field(description="Why, and on whose clinical advice (required either way).")


class OxygenUpdate(_In):
    on_oxygen: bool = Field(description="true: oxygen prescribed; false: on air (no oxygen).")
    flow_lpm: float | None = Field(default=None, ge=0.1, le=15, description="Prescribed flow, litres per minute.")

    @model_validator(mode="after")
    def _flow_needs_oxygen(self) -> OxygenUpdate:
        if not self.on_oxygen and self.flow_lpm is not None:
            raise ValueError("a flow rate is only given with on_oxygen true")
        return self


class BoundDevice(BaseModel):
    device_id: str
    kind: str
    battery_pct: float | None
    last_seen: datetime | None


class MonitoringStatus(BaseModel):
    resident_id: str
    monitoring: str
    news2: News2Badge | None
    last_seen: datetime | None
    next_obs_due: datetime | None
    obs_overdue: bool
    devices: list[BoundDevice]


# ------------------------------------------------------------------------------------------------------------
# Observations
# ------------------------------------------------------------------------------------------------------------
class News2Parameter(StrEnum):
    RESPIRATION_RATE = "respiration_rate"
    SPO2 = "spo2"
    SYSTOLIC_BP = "systolic_bp"
    PULSE = "pulse"
    TEMPERATURE = "temperature"


#: Device metric behind each measurable NEWS2 parameter.
PARAMETER_METRIC: dict[News2Parameter, Metric] = {
    News2Parameter.RESPIRATION_RATE: Metric.RESPIRATION_RATE,
    News2Parameter.SPO2: Metric.SPO2,
    News2Parameter.SYSTOLIC_BP: Metric.SYSTOLIC_BP,
    News2Parameter.PULSE: Metric.PULSE_RATE,
    News2Parameter.TEMPERATURE: Metric.TEMPERATURE,
}


class PrefillValue(BaseModel):
    parameter: News2Parameter
    metric: str
    value: float
    unit: str
    device_id: str
    measured_at: datetime


class Prefill(BaseModel):
    resident_id: str
    window_minutes: int
    generated_at: datetime
    values: dict[str, PrefillValue]
    skipped: dict[str, str] = Field(description="Recent readings not offered, with the reason (e.g. flagged).")


class ObservationIn(_In):
    """One observation set typed in by staff. Any parameter may be left out (the score is then incomplete).

    ``consciousness`` is ACVPU: 'C' means NEW confusion; a resident's usual confusion (e.g. dementia) is 'A'.
    List in ``from_device`` the parameters whose device reading (from the prefill) you accepted: the API takes
    the value and its provenance from that reading, so the record says which device measured it and when.
    """

    taken_at: AwareDatetime | None = Field(default=None, description="Default: now.")
    respiration_rate: float | None = None
    spo2: float | None = None
    on_oxygen: bool = False
    systolic_bp: float | None = None
    pulse: float | None = None
    consciousness: Literal["A", "C", "V", "P", "U"] | None = None
    temperature: float | None = None
    soft_signs: list[SoftSign] = Field(default=[], max_length=len(SoftSign))
    note: Note | None = None
    from_device: list[News2Parameter] = Field(default=[], max_length=len(News2Parameter))
    prefill_minutes: int = Field(default=15, ge=1, le=120, description="How recent an accepted device value must be.")
    session_id: int | None = Field(default=None, ge=1, description="The shared-kit measurement session these values "
                                   "came from: saving ends it.")
    identity_confirmed: bool = Field(default=False, description="The carer answered yes to 'Is this <name>?' for "
                                     "kit values far from this resident's usual ones.")

    @field_validator("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature")
    @classmethod
    def _plausible(cls, value: float | None, info: Any) -> float | None:
        if value is None:
            return None
        return check_plausible(PARAMETER_METRIC[News2Parameter(info.field_name)], value)

    @field_validator("soft_signs", "from_device")
    @classmethod
    def _unique(cls, value: list[Any]) -> list[Any]:
        return list(dict.fromkeys(value))


class AlertBrief(BaseModel):
    alert_id: int
    kind: str
    severity: str
    status: str
    reason: str
    action: str


class ObservationOut(BaseModel):
    obs_id: int
    resident_id: str
    taken_at: datetime
    recorded_at: datetime
    recorded_by: str
    source: str
    respiration_rate: float | None
    spo2: float | None
    spo2_scale: int
    on_oxygen: bool
    systolic_bp: float | None
    pulse: float | None
    consciousness: str | None
    temperature: float | None
    soft_signs: list[str]
    note: str | None
    inputs: dict[str, Any]
    score: int
    risk: str
    subscores: dict[str, int | None]
    complete: bool
    missing: list[str]


class ObservationResult(BaseModel):
    """The stored set and its NEWS2 result, with what it means and what to do now in plain English."""

    obs_id: int
    resident_id: str
    taken_at: datetime
    source: str
    spo2_scale: int
    score: int
    risk: str
    label: str
    colour: str
    subscores: dict[str, int | None]
    complete: bool
    missing: list[str]
    meaning: str
    action: str
    min_interval_minutes: int
    continuous_monitoring: bool
    soft_signs: list[str]
    alerts_evaluated: bool = Field(description="false: the alerting stage failed; act on this result yourself.")
    open_alerts: list[AlertBrief]


# ------------------------------------------------------------------------------------------------------------
# Readings timeline
# ------------------------------------------------------------------------------------------------------------
class TimelinePoint(BaseModel):
    t: datetime
    value: float = Field(description="The reading, or the bucket's mean.")
    min: float | None = None
    max: float | None = None
    n: int = 1


class Timeline(BaseModel):
    subject_kind: SubjectKind = Field(description=SUBJECT_KIND_DOC)
    subject_id: str
    metric: str
    unit: str
    start: datetime
    end: datetime
    bucket: str | None = Field(description="Bucket width, or null for raw points.")
    points: list[TimelinePoint]
    truncated: bool = False


# ------------------------------------------------------------------------------------------------------------
# Alerts
# ------------------------------------------------------------------------------------------------------------
class AlertOut(BaseModel):
    alert_id: int
    site_id: str
    site_name: str | None = None
    resident_id: str | None
    resident_name: str | None = None
    subject_kind: SubjectKind = Field(description=SUBJECT_KIND_DOC)
    subject_id: str
    kind: str
    severity: str
    status: str
    reason: str
    action: str
    score: int | None
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    escalated_at: datetime | None
    escalation_level: int
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None
    incident_id: int | None = Field(default=None, description="The incident this alert is part of, if any.")
    notify_level: int = Field(0, description="Escalation-policy level last told automatically (0: nobody yet)")
    notify_reason: str | None = Field(None, description="Why: 'unacknowledged' or 'no_outcome'")
    notify_due_at: datetime | None = Field(None, description="When the next level is told if nobody answers")
    outcome: str | None = Field(None, description="What was done after acknowledging (monitoring plan, GP...)")
    outcome_at: datetime | None = None
    outcome_by: str | None = None
    data: dict[str, Any] = {}


class IncidentComponent(AlertOut):
    """One component of an incident: a (possibly resolved) alert with its evidence in ``data``."""


class IncidentOut(BaseModel):
    incident_id: int
    site_id: str
    site_name: str | None = None
    resident_id: str | None
    resident_name: str | None = None
    subject_kind: SubjectKind = Field(description=SUBJECT_KIND_DOC)
    subject_id: str
    category: str
    severity: str
    band: str | None = Field(description="NEWS2 risk band now (clinical incidents).")
    peak_band: str | None
    status: str
    headline: str
    action: str
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    ack_due_at: datetime | None
    escalation_level: int = Field(description="How many times a person escalated it outside the home")
    escalated_at: datetime | None
    escalated_by: str | None = Field(None, description="Who escalated it (GP, NHS 111, 999): a person; the "
                                                       "ladder's own steps are status 'auto_escalated'")
    notify_level: int = Field(0, description="The escalation policy level last told (0: nobody yet)")
    notify_reason: str | None = Field(None, description="Why: unacknowledged, awaiting_outcome, no_outcome, risen")
    notify_due_at: datetime | None = Field(None, description="When the next level is told if nobody answers")
    owner: str | None
    outcome: str | None
    outcome_comment: str | None
    outcome_at: datetime | None
    outcome_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None
    components: list[IncidentComponent] = Field(default=[], description="Unresolved components, worst first.")


class IncidentEventOut(BaseModel):
    event_id: int
    at: datetime
    actor: str
    action: str
    outcome: str | None
    comment: str | None
    detail: dict[str, Any]


class IncidentDetail(IncidentOut):
    history: list[IncidentComponent] = Field(description="Every component alert it ever had, resolved included.")
    events: list[IncidentEventOut]


class OutcomeIn(_In):
    outcome: str = Field(description="monitoring_plan, gp_called, nhs_111, called_999, visit_booked, advice_given, "
                                     "admitted or other (with a comment).")
    comment: Note | None = None


class TaskOut(BaseModel):
    resident_id: str
    display_name: str
    site_id: str
    due_at: datetime
    status: Literal["overdue", "due", "upcoming"]
    why: str
    why_text: str
    last_at: datetime | None
    last_score: int | None
    last_risk: str | None
    in_incident: bool = Field(description="Overdue and part of the resident's incident (it escalates).")
    text: str


class TaskList(BaseModel):
    site_id: str
    shift: str
    shift_start: datetime
    shift_end: datetime
    generated_at: datetime
    tasks: list[TaskOut]


class AlertEventOut(BaseModel):
    event_id: int
    at: datetime
    actor: str
    action: str
    outcome: str | None
    comment: str | None
    detail: dict[str, Any]


class AlertDetail(AlertOut):
    events: list[AlertEventOut]


#: Escalation outcomes, from the one definition in carewatch.alerts (an enum here for the OpenAPI schema).
# (mypy cannot list the members of an enum built from a set; the OpenAPI schema and pydantic can)
EscalationOutcome = StrEnum("EscalationOutcome", {v.upper(): v for v in sorted(ESCALATION_OUTCOMES)})  # type: ignore[misc]


class AcknowledgeIn(_In):
    comment: Note | None = None


class EscalateIn(_In):
    outcome: EscalationOutcome
    comment: Note | None = None


#: Outcomes after acknowledgement, from the one definition in carewatch.alerts.
FollowUpOutcome = StrEnum("FollowUpOutcome", {v.upper(): v for v in sorted(FOLLOW_UP_OUTCOMES)})  # type: ignore[misc]


class AlertOutcomeIn(_In):
    outcome: FollowUpOutcome = Field(description="monitoring_plan, gp_called, nhs_111, called_999 or admitted")
    comment: Note | None = None


class ResolveIn(_In):
    resolution: Reason


class CommentIn(_In):
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class SnoozeIn(_In):
    kind: str | None = Field(default=None, description="Alert kind to snooze, or null for every kind.")
    reason: Reason
    until: AwareDatetime | None = None
    minutes: int | None = Field(default=None, ge=5, le=7 * 24 * 60)

    @model_validator(mode="after")
    def _one_end(self) -> SnoozeIn:
        if (self.until is None) == (self.minutes is None):
            raise ValueError("give exactly one of 'until' or 'minutes'")
        return self


class SnoozeOut(BaseModel):
    subject_kind: SubjectKind = Field(description=SUBJECT_KIND_DOC)
    subject_id: str
    kind: str | None
    until: datetime
    reason: str
    created_by: str


# ------------------------------------------------------------------------------------------------------------
# Devices, gateways, dead letters
# ------------------------------------------------------------------------------------------------------------
class DeviceOut(BaseModel):
    """A device (its BTHome bind key is never returned)."""

    device_id: str
    site_id: str
    gateway_id: str | None
    kind: str
    model: str | None
    mac: str | None
    resident_id: str | None
    kit_id: str | None = None
    room: str | None
    role: str | None
    active: bool
    battery_pct: float | None
    rssi_dbm: int | None
    last_seen: datetime | None
    bound_at: datetime
    unbound_at: datetime | None
    silent: bool


class BindIn(_In):
    """Bind a device to one resident, to a room, or to a shared kit (measures whoever the tablet session names)."""

    resident_id: Ident | None = None
    room: ShortText | None = None
    kit_id: Ident | None = None
    role: ShortText | None = Field(default=None, description="e.g. bathroom, fridge_door, kettle.")

    @model_validator(mode="after")
    def _exactly_one(self) -> BindIn:
        if sum(x is not None for x in (self.resident_id, self.room, self.kit_id)) != 1:
            raise ValueError("bind to exactly one of 'resident_id', 'room' or 'kit_id'")
        return self


class GatewayOut(BaseModel):
    gateway_id: str
    site_id: str
    state: str
    online: bool
    status_at: datetime | None
    last_seen: datetime | None
    last_seq: int
    missing_seqs: int
    outbox_depth: int | None
    outbox_bytes: int | None
    outbox_budget_pct: float | None
    oldest_unsent: datetime | None
    devices: int = Field(0, description="Active devices behind this hub: the real ones (the practice kit's are not "
                                        "counted here)")
    practice_devices: int = Field(0, description="Active devices of the home's practice kit behind this hub "
                                                 "(training, counted apart: docs/kits.md 'Practice mode')")


class DeadLetterOut(BaseModel):
    dl_id: int
    at: datetime
    stage: str
    site_id: str | None
    gateway_id: str | None
    device_id: str | None
    seq: int | None
    topic: str | None
    reason: str
    raw: str


# ------------------------------------------------------------------------------------------------------------
# Users and audit
# ------------------------------------------------------------------------------------------------------------
Username = Annotated[str, BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v),
                     StringConstraints(pattern=USERNAME_PATTERN)]


class UserOut(BaseModel):
    username: str
    full_name: str
    role: Role
    site_id: str | None
    practice_code: str | None
    council: str | None
    active: bool
    created_at: datetime
    gateway_id: str | None = Field(default=None, description="Set: the gateway's own account (reads bind keys).")


#: The password policy's length; the rest (common passwords, the username) is api.users.check_password_policy.
Password = Annotated[str, StringConstraints(min_length=12, max_length=256)]


class UserCreate(_In):
    username: Username
    role: Role
    password: Password
    full_name: ShortText | None = None
    site_id: Ident | None = None
    practice_code: Ident | None = None
    council: ShortText | None = None
    gateway_id: Ident | None = Field(default=None, description="Make this care_staff account the gateway's own.")


class UserUpdate(_In):
    full_name: ShortText | None = None
    role: Role | None = None
    site_id: Ident | None = None
    practice_code: Ident | None = None
    council: ShortText | None = None
    active: bool | None = None
    gateway_id: Ident | None = None


class PasswordIn(_In):
    password: Password


class AuditOut(BaseModel):
    audit_id: int
    at: datetime
    username: str | None
    role: str | None
    action: str
    method: str | None
    path: str | None
    subject_type: str | None
    subject_id: str | None
    status: int | None
    client: str | None
    detail: dict[str, Any]


# ------------------------------------------------------------------------------------------------------------
# Escalation: policy, delivery log, the tablets' banner
# ------------------------------------------------------------------------------------------------------------
class EscalationPolicyOut(BaseModel):
    site_id: str
    policy: dict[str, Any] = Field(description="levels (1 staff on shift, 2 senior, 3 manager on call) with "
                                               "contacts and windows, and outcome_minutes")
    is_default: bool = Field(description="True: no policy was set for this site; this is the default")
    updated_by: str | None
    updated_at: datetime | None
    gaps: list[str] = Field(description="Levels with nobody on them (their step reaches nobody and moves on)")


class DeliveryOut(BaseModel):
    delivery_id: int
    site_id: str
    target_kind: str
    target_id: int
    level: int
    reason: str
    channel: str
    recipient: str
    created_at: datetime
    attempted_at: datetime | None
    result: str
    detail: str | None
    external_id: str | None


class BannerItem(BaseModel):
    incident_id: int = Field(description="The incident that waits (acknowledge it: its components follow)")
    alert_id: int = Field(description="Its headline component")
    resident_id: str | None
    who: str
    kind: str
    severity: str
    status: str
    score: int | None
    reason: str
    action: str
    opened_at: datetime
    acknowledged_by: str | None
    notify_level: int
    needs: Literal["acknowledgement", "outcome", "closing"] = Field(
        description="What it waits for: acknowledgement, an outcome after acknowledgement, or a person to close it "
                    "(a high alert whose resident has recovered)")
    route: str | None = Field(None, description="For NEWS2 5+: the GP / NHS 111 / 999 route of its response")
    outcome_due_at: datetime | None = Field(None, description="After acknowledgement: the outcome is needed by then")
    recovery: str | None = Field(None, description="For a high alert the latest low set no longer supports")


class Banner(BaseModel):
    site_id: str
    generated_at: datetime
    sound: bool = Field(description="True while any medium or high alert waits for acknowledgement: every "
                                    "tablet of the home sounds until someone acknowledges it")
    items: list[BannerItem]
