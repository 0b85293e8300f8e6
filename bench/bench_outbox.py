"""Outbox append throughput: the real setting (WAL + synchronous=FULL) beside baselines in the same run.

    .venv/bin/python bench/bench_outbox.py [--readings 20000] [--batch 1 --batch 100]

Baselines: the same appends with synchronous=OFF (no fsync at all: what durability costs) and into an
in-memory SQLite (no disk: what SQLite + validation cost). Batch 1 is one reading per transaction (worst
case: one BLE notification at a time); the gateway commits all notifications that arrived together in one
transaction, so real batches sit in between.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from carewatch.gateway.outbox import Outbox
from carewatch.gateway.pipeline import ReadingDraft
from carewatch.wire import DeviceKind, Metric


def run(path: str, synchronous: str, readings: int, batch: int) -> float:
    now = datetime.now(UTC)
    drafts = [ReadingDraft("ox-1", DeviceKind.PULSE_OXIMETER, Metric.SPO2, 97.0, "%", now, now)] * batch
    with Outbox(path, site_id="bench", gateway_id="bench", synchronous=synchronous) as outbox:  # type: ignore[arg-type]
        rounds = max(1, readings // batch)
        start = time.perf_counter()
        for _ in range(rounds):
            outbox.append(drafts)
        elapsed = time.perf_counter() - start
    return rounds * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--batch", type=int, action="append", help="readings per append (repeatable)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files (default: a temp dir)")
    args = parser.parse_args()
    batches = args.batch or [1, 100]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"{'batch':>6} {'FULL (real)':>14} {'NORMAL':>12} {'OFF':>12} {':memory:':>12}   readings/s")
        for batch in batches:
            n = args.readings if batch > 1 else min(args.readings, 5000)
            full = run(f"{tmp}/full-{batch}.sqlite", "FULL", n, batch)
            normal = run(f"{tmp}/normal-{batch}.sqlite", "NORMAL", n, batch)
            off = run(f"{tmp}/off-{batch}.sqlite", "OFF", n, batch)
            memory = run(":memory:", "OFF", n, batch)
            print(f"{batch:>6} {full:>14,.0f} {normal:>12,.0f} {off:>12,.0f} {memory:>12,.0f}")
        print("FULL = fsync of the WAL on every commit (what the gateway uses); OFF/:memory: are baselines.")


if __name__ == "__main__":
    main()
