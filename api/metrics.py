"""Prometheus metrics of the API: where its heavy read-only reports read (docs/operations.md, "Reports on the
standby"), and the standby's lag, measured when scraped.

One registry of the API's own, as ingest's and the scorer's (a process may hold several apps: tests, the demo);
:func:`serve` exposes it on ``settings.metrics_port`` (``carewatch api`` calls it; 0 = off). Every metric is
defined here once; ``api/pooling.py`` counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from carewatch.prometheus import serve_registry

REGISTRY = CollectorRegistry(auto_describe=True)

#: ``reason`` of each target: standby ``fresh``; primary ``no_standby`` (the report URL's libpq found no standby);
#: primary_pool ``not_configured``, ``unreachable`` (no host of the report URL answered, now or within the last
#: REPORT_RETRY_S), ``busy`` (every report connection in use), ``lag`` (the standby further behind than
#: CAREWATCH_REPORT_MAX_LAG_S), ``not_streaming`` (its WAL receiver is down), or the reason a report stopped on
#: the standby and is being read again (``conflict``, ``cancelled``, ``connection_lost``: see STOPS).
READS = Counter("carewatch_api_report_reads",
                "Heavy read-only reports by the server they read: standby, primary (the report login's URL found "
                "no standby) or primary_pool (the services' pool, read-only), and why", ["target", "reason"],
                registry=REGISTRY)
STANDBY_LAG = Gauge("carewatch_api_report_standby_lag_seconds",
                    "Replay lag of the standby the report pool reads, measured when scraped (or shown as measured "
                    "by a report, /healthz or a scrape within the last few seconds): 0 when all WAL received is "
                    "replayed, else the age of the last replayed transaction; NaN while the report pool reaches no "
                    "standby", registry=REGISTRY)
#: What measures STANDBY_LAG on scrape: the report pool of the app serving this process (one per process; in a
#: process holding several apps, the one opened last). None: no report pool, NaN.
_lag_source: Callable[[], float] | None = None


def _scraped_lag() -> float:
    source = _lag_source
    return math.nan if source is None else source()


STANDBY_LAG.set_function(_scraped_lag)


def measure_lag_with(source: Callable[[], float] | None) -> None:
    """Have STANDBY_LAG measured on scrape by ``source`` (a report pool's ``scrape_lag``), from now on."""
    global _lag_source
    _lag_source = source


def stop_measuring_lag(source: Callable[[], float]) -> None:
    """``source``'s pool closes: the gauge shows NaN, unless another pool measures it by now."""
    if _lag_source == source:
        measure_lag_with(None)
#: ``server``: standby or primary (the report login on a primary, or the primary pool); ``reason``: ``conflict``
#: (SQLSTATE class 40 or 57P04: cancelled by a conflict with recovery), ``cancelled`` (57014 but not a statement
#: timeout: pg_cancel_backend, a shutdown), ``statement_timeout`` (57014 from statement_timeout), or
#: ``connection_lost`` (57P01-57P03, or no SQLSTATE: the session ended, e.g. pg_terminate_backend or a failover).
STOPS = Counter("carewatch_api_report_cancellations",
                "Report queries the database stopped (not the report's own fault), by server and reason; one on "
                "the standby is read again from the primary pool", ["server", "reason"], registry=REGISTRY)
UNAVAILABLE = Counter("carewatch_api_report_unavailable",
                      "Reports answered 503 because their query was stopped and could not be read elsewhere "
                      "(reason: why the last attempt stopped, or busy: no primary connection free for the retry)",
                      ["reason"], registry=REGISTRY)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (once per process; 0 = off)."""
    serve_registry(REGISTRY, port)
