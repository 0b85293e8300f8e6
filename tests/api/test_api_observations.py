"""Observation sets with device prefill, NEWS2 results, and readings timelines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from carewatch.scoring.clinical_response import clinical_response
from carewatch.scoring.news2 import ObservationSet, score_observation

if TYPE_CHECKING:
    from conftest import World


def _latest(db: psycopg.Connection, world: World, metric: str, value: float, age: timedelta,
            flags: list[str] | None = None) -> datetime:
    at = datetime.now(UTC) - age
    db.execute(
        """INSERT INTO latest_readings (subject_kind, subject_id, metric, site_id, device_id, value, measured_at, flags)
           VALUES ('resident', %s, %s, %s, %s, %s, %s, %s)""",
        (world.resident_a, metric, world.home_a, world.device_a, value, at, flags or []))
    db.commit()
    return at


def test_prefill_offers_recent_trusted_device_values(client: TestClient, world: World,
                                                     db: psycopg.Connection) -> None:
    pulse_at = _latest(db, world, "pulse_rate", 92, timedelta(minutes=5))
    _latest(db, world, "spo2", 94, timedelta(minutes=3), ["invalid"])
    _latest(db, world, "temperature", 38.4, timedelta(minutes=40))
    response = client.get(f"/residents/{world.resident_a}/observations/prefill", params={"minutes": 15},
                          headers=world.headers(client, "care_staff"))
    assert response.status_code == 200
    body = response.json()
    assert set(body["values"]) == {"pulse"}
    pulse = body["values"]["pulse"]
    assert (pulse["value"], pulse["device_id"], pulse["metric"]) == (92, world.device_a, "pulse_rate")
    assert datetime.fromisoformat(pulse["measured_at"]) == pulse_at
    assert "invalid" in body["skipped"]["spo2"]
    wider = client.get(f"/residents/{world.resident_a}/observations/prefill", params={"minutes": 60},
                       headers=world.headers(client, "care_staff")).json()
    assert set(wider["values"]) == {"pulse", "temperature"}


def test_record_observation_mixed_sources_and_news2_result(client: TestClient, world: World,
                                                           db: psycopg.Connection) -> None:
    pulse_at = _latest(db, world, "pulse_rate", 112, timedelta(minutes=4))
    form = {"respiration_rate": 24, "spo2": 93, "on_oxygen": False, "systolic_bp": 98, "consciousness": "A",
            "temperature": 38.6, "from_device": ["pulse"], "soft_signs": ["not_eating_drinking", "new_pain"],
            "note": "Off her food since yesterday"}
    response = client.post(f"/residents/{world.resident_a}/observations", json=form,
                           headers=world.headers(client, "care_staff"))
    assert response.status_code == 201, response.text
    body = response.json()
    expected = score_observation(ObservationSet(respiration_rate=24, spo2=93, systolic_bp=98, pulse=112,
                                                consciousness="A", temperature=38.6))
    advice = clinical_response(expected.risk, expected.score, expected.missing)
    assert (body["score"], body["risk"], body["complete"]) == (expected.score, expected.risk.value, True)
    assert body["subscores"] == dict(expected.subscores)
    assert (body["meaning"], body["action"], body["label"]) == (advice.meaning, advice.action, advice.label)
    assert body["source"] == "mixed" and body["spo2_scale"] == 1
    assert body["alerts_evaluated"] is True
    row = db.execute("SELECT source, pulse, inputs, soft_signs, note, recorded_by FROM observation_sets "
                     "WHERE obs_id = %s", (body["obs_id"],)).fetchone()
    assert row[0] == "mixed" and row[1] == 112
    assert row[2]["pulse"] == {"source": "device", "device_id": world.device_a, "measured_at": pulse_at.isoformat()}
    assert row[2]["spo2"]["source"] == "manual" and row[2]["spo2"]["by"] == world.users["care_staff"]
    assert row[3] == ["not_eating_drinking", "new_pain"] and row[4] == "Off her food since yesterday"
    assert row[5] == world.users["care_staff"]
    listed = client.get(f"/residents/{world.resident_a}/observations", headers=world.headers(client, "gp")).json()
    assert listed["items"][0]["obs_id"] == body["obs_id"]


def test_partial_set_is_incomplete_and_says_so(client: TestClient, world: World) -> None:
    response = client.post(f"/residents/{world.resident_a}/observations", json={"pulse": 80},
                           headers=world.headers(client, "manager"))
    body = response.json()
    assert body["complete"] is False and "respiration_rate" in body["missing"]
    assert body["meaning"].startswith("INCOMPLETE SCORE") and "(incomplete)" not in body["label"]
    assert body["source"] == "manual"


def test_scale2_resident_is_scored_on_scale2(client: TestClient, world: World) -> None:
    client.put(f"/residents/{world.resident_a}/scale2", json={"scale2": True, "reason": "COPD, GP letter"},
               headers=world.headers(client, "gp"))
    body = client.post(f"/residents/{world.resident_a}/observations", json={"spo2": 89},
                       headers=world.headers(client, "care_staff")).json()
    assert body["spo2_scale"] == 2 and body["subscores"]["spo2"] == 0


def test_observation_input_errors(client: TestClient, world: World, db: psycopg.Connection) -> None:
    url = f"/residents/{world.resident_a}/observations"
    headers = world.headers(client, "care_staff")
    implausible = client.post(url, json={"spo2": 140, "consciousness": "Z", "soft_signs": ["grumpy"]},
                              headers=headers)
    assert implausible.status_code == 422
    fields = {e["field"] for e in implausible.json()["detail"]}
    assert fields == {"spo2", "consciousness", "soft_signs.0"}
    assert "plausible" in implausible.json()["message"]
    no_device = client.post(url, json={"from_device": ["temperature"]}, headers=headers)
    assert no_device.status_code == 422 and no_device.json()["detail"][0]["field"] == "temperature"
    _latest(db, world, "pulse_rate", 70, timedelta(minutes=2))
    disagree = client.post(url, json={"pulse": 75, "from_device": ["pulse"]}, headers=headers)
    assert disagree.status_code == 422 and "differs" in disagree.json()["detail"][0]["msg"]
    future = client.post(url, json={"pulse": 75, "taken_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
                         headers=headers)
    assert future.status_code == 422
    assert client.post(url, json={"pulse": 75}, headers=world.headers(client, "council")).status_code == 403
    count = db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s AND recorded_by = %s",
                       (world.resident_a, world.users["care_staff"])).fetchone()[0]
    assert count == 0


def test_implausible_device_value_is_a_422_on_that_field(client: TestClient, world: World,
                                                         db: psycopg.Connection) -> None:
    """A device reading the form accepted is checked by the NEWS2 scorer (typed values never get that far):
    its refusal names the field, says the value came from the device, and nothing is stored."""
    _latest(db, world, "spo2", 150, timedelta(minutes=2))
    _latest(db, world, "pulse_rate", 300, timedelta(minutes=2))
    response = client.post(f"/residents/{world.resident_a}/observations",
                           json={"respiration_rate": 18, "from_device": ["spo2", "pulse"]},
                           headers=world.headers(client, "care_staff"))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert [(e["loc"], e["field"]) for e in detail] == [(["body", "spo2"], "spo2"), (["body", "pulse"], "pulse")]
    assert all("plausible range" in e["msg"] and world.device_a in e["msg"] for e in detail)
    assert response.json()["message"].startswith("spo2: ")
    assert db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s AND recorded_by = %s",
                      (world.resident_a, world.users["care_staff"])).fetchone()[0] == 0


# ------------------------------------------------------------------------------------------------------------
def _readings(db: psycopg.Connection, world: World, metric: str, points: list[tuple[datetime, float]],
              flags: list[str] | None = None) -> None:
    with db.cursor() as cur:
        cur.executemany(
            """INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_kind, subject_id, device_id, metric,
                                     value, received_at, flags)
               VALUES (%s, %s, %s, %s, 'resident', %s, %s, %s, %s, %s, %s)""",
            [(at, world.gateway_a, 10_000 + i + (5000 if flags else 0), world.home_a, world.resident_a,
              world.device_a, metric, value, at, flags or []) for i, (at, value) in enumerate(points)])
    db.commit()


def test_readings_timeline_raw_and_bucketed(client: TestClient, world: World, db: psycopg.Connection) -> None:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=10)
    rng = np.random.default_rng(3)
    points = [(start + timedelta(minutes=10 * i), float(rng.integers(88, 99))) for i in range(60)]
    _readings(db, world, "spo2", points)
    _readings(db, world, "spo2", [(start + timedelta(minutes=5), 41.0)], flags=["sensor_fault"])
    headers = world.headers(client, "care_staff")
    url = f"/residents/{world.resident_a}/readings"
    raw = client.get(url, params={"metric": "spo2", "from": (end - timedelta(hours=2)).isoformat(),
                                  "to": end.isoformat()}, headers=headers).json()
    assert raw["bucket"] is None and raw["unit"] == "%"
    assert [p["value"] for p in raw["points"]] == [v for t, v in points if end - timedelta(hours=2) <= t < end]
    hourly = client.get(url, params={"metric": "spo2", "from": start.isoformat(), "to": end.isoformat()},
                        headers=headers).json()
    assert hourly["bucket"] == "1h" and len(hourly["points"]) == 10
    first_hour = [v for t, v in points if t < start + timedelta(hours=1)]
    assert hourly["points"][0]["n"] == len(first_hour) == 6  # the flagged reading is left out
    assert hourly["points"][0]["value"] == pytest.approx(np.mean(first_hour))
    assert hourly["points"][0]["min"] == min(first_hour) and hourly["points"][0]["max"] == max(first_hour)
    too_fine = client.get(url, params={"metric": "spo2", "from": (end - timedelta(days=30)).isoformat(),
                                       "to": end.isoformat(), "bucket": "1m"}, headers=headers)
    assert too_fine.status_code == 422
    unknown = client.get(url, params={"metric": "blood_sugar"}, headers=headers)
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["field"] == "metric"
