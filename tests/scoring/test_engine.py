"""The alert engine against real PostgreSQL: readings in, observation sets, state, alerts and events out."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from carewatch.scoring import incident_store, lifecycle
from carewatch.scoring.engine import evaluate_subjects, group_loose_alerts, tick
from carewatch.scoring.loading import ROUND_LOOKBACK
from carewatch.scoring.rules import LOCAL_TZ
from carewatch.scoring.schedule import care_plan_gap
from carewatch.subjects import Subject

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
_seq = itertools.count(1)


# ------------------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------------------
def add_site(db: psycopg.Connection, site: str, kind: str = "care_home", **kw: Any) -> str:
    db.execute("INSERT INTO sites (site_id, kind, name, care_package) VALUES (%s, %s, %s, %s)",
               (site, kind, f"Site {site}", kw.get("care_package")))
    db.execute("INSERT INTO gateways (gateway_id, site_id, state, last_seen) VALUES (%s, %s, 'online', %s)",
               (f"gw-{site}", site, kw.get("gw_seen", NOW)))
    return site


def add_resident(db: psycopg.Connection, site: str, rid: str, **kw: Any) -> str:
    scale2 = kw.get("scale2", False)
    db.execute(
        """INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, obs_per_day, monitoring,
               baseline_confused, scale2, scale2_set_by, scale2_set_at, scale2_reason, created_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (rid, site, kw.get("name", f"Resident {rid}"), date(1938, 4, 2), kw.get("obs_per_day", 2),
         kw.get("monitoring", "active"), kw.get("baseline_confused", False), scale2,
         "dr.x" if scale2 else None, NOW if scale2 else None, "COPD, target 88-92%" if scale2 else None,
         kw.get("created_at", NOW - timedelta(days=30))),
    )
    return rid


def add_device(db: psycopg.Connection, site: str, device: str, kind: str, *, resident: str | None = None,
               role: str | None = None, room: str | None = None, last_seen: datetime | None = NOW,
               battery: float | None = None, bound_at: datetime | None = None) -> str:
    db.execute(
        """INSERT INTO devices (device_id, site_id, gateway_id, kind, resident_id, role, room, last_seen,
               battery_pct, bound_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (device, site, f"gw-{site}", kind, resident, role, room, last_seen, battery,
         bound_at or NOW - timedelta(days=30)),
    )
    return device


def add_reading(db: psycopg.Connection, site: str, subject: str, device: str, metric: str, value: float,
                at: datetime, flags: tuple[str, ...] = ()) -> None:
    db.execute(
        """INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value,
               received_at, flags, subject_kind)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                   CASE WHEN %s THEN carewatch_site_subject_kind(%s) ELSE 'resident' END)""",
        (at, f"gw-{site}", next(_seq), site, subject, device, metric, value, at, list(flags), subject == site, site),
    )


def add_manual_set(db: psycopg.Connection, site: str, rid: str, at: datetime, *, score: int = 0,
                   risk: str = "low", complete: bool = True, soft_signs: tuple[str, ...] = (),
                   consciousness: str | None = "A", **values: float | None) -> int:
    return db.execute(
        """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, respiration_rate,
               spo2, systolic_bp, pulse, consciousness, temperature, soft_signs, score, risk, subscores, complete)
           VALUES (%s, %s, %s, 'carer1', 'manual', %s, %s, %s, %s, %s, %s, %s, %s, %s, '{}', %s)
           RETURNING obs_id""",
        (rid, site, at, values.get("respiration_rate"), values.get("spo2"), values.get("systolic_bp"),
         values.get("pulse"), consciousness, values.get("temperature"), list(soft_signs), score, risk, complete),
    ).fetchone()[0]


def alerts(db: psycopg.Connection, subject: str, kind: str | None = None) -> list[dict[str, Any]]:
    cur = db.execute(
        "SELECT * FROM alerts WHERE subject_id = %s AND (%s::text IS NULL OR kind = %s) ORDER BY alert_id",
        (subject, kind, kind))
    names = [c.name for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def events(db: psycopg.Connection, alert_id: int) -> list[str]:
    return [r[0] for r in db.execute("SELECT action FROM alert_events WHERE alert_id = %s ORDER BY event_id",
                                     (alert_id,))]


def high_news2_alert(db: psycopg.Connection, site: str, rid: str, at: datetime) -> dict[str, Any]:
    """A complete manual set scoring NEWS2 8 at `at`, evaluated then: the resident's one (high) news2 alert."""
    add_manual_set(db, site, rid, at, score=8, risk="high", respiration_rate=26,
                   spo2=90, systolic_bp=120, pulse=120, temperature=37, consciousness="A")
    evaluate_subjects(db, [rid], at)
    [alert] = alerts(db, rid, "news2")
    assert alert["severity"] == "high"
    return alert


def oximeter_round(db: psycopg.Connection, site: str, rid: str, at: datetime, spo2: float = 97,
                   pulse: float = 80, flags: tuple[str, ...] = ()) -> None:
    add_reading(db, site, rid, f"ox-{rid}", "spo2", spo2, at, flags)
    add_reading(db, site, rid, f"ox-{rid}", "pulse_rate", pulse, at)


@pytest.fixture
def home(db: psycopg.Connection, uid: str) -> str:
    return add_site(db, f"home-{uid}")


@pytest.fixture
def resident(db: psycopg.Connection, home: str, uid: str) -> str:
    rid = add_resident(db, home, f"res-{uid}")
    add_device(db, home, f"ox-{rid}", "pulse_oximeter", resident=rid)
    return rid


# ------------------------------------------------------------------------------------------------------------
# Rounds, NEWS2 and de-duplication
# ------------------------------------------------------------------------------------------------------------
def test_device_round_builds_one_set_and_one_news2_alert_updated_not_repeated(db, home, resident) -> None:
    t = NOW - timedelta(minutes=20)
    oximeter_round(db, home, resident, t, spo2=91, pulse=80)  # SpO2 91 on Scale 1 scores 3: low-medium
    summary = evaluate_subjects(db, [resident], NOW)
    assert summary.residents == 1 and summary.observation_sets_written == 1
    sets = db.execute("SELECT source, round_key, spo2, complete, missing, score, risk FROM observation_sets "
                      "WHERE resident_id = %s", (resident,)).fetchall()
    assert len(sets) == 1
    source, round_key, spo2, complete, missing, score, risk = sets[0]
    assert (source, spo2, complete, score, risk) == ("device", 91, False, 3, "low-medium")
    assert round_key.startswith("dev:") and {"respiration_rate", "consciousness", "temperature"} <= set(missing)
    [alert] = alerts(db, resident, "news2")
    assert alert["severity"] == "medium" and alert["status"] == "open"
    assert "NEWS2 3" in alert["reason"] and "INCOMPLETE" in alert["reason"]
    assert "breathing rate" in alert["reason"]
    assert alert["data"]["sbard"]["background"] and alert["action"]
    assert events(db, alert["alert_id"]) == ["opened"]

    # the same evaluation again changes nothing
    again = evaluate_subjects(db, [resident], NOW)
    assert again.observation_sets_written == 0 and not again.opened and not again.updated

    # the thermometer joins the round: same set, same alert, updated (38.5 scores 1 -> total 4)
    add_reading(db, home, resident, f"ox-{resident}", "temperature", 39.2, t + timedelta(minutes=5))
    later = evaluate_subjects(db, [resident], NOW + timedelta(minutes=1))
    assert later.observation_sets_written == 1
    assert db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s",
                      (resident,)).fetchone()[0] == 1
    [alert] = alerts(db, resident, "news2")
    assert alert["score"] == 5 and "NEWS2 5" in alert["reason"]
    assert events(db, alert["alert_id"]) == ["opened", "updated"]


def test_a_day_old_set_keeps_its_values_when_its_first_readings_leave_the_look_back(db, home, resident) -> None:
    """H-OBS-13: the round's oximeter readings leave the 26 h look-back before its thermometer reading does; the
    set must not be rewritten without them (it was: SpO2 and pulse gone, scored again as incomplete). A late
    reading of a later round is still planned."""
    t = NOW - timedelta(hours=30)
    oximeter_round(db, home, resident, t, spo2=93, pulse=80)
    add_reading(db, home, resident, f"ox-{resident}", "temperature", 37.1, t + timedelta(minutes=10))
    oximeter_round(db, home, resident, t + timedelta(hours=3), spo2=96, pulse=70)
    evaluate_subjects(db, [resident], t + timedelta(hours=3, minutes=5))

    def sets() -> list[tuple[Any, ...]]:
        return db.execute("SELECT taken_at, spo2, pulse, temperature, score, missing FROM observation_sets "
                          "WHERE resident_id = %s ORDER BY taken_at", (resident,)).fetchall()

    before = sets()
    assert [(s[1], s[2], s[3]) for s in before] == [(93, 80, 37.1), (96, 70, None)]
    # 26 h 5 min after the first round: its oximeter readings are out of the look-back, the thermometer's is in
    add_reading(db, home, resident, f"ox-{resident}", "temperature", 36.8, t + timedelta(hours=3, minutes=2))
    later = t + ROUND_LOOKBACK + timedelta(minutes=5)
    summary = evaluate_subjects(db, [resident], later)
    after = sets()
    assert after[0] == before[0]  # the first set as it was
    assert (after[1][1], after[1][2], after[1][3]) == (96, 70, 36.8) and summary.observation_sets_written == 1
    assert evaluate_subjects(db, [resident], later + timedelta(minutes=2)).observation_sets_written == 0


def test_untrusted_reading_is_not_scored_and_is_named_in_the_evidence(db, home, resident) -> None:
    oximeter_round(db, home, resident, NOW - timedelta(minutes=5), spo2=84, flags=("questionable",))
    evaluate_subjects(db, [resident], NOW)
    spo2, inputs, missing = db.execute(
        "SELECT spo2, inputs, missing FROM observation_sets WHERE resident_id = %s", (resident,)).fetchone()
    assert spo2 is None and "spo2" in missing
    assert any("questionable" in note for note in inputs["set_aside"])
    assert alerts(db, resident, "news2") == []  # pulse 80 alone scores 0: nothing to raise, nothing reassuring


def test_staff_set_completes_the_round_and_low_complete_score_resolves(db, home, resident) -> None:
    t = NOW - timedelta(minutes=30)
    oximeter_round(db, home, resident, t, spo2=91)
    evaluate_subjects(db, [resident], t + timedelta(minutes=1))
    [alert] = alerts(db, resident, "news2")
    # an hour later: a complete, normal set typed by staff with device readings
    t2 = NOW
    add_manual_set(db, home, resident, t2, respiration_rate=16, systolic_bp=128, temperature=36.9, consciousness="A")
    oximeter_round(db, home, resident, t2 + timedelta(minutes=2), spo2=96, pulse=72)
    evaluate_subjects(db, [resident], t2 + timedelta(minutes=5))
    row = db.execute("SELECT source, complete, score FROM observation_sets WHERE resident_id = %s "
                     "ORDER BY taken_at DESC LIMIT 1", (resident,)).fetchone()
    assert row == ("mixed", True, 0)
    [resolved] = alerts(db, resident, "news2")
    assert resolved["alert_id"] == alert["alert_id"] and resolved["status"] == "resolved"
    assert resolved["resolved_by"] == "scorer" and events(db, alert["alert_id"])[-1] == "auto_resolved"
    state = db.execute("SELECT news2_score, news2_complete, next_obs_due FROM resident_state WHERE resident_id = %s",
                       (resident,)).fetchone()
    assert state[0] == 0 and state[1] is True
    taken = t2 + timedelta(minutes=2)  # the set's time is its newest reading's
    assert state[2] == taken + care_plan_gap(2, taken)  # a complete 0 follows the care plan's next round


def test_an_unchanged_resident_state_is_not_rewritten(db, home, resident) -> None:
    """A pass with nothing new leaves the state row as it is (no new row version, ``updated_at`` kept: when the
    state last changed); new observations rewrite it."""
    def state() -> tuple[Any, ...]:
        return db.execute("SELECT xmin::text, updated_at, news2_score, next_obs_due FROM resident_state "
                          "WHERE resident_id = %s", (resident,)).fetchone()

    t = NOW - timedelta(minutes=30)
    oximeter_round(db, home, resident, t, spo2=91)
    evaluate_subjects(db, [resident], t + timedelta(minutes=1))
    db.commit()
    first = state()
    evaluate_subjects(db, [resident], t + timedelta(minutes=3))
    db.commit()
    assert state() == first
    oximeter_round(db, home, resident, NOW, spo2=96, pulse=72)
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=1))
    db.commit()
    after = state()
    assert after[0] != first[0] and after[1] == NOW + timedelta(minutes=1) and after[3] != first[3]


def test_partial_low_set_does_not_resolve_or_downgrade(db, home, resident) -> None:
    high_news2_alert(db, home, resident, NOW - timedelta(hours=2))
    oximeter_round(db, home, resident, NOW - timedelta(minutes=1), spo2=97, pulse=75)  # partial, scores 0
    evaluate_subjects(db, [resident], NOW)
    [still] = alerts(db, resident, "news2")
    assert still["status"] != "resolved" and still["severity"] == "high"


def test_soft_signs_raise_with_low_news2(db, home, resident) -> None:
    add_manual_set(db, home, resident, NOW - timedelta(minutes=10), soft_signs=("not_eating_drinking",),
                   respiration_rate=16, spo2=97, systolic_bp=125, pulse=70, temperature=36.8)
    evaluate_subjects(db, [resident], NOW)
    assert alerts(db, resident, "news2") == []
    [alert] = alerts(db, resident, "soft_signs")
    assert alert["severity"] == "medium" and "not eating or drinking" in alert["reason"]


def test_spo2_below_personal_baseline(db, home, resident) -> None:
    for day in range(2, 12):
        add_manual_set(db, home, resident, NOW - timedelta(days=day), spo2=95, respiration_rate=16,
                       systolic_bp=125, pulse=70, temperature=36.8)
    oximeter_round(db, home, resident, NOW - timedelta(hours=5), spo2=93)
    evaluate_subjects(db, [resident], NOW - timedelta(hours=5))
    assert alerts(db, resident, "spo2_below_baseline") == []  # 2 below: not enough
    oximeter_round(db, home, resident, NOW - timedelta(hours=3), spo2=92)
    evaluate_subjects(db, [resident], NOW - timedelta(hours=3))
    assert alerts(db, resident, "spo2_below_baseline") == []  # 92 is 3 below, but only one reading
    oximeter_round(db, home, resident, NOW - timedelta(hours=1), spo2=92)
    evaluate_subjects(db, [resident], NOW)
    [alert] = alerts(db, resident, "spo2_below_baseline")
    assert "usual 95%" in alert["reason"] and alert["data"]["baseline_count"] == 10


def test_monitoring_paused_gets_no_alerts_and_closes_open_ones(db, home, resident) -> None:
    oximeter_round(db, home, resident, NOW - timedelta(minutes=5), spo2=88)
    evaluate_subjects(db, [resident], NOW)
    assert alerts(db, resident, "news2")[0]["status"] == "open"
    db.execute("UPDATE residents SET monitoring = 'paused' WHERE resident_id = %s", (resident,))
    oximeter_round(db, home, resident, NOW + timedelta(minutes=40), spo2=85)
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=41))
    assert {a["status"] for a in alerts(db, resident)} == {"resolved"}


# ------------------------------------------------------------------------------------------------------------
# Suppression, escalation, overdue
# ------------------------------------------------------------------------------------------------------------
def test_snooze_suppresses_new_alerts_but_never_a_high_one(db, home, resident) -> None:
    """A snooze holds back a refresh at the same NEWS2 band (H-ALERT-07); a band rise and a high one show."""
    oximeter_round(db, home, resident, NOW - timedelta(minutes=30), spo2=91)  # red 3: low-medium
    evaluate_subjects(db, [resident], NOW - timedelta(minutes=29))
    [alert] = alerts(db, resident, "news2")
    lifecycle.snooze(db, Subject("resident", resident), home, "news2", "nurse1", "GP aware, reviewing tomorrow",
                     NOW + timedelta(hours=4), at=NOW)
    oximeter_round(db, home, resident, NOW + timedelta(minutes=1), spo2=91, pulse=85)  # same band, new values
    summary = evaluate_subjects(db, [resident], NOW + timedelta(minutes=2))
    assert summary.suppressed >= 1
    assert alerts(db, resident, "news2")[0]["reason"] == alert["reason"]  # the refresh was held back
    add_manual_set(db, home, resident, NOW + timedelta(minutes=3), score=9, risk="high", respiration_rate=26,
                   spo2=88, systolic_bp=95, pulse=125, temperature=39.5, consciousness="V")
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=4))
    [alert] = alerts(db, resident, "news2")
    assert alert["severity"] == "high"


def test_unacknowledged_incident_climbs_the_escalation_policy(db, home, resident) -> None:
    """H-ALERT-05, H-ESC-02/05/06 with incidents: the tick takes the escalation policy's steps for the INCIDENT (here
    the default policy, tablets only at level 1): level 1 at once, level 2 after the medium window, with the status
    of automatic escalation (never 'escalated', a person's); its components are not notified on their own; after
    acknowledgement a NEWS2 incident needs an outcome within 60 minutes or escalates again."""
    oximeter_round(db, home, resident, NOW - timedelta(minutes=1), spo2=91)
    evaluate_subjects(db, [resident], NOW)
    [alert] = alerts(db, resident, "news2")
    [incident] = open_incidents(db, resident)
    iid = incident["incident_id"]
    assert incident["severity"] == "medium" and incident["notify_level"] == 0 and alert["ack_due_at"] is None
    tick(db, NOW, slow=False)
    told = open_incidents(db, resident)[0]
    assert (told["status"], told["notify_level"], told["notify_due_at"]) == ("open", 1, NOW + timedelta(minutes=60))
    assert incident_events(db, iid)[-1] == "notified"
    tick(db, NOW + timedelta(minutes=59), slow=False)
    assert open_incidents(db, resident)[0]["notify_level"] == 1
    summary = tick(db, NOW + timedelta(minutes=60), slow=False)
    escalated = open_incidents(db, resident)[0]
    assert iid in summary.incidents_escalated
    assert (escalated["status"], escalated["notify_level"], escalated["escalation_level"]) == ("auto_escalated", 2, 0)
    assert incident_events(db, iid)[-2:] == ["auto_escalated", "notify_failed"]  # nobody at level 2
    component = alerts(db, resident, "news2")[0]
    assert (component["notify_level"], component["status"]) == (0, "open")  # one problem, one ladder
    assert "notified" not in events(db, alert["alert_id"])
    incident_store.acknowledge(db, iid, "carer1", at=NOW + timedelta(minutes=61))
    assert open_incidents(db, resident)[0]["status"] == "acknowledged"
    tick(db, NOW + timedelta(minutes=61), slow=False)  # the outcome is due in 60 minutes
    assert open_incidents(db, resident)[0]["notify_due_at"] == NOW + timedelta(minutes=121)
    tick(db, NOW + timedelta(minutes=61 + 59), slow=False)
    assert open_incidents(db, resident)[0]["notify_level"] == 2
    tick(db, NOW + timedelta(minutes=61 + 60), slow=False)
    again = open_incidents(db, resident)[0]
    assert (again["status"], again["notify_level"], again["notify_reason"]) == ("auto_escalated", 3, "no_outcome")
    incident_store.record_outcome(db, iid, "senior1", "monitoring_plan", at=NOW + timedelta(minutes=125))
    tick(db, NOW + timedelta(hours=9), slow=False)
    done = open_incidents(db, resident)[0]
    assert (done["status"], done["notify_level"], done["outcome"]) == ("acknowledged", 3, "monitoring_plan")
    assert alerts(db, resident, "news2")[0]["outcome"] == "monitoring_plan"  # its components' follow-up ends too


def test_high_alert_is_not_closed_by_a_low_set_without_a_person(db, home, resident) -> None:
    alert = high_news2_alert(db, home, resident, NOW - timedelta(hours=1))
    add_manual_set(db, home, resident, NOW - timedelta(minutes=30), score=5, risk="medium", respiration_rate=22,
                   spo2=95, systolic_bp=125, pulse=95, temperature=38.5, consciousness="A")
    evaluate_subjects(db, [resident], NOW - timedelta(minutes=29))
    assert alerts(db, resident, "news2")[0]["severity"] == "medium"  # better, but it was high
    add_manual_set(db, home, resident, NOW, respiration_rate=16, spo2=97, systolic_bp=125, pulse=70, temperature=36.8,
                   consciousness="A")  # complete and low: would close an alert that was never high
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=1))
    [still] = alerts(db, resident, "news2")
    assert still["status"] != "resolved" and still["data"]["was_high"] is True
    assert still["data"]["recovery"]["text"] == still["data"]["recovery"]["text"].strip() != ""
    assert events(db, alert["alert_id"])[-1] == "recovered"
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=2))  # noted once, not at every evaluation
    assert events(db, alert["alert_id"]).count("recovered") == 1
    lifecycle.resolve(db, alert["alert_id"], "nurse1", "seen: recovered, back to usual observations")
    closed = alerts(db, resident, "news2")[0]
    assert (closed["status"], closed["resolved_by"]) == ("resolved", "nurse1")


def test_a_rise_is_told_at_once_to_the_level_last_told(db, home, resident) -> None:
    """H-INC-02 with the ladder on incidents: a band rise needs a fresh acknowledgement and outcome, and the level
    last told hears of it at once (one more notification for the incident, none for its components)."""
    oximeter_round(db, home, resident, NOW - timedelta(minutes=1), spo2=91)
    evaluate_subjects(db, [resident], NOW)
    tick(db, NOW, slow=False)
    [incident] = open_incidents(db, resident)
    iid = incident["incident_id"]
    incident_store.acknowledge(db, iid, "carer1", at=NOW + timedelta(minutes=1))
    incident_store.record_outcome(db, iid, "carer1", "monitoring_plan", at=NOW + timedelta(minutes=2))
    add_manual_set(db, home, resident, NOW + timedelta(minutes=40), score=9, risk="high", respiration_rate=26,
                   spo2=88, systolic_bp=95, pulse=125, temperature=39.5, consciousness="V")
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=41))
    worse = open_incidents(db, resident)[0]
    assert (worse["severity"], worse["status"], worse["notify_reason"], worse["outcome"]) == (
        "high", "open", "risen", None)  # a fresh acknowledgement and a fresh outcome are needed
    tick(db, NOW + timedelta(minutes=41), slow=False)
    told = open_incidents(db, resident)[0]
    assert (told["notify_level"], told["notify_reason"], told["notify_due_at"]) == (
        1, "unacknowledged", NOW + timedelta(minutes=41 + 15))
    assert incident_events(db, iid).count("notified") == 2
    assert "notified" not in events(db, alerts(db, resident, "news2")[0]["alert_id"])


def test_severity_rise_needs_acknowledging_again(db, home, resident) -> None:
    oximeter_round(db, home, resident, NOW - timedelta(minutes=1), spo2=91)
    evaluate_subjects(db, [resident], NOW)
    [alert] = alerts(db, resident, "news2")
    lifecycle.acknowledge(db, alert["alert_id"], "carer1", at=NOW + timedelta(minutes=1))
    add_manual_set(db, home, resident, NOW + timedelta(minutes=40), score=9, risk="high", respiration_rate=26,
                   spo2=88, systolic_bp=95, pulse=125, temperature=39.5, consciousness="V")
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=41))
    [worse] = alerts(db, resident, "news2")
    assert worse["severity"] == "high" and worse["status"] == "open" and worse["acknowledged_at"] is None
    [incident] = open_incidents(db, resident)  # the deadline is the incident's: high, 15 minutes
    assert incident["band"] == "high" and incident["ack_due_at"] == NOW + timedelta(minutes=41 + 15)


def test_overdue_observations_raise_and_clear(db, home, resident) -> None:
    """Overdue after a low set is a task (no alert, H-TASK-01); after a red 3 it is part of an incident."""
    taken = NOW - timedelta(hours=13)
    add_manual_set(db, home, resident, taken, respiration_rate=16, spo2=97, systolic_bp=125, pulse=70,
                   temperature=36.8)
    evaluate_subjects(db, [resident], taken)
    due = db.execute("SELECT next_obs_due FROM resident_state WHERE resident_id = %s", (resident,)).fetchone()[0]
    assert due == taken + care_plan_gap(2, taken) and due <= NOW - timedelta(hours=1)  # 2 a day: at most 12 h
    tick(db, NOW, slow=False)
    assert alerts(db, resident, "obs_overdue") == []
    red = NOW - timedelta(hours=3)
    add_manual_set(db, home, resident, red, respiration_rate=26, spo2=97, systolic_bp=125, pulse=70,
                   temperature=36.8)  # RR 26 scores 3: low-medium, hourly
    evaluate_subjects(db, [resident], red)
    tick(db, NOW, slow=False)
    [alert] = alerts(db, resident, "obs_overdue")
    assert alert["severity"] == "medium" and alert["status"] == "open"
    add_manual_set(db, home, resident, NOW + timedelta(minutes=5), respiration_rate=16, spo2=97, systolic_bp=125,
                   pulse=70, temperature=36.8)
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=6))
    assert alerts(db, resident, "obs_overdue")[0]["status"] == "resolved"


def test_a_tick_does_not_rewrite_the_overdue_alert_of_an_incomplete_set(db, home, resident) -> None:
    """The alert text names what the last set was missing; the tick must say the same as the evaluation, or each
    one rewrites the alert back (one alert_events row a tick for every overdue resident: noise in the audit trail
    and write load on the scorer)."""
    at = NOW - timedelta(hours=3)
    oximeter_round(db, home, resident, at, spo2=90)  # SpO2 and pulse only; SpO2 90 scores 3 (hourly)
    evaluate_subjects(db, [resident], NOW)
    [alert] = alerts(db, resident, "obs_overdue")
    assert "Missing from it: respiration_rate, systolic_bp, consciousness, temperature." in alert["reason"]
    before = events(db, alert["alert_id"])
    for minutes in (1, 2, 3):
        tick(db, NOW + timedelta(minutes=minutes), slow=False)
        evaluate_subjects(db, [resident], NOW + timedelta(minutes=minutes, seconds=30))
    assert events(db, alert["alert_id"]) == before
    assert alerts(db, resident, "obs_overdue")[0]["reason"] == alert["reason"]


# ------------------------------------------------------------------------------------------------------------
# Households, devices, gateways
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def flat(db: psycopg.Connection, uid: str) -> str:
    site = add_site(db, f"hh-{uid}", "household", care_package="waking-night care")
    add_resident(db, site, f"p-{uid}")
    for device, kind, role in (("bath", "motion_sensor", "bathroom"), ("hall", "motion_sensor", "hallway"),
                               ("fridge", "door_sensor", "fridge_door"), ("clim", "climate_sensor", None)):
        add_device(db, site, f"{device}-{uid}", kind, role=role, room="lounge" if device == "clim" else None)
    return site


def test_long_bathroom_stay_raises_on_tick_and_clears_on_movement(db, flat, uid) -> None:
    t = NOW - timedelta(hours=1)
    add_reading(db, flat, flat, f"hall-{uid}", "motion", 1, t)
    add_reading(db, flat, flat, f"bath-{uid}", "motion", 1, t + timedelta(minutes=2))
    summary = evaluate_subjects(db, [flat], t + timedelta(minutes=3))
    assert summary.households == 1 and summary.behaviour_events_written >= 1
    kinds = {r[0] for r in db.execute("SELECT kind FROM behaviour_events WHERE site_id = %s", (flat,))}
    assert "bathroom_visit" in kinds
    tick(db, t + timedelta(minutes=46), slow=True)  # 44 minutes since the bathroom motion
    assert alerts(db, flat, "long_bathroom_stay") == []
    tick(db, t + timedelta(minutes=47), slow=True)
    [alert] = alerts(db, flat, "long_bathroom_stay")
    [incident] = open_incidents(db, flat)
    assert alert["severity"] == "high" and incident["ack_due_at"] == t + timedelta(minutes=47 + 15)
    assert incident["category"] == "household" and alert["incident_id"] == incident["incident_id"]
    add_reading(db, flat, flat, f"hall-{uid}", "motion", 1, t + timedelta(minutes=50))
    evaluate_subjects(db, [flat], t + timedelta(minutes=51))
    moved = alerts(db, flat, "long_bathroom_stay")[0]  # a high alert: the movement is noted, a person closes it
    assert moved["status"] != "resolved" and "recovery" in moved["data"]
    assert events(db, alert["alert_id"])[-1] == "recovered"


def test_cold_room_sustained_then_back_in_range(db, flat, uid) -> None:
    for i, temp in enumerate((17.5, 17.2, 17.0, 16.8)):
        add_reading(db, flat, flat, f"clim-{uid}", "room_temperature", temp, NOW - timedelta(minutes=45 - 15 * i))
    evaluate_subjects(db, [flat], NOW)
    [alert] = alerts(db, flat, "room_cold")
    assert alert["severity"] == "low" and "lounge" in alert["reason"]
    for i in range(4):
        add_reading(db, flat, flat, f"clim-{uid}", "room_temperature", 19.5, NOW + timedelta(minutes=15 * (i + 1)))
    evaluate_subjects(db, [flat], NOW + timedelta(minutes=61))
    assert alerts(db, flat, "room_cold")[0]["status"] == "resolved"


def test_device_silent_battery_low_and_heard_again(db, home, uid) -> None:
    add_device(db, home, f"plug-{uid}", "plug", last_seen=NOW - timedelta(hours=2), battery=15)
    tick(db, NOW, slow=True)
    assert alerts(db, f"plug-{uid}", "device_silent")[0]["status"] == "open"
    assert alerts(db, f"plug-{uid}", "battery_low")[0]["severity"] == "low"
    db.execute("UPDATE devices SET last_seen = %s, battery_pct = 100 WHERE device_id = %s", (NOW, f"plug-{uid}"))
    tick(db, NOW + timedelta(minutes=1), slow=True)
    assert {a["status"] for a in alerts(db, f"plug-{uid}")} == {"resolved"}


def test_gateway_offline(db, home) -> None:
    db.execute("UPDATE gateways SET last_seen = %s WHERE site_id = %s", (NOW - timedelta(minutes=11), home))
    tick(db, NOW, slow=True)
    [alert] = alerts(db, f"gw-{home}", "gateway_offline")
    assert alert["severity"] == "medium"
    db.execute("UPDATE gateways SET last_seen = %s WHERE site_id = %s", (NOW, home))
    tick(db, NOW + timedelta(seconds=5), slow=True)
    assert alerts(db, f"gw-{home}", "gateway_offline")[0]["status"] == "resolved"


# ------------------------------------------------------------------------------------------------------------
# Concurrency and latency
# ------------------------------------------------------------------------------------------------------------
def test_two_callers_do_not_race(db, database, home, resident) -> None:
    oximeter_round(db, home, resident, datetime.now(UTC) - timedelta(seconds=5), spo2=88)
    db.commit()
    errors: list[BaseException] = []
    summaries = []

    def run() -> None:
        try:
            with psycopg.connect(database, autocommit=True) as conn:
                summaries.append(evaluate_subjects(conn, [resident], datetime.now(UTC)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert errors == []
    assert len(alerts(db, resident, "news2")) == 1
    assert db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s", (resident,)).fetchone()[0] == 1
    opened = [s for s in summaries if s.opened]
    assert len(opened) >= 1 and any(s.latency_s for s in opened)
    assert all(0 <= v < 60 for s in opened for v in s.latency_s.values())


def test_unknown_subjects_are_reported(db) -> None:
    summary = evaluate_subjects(db, ["nobody-here"], NOW)
    assert summary.unknown_subjects == ["nobody-here"] and summary.residents == 0


def test_staff_entry_after_the_device_round_joins_it(db, home, resident) -> None:
    """Devices first, then staff type RR and ACVPU for the same round: one observation set, not two."""
    t = NOW - timedelta(minutes=20)
    oximeter_round(db, home, resident, t, spo2=95, pulse=80)
    evaluate_subjects(db, [resident], t + timedelta(minutes=1))
    add_manual_set(db, home, resident, t + timedelta(minutes=4), respiration_rate=18, consciousness="A")
    evaluate_subjects(db, [resident], t + timedelta(minutes=5))
    rows = db.execute("SELECT source, respiration_rate, spo2, pulse FROM observation_sets WHERE resident_id = %s",
                      (resident,)).fetchall()
    assert rows == [("mixed", 18.0, 95.0, 80.0)]


# ------------------------------------------------------------------------------------------------------------
# Added with the evaluation (docs/evaluation.md)
# ------------------------------------------------------------------------------------------------------------
def add_scored_set(db: psycopg.Connection, site: str, rid: str, at: datetime, **values: Any) -> None:
    """A complete staff set scored as the API scores it (subscores stored, so it can build a usual score)."""
    from psycopg.types.json import Jsonb

    from carewatch.scoring.news2 import score_observation

    result = score_observation(values)
    db.execute(
        """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source, respiration_rate,
               spo2, systolic_bp, pulse, consciousness, temperature, score, risk, subscores, complete, missing)
           VALUES (%s, %s, %s, 'carer1', 'manual', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (rid, site, at, values.get("respiration_rate"), values.get("spo2"), values.get("systolic_bp"),
         values.get("pulse"), values.get("consciousness"), values.get("temperature"), result.score,
         result.risk.value, Jsonb(dict(result.subscores)), result.complete, list(result.missing)))


USUAL = {"respiration_rate": 16, "spo2": 95, "systolic_bp": 125, "pulse": 70, "temperature": 36.0,
         "consciousness": "A"}  # SpO2 95 and 36.0 °C score 1 each: this resident's usual NEWS2 is 2


def test_known_stable_score_follows_the_care_plan_and_a_new_sign_does_not(db, home, resident) -> None:
    for day in range(2, 12):
        add_scored_set(db, home, resident, NOW - timedelta(days=day), **USUAL)
    taken = NOW - timedelta(minutes=5)
    add_scored_set(db, home, resident, taken, **USUAL)
    evaluate_subjects(db, [resident], NOW)
    due = db.execute("SELECT next_obs_due FROM resident_state WHERE resident_id = %s", (resident,)).fetchone()[0]
    assert due == taken + care_plan_gap(2, taken)  # their usual 2 follows the care plan (2 rounds a day)
    # same total 2, but from a new sign (RR 21 scores 2; SpO2 and temperature now score 0): RCP 4-hourly
    taken = NOW + timedelta(minutes=10)
    add_scored_set(db, home, resident, taken, **{**USUAL, "respiration_rate": 21, "spo2": 97, "temperature": 36.8})
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=11))
    due = db.execute("SELECT next_obs_due FROM resident_state WHERE resident_id = %s", (resident,)).fetchone()[0]
    assert due == taken + min(timedelta(hours=4), care_plan_gap(2, taken))  # RCP: 4-hourly (sooner if a round is)


def test_partial_newest_set_does_not_clear_news2_rising(db, home, resident) -> None:
    add_scored_set(db, home, resident, NOW - timedelta(hours=6), **{**USUAL, "spo2": 97, "temperature": 36.8})
    add_scored_set(db, home, resident, NOW - timedelta(hours=1),
                   **{**USUAL, "respiration_rate": 22, "pulse": 95, "temperature": 38.5})  # 0 -> 4
    evaluate_subjects(db, [resident], NOW - timedelta(minutes=50))
    [alert] = alerts(db, resident, "news2_rising")
    assert alert["status"] == "open"
    oximeter_round(db, home, resident, NOW - timedelta(minutes=2), spo2=97, pulse=72)  # device-only: partial, 0
    evaluate_subjects(db, [resident], NOW)
    assert alerts(db, resident, "news2_rising")[0]["status"] == "open"  # a partial 0 shows nothing came down
    add_scored_set(db, home, resident, NOW + timedelta(minutes=60), **{**USUAL, "spo2": 97, "temperature": 36.8})
    evaluate_subjects(db, [resident], NOW + timedelta(minutes=61))
    assert alerts(db, resident, "news2_rising")[0]["status"] == "resolved"  # a complete 0 does


def _behaviour(db: psycopg.Connection, site: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT kind, started_at, ended_at, device_id, detail FROM behaviour_events WHERE site_id = %s "
                      "ORDER BY kind, started_at", (site,)).fetchall()


def test_incremental_rederivation_matches_a_full_one_and_takes_late_readings(database, db, flat, uid,
                                                                             monkeypatch) -> None:
    """A long-running scorer re-derives only what new readings can change; the events must be exactly those a
    fresh process (full 36 h window) derives, including a reading uploaded late (buffered by the hub)."""
    from carewatch.scoring import households

    db.commit()  # the household rows, for the autocommit connection below
    db = psycopg.connect(database, autocommit=True)  # each reading its own transaction: real stored_at times
    monkeypatch.setattr(households, "STORED_AT_SLACK", timedelta(0))  # steps here are milliseconds apart
    t0 = NOW - timedelta(hours=30)
    add_reading(db, flat, flat, f"fridge-{uid}", "door_open", 1, t0 - timedelta(hours=20))  # an older event exists
    add_reading(db, flat, flat, f"fridge-{uid}", "door_open", 0, t0 - timedelta(hours=20) + timedelta(seconds=30))
    evaluate_subjects(db, [flat], t0)
    for step in range(1, 25):  # a bathroom visit and hall walk every hour, evaluated as they arrive
        at = t0 + timedelta(hours=step)
        add_reading(db, flat, flat, f"hall-{uid}", "motion", 1, at - timedelta(minutes=20))
        add_reading(db, flat, flat, f"hall-{uid}", "motion", 0, at - timedelta(minutes=18))
        add_reading(db, flat, flat, f"bath-{uid}", "motion", 1, at - timedelta(minutes=16))
        add_reading(db, flat, flat, f"bath-{uid}", "motion", 1, at - timedelta(minutes=4))
        evaluate_subjects(db, [flat], at)
        # the visit goes on after that evaluation: the next one must extend it, not leave it as it was
        add_reading(db, flat, flat, f"bath-{uid}", "motion", 1, at + timedelta(minutes=4))
        add_reading(db, flat, flat, f"bath-{uid}", "motion", 0, at + timedelta(minutes=6))
    # a late upload: a bathroom reading from 10 h ago that merges into that visit and one more visit
    late = t0 + timedelta(hours=14)
    add_reading(db, flat, flat, f"bath-{uid}", "motion", 1, late - timedelta(minutes=12))
    add_reading(db, flat, flat, f"bath-{uid}", "motion", 1, late - timedelta(minutes=45))
    add_reading(db, flat, flat, f"bath-{uid}", "motion", 0, late - timedelta(minutes=40))
    end = t0 + timedelta(hours=24, minutes=10)
    evaluate_subjects(db, [flat], end)
    incremental = _behaviour(db, flat)
    assert any(r[1] == late - timedelta(minutes=45) for r in incremental)  # the late visit was derived
    db.execute("DELETE FROM behaviour_events WHERE site_id = %s AND started_at > %s",
               (flat, end - households.BEHAVIOUR_LOOKBACK + households.BEHAVIOUR_EDGE))
    households._DERIVED.clear()  # a fresh process: the full window
    evaluate_subjects(db, [flat], end)
    assert _behaviour(db, flat) == incremental
    db.close()


# ------------------------------------------------------------------------------------------------------------
# Incidents, isolation, snooze and oxygen (issue 15)
# ------------------------------------------------------------------------------------------------------------
def open_incidents(db: psycopg.Connection, subject: str) -> list[dict[str, Any]]:
    cur = db.execute("SELECT * FROM incidents WHERE subject_id = %s AND status <> 'resolved' ORDER BY incident_id",
                     (subject,))
    names = [c.name for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def incident_events(db: psycopg.Connection, incident_id: int) -> list[str]:
    return [r[0] for r in db.execute("SELECT action FROM incident_events WHERE incident_id = %s ORDER BY event_id",
                                     (incident_id,))]


def test_a_deteriorating_resident_is_one_incident_and_a_band_rise_asks_again(db, home, resident) -> None:
    """H-INC-01/02: soft signs, a red 3 and a trend are one incident; a red 3 becoming 5-6 re-alerts."""
    add_manual_set(db, home, resident, NOW - timedelta(hours=2), respiration_rate=16, spo2=97, systolic_bp=125,
                   pulse=70, temperature=36.8, soft_signs=("drowsy",))
    oximeter_round(db, home, resident, NOW - timedelta(minutes=30), spo2=91, pulse=80)  # SpO2 91 scores 3
    evaluate_subjects(db, [resident], NOW - timedelta(minutes=25))
    [incident] = open_incidents(db, resident)
    parts = {a["kind"] for a in alerts(db, resident) if a["incident_id"] == incident["incident_id"]}
    assert {"news2", "soft_signs"} <= parts
    assert incident["band"] == "low-medium" and incident["severity"] == "medium" and incident["category"] == "clinical"
    assert all(a["ack_due_at"] is None for a in alerts(db, resident))  # the incident's deadline counts, once
    incident_store.acknowledge(db, incident["incident_id"], "carer1", at=NOW - timedelta(minutes=24))
    assert all(a["acknowledged_by"] == "carer1" for a in alerts(db, resident) if a["status"] != "resolved")
    # 5-6 (medium band), the same 'medium' severity: the acknowledged incident must ask again
    oximeter_round(db, home, resident, NOW - timedelta(minutes=10), spo2=91, pulse=112)  # + pulse 112 scores 2
    evaluate_subjects(db, [resident], NOW - timedelta(minutes=5))
    [again] = open_incidents(db, resident)
    assert again["incident_id"] == incident["incident_id"]
    assert again["band"] == "medium" and again["status"] == "open" and again["acknowledged_at"] is None
    assert again["ack_due_at"] == NOW - timedelta(minutes=5) + timedelta(minutes=60)
    assert "band_rose" in incident_events(db, incident["incident_id"])
    assert len(alerts(db, resident, "news2")) == 1  # updated, not repeated


def test_two_findings_racing_for_one_subject_make_one_incident(database: str, db, home, resident) -> None:
    """Two evaluations of one resident at once, on two connections: one incident, one alert per kind."""
    add_manual_set(db, home, resident, NOW - timedelta(minutes=20), respiration_rate=26, spo2=91, systolic_bp=95,
                   pulse=115, temperature=38.6, soft_signs=("drowsy",))
    db.commit()
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def run(when: datetime) -> None:
        try:
            with psycopg.connect(database, autocommit=True) as conn:
                barrier.wait()
                evaluate_subjects(conn, [resident], when)
                tick(conn, when, slow=False)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(NOW - timedelta(minutes=m),)) for m in (15, 14)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    [incident] = open_incidents(db, resident)
    kinds = [a["kind"] for a in alerts(db, resident) if a["status"] != "resolved"]
    assert len(kinds) == len(set(kinds)) and "news2" in kinds
    assert {a["incident_id"] for a in alerts(db, resident) if a["status"] != "resolved"} == {incident["incident_id"]}
    assert incident_events(db, incident["incident_id"]).count("opened") == 1


def test_one_residents_bad_data_cannot_stop_scoring_for_the_others(db, home, resident, uid) -> None:
    """H-DATA-01: an implausible stored value (a row from before the CHECK constraints) is named in a data-fault
    incident; that resident keeps their last good state, everyone else is scored."""
    other = add_resident(db, home, f"res2-{uid}")
    add_manual_set(db, home, resident, NOW - timedelta(hours=3), respiration_rate=16, spo2=97, systolic_bp=125,
                   pulse=70, temperature=36.8, score=0)
    add_manual_set(db, home, other, NOW - timedelta(hours=3), respiration_rate=16, spo2=97, systolic_bp=125,
                   pulse=70, temperature=36.8, score=0)
    evaluate_subjects(db, [resident, other], NOW - timedelta(hours=2))
    before = db.execute("SELECT news2_score, news2_at, last_obs_id FROM resident_state WHERE resident_id = %s",
                        (resident,)).fetchone()
    assert before[0] == 0
    # a legacy row the CHECK constraint (NOT VALID) never looked at
    db.execute("ALTER TABLE observation_sets DROP CONSTRAINT obs_spo2_plausible")
    bad = add_manual_set(db, home, resident, NOW - timedelta(minutes=30), respiration_rate=16, spo2=150,
                         systolic_bp=125, pulse=70, temperature=36.8)
    db.execute("ALTER TABLE observation_sets ADD CONSTRAINT obs_spo2_plausible "
               "CHECK (spo2 IS NULL OR spo2 BETWEEN 40 AND 100) NOT VALID")
    add_manual_set(db, home, other, NOW - timedelta(minutes=30), respiration_rate=26, spo2=91, systolic_bp=95,
                   pulse=115, temperature=38.6)
    db.commit()
    summary = evaluate_subjects(db, [resident, other], NOW)
    assert db.execute("SELECT news2_score FROM resident_state WHERE resident_id = %s", (other,)).fetchone()[0] >= 7
    assert db.execute("SELECT news2_score, news2_at, last_obs_id FROM resident_state WHERE resident_id = %s",
                      (resident,)).fetchone() == before  # the last good state is kept
    [fault] = alerts(db, resident, "data_fault")
    assert "150" in fault["reason"] and "SpO2" in fault["reason"] and "carer1" in fault["reason"]
    assert fault["data"]["obs_id"] == bad
    [incident] = open_incidents(db, resident)
    assert incident["category"] == "data" and fault["incident_id"] == incident["incident_id"]
    assert resident in summary.errors and other not in summary.errors


def test_snooze_never_hides_a_band_rise_and_never_defers_escalation(db, home, resident) -> None:
    oximeter_round(db, home, resident, NOW - timedelta(minutes=40), spo2=91, pulse=80)  # red 3: low-medium
    evaluate_subjects(db, [resident], NOW - timedelta(minutes=35))
    [incident] = open_incidents(db, resident)
    due = incident["ack_due_at"]
    lifecycle.snooze(db, Subject("resident", resident), home, None, "nurse1", "known COPD, reviewed today",
                     NOW + timedelta(hours=6), at=NOW - timedelta(minutes=34))
    assert open_incidents(db, resident)[0]["ack_due_at"] == due  # escalation is not deferred
    [alert] = alerts(db, resident, "news2")
    assert alert["ack_due_at"] is None or alert["ack_due_at"] <= due
    oximeter_round(db, home, resident, NOW - timedelta(minutes=20), spo2=91, pulse=112)  # 5: medium band
    summary = evaluate_subjects(db, [resident], NOW - timedelta(minutes=15))
    [alert] = alerts(db, resident, "news2")
    assert alert["data"]["risk"] == "medium" and summary.suppressed == 0
    assert open_incidents(db, resident)[0]["band"] == "medium"
    with pytest.raises(lifecycle.AlertLifecycleError, match="24"):
        lifecycle.snooze(db, Subject("resident", resident), home, "news2", "nurse1", "too long",
                         NOW + timedelta(hours=30), at=NOW)


def test_device_round_uses_the_oxygen_prescription_until_staff_confirm(db, home, uid) -> None:
    """H-OBS-11: a Scale 2 resident on oxygen at SpO2 97 % scores 5 from a device-only round, marked unconfirmed."""
    rid = add_resident(db, home, f"o2-{uid}", scale2=True)
    db.execute("UPDATE residents SET oxygen_prescribed = true, oxygen_flow_lpm = 2, oxygen_set_by = 'dr.x', "
               "oxygen_set_at = %s WHERE resident_id = %s", (NOW, rid))
    oximeter_round(db, home, rid, NOW - timedelta(minutes=10), spo2=97, pulse=80)
    evaluate_subjects(db, [rid], NOW)
    on_o2, score, inputs = db.execute("SELECT on_oxygen, score, inputs FROM observation_sets WHERE resident_id = %s",
                                      (rid,)).fetchone()
    assert on_o2 and score == 5 and inputs["air_or_oxygen"]["confirmed"] is False
    [alert] = alerts(db, rid, "news2")
    assert alert["severity"] == "medium" and "Air/oxygen unconfirmed" in alert["reason"]


def test_long_lie_anywhere_uses_the_household_setting(db, flat, uid) -> None:
    """H-HOME-09 through the engine: sites.long_lie_minutes is read; motion last seen in the hall, then nothing."""
    db.execute("UPDATE sites SET long_lie_minutes = 45 WHERE site_id = %s", (flat,))
    noon = (NOW - timedelta(days=1)).astimezone(LOCAL_TZ).replace(hour=12, minute=0)  # waking hours
    add_reading(db, flat, flat, f"hall-{uid}", "motion", 1, noon - timedelta(minutes=50))
    add_reading(db, flat, flat, f"fridge-{uid}", "door_open", 0, noon - timedelta(minutes=49))
    evaluate_subjects(db, [flat], noon - timedelta(minutes=40))
    assert alerts(db, flat, "long_lie") == []
    tick(db, noon, slow=True)  # 50 minutes without movement, setting 45
    [alert] = alerts(db, flat, "long_lie")
    assert alert["severity"] == "high" and "45 minutes" in alert["reason"]
    [incident] = open_incidents(db, flat)
    assert incident["category"] == "household" and alert["incident_id"] == incident["incident_id"]
    add_reading(db, flat, flat, f"hall-{uid}", "motion", 1, noon + timedelta(minutes=2))
    evaluate_subjects(db, [flat], noon + timedelta(minutes=3))
    moved = alerts(db, flat, "long_lie")[0]  # high: the movement is noted, a person closes it (H-ESC-10)
    assert moved["status"] != "resolved" and "recovery" in moved["data"]


def test_alerts_from_before_incidents_are_grouped_at_rescore(db, home, resident) -> None:
    """An open alert with no incident (opened before migration 0007) joins its subject's incident on start-up."""
    alert_id = db.execute(
        """INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action,
                               opened_at)
           VALUES (%s, %s, 'resident', %s, 'spo2_below_baseline', 'low', 'old alert', 'act', %s) RETURNING alert_id""",
        (home, resident, resident, NOW - timedelta(days=1))).fetchone()[0]
    assert group_loose_alerts(db, NOW) >= 1
    [incident] = open_incidents(db, resident)
    assert db.execute("SELECT incident_id FROM alerts WHERE alert_id = %s",
                      (alert_id,)).fetchone()[0] == incident["incident_id"]
