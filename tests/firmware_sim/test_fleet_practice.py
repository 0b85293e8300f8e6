"""Practice mode through the real-time simulated estate (issue 17): :class:`SimFleet` registers each care home's
practice kit behind the home's gateway and plays it for trainees. A trainee on the tablet (the API, practice mode)
opens a session for the practice resident on the practice kit; the fleet's practice thread sees it and the kit's
devices measure through the fleet's own gateway, MQTT and the ingest worker, by the same kit path as a real kit's,
to the practice resident through the session. The worrying score that follows stays in practice mode: no real
list shows the practice resident, kit, devices or alert, and the escalation pass never picks it (H-KIT-07).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from carewatch.api.app import create_app
from carewatch.api.auth import issue_tokens
from carewatch.api.deps import PRACTICE_HEADER
from carewatch.api.users import create_user, get_user
from carewatch.firmware_sim.driver import SimClock
from carewatch.firmware_sim.fleet import SimFleet
from carewatch.firmware_sim.practice import practice_devices
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.world import SiteSpec, build_world
from carewatch.ingest.consumer import IngestWorker
from carewatch.ingest.kit_sessions import practice_ids
from carewatch.notify.escalation import ALERTS, INCIDENTS
from carewatch.scoring.engine import evaluate_subjects
from carewatch.settings import Settings

VITALS = {"spo2", "pulse_rate", "temperature", "systolic_bp", "diastolic_bp"}


def test_the_fleet_plays_the_practice_kit_for_a_trainee_through_its_gateway(database: str, mqtt_url: str,
                                                                           scratch_dir: Path, uid: str) -> None:
    started = time.monotonic()
    site = f"fp-{uid}"
    start = datetime.now(UTC).replace(microsecond=0)
    # a seed no other test seeds the shared database with: NHS numbers follow the seed and must stay unique
    world = build_world(seed=5333, sites=[SiteSpec(id=site, residents=2, obs_per_day=1)], households=0,
                        scenarios=[], start=start)
    settings = Settings(database_url=database, mqtt_url=mqtt_url, state_dir=scratch_dir / f"fp-state-{uid}",
                        publish_batch_ms=50, ingest_batch_ms=50, ingest_shared=False,
                        jwt_secret="fleet-practice-" + "p" * 40)
    fleet = SimFleet(world, settings, mqtt_url=mqtt_url, outbox_dir=scratch_dir / f"fp-outbox-{uid}",
                     clock=SimClock(start, accelerate=1.0), status_interval_s=5.0, practice_dsn=database)
    assert fleet.practice_homes == [site]
    trainee = f"fp-staff-{uid}"
    with psycopg.connect(database) as conn:
        seed_world(conn, world, fleet.devices)
        create_user(conn, trainee, "care_staff", password="fleet practice 1", site_id=site)
    pat, kit = practice_ids(site)
    worker = IngestWorker(settings, worker_id=f"fp-{uid}", shared=False)
    worker.start()
    try:
        fleet.start(end=start + timedelta(minutes=5))
        gateway_id = fleet.gateway_ids[site]
        ours = {d.device_id for d in practice_devices(site)}
        # the practice kit is registered behind the home's own gateway, in the database and in the gateway's radio
        assert ours <= {d.device_id for d in fleet.gateways[site].registry}
        with psycopg.connect(database) as conn:
            assert set(conn.execute("SELECT device_id, gateway_id, kit_id FROM devices WHERE kit_id = %s",
                                    (kit,)).fetchall()) == {(d, gateway_id, kit) for d in ours}

        with TestClient(create_app(settings)) as api:
            with api.app.state.pool.connection() as conn:
                user = get_user(conn, trainee)
                assert user is not None
                token = issue_tokens(conn, user, api.app.state.settings).access_token
            real = {"Authorization": f"Bearer {token}"}
            practice = {**real, PRACTICE_HEADER: "1"}
            # the trainee's tablet: practice mode, the trainer asks for a deterioration, a session for Pat
            assert api.post(f"/sites/{site}/practice", headers=practice).json()["resident_id"] == pat
            assert api.put(f"/sites/{site}/practice", headers=practice,
                           json={"condition": "deteriorating"}).status_code == 200
            opened = api.post(f"/kits/{kit}/sessions", headers=practice, json={"resident_id": pat})
            assert opened.status_code == 201, opened.text
            session = opened.json()["session_id"]

            deadline, values = time.monotonic() + 20, {}
            while time.monotonic() < deadline and set(values) < {"spo2", "pulse", "temperature"}:
                values = api.get(f"/kit-sessions/{session}", headers=practice).json()["values"]
                time.sleep(0.25)
            assert values["spo2"]["value"] <= 90 and values["temperature"]["value"] >= 39, values
            assert {v["device_id"] for v in values.values()} <= ours
            with psycopg.connect(database) as conn:
                deadline, stored = time.monotonic() + 10, []
                while time.monotonic() < deadline and {m for m, *_ in stored} < VITALS:
                    stored = conn.execute(
                        """SELECT metric, subject_kind, subject_id, session_id, gateway_id FROM readings
                           WHERE device_id = ANY(%s)""", (sorted(ours),)).fetchall()
                    time.sleep(0.2)
            assert {m for m, *_ in stored} >= VITALS, stored
            # the same kit path as a real kit's: the fleet's gateway, attributed by the session to Pat
            assert {tuple(r[1:]) for r in stored} == {("resident", pat, session, gateway_id)}

            saved = api.post(f"/residents/{pat}/observations", headers=practice, json={
                "respiration_rate": 26, "consciousness": "A", "session_id": session,
                "from_device": ["spo2", "pulse", "temperature", "systolic_bp"], "identity_confirmed": True,
                "prefill_minutes": 120})
            assert saved.status_code in (200, 201), saved.text
            assert saved.json()["score"] >= 7
            with psycopg.connect(database) as conn:
                evaluate_subjects(conn, [pat], datetime.now(UTC))
                conn.commit()
            alerts = api.get("/alerts", headers=practice, params={"site": site}).json()["items"]
            assert {a["resident_id"] for a in alerts} == {pat}, alerts
            practice_alerts = [a["alert_id"] for a in alerts]

            # outside practice mode: none of it, in the home's real views
            hidden = [pat, kit, *ours]
            for path in ("/residents", "/alerts", "/incidents", "/devices", "/kits", f"/sites/{site}/overview",
                         f"/sites/{site}/tasks"):
                answer = api.get(path, headers=real, params={"site": site})
                assert answer.status_code == 200, f"{path}: {answer.text[:200]}"
                assert not [h for h in hidden if h in answer.text], f"{path} shows practice data"
            assert api.get(f"/kit-sessions/{session}", headers=real).status_code == 404
            assert api.get(f"/residents/{pat}", headers=real).status_code == 404
        # nobody is told: the escalation passes' own candidate queries never pick the practice alert or incident
        later = datetime.now(UTC) + timedelta(hours=2)
        with psycopg.connect(database) as conn:
            incidents = [r[0] for r in conn.execute(
                "SELECT incident_id FROM alerts WHERE alert_id = ANY(%s) AND incident_id IS NOT NULL",
                (practice_alerts,)).fetchall()]
            assert incidents
            for target, own in ((ALERTS, practice_alerts), (INCIDENTS, incidents)):
                with conn.transaction():
                    picked = {r[0] for r in conn.execute(target.candidates_sql,
                                                         {"sites": [site], "now": later}).fetchall()}
                assert not picked & set(own), f"the {target.kind} escalation pass picked practice data"
    finally:
        fleet.stop()
        worker.stop(timeout=15)
    assert time.monotonic() - started < 30
