"""Practice mode (issue 17, H-KIT-07): a new carer walks a round on the home's practice resident with the practice
kit (same session path), the resident deteriorates on request, the carer sees the worrying score, the SBARD script
marked PRACTICE and acknowledges the alert; and none of it reaches a real view, export, report, adoption figure or
notification. The leak check iterates the app's own route list, so a new real route is covered the day it lands.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from carewatch.api.app import PUBLIC_PATHS
from carewatch.api.deps import PRACTICE_HEADER
from carewatch.ingest.kit_sessions import PRACTICE_NAME
from carewatch.ingest.store import store_batch
from carewatch.ingest.validate import ReadingsMessage
from carewatch.notify.escalation import ALERTS, INCIDENTS
from carewatch.scoring.engine import evaluate_subjects
from carewatch.wire import DeviceKind, Metric, Reading, encode_batch

if TYPE_CHECKING:
    from conftest import World

PRACTICE = {PRACTICE_HEADER: "1"}
#: Routes that show practice activity by design: the practice mode's own; the gateway's device list (machine
#: configuration the hub needs to forward the practice kit's readings, read by no person); the admin's audit log
#: (every request is audited, a trainee's too: security needs them).
PRACTICE_ROUTES = frozenset({"/sites/{site_id}/practice", "/gateways/{gateway_id}/registry", "/audit"})
QUERY = {"limit": 500, "format": "json", "metric": "spo2"}
ROLES = ("care_staff", "manager", "nurse", "gp", "admin")


def _practice_round(client: TestClient, db: psycopg.Connection, w: World) -> dict[str, Any]:
    """The trainee's round: practice mode on, the practice resident deteriorates, measured with the practice kit,
    saved; the worrying score, the SBARD script and the alert acknowledged. Returns the ids it made."""
    staff = {**w.headers(client, "care_staff"), **PRACTICE}
    made = client.post(f"/sites/{w.home_a}/practice", headers=staff)
    assert made.status_code == 200, made.text
    p = made.json()
    assert p["practice"] is True and p["condition"] == "well" and p["display_name"] == PRACTICE_NAME
    assert client.post(f"/sites/{w.home_a}/practice", headers=staff).json() == p  # one per home
    asked = client.put(f"/sites/{w.home_a}/practice", headers=staff, json={"condition": "deteriorating"})
    assert asked.status_code == 200 and asked.json()["condition"] == "deteriorating"
    # the simulator's practice kit devices (firmware_sim/practice.py registers them like this)
    oxi, thermo = f"pox-{w.uid}", f"pth-{w.uid}"
    db.execute("""INSERT INTO devices (device_id, site_id, gateway_id, kind, kit_id) VALUES
                  (%s, %s, %s, 'pulse_oximeter', %s), (%s, %s, %s, 'thermometer', %s)""",
               (oxi, w.home_a, w.gateway_a, p["kit_id"], thermo, w.home_a, w.gateway_a, p["kit_id"]))
    db.commit()
    kits = client.get("/kits", headers=staff).json()
    assert [k["kit_id"] for k in kits] == [p["kit_id"]]  # in practice mode only the practice kit
    started = client.post(f"/kits/{p['kit_id']}/sessions", headers=staff, json={"resident_id": p["resident_id"]})
    assert started.status_code == 201, started.text
    session = started.json()["session_id"]
    at = datetime.now(UTC)
    readings = [Reading(seq=7001 + i, device_id=d, device_kind=k, metric=m, value=v, unit=u, measured_at=at,
                        received_at=at + timedelta(seconds=1))
                for i, (d, k, m, v, u) in enumerate([
                    (oxi, DeviceKind.PULSE_OXIMETER, Metric.SPO2, 89, "%"),
                    (oxi, DeviceKind.PULSE_OXIMETER, Metric.PULSE_RATE, 124, "/min"),
                    (thermo, DeviceKind.THERMOMETER, Metric.TEMPERATURE, 39.3, "Cel")])]
    store_batch(db, [ReadingsMessage.from_payload(None, encode_batch(w.home_a, w.gateway_a, readings))])
    db.commit()
    live = client.get(f"/kit-sessions/{session}", headers=staff).json()
    assert {p_: v["value"] for p_, v in live["values"].items()} == {"spo2": 89, "pulse": 124, "temperature": 39.3}
    saved = client.post(f"/residents/{p['resident_id']}/observations", headers=staff, json={
        "respiration_rate": 26, "systolic_bp": 98, "consciousness": "A", "session_id": session,
        "from_device": ["spo2", "pulse", "temperature"], "identity_confirmed": True, "prefill_minutes": 120})
    assert saved.status_code in (200, 201), saved.text
    assert saved.json()["score"] >= 7 and saved.json()["alerts_evaluated"] is True  # a worrying score
    evaluate_subjects(db, [p["resident_id"]], datetime.now(UTC))
    db.commit()
    alerts = client.get("/alerts", headers=staff, params={"limit": 500}).json()["items"]
    assert alerts and {a["resident_id"] for a in alerts} == {p["resident_id"]}  # practice mode: practice only
    alert = next(a for a in alerts if a["kind"] == "news2")
    script = client.get(f"/residents/{p['resident_id']}/sbard", headers=staff, params={"format": "text"})
    assert script.status_code == 200 and "PRACTICE ONLY" in script.text
    assert client.get(f"/residents/{p['resident_id']}/fhir", headers=staff).status_code == 409  # never exported
    acked = client.post(f"/alerts/{alert['alert_id']}/acknowledge", headers=staff, json={})
    assert acked.status_code == 200, acked.text
    incident = db.execute("SELECT incident_id FROM alerts WHERE alert_id = %s", (alert["alert_id"],)).fetchone()[0]
    return {"resident": p["resident_id"], "kit": p["kit_id"], "alert": alert["alert_id"], "incident": incident,
            "devices": [oxi, thermo], "session": session}


def _gets(client: TestClient) -> list[str]:
    return sorted({rc.path for rc in iter_route_contexts(client.app.routes)
                   if "GET" in (rc.methods or set()) and rc.path not in PUBLIC_PATHS})


def _fill(path: str, ids: dict[str, str]) -> str | None:
    names = re.findall(r"\{(\w+)\}", path)

    def key(n: str) -> str:
        return "household" if n == "site_id" and path.startswith("/households") else n

    if any(ids.get(key(n)) is None for n in names):
        return None
    return re.sub(r"\{(\w+)\}", lambda m: str(ids[key(m.group(1))]), path)


def test_practice_data_stays_out_of_every_real_view_and_export(client: TestClient, world: World,
                                                                db: psycopg.Connection) -> None:
    w = world
    manager = w.headers(client, "manager")
    adoption_before = client.get("/reports/adoption", headers=manager, params={"site": w.home_a}).json()
    p = _practice_round(client, db, w)
    hidden = [p["resident"], PRACTICE_NAME, p["kit"], *p["devices"]]
    real = {"resident_id": w.resident_a, "site_id": w.home_a, "household": w.household_a,
            "alert_id": str(w.alert_a), "incident_id": str(w.incident_a), "device_id": w.device_a,
            "gateway_id": w.gateway_a, "username": w.users["manager"]}
    practice_ids = {"resident_id": p["resident"], "alert_id": str(p["alert"]), "incident_id": str(p["incident"]),
                    "kit_id": p["kit"], "session_id": str(p["session"])}
    checked = refused = 0
    for role in ROLES:
        headers = w.headers(client, role)
        for path in _gets(client):
            if path in PRACTICE_ROUTES:
                continue
            url = _fill(path, real)
            if url is not None:  # every real view and export: nothing of the practice resident in it
                response = client.get(url, headers=headers, params=QUERY)
                leaked = [h for h in hidden if h in response.text]
                assert not leaked, f"{role} GET {url} -> {response.status_code} shows practice data {leaked}"
                if path == "/alerts" and response.status_code == 200:
                    assert p["alert"] not in {a["alert_id"] for a in response.json()["items"]}
                if path == "/incidents" and response.status_code == 200:
                    assert p["incident"] not in {i["incident_id"] for i in response.json()["items"]}
                checked += 1
            names = set(re.findall(r"\{(\w+)\}", path))
            if names & set(practice_ids):  # the practice resident's own ids, outside practice mode: not there
                url = _fill(path, {**real, **practice_ids})
                assert url is not None
                response = client.get(url, headers=headers, params=QUERY)
                assert response.status_code in (403, 404), f"{role} GET {url} -> {response.status_code}"
                refused += 1
    assert checked >= 5 * 30 and refused >= 5 * 10
    # the home's figures and reports: as if the practice round never happened
    assert client.get("/reports/adoption", headers=manager, params={"site": w.home_a}).json() == adoption_before
    overview = client.get(f"/sites/{w.home_a}/overview", headers=manager).json()
    assert p["resident"] not in {r["resident_id"] for r in overview["residents"]}
    # notifications and escalation: the pass never picks the practice alert or incident (the query itself)
    now = datetime.now(UTC) + timedelta(hours=2)
    db.execute("UPDATE alerts SET acknowledged_at = NULL, notify_level = 0 WHERE alert_id = %s", (p["alert"],))
    for target, own in ((ALERTS, p["alert"]), (INCIDENTS, p["incident"])):
        with db.transaction():
            picked = [r[0] for r in db.execute(target.candidates_sql, {"sites": [w.home_a], "now": now}).fetchall()]
        assert own not in picked, f"the {target.kind} escalation pass picked the practice {target.kind}"
    db.rollback()
    # and nothing real shows in practice mode
    staff_practice = {**w.headers(client, "care_staff"), **PRACTICE}
    residents = client.get("/residents", headers=staff_practice).json()["items"]
    assert [r["resident_id"] for r in residents] == [p["resident"]] and residents[0]["practice"] is True
    assert client.get(f"/residents/{w.resident_a}", headers=staff_practice).status_code == 404
    assert w.alert_a not in {a["alert_id"] for a in client.get("/alerts", headers=staff_practice).json()["items"]}


def test_a_real_resident_is_never_turned_into_the_practice_one(client: TestClient, world: World,
                                                               db: psycopg.Connection) -> None:
    """A real resident already holding the practice id stays real: practice mode answers 409, nothing changes."""
    w = world
    db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
               "VALUES (%s, %s, 'Real Person', '1930-01-01')", (f"practice-{w.home_b}", w.home_b))
    db.commit()
    other = {"Authorization": w.headers(client, "admin")["Authorization"], **PRACTICE}
    refused = client.post(f"/sites/{w.home_b}/practice", headers=other)
    assert refused.status_code == 409, refused.text
    assert db.execute("SELECT practice FROM residents WHERE resident_id = %s",
                      (f"practice-{w.home_b}",)).fetchone()[0] is False


def test_practice_kit_devices_are_counted_apart_on_the_managers_gateway_view(client: TestClient, world: World,
                                                                            db: psycopg.Connection) -> None:
    """The practice kit's devices sit behind the home's real gateway. The manager's Devices and gateways view
    (``GET /gateways``, ``GET /devices``, dashboard page ``estate``) counts them apart, labelled practice, never among
    the home's devices; and when the practice kit lies unused between trainings (silent, its battery low), the
    device alerts about it reach no real list, figure or notification (H-KIT-07)."""
    from carewatch.scoring.batches import EvaluationSummary
    from carewatch.scoring.devices import apply_device_findings, load_devices
    from carewatch.scoring.incident_store import sync_incidents

    w = world
    manager = w.headers(client, "manager")

    def gateway_a(url: str) -> dict[str, Any]:
        answer = client.get(url, headers=manager, params={"site": w.home_a})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return next(g for g in body["items"] if g["gateway_id"] == w.gateway_a) if "items" in body else body

    real = db.execute("SELECT count(*) FROM devices WHERE gateway_id = %s AND active", (w.gateway_a,)).fetchone()[0]
    before = gateway_a("/gateways")
    assert (before["devices"], before["practice_devices"]) == (real, 0) and real > 0
    devices_before = client.get("/devices", headers=manager, params={"site": w.home_a, "limit": 500}).json()["items"]
    adoption_before = client.get("/reports/adoption", headers=manager, params={"site": w.home_a}).json()

    p = _practice_round(client, db, w)  # two practice kit devices behind gateway A, a trainee's round
    for url in ("/gateways", f"/gateways/{w.gateway_a}"):
        after = gateway_a(url)
        assert (after["devices"], after["practice_devices"]) == (real, 2), url  # counted apart, labelled practice
    devices_after = client.get("/devices", headers=manager, params={"site": w.home_a, "limit": 500}).json()["items"]
    assert [d["device_id"] for d in devices_after] == [d["device_id"] for d in devices_before]

    # the practice kit unused for days, one device's battery nearly flat. The scorer raises no device alert about a
    # practice kit's devices (H-KIT-08, tests/scoring/test_devices.py); the API's and notify's own filters are the
    # defence in depth, so alerts about them are made here as if raised before the scorer knew (the devices' state
    # with its practice flag taken off): they must stay out of every real view
    db.execute("UPDATE devices SET battery_pct = 5 WHERE device_id = %s", (p["devices"][0],))
    db.commit()
    later = datetime.now(UTC) + timedelta(days=3)
    kit_devices = [d for d in load_devices(db, later, site_ids=[w.home_a]) if d.device_id in p["devices"]]
    assert kit_devices and all(d.practice for d in kit_devices)
    apply_device_findings(db, [replace(d, practice=False) for d in kit_devices], later, EvaluationSummary())
    db.commit()
    raised = [r[0] for r in db.execute(
        "SELECT alert_id FROM alerts WHERE subject_kind = 'device' AND subject_id = ANY(%s) AND status <> 'resolved'",
        (p["devices"],)).fetchall()]
    assert raised, "the test needs device alerts about the practice kit"
    with db.transaction():
        sync_incidents(db, [("device", d) for d in p["devices"]], later)
    incidents = [r[0] for r in db.execute("SELECT incident_id FROM alerts WHERE alert_id = ANY(%s) AND incident_id "
                                          "IS NOT NULL", (raised,)).fetchall()]
    for role in ("manager", "care_staff", "admin"):
        headers = w.headers(client, role)
        for path in ("/alerts", "/incidents", f"/sites/{w.home_a}/overview", f"/sites/{w.home_a}/banner", "/devices",
                     "/gateways"):
            answer = client.get(path, headers=headers, params={"limit": 500})
            if answer.status_code == 403:
                continue
            assert answer.status_code == 200, f"{role} {path}: {answer.text[:200]}"
            leaked = [d for d in p["devices"] if d in answer.text]
            assert not leaked, f"{role} GET {path} shows the practice kit's devices {leaked}"
        for alert in raised:
            assert client.get(f"/alerts/{alert}", headers=headers).status_code == 404
    assert client.get("/reports/adoption", headers=manager, params={"site": w.home_a}).json() == adoption_before
    # nobody is told about the practice kit's battery (the escalation passes' own candidate queries)
    for target, own in ((ALERTS, raised), (INCIDENTS, incidents)):
        with db.transaction():
            picked = {r[0] for r in db.execute(target.candidates_sql, {"sites": [w.home_a], "now": later}).fetchall()}
        assert not picked & set(own), f"the {target.kind} escalation pass picked a practice kit device's {target.kind}"
