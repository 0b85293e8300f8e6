"""``carewatch demo``: the whole platform on this machine, on embedded defaults.

It starts (or reuses) a private PostgreSQL and MQTT broker under the state dir, migrates and seeds the database
from a simulated world (2 care homes × 12 residents, 3 households, one user per role; Oakview measures with one
shared kit whose simulated carers drive the tablet's sessions through the API, Riverside gives each resident their
own devices), then runs ingest, the
scorer, the API and the dashboard as child processes, and the simulator plus one real gateway per site in this
process. Simulated time starts at 05:00 on a morning at least 12 hours ago and runs ``accelerate`` times faster
until it catches up with the wall clock, so every scripted scenario appears within 3 minutes at the default ×60.
Notifications go to receivers of the demo's own: an SMTP server, a server speaking GOV.UK Notify's API (SMS) and
a webhook receiver that checks signatures; each home gets an escalation policy (tablets and the nurse-call
webhook, then the senior's phone, then the manager's email). What they receive is printed as it arrives, and a
simulated member of staff acknowledges each NEWS2 incident once it has reached the senior (level 2), without
recording an outcome, so the follow-up escalation to level 3 shows too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from datetime import time as local_clock
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg

from carewatch.db import one
from carewatch.db.migrate import migrate
from carewatch.embedded import EmbeddedBroker, EmbeddedPostgres, port_open, wait_for
from carewatch.procs import Supervisor
from carewatch.settings import Settings

DEMO_PASSWORD = "carewatch-demo"
TZ = ZoneInfo("Europe/London")
HOMES = (("oakview", "Oakview Care Home"), ("riverside", "Riverside House"))
#: Homes that measure with a shared kit (the others give each resident their own bedside devices).
SHARED_KIT_HOMES = ("oakview",)
RESIDENTS_PER_HOME = 12
HOUSEHOLDS = 3
HISTORY = timedelta(days=14)
WEBHOOK_SECRET_FILE = "webhook.secret"


@dataclass
class DemoUser:
    username: str
    role: str
    full_name: str
    scope: dict[str, str] = field(default_factory=dict)


#: Simulated time starts at this local time: the live night's 06:00 (when a night is complete and the night-time
#: rules can judge it) comes one simulated hour in, one minute at the default ×60 (margin for a busy machine).
SIM_START_LOCAL = local_clock(5, 0)
#: Vital-sign scenarios start this long before the live part, so the resident is visibly unwell (hourly checks)
#: when it begins and the first live round shows it within the first minute or two at ×60.
VITALS_HEAD_START = timedelta(hours=3)


def sim_start_for(now: datetime) -> datetime:
    """05:00 local on a morning at least 12 hours ago: the night-time scenarios' night then completes within the
    demo's first minutes (every scripted scenario appears within 3 minutes at the default ×60)."""
    local = now.astimezone(TZ)
    start = datetime.combine(local.date(), SIM_START_LOCAL, tzinfo=TZ)
    while start > local - timedelta(hours=12):
        start -= timedelta(days=1)
    return start.astimezone(UTC)


class Demo:
    """Owns every server, child process, gateway and the simulator of one demo run."""

    def __init__(self, settings: Settings, *, accelerate: float, headless: bool, fresh: bool, seed: int,
                 radio: str = "bytes") -> None:
        self.settings = settings
        self.radio = radio
        self.accelerate = accelerate
        self.headless = headless
        self.seed = seed
        self.dir = settings.state_dir / "demo"
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if settings.state_dir.stat().st_mode & 0o001 == 0:
            settings.state_dir.chmod(0o755)  # the embedded PostgreSQL may run as another account
        self.dir.chmod(0o755)
        self.pg: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.dsn = settings.database_url or ""
        self.service_dsn = self.dsn  # what ingest, the scorer and the API sign in as (see start_servers)
        self.mqtt_url = settings.mqtt_url or ""
        self.shared = True
        self.supervisor: Supervisor | None = None
        self.fleet: Any = None
        self.world: Any = None
        self.api_url = f"http://127.0.0.1:{settings.api_port}"
        self._tokens: dict[str, str] = {}
        self._token_lock = threading.Lock()
        self.started_at = datetime.now(UTC)
        self.receivers: dict[str, Any] = {}
        self._printed: dict[str, int] = {}
        self._acknowledged: set[int] = set()
        self.deliveries_before = 0

    # -- servers ------------------------------------------------------------------------------------------
    def start_servers(self) -> None:
        if not self.dsn:
            self.pg = EmbeddedPostgres(self.dir / "postgres", self.settings.demo_pg_port)
            self.dsn = self.pg.start()
        if not self.mqtt_url:
            self.broker = EmbeddedBroker(self.dir / "mqtt", self.settings.demo_mqtt_port,
                                         prefer=self.settings.demo_broker)
            self.mqtt_url = self.broker.start()
            self.shared = self.broker.supports_shared
        migrate(self.dsn)
        if self.pg is not None:  # our own cluster: the services run as the application role, as deployed
            from psycopg.conninfo import make_conninfo

            from carewatch.db.roles import ensure_login

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                ensure_login(conn, "carewatch_api", "app", None)  # trust auth on 127.0.0.1: no password
            self.service_dsn = make_conninfo(self.dsn, user="carewatch_api")
        self.start_receivers()

    def start_receivers(self) -> None:
        """The demo's own SMTP server, Notify-speaking server and webhook receiver (see carewatch.notify)."""
        import secrets

        from carewatch.notify.receivers import NotifyServer, SmtpServer, WebhookReceiver

        secret_file = self.dir / WEBHOOK_SECRET_FILE
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
        self.webhook_secret = secret_file.read_text().strip()
        self.receivers = {"email": SmtpServer().start(), "sms": NotifyServer().start(),
                          "webhook": WebhookReceiver(self.webhook_secret).start()}

    def notify_env(self) -> dict[str, str]:
        sms = self.receivers["sms"]
        return {"notify_smtp_host": "127.0.0.1", "notify_smtp_port": str(self.receivers["email"].port),
                "notify_smtp_sender": "carewatch-demo@localhost", "notify_sms_api_key": sms.api_key,
                "notify_sms_template_id": sms.template_id, "notify_sms_base_url": sms.url,
                "notify_webhook_secret": self.webhook_secret}

    def _seed_policies(self, conn: psycopg.Connection) -> None:
        """Each home: tablets + the nurse-call webhook, then the senior's phone, then the manager's email."""
        from carewatch.notify import store
        from carewatch.notify.policy import ChannelName, Contact, EscalationPolicy, Level

        hook = self.receivers["webhook"].url
        for i, (site_id, _name) in enumerate(HOMES):
            policy = EscalationPolicy(levels=[
                Level(level=1, name="Staff on shift", contacts=[
                    Contact(channel=ChannelName.DASHBOARD, recipient="tablets"),
                    Contact(channel=ChannelName.WEBHOOK, recipient=f"{hook}/nurse-call/{site_id}",
                            name="Nurse-call system")]),
                Level(level=2, name="Senior on shift", contacts=[
                    Contact(channel=ChannelName.SMS, recipient=f"07700 900{100 + i:03d}", name="Senior on shift")]),
                Level(level=3, name="Manager on call", contacts=[
                    Contact(channel=ChannelName.EMAIL, recipient=f"manager@{site_id}.example", name="Morgan Manager")]),
            ])
            store.save(conn, site_id, policy, "manager")

    # -- world and seed -----------------------------------------------------------------------------------
    def build(self, now: datetime) -> None:
        from carewatch.firmware_sim.backfill import backfill_world
        from carewatch.firmware_sim.care import HomeCare
        from carewatch.firmware_sim.devices import DeviceLayer, world_devices
        from carewatch.firmware_sim.kit_round import write_history_sessions
        from carewatch.firmware_sim.scenarios import Onset, load_scenarios
        from carewatch.firmware_sim.seed import seed_world
        from carewatch.firmware_sim.world import SiteSpec, build_world

        # a diligent home: a resident who looks unwell is checked within the hour and re-checked as the chart says,
        # so the demo's infection shows in its first simulated hours whatever the drawn home would have done
        demo_care = replace(HomeCare.textbook(), concern_per_h=1.5, follow_up_compliance=1.0)

        self.sim_start = sim_start_for(now)
        world_start = self.sim_start - HISTORY
        # The history before the live part gives personal baselines. Vital-sign scenarios start 3 hours before
        # the live part; night-time patterns two days before, so their first night is already in the history and
        # the second (which confirms the pattern) completes at 06:00, a minute into the demo (``_lead_in``).
        scenarios = [s.model_copy(update={"onset": Onset(offset=self._lead_in(s) + s.onset.offset)})
                     if s.onset.offset is not None else s for s in load_scenarios("demo")]
        self.world = build_world(
            seed=self.seed, sites=[SiteSpec(id=i, name=n, residents=RESIDENTS_PER_HOME, care=demo_care)
                                   for i, n in HOMES],
            households=HOUSEHOLDS, scenarios=scenarios, start=world_start,
        )
        self.devices = world_devices(self.world, SHARED_KIT_HOMES)
        self.layer = DeviceLayer(self.devices, seed=self.seed)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            seed_world(conn, self.world, self.devices)
            self.users = self._seed_users(conn)
            self._seed_policies(conn)
            self.deliveries_before = one(conn.execute(
                "SELECT coalesce(max(delivery_id), 0) FROM notification_deliveries"))[0]
            self.alerts_before = one(conn.execute("SELECT coalesce(max(alert_id), 0) FROM alerts"))[0]
            self.incidents_before = one(conn.execute(
                "SELECT coalesce(max(incident_id), 0) FROM incidents"))[0]
            history_stored = one(conn.execute(
                "SELECT coalesce(sum(last_seq), 0) FROM gateways WHERE gateway_id LIKE '%-backfill'"))[0]
            if not history_stored:
                print(f"Writing {HISTORY.days} days of simulated history…", file=sys.stderr, flush=True)
                # the shared kit's history: its sessions first (ingest attributes by them), then its readings,
                # laid out one resident at a time as the live rounds are
                write_history_sessions(conn, self.world, SHARED_KIT_HOMES, start=world_start, end=self.sim_start)
                backfill_world(conn, self.world, start=world_start, end=self.sim_start,
                               shared_kits=SHARED_KIT_HOMES)
        self.world.write_ground_truth(self.dir / "ground_truth.jsonl")

    @staticmethod
    def _lead_in(scenario: Any) -> timedelta:
        """Night-time patterns start two days early: both nights the rule compares (the one just ended in the
        history and the live one, complete at 06:00) show them. Vital-sign scenarios start VITALS_HEAD_START early."""
        return HISTORY - timedelta(days=2) if scenario.kind.value == "uti" else HISTORY - VITALS_HEAD_START

    def _seed_users(self, conn: psycopg.Connection) -> list[DemoUser]:
        from carewatch.api.users import create_user, get_user

        residents = self.world.residents
        households = self.world.households
        users = [
            DemoUser("staff", "care_staff", "Sam Carer (care staff)", {"site_id": HOMES[0][0]}),
            DemoUser("staff2", "care_staff", "Riley Carer (care staff)", {"site_id": HOMES[1][0]}),
            DemoUser("manager", "manager", "Morgan Manager", {"site_id": HOMES[0][0]}),
            DemoUser("gp", "gp", "Dr Jo Patel (GP)", {"practice_code": residents[0].gp_practice_code}),
            DemoUser("nurse", "nurse", "Nia Nurse (nurse)", {"site_id": HOMES[0][0]}),
            DemoUser("council", "council", "Alex Reviewer (council)", {"council": households[0].council}),
            DemoUser("admin", "admin", "Ada Admin"),
        ]
        for user in users:
            if get_user(conn, user.username) is None:
                create_user(conn, user.username, user.role, password=DEMO_PASSWORD, full_name=user.full_name,
                            **user.scope)
        return users

    # -- processes ----------------------------------------------------------------------------------------
    def start_services(self) -> None:
        env = self.settings.child_env(
            database_url=self.service_dsn, mqtt_url=self.mqtt_url, state_dir=str(self.settings.state_dir),
            clock="data", ingest_shared="true" if self.shared else "false",
            api_url=self.api_url, log_level="WARNING", **self.notify_env(),
        )
        self.supervisor = supervisor = Supervisor(env, self.dir / "logs")
        self.supervisor.start("ingest", "ingest", "--worker-id", "demo-1")
        self.supervisor.start("scorer", "score")
        self.supervisor.start("api", "api")
        if not self.headless:
            self.supervisor.start("dashboard", "dashboard")
        wait_for(lambda: port_open("127.0.0.1", self.settings.api_port) or bool(supervisor.check()), 60,
                 "the API to listen")
        self._check_children()

    def _check_children(self) -> None:
        assert self.supervisor is not None
        dead = self.supervisor.check()
        if dead:
            child = dead[0]
            code = child.proc.returncode if child.proc is not None else None
            raise RuntimeError(f"{child.name} exited ({code}):\n{child.log_tail()}")

    def start_gateways_and_sim(self) -> None:
        from carewatch.firmware_sim.driver import SimClock
        from carewatch.firmware_sim.fleet import SimFleet
        from carewatch.firmware_sim.kit_round import KitRounds, TabletCarer

        self.clock = SimClock(self.sim_start, self.accelerate, catch_up=True)
        self.kit_rounds = KitRounds(self.world, SHARED_KIT_HOMES, seed=self.seed)
        self.carer = TabletCarer(self.api_url, self._token, forget_tokens=self._forget_tokens)
        self.fleet = SimFleet(self.world, self.settings, mqtt_url=self.mqtt_url, outbox_dir=self.dir / "gateways",
                              clock=self.clock, shared_sites=SHARED_KIT_HOMES, radio=self.radio).start(
            on_manual=self._post_manual, on_action=self.carer, wrap_events=self.kit_rounds.wrap)

    # -- manual observations: staff type RR, consciousness and soft signs on the tablet ---------------------
    def _token(self, site_id: str) -> str | None:
        user = next((u for u in self.users if u.role == "care_staff" and u.scope.get("site_id") == site_id), None)
        if user is None:
            return None
        with self._token_lock:
            if user.username not in self._tokens:
                reply = httpx.post(f"{self.api_url}/auth/token",
                                   data={"username": user.username, "password": DEMO_PASSWORD}, timeout=10)
                reply.raise_for_status()
                self._tokens[user.username] = reply.json()["access_token"]
            return self._tokens[user.username]

    def _forget_tokens(self) -> None:
        with self._token_lock:
            self._tokens.clear()

    def _post_manual(self, obs: Any) -> None:
        token = self._token(obs.site_id)
        if token is None:
            return
        body = {"respiration_rate": obs.respiration_rate, "consciousness": obs.consciousness,
                "on_oxygen": obs.supplemental_oxygen, "soft_signs": list(obs.soft_signs), "note": obs.note,
                "taken_at": obs.at.isoformat()}
        reply = httpx.post(f"{self.api_url}/residents/{obs.resident_id}/observations", json=body,
                           headers={"Authorization": f"Bearer {token}"}, timeout=20)
        if reply.status_code == 401:
            with self._token_lock:
                self._tokens.clear()
        reply.raise_for_status()

    # -- notifications: what the receivers got, and a member of staff who never records an outcome ---------
    def print_notifications(self) -> None:
        """Print what each receiver got since last time (the demo's proof that a person would have been told)."""
        for channel, receiver in self.receivers.items():
            items = list(receiver.received)
            for item in items[self._printed.get(channel, 0):]:
                text = (item.text or "").replace("\n", " ")
                check = "" if channel != "webhook" else (" (signature ok)" if item.verified else " (BAD signature)")
                print(f"  [{channel} to {item.recipient}]{check} {text[:160]}", file=sys.stderr, flush=True)
            self._printed[channel] = len(items)

    def staff_round(self) -> None:
        """A simulated carer acknowledges each NEWS2 incident once the senior has been told (level 2: nobody had
        acknowledged it), and records no outcome: the follow-up escalation (no outcome within 15 or 60 minutes)
        then tells level 3, so both show in the demo. One incident, one ladder (H-INC-01)."""
        for site_id, _ in HOMES:
            token = self._token(site_id)
            if token is None:
                continue
            reply = httpx.get(f"{self.api_url}/incidents", params={"site": site_id, "category": "clinical"},
                              headers={"Authorization": f"Bearer {token}"}, timeout=10)
            if reply.status_code != 200:
                continue
            for incident in reply.json()["items"]:
                news2 = any(c["kind"] == "news2" for c in incident.get("components") or [])
                if news2 and incident["notify_level"] >= 2 and incident["acknowledged_at"] is None \
                        and incident["incident_id"] not in self._acknowledged:
                    httpx.post(f"{self.api_url}/incidents/{incident['incident_id']}/acknowledge",
                               json={"comment": "Seen (demo): no outcome will be recorded"},
                               headers={"Authorization": f"Bearer {token}"}, timeout=10)
                    self._acknowledged.add(incident["incident_id"])

    def notifications(self) -> list[dict[str, Any]]:
        from carewatch.notify import deliveries

        with psycopg.connect(self.dsn) as conn:
            return deliveries.summary(conn, self.deliveries_before)

    # -- summary ------------------------------------------------------------------------------------------
    def drain(self, timeout: float = 120) -> None:
        """Stop the simulator, let every gateway empty its outbox and ingest store it."""
        deadline = time.monotonic() + timeout
        self.fleet.drain(timeout)
        ranges = self.fleet.published_ranges()
        expected = sum(max(0, hi - lo + 1) for lo, hi in ranges.values())
        while time.monotonic() < deadline and self._stored_total(ranges) < expected:
            time.sleep(0.5)

    def _stored_total(self, ranges: dict[str, tuple[int, int]]) -> int:
        with psycopg.connect(self.dsn) as conn:
            return sum(
                one(conn.execute("SELECT count(DISTINCT seq) FROM readings WHERE gateway_id = %s "
                                 "AND seq BETWEEN %s AND %s", (gw, lo, hi)))[0]
                for gw, (lo, hi) in ranges.items()
            )

    def summary(self) -> dict[str, Any]:
        ranges = self.fleet.published_ranges()
        published = sum(max(0, hi - lo + 1) for lo, hi in ranges.values())
        stored = duplicates = 0
        with psycopg.connect(self.dsn) as conn:
            for gw, (lo, hi) in ranges.items():
                total, distinct = one(conn.execute(
                    "SELECT count(*), count(DISTINCT seq) FROM readings "
                    "WHERE gateway_id = %s AND seq BETWEEN %s AND %s",
                    (gw, lo, hi)))
                stored += distinct
                duplicates += total - distinct
            alerts = [
                {"alert_id": a, "subject": s, "kind": k, "severity": sev, "status": st, "score": sc,
                 "opened_at": o.isoformat(), "reason": r}
                for a, s, k, sev, st, sc, o, r in conn.execute(
                    """SELECT alert_id, subject_id, kind, severity, status, score, opened_at, reason FROM alerts
                       WHERE alert_id > %s ORDER BY alert_id""", (self.alerts_before,)).fetchall()
            ]
            incidents = self._incidents(conn)
            tasks_due = self._tasks_due(conn)
            kit_ids = [r[0] for r in conn.execute(
                "SELECT kit_id FROM kits WHERE site_id = ANY(%s)", (list(SHARED_KIT_HOMES),)).fetchall()]
            kit_readings = [row for gw, (lo, hi) in ranges.items() for row in conn.execute(
                """SELECT r.device_id, r.metric, r.measured_at, r.subject_id FROM readings r
                   JOIN devices d ON d.device_id = r.device_id
                   WHERE r.gateway_id = %s AND r.seq BETWEEN %s AND %s AND d.kit_id IS NOT NULL
                     AND r.metric <> 'battery'""", (gw, lo, hi)).fetchall()]
            corrections = one(conn.execute(
                "SELECT count(*) FROM reading_assignments WHERE kind = 'move' AND at >= %s",
                (self.started_at,)))[0]
        from carewatch.firmware_sim.kit_round import check_attribution

        kit_check = check_attribution(kit_readings, self.kit_rounds.truth, set(kit_ids))
        truth = [row for row in self.world.ground_truth() if row.get("expected_alert")]
        raised = {(a["subject"], a["kind"]) for a in alerts}
        detected = [row for row in truth if (row["target"], row["expected_alert"]) in raised]
        return {
            "readings_published": published,
            "readings_stored": stored,
            "readings_lost": published - stored,
            "duplicates_stored": duplicates,
            "alerts": alerts,
            "incidents": incidents,
            "tasks_due": tasks_due,
            "scenarios_total": len(truth),
            "scenarios_detected": len(detected),
            "scenarios_missed": sorted(row["id"] for row in truth if row not in detected),
            "sim_time_reached": self.clock().isoformat() if hasattr(self, "clock") else None,
            # shared kit (Oakview): every kit reading checked against whom the simulated carer really measured
            "kit_readings": kit_check.readings,
            "readings_attributed_wrong": kit_check.attributed_wrong,
            "readings_unattributed": kit_check.unattributed,
            "readings_unmatched": kit_check.unmatched,
            # (every move stored: the carers' corrections, and the late claims they made through the same route)
            "corrections": corrections - self.carer.counters.claimed_late,
            "kit_mistakes": dict(self.kit_rounds.mistakes),
            "kit_claims": self.carer.counters.claimed,
            "kit_late_claims": self.carer.counters.claimed_late,  # moved to their resident after the claim window
            "tablet_actions_failed": self.carer.counters.failed,
            "radio": self.fleet.radio_summary(),
            "notifications": self.notifications(),
            "notifications_received": {
                channel: {"received": len(r.received), "verified": sum(1 for i in r.received if i.verified)}
                for channel, r in self.receivers.items()},
        }

    def _incidents(self, conn: psycopg.Connection) -> list[dict[str, Any]]:
        """Incidents opened during the run, each with its components (alerts), worst first."""
        rows = conn.execute(
            """SELECT i.incident_id, i.subject_id, i.status, i.severity, i.band, i.headline, i.opened_at,
                      coalesce(json_agg(json_build_object('alert_id', a.alert_id, 'kind', a.kind,
                                                          'severity', a.severity, 'status', a.status)
                                        ORDER BY a.alert_id) FILTER (WHERE a.alert_id IS NOT NULL), '[]')
               FROM incidents i LEFT JOIN alerts a ON a.incident_id = i.incident_id
               WHERE i.incident_id > %s GROUP BY i.incident_id ORDER BY i.incident_id""",
            (getattr(self, "incidents_before", 0),)).fetchall()
        return [{"incident_id": i, "subject": s, "status": st, "severity": sev, "band": band, "headline": h,
                 "opened_at": o.isoformat(), "components": comps}
                for i, s, st, sev, band, h, o, comps in rows]

    def _tasks_due(self, conn: psycopg.Connection) -> list[dict[str, Any]]:
        """Observations due or overdue at the simulated time reached (the home's task list, not alerts)."""
        from carewatch.scoring.tasks import TaskInput, build_tasks

        now = self.clock() if hasattr(self, "clock") else datetime.now(UTC)
        rows = conn.execute(
            """SELECT r.resident_id, r.display_name, r.site_id, st.next_obs_due, st.next_obs_why, st.news2_at,
                      st.news2_score, st.news2_risk, st.news2_complete,
                      EXISTS (SELECT 1 FROM incidents i
                              WHERE i.subject_kind = 'resident' AND i.subject_id = r.resident_id
                              AND i.status <> 'resolved' AND i.category = 'clinical')
               FROM residents r JOIN resident_state st USING (resident_id)
               WHERE r.monitoring = 'active' AND st.next_obs_due IS NOT NULL ORDER BY r.resident_id""").fetchall()
        tasks = build_tasks([TaskInput(*row) for row in rows], now, until=now)
        return [{"resident": t.resident_id, "site": t.site_id, "due_at": t.due_at.isoformat(), "status": t.status,
                 "why": t.why, "in_incident": t.in_incident} for t in tasks]

    # -- lifecycle ----------------------------------------------------------------------------------------
    def print_banner(self) -> None:
        lines = [
            "",
            "Carewatch demo is running.",
            f"  API:        {self.api_url}/docs",
        ]
        if not self.headless:
            lines.append(f"  Dashboard:  http://127.0.0.1:{self.settings.dashboard_port}")
        if self.radio == "virtual":
            lines.append("  Radio:      virtual (Bumble peripherals on a virtual link; gateways on the Bumble backend)")
        lines += [
            f"  Database:   {self.dsn}",
            f"  MQTT:       {self.mqtt_url} ({self.broker.kind if self.broker else 'external'})",
            f"  Logs:       {self.dir / 'logs'}",
            f"  Notifications: SMTP 127.0.0.1:{self.receivers['email'].port}, GOV.UK Notify API "
            f"{self.receivers['sms'].url}, webhooks {self.receivers['webhook'].url} (printed below as they arrive)",
            f"  Simulated time starts {self.sim_start.astimezone(TZ):%a %d %b %H:%M} and runs ×{self.accelerate:g} "
            "until it reaches now.",
            f"  Logins (password '{DEMO_PASSWORD}'):",
            *[f"    {u.username:<8} {u.role:<10} {u.full_name}" for u in self.users],
            "Press Ctrl-C to stop.",
            "",
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.supervisor is not None:
            self.supervisor.stop_all()
        if self.broker is not None:
            self.broker.stop()
        for receiver in self.receivers.values():
            receiver.stop()
        if self.pg is not None:
            self.pg.stop()


def run_demo(settings: Settings, *, accelerate: float, headless: bool, duration: float | None, json_out: bool,
             fresh: bool, seed: int, radio: str = "bytes") -> int:
    demo = Demo(settings, accelerate=accelerate, headless=headless, fresh=fresh, seed=seed, radio=radio)
    stop = threading.Event()
    # Ctrl-C (SIGINT) and SIGTERM both stop everything cleanly; set explicitly, as a shell may start us with
    # SIGINT ignored.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        demo.start_servers()
        demo.build(datetime.now(UTC))
        demo.start_services()
        demo.start_gateways_and_sim()
        demo.print_banner()
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            stop.wait(1.0)
            demo._check_children()
            with contextlib.suppress(httpx.HTTPError):  # the API is busy: the next round tries again
                demo.staff_round()
            demo.print_notifications()
        if json_out:
            demo.drain()
            time.sleep(3)  # let the scorer act on the last readings
            print(json.dumps(demo.summary()), flush=True)
        return 0
    finally:
        print("\nstopping the demo…", file=sys.stderr, flush=True)
        demo.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
