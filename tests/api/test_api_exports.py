"""FHIR R4 Bundle export (validated with fhir.resources) and the SBARD handover (JSON and text)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from carewatch.api import fhir, sbard
from carewatch.scoring.clinical_response import clinical_response

if TYPE_CHECKING:
    from conftest import World


def _record_set(client: TestClient, world: World, **values: Any) -> dict[str, Any]:
    response = client.post(f"/residents/{world.resident_a}/observations", json=values,
                           headers=world.headers(client, "care_staff"))
    assert response.status_code == 201, response.text
    return response.json()


def _codes(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in resource.get("code", {}).get("coding", [])}


def test_fhir_bundle_validates_and_carries_the_codes(client: TestClient, world: World,
                                                     db: psycopg.Connection) -> None:
    db.execute("""INSERT INTO latest_readings (subject_kind, subject_id, metric, site_id, device_id, value, measured_at)
                  VALUES ('resident', %s, 'diastolic_bp', %s, %s, 71, now()),
                         ('resident', %s, 'weight', %s, %s, 61.4, now())""",
               (world.resident_a, world.home_a, world.device_a) * 2)
    db.commit()
    result = _record_set(client, world, respiration_rate=22, spo2=95, systolic_bp=104, pulse=96,
                         consciousness="A", temperature=38.1)
    response = client.get(f"/residents/{world.resident_a}/fhir", headers=world.headers(client, "gp"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    doc = response.json()
    bundle = Bundle.model_validate(doc)
    assert bundle.type == "collection"
    for entry in doc["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in doc["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    (patient,) = by_type["Patient"]
    nhs = db.execute("SELECT nhs_number FROM residents WHERE resident_id = %s", (world.resident_a,)).fetchone()[0]
    assert {"system": fhir.NHS_NUMBER_SYSTEM, "value": nhs} in patient["identifier"]
    codes = set().union(*(_codes(o) for o in by_type["Observation"]))
    loinc = {c for s, c in codes if s == fhir.LOINC}
    assert {"9279-1", "59408-5", "8480-6", "8462-4", "8867-4", "8310-5", "67775-7", "29463-7"} <= loinc
    (news2,) = [o for o in by_type["Observation"] if (fhir.SNOMED, "1104051000000101") in _codes(o)]
    assert news2["valueInteger"] == result["score"]
    flags = by_type["Flag"]
    # one Flag per open incident, not per alert; an alert outside any incident keeps its own (H-INC-01)
    loose = db.execute("SELECT count(*) FROM alerts WHERE resident_id = %s AND status <> 'resolved' "
                       "AND incident_id IS NULL", (world.resident_a,)).fetchone()[0]
    incidents = db.execute("SELECT count(*) FROM incidents WHERE subject_id = %s AND status <> 'resolved'",
                           (world.resident_a,)).fetchone()[0]
    assert len(flags) == incidents + loose and incidents == 1
    assert fhir._uuid("incident", world.incident_a) in {f["id"] for f in flags}
    assert fhir._uuid("flag", world.alert_a) not in {f["id"] for f in flags}
    refs = {o["subject"]["reference"] for o in by_type["Observation"] + flags}
    assert refs == {f"urn:uuid:{patient['id']}"}
    spo2 = next(o for o in by_type["Observation"] if (fhir.LOINC, "59408-5") in _codes(o))
    assert spo2["valueQuantity"] == {"value": 95.0, "unit": "%", "system": fhir.UCUM, "code": "%"}


def test_fhir_builder_is_deterministic_and_skips_stale_device_values() -> None:
    at = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    resident = {"resident_id": "r1", "display_name": "Ann", "date_of_birth": datetime(1940, 1, 2).date(),
                "nhs_number": None, "monitoring": "active"}
    obs = {"obs_id": 7, "taken_at": at, "respiration_rate": None, "spo2": None, "systolic_bp": None, "pulse": 80.0,
           "temperature": None, "consciousness": None, "score": 0, "risk": "low", "complete": False,
           "missing": ["spo2"]}
    latest = [{"metric": "pulse_rate", "value": 77.0, "measured_at": at - timedelta(hours=1), "device_id": "d"},
              {"metric": "weight", "value": 60.0, "measured_at": at, "device_id": "s"}]
    one = fhir.build_bundle(resident, [obs], latest, [], generated_at=at)
    two = fhir.build_bundle(resident, [obs], latest, [], generated_at=at)
    assert one == two
    values = [e["resource"].get("valueQuantity", {}).get("value") for e in one["entry"]]
    assert 80.0 in values and 77.0 not in values and 60.0 in values
    news2 = [e["resource"] for e in one["entry"] if e["resource"].get("valueInteger") is not None]
    assert news2[0]["status"] == "preliminary"
    Bundle.model_validate(one)


def test_sbard_json_and_text(client: TestClient, world: World) -> None:
    _record_set(client, world, respiration_rate=18, spo2=96, systolic_bp=120, pulse=80, consciousness="A",
                temperature=37.0)
    last = _record_set(client, world, respiration_rate=25, spo2=92, systolic_bp=95, pulse=115, consciousness="C",
                       temperature=38.9, soft_signs=["new_confusion", "reduced_urine"], note="Very sleepy today")
    headers = world.headers(client, "care_staff")
    report = client.get(f"/residents/{world.resident_a}/sbard", headers=headers).json()
    assert set(report) >= {"situation", "background", "assessment", "recommendation", "decision"}
    assert f"Name {world.resident_a}" in report["situation"] and f"{last['score']}" in report["situation"]
    assert report["assessment"]["news2_score"] == last["score"]
    assert report["assessment"]["trend"][-1]["score"] == last["score"]
    assert "rising" in report["assessment"]["trend_summary"]
    assert report["assessment"]["soft_signs"] == ["new confusion", "passing less urine"]
    advice = clinical_response(last["risk"], last["score"], last["missing"])
    assert report["recommendation"].startswith(advice.action)
    text = client.get(f"/residents/{world.resident_a}/sbard", params={"format": "text"}, headers=headers)
    assert text.headers["content-type"].startswith("text/plain")
    for heading in ("SITUATION", "BACKGROUND", "ASSESSMENT", "RECOMMENDATION", "DECISION"):
        assert f"\n{heading}\n" in text.text
    assert "Very sleepy today" in text.text


def test_sbard_without_observations_asks_for_them() -> None:
    now = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    resident = {"resident_id": "r1", "display_name": "Ann", "date_of_birth": datetime(1940, 6, 2).date(),
                "nhs_number": "9434765919", "site_id": "h1", "site_name": "Elm House", "gp_practice": None,
                "scale2": True, "scale2_set_by": "dr-x", "scale2_reason": "COPD", "baseline_confused": True}
    report = sbard.build_sbard(resident, observations=[], alerts=[], events=[], latest=[], practice_name=None,
                               now=now)
    assert "aged 83" in report.situation and "943 476 5919" in report.situation
    assert "No NEWS2 observations" in report.situation
    assert "Take a full set of observations" in report.recommendation
    assert "Scale 2" in report.background and "usually confused" in report.background


@pytest.mark.parametrize(("scores", "word"), [([1, 3, 5], "rising"), ([5, 3], "falling"), ([2, 2], "steady")])
def test_trend_summary(scores: list[int], word: str) -> None:
    start = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
    points = [sbard.TrendPoint(taken_at=start + timedelta(hours=i), score=s, risk="low", complete=True)
              for i, s in enumerate(scores)]
    assert sbard.trend_summary(points).endswith(f"{word}.")
