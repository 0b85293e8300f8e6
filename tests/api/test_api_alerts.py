"""Alert inbox ordering and filters, alert detail, lifecycle actions and snoozing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from fastapi.testclient import TestClient

from carewatch.subjects import alert_subject_kind

if TYPE_CHECKING:
    from conftest import World


def _alert(db: psycopg.Connection, world: World, kind: str, severity: str, opened_at: datetime) -> int:
    alert_id = db.execute(
        """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action,
                               opened_at, updated_at)
           VALUES (%s, %s, %s, %s, %s, %s, 'r', 'a', %s, %s) RETURNING alert_id""",
        (world.home_a, world.resident_a, alert_subject_kind(kind), world.resident_a, kind, severity, opened_at,
         opened_at)).fetchone()[0]
    db.commit()
    return alert_id


def test_inbox_is_most_severe_first_then_newest(client: TestClient, world: World, db: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    low_new = _alert(db, world, "soft_signs", "low", now - timedelta(minutes=1))
    high_old = _alert(db, world, "spo2_below_baseline", "high", now - timedelta(hours=3))
    high_new = _alert(db, world, "news2_rising", "high", now - timedelta(minutes=5))
    info = _alert(db, world, "obs_overdue", "info", now)
    items = client.get("/alerts", params={"site": world.home_a},
                       headers=world.headers(client, "gp")).json()["items"]
    assert [a["alert_id"] for a in items] == [high_new, high_old, world.alert_a, low_new, info]
    assert items[0]["resident_name"] == f"Name {world.resident_a}" and items[0]["site_name"].startswith("Home A")
    only_high = client.get("/alerts", params={"site": world.home_a, "severity": "high"},
                           headers=world.headers(client, "gp")).json()["items"]
    assert {a["alert_id"] for a in only_high} == {high_new, high_old}
    by_kind = client.get("/alerts", params={"kind": ["soft_signs", "obs_overdue"], "resident": world.resident_a},
                         headers=world.headers(client, "care_staff")).json()["items"]
    assert {a["alert_id"] for a in by_kind} == {low_new, info}
    bad = client.get("/alerts", params={"status": "closed"}, headers=world.headers(client, "gp"))
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "status"


def test_lifecycle_through_the_api(client: TestClient, world: World) -> None:
    headers = world.headers(client, "care_staff")
    url = f"/alerts/{world.alert_a}"
    acked = client.post(f"{url}/acknowledge", json={"comment": "with her now"}, headers=headers)
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == world.users["care_staff"]
    escalated = client.post(f"{url}/escalate", json={"outcome": "nhs_111", "comment": "111 call back in 1 h"},
                            headers=headers).json()
    assert escalated["status"] == "escalated"
    bad_outcome = client.post(f"{url}/escalate", json={"outcome": "shrugged"}, headers=headers)
    assert bad_outcome.status_code == 422
    client.post(f"{url}/comment", json={"text": "GP visiting at 3"}, headers=headers)
    resolved = client.post(f"{url}/resolve", json={"resolution": "GP visited, antibiotics started"},
                           headers=world.headers(client, "gp")).json()
    assert resolved["status"] == "resolved" and resolved["resolved_by"] == world.users["gp"]
    actions = [(e["action"], e["actor"]) for e in resolved["events"]]
    assert ("escalated", world.users["care_staff"]) in actions and ("resolved", world.users["gp"]) in actions
    assert [e["outcome"] for e in resolved["events"] if e["action"] == "escalated"] == ["nhs_111"]
    again = client.post(f"{url}/acknowledge", json={}, headers=headers)
    assert again.status_code == 409 and "resolved" in again.json()["detail"]
    detail = client.get(url, headers=headers).json()
    assert detail["events"] == resolved["events"]


def test_snooze(client: TestClient, world: World, db: psycopg.Connection) -> None:
    url = f"/residents/{world.resident_a}/snooze"
    body = {"kind": "obs_overdue", "reason": "family visit, obs after lunch", "minutes": 120}
    assert client.post(url, json=body, headers=world.headers(client, "care_staff")).status_code == 403
    response = client.post(url, json=body, headers=world.headers(client, "manager"))
    assert response.status_code == 201, response.text
    until = datetime.fromisoformat(response.json()["until"])
    assert timedelta(minutes=119) < until - datetime.now(UTC) <= timedelta(minutes=120)
    row = db.execute("SELECT kind, reason, created_by FROM alert_suppressions WHERE subject_id = %s",
                     (world.resident_a,)).fetchone()
    assert row == ("obs_overdue", body["reason"], world.users["manager"])
    too_long = client.post(url, json={**body, "minutes": None, "until": (datetime.now(UTC) + timedelta(days=9))
                                      .isoformat()}, headers=world.headers(client, "manager"))
    assert too_long.status_code == 422
    # a clinical kind is snoozed for 24 h at most (H-ALERT-07)
    a_day_and_more = client.post(url, json={**body, "minutes": 25 * 60}, headers=world.headers(client, "manager"))
    assert a_day_and_more.status_code == 422 and "24 hours" in a_day_and_more.text
    both = client.post(url, json={**body, "until": datetime.now(UTC).isoformat()},
                       headers=world.headers(client, "manager"))
    assert both.status_code == 422 and "exactly one" in both.json()["message"]
    unknown = client.post(url, json={**body, "kind": "bad_vibes"}, headers=world.headers(client, "manager"))
    assert unknown.status_code == 422
