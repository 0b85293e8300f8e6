"""Durable outbox: sequence numbers, acknowledged deletes, crash durability and the disk budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carewatch.gateway.outbox import ALARM_PCT, Outbox
from carewatch.gateway.pipeline import DeadLetter, ReadingDraft
from carewatch.wire import METRICS, DeviceKind, GatewayEvent, Metric

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def draft(
    metric: Metric = Metric.SPO2, value: float = 97, *, urgent: bool = False, i: int = 0
) -> ReadingDraft:
    kind = DeviceKind.PULSE_OXIMETER if METRICS[metric].vital else DeviceKind.MOTION_SENSOR
    at = AT + timedelta(seconds=i)
    return ReadingDraft("dev-1", kind, metric, value, METRICS[metric].unit, at, at, urgent=urgent)


def open_outbox(path: Path, **kw: object) -> Outbox:
    return Outbox(path, site_id="site-a", gateway_id="gw-a", **kw)  # type: ignore[arg-type]


def test_sequence_numbers_survive_deletes_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with open_outbox(path) as outbox:
        stored = outbox.append([draft(i=i) for i in range(5)])
        assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
        assert outbox.delete(r.seq for r in stored) == 5
        assert outbox.depth() == 0
    with open_outbox(path) as outbox:
        assert [r.seq for r in outbox.append([draft()])] == [6], "a sequence number is never reused"
        assert outbox.last_seq() == 6
        sync = outbox._db.execute("PRAGMA synchronous").fetchone()[0]
        mode = outbox._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert (sync, mode) == (2, "wal"), "documented durability: WAL + synchronous=FULL"


def test_peek_in_order_and_delete_only_what_was_acked(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite") as outbox:
        stored = outbox.append([draft(value=90 + i, i=i) for i in range(10)])
        assert outbox.peek(3) == stored[:3]
        assert [r.seq for r in outbox.peek(3, after_seq=3)] == [4, 5, 6]
        outbox.delete([2, 3, 7])  # acks may settle out of order
        assert [r.seq for r in outbox.peek(100)] == [1, 4, 5, 6, 8, 9, 10]
        assert outbox.oldest_unsent() == AT
        outbox.delete([1])
        assert outbox.oldest_unsent() == AT + timedelta(seconds=3)
        assert outbox.depth() == 6
        rows = outbox.peek_rows(2)
        assert [json.loads(r.payload)["seq"] for r in rows] == [4, 5]


def test_urgent_flag_is_kept(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite") as outbox:
        outbox.append([draft(), draft(value=85, urgent=True)])
        assert [r.urgent for r in outbox.peek_rows(5)] == [False, True]
        assert outbox.has_urgent() and not outbox.has_urgent(after_seq=2)


def test_dead_letters_and_events_are_stored_with_the_readings(tmp_path: Path) -> None:
    letter = DeadLetter("A4:C1:38:00:00:09", "2a5e", "00", "unknown device", AT, None, {"x": 1})
    event = GatewayEvent(
        site_id="site-a", gateway_id="gw-a", at=AT, kind="dead_letter", message="unknown device", raw_hex="00"
    )
    with open_outbox(tmp_path / "o.sqlite") as outbox:
        outbox.append([draft()], dead_letters=[letter], events=[event])
        [kept] = outbox.dead_letters()
        assert kept["reason"] == "unknown device" and kept["raw_hex"] == "00" and kept["detail"] == {"x": 1}
        [row] = outbox.peek_events(10)
        assert GatewayEvent.model_validate_json(row.payload) == event
        outbox.delete_events([row.id])
        assert outbox.events_depth() == 0
        assert outbox.counters()["dead_letters"] == 1


# ------------------------------------------------------------------------------------------------------------
# Durability: kill -9 right after append returns
# ------------------------------------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime
    from carewatch.gateway.outbox import Outbox
    from carewatch.gateway.pipeline import ReadingDraft
    from carewatch.wire import DeviceKind, Metric
    outbox = Outbox(sys.argv[1], site_id="s", gateway_id="g")
    now = datetime.now(UTC)
    while True:
        draft = ReadingDraft("d", DeviceKind.THERMOMETER, Metric.TEMPERATURE, 37.0, "Cel", now, now)
        stored = outbox.append([draft] * 10)
        print(stored[-1].seq, flush=True)
""")


def test_what_append_returned_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    confirmed = 0
    for line in child.stdout:
        confirmed = int(line)
        if confirmed >= 2000:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with open_outbox(path) as outbox:
        assert outbox.last_seq() >= confirmed
        assert outbox.depth() == outbox.last_seq(), "every committed reading is there, none half-written"
        assert [r.seq for r in outbox.peek(3)] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------------------
# Disk budget
# ------------------------------------------------------------------------------------------------------------
BUDGET = 256 * 1024


def fill(outbox: Outbox, metric: Metric, value: float, rounds: int, per: int = 100) -> None:
    for r in range(rounds):
        outbox.append([draft(metric, value, i=r * per + i) for i in range(per)])


def alarms(outbox: Outbox) -> list[dict]:
    return [json.loads(e.payload) for e in outbox.peek_events(1000)]


def test_budget_alarm_at_80_percent_once(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite", max_bytes=BUDGET) as outbox:
        while outbox.budget_pct() < ALARM_PCT:
            fill(outbox, Metric.MOTION, 1, 1)
            assert not alarms(outbox) or outbox.budget_pct() >= ALARM_PCT
        fill(outbox, Metric.MOTION, 1, 1)
        raised = [a for a in alarms(outbox) if a["kind"] == "outbox_alarm"]
        assert len(raised) == 1 and raised[0]["detail"]["level"] == "warning"


def warnings(outbox: Outbox) -> int:
    return sum(1 for a in alarms(outbox) if a["kind"] == "outbox_alarm" and a["detail"]["level"] == "warning")


def test_budget_alarm_state_survives_restarts_and_is_shared_by_connections(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with open_outbox(path, max_bytes=BUDGET) as outbox:
        while outbox.budget_pct() < ALARM_PCT:
            fill(outbox, Metric.MOTION, 1, 1)
        assert warnings(outbox) == 1 and not outbox.alarm_armed()
    # a restarted gateway, and the publisher's second connection beside it, do not raise it again
    with open_outbox(path, max_bytes=BUDGET) as restarted, open_outbox(path, max_bytes=BUDGET) as second:
        assert not restarted.alarm_armed()
        fill(restarted, Metric.MOTION, 1, 1)
        second.add_events([])  # the publisher's side runs the same check when it stores an event
        fill(second, Metric.MOTION, 1, 1)
        assert warnings(restarted) == 1
        # use falls below 70 %: re-armed, durably, by whichever connection sees it first
        restarted.delete(r.seq for r in restarted.peek(100_000))
        second.add_events([])
        assert restarted.alarm_armed() and second.alarm_armed()
    with open_outbox(path, max_bytes=BUDGET) as again:
        assert again.alarm_armed()
        while again.budget_pct() < ALARM_PCT:
            fill(again, Metric.MOTION, 1, 1)
        fill(again, Metric.MOTION, 1, 1)
        assert warnings(again) == 2, "a new episode raises the alarm once more"


def test_full_budget_evicts_oldest_home_readings_first(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite", max_bytes=BUDGET) as outbox:
        vitals = outbox.append([draft(Metric.SPO2, 95, i=i) for i in range(50)])
        fill(outbox, Metric.MOTION, 1, 20)  # 2000 home readings: well past the budget
        counters = outbox.counters()
        assert counters["evicted_home"] > 0 and counters["evicted_vital"] == 0
        assert outbox.size_bytes() <= BUDGET * 1.05
        kept = {r.seq for r in outbox.peek(100_000)}
        assert {v.seq for v in vitals} <= kept, "vital signs are never the first to go"
        assert max(kept) == outbox.last_seq(), "the newest home readings are kept"
        assert counters["accepted"] - counters["evicted_home"] == outbox.depth()
        messages = [a for a in alarms(outbox) if "dropped" in a["message"]]
        assert messages and messages[0]["detail"]["level"] == "error"
        assert messages[0]["detail"]["totals"]["evicted_home"] > 0


def test_only_vitals_left_refuses_home_then_evicts_oldest_vitals(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite", max_bytes=BUDGET) as outbox:
        fill(outbox, Metric.SPO2, 96, 12)  # vitals alone past the budget: accepted into the reserve
        assert outbox.counters()["evicted_vital"] == 0
        before = outbox.depth()
        assert outbox.size_bytes() >= BUDGET
        refused = outbox.append([draft(Metric.MOTION, 1)])
        assert refused == [] and outbox.counters()["refused_home"] == 1 and outbox.depth() == before
        fill(outbox, Metric.SPO2, 96, 20)  # past the reserve: the oldest vitals go, counted, critical alarm
        counters = outbox.counters()
        assert counters["evicted_vital"] > 0
        assert outbox.size_bytes() <= BUDGET * 1.3
        assert outbox.peek(1)[0].seq > 1 and outbox.last_seq() == counters["accepted"]
        levels = {a["detail"].get("level") for a in alarms(outbox)}
        assert "critical" in levels


def test_refused_home_reading_is_counted(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite", max_bytes=BUDGET) as outbox:
        while outbox.size_bytes() < BUDGET:
            fill(outbox, Metric.SPO2, 96, 1)
        assert outbox.append([draft(Metric.MOTION, 1), draft(Metric.SPO2, 94)]) != []
        counters = outbox.counters()
        assert counters["refused_home"] == 1
        assert json.loads(outbox.peek_rows(1, after_seq=outbox.last_seq() - 1)[0].payload)["metric"] == "spo2"


@pytest.mark.parametrize("n", [0, 1, 3])
def test_append_returns_one_reading_per_draft(tmp_path: Path, n: int) -> None:
    with open_outbox(tmp_path / "o.sqlite") as outbox:
        assert len(outbox.append([draft(i=i) for i in range(n)])) == n
        assert outbox.depth() == n


# ------------------------------------------------------------------------------------------------------------
# Replay window: acknowledged readings are kept (marked sent), pruned by age or for room, never unsent ones
# ------------------------------------------------------------------------------------------------------------
class FakeClock:
    """The gateway clock, moved by the test."""

    def __init__(self) -> None:
        self.now = AT

    def __call__(self) -> datetime:
        return self.now


def unsent_seqs(outbox: Outbox) -> list[int]:
    return [r.seq for r in outbox.peek_rows(1_000_000)]


def test_acknowledged_readings_are_kept_for_replay_and_no_longer_count_as_unsent(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite") as outbox:
        outbox.append([draft(value=90 + i, i=i, urgent=i == 1) for i in range(10)])
        assert outbox.mark_sent([1, 2, 3, 4]) == 4
        assert outbox.mark_sent([3, 4]) == 0, "marking twice changes nothing"
        assert outbox.depth() == 6 and unsent_seqs(outbox) == [5, 6, 7, 8, 9, 10]
        assert outbox.oldest_unsent() == AT + timedelta(seconds=4), "oldest *unsent*"
        assert not outbox.has_urgent(), "the urgent reading was sent"
        assert outbox.kept_sent() == 4 and outbox.stats().kept_sent == 4
        assert [r.seq for r in outbox.sent_rows(2, 100, 10)] == [2, 3, 4], "replay reads sent rows only"
        assert [r.seq for r in outbox.sent_rows(1, 100, 2)] == [1, 2]
        assert outbox.kept_runs([(1, 3), (8, 14)]) == [(1, 3), (8, 10)], "kept = sent or unsent, never invented"
        outbox.mark_sent(range(5, 11))
        assert outbox.depth() == 0 and outbox.oldest_unsent() is None and outbox.kept_sent() == 10


def test_sent_rows_expire_after_the_replay_window_and_unsent_rows_never_do(tmp_path: Path) -> None:
    clock = FakeClock()
    with open_outbox(tmp_path / "o.sqlite", clock=clock, replay_retention_s=3600) as outbox:
        outbox.append([draft(i=i) for i in range(20)])
        outbox.mark_sent(range(1, 11))
        clock.now = AT + timedelta(seconds=3599)
        assert outbox.prune_sent() == 0 and outbox.kept_sent() == 10
        clock.now = AT + timedelta(seconds=3601)
        assert outbox.prune_sent() == 10
        assert outbox.kept_runs([(1, 20)]) == [(11, 20)] and unsent_seqs(outbox) == list(range(11, 21))
        assert outbox.counters()["pruned_sent"] == 10
        clock.now = AT + timedelta(days=30)  # unsent readings wait for the broker however long it takes
        assert outbox.prune_sent() == 0 and outbox.depth() == 10
        outbox.mark_sent([11])  # expiry also runs on every acknowledgement: 11 is fresh, nothing else is sent
        assert outbox.kept_sent() == 1


def test_replay_retention_zero_deletes_on_acknowledgement(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite", replay_retention_s=0) as outbox:
        outbox.append([draft(i=i) for i in range(5)])
        assert outbox.mark_sent([1, 2]) == 2
        assert outbox.kept_sent() == 0 and outbox.kept_runs([(1, 5)]) == [(3, 5)]


def test_sent_rows_make_room_before_any_unsent_reading_is_at_risk(tmp_path: Path) -> None:
    clock = FakeClock()
    with open_outbox(tmp_path / "o.sqlite", max_bytes=BUDGET, clock=clock) as outbox:
        # a replay window worth more than half the budget: sent home readings (the first to go if unsent)
        while outbox.budget_pct() < 55:
            fill(outbox, Metric.MOTION, 1, 1)
            outbox.mark_sent(range(1, outbox.last_seq() + 1))
        assert outbox.depth() == 0 and outbox.kept_sent() > 0
        assert not alarms(outbox), "sent rows never raise the budget alarm"
        # now the broker is away: unsent readings pile up past the budget
        history = []
        while outbox.counters()["evicted_home"] == 0:
            fill(outbox, Metric.MOTION, 1, 1)
            counters = outbox.counters()
            history.append((outbox.kept_sent(), counters["evicted_home"], len(alarms(outbox))))
        assert outbox.counters()["pruned_sent_early"] > 0
        for kept_sent, evicted, raised in history:
            if evicted or raised:
                assert kept_sent == 0, "sent rows were all gone before the alarm or the first eviction"
        assert history[-1][2] >= 1 and alarms(outbox)[0]["detail"]["level"] == "warning"
        counters = outbox.counters()
        assert counters["evicted_vital"] == counters["refused_home"] == 0


def test_pruning_for_room_leaves_every_unsent_reading(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.sqlite", max_bytes=BUDGET) as outbox:
        fill(outbox, Metric.SPO2, 96, 4)
        outbox.mark_sent(range(1, 201))  # 200 sent, 200 unsent, interleaved by seq below later ones
        unsent_before = unsent_seqs(outbox)
        while outbox.counters()["pruned_sent_early"] == 0:
            fill(outbox, Metric.SPO2, 96, 1)
        assert set(unsent_before) <= set(unsent_seqs(outbox))
        assert outbox.depth() == outbox.last_seq() - 200, "only sent rows went"


def test_an_outbox_from_before_the_replay_window_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript("""
            CREATE TABLE readings (seq INTEGER PRIMARY KEY, keep INTEGER NOT NULL, urgent INTEGER NOT NULL,
                                   received_at TEXT NOT NULL, payload BLOB NOT NULL);
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO counters VALUES ('last_seq', 2);
        """)
        with open_outbox(tmp_path / "donor.sqlite") as donor:
            donor.append([draft(), draft()])
            rows = [(r.seq, 1, 0, AT.isoformat(), r.payload) for r in donor.peek_rows(2)]
        old.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?)", rows)
    with open_outbox(path) as outbox:
        assert unsent_seqs(outbox) == [1, 2] and outbox.depth() == 2, "old rows are unsent"
        assert [r.seq for r in outbox.append([draft()])] == [3]
        outbox.mark_sent([1])
        assert outbox.depth() == 2 and outbox.kept_sent() == 1
