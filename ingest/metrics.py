"""Prometheus metrics of the ingest workers.

They live in their own registry (several workers may run in one process: tests, the demo), labelled by worker.
:func:`serve` exposes it on ``settings.metrics_port``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from carewatch.ingest.store import BatchResult
from carewatch.prometheus import serve_registry

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter("carewatch_ingest_messages", "MQTT messages handled (committed and acknowledged)",
                   ["worker", "channel"], registry=REGISTRY)
READINGS_IN = Counter("carewatch_ingest_readings_in", "Readings received, good or bad", ["worker"],
                      registry=REGISTRY)
STORED = Counter("carewatch_ingest_rows_stored", "Readings inserted into the readings table", ["worker"],
                 registry=REGISTRY)
DUPLICATES = Counter("carewatch_ingest_duplicates", "Re-delivered readings dropped (already stored)", ["worker"],
                     registry=REGISTRY)
DEAD_LETTERS = Counter("carewatch_ingest_dead_letters", "Dead letters written, by reason class",
                       ["worker", "reason_class"], registry=REGISTRY)
BATCH_SIZE = Histogram("carewatch_ingest_batch_readings", "Readings per committed batch", ["worker"],
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000), registry=REGISTRY)
COMMIT_SECONDS = Histogram("carewatch_ingest_commit_seconds", "Time to write and commit one batch", ["worker"],
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY)
LAG_SECONDS = Gauge("carewatch_ingest_lag_seconds",
                    "now - received_at (gateway clock) of the newest reading committed", ["worker"],
                    registry=REGISTRY)
QUEUE_DEPTH = Gauge("carewatch_ingest_queue_depth", "Messages received but not yet committed", ["worker"],
                    registry=REGISTRY)
OLDEST_PENDING = Gauge("carewatch_ingest_oldest_pending_seconds",
                       "Age of the oldest message received but not yet committed and acknowledged (0 when none); "
                       "keeps growing while the database is down, unlike lag_seconds", ["worker"],
                       registry=REGISTRY)
MISSING_SEQS = Gauge("carewatch_ingest_missing_seqs", "Sequence numbers never received below a gateway's last_seq",
                     ["gateway_id"], registry=REGISTRY)
GAPS = Counter("carewatch_ingest_sequence_gaps", "Sequence numbers newly found missing (gaps opened)",
               ["worker"], registry=REGISTRY)
RESEND_REQUESTS = Counter("carewatch_ingest_resend_requests", "Resend requests published to gateways (gap recovery)",
                          ["worker"], registry=REGISTRY)
RESEND_READINGS = Counter("carewatch_ingest_resend_readings", "Readings asked for again in resend requests",
                          ["worker"], registry=REGISTRY)
DB_ERRORS = Counter("carewatch_ingest_db_errors", "Batches that failed to commit and were retried", ["worker"],
                    registry=REGISTRY)


def record_batch(worker: str, result: BatchResult, commit_seconds: float, lag_seconds: float | None) -> None:
    """Account one committed batch."""
    READINGS_IN.labels(worker).inc(result.readings_in)
    STORED.labels(worker).inc(result.stored)
    DUPLICATES.labels(worker).inc(result.duplicates)
    for reason_class, n in result.dead_letters_by_class.items():
        DEAD_LETTERS.labels(worker, reason_class).inc(n)
    BATCH_SIZE.labels(worker).observe(result.readings_in)
    COMMIT_SECONDS.labels(worker).observe(commit_seconds)
    if lag_seconds is not None:
        LAG_SECONDS.labels(worker).set(lag_seconds)
    for gateway_id, missing in result.missing_seqs.items():
        MISSING_SEQS.labels(gateway_id).set(missing)
    GAPS.labels(worker).inc(sum(result.new_gaps.values()))


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (once per process; 0 = off)."""
    serve_registry(REGISTRY, port)
