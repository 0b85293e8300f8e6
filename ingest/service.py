"""Run an ingest worker as a service: logging, metrics endpoint, signals.

``python -m carewatch.ingest.service --worker-id 2`` runs one worker until SIGTERM/SIGINT, then commits the open
batch, acknowledges it and disconnects. Run N of them (stable ``--worker-id`` each) against Mosquitto to share
the load through ``$share/ingest/...``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from carewatch.ingest import metrics
from carewatch.ingest.consumer import IngestWorker
from carewatch.logs import configure_logging
from carewatch.settings import Settings, get_settings


def run_ingest(
    settings: Settings,
    *,
    worker_id: str = "1",
    shared: bool | None = None,
    stop_event: threading.Event | None = None,
) -> IngestWorker:
    """Run one worker until ``stop_event`` is set or SIGTERM/SIGINT arrives; returns the stopped worker.

    ``shared``: True = ``$share/ingest/...`` (Mosquitto), False = plain subscription (amqtt, a single worker),
    None = ``settings.ingest_shared``, and when that is None too, try shared and fall back if refused.
    Signal handlers are installed only when called from the main thread.
    """
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    metrics.serve(settings.metrics_port)
    worker = IngestWorker(settings, worker_id=worker_id, shared=shared)
    worker.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        worker.stop()
    return worker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker-id", default="1", help="stable id of this worker (its MQTT session)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--shared", dest="shared", action="store_true", default=None,
                       help="use the $share/ingest subscription (Mosquitto)")
    group.add_argument("--no-shared", dest="shared", action="store_false", help="plain subscription (amqtt)")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings)
    run_ingest(settings, worker_id=args.worker_id, shared=args.shared)
    return 0


if __name__ == "__main__":
    sys.exit(main())
