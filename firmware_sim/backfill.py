"""``carewatch sim --mode backfill``: D days of history written straight to the database.

Readings go through ingest's own ``store_batch`` (validation, binary COPY, de-duplication by
(gateway_id, seq), latest values), under a separate ``gw-<site>-backfill`` gateway per site so their sequence
numbers never collide with a live gateway's. Each observation round in which staff typed respiration rate and
consciousness becomes one observation set (their entries plus the round's device values, scored with NEWS2),
recorded by ``backfill``, as the tablet and scorer would have made it; personal baselines are built from these.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
from carewatch.firmware_sim.devices import world_devices
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import ManualObservation, VitalSample
from carewatch.firmware_sim.seed import seed_world
from carewatch.firmware_sim.wire_output import event_reading
from carewatch.scoring.news2 import score_observation
from psycopg.types.json import Jsonb

from carewatch.settings import Settings
from carewatch.wire import UNTRUSTED_FLAGS, DecodedBatch, Metric, Reading

MESSAGE_SIZE = 1000
COMMIT_EVERY = 20_000


def backfill_gateway_id(site_id: str) -> str:
    return f"gw-{site_id}-backfill"


def backfill_world(conn: psycopg.Connection, world: Any, *, start: datetime, end: datetime,
                   progress: bool = True) -> dict[str, int]:
    """Store every device reading of ``world`` in [start, end). Returns counts."""
    from carewatch.ingest.store import store_batch

    site_ids = [s.id for s in world.sites if s.residents] + [h.id for h in world.households]
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [(backfill_gateway_id(s), s) for s in site_ids])
    seqs = {s: int(conn.execute("SELECT last_seq FROM gateways WHERE gateway_id = %s",
                                (backfill_gateway_id(s),)).fetchone()[0]) for s in site_ids}
    pending: dict[str, list[Reading]] = {}
    batches: list[DecodedBatch] = []
    totals = {"readings": 0, "stored": 0, "duplicates": 0, "dead_letters": 0}
    span = (end - start).total_seconds() or 1.0
    t0 = time.monotonic()

    def commit() -> None:
        for site in list(pending):
            cut(site)
        if batches:
            result = store_batch(conn, batches, notify=False)
            totals["stored"] += result.stored
            totals["duplicates"] += result.duplicates
            totals["dead_letters"] += result.dead_letters
            batches.clear()

    def cut(site: str) -> None:
        readings = pending.pop(site, [])
        if readings:
            batches.append(DecodedBatch(site, backfill_gateway_id(site), readings[-1].received_at, readings, []))

    rounds = _Rounds(conn)
    for event in world.events(start, end):
        if isinstance(event, ManualObservation | VitalSample):
            rounds.add(event)
        if not isinstance(event, VitalSample | SensorEvent):
            continue
        site = event.site_id if isinstance(event, VitalSample) else event.household_id
        seqs[site] += 1
        _, reading = event_reading(event, seqs[site])
        pending.setdefault(site, []).append(reading)
        totals["readings"] += 1
        if len(pending[site]) >= MESSAGE_SIZE:
            cut(site)
        if totals["readings"] % COMMIT_EVERY == 0:
            commit()
            if progress:
                done = (event.at - start).total_seconds() / span
                rate = totals["readings"] / max(1e-9, time.monotonic() - t0)
                bar = "#" * int(done * 30)
                print(f"\rbackfill [{bar:<30}] {done:5.1%}  {totals['readings']:,} readings  {rate:,.0f}/s",
                      end="", file=sys.stderr, flush=True)
    commit()
    totals["observation_sets"] = rounds.close()
    if progress:
        print(file=sys.stderr)
    return totals


ROUND_WINDOW = timedelta(minutes=30)
_SET_FIELDS = {Metric.RESPIRATION_RATE: "respiration_rate", Metric.SPO2: "spo2", Metric.SYSTOLIC_BP: "systolic_bp",
               Metric.PULSE_RATE: "pulse", Metric.TEMPERATURE: "temperature"}


class _Rounds:
    """Groups each resident's events into observation rounds and writes one set per round staff took part in."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.open: dict[str, list[ManualObservation | VitalSample]] = {}
        self.rows: list[tuple[Any, ...]] = []
        self.scale2 = dict(conn.execute("SELECT resident_id, scale2 FROM residents").fetchall())
        self.written = 0

    def add(self, event: ManualObservation | VitalSample) -> None:
        pending = self.open.get(event.resident_id)
        if pending and event.at - pending[0].at > ROUND_WINDOW:
            self._finish(event.resident_id)
        self.open.setdefault(event.resident_id, []).append(event)
        if len(self.rows) >= 2000:
            self._flush()

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
        result = score_observation(values)
        typed = {"source": "manual", "by": "backfill", "at": staff.at.isoformat()}
        inputs = {"respiration_rate": typed, "consciousness": typed} if staff.respiration_rate is not None else {
            "consciousness": typed}
        self.rows.append((
            resident_id, staff.site_id, max(e.at for e in events), values.get("respiration_rate"),
            values.get("spo2"), values["spo2_scale"], values["on_oxygen"], values.get("systolic_bp"),
            values.get("pulse"), values["consciousness"], values.get("temperature"), list(staff.soft_signs),
            result.score, result.risk.value, Jsonb(dict(result.subscores)), result.complete, list(result.missing),
            Jsonb(inputs),
        ))

    def _flush(self) -> None:
        if self.rows:
            with self.conn.transaction():
                self.conn.cursor().executemany(
                    """INSERT INTO observation_sets (resident_id, site_id, taken_at, recorded_by, source,
                           respiration_rate, spo2, spo2_scale, on_oxygen, systolic_bp, pulse, consciousness,
                           temperature, soft_signs, score, risk, subscores, complete, missing, inputs)
                       VALUES (%s, %s, %s, 'backfill', 'mixed', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                               %s, %s, %s)""", self.rows)
            self.written += len(self.rows)
            self.rows.clear()

    def close(self) -> int:
        for resident_id in list(self.open):
            self._finish(resident_id)
        self._flush()
        return self.written


def backfill(settings: Settings, world: Any, *, start: datetime, end: datetime) -> int:
    """CLI entry: seed the world's records, then backfill its readings; prints a JSON summary."""
    import json

    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        with conn.transaction():
            seed_world(conn, world, world_devices(world))
        t0 = time.monotonic()
        totals = backfill_world(conn, world, start=start, end=end)
    totals["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(totals), flush=True)
    return 0 if totals["dead_letters"] == 0 else 1
