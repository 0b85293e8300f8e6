"""Start and stop Carewatch's own child processes (ingest, scorer, API, dashboard) for the demo and tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Supervisor:
    """Runs ``carewatch <subcommand>`` children with a shared environment; stops them all on exit."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Child:
        argv = [sys.executable, "-m", "carewatch", *args]
        child = Child(name, argv, self.log_dir / f"{name}.log")
        log = open(child.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            child.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**self.env, **(extra_env or {})}, start_new_session=True,
            )
        finally:
            log.close()
        self.children.append(child)
        return child

    def check(self) -> list[Child]:
        """Children that have died."""
        return [c for c in self.children if c.proc is not None and c.proc.poll() is not None]

    def stop(self, child: Child, timeout: float = 15, kill: bool = False) -> None:
        if child.proc is None or child.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            child.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()

    def stop_all(self, timeout: float = 15) -> None:
        for child in reversed(self.children):
            if child.alive() and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            self.stop(child, timeout=max(0.1, deadline - time.monotonic()))
