"""The slow tick's device pass builds only the devices whose finding can change (``load_changing_devices``): for an
estate with devices in every state the device rules know, before and after their alerts are open, it yields
exactly the changing findings of the full path (``load_devices``: every active device)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources

import psycopg
import pytest

from carewatch.scoring import devices
from carewatch.scoring.devices import load_changing_devices, load_devices
from carewatch.scoring.engine import tick
from carewatch.scoring.lifecycle import ACTOR, findings_that_change
from carewatch.scoring.rules import (
    BATTERY_CRITICAL_PCT,
    BATTERY_LOW_PCT,
    BATTERY_RECOVERED_PCT,
    CLOCK_FLAGS_FAULT_COUNT,
    DEAD_LETTERS_FAULT_COUNT,
    DEFAULT_EXPECTED_INTERVAL,
    EXPECTED_INTERVAL,
    GATEWAY_SILENT_AFTER,
    DeviceState,
    Finding,
    device_findings,
)

NOW = datetime.now(UTC).replace(microsecond=0)
_seq = itertools.count(1)
_MINUTE = timedelta(minutes=1)


@dataclass
class Estate:
    sites: list[str]
    home: str
    household: str
    offline: str  # a care home whose hub is offline
    resident: str
    paused: str  # a resident whose monitoring is paused
    devices: list[str]


def _add_device(db: psycopg.Connection, estate: Estate, site: str, device: str, kind: str, *,
                resident: str | None = None, last_seen: datetime | None = NOW, battery: float | None = None,
                bound_at: datetime | None = None, active: bool = True) -> str:
    db.execute(
        """INSERT INTO devices (device_id, site_id, gateway_id, kind, resident_id, last_seen, battery_pct, bound_at,
               active) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (device, site, f"gw-{site}", kind, resident, last_seen, battery, bound_at or NOW - timedelta(days=30), active))
    estate.devices.append(device)
    return device


def _add_reading(db: psycopg.Connection, site: str, subject: str, device: str, at: datetime,
                 flags: tuple[str, ...] = ()) -> None:
    db.execute(
        """INSERT INTO readings (measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value,
               received_at, flags, subject_kind)
           VALUES (%s, %s, %s, %s, %s, %s, 'battery', 50, %s, %s,
                   CASE WHEN %s THEN carewatch_site_subject_kind(%s) ELSE 'resident' END)""",
        (at, f"gw-{site}", next(_seq), site, subject, device, at, list(flags), subject == site, site))


def _dead_letters(db: psycopg.Connection, site: str, device: str, n: int, at: datetime) -> None:
    for i in range(n):
        db.execute("INSERT INTO dead_letters (at, stage, site_id, gateway_id, device_id, reason, raw, fingerprint) "
                   "VALUES (%s, 'validate', %s, %s, %s, %s, '{}', %s)",
                   (at - i * _MINUTE, site, f"gw-{site}", device, f"bad frame {i}", f"{device}-{at}-{i}"))


@pytest.fixture
def estate(db: psycopg.Connection, uid: str) -> Estate:
    home, household, offline = f"dhome-{uid}", f"dflat-{uid}", f"doff-{uid}"
    for site, kind in ((home, "care_home"), (household, "household"), (offline, "care_home")):
        db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, %s, %s)", (site, kind, f"Site {site}"))
    db.execute("INSERT INTO gateways (gateway_id, site_id, state, last_seen) VALUES (%s, %s, 'online', %s), "
               "(%s, %s, 'online', %s), (%s, %s, 'offline', %s)",
               (f"gw-{home}", home, NOW, f"gw-{household}", household, NOW,
                f"gw-{offline}", offline, NOW - GATEWAY_SILENT_AFTER - timedelta(hours=1)))
    resident, paused = f"dres-{uid}", f"dpaused-{uid}"
    for rid, monitoring in ((resident, "active"), (paused, "paused")):
        db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth, monitoring) "
                   "VALUES (%s, %s, %s, '1938-04-02', %s)", (rid, home, f"Resident {rid}", monitoring))
    e = Estate([home, household, offline], home, household, offline, resident, paused, [])
    # every kind the silence rule knows (and one it does not: the default interval), heard and fitted at every
    # distance from its allowance, on a resident and in a household
    kinds = {**EXPECTED_INTERVAL, "mystery_sensor": DEFAULT_EXPECTED_INTERVAL}
    for kind, allowance in kinds.items():
        for where, site, resident_id in (("r", home, resident), ("h", household, None)):
            subject = resident_id or site
            d = f"{kind}-{where}-{uid}"
            _add_device(db, e, site, f"{d}-fresh", kind, resident=resident_id, last_seen=NOW - _MINUTE, battery=80)
            _add_device(db, e, site, f"{d}-silent", kind, resident=resident_id, last_seen=NOW - allowance - _MINUTE)
            _add_device(db, e, site, f"{d}-edge", kind, resident=resident_id, last_seen=NOW - allowance)
            _add_device(db, e, site, f"{d}-never", kind, resident=resident_id, last_seen=None,
                        bound_at=NOW - allowance - _MINUTE)
            _add_device(db, e, site, f"{d}-new", kind, resident=resident_id, last_seen=None, bound_at=NOW - _MINUTE)
            # last_seen not maintained: the readings of the last 2 days stand in for it
            for name, at in (("read-old", NOW - allowance - _MINUTE), ("read-recent", NOW - _MINUTE)):
                dev = _add_device(db, e, site, f"{d}-{name}", kind, resident=resident_id, last_seen=None,
                                  bound_at=NOW - timedelta(days=30))
                _add_reading(db, site, subject, dev, at)
            # a silent device behind an offline hub is held, not raised
            _add_device(db, e, offline, f"{d}-offline", kind, last_seen=NOW - allowance - _MINUTE)
    for pct in (None, BATTERY_CRITICAL_PCT - 1, BATTERY_LOW_PCT - 1, BATTERY_LOW_PCT, BATTERY_LOW_PCT + 1,
                BATTERY_RECOVERED_PCT, 90):
        _add_device(db, e, household, f"batt-{pct}-{uid}", "climate_sensor", battery=pct)
    for n in (DEAD_LETTERS_FAULT_COUNT - 1, DEAD_LETTERS_FAULT_COUNT):
        dev = _add_device(db, e, household, f"dead-{n}-{uid}", "motion_sensor")
        _dead_letters(db, household, dev, n, NOW - timedelta(hours=1))
        old = _add_device(db, e, household, f"dead-old-{n}-{uid}", "motion_sensor")
        _dead_letters(db, household, old, n, NOW - timedelta(hours=25))
    for n in (CLOCK_FLAGS_FAULT_COUNT - 1, CLOCK_FLAGS_FAULT_COUNT):
        for flag in ("clock_not_set", "clock_skewed"):
            dev = _add_device(db, e, home, f"clock-{flag}-{n}-{uid}", "pulse_oximeter", resident=resident)
            for i in range(n):
                _add_reading(db, home, resident, dev, NOW - (i + 1) * _MINUTE, (flag,))
    # not evaluated by either path: a paused resident's, an inactive and an unbound device
    _add_device(db, e, home, f"paused-{uid}", "pulse_oximeter", resident=paused, last_seen=None, battery=5)
    _add_device(db, e, home, f"inactive-{uid}", "plug", last_seen=None, battery=5, active=False)
    unbound = _add_device(db, e, home, f"unbound-{uid}", "plug", last_seen=None, battery=5)
    db.execute("UPDATE devices SET unbound_at = %s WHERE device_id = %s", (NOW - _MINUTE, unbound))
    return e


def _changing(db: psycopg.Connection, devices: list[DeviceState], now: datetime) -> list[Finding]:
    return findings_that_change(db, device_findings(devices, now))


def _both(db: psycopg.Connection, estate: Estate, now: datetime) -> tuple[list[DeviceState], list[DeviceState]]:
    full = load_devices(db, now, site_ids=estate.sites)
    filtered = load_changing_devices(db, now, site_ids=estate.sites)
    assert set(filtered) <= set(full), "a filtered device's state differs from the full path's"
    assert _changing(db, filtered, now) == _changing(db, full, now)
    # and evaluate_subjects' narrowing, by subject: the same devices as the slow tick's filter, the same changes
    subjects = [("resident", rid) for rid, in db.execute(
        "SELECT resident_id FROM residents WHERE site_id = ANY(%s)", (estate.sites,))]
    subjects += [("household", site) for site in estate.sites]
    scoped_full = load_devices(db, now, subjects=subjects)
    scoped = load_devices(db, now, subjects=subjects, changing_only=True)
    assert set(scoped) <= set(scoped_full) and 0 < len(scoped) < len(scoped_full)
    assert set(scoped) == {d for d in filtered if d in set(scoped_full)}
    assert _changing(db, scoped, now) == _changing(db, scoped_full, now)
    return full, filtered


def _states(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.kind.value, f.state) for f in findings}


def test_filtered_device_pass_changes_exactly_what_the_full_pass_changes(db, estate: Estate) -> None:
    # nothing open yet: the filter keeps only devices a rule could raise for
    full, filtered = _both(db, estate, NOW)
    fine = {d for d in estate.devices if d.endswith(("-fresh", "-new", "-read-recent"))}
    assert fine <= {d.device_id for d in full} and not fine & {d.device_id for d in filtered}
    raised = _changing(db, filtered, NOW)
    assert _states(raised) == {("battery_low", "raise"), ("device_silent", "raise"), ("device_fault", "raise")}

    tick(db, NOW, slow=True, site_ids=estate.sites)
    assert _changing(db, load_devices(db, NOW, site_ids=estate.sites), NOW) == []  # all of it written
    _both(db, estate, NOW + timedelta(seconds=30))

    # then the estate moves on: batteries change, devices are heard again or fall silent, faults age out
    later = NOW + timedelta(hours=2)
    for was, now_pct in ((BATTERY_LOW_PCT - 1, BATTERY_CRITICAL_PCT - 1),  # low -> critical: an update
                         (BATTERY_CRITICAL_PCT - 1, BATTERY_RECOVERED_PCT + 1),  # recovered: a clear
                         (BATTERY_RECOVERED_PCT, BATTERY_LOW_PCT - 1)):  # newly low
        db.execute("UPDATE devices SET battery_pct = %s WHERE device_id = ANY(%s)",
                   (now_pct, [d for d in estate.devices if d.startswith(f"batt-{was}-")]))
    db.execute("UPDATE devices SET last_seen = %s WHERE device_id LIKE '%%-silent' AND site_id = ANY(%s) "
               "AND kind IN ('plug', 'thermometer')", (later, estate.sites))
    db.execute("UPDATE gateways SET state = 'online', last_seen = %s WHERE site_id = %s", (later, estate.offline))
    full, filtered = _both(db, estate, later)
    assert len(filtered) < len(full)
    assert _states(_changing(db, filtered, later)) >= {
        ("battery_low", "raise"), ("battery_low", "clear"), ("device_silent", "raise"), ("device_silent", "clear")}
    tick(db, later, slow=True, site_ids=estate.sites)
    # days later: the faults have aged out of their 24 h, and every device not heard since is silent
    _, filtered = _both(db, estate, later + timedelta(days=3))
    assert ("device_fault", "clear") in _states(_changing(db, filtered, later + timedelta(days=3)))


def test_a_practice_kits_devices_raise_no_device_alerts_and_open_ones_resolve_saying_why(
        db: psycopg.Connection, uid: str) -> None:
    """H-KIT-08: a practice kit lies unused between trainings (silent, its battery running down). Neither device pass
    (the slow tick's filtered one, the per-subject one after fresh readings) raises a device alert about its devices;
    when a kit is switched to practice, or a device moved onto the practice kit, the alerts open about it are
    resolved saying why. A real kit's devices in the same state still alert."""
    from carewatch.scoring.engine import evaluate_subjects

    home = f"pkhome-{uid}"
    db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Practice Kit Home')", (home,))
    db.execute("INSERT INTO gateways (gateway_id, site_id, state, last_seen) VALUES (%s, %s, 'online', %s)",
               (f"gw-{home}", home, NOW))
    real_kit, practice_kit = f"{home}-kit-01", f"{home}-practice"
    db.execute("INSERT INTO kits (kit_id, site_id, name, practice) VALUES (%s, %s, 'kit-01', false), "
               "(%s, %s, 'practice kit', true)", (real_kit, home, practice_kit, home))
    stale = NOW - timedelta(days=10)

    def device(name: str, kit: str, battery: float) -> str:
        device_id = f"{name}-{uid}"
        db.execute("""INSERT INTO devices (device_id, site_id, gateway_id, kind, kit_id, last_seen, battery_pct,
                          bound_at) VALUES (%s, %s, %s, 'pulse_oximeter', %s, %s, %s, %s)""",
                   (device_id, home, f"gw-{home}", kit, stale, battery, stale))
        return device_id

    trainee_oxi = device("pk-oxi", practice_kit, BATTERY_CRITICAL_PCT - 1)
    real_oxi = device("real-oxi", real_kit, BATTERY_CRITICAL_PCT - 1)
    moved_oxi = device("moved-oxi", real_kit, BATTERY_LOW_PCT - 1)
    db.commit()

    def open_alerts() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for device_id, kind in db.execute(
                "SELECT subject_id, kind FROM alerts WHERE subject_kind = 'device' AND status <> 'resolved' "
                "AND site_id = %s", (home,)).fetchall():
            out.setdefault(device_id, set()).add(kind)
        return out

    evaluate_subjects(db, [home], NOW)  # the per-subject pass (a kit's devices are the home's)
    tick(db, NOW, slow=True, site_ids=[home])  # the slow tick's filtered pass
    db.commit()
    alerts = open_alerts()
    assert alerts.get(real_oxi) == {"battery_low", "device_silent"}
    assert alerts.get(moved_oxi) == {"battery_low", "device_silent"}
    assert trainee_oxi not in alerts, "a practice kit's device raised a device alert"
    # the filtered pass does not even build the practice device while nothing of its is open
    assert trainee_oxi not in {d.device_id for d in load_changing_devices(db, NOW, site_ids=[home])}

    def resolution(device_id: str) -> tuple[str, str, set[str]]:
        """The one resolution (why, by whom) of the device's alerts, and the actions in their history."""
        found = set(db.execute("SELECT resolution, resolved_by FROM alerts WHERE subject_kind = 'device' "
                               "AND subject_id = %s", (device_id,)).fetchall())
        assert len(found) == 1, found
        (why, by), = found
        return why, by, {r[0] for r in db.execute(
            "SELECT e.action FROM alert_events e JOIN alerts a USING (alert_id) WHERE a.subject_kind = 'device' "
            "AND a.subject_id = %s", (device_id,))}

    # a device moved onto the practice kit (as firmware_sim/practice.py register_practice_kit does): the next slow
    # tick resolves its open alerts, saying why
    later = NOW + timedelta(minutes=5)
    db.execute("UPDATE devices SET kit_id = %s WHERE device_id = %s", (practice_kit, moved_oxi))
    db.commit()
    tick(db, later, slow=True, site_ids=[home])
    db.commit()
    assert set(open_alerts()) == {real_oxi}
    why, by, actions = resolution(moved_oxi)
    assert "practice kit" in why and by == ACTOR and "auto_resolved" in actions

    # the home retires its practice kit and switches kit-01 into practice: the per-subject pass resolves kit-01's
    # device's alerts, and the retired kit's devices are real again (they alert like any real device)
    db.execute("UPDATE kits SET practice = false WHERE kit_id = %s", (practice_kit,))
    db.execute("UPDATE kits SET practice = true WHERE kit_id = %s", (real_kit,))
    db.commit()
    evaluate_subjects(db, [home], later + timedelta(minutes=1))
    db.commit()
    assert set(open_alerts()) == {trainee_oxi, moved_oxi}
    why, by, _ = resolution(real_oxi)
    assert "practice kit" in why and by == ACTOR


def test_the_clock_evidence_is_read_through_its_partial_index(db: psycopg.Connection) -> None:
    """Readings with a clock fault are read through migration 0031's partial index (not a scan of the window's
    readings), whose predicate the planner proves only from the literal the query sends: the two stay the same."""
    sql = (resources.files("carewatch.db") / "migrations" / "0031_readings_clock_flagged.sql").read_text()
    assert f"WHERE {devices._CLOCK_FLAGGED};" in sql
    names = {"readings_clock_flagged", *(row[0] for row in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'readings_clock_flagged'::regclass"))}
    db.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in db.execute(
        f"EXPLAIN SELECT x.device_id, count(*) FROM readings x WHERE x.subject_kind = 'resident' "
        f"AND x.subject_id = 'r1' AND x.measured_at > now() - interval '1 day' AND x.{devices._CLOCK_FLAGGED} "
        "GROUP BY x.device_id"))
    assert any(name in plan for name in names), plan
