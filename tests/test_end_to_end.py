"""The whole data path, real at every boundary we own:

simulated device bytes -> gateway (outbox, MQTT publisher) -> Mosquitto -> ingest -> PostgreSQL -> scorer ->
alert -> API. A resident develops an infection; the API must return the NEWS2 alert with the score that the
resident's stored observation set earns on the RCP chart.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import waiting
from deterioration import infection, seed_with_nurse
from fastapi.testclient import TestClient

from carewatch.api.app import create_app
from carewatch.firmware_sim.care import HomeCare
from carewatch.firmware_sim.driver import SimClock
from carewatch.firmware_sim.fleet import SimFleet
from carewatch.firmware_sim.world import SiteSpec, build_world
from carewatch.ingest.consumer import IngestWorker
from carewatch.scoring.clock import Clock
from carewatch.scoring.news2 import score_observation
from carewatch.scoring.service import run_scorer
from carewatch.settings import Settings

#: polls the API and the database: twice a second is enough
wait_until = functools.partial(waiting.wait_until, interval=0.5)


PASSWORD = "e2e-password-1"


@pytest.mark.slow
def test_deteriorating_resident_reaches_the_api_with_the_right_score(
    database: str, mqtt_url: str, scratch_dir: Path, uid: str
) -> None:
    site = f"e2e-{uid}"
    start = (datetime.now(UTC) - timedelta(hours=12)).replace(microsecond=0)
    scenarios = infection("e2e", onset="10m", within="4h")
    # a home that checks round the clock every 4 h and re-checks as the chart says: whatever time of day the
    # 7 simulated hours fall in, a round sees the infection (the simulated staff follow their home, not the platform)
    care = replace(HomeCare.textbook(), follow_up_compliance=1.0)
    world = build_world(seed=3, sites=[SiteSpec(id=site, residents=3, obs_per_day=6, care=care)], households=0,
                        scenarios=list(scenarios), start=start)
    resident = world.residents[0].id
    settings = Settings(database_url=database, mqtt_url=mqtt_url, state_dir=scratch_dir / f"state-{uid}",
                        clock="data", ingest_shared=False, ingest_batch_ms=50)

    fleet = SimFleet(world, settings, mqtt_url=mqtt_url, outbox_dir=scratch_dir / f"outbox-{uid}",
                     clock=SimClock(start, accelerate=3600))
    seed_with_nurse(database, world, fleet.devices, site=site, nurse=f"nurse-{uid}", password=PASSWORD)

    stop_scorer = threading.Event()
    scorer = threading.Thread(target=run_scorer, args=(settings,),
                              kwargs={"stop_event": stop_scorer, "clock": Clock.data(start=start), "tick_s": 1.0},
                              daemon=True)
    worker = IngestWorker(settings, worker_id=f"e2e-{uid}", shared=False)
    worker.start()
    scorer.start()
    try:
        fleet.start(end=start + timedelta(hours=7))
        assert fleet.driver is not None
        wait_until(fleet.driver.finished.is_set, 120, "the simulator to play 7 simulated hours")
        assert fleet.drain(timeout=60), "a gateway could not empty its outbox"
        ranges = fleet.published_ranges()
        expected = sum(hi - lo + 1 for lo, hi in ranges.values())
        assert expected > 0

        def stored() -> bool:
            with psycopg.connect(database) as conn:
                return sum(conn.execute(
                    "SELECT count(DISTINCT seq) FROM readings WHERE gateway_id = %s AND seq BETWEEN %s AND %s",
                    (gw, lo, hi)).fetchone()[0] for gw, (lo, hi) in ranges.items()) == expected

        wait_until(stored, 60, "ingest to store every published reading")

        with TestClient(create_app(settings)) as api:
            token = api.post("/auth/token", data={"username": f"nurse-{uid}", "password": PASSWORD})
            assert token.status_code == 200, token.text
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}

            def news2_alert() -> dict | None:
                reply = api.get("/alerts", params={"resident": resident, "kind": "news2",
                                                   "status": ["open", "acknowledged", "escalated",
                                                                  "auto_escalated", "resolved"]},
                                headers=headers)
                assert reply.status_code == 200, reply.text
                items = reply.json()["items"]
                return items[0] if items else None

            alert = wait_until(news2_alert, 60, "the scorer to raise a NEWS2 alert")
            assert alert["resident_id"] == resident and alert["site_id"] == site
            assert alert["severity"] in ("medium", "high")
            assert alert["score"] is not None and alert["score"] >= 5

            sets = api.get(f"/residents/{resident}/observations", params={"limit": 500}, headers=headers)
            assert sets.status_code == 200, sets.text
            scored = [s for s in sets.json()["items"] if s["score"] == alert["score"]]
            assert scored, "the alert's score must come from one of the resident's observation sets"
            obs = scored[0]
            recomputed = score_observation({k: obs[k] for k in (
                "respiration_rate", "spo2", "spo2_scale", "on_oxygen", "systolic_bp", "pulse", "consciousness",
                "temperature")})
            assert recomputed.score == alert["score"]
            assert f"NEWS2 {alert['score']}" in alert["reason"]
            # the other residents stay well: no NEWS2 alert for them
            others = api.get("/alerts", params={"site": site, "kind": "news2"}, headers=headers).json()["items"]
            assert {a["resident_id"] for a in others} <= {resident}
    finally:
        fleet.stop()
        worker.stop()
        stop_scorer.set()
        scorer.join(10)
