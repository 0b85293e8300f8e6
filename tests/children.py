"""A ``carewatch`` subcommand in a process of its own, with its own log file (the tests that kill and restart
services: tests/test_db_failover.py, tests/scoring/test_replicas.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class Service:
    """``python -m carewatch <args>`` in its own session, its output in ``<log_dir>/<log_name or name>.log``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path,
                 log_name: str | None = None) -> None:
        self.name = name
        self.log = log_dir / f"{log_name or name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "carewatch", *args], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL, the whole process group (a crash, not a shutdown)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and 20 s to shut down cleanly, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return f"--- {self.name}\n" + self.log.read_text(errors="replace")[-3000:]
