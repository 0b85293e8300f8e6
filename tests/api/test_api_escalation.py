"""The escalation routes: a manager sets the home's policy (audited, validated), care staff may read it but not
change it; the delivery log shows each attempt; the banner sounds until someone acknowledges; an outcome stops
the follow-up."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
from fastapi.testclient import TestClient

from carewatch.notify import deliveries
from carewatch.notify.channels import DashboardChannel
from carewatch.notify.escalation import run_once

from .conftest import incident_of

if TYPE_CHECKING:
    from conftest import World

POLICY = {"levels": [
    {"level": 1, "name": "Staff on shift", "contacts": [{"channel": "dashboard", "recipient": "tablets"}],
     "window_minutes": {"high": 5, "medium": 20}},
    {"level": 2, "name": "Senior on shift", "contacts": [{"channel": "sms", "recipient": "07700900001",
                                                          "name": "Senior"}]},
    {"level": 3, "name": "Manager on call", "contacts": []},
], "outcome_minutes": {"high": 10, "medium": 60}}


def test_only_a_manager_or_admin_sets_the_policy_and_it_is_audited(client: TestClient, world: World,
                                                                  db: psycopg.Connection) -> None:
    url = f"/sites/{world.home_a}/escalation-policy"
    default = client.get(url, headers=world.headers(client, "care_staff"))
    assert default.status_code == 200
    assert default.json()["is_default"] is True
    assert default.json()["gaps"] == ["level 2 (Senior on shift) has nobody on it",
                                      "level 3 (Manager on call) has nobody on it"]
    assert client.put(url, json=POLICY, headers=world.headers(client, "care_staff")).status_code == 403
    assert client.put(url, json=POLICY, headers=world.headers(client, "gp")).status_code == 403
    saved = client.put(url, json=POLICY, headers=world.headers(client, "manager"))
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert (body["is_default"], body["updated_by"]) == (False, world.users["manager"])
    assert body["gaps"] == ["level 3 (Manager on call) has nobody on it"]
    assert client.get(url, headers=world.headers(client, "care_staff")).json()["policy"]["levels"][1]["contacts"][0][
        "recipient"] == "07700900001"
    audit = db.execute("SELECT username, status, detail->>'change', detail->'policy'->'levels'->1->'contacts' "
                       "FROM audit_log WHERE path = %s AND method = 'PUT' ORDER BY audit_id", (url,)).fetchall()
    assert (world.users["manager"], 200, "escalation_policy", POLICY["levels"][1]["contacts"]) in audit
    assert (world.users["care_staff"], 403, None, None) in audit  # refused, and still recorded
    # the dashboard channel is not optional at level 1, and a bad recipient is named
    bad = {**POLICY, "levels": [{**POLICY["levels"][0], "contacts": []}, *POLICY["levels"][1:]]}
    refused = client.put(url, json=bad, headers=world.headers(client, "manager"))
    assert refused.status_code == 422 and "level 1 must include the dashboard" in refused.text
    wrong = {**POLICY, "levels": [POLICY["levels"][0], {**POLICY["levels"][1], "contacts": [
        {"channel": "email", "recipient": "nobody"}]}, POLICY["levels"][2]]}
    assert client.put(url, json=wrong, headers=world.headers(client, "manager")).status_code == 422
    # another home's manager cannot see or set it
    assert client.put(f"/sites/{world.home_b}/escalation-policy", json=POLICY,
                      headers=world.headers(client, "manager")).status_code == 404


def test_banner_sounds_until_acknowledged_then_asks_for_the_outcome(client: TestClient, world: World,
                                                                    db: psycopg.Connection) -> None:
    """The banner, the ladder and the delivery log are per incident (one person's problem): acknowledging or
    recording the outcome of the incident is what quietens every tablet (H-INC-01, H-ESC-03/06)."""
    headers = world.headers(client, "care_staff")
    high = world.alert_a  # the world's NEWS2 alert, made high (a test fixture's row, not a transition)
    db.execute("""UPDATE alerts SET severity = 'high', score = 8, reason = 'NEWS2 8 (high risk)',
                  action = 'Call 999 now.', data = '{"risk": "high"}' WHERE alert_id = %s""", (high,))
    incident = incident_of(db, high)  # regrouped as the engine would: the incident is high now
    db.commit()
    banner = client.get(f"/sites/{world.home_a}/banner", headers=headers).json()
    assert banner["sound"] is True
    item = next(i for i in banner["items"] if i["incident_id"] == incident)
    assert item["alert_id"] == high and item["severity"] == "high"
    assert item["needs"] == "acknowledgement" and "Call 999 now" in item["route"]
    assert banner["items"][0]["incident_id"] == incident  # high first

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        run_once(conn, {"dashboard": DashboardChannel()}, datetime.now(UTC), site_ids=[world.home_a])
    log = client.get(f"/incidents/{incident}/deliveries", headers=headers)
    assert log.status_code == 200
    assert [(d["level"], d["channel"], d["result"]) for d in log.json()] == [(1, "dashboard", "delivered")]
    assert client.get(f"/alerts/{high}/deliveries", headers=headers).json() == []  # no ladder of its own
    site_log = client.get(f"/sites/{world.home_a}/deliveries", headers=world.headers(client, "manager")).json()
    assert (incident, "incident") in {(d["target_id"], d["target_kind"]) for d in site_log["items"]}
    assert client.get(f"/incidents/{incident}/deliveries", headers=world.headers(client, "gp")).status_code == 403

    assert client.post(f"/incidents/{incident}/acknowledge", json={}, headers=headers).status_code == 200
    after = client.get(f"/sites/{world.home_a}/banner", headers=headers).json()
    item = next(i for i in after["items"] if i["incident_id"] == incident)
    assert item["needs"] == "outcome" and item["outcome_due_at"] is not None
    assert after["sound"] is False or incident not in [i["incident_id"] for i in after["items"]
                                                       if i["needs"] == "acknowledgement"]
    recorded = client.post(f"/incidents/{incident}/outcome", json={"outcome": "called_999", "comment": "ambulance"},
                           headers=headers)
    assert recorded.status_code == 200, recorded.text
    assert (recorded.json()["outcome"], recorded.json()["outcome_by"]) == ("called_999", world.users["care_staff"])
    assert "outcome" in [e["action"] for e in recorded.json()["events"]]
    assert incident not in [i["incident_id"] for i in client.get(f"/sites/{world.home_a}/banner",
                                                                 headers=headers).json()["items"]]
    bad = client.post(f"/incidents/{incident}/outcome", json={"outcome": "made_tea"}, headers=headers)
    assert bad.status_code == 422
    assert deliveries.for_target(db, "incident", incident)[0]["recipient"] == "tablets"
    # the alert-level outcome route still works on a component (its own history)
    assert client.post(f"/alerts/{high}/outcome", json={"outcome": "monitoring_plan"},
                       headers=headers).status_code == 200


def test_a_person_escalating_an_incident_is_kept_apart_from_automatic_escalation(
        client: TestClient, world: World, db: psycopg.Connection) -> None:
    headers = world.headers(client, "care_staff")
    incident = incident_of(db, world.alert_a)
    db.execute("UPDATE incidents SET status = 'auto_escalated', notify_level = 2 WHERE incident_id = %s", (incident,))
    db.commit()
    shown = client.get(f"/incidents/{incident}", headers=headers).json()
    assert (shown["status"], shown["notify_level"], shown["escalated_by"]) == ("auto_escalated", 2, None)
    assert incident in [i["incident_id"] for i in client.get(
        "/incidents", params={"status": "auto_escalated"}, headers=headers).json()["items"]]
    done = client.post(f"/incidents/{incident}/escalate", json={"outcome": "gp_called", "comment": "GP at 4"},
                       headers=headers)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["status"], body["escalated_by"], body["escalation_level"], body["outcome"]) == (
        "escalated", world.users["care_staff"], 1, "gp_called")
    [event] = [e for e in body["events"] if e["action"] == "escalated"]
    assert event["detail"] == {"automatic": False} and event["actor"] == world.users["care_staff"]
    noted = client.post(f"/incidents/{incident}/comment", json={"text": "GP visited"}, headers=headers)
    assert noted.status_code == 200 and noted.json()["events"][-1]["comment"] == "GP visited"
    assert client.post(f"/incidents/{incident}/escalate", json={"outcome": "made_tea"},
                       headers=headers).status_code == 422
