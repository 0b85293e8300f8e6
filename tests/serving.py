"""The one way the tests serve an ASGI app over real HTTP: uvicorn in a thread of this process, on a free port,
configured as ``carewatch api`` serves it (``server_config``: no proxy headers)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from waiting import wait_until

from carewatch.api.app import server_config
from carewatch.embedded import free_port


@contextlib.contextmanager
def serve(app: Any, **options: Any) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, **options))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 30, "uvicorn to start", error=RuntimeError)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
