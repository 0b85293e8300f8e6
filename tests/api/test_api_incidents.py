"""Incidents, the task list, the oxygen prescription and the ACVPU/new-confusion check, through the real API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from carewatch.scoring.incident_store import sync_incidents

if TYPE_CHECKING:
    from conftest import World


def _add_alert(db: psycopg.Connection, w: World, kind: str, severity: str, data: dict) -> int:
    alert_id = db.execute(
        """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action, data,
                               opened_at)
           VALUES (%s, %s, 'resident', %s, %s, %s, %s, 'act', %s, now()) RETURNING alert_id""",
        (w.home_a, w.resident_a, w.resident_a, kind, severity, f"{kind} for resident A", Jsonb(data))).fetchone()[0]
    sync_incidents(db, [("resident", w.resident_a)], datetime.now(UTC))
    db.commit()
    return alert_id


def test_one_incident_per_resident_with_its_components_and_one_acknowledgement(
        client: TestClient, world: World, db: psycopg.Connection) -> None:
    soft = _add_alert(db, world, "soft_signs", "medium", {"soft_signs": ["drowsy"]})
    headers = world.headers(client, "care_staff")
    items = client.get("/incidents", params={"site": world.home_a}, headers=headers).json()["items"]
    assert [i["incident_id"] for i in items] == [world.incident_a]
    incident = items[0]
    assert incident["subject_id"] == world.resident_a and incident["category"] == "clinical"
    assert {c["alert_id"] for c in incident["components"]} == {world.alert_a, soft}
    acked = client.post(f"/incidents/{world.incident_a}/acknowledge", json={"comment": "with her now"},
                        headers=headers)
    assert acked.status_code == 200, acked.text
    body = acked.json()
    assert body["status"] == "acknowledged" and body["owner"] == world.users["care_staff"]
    assert all(c["acknowledged_by"] == world.users["care_staff"] for c in body["components"])
    again = client.post(f"/incidents/{world.incident_a}/acknowledge", json={}, headers=headers)
    assert again.status_code == 409 and "already acknowledged" in again.json()["detail"]
    bad = client.post(f"/incidents/{world.incident_a}/outcome", json={"outcome": "prayed"}, headers=headers)
    assert bad.status_code == 422
    gp = world.headers(client, "gp")
    out = client.post(f"/incidents/{world.incident_a}/outcome", json={"outcome": "gp_called", "comment": "visit 3pm"},
                      headers=gp).json()
    assert (out["outcome"], out["outcome_by"]) == ("gp_called", world.users["gp"])
    done = client.post(f"/incidents/{world.incident_a}/resolve", json={"resolution": "antibiotics started"},
                       headers=gp).json()
    assert done["status"] == "resolved" and done["components"] == []
    # the component alerts and their full history stay queryable
    assert {c["alert_id"] for c in done["history"]} == {world.alert_a, soft}
    assert all(c["status"] == "resolved" for c in done["history"])
    assert [e["action"] for e in done["events"]] == ["opened", "components_added", "acknowledged", "outcome",
                                                     "resolved"]
    alert = client.get(f"/alerts/{soft}", headers=headers).json()
    # the incident's outcome is its components' too (it ends their follow-up escalation, H-ESC-06)
    assert [e["action"] for e in alert["events"]] == ["acknowledged", "outcome_recorded", "resolved"]
    assert client.get("/incidents", params={"site": world.home_a}, headers=headers).json()["items"] == []
    resolved = client.get("/incidents", params={"site": world.home_a, "status": "resolved"}, headers=headers)
    assert [i["incident_id"] for i in resolved.json()["items"]] == [world.incident_a]


def test_acting_on_a_component_alert_acts_on_its_incident(client: TestClient, world: World,
                                                          db: psycopg.Connection) -> None:
    """An API caller acknowledging one alert must stop the incident's ladder, as the incident's card does:
    otherwise the home keeps being notified about a problem someone is already dealing with (H-ESC-13)."""
    soft = _add_alert(db, world, "soft_signs", "medium", {"soft_signs": ["drowsy"]})
    headers = world.headers(client, "care_staff")
    acked = client.post(f"/alerts/{soft}/acknowledge", json={"comment": "with her now"}, headers=headers)
    assert acked.status_code == 200, acked.text
    incident = client.get(f"/incidents/{world.incident_a}", headers=headers).json()
    assert incident["status"] == "acknowledged" and incident["acknowledged_by"] == world.users["care_staff"]
    assert incident["ack_due_at"] is None
    assert all(c["acknowledged_by"] == world.users["care_staff"] for c in incident["components"])
    # every component is acknowledged with the incident: acknowledging another one again is refused
    assert client.post(f"/alerts/{world.alert_a}/acknowledge", json={}, headers=headers).status_code == 409
    gp = world.headers(client, "gp")
    out = client.post(f"/alerts/{soft}/outcome", json={"outcome": "gp_called"}, headers=gp)
    assert out.status_code == 200, out.text
    incident = client.get(f"/incidents/{world.incident_a}", headers=headers).json()
    assert (incident["outcome"], incident["outcome_by"]) == ("gp_called", world.users["gp"])
    assert incident["notify_due_at"] is None  # the outcome ends the incident's follow-up ladder
    esc = client.post(f"/alerts/{world.alert_a}/escalate", json={"outcome": "nhs_111"}, headers=gp)
    assert esc.status_code == 200, esc.text
    incident = client.get(f"/incidents/{world.incident_a}", headers=headers).json()
    assert incident["status"] == "escalated" and incident["escalated_by"] == world.users["gp"]


def test_band_rise_re_opens_an_acknowledged_incident(client: TestClient, world: World,
                                                    db: psycopg.Connection) -> None:
    headers = world.headers(client, "care_staff")
    db.execute("UPDATE alerts SET data = %s WHERE alert_id = %s", (Jsonb({"risk": "low-medium"}), world.alert_a))
    sync_incidents(db, [("resident", world.resident_a)], datetime.now(UTC))
    db.commit()
    assert client.post(f"/incidents/{world.incident_a}/acknowledge", json={}, headers=headers).status_code == 200
    db.execute("UPDATE alerts SET data = %s WHERE alert_id = %s", (Jsonb({"risk": "medium"}), world.alert_a))
    sync_incidents(db, [("resident", world.resident_a)], datetime.now(UTC))
    db.commit()
    detail = client.get(f"/incidents/{world.incident_a}", headers=headers).json()
    assert detail["status"] == "open" and detail["acknowledged_at"] is None and detail["band"] == "medium"
    assert detail["events"][-1]["action"] == "band_rose"
    assert client.post(f"/incidents/{world.incident_a}/acknowledge", json={}, headers=headers).status_code == 200


def test_task_list_shows_who_is_due_by_when_and_why(client: TestClient, world: World,
                                                   db: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    db.execute("UPDATE resident_state SET next_obs_due = %s, next_obs_why = 'news2', news2_risk = 'medium' "
               "WHERE resident_id = %s", (now - timedelta(minutes=30), world.resident_a))
    db.commit()
    body = client.get(f"/sites/{world.home_a}/tasks", headers=world.headers(client, "care_staff")).json()
    assert body["shift"] in ("day", "night")
    task = next(t for t in body["tasks"] if t["resident_id"] == world.resident_a)
    assert task["status"] == "overdue" and task["why_text"] == "NEWS2 frequency" and task["in_incident"]
    assert f"Name {world.resident_a}" in task["text"]
    assert client.get(f"/sites/{world.home_a}/tasks", headers=world.headers(client, "gp")).status_code == 403


def test_oxygen_prescription_is_set_only_by_clinical_roles(client: TestClient, world: World) -> None:
    url = f"/residents/{world.resident_a}/oxygen"
    for role in ("care_staff", "manager", "admin", "council"):
        assert client.put(url, json={"on_oxygen": True}, headers=world.headers(client, role)).status_code == 403
    gp = client.put(url, json={"on_oxygen": True, "flow_lpm": 2}, headers=world.headers(client, "gp")).json()
    assert (gp["oxygen_prescribed"], gp["oxygen_flow_lpm"], gp["oxygen_set_by"]) == (True, 2, world.users["gp"])
    assert gp["oxygen_set_at"] is not None
    nurse = client.put(url, json={"on_oxygen": False}, headers=world.headers(client, "nurse"))
    assert nurse.status_code == 200 and nurse.json()["oxygen_prescribed"] is False
    bad = client.put(url, json={"on_oxygen": False, "flow_lpm": 2}, headers=world.headers(client, "nurse"))
    assert bad.status_code == 422
    # Scale 2 is a clinical decision too: managers and admins no longer set it
    scale2 = f"/residents/{world.resident_a}/scale2"
    body = {"scale2": True, "reason": "respiratory consultant letter"}
    assert client.put(scale2, json=body, headers=world.headers(client, "manager")).status_code == 403
    assert client.put(scale2, json=body, headers=world.headers(client, "admin")).status_code == 403
    assert client.put(scale2, json=body, headers=world.headers(client, "nurse")).status_code == 200


def test_new_confusion_ticked_with_acvpu_a_asks_which_is_true(client: TestClient, world: World) -> None:
    url = f"/residents/{world.resident_a}/observations"
    headers = world.headers(client, "care_staff")
    both = client.post(url, json={"pulse": 80, "consciousness": "A", "soft_signs": ["new_confusion"]},
                       headers=headers)
    assert both.status_code == 422
    problem = both.json()["detail"][0]
    assert problem["field"] == "consciousness" and "Which is true?" in problem["msg"]
    assert client.post(url, json={"pulse": 80, "consciousness": "C", "soft_signs": ["new_confusion"]},
                       headers=headers).status_code == 201
    assert client.post(url, json={"pulse": 80, "consciousness": "A"}, headers=headers).status_code == 201


def test_sbard_and_fhir_speak_of_the_incident(client: TestClient, world: World, db: psycopg.Connection) -> None:
    _add_alert(db, world, "spo2_below_baseline", "low", {})
    headers = world.headers(client, "care_staff")
    report = client.get(f"/residents/{world.resident_a}/sbard", headers=headers).json()
    headline = f"test reason for {world.resident_a} news2"
    assert report["situation"].count(headline) == 1 and "spo2_below_baseline for resident A" in report["situation"]
    assert "One incident with 2 parts is open." in report["background"]
    assert "record that outcome on the incident" in report["decision"]["prompt"]
    client.post(f"/incidents/{world.incident_a}/outcome", json={"outcome": "nhs_111", "comment": "call back 1h"},
                headers=headers)
    report = client.get(f"/residents/{world.resident_a}/sbard", headers=headers).json()
    assert any("outcome (nhs_111) - call back 1h" in p for p in report["decision"]["previous"])
    flags = [e["resource"] for e in client.get(f"/residents/{world.resident_a}/fhir", headers=headers).json()["entry"]
             if e["resource"]["resourceType"] == "Flag"]
    assert len(flags) == 1 and flags[0]["code"]["text"].startswith(headline)
    assert "spo2_below_baseline" in flags[0]["code"]["text"]
