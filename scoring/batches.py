"""What one evaluation pass did, and the transactions and subject locks every pass of the scorer runs under.

Every subject's work runs under a transaction-level advisory lock on the subject id, taken in sorted order (two
callers never race on a subject and never deadlock). The passes work on an autocommit connection (one
transaction per batch) or inside a caller's transaction (savepoints).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from carewatch.db import text_array

#: Only readings stored this recently count for the stored-to-alert latency (older ones: rescore, not news).
LATENCY_RELEVANT = timedelta(minutes=10)


@dataclass
class EvaluationSummary:
    """What one evaluate/rescore/tick call did."""

    residents: int = 0
    households: int = 0
    devices: int = 0
    unknown_subjects: list[str] = field(default_factory=list)
    observation_sets_written: int = 0
    behaviour_events_written: int = 0
    opened: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    incidents_escalated: list[int] = field(default_factory=list)
    suppressed: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    #: alert id -> seconds from the newest contributing reading's stored_at to the alert being committed
    latency_s: dict[int, float] = field(default_factory=dict)
    #: where the residents' evaluation spent its time (seconds): reading the batch, the rules, writing
    load_s: float = 0.0
    rules_s: float = 0.0
    write_s: float = 0.0

    def merge(self, other: EvaluationSummary) -> EvaluationSummary:
        for name in ("residents", "households", "devices", "observation_sets_written", "behaviour_events_written",
                     "suppressed", "load_s", "rules_s", "write_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("unknown_subjects", "opened", "updated", "resolved", "escalated", "incidents_escalated"):
            getattr(self, name).extend(getattr(other, name))
        self.errors.update(other.errors)
        self.latency_s.update(other.latency_s)
        return self

    def as_log(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "residents": self.residents, "households": self.households, "sets": self.observation_sets_written,
            "events": self.behaviour_events_written, "opened": len(self.opened), "updated": len(self.updated),
            "resolved": len(self.resolved), "escalated": len(self.escalated), "suppressed": self.suppressed,
            "errors": len(self.errors),
        }
        if self.load_s or self.rules_s or self.write_s:
            out.update(load_ms=round(self.load_s * 1000, 1), rules_ms=round(self.rules_s * 1000, 1),
                       write_ms=round(self.write_s * 1000, 1))
        if self.latency_s:
            values = list(self.latency_s.values())
            out["latency_max_ms"] = round(max(values) * 1000)
            out["latency_median_ms"] = round(float(np.median(values)) * 1000)
        return out


@contextmanager
def transaction(conn: psycopg.Connection) -> Iterator[None]:
    """One transaction (or a savepoint inside the caller's)."""
    with conn.transaction():
        yield


def lock_subjects(conn: psycopg.Connection, subject_ids: Iterable[str]) -> None:
    """Transaction-level advisory locks on the subjects, in sorted order (no deadlocks between callers).

    One statement for the lot: unnest walks the (Python-sorted) array in order, so the locks are taken in the
    same order by every caller, without a round trip per subject."""
    keys = [f"carewatch:subject:{subject}" for subject in sorted(set(subject_ids))]
    if keys:
        conn.execute("SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) "
                     "FROM unnest(%s::text[]) AS t(k)", (text_array(keys),))


def finish_latency(summary: EvaluationSummary, pending: list[tuple[int, datetime]]) -> None:
    """After commit: how long from the newest contributing reading being stored to its alert existing."""
    committed = datetime.now(UTC)
    for alert_id, stored_at in pending:
        delay = committed - stored_at
        if timedelta(0) <= delay <= LATENCY_RELEVANT:
            summary.latency_s[alert_id] = delay.total_seconds()


def json_safe(value: Any) -> Any:
    """``value`` as it reads back from a jsonb column (dates as strings): what the writers store and compare."""
    return json.loads(json.dumps(value, default=str))


def _dumps_safe(value: Any) -> str:
    return json.dumps(value, default=str)


def jsonb_safe(value: Any) -> Jsonb:
    """``Jsonb(json_safe(value))`` in one encoding instead of three: the same text is sent (dates as strings)."""
    return Jsonb(value, dumps=_dumps_safe)
