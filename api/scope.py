"""Who may see and do what: the one place the API decides access. Every route goes through here.

Rules
-----
* **care_staff**: their own site (residents, observations, alerts, device list for batteries).
* **manager**: their own site, plus its configuration (bind/unbind devices, gateways, dead letters) and
  resident records (create/update, Scale 2).
* **nurse**: a nursing home's nurse (``site_id``: like care staff, their own site) or a community nurse
  (``practice_code``: like a GP, the practice's residents); a clinical role, so they set Scale 2 and oxygen.
* **gp**: residents registered with their practice (``residents.gp_practice``), in any home or household; alerts
  about those residents; sites only as far as where those residents live.
* **council**: households (``sites.kind = 'household'``) of their council: behaviour data always, clinical
  vitals (readings of vital signs, observations, NEWS2, SBARD, FHIR, clinical alerts) only where the household
  has consent recorded (``sites.consent_vitals``). Read-only.
* **admin**: everything.

Practice mode (a tablet training a new carer, ``X-Carewatch-Practice: 1``): the same rules, applied to the practice
residents of those sites and their alerts and incidents *only*; outside practice mode, practice residents and
everything about them are not there. So no real list, export, report or figure can show practice data, and a
practice view never shows a real person (docs/kits.md "Practice mode", H-KIT-07).

Two answers, used consistently:

* **404 Not Found** when the resource belongs to another tenant (or does not exist): the API never reveals
  whether someone else's resident, alert, device or site exists.
* **403 Forbidden** when the caller's *role* may never do this (e.g. a council user acknowledging an alert, a
  GP listing gateways), checked before any lookup so it reveals nothing, and when a council user asks for the
  vitals of a household of theirs that has no consent recorded.

The SQL predicates below are the only definition of tenancy; list queries AND them into their WHERE clause and
single-resource loaders use them too, so a list can never show what a direct fetch would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from fastapi import HTTPException, status
from psycopg.rows import dict_row

from carewatch.alerts import CLINICAL_KINDS
from carewatch.api.users import Role, User


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, as loaded from the users table on every request (never from token claims)."""

    username: str
    role: Role
    full_name: str
    site_id: str | None = None
    practice_code: str | None = None
    council: str | None = None
    gateway_id: str | None = None  # a gateway's own account
    practice: bool = False  # the request comes from a tablet in practice mode (training): practice data only

    @classmethod
    def from_user(cls, user: User) -> Principal:
        return cls(user.username, user.role, user.full_name, user.site_id, user.practice_code, user.council,
                   user.gateway_id)


class Permission(StrEnum):
    READ = "read"  # residents, alerts, overview, observations (tenancy still applies)
    WRITE_RESIDENT = "write_resident"
    SET_SCALE2 = "set_scale2"
    RECORD_OBSERVATION = "record_observation"
    ACT_ON_ALERT = "act_on_alert"  # acknowledge, escalate, resolve, comment
    SNOOZE = "snooze"
    READ_DEVICES = "read_devices"
    READ_TASKS = "read_tasks"  # a home's observations due (the shift's task list)
    CONFIGURE_DEVICES = "configure_devices"
    READ_GATEWAYS = "read_gateways"
    READ_GATEWAY_REGISTRY = "read_gateway_registry"  # a gateway's device list *with* BTHome bind keys
    READ_DEAD_LETTERS = "read_dead_letters"
    READ_BEHAVIOUR = "read_behaviour"
    MANAGE_USERS = "manage_users"
    READ_AUDIT = "read_audit"
    READ_ADOPTION = "read_adoption"  # how much each home uses Carewatch (observations, alert response times)
    SET_OXYGEN = "set_oxygen"  # a resident's oxygen prescription: a clinical decision
    USE_KIT = "use_kit"  # start and end measurement sessions on a home's shared kit, claim its readings
    MOVE_READING = "move_reading"  # put a shared kit's reading on the right resident (within an hour)
    READ_ESCALATION = "read_escalation"  # a home's escalation policy and who was told what (delivery log)
    SET_ESCALATION_POLICY = "set_escalation_policy"


_ALL = frozenset(Role)
GRANTS: dict[Permission, frozenset[Role]] = {
    Permission.READ: _ALL,
    Permission.WRITE_RESIDENT: frozenset({Role.MANAGER, Role.ADMIN}),
    # Scale 2 and oxygen are clinical decisions (H-NEWS2-04, H-OBS-04, H-OBS-11): clinical roles only.
    Permission.SET_SCALE2: frozenset({Role.GP, Role.NURSE}),
    Permission.SET_OXYGEN: frozenset({Role.GP, Role.NURSE}),
    Permission.RECORD_OBSERVATION: frozenset({Role.CARE_STAFF, Role.MANAGER, Role.GP, Role.NURSE, Role.ADMIN}),
    Permission.ACT_ON_ALERT: frozenset({Role.CARE_STAFF, Role.MANAGER, Role.GP, Role.NURSE, Role.ADMIN}),
    Permission.SNOOZE: frozenset({Role.MANAGER, Role.GP, Role.NURSE, Role.ADMIN}),
    Permission.READ_DEVICES: frozenset({Role.CARE_STAFF, Role.MANAGER, Role.ADMIN}),
    Permission.READ_TASKS: frozenset({Role.CARE_STAFF, Role.MANAGER, Role.NURSE, Role.ADMIN}),
    Permission.CONFIGURE_DEVICES: frozenset({Role.MANAGER, Role.ADMIN}),
    Permission.READ_GATEWAYS: frozenset({Role.MANAGER, Role.ADMIN}),
    # Bind keys decrypt a home's sensors: only the gateway's own account (a care_staff account whose users row
    # names that gateway, see may_read_registry) and admins. Staff and managers never see them.
    Permission.READ_GATEWAY_REGISTRY: frozenset({Role.CARE_STAFF, Role.ADMIN}),
    Permission.READ_DEAD_LETTERS: frozenset({Role.MANAGER, Role.ADMIN}),
    Permission.READ_BEHAVIOUR: _ALL,
    Permission.MANAGE_USERS: frozenset({Role.ADMIN}),
    Permission.READ_AUDIT: frozenset({Role.ADMIN}),
    Permission.READ_ADOPTION: frozenset({Role.MANAGER, Role.ADMIN}),
    # A nursing home's nurse measures residents with the home's kit like its carers (kit_site_predicate).
    Permission.USE_KIT: frozenset({Role.CARE_STAFF, Role.MANAGER, Role.NURSE, Role.ADMIN}),
    Permission.MOVE_READING: frozenset({Role.CARE_STAFF, Role.MANAGER, Role.NURSE, Role.ADMIN}),
    Permission.READ_ESCALATION: frozenset({Role.CARE_STAFF, Role.MANAGER, Role.ADMIN}),
    Permission.SET_ESCALATION_POLICY: frozenset({Role.MANAGER, Role.ADMIN}),
}

#: Alert kinds that carry clinical information (council users need the household's vitals consent).
CLINICAL_ALERT_KINDS: tuple[str, ...] = tuple(sorted(k.value for k in CLINICAL_KINDS))


def require_gateway_account(principal: Principal, gateway: dict[str, Any]) -> None:
    """403 unless the caller is an admin or this gateway's own account (at the gateway's site)."""
    if principal.role is Role.ADMIN:
        return
    if principal.gateway_id != gateway["gateway_id"] or principal.site_id != gateway["site_id"]:
        raise forbidden("only the gateway's own account (and admins) may read its bind keys")


def forbidden(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail)


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def require(principal: Principal, permission: Permission) -> None:
    """403 when the caller's role may never do this (checked before any lookup, so it reveals nothing)."""
    if principal.role not in GRANTS[permission]:
        raise forbidden(f"a {principal.role.value} user may not do this ({permission.value})")


# ------------------------------------------------------------------------------------------------------------
# SQL predicates: the definition of tenancy
# ------------------------------------------------------------------------------------------------------------
def params(principal: Principal) -> dict[str, Any]:
    """The named parameters every predicate below may use."""
    return {
        "scope_site": principal.site_id,
        "scope_practice": principal.practice_code,
        "scope_council": principal.council,
        "scope_clinical_kinds": list(CLINICAL_ALERT_KINDS),
        "scope_practice_mode": principal.practice,
    }


def practice_device(device_id: str) -> str:
    """The device (``device_id``: an SQL expression) is one of a practice kit's: a condition that takes no caller."""
    return ("coalesce((SELECT scope_k.practice FROM devices scope_d "
            f"JOIN kits scope_k ON scope_k.kit_id = scope_d.kit_id WHERE scope_d.device_id = {device_id}), false)")


def _practice_subject(x: str) -> str:
    """The alert's or incident's (``x``) subject is practice data: the practice resident, or one of the practice kit's
    devices (a device alert: silent, battery, fault; the practice kit lies unused between trainings)."""
    return (f"(coalesce((SELECT scope_p.practice FROM residents scope_p WHERE scope_p.resident_id = {x}.resident_id), "
            f"false) OR ({x}.subject_kind = 'device' AND {practice_device(f'{x}.subject_id')}))")


def subject_practice_match(x: str) -> str:
    """An alert's or incident's (``x``) subject is practice data (``_practice_subject``) exactly when the caller is in
    practice mode; rows about anything else (a real resident, a room, a hub) are real. ANDed into the alert and
    incident predicates below (the resident predicate matches ``residents.practice``), so practice data reaches no
    real view (and real data no practice view)."""
    return f"({_practice_subject(x)} = %(scope_practice_mode)s)"


def real_subject(x: str) -> str:
    """For aggregates that take no caller (adoption figures): the alert (``x``) is about no practice subject."""
    return f"NOT {_practice_subject(x)}"


def real_resident(resident_id: str) -> str:
    """For aggregates that take no caller (adoption figures, notifications): the row is about no practice resident."""
    return (f"NOT coalesce((SELECT scope_p.practice FROM residents scope_p WHERE scope_p.resident_id = {resident_id}), "
            "false)")


def site_predicate(principal: Principal, s: str = "s") -> str:
    """Sites the caller may see (``s`` is an alias of ``sites``)."""
    match principal.role:
        case Role.ADMIN:
            return "TRUE"
        case Role.CARE_STAFF | Role.MANAGER:
            return f"{s}.site_id = %(scope_site)s"
        case Role.GP:
            return (f"EXISTS (SELECT 1 FROM residents scope_r WHERE scope_r.site_id = {s}.site_id "
                    "AND scope_r.gp_practice = %(scope_practice)s)")
        case Role.NURSE:
            return (f"({s}.site_id = %(scope_site)s OR EXISTS (SELECT 1 FROM residents scope_r "
                    f"WHERE scope_r.site_id = {s}.site_id AND scope_r.gp_practice = %(scope_practice)s))")
        case Role.COUNCIL:
            return f"({s}.kind = 'household' AND {s}.council = %(scope_council)s)"
    return "FALSE"  # pragma: no cover - every role is matched above


def resident_predicate(principal: Principal, r: str = "r", s: str = "s") -> str:
    """Residents the caller may see (``r`` residents, ``s`` their site): practice ones only in practice mode."""
    return f"({_resident_tenancy(principal, r, s)}) AND {r}.practice = %(scope_practice_mode)s"


def _resident_tenancy(principal: Principal, r: str, s: str) -> str:
    match principal.role:
        case Role.ADMIN:
            return "TRUE"
        case Role.CARE_STAFF | Role.MANAGER:
            return f"{r}.site_id = %(scope_site)s"
        case Role.GP:
            return f"{r}.gp_practice = %(scope_practice)s"
        case Role.NURSE:
            return f"({r}.site_id = %(scope_site)s OR {r}.gp_practice = %(scope_practice)s)"
        case Role.COUNCIL:
            return f"({s}.kind = 'household' AND {s}.council = %(scope_council)s)"
    return "FALSE"  # pragma: no cover


def vitals_predicate(principal: Principal, s: str = "s") -> str:
    """Where the caller may see clinical vitals, on top of seeing the resident."""
    return f"{s}.consent_vitals" if principal.role is Role.COUNCIL else "TRUE"


def alert_predicate(principal: Principal, a: str = "a", r: str = "r", s: str = "s") -> str:
    """Alerts the caller may see (``a`` alerts, ``r`` LEFT JOINed resident, ``s`` the alert's site)."""
    return f"({_alert_tenancy(principal, a, r, s)}) AND {subject_practice_match(a)}"


def _alert_tenancy(principal: Principal, a: str, r: str, s: str) -> str:
    match principal.role:
        case Role.ADMIN:
            return "TRUE"
        case Role.CARE_STAFF | Role.MANAGER:
            return f"{a}.site_id = %(scope_site)s"
        case Role.GP:
            return f"({a}.resident_id IS NOT NULL AND {r}.gp_practice = %(scope_practice)s)"
        case Role.NURSE:
            return (f"({a}.site_id = %(scope_site)s OR "
                    f"({a}.resident_id IS NOT NULL AND {r}.gp_practice = %(scope_practice)s))")
        case Role.COUNCIL:
            return (f"({s}.kind = 'household' AND {s}.council = %(scope_council)s AND "
                    f"(NOT {a}.kind = ANY(%(scope_clinical_kinds)s) OR {s}.consent_vitals))")
    return "FALSE"  # pragma: no cover


def incident_predicate(principal: Principal, i: str = "i", r: str = "r", s: str = "s") -> str:
    """Incidents the caller may see (``i`` incidents, ``r`` LEFT JOINed resident, ``s`` the incident's site): the
    alert rule, with a council user needing vitals consent for a clinical or data incident."""
    rule = _alert_tenancy(principal, i, r, s)
    if principal.role is Role.COUNCIL:
        rule = (f"({s}.kind = 'household' AND {s}.council = %(scope_council)s AND "
                f"({i}.category NOT IN ('clinical', 'data') OR {s}.consent_vitals))")
    return f"({rule}) AND {subject_practice_match(i)}"


def config_predicate(principal: Principal, site_column: str) -> str:
    """Sites whose configuration (devices, gateways, dead letters) the caller may see."""
    match principal.role:
        case Role.ADMIN:
            return "TRUE"
        case Role.CARE_STAFF | Role.MANAGER:
            return f"{site_column} = %(scope_site)s"
    return "FALSE"


def device_practice_match(d: str = "d") -> str:
    """A device of the practice kit is shown exactly when the caller is in practice mode (``d`` devices)."""
    return (f"(coalesce((SELECT scope_k.practice FROM kits scope_k WHERE scope_k.kit_id = {d}.kit_id), false) "
            "= %(scope_practice_mode)s)")


def kit_site_predicate(principal: Principal, site_column: str) -> str:
    """Homes whose shared kits (sessions, kit readings, practice resident) the caller may use: their own home's
    care staff, managers and nurses (a community nurse has no home: none), admins everywhere."""
    match principal.role:
        case Role.ADMIN:
            return "TRUE"
        case Role.CARE_STAFF | Role.MANAGER | Role.NURSE:
            return f"{site_column} = %(scope_site)s"
    return "FALSE"


def kit_predicate(principal: Principal, k: str = "k") -> str:
    """Shared kits the caller may use (``k`` kits): their home's, the practice kit only in practice mode."""
    return f"{kit_site_predicate(principal, f'{k}.site_id')} AND {k}.practice = %(scope_practice_mode)s"


# ------------------------------------------------------------------------------------------------------------
# Single-resource loaders: 404 for anything outside the caller's tenancy
# ------------------------------------------------------------------------------------------------------------
def _one(conn: psycopg.Connection, query: str, values: dict[str, Any]) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, values).fetchone()


def _load(conn: psycopg.Connection, principal: Principal, what: str, query: str, key: object) -> dict[str, Any]:
    """The row ``query`` finds for ``%(id)s`` = ``key`` with the caller's scope parameters; 404 ``what`` if none."""
    row = _one(conn, query, {**params(principal), "id": key})
    if row is None:
        raise not_found(what)
    return row


def _named(table: str, a: str, key: str, visible: str) -> str:
    """One alert or incident with its resident's and home's names, if the caller may see it."""
    return f"""SELECT {a}.*, r.display_name AS resident_name, s.name AS site_name
            FROM {table} {a} JOIN sites s ON s.site_id = {a}.site_id
            LEFT JOIN residents r ON r.resident_id = {a}.resident_id
            WHERE {a}.{key} = %(id)s AND {visible}"""


def _configured(principal: Principal, table: str, a: str, key: str) -> str:
    """One row of a site's configuration (a gateway), if the caller may see that site's configuration."""
    return f"SELECT {a}.* FROM {table} {a} WHERE {a}.{key} = %(id)s AND {config_predicate(principal, f'{a}.site_id')}"


def load_site(conn: psycopg.Connection, principal: Principal, site_id: str) -> dict[str, Any]:
    return _load(conn, principal, "site",
                 f"SELECT s.* FROM sites s WHERE s.site_id = %(id)s AND {site_predicate(principal)}", site_id)


def load_household(conn: psycopg.Connection, principal: Principal, site_id: str) -> dict[str, Any]:
    row = load_site(conn, principal, site_id)
    if row["kind"] != "household":
        raise not_found("household")
    return row


def load_resident(
    conn: psycopg.Connection, principal: Principal, resident_id: str, *, clinical: bool = False
) -> dict[str, Any]:
    """The resident row (with site kind, name and consent); 404 outside tenancy, 403 for vitals without consent."""
    row = _load(
        conn, principal, "resident",
        f"""SELECT r.*, s.kind AS site_kind, s.name AS site_name, s.consent_vitals, s.council,
                   ({vitals_predicate(principal)}) AS vitals_allowed
            FROM residents r JOIN sites s ON s.site_id = r.site_id
            WHERE r.resident_id = %(id)s AND {resident_predicate(principal)}""", resident_id)
    if clinical and not row["vitals_allowed"]:
        raise forbidden("no consent is recorded for sharing this household's clinical vitals with the council")
    return row


def load_alert(conn: psycopg.Connection, principal: Principal, alert_id: int) -> dict[str, Any]:
    return _load(conn, principal, "alert", _named("alerts", "a", "alert_id", alert_predicate(principal)), alert_id)


def load_incident(conn: psycopg.Connection, principal: Principal, incident_id: int) -> dict[str, Any]:
    return _load(conn, principal, "incident",
                 _named("incidents", "i", "incident_id", incident_predicate(principal)), incident_id)


def load_device(conn: psycopg.Connection, principal: Principal, device_id: str) -> dict[str, Any]:
    return _load(conn, principal, "device", f"""SELECT d.* FROM devices d WHERE d.device_id = %(id)s
                         AND {config_predicate(principal, 'd.site_id')} AND {device_practice_match()}""", device_id)


def load_gateway(conn: psycopg.Connection, principal: Principal, gateway_id: str) -> dict[str, Any]:
    return _load(conn, principal, "gateway", _configured(principal, "gateways", "g", "gateway_id"), gateway_id)


def load_kit(conn: psycopg.Connection, principal: Principal, kit_id: str) -> dict[str, Any]:
    """A home's shared kit: its own staff, managers and admins only (404 otherwise)."""
    return _load(conn, principal, "kit",
                 f"SELECT k.* FROM kits k WHERE k.kit_id = %(id)s AND {kit_predicate(principal)}", kit_id)


def load_kit_session(conn: psycopg.Connection, principal: Principal, session_id: int) -> dict[str, Any]:
    """A measurement session with its kit's name and its resident's banner details (404 outside tenancy)."""
    return _load(
        conn, principal, "session",
        f"""SELECT k.*, kit.name AS kit_name, r.display_name AS resident_name, r.date_of_birth, r.nhs_number,
                   r.photo_url
            FROM kit_sessions k JOIN kits kit ON kit.kit_id = k.kit_id
            JOIN residents r ON r.resident_id = k.resident_id
            WHERE k.session_id = %(id)s AND {kit_predicate(principal, 'kit')}""", session_id)
