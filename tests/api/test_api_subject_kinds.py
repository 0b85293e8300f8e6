"""Subject kinds in the API's JSON (issue 13, finding 1; carewatch/subjects.py): ids are unique per kind only, so every
answer that names a subject says its kind too. A resident created with a household's id and that household each
have an alert and an incident; an admin (who sees both) tells them apart by ``subject_kind`` in the alert and
incident lists, their details and components, a snooze and a readings timeline. The OpenAPI schema lists the kinds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from fastapi.testclient import TestClient

from carewatch.subjects import SubjectKind, alert_subject_kind

from .conftest import incident_of

if TYPE_CHECKING:
    from conftest import World


def _alert(db: psycopg.Connection, site: str, resident: str | None, subject: str, kind: str) -> int:
    return db.execute(
        """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action)
           VALUES (%s, %s, %s, %s, %s, 'medium', %s, 'look') RETURNING alert_id""",
        (site, resident, alert_subject_kind(kind), subject, kind, f"subject kinds: {kind}")).fetchone()[0]


def test_alerts_incidents_snoozes_and_timelines_say_which_kind_of_subject(client: TestClient, world: World,
                                                                         db: psycopg.Connection) -> None:
    w = world
    same = w.household_a  # a resident of home A is given the household's id (allowed on purpose: docs/security.md)
    made = client.post("/residents", headers=w.headers(client, "manager"), json={
        "resident_id": same, "site_id": w.home_a, "display_name": "Same Id", "date_of_birth": "1940-01-01",
        "gp_practice": w.practice_a})
    assert made.status_code == 201, made.text
    household_alert = _alert(db, w.household_a, None, same, "long_lie")
    resident_alert = _alert(db, w.home_a, same, same, "news2")
    household_incident, resident_incident = incident_of(db, household_alert), incident_of(db, resident_alert)
    db.commit()
    admin = w.headers(client, "admin")
    kinds = {SubjectKind.HOUSEHOLD.value: (household_alert, household_incident),
             SubjectKind.RESIDENT.value: (resident_alert, resident_incident)}

    listed = {a["alert_id"]: a for a in client.get("/alerts", headers=admin, params={"limit": 500}).json()["items"]}
    incidents = {i["incident_id"]: i for i in
                 client.get("/incidents", headers=admin, params={"limit": 500}).json()["items"]}
    for kind, (alert_id, incident_id) in kinds.items():
        assert (listed[alert_id]["subject_kind"], listed[alert_id]["subject_id"]) == (kind, same)
        detail = client.get(f"/alerts/{alert_id}", headers=admin).json()
        assert (detail["subject_kind"], detail["subject_id"]) == (kind, same)
        assert (incidents[incident_id]["subject_kind"], incidents[incident_id]["subject_id"]) == (kind, same)
        assert [c["subject_kind"] for c in incidents[incident_id]["components"]] == [kind]
        one = client.get(f"/incidents/{incident_id}", headers=admin).json()
        assert one["subject_kind"] == kind and {c["subject_kind"] for c in one["history"]} == {kind}
    # the same id, two subjects: a client keys them by the pair
    assert {(listed[a]["subject_kind"], listed[a]["subject_id"]) for a in (household_alert, resident_alert)} == {
        ("household", same), ("resident", same)}

    # what the resident routes answer about is always the resident, and they say so
    snoozed = client.post(f"/residents/{same}/snooze", headers=w.headers(client, "manager"),
                          json={"kind": "news2", "reason": "checked by the GP", "minutes": 30})
    assert snoozed.status_code == 201, snoozed.text
    assert (snoozed.json()["subject_kind"], snoozed.json()["subject_id"]) == ("resident", same)
    timeline = client.get(f"/residents/{same}/readings", headers=admin, params={"metric": "spo2"})
    assert timeline.status_code == 200, timeline.text
    assert (timeline.json()["subject_kind"], timeline.json()["subject_id"]) == ("resident", same)


def test_openapi_lists_the_subject_kinds_on_every_model_that_names_a_subject(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    kinds = schemas["SubjectKind"]["enum"]
    assert sorted(kinds) == sorted(k.value for k in SubjectKind)
    naming = [name for name, s in schemas.items() if "subject_id" in s.get("properties", {})
              and name != "AuditOut"]  # the audit log's subject is a record type (subject_type), not a subject kind
    assert {"AlertOut", "IncidentOut", "SnoozeOut", "Timeline"} <= set(naming)
    for name in naming:
        assert "subject_kind" in schemas[name]["properties"], f"{name} names a subject without its kind"
        assert "subject_kind" in schemas[name].get("required", []), name
    assert "from_subject_kind" in schemas["MoveOut"]["properties"]
