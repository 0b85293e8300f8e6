"""Prometheus metrics of a scorer replica: its buckets, and the estate's scoring health read from the database at
scrape time (so a stalled site shows on every replica's /metrics, whichever replica is stuck)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from carewatch.prometheus import serve_registry
from carewatch.scoring.replicas import LeaseKeeper, scoring_health

REGISTRY = CollectorRegistry(auto_describe=False)


class ScorerCollector(Collector):
    """Gauges for one replica (its bucket count) and for the estate (live replicas, stalled sites)."""

    def __init__(self, keeper: LeaseKeeper, dsn: str, stall_after: timedelta) -> None:
        self.keeper = keeper
        self.dsn = dsn
        self.stall_after = stall_after

    def collect(self) -> Iterator[GaugeMetricFamily]:
        held = GaugeMetricFamily("carewatch_scorer_buckets_held", "Site buckets this replica holds",
                                 labels=["replica"])
        held.add_metric([self.keeper.replica_id], len(self.keeper.buckets))
        yield held
        try:
            with psycopg.connect(self.dsn, connect_timeout=3, application_name="carewatch-scorer-metrics") as conn:
                health = scoring_health(conn, self.stall_after)
        except psycopg.Error:
            return  # the database is unreachable: the estate gauges are absent (alert on absent())
        for name, text, value in (
            ("carewatch_scoring_live_replicas", "Scorer replicas with a live heartbeat and lease session",
             health.live_replicas),
            ("carewatch_scoring_buckets_held", "Site buckets held by any replica", health.buckets_held),
            ("carewatch_scoring_buckets", "Site buckets in the estate", health.buckets),
            ("carewatch_scoring_stalled_sites", "Sites not scored within the stall limit (scoring_stalled)",
             health.stalled_sites),
            ("carewatch_scoring_oldest_scored_seconds", "Age of the least recently scored bucket",
             health.oldest_scored_s or 0.0),
        ):
            yield GaugeMetricFamily(name, text, value=value)


_watched: dict[str, ScorerCollector] = {}
_lock = threading.Lock()


def watch(keeper: LeaseKeeper, dsn: str, stall_after: timedelta) -> None:
    """Report this replica (the last one started in this process, for tests and the demo)."""
    with _lock:
        old = _watched.pop("current", None)
        if old is not None:
            REGISTRY.unregister(old)
        _watched["current"] = ScorerCollector(keeper, dsn, stall_after)
        REGISTRY.register(_watched["current"])


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (once per process; 0 = off)."""
    serve_registry(REGISTRY, port)
