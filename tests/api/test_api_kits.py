"""Shared kits through the API on the real PostgreSQL (issue 17): sessions, live values, claims, moves with
re-scored alerts, the "Is this <name>?" question, and another home's staff kept out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
import pytest
from fastapi.testclient import TestClient

from carewatch.api.auth import issue_tokens
from carewatch.api.users import get_user
from carewatch.ingest import kit_sessions
from carewatch.ingest.store import store_batch
from carewatch.ingest.validate import ReadingsMessage
from carewatch.scoring.engine import evaluate_subjects
from carewatch.wire import DeviceKind, Metric, Reading, encode_batch

if TYPE_CHECKING:
    from conftest import World

UNITS = {Metric.SPO2: "%", Metric.PULSE_RATE: "/min", Metric.TEMPERATURE: "Cel", Metric.SYSTOLIC_BP: "mmHg",
         Metric.DIASTOLIC_BP: "mmHg"}


@dataclass
class KitHome:
    w: World
    kit: str
    oximeter: str
    thermometer: str
    mary: str  # resident_a2: "Mary Smith"
    john: str  # resident_a3
    seq: int = 5000

    def send(self, db: psycopg.Connection, *values: tuple[Metric, float], at: datetime) -> list[int]:
        """The kit's devices measure now: readings through the real ingest store."""
        readings = []
        for metric, value in values:
            self.seq += 1
            device, kind = ((self.thermometer, DeviceKind.THERMOMETER) if metric is Metric.TEMPERATURE
                            else (self.oximeter, DeviceKind.PULSE_OXIMETER))
            readings.append(Reading(seq=self.seq, device_id=device, device_kind=kind, metric=metric, value=value,
                                    unit=UNITS[metric], measured_at=at, received_at=at + timedelta(seconds=1)))
        store_batch(db, [ReadingsMessage.from_payload(None, encode_batch(self.w.home_a, self.w.gateway_a,
                                                                             readings))])
        return [r.seq for r in readings]


@pytest.fixture
def kit_home(world: World, db: psycopg.Connection) -> KitHome:
    w = world
    k = KitHome(w, f"{w.home_a}-kit-01", f"kox-{w.uid}", f"kth-{w.uid}", f"mary-{w.uid}", f"john-{w.uid}")
    for rid, name in ((k.mary, "Mary Smith"), (k.john, "John Jones")):
        db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, gp_practice) "
                   "VALUES (%s, %s, %s, '1936-02-29', %s)", (rid, w.home_a, name, w.practice_a))
    kit_sessions.ensure_kits(db, [(k.kit, w.home_a, "kit-01")])
    db.execute("""INSERT INTO devices (device_id, site_id, gateway_id, kind, kit_id) VALUES
                  (%s, %s, %s, 'pulse_oximeter', %s), (%s, %s, %s, 'thermometer', %s)""",
               (k.oximeter, w.home_a, w.gateway_a, k.kit, k.thermometer, w.home_a, w.gateway_a, k.kit))
    db.commit()
    return k


def other_home_staff(client: TestClient, w: World) -> dict[str, str]:
    with client.app.state.pool.connection() as conn:
        user = get_user(conn, w.other_users["care_staff"])
        assert user is not None
        return {"Authorization": f"Bearer {issue_tokens(conn, user, client.app.state.settings).access_token}"}


def subject_of(db: psycopg.Connection, w: World, seq: int) -> str:
    db.commit()
    return db.execute("SELECT subject_id FROM readings WHERE gateway_id = %s AND seq = %s",
                      (w.gateway_a, seq)).fetchone()[0]


def test_sessions_one_per_kit_and_not_for_another_homes_staff(client: TestClient, kit_home: KitHome,
                                                               db: psycopg.Connection) -> None:
    k, w = kit_home, kit_home.w
    staff, manager = w.headers(client, "care_staff"), w.headers(client, "manager")
    kits = client.get("/kits", headers=staff).json()
    assert [(x["kit_id"], x["name"], sorted(d["device_id"] for d in x["devices"])) for x in kits] == [
        (k.kit, "kit-01", sorted([k.oximeter, k.thermometer]))]
    started = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.mary}, headers=staff)
    assert started.status_code == 201, started.text
    s = started.json()
    assert (s["resident_name"], s["date_of_birth"], s["open"], s["values"]) == ("Mary Smith", "1936-02-29", True, {})
    refused = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.john}, headers=manager)
    assert refused.status_code == 409
    assert "kit-01 is in use: measuring Mary Smith" in refused.json()["detail"]
    assert "End that session first" in refused.json()["detail"]
    replaced = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.john, "replace": True}, headers=manager)
    assert replaced.status_code == 201 and replaced.json()["ended_session"]["session_id"] == s["session_id"]
    db.commit()
    assert db.execute("SELECT end_reason, ended_by FROM kit_sessions WHERE session_id = %s",
                      (s["session_id"],)).fetchone() == ("replaced", w.users["manager"])
    # another home's care staff: the kit does not exist for them, and nothing changes
    other = other_home_staff(client, w)
    for body in ({"resident_id": k.mary}, {"resident_id": k.mary, "replace": True}):
        assert client.post(f"/kits/{k.kit}/sessions", json=body, headers=other).status_code == 404
    assert client.get(f"/kit-sessions/{s['session_id']}", headers=other).status_code == 404
    assert client.get("/kits", headers=other).json() == []
    assert client.post(f"/kits/{k.kit}/sessions", json={"resident_id": w.resident_b, "replace": True},
                       headers=staff).status_code == 404  # a resident of another home
    # 'at' is for simulated-time platforms only
    assert client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.mary, "replace": True,
                                                         "at": datetime.now(UTC).isoformat()},
                       headers=staff).status_code == 422
    audit = db.execute("SELECT count(*) FROM audit_log WHERE subject_type = 'kit_session' AND action = 'create' "
                       "AND subject_id IS NOT NULL AND detail->>'kit_id' = %s", (k.kit,)).fetchone()[0]
    assert audit == 2


def test_live_values_save_ends_session_and_next_starts_clean(client: TestClient, kit_home: KitHome,
                                                              db: psycopg.Connection) -> None:
    k, w = kit_home, kit_home.w
    staff = w.headers(client, "care_staff")
    s = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.mary}, headers=staff).json()
    now = datetime.now(UTC)
    k.send(db, (Metric.SPO2, 95), (Metric.PULSE_RATE, 78), at=now)
    k.send(db, (Metric.TEMPERATURE, 37.1), at=now + timedelta(seconds=5))
    live = client.get(f"/kit-sessions/{s['session_id']}", headers=staff).json()
    assert {p: (v["value"], v["device_id"]) for p, v in live["values"].items()} == {
        "spo2": (95, k.oximeter), "pulse": (78, k.oximeter), "temperature": (37.1, k.thermometer)}
    saved = client.post(f"/residents/{k.mary}/observations", headers=staff, json={
        "respiration_rate": 16, "consciousness": "A", "from_device": ["spo2", "pulse", "temperature"],
        "session_id": s["session_id"]})
    assert saved.status_code == 201, saved.text
    db.commit()
    inputs = db.execute("SELECT inputs FROM observation_sets WHERE obs_id = %s",
                        (saved.json()["obs_id"],)).fetchone()[0]
    assert inputs["spo2"]["device_id"] == k.oximeter and inputs["temperature"]["device_id"] == k.thermometer
    ended = client.get(f"/kit-sessions/{s['session_id']}", headers=staff).json()
    assert (ended["open"], ended["end_reason"]) == (False, "saved")
    nxt = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.john}, headers=staff)
    assert nxt.status_code == 201 and nxt.json()["values"] == {} and nxt.json()["resident_name"] == "John Jones"
    # a session's values cannot be saved to someone else
    wrong = client.post(f"/residents/{k.mary}/observations", headers=staff, json={
        "pulse": 70, "session_id": nxt.json()["session_id"]})
    assert wrong.status_code == 409 and "is measuring John Jones" in wrong.json()["detail"]


def test_is_this_the_resident_before_saving(client: TestClient, kit_home: KitHome, db: psycopg.Connection) -> None:
    k, w = kit_home, kit_home.w
    staff = w.headers(client, "care_staff")
    start = datetime.now(UTC) - timedelta(days=3)
    for day in range(6):  # Mary's usual SpO2 is 96
        with db.transaction():
            s = kit_sessions.start_session(db, kit_id=k.kit, site_id=w.home_a, resident_id=k.mary, by="seed",
                                           at=start + timedelta(hours=8 * day))
        k.send(db, (Metric.SPO2, 96), at=start + timedelta(hours=8 * day, minutes=1))
        with db.transaction():
            kit_sessions.end_session(db, s.session["session_id"], by="seed", at=start + timedelta(hours=8 * day,
                                                                                                 minutes=2),
                                     reason="saved")
    db.commit()
    s = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.mary}, headers=staff).json()
    k.send(db, (Metric.SPO2, 76), at=datetime.now(UTC))
    live = client.get(f"/kit-sessions/{s['session_id']}", headers=staff).json()
    assert live["identity_check"] == ["Is this Mary Smith? spo2 76 % is 20 below their usual 96 %."]
    body = {"from_device": ["spo2"], "session_id": s["session_id"]}
    asked = client.post(f"/residents/{k.mary}/observations", headers=staff, json=body)
    assert asked.status_code == 409 and asked.json()["detail"].startswith("Is this Mary Smith?")
    confirmed = client.post(f"/residents/{k.mary}/observations", headers=staff,
                            json={**body, "identity_confirmed": True})
    assert confirmed.status_code == 201, confirmed.text


def test_claim_unassigned_reading_within_five_minutes(client: TestClient, kit_home: KitHome,
                                                      db: psycopg.Connection) -> None:
    k, w = kit_home, kit_home.w
    staff = w.headers(client, "care_staff")
    now = datetime.now(UTC)
    old = k.send(db, (Metric.SPO2, 93), at=now - timedelta(minutes=7))[0]
    first = k.send(db, (Metric.SPO2, 94), (Metric.PULSE_RATE, 81), at=now - timedelta(minutes=2))
    assert subject_of(db, w, first[0]) == k.kit
    listed = client.get(f"/kits/{k.kit}/unassigned", headers=staff).json()
    assert {r["seq"] for r in listed} == {old, *first}
    assert all(r["words"].startswith("reading from kit-01 at ") and r["words"].endswith(", not yet assigned")
               for r in listed)
    s = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.mary}, headers=staff).json()
    assert sorted(r["seq"] for r in s["claimable"]) == sorted(first)  # not the 7-minute-old one
    too_old = client.post(f"/kit-sessions/{s['session_id']}/claim", headers=staff,
                          json={"readings": [{"gateway_id": w.gateway_a, "seq": old}]})
    assert too_old.status_code == 409 and subject_of(db, w, old) == k.kit
    claimed = client.post(f"/kit-sessions/{s['session_id']}/claim", headers=staff, json={})
    assert claimed.status_code == 200, claimed.text
    assert {p: v["value"] for p, v in claimed.json()["values"].items()} == {"spo2": 94, "pulse": 81}
    assert [subject_of(db, w, q) for q in first] == [k.mary, k.mary]
    history = db.execute("SELECT kind, by_user FROM reading_assignments WHERE gateway_id = %s AND seq = ANY(%s)",
                         (w.gateway_a, first)).fetchall()
    assert history == [("claim", w.users["care_staff"])] * 2
    assert db.execute("SELECT count(*) FROM audit_log WHERE subject_id = %s AND detail->>'change' = "
                      "'readings_claimed'", (k.mary,)).fetchone()[0] == 1


def test_move_reading_to_the_right_resident_recomputes_alerts_for_both(client: TestClient, kit_home: KitHome,
                                                                       db: psycopg.Connection) -> None:
    """The carer chose Mary but measured John, who is unwell: the device round raises an alert on Mary. Moving
    the measurement puts it on John, withdraws Mary's round and her alert, and raises John's."""
    k, w = kit_home, kit_home.w
    staff = w.headers(client, "care_staff")
    assert client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.mary}, headers=staff).status_code == 201
    at = datetime.now(UTC)
    seqs = k.send(db, (Metric.SPO2, 86), (Metric.PULSE_RATE, 128), at=at)
    k.send(db, (Metric.TEMPERATURE, 39.4), at=at + timedelta(seconds=1))
    assert {subject_of(db, w, q) for q in [*seqs, seqs[-1] + 1]} == {k.mary}
    evaluate_subjects(db, [k.mary], datetime.now(UTC) + timedelta(seconds=2))
    db.commit()
    mary_alert = db.execute("SELECT alert_id, score FROM alerts WHERE resident_id = %s AND kind = 'news2' "
                            "AND status <> 'resolved'", (k.mary,)).fetchone()
    assert mary_alert is not None and mary_alert[1] >= 5
    moved = client.post("/readings/move", headers=staff, json={
        "gateway_id": w.gateway_a, "seq": seqs[0], "to_resident_id": k.john, "reason": "measured John"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["moved"] == 2 and moved.json()["from_resident_id"] == k.mary  # SpO2 and its pulse
    assert moved.json()["from_subject_kind"] == "resident"  # Mary's, not the kit's own (issue 13: kinds in the JSON)
    assert moved.json()["alerts_evaluated"] is True
    assert [subject_of(db, w, q) for q in seqs] == [k.john, k.john]
    moved_t = client.post("/readings/move", headers=staff, json={
        "gateway_id": w.gateway_a, "seq": seqs[-1] + 1, "to_resident_id": k.john})
    assert moved_t.status_code == 200 and moved_t.json()["moved"] == 1
    db.commit()
    assert db.execute("SELECT status FROM alerts WHERE alert_id = %s", (mary_alert[0],)).fetchone()[0] == "resolved"
    john_alert = db.execute("SELECT score FROM alerts WHERE resident_id = %s AND kind = 'news2' "
                            "AND status <> 'resolved'", (k.john,)).fetchone()
    assert john_alert is not None and john_alert[0] >= 5
    assert db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s AND recorded_by = 'scorer'",
                      (k.mary,)).fetchone()[0] == 0
    # the readings are John's alone: never on two residents
    assert db.execute("SELECT count(*) FROM readings WHERE gateway_id = %s AND seq = ANY(%s) AND subject_id <> %s",
                      (w.gateway_a, seqs, k.john)).fetchone()[0] == 0
    latest = dict(db.execute("SELECT subject_id, value FROM latest_readings WHERE metric = 'spo2' "
                             "AND subject_id = ANY(%s)", ([k.mary, k.john],)).fetchall())
    assert latest == {k.john: 86}
    assert db.execute("SELECT count(*) FROM audit_log WHERE subject_id = %s AND detail->>'change' = "
                      "'reading_moved_out'", (k.mary,)).fetchone()[0] == 2  # the measurement, the temperature
    recent = client.get(f"/kits/{k.kit}/readings", headers=staff).json()
    on = {(r["seq"], r["resident_id"], r["movable"]) for r in recent}
    assert {(q, k.john, True) for q in [*seqs, seqs[-1] + 1]} <= on
    assert all(r["words"].endswith("on John Jones") for r in recent if r["seq"] in seqs)
    # nothing older than an hour
    db.execute("UPDATE readings SET stored_at = now() - interval '61 minutes' WHERE gateway_id = %s AND seq = %s",
               (w.gateway_a, seqs[0]))
    db.commit()
    late = client.post("/readings/move", headers=staff, json={
        "gateway_id": w.gateway_a, "seq": seqs[0], "to_resident_id": k.john})
    assert late.status_code == 409 and "for an hour" in late.json()["detail"]
    other = other_home_staff(client, w)
    assert client.post("/readings/move", headers=other, json={
        "gateway_id": w.gateway_a, "seq": seqs[1], "to_resident_id": w.resident_b}).status_code == 404


def test_gateway_registry_lists_kit_devices_in_the_unchanged_format(client: TestClient, kit_home: KitHome) -> None:
    """Older gateways keep working: the registry answer a kit device appears in is read by the gateway's own
    (unchanged, extra-forbidding) registry model, with neither a resident nor a room for the kit device."""
    from carewatch.registry import DeviceRegistry

    k, w = kit_home, kit_home.w
    with client.app.state.pool.connection() as conn:
        conn.execute("UPDATE devices SET mac = %s WHERE device_id = %s", ("A4:C1:38:00:17:01", k.oximeter))
    answer = client.get(f"/gateways/{w.gateway_a}/registry", headers=w.headers(client, "admin"))  # bind keys: admin
    assert answer.status_code == 200
    entry = next(d for d in answer.json()["devices"] if d["device_id"] == k.oximeter)
    assert "kit_id" not in entry and entry.get("resident_id") is None and entry.get("room") is None
    registry = DeviceRegistry.from_document(answer.json())
    device = registry.get("A4:C1:38:00:17:01")
    assert device is not None and device.resident_id is None and device.kind.value == "pulse_oximeter"


def test_moving_a_reading_corrects_the_staff_saved_set_that_took_it(client: TestClient, kit_home: KitHome,
                                                                    db: psycopg.Connection) -> None:
    """The carer chose Mary, measured John (unwell) and saved the set on Mary with the kit's values. Moving the
    measurement to John takes those values out of Mary's staff set (kept, marked moved, scored again on what the
    carer typed), resolves the alert that rested on it, and John's own round scores them (H-KIT-05)."""
    k, w = kit_home, kit_home.w
    staff = w.headers(client, "care_staff")
    started = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.mary}, headers=staff)
    assert started.status_code == 201, started.text
    at = datetime.now(UTC).replace(microsecond=0)
    seqs = k.send(db, (Metric.SPO2, 85), (Metric.PULSE_RATE, 131), at=at)
    db.commit()
    saved = client.post(f"/residents/{k.mary}/observations", headers=staff, json={
        "respiration_rate": 18, "consciousness": "A", "from_device": ["spo2", "pulse"],
        "session_id": started.json()["session_id"], "identity_confirmed": True, "prefill_minutes": 120})
    assert saved.status_code in (200, 201), saved.text
    assert saved.json()["score"] >= 5
    db.commit()
    obs_id, = db.execute("SELECT obs_id FROM observation_sets WHERE resident_id = %s AND recorded_by = %s",
                         (k.mary, w.users["care_staff"])).fetchone()
    alert = db.execute("SELECT alert_id FROM alerts WHERE resident_id = %s AND kind = 'news2' "
                       "AND status <> 'resolved'", (k.mary,)).fetchone()
    assert alert is not None
    moved = client.post("/readings/move", headers=staff, json={
        "gateway_id": w.gateway_a, "seq": seqs[0], "to_resident_id": k.john, "reason": "it was John"})
    assert moved.status_code == 200 and moved.json()["moved"] == 2, moved.text
    db.commit()
    spo2, pulse, rr, score, inputs = db.execute(
        "SELECT spo2, pulse, respiration_rate, score, inputs FROM observation_sets WHERE obs_id = %s",
        (obs_id,)).fetchone()
    assert (spo2, pulse, rr) == (None, None, 18)  # the carer's own count stays; John's values left
    assert score == 0 and inputs["spo2"]["source"] == "moved" and inputs["spo2"]["value"] == 85
    assert db.execute("SELECT status FROM alerts WHERE alert_id = %s", alert).fetchone()[0] == "resolved"
    john = db.execute("SELECT max(score) FROM observation_sets WHERE resident_id = %s", (k.john,)).fetchone()[0]
    assert john is not None and john >= 5
    assert db.execute("SELECT count(*) FROM alerts WHERE resident_id = %s AND kind = 'news2' "
                      "AND status <> 'resolved'", (k.john,)).fetchone()[0] == 1


def test_the_session_banner_carries_the_photo_the_home_keeps(client: TestClient, kit_home: KitHome) -> None:
    """Name, date of birth and, where the home keeps one, the photo (an https address a manager sets): the carer
    checks the face before measuring (H-KIT-04). Anything but https is refused."""
    k, w = kit_home, kit_home.w
    manager, staff = w.headers(client, "manager"), w.headers(client, "care_staff")
    for bad in ("http://photos.home.test/mary.jpg", "javascript:alert(1)", "https://x.test/a b.jpg"):
        assert client.patch(f"/residents/{k.mary}", headers=manager, json={"photo_url": bad}).status_code == 422
    url = "https://photos.home.test/residents/mary.jpg"
    set_photo = client.patch(f"/residents/{k.mary}", headers=manager, json={"photo_url": url})
    assert set_photo.status_code == 200 and set_photo.json()["photo_url"] == url
    session = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.mary}, headers=staff)
    assert session.status_code == 201 and session.json()["photo_url"] == url
    assert client.get(f"/kit-sessions/{session.json()['session_id']}", headers=staff).json()["photo_url"] == url
    john = client.post(f"/kits/{k.kit}/sessions", json={"resident_id": k.john, "replace": True}, headers=staff)
    assert john.status_code == 201 and john.json()["photo_url"] is None  # no photo kept: none shown
