"""``carewatch sim --mode backfill``: D days of history written straight to the database.

Readings go through ingest's bulk history load (``load_history``: the same validation and registry checks as live
ingest, one binary COPY straight into ``readings``, sequence runs and latest values kept), under a separate
``gw-<site>-backfill`` gateway per site so their sequence numbers never collide with a live gateway's. Each
observation round in which staff typed respiration rate and consciousness becomes one observation set (their entries
plus the round's device values, scored with NEWS2), recorded by ``backfill``, as the tablet and scorer would have
made it; personal baselines are built from these."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg

from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import ManualObservation, VitalSample
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.wire_output import event_source
from carewatch.scoring.news2 import score_observations
from carewatch.scoring.observation_sets import ObservationSetRow, record_observation_sets
from carewatch.settings import Settings
from carewatch.wire import UNTRUSTED_FLAGS, Metric

#: Readings per history load (one transaction and one COPY each); observation sets are written between loads.
CHUNK = 200_000
#: The progress bar is redrawn every this many readings (and once more at the end).
PROGRESS_EVERY = 20_000


def backfill_gateway_id(site_id: str) -> str:
    return f"gw-{site_id}-backfill"


def progress_line(done: float, readings: int, per_second: float) -> str:
    """One redraw of the backfill progress bar (``done`` is the simulated fraction, 0..1)."""
    done = min(max(done, 0.0), 1.0)
    return f"\rbackfill [{'#' * int(done * 30):<30}] {done:5.1%}  {readings:,} readings  {per_second:,.0f}/s"


def backfill_world(conn: psycopg.Connection, world: Any, *, start: datetime, end: datetime,
                   progress: bool = True, chunk: int = CHUNK, progress_every: int = PROGRESS_EVERY,
                   source: Callable[[VitalSample | SensorEvent], tuple[str, str, Any]] = event_source,
                   events: Iterable[Any] | None = None) -> dict[str, int]:
    """Store every device reading of ``world`` in [start, end) with ingest's bulk history load. Returns counts.
    ``source`` names each event's site and device and ``events`` replaces the world's own stream (homes on shared
    kits: ``kit_round.KitRounds.wrap`` lays each kit's measurements out and ``kit_event_source`` names them)."""
    from carewatch.ingest.store import HistoryReading, load_directory, load_history

    site_ids = [s.id for s in world.sites if s.residents] + [h.id for h in world.households]
    gateway_ids = [backfill_gateway_id(s) for s in site_ids]
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            list(zip(gateway_ids, site_ids, strict=True)))
    seqs: dict[str, Any] = dict(conn.execute("SELECT site_id, last_seq FROM gateways WHERE gateway_id = ANY(%s)",
                             (gateway_ids,)).fetchall())
    gateway_of = dict(zip(site_ids, gateway_ids, strict=True))  # (one f-string per site, not per reading)
    directory = load_directory(conn)
    totals = {"readings": 0, "stored": 0, "duplicates": 0, "dead_letters": 0}
    span = (end - start).total_seconds() or 1.0
    t0 = time.monotonic()
    rounds = _Rounds(conn)
    events = iter(world.events(start, end) if events is None else events)
    exhausted = False

    def next_chunk() -> Iterator[HistoryReading]:
        nonlocal exhausted
        produced = 0
        for event in events:
            if isinstance(event, ManualObservation | VitalSample):
                rounds.add(event)
            if not isinstance(event, VitalSample | SensorEvent):
                continue
            site, device_id, _ = source(event)
            seqs[site] += 1
            # str() of a Metric (a StrEnum) is its value as a plain str, without the enum's ``.value`` descriptor
            yield HistoryReading(gateway_of[site], seqs[site], site, device_id, str(event.metric), event.value,
                                 event.at, event.at, tuple(getattr(event, "flags", ())))
            produced += 1
            totals["readings"] += 1
            if progress and totals["readings"] % progress_every == 0:
                rate = totals["readings"] / max(1e-9, time.monotonic() - t0)
                print(progress_line((event.at - start).total_seconds() / span, totals["readings"], rate), end="",
                      file=sys.stderr, flush=True)
            if produced >= chunk:
                return
        exhausted = True

    while not exhausted:
        result = load_history(conn, gateway_ids, next_chunk(), directory=directory)
        totals["stored"] += result.stored
        totals["dead_letters"] += result.dead_letters
        rounds.flush()
    totals["observation_sets"] = rounds.close()
    if progress:
        rate = totals["readings"] / max(1e-9, time.monotonic() - t0)
        print(progress_line(1.0, totals["readings"], rate), file=sys.stderr, flush=True)
    return totals


ROUND_WINDOW = timedelta(minutes=30)
_SET_FIELDS = {Metric.RESPIRATION_RATE: "respiration_rate", Metric.SPO2: "spo2", Metric.SYSTOLIC_BP: "systolic_bp",
               Metric.PULSE_RATE: "pulse", Metric.TEMPERATURE: "temperature"}


class _Rounds:
    """Groups each resident's events into observation rounds and writes one set per round staff took part in."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.open: dict[str, list[ManualObservation | VitalSample]] = {}
        self.pending: list[tuple[dict[str, Any], tuple[Any, ...]]] = []  # (NEWS2 inputs, the row's other columns)
        self.scale2: dict[str, bool] = dict(conn.execute("SELECT resident_id, scale2 FROM residents").fetchall())
        self.written = 0

    def add(self, event: ManualObservation | VitalSample) -> None:
        """Collect only: called while a COPY holds the connection, so nothing is written here."""
        pending = self.open.get(event.resident_id)
        if pending and event.at - pending[0].at > ROUND_WINDOW:
            self._finish(event.resident_id)
        self.open.setdefault(event.resident_id, []).append(event)

    def _finish(self, resident_id: str) -> None:
        events = self.open.pop(resident_id, [])
        manual = [e for e in events if isinstance(e, ManualObservation)]
        if not manual:
            return
        staff = manual[-1]
        values: dict[str, Any] = {"respiration_rate": staff.respiration_rate, "consciousness": staff.consciousness,
                                  "on_oxygen": staff.supplemental_oxygen,
                                  "spo2_scale": 2 if self.scale2.get(resident_id) else 1}
        for sample in events:
            if isinstance(sample, VitalSample) and sample.metric in _SET_FIELDS and not (
                    set(sample.flags) & UNTRUSTED_FLAGS) and sample.metric != Metric.RESPIRATION_RATE:
                values[_SET_FIELDS[sample.metric]] = sample.value
        typed = {"source": "manual", "by": "backfill", "at": staff.at.isoformat()}
        inputs = {"respiration_rate": typed, "consciousness": typed} if staff.respiration_rate is not None else {
            "consciousness": typed}
        self.pending.append((values, (resident_id, staff.site_id, max(e.at for e in events), list(staff.soft_signs),
                                      inputs)))

    def flush(self) -> None:
        """Score the finished rounds in one vectorised NEWS2 call and write them."""
        if not self.pending:
            return
        results = score_observations([values for values, _ in self.pending])
        rows = [
            ObservationSetRow(
                resident_id=resident_id, site_id=site_id, taken_at=taken_at, recorded_by="backfill", source="mixed",
                values=v, result=r, spo2_scale=v["spo2_scale"], on_oxygen=v["on_oxygen"],
                consciousness=v["consciousness"], soft_signs=soft_signs, inputs=inputs)
            for (v, (resident_id, site_id, taken_at, soft_signs, inputs)), r in zip(self.pending, results,
                                                                                 strict=True)
        ]
        with self.conn.transaction():
            self.written += record_observation_sets(self.conn, rows)
        self.pending.clear()

    def close(self) -> int:
        for resident_id in list(self.open):
            self._finish(resident_id)
        self.flush()
        return self.written


def backfill(settings: Settings, world: Any, *, start: datetime, end: datetime) -> int:
    """CLI entry: seed the world's records, then backfill its readings; prints a JSON summary."""
    import json

    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        with conn.transaction():
            seed_world(conn, world, world_devices(world))
        t0 = time.monotonic()
        totals = backfill_world(conn, world, start=start, end=end)
    print(json.dumps({**totals, "seconds": round(time.monotonic() - t0, 2)}), flush=True)
    return 0 if totals["dead_letters"] == 0 else 1
