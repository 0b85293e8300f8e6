"""Subject ids collide across kinds (issue 13, finding 1): a resident whose id is a household's, a kit's, a site's,
a gateway's or a device's is a different subject. Real ingest, scorer and PostgreSQL: every stored reading, latest
value, alert, suppression, incident and re-attribution carries its subject's kind, and no reader or writer of one
kind reaches another's rows (migration 0025, carewatch/subjects.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from carewatch.alerts import AlertKind, Severity
from carewatch.db.migrate import _record, available_migrations, migrate
from carewatch.ingest import kit_sessions
from carewatch.ingest.store import reassign_readings, store_batch
from carewatch.ingest.validate import ReadingsMessage
from carewatch.scoring import lifecycle
from carewatch.scoring.batches import EvaluationSummary
from carewatch.scoring.engine import evaluate_subjects
from carewatch.scoring.incident_store import sync_incidents
from carewatch.scoring.loading import load_vitals
from carewatch.scoring.rules import raise_alert
from carewatch.subjects import ALERT_SUBJECT_KIND, Subject, SubjectKind
from carewatch.wire import METRICS, DeviceKind, Metric, Reading, encode_batch

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Estate:
    home: str  # a care home
    household: str  # a household (another council's, in the API matrix)
    kit: str  # the care home's shared kit
    collided: str  # a resident of the care home whose id is the household's
    kit_named: str  # a resident of the care home whose id is the kit's
    seq: int = 0

    def send(self, db: psycopg.Connection, site: str, device: str, kind: DeviceKind,
             values: dict[Metric, float], at: datetime) -> None:
        """Readings through ingest (store_batch), as a gateway would send them."""
        readings = []
        for metric, value in values.items():
            self.seq += 1
            readings.append(Reading(seq=self.seq, device_id=device, device_kind=kind, metric=metric, value=value,
                                    unit=METRICS[metric].unit, measured_at=at, received_at=at))
        store_batch(db, [ReadingsMessage.from_payload(None, encode_batch(site, f"gw-{site}", readings))])


def _resident(db: psycopg.Connection, site: str, rid: str) -> None:
    db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, created_at) "
               "VALUES (%s, %s, %s, %s, %s)", (rid, site, f"Resident {rid}", date(1938, 4, 2),
                                               NOW - timedelta(days=30)))


@pytest.fixture
def estate(db: psycopg.Connection, uid: str) -> Estate:
    e = Estate(home=f"home-{uid}", household=f"hh-{uid}", kit=f"kit-{uid}", collided=f"hh-{uid}",
               kit_named=f"kit-{uid}")
    e.seq = 0
    for site, kind in ((e.home, "care_home"), (e.household, "household")):
        db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, %s, %s)", (site, kind, f"Site {site}"))
        db.execute("INSERT INTO gateways (gateway_id, site_id, state, last_seen) VALUES (%s, %s, 'online', %s)",
                   (f"gw-{site}", site, NOW))
    _resident(db, e.home, e.collided)  # the collision: a resident id that is the household's site id
    _resident(db, e.home, e.kit_named)  # ...and one that is the shared kit's id
    kit_sessions.ensure_kits(db, [(e.kit, e.home, "kit-01")])
    for device, site, resident, kit in ((f"rox-{uid}", e.home, e.collided, None),  # the resident's own
                                        (f"hox-{uid}", e.household, None, None),  # the household's (a hall)
                                        (f"kox-{uid}", e.home, None, e.kit)):  # the kit's
        db.execute("INSERT INTO devices (device_id, site_id, gateway_id, kind, resident_id, kit_id, room, last_seen) "
                   "VALUES (%s, %s, %s, 'pulse_oximeter', %s, %s, %s, %s)",
                   (device, site, f"gw-{site}", resident, kit, None if resident or kit else "hall", NOW))
    db.commit()
    return e


def _rows(db: psycopg.Connection, sql: str, params: Any) -> list[tuple[Any, ...]]:
    return sorted(db.execute(sql, params).fetchall())


# ------------------------------------------------------------------------------------------------------------
# Readings and latest values
# ------------------------------------------------------------------------------------------------------------
def test_ingest_writes_each_reading_with_its_subjects_kind(db: psycopg.Connection, estate: Estate, uid: str) -> None:
    at = NOW - timedelta(minutes=5)
    estate.send(db, estate.household, f"hox-{uid}", DeviceKind.PULSE_OXIMETER, {Metric.SPO2: 84}, at)
    estate.send(db, estate.home, f"rox-{uid}", DeviceKind.PULSE_OXIMETER, {Metric.SPO2: 97}, at)
    estate.send(db, estate.home, f"kox-{uid}", DeviceKind.PULSE_OXIMETER, {Metric.SPO2: 93}, at)
    assert _rows(db, "SELECT subject_kind, subject_id, value FROM readings WHERE device_id = ANY(%s)",
                 ([f"hox-{uid}", f"rox-{uid}", f"kox-{uid}"],)) == sorted([
        ("household", estate.household, 84.0), ("resident", estate.collided, 97.0), ("kit", estate.kit, 93.0)])
    # one latest value per (kind, subject, metric): the resident's and the household's side by side
    assert _rows(db, "SELECT subject_kind, subject_id, value FROM latest_readings WHERE subject_id = ANY(%s)",
                 ([estate.household, estate.kit],)) == sorted([
        ("household", estate.household, 84.0), ("resident", estate.collided, 97.0), ("kit", estate.kit, 93.0)])


def test_the_collided_resident_is_scored_on_their_own_readings_only(db: psycopg.Connection, estate: Estate,
                                                                   uid: str) -> None:
    """The household's SpO2 84 / pulse 130 never become the resident's observation set, score or alert."""
    at = NOW - timedelta(minutes=20)
    estate.send(db, estate.household, f"hox-{uid}", DeviceKind.PULSE_OXIMETER,
                {Metric.SPO2: 84, Metric.PULSE_RATE: 130}, at)
    estate.send(db, estate.home, f"rox-{uid}", DeviceKind.PULSE_OXIMETER,
                {Metric.SPO2: 97, Metric.PULSE_RATE: 70}, at)
    estate.send(db, estate.home, f"kox-{uid}", DeviceKind.PULSE_OXIMETER,
                {Metric.SPO2: 85, Metric.PULSE_RATE: 131}, at)
    vitals = load_vitals(db, [estate.collided, estate.kit_named], NOW)
    assert sorted(v.value for v in vitals[estate.collided]) == [70.0, 97.0]
    assert vitals[estate.kit_named] == []  # the kit's unassigned readings are nobody's yet
    summary = evaluate_subjects(db, [estate.collided, estate.kit_named], NOW)
    assert not summary.errors
    sets = db.execute("SELECT resident_id, spo2, pulse FROM observation_sets WHERE resident_id = ANY(%s)",
                      ([estate.collided, estate.kit_named],)).fetchall()
    assert sets == [(estate.collided, 97.0, 70.0)]
    assert db.execute("SELECT count(*) FROM alerts WHERE subject_id = ANY(%s) AND kind = 'news2'",
                      ([estate.collided, estate.kit_named],)).fetchone()[0] == 0


def test_a_notified_subject_is_evaluated_as_its_own_kind_only(db: psycopg.Connection, estate: Estate,
                                                              uid: str) -> None:
    """Ingest's NOTIFY names each subject's kind (payload v2): readings of the household evaluate the household (and
    its devices), never the resident who shares its id, and the other way round. A bare id (a payload from ingest
    before v2, during a rolling upgrade) is still every kind it is."""
    at = NOW - timedelta(minutes=20)
    db.execute("UPDATE devices SET battery_pct = 5 WHERE device_id = ANY(%s)", ([f"hox-{uid}", f"rox-{uid}"],))
    db.commit()
    estate.send(db, estate.home, f"rox-{uid}", DeviceKind.PULSE_OXIMETER, {Metric.SPO2: 97, Metric.PULSE_RATE: 70}, at)
    estate.send(db, estate.household, f"hox-{uid}", DeviceKind.PULSE_OXIMETER, {Metric.SPO2: 84}, at)
    resident, household = Subject("resident", estate.collided), Subject("household", estate.household)
    assert resident.id == household.id

    def battery_alerts() -> set[str]:
        return {r[0] for r in db.execute(
            "SELECT subject_id FROM alerts WHERE kind = 'battery_low' AND status <> 'resolved' "
            "AND subject_id = ANY(%s)", ([f"hox-{uid}", f"rox-{uid}"],))}

    summary = evaluate_subjects(db, [household], NOW)
    db.commit()
    assert (summary.residents, summary.households, summary.devices) == (0, 1, 1)
    assert not summary.errors and not summary.unknown_subjects
    assert battery_alerts() == {f"hox-{uid}"}  # the household's hall oximeter, not the resident's
    assert db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s",
                      (estate.collided,)).fetchone()[0] == 0, "the household's notification scored the resident"

    summary = evaluate_subjects(db, [resident], NOW)
    db.commit()
    assert (summary.residents, summary.households, summary.devices) == (1, 0, 1)
    assert battery_alerts() == {f"hox-{uid}", f"rox-{uid}"}
    assert db.execute("SELECT spo2 FROM observation_sets WHERE resident_id = %s",
                      (estate.collided,)).fetchall() == [(97.0,)]

    # a subject of a kind with nothing to evaluate on new data, or of no such subject, is reported, not guessed
    summary = evaluate_subjects(db, [Subject("household", estate.home), Subject("resident", "nobody-" + uid),
                                     Subject("kit", estate.kit)], NOW)
    assert (summary.residents, summary.households, summary.devices) == (0, 0, 0)
    assert sorted(summary.unknown_subjects) == sorted([f"household:{estate.home}", f"resident:nobody-{uid}",
                                                       f"kit:{estate.kit}"])
    # a bare id (old payloads, callers naming no kind): both kinds, as before
    summary = evaluate_subjects(db, [estate.collided], NOW)
    assert (summary.residents, summary.households, summary.devices) == (1, 1, 2)


# ------------------------------------------------------------------------------------------------------------
# Alerts, snooze, incidents
# ------------------------------------------------------------------------------------------------------------
def _apply(db: psycopg.Connection, *findings: Any) -> EvaluationSummary:
    summary = EvaluationSummary()
    with db.transaction():
        lifecycle.apply_findings(db, list(findings), NOW, summary)
    return summary


def test_alerts_and_incidents_are_per_kind_and_a_snooze_stays_on_its_kind(db: psycopg.Connection,
                                                                         estate: Estate) -> None:
    hh, rid = estate.household, estate.collided
    household = raise_alert(AlertKind.KITCHEN_INACTIVITY, hh, hh, Severity.MEDIUM, "fridge unused", "phone")
    resident = raise_alert(AlertKind.SOFT_SIGNS, rid, estate.home, Severity.MEDIUM, "not themselves", "look",
                           resident_id=rid)
    opened = _apply(db, household, resident).opened
    assert len(opened) == 2
    assert _rows(db, "SELECT subject_kind, subject_id, site_id, resident_id FROM alerts WHERE alert_id = ANY(%s)",
                 (opened,)) == sorted([("household", hh, hh, None), ("resident", rid, estate.home, rid)])
    # one open incident per (kind, subject): two here, though the ids are the same
    assert _rows(db, "SELECT subject_kind, subject_id, resident_id FROM incidents WHERE subject_id = %s "
                     "AND status <> 'resolved'", (hh,)) == sorted([("household", hh, None), ("resident", rid, rid)])

    # the resident's manager snoozes every kind for the resident: nothing of the household's is touched
    lifecycle.snooze(db, Subject(SubjectKind.RESIDENT, rid), estate.home, None, "manager", "end of life care plan",
                     NOW + timedelta(hours=4), at=NOW)
    snoozed = [a for (a,) in db.execute("SELECT DISTINCT alert_id FROM alert_events WHERE action = 'snoozed' "
                                        "AND alert_id = ANY(%s)", (opened,)).fetchall()]
    assert len(snoozed) == 1
    assert db.execute("SELECT subject_kind, resident_id FROM alert_suppressions WHERE subject_id = %s",
                      (rid,)).fetchall() == [("resident", rid)]
    kinds = dict(db.execute("SELECT alert_id, subject_kind FROM alerts WHERE alert_id = ANY(%s)", (opened,)))
    assert {kinds[a] for a in snoozed} == {"resident"}
    # a new household finding opens (not suppressed); the resident's new one is held back by the snooze
    summary = _apply(db, raise_alert(AlertKind.NIGHT_BATHROOM, hh, hh, Severity.LOW, "busy nights", "review"),
                     raise_alert(AlertKind.NEWS2_RISING, rid, estate.home, Severity.LOW, "rising", "look",
                                 resident_id=rid))
    assert summary.suppressed == 1 and len(summary.opened) == 1
    assert db.execute("SELECT subject_kind, kind FROM alerts WHERE alert_id = %s",
                      (summary.opened[0],)).fetchone() == ("household", "night_bathroom")
    # a snooze names a resident that exists (a foreign key through the generated resident_id)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        lifecycle.snooze(db, Subject(SubjectKind.RESIDENT, f"nobody-{estate.kit}"), estate.home, None, "manager",
                         "r", NOW + timedelta(hours=1), at=NOW)
    db.rollback()


def test_sync_incidents_groups_by_kind(db: psycopg.Connection, estate: Estate) -> None:
    hh, rid = estate.household, estate.collided
    _apply(db, raise_alert(AlertKind.LONG_LIE, hh, hh, Severity.HIGH, "no movement", "visit now"))
    with db.transaction():
        assert sync_incidents(db, [(SubjectKind.RESIDENT, rid)], NOW) == []  # the resident has no alerts
    assert db.execute("SELECT count(*) FROM incidents WHERE subject_kind = 'resident' AND subject_id = %s",
                      (rid,)).fetchone()[0] == 0
    assert db.execute("SELECT subject_kind, category FROM incidents WHERE subject_id = %s AND status <> 'resolved'",
                      (hh,)).fetchall() == [("household", "household")]


def test_every_alert_kind_has_a_subject_kind() -> None:
    assert set(ALERT_SUBJECT_KIND) == {k.value for k in AlertKind}
    assert set(ALERT_SUBJECT_KIND.values()) <= set(SubjectKind)


# ------------------------------------------------------------------------------------------------------------
# The database refuses rows that mix kinds up
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sql", "error"), [
    # a household's (or site's) reading is its own site's
    ("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_kind, subject_id, device_id, metric, "
     "value, received_at) VALUES (now(), 'gw-x', 1, %(home)s, 'household', %(hh)s, 'd', 'spo2', 95, now())",
     psycopg.errors.CheckViolation),
    # a reading's subject is a resident, a kit, a household or a site; never a device or a gateway
    ("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_kind, subject_id, device_id, metric, "
     "value, received_at) VALUES (now(), 'gw-x', 1, %(home)s, 'gateway', 'gw-x', 'd', 'spo2', 95, now())",
     psycopg.errors.CheckViolation),
    ("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_kind, subject_id, device_id, metric, "
     "value, received_at) VALUES (now(), 'gw-x', 1, %(home)s, 'person', %(rid)s, 'd', 'spo2', 95, now())",
     psycopg.errors.CheckViolation),
    ("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value, "
     "received_at) VALUES (now(), 'gw-x', 1, %(home)s, %(rid)s, 'd', 'spo2', 95, now())",
     psycopg.errors.NotNullViolation),
    # a resident's alert is that resident's; a household's alert is its own site's
    ("INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action) "
     "VALUES (%(home)s, %(kit)s, 'resident', %(rid)s, 'soft_signs', 'low', 'r', 'a')",
     psycopg.errors.CheckViolation),
    ("INSERT INTO alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, reason, action) "
     "VALUES (%(home)s, NULL, 'resident', %(rid)s, 'soft_signs', 'low', 'r', 'a')",
     psycopg.errors.CheckViolation),
    ("INSERT INTO alerts (site_id, subject_kind, subject_id, kind, severity, reason, action) "
     "VALUES (%(home)s, 'household', %(hh)s, 'long_lie', 'low', 'r', 'a')",
     psycopg.errors.CheckViolation),
    ("INSERT INTO incidents (site_id, resident_id, subject_kind, subject_id, category, severity, headline, action, "
     "opened_at, updated_at) VALUES (%(home)s, NULL, 'resident', %(rid)s, 'clinical', 'low', 'h', 'a', now(), now())",
     psycopg.errors.CheckViolation),
])
def test_the_database_refuses_rows_that_mix_kinds(db: psycopg.Connection, estate: Estate, sql: str,
                                                  error: type[Exception]) -> None:
    with pytest.raises(error):
        db.execute(sql, {"home": estate.home, "hh": estate.household, "rid": estate.collided, "kit": estate.kit})
    db.rollback()


# ------------------------------------------------------------------------------------------------------------
# Shared kits: claims and moves set the kind
# ------------------------------------------------------------------------------------------------------------
def test_claim_and_move_make_a_kit_reading_a_residents(db: psycopg.Connection, estate: Estate, uid: str) -> None:
    at = NOW - timedelta(minutes=3)
    estate.send(db, estate.home, f"kox-{uid}", DeviceKind.PULSE_OXIMETER, {Metric.SPO2: 91}, at)
    [(gw, seq)] = db.execute("SELECT gateway_id, seq FROM readings WHERE device_id = %s", (f"kox-{uid}",)).fetchall()
    # claimed by the resident whose id is the household's (the claim names a resident: kind 'resident')
    with db.transaction():
        done = reassign_readings(db, [(gw, seq)], to_subject=estate.collided, session_id=None, kind="claim", by="c")
    assert [r["from_kind"] for r in done.readings] == ["kit"]
    assert db.execute("SELECT subject_kind, subject_id FROM readings WHERE gateway_id = %s AND seq = %s",
                      (gw, seq)).fetchone() == ("resident", estate.collided)
    assert _rows(db, "SELECT subject_kind, subject_id FROM latest_readings WHERE metric = 'spo2' "
                     "AND subject_id = ANY(%s)", ([estate.kit, estate.household],)) == [("resident", estate.collided)]
    # moved to the resident whose id is the kit's: a resident's reading now, not the kit's unassigned one
    with db.transaction():
        reassign_readings(db, [(gw, seq)], to_subject=estate.kit_named, session_id=None, kind="move", by="c")
    assert db.execute("SELECT subject_kind, subject_id FROM readings WHERE gateway_id = %s AND seq = %s",
                      (gw, seq)).fetchone() == ("resident", estate.kit_named)
    assert _rows(db, "SELECT kind, from_kind, from_subject, to_kind, to_subject FROM reading_assignments "
                     "WHERE gateway_id = %s AND seq = %s", (gw, seq)) == sorted([
        ("claim", "kit", estate.kit, "resident", estate.collided),
        ("move", "resident", estate.collided, "resident", estate.kit_named)])
    assert [v.value for v in load_vitals(db, [estate.kit_named], NOW)[estate.kit_named]] == [91.0]
    assert load_vitals(db, [estate.collided], NOW)[estate.collided] == []


# ------------------------------------------------------------------------------------------------------------
# Migration 0025 backfills the kinds of existing rows
# ------------------------------------------------------------------------------------------------------------
def test_migration_backfills_kinds(pg_server: str) -> None:
    name = f"carewatch_kinds_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(**{**conninfo_to_dict(pg_server), "dbname": name})
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("""CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                            variant text, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())""")
            for mig in available_migrations(timescale=False):
                if mig.version < 25:
                    with conn.transaction():
                        conn.execute(mig.sql)
                        _record(conn, mig)
            # the estate before 0025: a resident whose id is a household's, each with readings and alerts
            conn.execute("""INSERT INTO sites (site_id, kind, name) VALUES ('home', 'care_home', 'Home'),
                            ('hh', 'household', 'HH')""")
            conn.execute("INSERT INTO gateways (gateway_id, site_id) VALUES ('gw-home', 'home'), ('gw-hh', 'hh')")
            conn.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                         "VALUES ('hh', 'home', 'R', '1940-01-01')")
            conn.execute("INSERT INTO kits (kit_id, site_id, name) VALUES ('kit', 'home', 'kit-01')")
            conn.execute("""INSERT INTO devices (device_id, site_id, gateway_id, kind, resident_id, kit_id) VALUES
                            ('rox', 'home', 'gw-home', 'pulse_oximeter', 'hh', NULL),
                            ('hox', 'hh', 'gw-hh', 'pulse_oximeter', NULL, NULL),
                            ('kox', 'home', 'gw-home', 'pulse_oximeter', NULL, 'kit'),
                            ('room', 'home', 'gw-home', 'thermometer', NULL, NULL)""")
            for seq, (site, subject, device) in enumerate((("home", "hh", "rox"), ("hh", "hh", "hox"),
                                                           ("home", "kit", "kox"), ("home", "home", "room")), 1):
                conn.execute("INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, "
                             "metric, value, received_at) VALUES (now(), %s, %s, %s, %s, %s, 'spo2', 95, now())",
                             (f"gw-{site}", seq, site, subject, device))
                conn.execute("INSERT INTO latest_readings (subject_id, metric, site_id, device_id, value, measured_at) "
                             "VALUES (%s, %s, %s, %s, 95, now())", (subject, f"spo2-{seq}", site, device))
            conn.execute("""INSERT INTO alerts (site_id, resident_id, subject_id, kind, severity, reason, action)
                            VALUES ('home', 'hh', 'hh', 'soft_signs', 'low', 'r', 'a'),
                                   ('hh', NULL, 'hh', 'long_lie', 'low', 'r', 'a'),
                                   ('home', 'hh', 'rox', 'battery_low', 'low', 'r', 'a'),
                                   ('home', NULL, 'gw-home', 'gateway_offline', 'low', 'r', 'a')""")
            conn.execute("""INSERT INTO alert_suppressions (subject_id, kind, reason, until, created_by)
                            VALUES ('hh', NULL, 'r', now() + interval '1 hour', 'm'),
                                   ('ghost', NULL, 'r', now() + interval '1 hour', 'm')""")
        migrate(dsn)
        with psycopg.connect(dsn) as conn:
            assert sorted(conn.execute("SELECT device_id, subject_kind FROM readings").fetchall()) == [
                ("hox", "household"), ("kox", "kit"), ("room", "site"), ("rox", "resident")]
            assert sorted(conn.execute("SELECT device_id, subject_kind FROM latest_readings").fetchall()) == [
                ("hox", "household"), ("kox", "kit"), ("room", "site"), ("rox", "resident")]
            assert sorted(conn.execute("SELECT kind, subject_kind FROM alerts").fetchall()) == [
                ("battery_low", "device"), ("gateway_offline", "gateway"), ("long_lie", "household"),
                ("soft_signs", "resident")]
            # a suppression of a resident id is the resident's; one naming nothing registered is dropped
            assert conn.execute("SELECT subject_kind, subject_id, site_id FROM alert_suppressions").fetchall() == [
                ("resident", "hh", "home")]
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
