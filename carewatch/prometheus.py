"""Serving a service's Prometheus registry over HTTP: the one helper ingest, the scorer and the API share."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, start_http_server

_served: set[tuple[int, int]] = set()
_lock = threading.Lock()


def serve_registry(registry: CollectorRegistry, port: int) -> None:
    """Expose ``registry`` at /metrics on ``port``, once per registry and port in this process (0 = off): the demo
    runs several services in one process, and a service restarted in-process (tests) must not bind its port twice."""
    if port <= 0:
        return
    with _lock:
        if (id(registry), port) not in _served:
            start_http_server(port, registry=registry)
            _served.add((id(registry), port))
