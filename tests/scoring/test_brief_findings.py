"""Brief findings (issue 19 part 0, H-ALERT-13): a clear or hold finding of a kind with no alert open is built
without its text and dropped before ``apply_findings``. Held equal to building every finding whole: the pure
builders on many inputs, and the engine on two databases fed the same rounds, staff sets, corrections, staff
actions and time passing, one of them with the old path forced (``residents.BRIEF_FINDINGS = False``, and round
planning's fast path off too: ``residents.FAST_PLANNING = False``, tests/scoring/test_planning_fast_path.py)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch.alerts import AlertKind
from carewatch.scoring import baselines as bl
from carewatch.scoring import lifecycle, residents
from carewatch.scoring.engine import evaluate_subjects, tick
from carewatch.scoring.news2 import score_observation
from carewatch.scoring.rules import (
    ResidentFacts,
    StoredSet,
    data_fault_cleared,
    news2_can_change,
    news2_finding,
    soft_signs_finding,
)
from carewatch.scoring.schedule import LastObservation, overdue_can_change, overdue_finding
from carewatch.subjects import Subject

from ..databases import fresh_database
from .test_engine import add_device, add_manual_set, add_reading, add_resident, add_site

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # the night the clocks go forward: local times at their hardest
RES = ResidentFacts("r1", "s1", "Mary Smith", baseline_confused=False)
KINDS = st.sets(st.sampled_from(list(AlertKind)))


def _same(brief: Any, whole: Any, open_kinds: set[AlertKind]) -> None:
    """A brief finding decides what the whole one does; with its kind open (or raised) it is the whole one."""
    assert (brief.kind, brief.subject, brief.state) == (whole.kind, whole.subject, whole.state)
    if brief.state == "raise" or brief.kind in open_kinds:
        assert brief == whole and not brief.brief
    else:
        assert brief.brief and brief.reason == "" and not whole.brief


values = st.fixed_dictionaries({
    "respiration_rate": st.one_of(st.none(), st.integers(5, 35).map(float)),
    "spo2": st.one_of(st.none(), st.integers(85, 100).map(float)),
    "systolic_bp": st.one_of(st.none(), st.integers(80, 230).map(float)),
    "pulse": st.one_of(st.none(), st.integers(35, 140).map(float)),
    "temperature": st.one_of(st.none(), st.integers(340, 400).map(lambda t: t / 10)),
})


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from([None, "A", "C", "V"]), st.sampled_from(["device", "manual", "mixed"]),
       st.booleans(), st.integers(0, 48 * 60), KINDS)
def test_news2_and_data_fault_findings_decide_as_the_whole_ones(vals: dict[str, float | None], acvpu: str | None,
                                                                 source: str, confirmed: bool, minutes: int,
                                                                 open_kinds: set[AlertKind]) -> None:
    taken = T0 + timedelta(minutes=minutes)
    inputs = {"air_or_oxygen": {"confirmed": confirmed, "on_oxygen": False, "source": "prescription"}}
    obs = StoredSet(7, taken, source, None, vals, consciousness=acvpu, inputs=inputs)
    result = score_observation({**vals, "consciousness": acvpu})
    brief = news2_finding(RES, obs, result, taken, open_kinds)
    _same(brief, news2_finding(RES, obs, result, taken), open_kinds)
    # what the evaluation asks before building it: exactly the findings that are not brief
    assert news2_can_change(result, open_kinds) is not brief.brief
    _same(data_fault_cleared(RES, open_kinds), data_fault_cleared(RES), open_kinds)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-30 * 60, 30 * 60), st.sampled_from(["manual", "device", "mixed"]),
                          st.lists(st.sampled_from(["new_confusion", "off_food", "pain", "confusion"]), max_size=2),
                          st.sampled_from([None, "A", "C"])), max_size=4),
       st.booleans(), KINDS)
def test_soft_signs_findings_decide_as_the_whole_ones(sets: list[tuple[int, str, list[str], str | None]],
                                                      confused: bool, open_kinds: set[AlertKind]) -> None:
    r = ResidentFacts("r1", "s1", "Mary Smith", baseline_confused=confused)
    stored = [StoredSet(i, T0 + timedelta(minutes=m), src, None, {}, consciousness=c, soft_signs=tuple(signs))
              for i, (m, src, signs, c) in enumerate(sets)]
    _same(soft_signs_finding(r, stored, T0, open_kinds), soft_signs_finding(r, stored, T0), open_kinds)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.integers(-48 * 60, 48 * 60)), st.one_of(st.none(), st.tuples(
    st.integers(0, 20), st.sampled_from(["low", "low-medium", "medium", "high"]), st.booleans())),
       st.booleans(), KINDS)
def test_overdue_findings_decide_as_the_whole_ones(due_minutes: int | None, last: tuple[int, str, bool] | None,
                                                   open_clinical: bool, open_kinds: set[AlertKind]) -> None:
    due = None if due_minutes is None else T0 + timedelta(minutes=due_minutes)
    lo = None if last is None else LastObservation(T0 - timedelta(hours=5), last[0], last[1], last[2], ("pulse",))
    brief = overdue_finding(RES, due, lo, T0, open_clinical=open_clinical, open_kinds=open_kinds)
    _same(brief, overdue_finding(RES, due, lo, T0, open_clinical=open_clinical), open_kinds)
    # what the evaluation asks before building it: exactly the findings that are not brief
    assert overdue_can_change(due, lo, T0, open_clinical=open_clinical, open_kinds=open_kinds) is not brief.brief


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.booleans(), st.booleans(), st.booleans(),
                          st.integers(0, 3), st.booleans(), st.booleans()), min_size=1, max_size=6),
       st.lists(KINDS, min_size=6, max_size=6))
def test_baseline_findings_decide_as_the_whole_ones(rows: list[tuple[Any, ...]],
                                                    kinds: list[set[AlertKind]]) -> None:
    """The deviation and rise findings over every combination of their flags (trusted, value missing, alert,
    run length; reference missing, alert, newest complete)."""
    n = len(rows)
    people = [ResidentFacts(f"r{i}", "s1", f"Resident {i}") for i in range(n)]
    base = bl.Baselines(median=np.full(n, 96.0), mad=np.full(n, 1.0), count=np.array([r[1] for r in rows]),
                        trusted=np.array([r[0] for r in rows]))
    t = T0.timestamp()
    dev = bl.Deviation(latest_value=np.array([np.nan if r[2] else 90.0 for r in rows]),
                       latest_time=np.full(n, t), deviation=np.full(n, -6.0),
                       run_length=np.array([r[5] for r in rows]), run_start=np.full(n, t - 3600),
                       alert=np.array([r[3] for r in rows]))
    rise = bl.Rise(reference=np.array([np.nan if r[4] else 2.0 for r in rows]), reference_time=np.full(n, t - 7200),
                   latest=np.full(n, 5.0), latest_time=np.full(n, t), rise=np.full(n, 3.0),
                   alert=np.array([r[6] for r in rows]), latest_complete=np.array([r[7] for r in rows]))
    for i, r in enumerate(people):
        for kind in (AlertKind.SPO2_BELOW_BASELINE, AlertKind.TEMPERATURE_ABOVE_BASELINE):
            whole = residents._deviation_finding(kind, r, base, dev, i, "SpO2", "%", "below", 4.0, T0)
            _same(residents._deviation_finding(kind, r, base, dev, i, "SpO2", "%", "below", 4.0, T0, kinds[i]),
                  whole, kinds[i])
        _same(residents._rise_finding(r, rise, i, T0, kinds[i]), residents._rise_finding(r, rise, i, T0), kinds[i])


#: one resident's history for the batch test: (baseline SpO2, baseline temperature, older sets 0-12, recent sets
#: 0-3, SpO2 drop, fever, on oxygen, NEWS2 of the older sets and the first recent one, NEWS2 of the later recent
#: ones, newest complete)
history = st.tuples(st.integers(90, 98), st.integers(360, 372), st.integers(0, 12), st.integers(0, 3),
                    st.sampled_from([0, 2, 3, 5]), st.sampled_from([0, 0.5, 1.2]), st.booleans(),
                    st.integers(0, 3), st.integers(0, 7), st.booleans())


def _columns(people: list[tuple[Any, ...]], now: datetime) -> Any:
    """The residents' sets as the evaluation gives them to ``_baseline_findings`` (older ones hourly before the
    last day, recent ones in the last hours), from the drawn histories."""
    from carewatch.scoring.loading import SetColumns

    pairs = []
    obs_id = 0
    for row, (spo2, temp, older, recent, drop, fever, oxygen, old_score, new_score, complete) in enumerate(people):
        for k in range(older + recent):
            is_recent = k >= older
            taken = now - (timedelta(hours=3 * (older + recent - k)) if is_recent else timedelta(days=2, hours=7 * k))
            obs_id += 1
            pairs.append((row, StoredSet(
                obs_id, taken, "device", None,
                {"spo2": float(spo2 - (drop if is_recent else k % 2)), "temperature": (temp + k % 3) / 10
                 + (fever if is_recent else 0)},
                on_oxygen=oxygen and k % 4 == 0, score=new_score if k > older else old_score,
                complete=complete or k < older + recent - 1)))
    return SetColumns.of_sets(pairs)


@settings(max_examples=150, deadline=None)
@given(st.lists(history, min_size=1, max_size=6), st.lists(KINDS, min_size=6, max_size=6))
def test_the_batch_builds_only_the_baseline_findings_that_can_change_something(
        people: list[tuple[Any, ...]], kinds: list[set[AlertKind]]) -> None:
    """``_baseline_findings`` given the open kinds picks, for the batch at once, the rows that raise or have the
    kind open: exactly the findings, built whole, that the old path kept (every other one was a brief clear or
    hold, dropped before ``apply_findings``), in the same order."""
    now = T0 + timedelta(days=20)
    facts = [ResidentFacts(f"r{i}", "s1", f"Resident {i}") for i in range(len(people))]
    open_kinds = {r.resident_id: kinds[i] for i, r in enumerate(facts)}
    sets = _columns(people, now)
    whole = residents._baseline_findings(facts, sets, now)
    chosen = residents._baseline_findings(facts, sets, now, open_kinds)
    assert chosen == [f for f in whole if f.state == "raise" or f.kind in open_kinds[f.subject_id]]
    assert not any(f.brief for f in chosen)


# ------------------------------------------------------------------------------------------------------------
# The engine on real data: two databases, one script
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def twin(pg_server: str) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    with fresh_database(pg_server, "brief") as new_dsn, fresh_database(pg_server, "whole") as old_dsn, \
            psycopg.connect(new_dsn) as new, psycopg.connect(old_dsn) as old:
        yield new, old


_TABLES = {
    "alerts": "SELECT * FROM alerts ORDER BY alert_id",
    "alert_events": "SELECT * FROM alert_events ORDER BY event_id",
    "alert_suppressions": "SELECT * FROM alert_suppressions ORDER BY suppression_id",
    "incidents": "SELECT * FROM incidents ORDER BY incident_id",
    "incident_events": "SELECT * FROM incident_events ORDER BY event_id",
    "resident_state": "SELECT * FROM resident_state ORDER BY resident_id",
    "observation_sets": "SELECT * FROM observation_sets ORDER BY obs_id",
}
#: columns set from the database's own clock (not the evaluation's ``now``): they differ between the twins
_WALL_CLOCK = {"created_at", "stored_at", "recorded_at"}


def _rows(conn: psycopg.Connection, table: str) -> list[dict[str, Any]]:
    cur = conn.execute(_TABLES[table])
    names = [c.name for c in cur.description or ()]
    return [{k: v for k, v in zip(names, row, strict=True) if k not in _WALL_CLOCK} for row in cur.fetchall()]


def _world(conn: psycopg.Connection, rng: random.Random, start: datetime) -> list[str]:
    site = add_site(conn, "home-1")
    conn.execute("ALTER TABLE observation_sets DROP CONSTRAINT obs_spo2_plausible")  # legacy rows (H-DATA-01)
    ids = []
    for i in range(10):
        rid = add_resident(conn, site, f"res-{i}", scale2=i == 3, baseline_confused=i in (4, 5),
                           obs_per_day=rng.choice([1, 2, 4]), created_at=start - timedelta(days=20))
        if i == 6:
            conn.execute("UPDATE residents SET oxygen_prescribed = true, oxygen_set_by = %s, oxygen_set_at = %s "
                         "WHERE resident_id = %s", ("dr.x", start, rid))
        add_device(conn, site, f"ox-{rid}", "oximeter", resident=rid)
        add_device(conn, site, f"th-{rid}", "thermometer", resident=rid)
        add_device(conn, site, f"bp-{rid}", "bp_cuff", resident=rid)
        ids.append(rid)
    return ids


def _step(conn: psycopg.Connection, rng: random.Random, ids: list[str], now: datetime) -> None:
    """One hour of the home: device rounds (some poor, some flagged), staff sets with soft signs, a typing error,
    acknowledgements, resolutions, snoozes, monitoring paused and resumed; then evaluations and a tick."""
    site = "home-1"
    touched = []
    for rid in ids:
        x = rng.random()
        if x < 0.45:  # a device round, sometimes deteriorating
            at = now - timedelta(minutes=rng.randint(0, 40))
            ill = rng.random() < 0.3
            add_reading(conn, site, rid, f"ox-{rid}", "spo2", rng.choice([97, 95, 93]) - (6 if ill else 0), at,
                        ("questionable",) if rng.random() < 0.1 else ())
            add_reading(conn, site, rid, f"ox-{rid}", "pulse_rate", rng.choice([72, 88, 104]) + (25 if ill else 0),
                        at + timedelta(seconds=20))
            if rng.random() < 0.6:
                add_reading(conn, site, rid, f"th-{rid}", "temperature", 36.8 + (1.6 if ill else 0) +
                            rng.choice([0, 0.2, -0.3]), at + timedelta(minutes=2))
            if rng.random() < 0.5:
                add_reading(conn, site, rid, f"bp-{rid}", "systolic_bp", rng.choice([128, 110, 96]), at +
                            timedelta(minutes=3))
            touched.append(rid)
        elif x < 0.6:  # staff complete the round on the tablet, or record a set of their own
            at = now - timedelta(minutes=rng.randint(0, 30))
            score = rng.choice([0, 1, 3, 5, 8])
            risk = {0: "low", 1: "low", 3: "low-medium", 5: "medium", 8: "high"}[score]
            add_manual_set(conn, site, rid, at, score=score, risk=risk, complete=rng.random() < 0.8,
                           soft_signs=tuple(rng.sample(["new_confusion", "off_food", "pain"], rng.randint(0, 2))),
                           consciousness=rng.choice(["A", "A", "C", None]),
                           respiration_rate=rng.choice([16, 22, 26]), spo2=rng.choice([97, 93, 90]),
                           systolic_bp=rng.choice([125, 100]), pulse=rng.choice([75, 95, 120]),
                           temperature=rng.choice([36.9, 38.4]))
            touched.append(rid)
        elif x < 0.63:  # a typing error: a set that cannot be scored (H-DATA-01), corrected next hour
            add_manual_set(conn, site, rid, now - timedelta(minutes=5), spo2=140)
            touched.append(rid)
    conn.commit()
    # staff act on some open alerts
    for alert_id, status in conn.execute(
            "SELECT alert_id, status FROM alerts WHERE status <> 'resolved' ORDER BY alert_id").fetchall():
        y = rng.random()
        with contextlib.suppress(lifecycle.AlertLifecycleError):
            if y < 0.15 and status == "open":
                lifecycle.acknowledge(conn, alert_id, "nurse", at=now)
            elif y < 0.22:
                lifecycle.resolve(conn, alert_id, "nurse", "seen and settled", at=now)
    if rng.random() < 0.2:
        rid = rng.choice(ids)
        with contextlib.suppress(lifecycle.AlertLifecycleError):
            lifecycle.snooze(conn, Subject("resident", rid), site, rng.choice([None, "soft_signs", "news2"]),
                             "nurse", "known, GP aware", now + timedelta(hours=6), at=now)
    if rng.random() < 0.1:
        rid = rng.choice(ids)
        conn.execute("UPDATE residents SET monitoring = CASE WHEN monitoring = 'active' THEN 'paused' "
                     "ELSE 'active' END WHERE resident_id = %s", (rid,))
        touched.append(rid)
    conn.commit()
    evaluate_subjects(conn, sorted(set(touched)), now)
    evaluate_subjects(conn, ids, now + timedelta(minutes=1))  # every resident, as a backlog would
    tick(conn, now + timedelta(minutes=2), slow=False)
    conn.commit()


def test_the_engine_writes_the_same_rows_with_brief_findings(twin, monkeypatch) -> None:
    new, old = twin
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    worlds = []
    for conn in (new, old):
        worlds.append(_world(conn, random.Random(19), start))
        conn.commit()
    ids = worlds[0]
    rng_new, rng_old = random.Random(1900), random.Random(1900)
    for hour in range(72):
        now = start + timedelta(hours=hour)
        for flag in ("BRIEF_FINDINGS", "FAST_PLANNING"):
            monkeypatch.setattr(residents, flag, True)
        _step(new, rng_new, ids, now)
        for flag in ("BRIEF_FINDINGS", "FAST_PLANNING"):
            monkeypatch.setattr(residents, flag, False)
        _step(old, rng_old, ids, now)
        if hour % 12 == 11:
            for table in _TABLES:
                assert _rows(new, table) == _rows(old, table), f"{table} differs after hour {hour}"
    counts = {t: len(_rows(new, t)) for t in _TABLES}
    # the script reaches the paths that matter: alerts opened, updated, resolved, recovered, snoozed
    assert counts["alerts"] > 20 and counts["alert_events"] > 60 and counts["incidents"] > 5
    actions = {r["action"] for r in _rows(new, "alert_events")}
    assert {"opened", "updated", "auto_resolved", "resolved", "acknowledged"} <= actions, actions
