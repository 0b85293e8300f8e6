"""API test fixtures: an app on the run's test database (session-wide) and a fresh two-tenant world per test.

Tenant A is the caller's own: care home A, household HA (council A, vitals consent), household HA2 (council A,
no consent), practice A. Tenant B is everyone else's: care home B, household HB (council B), practice B. Every id
of tenant B is listed in ``World.foreign_ids`` so tests can prove it never appears in a response.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from carewatch.api.app import create_app
from carewatch.api.auth import issue_tokens
from carewatch.api.users import create_user, get_user, hash_password
from carewatch.nhs import nhs_check_digit
from carewatch.scoring.incident_store import sync_incidents
from carewatch.settings import Settings
from carewatch.subjects import alert_subject_kind

PASSWORD = "correct horse 42"
ROLES = ("care_staff", "manager", "gp", "nurse", "council", "admin")


@functools.cache
def _password_hash() -> str:
    return hash_password(PASSWORD)


def valid_nhs_number(rng: random.Random) -> str:
    """A random NHS number with a correct modulus-11 check digit (built with carewatch.nhs)."""
    while True:
        first = "9" + "".join(str(rng.randrange(10)) for _ in range(8))
        check = nhs_check_digit(first)
        if check is not None:
            return first + str(check)


def invalid_nhs_number(rng: random.Random) -> str:
    good = valid_nhs_number(rng)
    return good[:9] + str((int(good[9]) + 1) % 10)


@dataclass
class World:
    uid: str
    users: dict[str, str]  # role -> username (tenant A; admin sees all)
    other_users: dict[str, str]  # role -> username in tenant B
    home_a: str
    home_b: str
    household_a: str  # council A, consent to vitals
    household_a2: str  # council A, no consent
    household_b: str  # council B
    practice_a: str
    practice_b: str
    resident_a: str  # home A, practice A
    resident_b: str  # home B, practice B
    resident_ha: str  # household A, practice A
    resident_ha2: str  # household A2 (no consent), practice A
    resident_hb: str  # household B, practice B
    alert_a: int
    alert_b: int
    alert_hb: int
    alert_ha2_clinical: int  # clinical alert at the no-consent household
    device_a: str
    device_b: str
    gateway_a: str
    gateway_b: str
    incident_a: int = 0  # the incidents grouping alert_a, alert_b and alert_hb (incident_store.sync_incidents)
    incident_b: int = 0
    incident_hb: int = 0
    foreign_ids: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, client: TestClient, role: str) -> dict[str, str]:
        """A bearer header for this role's tenant-A user (tokens minted directly; sign-in has its own tests)."""
        if role not in self.tokens:
            with client.app.state.pool.connection() as conn:
                user = get_user(conn, self.users[role])
            assert user is not None
            self.tokens[role] = issue_tokens(conn, user, client.app.state.settings).access_token
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    response = client.post("/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _alert(conn: psycopg.Connection, site: str, resident: str | None, subject: str, kind: str,
           severity: str = "medium", opened_at: datetime | None = None) -> int:
    return conn.execute(
        """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action, score,
                               opened_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING alert_id""",
        (site, resident, alert_subject_kind(kind), subject, kind, severity, f"test reason for {subject} {kind}",
         "test action: phone the GP", 5 if kind == "news2" else None, opened_at or datetime.now(UTC)),
    ).fetchone()[0]


def incident_of(conn: psycopg.Connection, alert_id: int) -> int:
    """Group the alert's subject into its incident (as the engine does after writing alerts); its id."""
    subject = conn.execute("SELECT subject_kind, subject_id FROM alerts WHERE alert_id = %s", (alert_id,)).fetchone()
    sync_incidents(conn, [subject], datetime.now(UTC))
    return conn.execute("SELECT incident_id FROM alerts WHERE alert_id = %s", (alert_id,)).fetchone()[0]


def build_world(conn: psycopg.Connection, uid: str) -> World:
    rng = random.Random(uid)
    now = datetime.now(UTC)
    w = World(
        uid=uid, users={}, other_users={},
        home_a=f"homeA-{uid}", home_b=f"homeB-{uid}", household_a=f"hhA-{uid}", household_a2=f"hhA2-{uid}",
        household_b=f"hhB-{uid}", practice_a=f"PA{uid}", practice_b=f"PB{uid}",
        resident_a=f"resA-{uid}", resident_b=f"resB-{uid}", resident_ha=f"resHA-{uid}",
        resident_ha2=f"resHA2-{uid}", resident_hb=f"resHB-{uid}",
        alert_a=0, alert_b=0, alert_hb=0, alert_ha2_clinical=0,
        device_a=f"devA-{uid}", device_b=f"devB-{uid}", gateway_a=f"gwA-{uid}", gateway_b=f"gwB-{uid}",
    )
    council_a, council_b = f"CouncilA-{uid}", f"CouncilB-{uid}"
    for code, name in ((w.practice_a, "Practice A"), (w.practice_b, "Practice B")):
        conn.execute("INSERT INTO gp_practices VALUES (%s, %s)", (code, f"{name} {uid}"))
    sites = [
        (w.home_a, "care_home", f"Home A {uid}", None, False),
        (w.home_b, "care_home", f"Home B {uid}", None, False),
        (w.household_a, "household", f"House A {uid}", council_a, True),
        (w.household_a2, "household", f"House A2 {uid}", council_a, False),
        (w.household_b, "household", f"House B {uid}", council_b, True),
    ]
    for site_id, kind, name, council, consent in sites:
        conn.execute(
            """INSERT INTO sites (site_id, kind, name, council, care_package, package_hours_per_week,
                                  hourly_rate_gbp, consent_vitals)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (site_id, kind, name, council, "waking-night care" if kind == "household" else None,
             70 if kind == "household" else None, 25.5 if kind == "household" else None, consent))
    residents = [
        (w.resident_a, w.home_a, w.practice_a), (w.resident_b, w.home_b, w.practice_b),
        (w.resident_ha, w.household_a, w.practice_a), (w.resident_ha2, w.household_a2, w.practice_a),
        (w.resident_hb, w.household_b, w.practice_b),
    ]
    for rid, site, practice in residents:
        conn.execute(
            """INSERT INTO residents (resident_id, site_id, display_name, nhs_number, date_of_birth, gp_practice)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            (rid, site, f"Name {rid}", valid_nhs_number(rng), date(1935, 3, 14), practice))
        conn.execute(
            """INSERT INTO resident_state (resident_id, site_id, news2_score, news2_risk, news2_complete, news2_at,
                                           next_obs_due)
               VALUES (%s, %s, 5, 'medium', true, %s, %s)""",
            (rid, site, now - timedelta(hours=2), now - timedelta(minutes=30)))
    w.alert_a = _alert(conn, w.home_a, w.resident_a, w.resident_a, "news2", "medium")
    w.alert_b = _alert(conn, w.home_b, w.resident_b, w.resident_b, "news2", "high")
    w.alert_hb = _alert(conn, w.household_b, None, w.household_b, "night_bathroom", "low")
    w.alert_ha2_clinical = _alert(conn, w.household_a2, w.resident_ha2, w.resident_ha2, "news2", "medium")
    for gw, site in ((w.gateway_a, w.home_a), (w.gateway_b, w.home_b)):
        conn.execute(
            """INSERT INTO gateways (gateway_id, site_id, state, status, status_at, last_seen, last_seq,
                                     missing_seqs)
               VALUES (%s, %s, 'online', %s, %s, %s, 120, 3)""",
            (gw, site, Jsonb({"outbox_depth": 17, "outbox_bytes": 4096, "outbox_budget_pct": 0.5,
                              "oldest_unsent": (now - timedelta(minutes=3)).isoformat()}), now, now))
    for dev, site, gw, rid in ((w.device_a, w.home_a, w.gateway_a, w.resident_a),
                               (w.device_b, w.home_b, w.gateway_b, w.resident_b)):
        conn.execute(
            """INSERT INTO devices (device_id, site_id, gateway_id, kind, model, bind_key, resident_id,
                                    battery_pct, last_seen)
               VALUES (%s, %s, %s, 'pulse_oximeter', 'PO3', 'secret-bind-key-0011', %s, 12, %s)""",
            (dev, site, gw, rid, now - timedelta(minutes=2)))
    for site, gw in ((w.home_a, w.gateway_a), (w.home_b, w.gateway_b)):
        conn.execute(
            """INSERT INTO dead_letters (stage, site_id, gateway_id, reason, raw)
               VALUES ('ingest', %s, %s, %s, %s)""", (site, gw, f"bad frame at {site}", f"raw-{site}"))
    for rid, site in ((w.resident_a, w.home_a), (w.resident_b, w.home_b)):
        conn.execute(
            """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, spo2, pulse,
                                            score, risk, subscores, complete, missing)
               VALUES (%s, %s, %s, 'seed', 'manual', 95, 88, 1, 'low', '{}', false, '{respiration_rate}')""",
            (rid, site, now - timedelta(hours=2)))
    scopes = {
        "care_staff": {"site_id": w.home_a}, "manager": {"site_id": w.home_a},
        "gp": {"practice_code": w.practice_a}, "nurse": {"site_id": w.home_a}, "council": {"council": council_a},
        "admin": {},
    }
    other_scopes = {
        "care_staff": {"site_id": w.home_b}, "manager": {"site_id": w.home_b},
        "gp": {"practice_code": w.practice_b}, "nurse": {"site_id": w.home_b}, "council": {"council": council_b},
    }
    for tenant, table, target in (("a", scopes, w.users), ("b", other_scopes, w.other_users)):
        for role, extra in table.items():
            name = f"{role.replace('_', '')}-{tenant}-{uid}"
            if role == "care_staff" and tenant == "a":
                create_user(conn, name, role, password=PASSWORD, full_name=f"{role} A", **extra)
            else:  # same password, hashed once per run: argon2 is slow on purpose
                conn.execute(
                    """INSERT INTO users (username, full_name, role, site_id, practice_code, council, password_hash)
                       VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                    (name, f"{role} {tenant.upper()}", role, extra.get("site_id"), extra.get("practice_code"),
                     extra.get("council"), _password_hash()))
            target[role] = name
    w.incident_a, w.incident_b, w.incident_hb = (incident_of(conn, a) for a in (w.alert_a, w.alert_b, w.alert_hb))
    conn.commit()
    w.foreign_ids = [w.home_b, w.household_b, w.practice_b, w.resident_b, w.resident_hb, w.device_b, w.gateway_b,
                     f"Name {w.resident_b}", f"Name {w.resident_hb}", f"raw-{w.home_b}", council_b]
    return w




@pytest.fixture(scope="session")
def api_settings(app_database: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    state: Path = tmp_path_factory.mktemp("api-state")
    # Every test client signs in from the same address ("testclient"): the per-address limit has its own tests,
    # with an app of their own (test_api_security.py).
    return Settings(database_url=app_database, jwt_secret="test-signing-key-" + "x" * 32, state_dir=state,
                    access_token_minutes=15, refresh_token_hours=12, login_max_failures_per_client=100_000)


@pytest.fixture(scope="session")
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as test_client:
        yield test_client


@pytest.fixture
def world(db: psycopg.Connection, uid: str) -> World:
    return build_world(db, uid)


@pytest.fixture
def nhs_numbers(uid: str) -> tuple[Callable[[], str], Callable[[], str]]:
    """(valid, invalid) NHS number makers, seeded per test."""
    rng = random.Random(f"nhs-{uid}")
    return (lambda: valid_nhs_number(rng)), (lambda: invalid_nhs_number(rng))

