"""Practice mode's simulated kit (issue 17): a trainee opens a session for the practice resident on the practice kit,
and the simulator's practice devices measure them through the real gateway, MQTT and ingest worker, so the readings
reach the practice resident by the same session path as a real kit's, worrying when the trainer asked."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from functools import partial

import psycopg

from carewatch.firmware_sim.practice import PracticeKit, register_practice_kit
from carewatch.firmware_sim.transport import SimTransport
from carewatch.ingest import kit_sessions
from carewatch.settings import Settings


def test_the_practice_kit_measures_the_practice_resident_through_the_gateway(database: str, mqtt_url: str,
                                                                              tmp_path) -> None:
    from carewatch.gateway.service import Gateway
    from carewatch.ingest.consumer import IngestWorker
    from carewatch.registry import DeviceRegistry

    uid = uuid.uuid4().hex[:8]
    site, gateway_id = f"ph-{uid}", f"gw-ph-{uid}"
    with psycopg.connect(database) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', %s)", (site, f"Home {uid}"))
        conn.execute("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s)", (gateway_id, site))
        devices = register_practice_kit(conn, site, gateway_id)
        pat, kit = kit_sessions.practice_ids(site)
        kit_sessions.set_practice_condition(conn, pat, "deteriorating")
    settings = Settings(database_url=database, mqtt_url=mqtt_url, state_dir=tmp_path, site_id=site,
                        gateway_id=gateway_id, outbox_path=tmp_path / "outbox.sqlite", publish_batch_ms=50,
                        ingest_batch_ms=50, ingest_shared=False)
    worker = IngestWorker(settings, worker_id=f"practice-{uid}", shared=False)
    worker.start()
    transport = SimTransport()
    gateway = Gateway(settings, transport, registry=DeviceRegistry([d.registered() for d in devices]),
                      status_interval_s=5.0)
    gateway.start()
    transport.wait_ready()
    try:
        practice = PracticeKit(site, partial(psycopg.connect, database), transport.push, seed=1)
        assert practice.poll() == 0  # no session open: the practice kit stays quiet
        with psycopg.connect(database) as conn:
            session = kit_sessions.start_session(conn, kit_id=kit, site_id=site, resident_id=pat, by="trainee",
                                                 at=datetime.now(UTC)).session["session_id"]
        assert practice.poll() == 3
        assert practice.poll() == 0  # once per session
        deadline, stored = time.monotonic() + 30, {}
        while time.monotonic() < deadline and len(stored) < 5:
            with psycopg.connect(database) as conn:
                stored = {m: (v, s, sid) for m, v, s, sid in conn.execute(
                    "SELECT metric, value, subject_id, session_id FROM readings WHERE site_id = %s", (site,))}
            time.sleep(0.2)
    finally:
        transport.close()
        gateway.stop(timeout=15)
        worker.stop(timeout=15)
    assert {"spo2", "pulse_rate", "temperature", "systolic_bp", "diastolic_bp"} <= set(stored), stored
    assert {(s, sid) for _, s, sid in stored.values()} == {(pat, session)}  # all Pat's, by the session
    assert stored["spo2"][0] <= 90 and stored["temperature"][0] >= 39  # deteriorating, as the trainer asked
