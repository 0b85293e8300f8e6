"""Residents: device rounds -> observation sets -> NEWS2 -> findings -> alerts, and each resident's current state.

``evaluate_residents`` runs for a batch of residents whose locks the caller holds; ``overdue_pass`` is the
time-based part (observations overdue). Writes ``resident_state`` (this module is its one writer); observation
sets go through ``scoring/observation_sets.py`` and alerts through ``scoring/lifecycle.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
from numpy.typing import NDArray

from carewatch.alerts import AlertKind, Severity
from carewatch.db import any_of, text_array
from carewatch.scoring import baselines as bl
from carewatch.scoring.batches import EvaluationSummary, lock_subjects, transaction
from carewatch.scoring.incident_store import open_clinical_incidents
from carewatch.scoring.lifecycle import apply_findings, findings_that_change, open_alert_kinds, resolve_open_alerts
from carewatch.scoring.loading import (
    FULL_SETS,
    ROUND_LOOKBACK,
    SUBSCORE_ONLY,
    SetColumns,
    load_light_sets,
    load_recent_sets,
    load_residents,
    load_sets,
    load_vitals,
    reload_recent_sets,
)
from carewatch.scoring.memory import SetHistoryMemory, load_inputs, load_older_sets, reload_remembered_sets
from carewatch.scoring.news2 import InvalidObservation, News2Result, score_observations
from carewatch.scoring.observation_sets import (
    ObservationSetRow,
    write_planned_sets,
)
from carewatch.scoring.rules import (
    NUMERIC_SET_FIELDS,
    Finding,
    ResidentFacts,
    SetPlan,
    StoredSet,
    build_rounds,
    clear_alert,
    data_fault_cleared,
    data_fault_finding,
    first_round_settled,
    hold,
    iso,
    local_time,
    news2_can_change,
    news2_finding,
    plan_observation_sets,
    raise_alert,
    sbard,
    settled_rounds,
    soft_signs_finding,
    text_wanted,
)
from carewatch.scoring.schedule import (
    OVERDUE_GRACE,
    LastObservation,
    first_obs_due,
    overdue_can_change,
    overdue_finding,
)
from carewatch.scoring.tasks import next_obs_and_reason
from carewatch.subjects import Subject, SubjectKind
from carewatch.wire import ImplausibleValue

log = logging.getLogger("carewatch.scoring.residents")

#: Build the text of a clear or hold finding only for a kind with an alert open (``rules.text_wanted``), and drop
#: the findings that can change nothing before ``apply_findings`` (H-ALERT-13). False: every finding built whole,
#: the path before issue 19 part 0, kept for the equivalence test (tests/scoring/test_brief_findings.py).
BRIEF_FINDINGS = True
#: Round planning's fast path (``plan_observation_sets(fast=...)``); False merges every round, for the same test.
FAST_PLANNING = True


def _write_sets(conn: psycopg.Connection, writes: Sequence[tuple[ResidentFacts, SetPlan, News2Result]]) -> None:
    """The batch's planned sets, in three statements (``write_planned_sets``)."""
    superseded: list[int] = []
    updates: list[tuple[int, ObservationSetRow]] = []
    inserts: list[ObservationSetRow] = []
    for resident, plan, result in writes:
        if plan.supersedes is not None:
            superseded.append(plan.supersedes)
        # only the round's values: a staff set keeps its own consciousness, oxygen, soft signs and note
        row = ObservationSetRow(
            resident_id=resident.resident_id, site_id=resident.site_id, taken_at=plan.taken_at,
            recorded_by=plan.recorded_by, source=plan.source, values=plan.values, result=result,
            spo2_scale=plan.spo2_scale, inputs=plan.inputs, round_key=plan.round_key, on_oxygen=plan.on_oxygen)
        if plan.obs_id is None:
            inserts.append(row)
        else:
            updates.append((plan.obs_id, row))
    write_planned_sets(conn, superseded, updates, inserts)


def _score_sets(sets: Sequence[StoredSet | SetPlan]) -> list[News2Result] | None:
    observations = [
        s.observation() if isinstance(s, SetPlan) else {
            **s.values, "consciousness": s.consciousness, "on_oxygen": s.on_oxygen, "spo2_scale": s.spo2_scale}
        for s in sets
    ]
    try:
        return score_observations(observations)
    except (InvalidObservation, ImplausibleValue) as exc:
        log.error("observation set cannot be scored: %s", exc)
        return None


def _baseline_findings(residents: Sequence[ResidentFacts], sets: SetColumns, now: datetime,
                       open_kinds: Mapping[str, Container[AlertKind]] | None = None) -> list[Finding]:
    """SpO2 below, temperature above the resident's own baseline, and NEWS2 rising: one 2-D pass per rule for
    all the residents at once (``sets``: their history as columns, ``row`` = index in ``residents``).
    ``open_kinds``: each resident's open alert kinds; given, only the findings that can change something are
    built: those that raise, and those of a kind open for the resident (the others would be brief clears or holds,
    dropped before ``apply_findings``: H-ALERT-13), the choice made for the batch at once. None: every finding,
    built whole."""
    t_now, rows = now.timestamp(), len(residents)
    spo2 = sets.values["spo2"]
    temperature = sets.values["temperature"]
    out: list[Finding] = []
    for kind, keep, column, direction, delta, label, unit in (
        (AlertKind.SPO2_BELOW_BASELINE, ~np.isnan(spo2) & ~sets.on_oxygen, spo2, "below", bl.SPO2_DROP_POINTS,
         "SpO2", "%"),
        (AlertKind.TEMPERATURE_ABOVE_BASELINE, ~np.isnan(temperature), temperature, "above", bl.TEMPERATURE_RISE_C,
         "temperature", " °C"),
    ):
        values, times = sets.padded(rows, keep, column, sets.taken)
        base = bl.rolling_baselines(values, times, t_now)
        # direction is "below" or "above" (the tuple above); mypy widens the loop's strings to str
        dev = bl.sustained_deviation(values, times, base, t_now, direction=direction, delta=delta)  # type: ignore[arg-type]
        # a deviation raises only when measured on a trusted baseline with an alerting run
        raising = dev.alert & base.trusted & ~np.isnan(dev.latest_value)
        for i in _rows_to_build(residents, kind, raising, open_kinds):
            out.append(_deviation_finding(kind, residents[i], base, dev, i, label, unit, direction, delta, now))
    scored = ~np.isnan(sets.score)
    scores, times = sets.padded(rows, scored, sets.score, sets.taken)
    (complete,) = sets.padded(rows, scored, sets.complete, fill=False)
    rise = bl.news2_rise(scores, times, complete, t_now)
    for i in _rows_to_build(residents, AlertKind.NEWS2_RISING, rise.alert & ~np.isnan(rise.reference), open_kinds):
        out.append(_rise_finding(residents[i], rise, i, now))
    return out


def _rows_to_build(residents: Sequence[ResidentFacts], kind: AlertKind, raising: NDArray[np.bool_],
                   open_kinds: Mapping[str, Container[AlertKind]] | None) -> Iterable[int]:
    """The batch rows whose ``kind`` finding can change something: every row when ``open_kinds`` is None (the
    whole path), else those that raise (``raising``, one mask for the batch) and those with ``kind`` open."""
    if open_kinds is None:
        return range(len(residents))
    return sorted({*np.flatnonzero(raising).tolist(),
                   *(i for i, r in enumerate(residents) if kind in open_kinds.get(r.resident_id, ()))})


def _usual_news2(rows: int, sets: SetColumns, now: datetime) -> bl.UsualNews2:
    """Each resident's usual values and subscores from their complete sets (H-OBS-09), all in one 2-D pass."""
    grids = sets.padded(rows, sets.complete, sets.taken, *(sets.values[n] for n in NUMERIC_SET_FIELDS),
                        *(sets.subscores[n] for n in SUBSCORE_ONLY))
    times, columns = grids[0], dict(zip([*NUMERIC_SET_FIELDS, *SUBSCORE_ONLY], grids[1:], strict=True))
    return bl.usual_news2({n: columns[n] for n in NUMERIC_SET_FIELDS}, {n: columns[n] for n in SUBSCORE_ONLY},
                          times, now.timestamp())


def _history_columns(active: Sequence[ResidentFacts], light: SetColumns, history: Mapping[str, list[StoredSet]],
                     set_aside: set[int], now: datetime, memory: SetHistoryMemory | None = None) -> SetColumns:
    """Every set of the batch's 15 days as columns: the older ones as loaded (``light``), the recent ones from
    the whole sets (which the evaluation may have rewritten), less the sets that cannot be scored (``set_aside``).
    ``memory``: a resident's recent sets still those it holds are taken as the columns it keeps of them (no
    per-set work for a resident whose recent sets did not change)."""
    recent = now - FULL_SETS
    index = {r.resident_id: i for i, r in enumerate(active)}
    pairs: list[tuple[int, StoredSet]] = []
    kept: list[SetColumns] = []  # row 0: their rows are ``kept_rows``
    kept_rows: list[int] = []
    for rid, sets in history.items():
        if rid not in index:
            continue
        columns = None if memory is None else memory.recent_columns(rid, sets)
        if columns is not None and all(s.taken_at > recent for s in sets):
            kept.append(columns)
            kept_rows.append(index[rid])
        else:
            pairs.extend((index[rid], s) for s in sets if s.taken_at > recent)
    fresh = SetColumns.of_sets(pairs)
    row = np.concatenate([light.row, fresh.row, np.repeat(np.array(kept_rows, dtype=np.int64),
                                                          [len(c.row) for c in kept])])
    whole = SetColumns.join([light, fresh, *kept], row)
    return whole.select(~np.isin(whole.obs_id, list(set_aside))) if set_aside else whole


def _deviation_finding(kind: AlertKind, r: ResidentFacts, base: bl.Baselines, dev: bl.Deviation, i: int,
                       label: str, unit: str, direction: str, delta: float, now: datetime,
                       open_kinds: Container[AlertKind] | None = None) -> Finding:
    rid, site = r.resident_id, r.site_id
    measured = bool(base.trusted[i]) and not np.isnan(dev.latest_value[i])
    if not (measured and dev.alert[i]) and not text_wanted(kind, open_kinds):  # a clear or hold, nothing to change
        return (clear_alert if measured and dev.run_length[i] == 0 else hold)(kind, rid, site, "", resident_id=rid,
                                                                             brief=True)
    if not base.trusted[i]:
        return hold(kind, rid, site, f"baseline from {int(base.count[i])} values, not yet trusted", resident_id=rid)
    if np.isnan(dev.latest_value[i]):
        return hold(kind, rid, site, resident_id=rid)
    median, mad = float(base.median[i]), float(base.mad[i])
    if not dev.alert[i]:
        if dev.run_length[i] == 0:
            return clear_alert(kind, rid, site, f"{label} {dev.latest_value[i]:g}{unit} is within {delta:g} of the "
                               f"usual {median:g}{unit}.", resident_id=rid)
        return hold(kind, rid, site, "one deviating value: waiting for a second", resident_id=rid)
    started = datetime.fromtimestamp(float(dev.run_start[i]), UTC)
    latest = datetime.fromtimestamp(float(dev.latest_time[i]), UTC)
    reason = (f"{label} {dev.latest_value[i]:g}{unit} at {local_time(latest)} is {abs(dev.deviation[i]):.1f} "
              f"{'points below' if direction == 'below' else 'above'} {r.display_name}'s usual {median:g}{unit} "
              f"(median of {int(base.count[i])} readings over 14 days); {int(dev.run_length[i])} readings in a row "
              f"since {local_time(started)}.")
    if kind is AlertKind.SPO2_BELOW_BASELINE:
        action = ("Take a full set of observations now (NEWS2) and look for a chest infection or breathlessness. "
                  "Contact the GP today; sooner if NEWS2 is 5 or more or they are getting worse.")
    else:
        action = ("Take a full set of observations now (NEWS2); look for infection (chest, urine, skin), offer "
                  "fluids. Contact the GP today; sooner if NEWS2 is 5 or more or they are getting worse.")
    data = {
        "baseline_median": median, "baseline_mad": mad, "baseline_count": int(base.count[i]),
        "latest": float(dev.latest_value[i]), "latest_at": iso(latest), "run_length": int(dev.run_length[i]),
        "sbard": sbard(f"{r.display_name}: {label} {dev.latest_value[i]:g}{unit}, usual {median:g}{unit}.",
                       r.background(now), [reason], action),
    }
    return raise_alert(kind, rid, site, Severity.LOW, reason, action, resident_id=rid, data=data)


def _rise_finding(r: ResidentFacts, rise: bl.Rise, i: int, now: datetime,
                  open_kinds: Container[AlertKind] | None = None) -> Finding:
    kind, rid, site = AlertKind.NEWS2_RISING, r.resident_id, r.site_id
    if not text_wanted(kind, open_kinds) and (np.isnan(rise.reference[i]) or not rise.alert[i]):
        return (hold if np.isnan(rise.reference[i]) or not rise.latest_complete[i] else clear_alert)(
            kind, rid, site, "", resident_id=rid, brief=True)
    if np.isnan(rise.reference[i]):
        return hold(kind, rid, site, "no complete set in the previous 24 h to compare with", resident_id=rid)
    latest_at = datetime.fromtimestamp(float(rise.latest_time[i]), UTC)
    ref_at = datetime.fromtimestamp(float(rise.reference_time[i]), UTC)
    if not rise.alert[i]:
        if not rise.latest_complete[i]:  # a partial set's total can only be an underestimate (H-BASE-04)
            return hold(kind, rid, site, "newest set is incomplete: it cannot show that NEWS2 has come down",
                        resident_id=rid)
        return clear_alert(kind, rid, site, f"NEWS2 {rise.latest[i]:g} at {local_time(latest_at)}, not 2 above "
                           f"{rise.reference[i]:g} at {local_time(ref_at)}.", resident_id=rid)
    reason = (f"NEWS2 has risen from {rise.reference[i]:g} ({local_time(ref_at)}) to {rise.latest[i]:g} "
              f"({local_time(latest_at)}): up {rise.rise[i]:g} in 24 h.")
    action = ("Tell the nurse or senior carer. Look for what has changed (infection, dehydration, pain, new "
              "medicines) and repeat the observations within 4 hours or as the NEWS2 band says.")
    data = {"from": float(rise.reference[i]), "to": float(rise.latest[i]), "from_at": iso(ref_at),
            "to_at": iso(latest_at),
            "sbard": sbard(f"{r.display_name}: NEWS2 up from {rise.reference[i]:g} to {rise.latest[i]:g}.",
                           r.background(now), [reason], action)}
    return raise_alert(kind, rid, site, Severity.LOW, reason, action, resident_id=rid, data=data,
                       score=int(rise.latest[i]))


def evaluate_residents(conn: psycopg.Connection, residents: Sequence[ResidentFacts], now: datetime,
                        summary: EvaluationSummary, latency: list[tuple[int, datetime]],
                        memory: SetHistoryMemory | None = None) -> None:
    """Rounds -> sets -> scores -> findings for residents of one site. Caller holds the locks. ``memory``: the
    scorer replica's set history (``scoring/memory.py``), or None to load it all."""
    active = [r for r in residents if r.monitoring == "active"]
    for r in residents:
        if r.monitoring != "active":
            resolve_open_alerts(conn, now, f"Monitoring is {r.monitoring}: alerts closed.",
                                resident_id=r.resident_id, summary=summary)
    if not active:
        return
    ids = [r.resident_id for r in active]
    clock = time.perf_counter()
    if memory is not None:
        light = load_older_sets(conn, active, now, memory)
        vitals, history = load_inputs(conn, active, now, memory, light) if memory.inputs else (
            load_vitals(conn, ids, now), load_recent_sets(conn, ids, now, light))
    else:
        light = load_light_sets(conn, ids, now)
        vitals, history = load_vitals(conn, ids, now), load_recent_sets(conn, ids, now, light)
    clock = _lap(summary, "load_s", clock)
    newest_stored: dict[str, datetime | None] = {}
    planned: list[tuple[ResidentFacts, list[SetPlan]]] = []
    for r in active:
        # plan_observation_sets is a pure function of the rounds, the sets and these: the same rows, the same plans
        key = None if memory is None or not memory.inputs else memory.plan_key(
            r.resident_id, now, r.scale2, r.oxygen_prescribed, FAST_PLANNING,
            first_round_settled(vitals[r.resident_id], now - ROUND_LOOKBACK))
        known = None if memory is None or key is None else memory.known_plans(r.resident_id, key)
        if known is None:
            rounds = settled_rounds(build_rounds(vitals[r.resident_id]), now - ROUND_LOOKBACK)
            newest = max((x.newest_stored_at for x in rounds if x.newest_stored_at), default=None)
            recent = [s for s in history[r.resident_id] if s.taken_at > now - ROUND_LOOKBACK - timedelta(hours=1)]
            plans = plan_observation_sets(rounds, recent, scale2=r.scale2, oxygen=r.oxygen_prescribed,
                                          fast=FAST_PLANNING)
            if memory is not None and key is not None:
                memory.remember_plans(r.resident_id, key, plans, newest)
        else:
            plans, newest = known
        newest_stored[r.resident_id] = newest
        if plans:
            planned.append((r, plans))
    writes = _score_plans(planned, summary)
    clock = _lap(summary, "rules_s", clock)
    if writes:
        _write_sets(conn, writes)
        summary.observation_sets_written += len(writes)
        clock = _lap(summary, "write_s", clock)
        written = sorted({r.resident_id for r, _, _ in writes})
        if memory is not None and memory.inputs:
            reload_remembered_sets(conn, history, written, now, memory)
        else:
            reload_recent_sets(conn, history, written, now)
        clock = _lap(summary, "load_s", clock)

    findings: list[Finding] = []
    # Isolation (H-DATA-01): a newest set that cannot be scored is named in a data-fault finding and set aside, so
    # this resident is judged on their last good set and everyone else in the batch is scored as usual.
    open_clinical = open_clinical_incidents(conn, ids)
    clock = _lap(summary, "load_s", clock)
    latest_results, faults, set_aside = _score_latest(history, lambda rid: load_sets(conn, [rid], now)[rid])
    sets = _history_columns(active, light, history, set_aside, now, memory)
    usual = _usual_news2(len(active), sets, now)
    latest_sets = {rid: sets[-1] for rid, sets in history.items() if sets}
    # Each resident's open alert kinds (read under the caller's locks: only the scorer opens a resident's alerts,
    # holding them): a clear or hold finding of any other kind changes nothing and is built without its text.
    open_kinds: dict[str, set[AlertKind]] | None = None
    if BRIEF_FINDINGS:
        open_kinds = {rid: set() for rid in ids}
        for subject, open_now in open_alert_kinds(conn, [Subject(SubjectKind.RESIDENT, rid) for rid in ids]).items():
            open_kinds[subject.id] = {AlertKind(k) for k in open_now}
    index = {r.resident_id: i for i, r in enumerate(active)}
    by_id = {r.resident_id: r for r in active}
    states: list[tuple[object, ...]] = []
    for rid, (bad, problems) in faults.items():
        findings.append(data_fault_finding(by_id[rid], bad, problems, now))
        summary.errors[rid] = f"observation set {bad.obs_id} cannot be scored: " + "; ".join(problems.values())
    for r in active:
        rid = r.resident_id
        kinds = None if open_kinds is None else open_kinds[rid]
        if rid not in faults and text_wanted(AlertKind.DATA_FAULT, kinds):  # (else a brief clear: H-ALERT-13)
            findings.append(data_fault_cleared(r, kinds))
        obs = latest_sets.get(rid)
        result = latest_results.get(rid)
        due: datetime | None
        if obs is not None and result is not None:
            if news2_can_change(result, kinds):  # (else a brief clear or hold: H-ALERT-13)
                findings.append(news2_finding(r, obs, result, now, kinds))
            stable = result.complete and result.score > 0 and bl.at_usual(dict(result.subscores),
                                                                          dict(obs.values), usual, index[rid])
            due, why = next_obs_and_reason(result.response, result.score, result.complete, r.obs_per_day,
                                           obs.taken_at, at_usual=stable)
            last = LastObservation(obs.taken_at, result.score, result.risk.value, result.complete, result.missing)
            states.append(_state_row(r, now, obs, result, due, why))
        else:
            due, last = (first_obs_due(r.created_at, r.obs_per_day) if r.created_at else None), None
            states.append(_state_row(r, now, None, None, due, "first_set"))
        findings.append(soft_signs_finding(r, history.get(rid, []), now, kinds))
        if overdue_can_change(due, last, now, open_clinical=rid in open_clinical, open_kinds=kinds):
            findings.append(overdue_finding(r, due, last, now, open_clinical=rid in open_clinical,
                                            open_kinds=kinds))
    findings.extend(_baseline_findings(active, sets, now, open_kinds))
    # every subject with a clear or raise finding is grouped into its incident, as before the brief findings: that
    # is every active resident (each has a data_fault clear or raise), with or without the brief clears built;
    # then only the findings that can change something go on (holds and brief clears change nothing: H-ALERT-13)
    judged = ({Subject(SubjectKind.RESIDENT, rid) for rid in ids} if BRIEF_FINDINGS
              else {f.subject for f in findings if f.state != "hold"})
    findings = [f for f in findings if f.state != "hold" and not f.brief]
    # the newest contributing reading's stored_at, for the stored-to-alert latency (only raised findings use it)
    stamped = [replace(f, evidence_stored_at=newest_stored.get(f.subject_id))
               if f.state == "raise" and newest_stored.get(f.subject_id) is not None else f for f in findings]
    clock = _lap(summary, "rules_s", clock)
    _upsert_states(conn, states)
    apply_findings(conn, stamped, now, summary, latency=latency, subjects=judged)
    _lap(summary, "write_s", clock)


def _lap(summary: EvaluationSummary, part: str, since: float) -> float:
    """Add the time since ``since`` to the summary's ``part`` (load_s, rules_s, write_s); returns now."""
    now = time.perf_counter()
    setattr(summary, part, getattr(summary, part) + now - since)
    return now


def _score_plans(planned: Sequence[tuple[ResidentFacts, list[SetPlan]]],
                 summary: EvaluationSummary) -> list[tuple[ResidentFacts, SetPlan, News2Result]]:
    """Every planned set of the batch scored in one vectorised call; if that fails, resident by resident, so a
    resident whose device readings cannot be scored is named and the others' sets are still written."""
    flat = [plan for _, plans in planned for plan in plans]
    results = _score_sets(flat) if flat else []
    if results is not None:
        it = iter(results)
        return [(r, plan, next(it)) for r, plans in planned for plan in plans]
    out: list[tuple[ResidentFacts, SetPlan, News2Result]] = []
    for r, plans in planned:
        one = _score_sets(plans)
        if one is None:
            summary.errors[r.resident_id] = "device readings could not be scored (see log)"
            continue
        out.extend((r, plan, result) for plan, result in zip(plans, one, strict=True))
    return out


def _score_latest(history: dict[str, list[StoredSet]], older: Callable[[str], list[StoredSet]],
                  ) -> tuple[dict[str, News2Result], dict[str, tuple[StoredSet, Mapping[str, str]]], set[int]]:
    """Score each resident's newest set, all at once; if that fails, one by one: a set that cannot be scored is
    taken out of ``history`` (so the resident is judged on their last good set) and returned with its problems,
    and its id in the set-aside ids. ``history`` holds the recent sets; when a resident's run out, ``older(rid)``
    gives their whole history (loaded only on this rare path)."""
    latest = {rid: sets[-1] for rid, sets in history.items() if sets}
    results = _score_sets(list(latest.values())) if latest else []
    if results is not None:
        return dict(zip(latest, results, strict=True)), {}, set()
    out: dict[str, News2Result] = {}
    faults: dict[str, tuple[StoredSet, Mapping[str, str]]] = {}
    set_aside: set[int] = set()
    for rid, sets in history.items():
        reloaded = False
        while sets:
            try:
                out[rid] = score_observations([_observation(sets[-1])])[0]
                break
            except (InvalidObservation, ImplausibleValue) as exc:
                bad = sets.pop()
                if bad.obs_id is not None:
                    set_aside.add(bad.obs_id)
                faults.setdefault(rid, (bad, dict(getattr(exc, "problems", {}) or {"set": str(exc)})))
                if not sets and not reloaded:
                    reloaded = True
                    sets.extend(s for s in older(rid) if s.obs_id not in set_aside)
    return out, faults, set_aside


def _observation(s: StoredSet) -> dict[str, object]:
    return {**s.values, "consciousness": s.consciousness, "on_oxygen": s.on_oxygen, "spo2_scale": s.spo2_scale}


def _state_row(r: ResidentFacts, now: datetime, obs: StoredSet | None, result: News2Result | None,
               due: datetime | None, why: str | None = None) -> tuple[object, ...]:
    return (r.resident_id, r.site_id, result.score if result else None, result.risk.value if result else None,
            result.complete if result else None, obs.taken_at if obs else None, obs.obs_id if obs else None, due,
            why, now)


def _upsert_states(conn: psycopg.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Every evaluated resident's state row, in one statement; a row whose state is unchanged is left as it is
    (``updated_at``: when the state last changed; no reader takes it for the scorer's liveness, which is
    ``scorer_buckets.scored_at``), so a pass over residents with nothing new writes no row."""
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    conn.execute(
        """INSERT INTO resident_state (resident_id, site_id, news2_score, news2_risk, news2_complete, news2_at,
                                       last_obs_id, next_obs_due, next_obs_why, updated_at)
           SELECT * FROM unnest(%b::text[], %b::text[], %b::int[], %b::text[], %b::bool[], %b::timestamptz[],
                                %b::bigint[], %b::timestamptz[], %b::text[], %b::timestamptz[])
           ON CONFLICT (resident_id) DO UPDATE SET site_id = EXCLUDED.site_id,
               news2_score = EXCLUDED.news2_score, news2_risk = EXCLUDED.news2_risk,
               news2_complete = EXCLUDED.news2_complete, news2_at = EXCLUDED.news2_at,
               last_obs_id = EXCLUDED.last_obs_id, next_obs_due = EXCLUDED.next_obs_due,
               next_obs_why = EXCLUDED.next_obs_why, updated_at = EXCLUDED.updated_at
           WHERE (resident_state.site_id, resident_state.news2_score, resident_state.news2_risk,
                  resident_state.news2_complete, resident_state.news2_at, resident_state.last_obs_id,
                  resident_state.next_obs_due, resident_state.next_obs_why)
                 IS DISTINCT FROM (EXCLUDED.site_id, EXCLUDED.news2_score, EXCLUDED.news2_risk,
                                   EXCLUDED.news2_complete, EXCLUDED.news2_at, EXCLUDED.last_obs_id,
                                   EXCLUDED.next_obs_due, EXCLUDED.next_obs_why)""",
        [list(c) for c in columns],
    )


# ------------------------------------------------------------------------------------------------------------
# Observations overdue (tick)
# ------------------------------------------------------------------------------------------------------------
def _overdue_findings(conn: psycopg.Connection, now: datetime, resident_ids: Sequence[str] | None = None,
                      site_ids: Sequence[str] | None = None, *, changing_only: bool = False) -> list[Finding]:
    """``changing_only``: only residents whose finding can open, update or resolve an alert - those past their due
    time and grace (``overdue_finding`` raises only then) and those with an obs_overdue alert open (a clear
    finding can only change an open alert). The others' findings would be dropped by ``findings_that_change``
    anyway; not building them keeps the fast tick from walking every resident of the estate in Python."""
    where, params = "r.monitoring = 'active'", []
    if changing_only:
        where += (" AND (coalesce((SELECT rs.next_obs_due FROM resident_state rs WHERE rs.resident_id = r.resident_id),"
                  " r.created_at + interval '24 hours' / r.obs_per_day) < %s"
                  " OR EXISTS (SELECT 1 FROM alerts a WHERE a.subject_kind = 'resident'"
                  " AND a.subject_id = r.resident_id AND a.kind = %s AND a.status <> 'resolved'))")
        params += [now - OVERDUE_GRACE, AlertKind.OBS_OVERDUE.value]
    where += any_of([("r.site_id", site_ids), ("r.resident_id", resident_ids)], params)
    residents = load_residents(conn, where, params)
    # the last set's missing parameters too: the evaluation names them in the alert text (LastObservation.missing),
    # and a tick that left them out rewrote every such alert back and forth, one alert_events row a tick
    state = {row[0]: row[1:] for row in conn.execute(
        "SELECT rs.resident_id, rs.next_obs_due, rs.news2_at, rs.news2_score, rs.news2_risk, rs.news2_complete, "
        "o.missing FROM resident_state rs LEFT JOIN observation_sets o ON o.obs_id = rs.last_obs_id "
        "WHERE rs.resident_id = ANY(%s::text[])", (text_array(r.resident_id for r in residents),))}
    findings = []
    open_clinical = open_clinical_incidents(conn, [r.resident_id for r in residents])
    for r in residents:
        due, taken, score, risk, complete, missing = state.get(r.resident_id, (None,) * 6)
        last = (LastObservation(taken, score, risk, bool(complete), tuple(missing or ()))
                if taken is not None and score is not None else None)
        if due is None:
            due = first_obs_due(r.created_at, r.obs_per_day) if r.created_at else None
        findings.append(overdue_finding(r, due, last, now, open_clinical=r.resident_id in open_clinical))
    return findings


def overdue_pass(conn: psycopg.Connection, now: datetime, summary: EvaluationSummary,
                 site_ids: Sequence[str] | None = None) -> None:
    """``site_ids``: only these sites' residents (a scorer replica's share); None = everyone."""
    # Most residents' overdue state is unchanged since the last tick: lock and write only those that change.
    changing = findings_that_change(conn, _overdue_findings(conn, now, site_ids=site_ids, changing_only=True))
    for start in range(0, len(changing), 200):
        ids = [f.subject_id for f in changing[start:start + 200]]
        with transaction(conn):
            lock_subjects(conn, ids)
            # again under the locks: an evaluation may just have recorded a set and moved next_obs_due
            apply_findings(conn, _overdue_findings(conn, now, ids), now, summary)
