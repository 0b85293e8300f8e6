"""``carewatch sim --mode backfill``: D days of history written straight to the database.

Readings go through ingest's bulk history load (``load_history``: the same validation and registry checks as live
ingest, one binary COPY straight into ``readings``, sequence runs and latest values kept), under a separate
``gw-<site>-backfill`` gateway per site so their sequence numbers never collide with a live gateway's. Each
observation round in which staff typed respiration rate and consciousness becomes one observation set (their entries
plus the round's device values, scored with NEWS2), recorded by ``backfill``, as the tablet and scorer would have
made it; personal baselines are built from these.

The world's events are generated, numbered and grouped into rounds (:func:`history_pieces`, pure) in a worker
process while this one writes with COPY, so the two overlap on two cores; a bounded queue keeps memory flat. The
pieces are the same whichever process makes them, so the rows stored are too."""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import sys
import time
import traceback
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

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

if TYPE_CHECKING:
    from carewatch.ingest.store import HistoryRow

#: Readings per history load (one transaction and one COPY each); observation sets are written between loads.
CHUNK = 200_000
#: The progress bar is redrawn every this many readings (and once more at the end).
PROGRESS_EVERY = 20_000
#: Readings per message from the generating worker at most, and messages the queue holds: what is in flight
#: between the processes is bounded by their product.
PIECE = 10_000
QUEUE_PIECES = 8
#: How often the writer, waiting for a piece, checks that the worker is still alive.
WORKER_POLL_S = 1.0

class HistoryPlan(NamedTuple):
    """What generating the rows needs from the database: each site's backfill gateway and its last stored seq,
    which residents are charted on SpO2 scale 2, and where loads and progress redraws fall."""

    seqs: dict[str, int]
    gateway_of: dict[str, str]
    scale2: dict[str, bool]
    chunk: int
    progress_every: int


class ReadingsPiece(NamedTuple):
    """Consecutive readings of one history load; ``at`` is the simulated time of the last."""

    rows: list[HistoryRow]
    at: datetime


#: A finished staff round: its NEWS2 inputs and the set's other columns (scored by the writer: a ``News2Result``
#: holds a mappingproxy, which does not pickle).
FinishedRound = tuple[dict[str, Any], tuple[Any, ...]]


class ChunkEnd(NamedTuple):
    """Ends one history load with the rounds finished by then; the last one also carries ``closing``, the rounds
    still open when the stream ended (written after ``rounds``)."""

    rounds: list[FinishedRound]
    closing: list[FinishedRound] | None = None


class WorkerFailed(NamedTuple):
    """The generating worker's exception, for the writer to raise with its message and traceback."""

    error: str
    traceback: str


class BackfillWorkerError(RuntimeError):
    """The process generating the backfill's events failed; the message is its exception's."""


def backfill_gateway_id(site_id: str) -> str:
    return f"gw-{site_id}-backfill"


def progress_line(done: float, readings: int, per_second: float) -> str:
    """One redraw of the backfill progress bar (``done`` is the simulated fraction, 0..1)."""
    done = min(max(done, 0.0), 1.0)
    return f"\rbackfill [{'#' * int(done * 30):<30}] {done:5.1%}  {readings:,} readings  {per_second:,.0f}/s"


def world_history(world: Any, start: datetime, end: datetime, shared_kits: Collection[str] = ()
                  ) -> tuple[Iterator[Any], Callable[[VitalSample | SensorEvent], tuple[str, str, Any]]]:
    """The world's events in [start, end) and the function naming each one's site and device. Homes in
    ``shared_kits`` measure with shared kits: ``KitRounds`` lays each kit's measurements out one resident at a time
    (no carer mistakes: history gives baselines) and ``kit_event_source`` names the kit's devices."""
    if not shared_kits:
        return iter(world.events(start, end)), event_source
    from carewatch.firmware_sim.kit_round import KitRounds, kit_event_source

    return KitRounds(world, shared_kits, mistakes=False).wrap(world.events(start, end)), kit_event_source(shared_kits)


def history_pieces(events: Iterable[Any], source: Callable[[VitalSample | SensorEvent], tuple[str, str, Any]],
                   plan: HistoryPlan) -> Iterator[ReadingsPiece | ChunkEnd]:
    """The backfill's rows in write order: readings numbered per site from ``seqs`` (the gateways' last stored
    seq), a ``ChunkEnd`` after every ``chunk`` readings and after the last, carrying the staff rounds finished
    by then. Pieces end at every multiple of ``progress_every`` readings (a progress redraw).
    Pure (no database): it runs in the worker process, or in this one for the serial path."""
    rounds = RoundGrouper(plan.scale2)
    seqs, gateway_of, chunk, progress_every = dict(plan.seqs), plan.gateway_of, plan.chunk, plan.progress_every
    names: dict[Any, str] = {}  # metric and device names, one str object each: pickled once per piece, not per row
    rows: list[HistoryRow] = []
    produced = total = 0
    for event in events:
        if isinstance(event, ManualObservation | VitalSample):
            rounds.add(event)
        if not isinstance(event, VitalSample | SensorEvent):
            continue
        site, device_id, _ = source(event)
        seqs[site] += 1
        metric = names.get(event.metric)
        if metric is None:
            # str() of a Metric (a StrEnum) is its value as a plain str, without the enum's ``.value`` descriptor
            metric = names[event.metric] = str(event.metric)
        device_id = names.setdefault(device_id, device_id)
        rows.append((gateway_of[site], seqs[site], site, device_id, metric, event.value, event.at, event.at,
                     tuple(getattr(event, "flags", ()))))
        produced += 1
        total += 1
        if produced >= chunk or total % progress_every == 0 or len(rows) >= PIECE:
            yield ReadingsPiece(rows, event.at)
            rows = []
        if produced >= chunk:
            yield ChunkEnd(rounds.take())
            produced = 0
    if rows:
        yield ReadingsPiece(rows, rows[-1][6])
    # the load that found the stream exhausted (it may be empty), then the rounds still open
    finished = rounds.take()
    yield ChunkEnd(finished, rounds.close())


def backfill_world(conn: psycopg.Connection, world: Any, *, start: datetime, end: datetime,
                   progress: bool = True, chunk: int = CHUNK, progress_every: int = PROGRESS_EVERY,
                   shared_kits: Collection[str] = (), parallel: bool = False,
                   source: Callable[[VitalSample | SensorEvent], tuple[str, str, Any]] | None = None,
                   events: Iterable[Any] | None = None) -> dict[str, int]:
    """Store every device reading of ``world`` in [start, end) with ingest's bulk history load. Returns counts.

    Homes in ``shared_kits`` measure with shared kits (see :func:`world_history`). With ``parallel`` the events are
    generated in a worker process (the world must pickle) while this process writes; off by default: at full size
    (bench_sim, 2,659,583 readings, 2026-12-07 21:04 UTC) the worker itself took 70 s of CPU and the backfill 93 s,
    against 80-82 s for the serial path measured before it, so on two cores it does not pay. ``events`` replaces the
    world's own stream and ``source`` names each event's site and device: an arbitrary iterable or function
    cannot be sent to another process, so passing either runs the serial path, generating here between writes.
    """
    from carewatch.ingest.store import load_directory

    site_ids = [s.id for s in world.sites if s.residents] + [h.id for h in world.households]
    gateway_ids = [backfill_gateway_id(s) for s in site_ids]
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            list(zip(gateway_ids, site_ids, strict=True)))
    seqs: dict[str, int] = dict(conn.execute("SELECT site_id, last_seq FROM gateways WHERE gateway_id = ANY(%s)",
                                             (gateway_ids,)).fetchall())
    scale2: dict[str, bool] = dict(conn.execute("SELECT resident_id, scale2 FROM residents").fetchall())
    plan = HistoryPlan(seqs, dict(zip(site_ids, gateway_ids, strict=True)), scale2, chunk, progress_every)
    writer = _Writer(conn, gateway_ids, load_directory(conn), start=start, end=end, progress=progress,
                     progress_every=progress_every)
    if parallel and events is None and source is None:
        with _Worker(world, start, end, shared_kits, plan) as pieces:
            return writer.write(pieces)
    stream, world_source = world_history(world, start, end, shared_kits)
    return writer.write(history_pieces(stream if events is None else events, source or world_source, plan))


class _Writer:
    """Writes the pieces: one history load per chunk, then that chunk's observation sets; draws the progress."""

    def __init__(self, conn: psycopg.Connection, gateway_ids: list[str], directory: Any, *, start: datetime,
                 end: datetime, progress: bool, progress_every: int) -> None:
        self.conn, self.gateway_ids, self.directory = conn, gateway_ids, directory
        self.start, self.span = start, (end - start).total_seconds() or 1.0
        self.progress, self.progress_every = progress, progress_every
        self.totals = {"readings": 0, "stored": 0, "duplicates": 0, "dead_letters": 0, "observation_sets": 0}
        self.t0 = time.monotonic()

    def write(self, pieces: Iterable[ReadingsPiece | ChunkEnd]) -> dict[str, int]:
        from carewatch.ingest.store import load_history

        stream = iter(pieces)
        while True:
            ended: list[ChunkEnd] = []
            result = load_history(self.conn, self.gateway_ids, self._readings(stream, ended),
                                  directory=self.directory)
            self.totals["stored"] += result.stored
            self.totals["dead_letters"] += result.dead_letters
            for rounds in (ended[0].rounds, ended[0].closing or []):
                if rounds:
                    with self.conn.transaction():
                        self.totals["observation_sets"] += record_observation_sets(self.conn, set_rows(rounds))
            if ended[0].closing is not None:
                break
        if self.progress:
            print(progress_line(1.0, self.totals["readings"], self._rate()), file=sys.stderr, flush=True)
        return self.totals

    def _readings(self, stream: Iterator[ReadingsPiece | ChunkEnd], ended: list[ChunkEnd]
                  ) -> Iterator[HistoryRow]:
        """One history load's readings, up to the next ``ChunkEnd`` (put in ``ended``)."""
        for piece in stream:
            if isinstance(piece, ChunkEnd):
                ended.append(piece)
                return
            yield from piece.rows
            self.totals["readings"] += len(piece.rows)
            if self.progress and self.totals["readings"] % self.progress_every == 0:
                done = (piece.at - self.start).total_seconds() / self.span
                print(progress_line(done, self.totals["readings"], self._rate()), end="", file=sys.stderr,
                      flush=True)
        raise BackfillWorkerError("the backfill's event stream ended without closing its last history load")

    def _rate(self) -> float:
        return self.totals["readings"] / max(1e-9, time.monotonic() - self.t0)


class _Worker:
    """The worker process generating :func:`history_pieces` (a spawned process: nothing of this one's state, open
    connections or threads is inherited), and the iterator of what it sends. Leaving the ``with`` block ends it
    whatever happened: on an error here it is terminated, never left behind."""

    def __init__(self, world: Any, start: datetime, end: datetime, shared_kits: Collection[str],
                 plan: HistoryPlan) -> None:
        context = multiprocessing.get_context("spawn")
        self.queue: Any = context.Queue(maxsize=QUEUE_PIECES)
        self.process = context.Process(target=generate_pieces, name="backfill-generate", daemon=True,
                                       args=(self.queue, world, start, end, tuple(shared_kits), plan))

    def __enter__(self) -> Iterator[ReadingsPiece | ChunkEnd]:
        self.process.start()
        return self._pieces()

    def _pieces(self) -> Iterator[ReadingsPiece | ChunkEnd]:
        while True:
            try:
                item = self.queue.get(timeout=WORKER_POLL_S)
            except queue.Empty:
                if not self.process.is_alive():
                    raise BackfillWorkerError(
                        f"the backfill's generating process exited (code {self.process.exitcode}) without "
                        "finishing") from None
                continue
            if isinstance(item, bytes):
                item = pickle.loads(item)
            if isinstance(item, WorkerFailed):
                raise BackfillWorkerError(f"generating the backfill's events failed: {item.error}\n"
                                          f"{item.traceback}")
            yield item
            if isinstance(item, ChunkEnd) and item.closing is not None:
                return

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)
        if self.process.is_alive():  # (a worker that ignored SIGTERM)
            self.process.kill()
            self.process.join()
        self.queue.close()
        self.queue.cancel_join_thread()


def generate_pieces(out: Any, world: Any, start: datetime, end: datetime, shared_kits: tuple[str, ...],
                    plan: HistoryPlan) -> None:
    """The worker's body: every piece of :func:`history_pieces` into ``out`` (blocking while it is full), or the
    exception that stopped it."""
    try:
        events, source = world_history(world, start, end, shared_kits)
        for piece in history_pieces(events, source, plan):
            # pickled here, not in the queue's feeder thread, where a failure would be printed and the piece lost
            out.put(pickle.dumps(piece, protocol=pickle.HIGHEST_PROTOCOL))
    except BaseException as exc:  # (reported to the writer, which raises it; the worker then exits)
        out.put(WorkerFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    out.close()
    out.join_thread()


ROUND_WINDOW = timedelta(minutes=30)
_SET_FIELDS = {Metric.RESPIRATION_RATE: "respiration_rate", Metric.SPO2: "spo2", Metric.SYSTOLIC_BP: "systolic_bp",
               Metric.PULSE_RATE: "pulse", Metric.TEMPERATURE: "temperature"}


class RoundGrouper:
    """Groups each resident's events into observation rounds; each round staff took part in becomes one set
    (pure: the writer scores and stores what :meth:`take` returns)."""

    def __init__(self, scale2: dict[str, bool]) -> None:
        self.open: dict[str, list[ManualObservation | VitalSample]] = {}
        self.pending: list[FinishedRound] = []
        self.scale2 = scale2

    def add(self, event: ManualObservation | VitalSample) -> None:
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

    def take(self) -> list[FinishedRound]:
        """The rounds finished since the last call."""
        taken, self.pending = self.pending, []
        return taken

    def close(self) -> list[FinishedRound]:
        """Every round still open, finished."""
        for resident_id in list(self.open):
            self._finish(resident_id)
        return self.take()


def set_rows(rounds: list[FinishedRound]) -> list[ObservationSetRow]:
    """The finished rounds' observation sets, scored in one vectorised NEWS2 call."""
    results = score_observations([values for values, _ in rounds])
    return [
        ObservationSetRow(
            resident_id=resident_id, site_id=site_id, taken_at=taken_at, recorded_by="backfill", source="mixed",
            values=v, result=r, spo2_scale=v["spo2_scale"], on_oxygen=v["on_oxygen"],
            consciousness=v["consciousness"], soft_signs=soft_signs, inputs=inputs)
        for (v, (resident_id, site_id, taken_at, soft_signs, inputs)), r in zip(rounds, results, strict=True)
    ]


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
