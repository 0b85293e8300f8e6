"""The alert engine's entry points: evaluate what has new data, rescore everything, run the time-based rules.

``evaluate_subjects`` is the one entry point after new data (the scorer service on NOTIFY, the API after a
manual observation). ``rescore_all`` re-evaluates everything (service start-up). ``tick`` runs the rules that
depend on time passing rather than on new data: the escalation policy's next steps (``carewatch.notify``),
overdue observations, silence,
long lies, gateways offline.

The work itself lives beside this module, one responsibility each: ``loading`` (what the resident rules read),
``residents`` (sets, NEWS2, resident state), ``households`` (behaviour events and household rules), ``devices``
(devices and gateways) and ``lifecycle`` (every alert state transition and its ``alert_events`` row). Batches
and locks: ``batches`` (every subject's work runs under a transaction-level advisory lock, taken in sorted
order, so two callers never race on a subject and never deadlock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from carewatch.alerts import CLINICAL_KINDS
from carewatch.db import text_array
from carewatch.notify.escalation import escalation_pass
from carewatch.scoring.batches import EvaluationSummary, finish_latency, lock_subjects, transaction
from carewatch.scoring.devices import apply_device_findings, gateway_pass, load_changing_devices, load_devices
from carewatch.scoring.households import HOUSEHOLD_BATCH, due_by_urgency, evaluate_households, urgent_due
from carewatch.scoring.incident_store import sync_incidents
from carewatch.scoring.lifecycle import ACTOR, apply_findings, resolve_alerts_resting_on, resolve_open_alerts
from carewatch.scoring.loading import load_residents
from carewatch.scoring.memory import SetHistoryMemory
from carewatch.scoring.observation_sets import correct_staff_sets_built_from, delete_device_sets_built_from
from carewatch.scoring.residents import evaluate_residents, overdue_pass
from carewatch.scoring.rules import ResidentFacts, device_findings
from carewatch.subjects import Subject, SubjectKind, site_subject_kind, subject_key

log = logging.getLogger("carewatch.scoring.engine")

#: Residents evaluated together in one transaction (see evaluate_subjects).
RESIDENT_BATCH = 500

@dataclass
class _Classified:
    residents: list[ResidentFacts]
    households: list[str]
    devices_of: list[Subject]  # whose devices are evaluated: residents, households, care homes ('site')
    unknown: list[str]


def _classify(conn: psycopg.Connection, subjects: Iterable[Subject | str]) -> _Classified:
    """What to evaluate for the notified subjects. A (kind, id) subject is its kind only (ids are unique per kind
    only, issue 13 finding 1): a resident is evaluated as the resident, a household as the household, a care home
    ('site') for its room and kit devices. A bare id (an old NOTIFY payload, a caller naming no kind) is every kind
    it is: an id that is both a resident's and a household's is both, each on its own kind's readings."""
    bare: set[str] = set()
    named: dict[str, set[str]] = {}
    for subject in subjects:
        if isinstance(subject, str):
            bare.add(subject)
        else:
            named.setdefault(str(subject[0]), set()).add(subject[1])
    bare.discard("")
    wanted_residents = bare | named.get(SubjectKind.RESIDENT, set())
    wanted_sites = bare | named.get(SubjectKind.HOUSEHOLD, set()) | named.get(SubjectKind.SITE, set())
    residents = load_residents(conn, "r.resident_id = ANY(%s::text[])", (text_array(sorted(wanted_residents)),))
    site_kinds = {site_id: site_subject_kind(kind) for site_id, kind in conn.execute(
        "SELECT site_id, kind FROM sites WHERE site_id = ANY(%s::text[])", (text_array(sorted(wanted_sites)),))}
    found_residents = {r.resident_id for r in residents}
    sites = sorted(Subject(k.value, site_id) for site_id, k in site_kinds.items()
                   if site_id in bare or site_id in named.get(k, ()))
    households = [s.id for s in sites if s.kind == SubjectKind.HOUSEHOLD]
    unknown = set(bare - found_residents - set(households))  # (a care home's bare id too, as ever)
    unknown |= {subject_key(Subject(kind, sid)) for kind, ids in named.items() for sid in ids
                if not (sid in found_residents if kind == SubjectKind.RESIDENT else Subject(kind, sid) in sites)}
    devices_of = sorted({*(Subject(SubjectKind.RESIDENT.value, r) for r in found_residents), *sites})
    return _Classified(residents, households, devices_of, sorted(unknown))


def withdraw_device_values(conn: psycopg.Connection, resident_id: str, readings: Sequence[tuple[str, datetime]],
                           now: datetime) -> int:
    """Forget the device-round sets of ``resident_id`` built from these (device_id, measured_at) readings: they
    were moved to another resident (issue 17). A staff-saved set that took one of them is corrected: the value is
    taken out and the set scored again (staff sets are never deleted). Open alerts that rest on those sets are
    resolved saying why; the next :func:`evaluate_subjects` rebuilds rounds, scores and alerts from the readings
    still this resident's. Returns how many sets went or were corrected."""
    gone = delete_device_sets_built_from(conn, resident_id, readings)
    corrected = correct_staff_sets_built_from(conn, resident_id, readings, by="carewatch")
    resolve_alerts_resting_on(conn, resident_id, [*gone, *corrected], "The device readings behind this alert were "
                              "moved to another resident (measured with the shared kit on the wrong person).", now)
    return len(gone) + len(corrected)


def evaluate_subjects(conn: psycopg.Connection, subjects: Iterable[Subject | str], now: datetime,
                      memory: SetHistoryMemory | None = None) -> EvaluationSummary:
    """Evaluate residents and households that have new data: observation sets, scores, state and alerts, and
    their devices. ``subjects`` are (kind, id) pairs (``carewatch.subjects.Subject``, as ingest's NOTIFY payloads
    name them since payload v2): each is evaluated as its kind only. Bare ids are still accepted (NOTIFY payloads
    from ingest before v2 during a rolling upgrade, callers that name no kind) and evaluated as every kind the id
    is (``_classify``). Kinds with nothing to evaluate on new data (a kit's unassigned readings, a device, a
    gateway: the tick's) are listed in ``summary.unknown_subjects`` as ``kind:id``, with ids found as no kind.

    ``memory``: a scorer replica's set-history memory (``scoring/memory.py``); None (the API, the tick) loads every
    resident's set history from the database, as the memory's equivalence test does."""
    wanted = [s for s in subjects if s and (isinstance(s, str) or s[1])]
    summary = EvaluationSummary()
    if not wanted:
        return summary
    started = time.perf_counter()
    found = _classify(conn, wanted)
    residents, households = found.residents, found.households
    summary.unknown_subjects.extend(found.unknown)
    summary.load_s += time.perf_counter() - started
    # Residents of every site together, in batches: one transaction and a dozen queries per batch however many
    # homes a burst of readings touches (vectorised baselines across the batch); a failing batch is retried site by
    # site, then resident by resident, so one bad subject cannot block the others.
    for start in range(0, len(residents), RESIDENT_BATCH):
        _run_resident_batch(conn, residents[start:start + RESIDENT_BATCH], now, summary, memory)
    _run_household_batches(conn, households, now, summary, latency=True)
    started = time.perf_counter()
    # only the devices whose finding can change (the others' would be dropped by findings_that_change)
    devices = load_devices(conn, now, subjects=found.devices_of, changing_only=True)
    loaded = time.perf_counter()
    findings = device_findings(devices, now)
    ruled = time.perf_counter()
    apply_device_findings(conn, devices, now, summary, findings=findings)
    summary.load_s += loaded - started
    summary.rules_s += ruled - loaded
    summary.write_s += time.perf_counter() - ruled
    return summary


def _run_guarded(conn: psycopg.Connection, subjects: Sequence[str], now: datetime, summary: EvaluationSummary,
                 work: Callable[[EvaluationSummary, list[tuple[int, datetime]]], None]) -> bool:
    local = EvaluationSummary()
    latency: list[tuple[int, datetime]] = []
    try:
        with transaction(conn):
            lock_subjects(conn, subjects)
            work(local, latency)
    except psycopg.OperationalError:
        raise
    except Exception as exc:
        log.exception("evaluation failed for %s", ", ".join(subjects))
        for s in subjects:
            summary.errors[s] = f"{type(exc).__name__}: {exc}"
        return False
    finish_latency(local, latency)
    summary.merge(local)
    return True


def _run_resident_batch(conn: psycopg.Connection, group: Sequence[ResidentFacts], now: datetime,
                        summary: EvaluationSummary, memory: SetHistoryMemory | None = None) -> None:
    def work(s: EvaluationSummary, lat: list[tuple[int, datetime]], batch: Sequence[ResidentFacts]) -> None:
        try:
            evaluate_residents(conn, batch, now, s, lat, memory=memory)
        except BaseException:
            if memory is not None:  # what was stored was read in a transaction now rolled back: load it again
                memory.forget(r.resident_id for r in batch)
            raise
        s.residents += len(batch)

    ok = _run_guarded(conn, [r.resident_id for r in group], now, summary, lambda s, lat: work(s, lat, group))
    if ok or len(group) == 1:
        return
    for r in group:
        summary.errors.pop(r.resident_id, None)
    sites: dict[str, list[ResidentFacts]] = {}
    for r in group:
        sites.setdefault(r.site_id, []).append(r)
    if len(sites) > 1:
        for site_group in sites.values():
            _run_resident_batch(conn, site_group, now, summary, memory)
        return
    for r in group:
        def single(s: EvaluationSummary, lat: list[tuple[int, datetime]], resident: ResidentFacts = r) -> None:
            work(s, lat, [resident])

        _run_guarded(conn, [r.resident_id], now, summary, single)


def _run_household_batches(conn: psycopg.Connection, site_ids: Sequence[str], now: datetime,
                           summary: EvaluationSummary, *, latency: bool) -> None:
    """Households in batches, one transaction each; a failing batch is retried household by household."""
    for start in range(0, len(site_ids), HOUSEHOLD_BATCH):
        batch = list(site_ids[start:start + HOUSEHOLD_BATCH])

        def work(s: EvaluationSummary, lat: list[tuple[int, datetime]], group: Sequence[str] = batch) -> None:
            evaluate_households(conn, group, now, s, lat if latency else None)

        if not _run_guarded(conn, batch, now, summary, work) and len(batch) > 1:
            for site_id in batch:
                summary.errors.pop(site_id, None)
                def alone(s: EvaluationSummary, lat: list[tuple[int, datetime]], site: str = site_id) -> None:
                    evaluate_households(conn, [site], now, s, lat if latency else None)

                _run_guarded(conn, [site_id], now, summary, alone)


#: During a long slow-tick pass (06:00, when a night completes for every household), the households with a
#: deadline reached or a change meanwhile are looked for again at least this often (H-HOME-11).
URGENT_RECHECK_EVERY = timedelta(seconds=5)


def _run_due_households(conn: psycopg.Connection, now: datetime, summary: EvaluationSummary,
                        site_ids: Sequence[str] | None) -> None:
    """The slow tick's households: only those whose decisions can have changed (``households.due_by_urgency``,
    H-HOME-11), the urgent ones (a deadline reached, news) first, then the routine ones (the night completed, the
    cadence) a batch at a time; every URGENT_RECHECK_EVERY of the pass the urgent ones are looked for again and
    evaluated before the next batch, at the time reached (a long lie crossed at 06:00:30 waits for one batch, not
    for the whole estate's night completion)."""
    urgent, routine = due_by_urgency(conn, now, site_ids)
    _run_household_batches(conn, urgent, now, summary, latency=False)
    started = last_check = time.perf_counter()
    at, done = now, set(urgent)
    for start in range(0, len(routine), HOUSEHOLD_BATCH):
        if start and time.perf_counter() - last_check >= URGENT_RECHECK_EVERY.total_seconds():
            at = now + timedelta(seconds=time.perf_counter() - started)
            again = urgent_due(conn, at, site_ids)
            _run_household_batches(conn, again, at, summary, latency=False)
            done.update(again)
            last_check = time.perf_counter()
        batch = [s for s in routine[start:start + HOUSEHOLD_BATCH] if s not in done]
        _run_household_batches(conn, batch, at, summary, latency=False)


def rescore_all(conn: psycopg.Connection, now: datetime) -> EvaluationSummary:
    """Re-evaluate every active resident and every household (e.g. on scorer start-up)."""
    # each named with its kind (a resident whose id is also a household's is evaluated as the resident only)
    subjects = [Subject(*row) for row in conn.execute(
        "SELECT 'resident', resident_id FROM residents WHERE monitoring = 'active' "
        "UNION ALL SELECT 'household', site_id FROM sites WHERE kind = 'household' ORDER BY 2, 1")]
    summary = EvaluationSummary()
    for start in range(0, len(subjects), 200):
        summary.merge(evaluate_subjects(conn, subjects[start:start + 200], now))
    summary.merge(tick(conn, now))
    group_loose_alerts(conn, now)
    return summary


def group_loose_alerts(conn: psycopg.Connection, now: datetime) -> int:
    """Unresolved actionable alerts in no incident (opened before incidents existed, or whose subject no rule
    re-evaluated since) join their subject's incident. Returns how many subjects were grouped."""
    subjects = [Subject(*row) for row in conn.execute(
        "SELECT DISTINCT subject_kind, subject_id FROM alerts WHERE status <> 'resolved' AND incident_id IS NULL "
        "AND severity <> 'info' ORDER BY 1, 2").fetchall()]
    for start in range(0, len(subjects), 200):
        chunk = subjects[start:start + 200]
        with transaction(conn):
            lock_subjects(conn, [s.id for s in chunk])
            sync_incidents(conn, chunk, now)
    return len(subjects)


def tick(conn: psycopg.Connection, now: datetime, *, slow: bool = True, gateways: bool = False,
         site_ids: Sequence[str] | None = None) -> EvaluationSummary:
    """Time-based rules. Fast part (every few seconds): escalations and overdue observations (and the gateway
    pass with ``gateways=True``: one cheap query). Slow part (``slow=True``): households (long lie, morning,
    kitchen, rooms, silence: those with news or a deadline reached, and each at least every 5 minutes), devices and
    gateways. ``site_ids``: only these sites (a scorer replica's share,
    scoring/replicas.py); None = the whole estate."""
    summary = EvaluationSummary()
    # the escalation policy's next steps (carewatch.notify): deliveries are left pending for the notify thread
    # (one ladder per incident: the steps are incident steps; level 1 is a notification, not an escalation)
    summary.incidents_escalated.extend(p.target_id for p in escalation_pass(conn, now, site_ids=site_ids)
                                       if p.level > 1)
    overdue_pass(conn, now, summary, site_ids)
    if slow:
        _run_due_households(conn, now, summary, site_ids)
        # only the devices whose finding can change (an alert open, or a rule that could raise): the estate's
        # other devices would give findings that findings_that_change drops (scoring/devices.py)
        apply_device_findings(conn, load_changing_devices(conn, now, site_ids=site_ids), now, summary)
    if slow or gateways:
        gateway_pass(conn, now, summary, site_ids)
    return summary


__all__ = [
    "ACTOR",
    "CLINICAL_KINDS",
    "EvaluationSummary",
    "apply_findings",
    "evaluate_subjects",
    "lock_subjects",
    "rescore_all",
    "resolve_open_alerts",
    "tick",
]
