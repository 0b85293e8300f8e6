"""A real pg_auto_failover formation on this machine for the failover test: a monitor, a primary and a standby.

Each node is one ``pg_autoctl create ... --run`` process (the keeper, which starts and supervises PostgreSQL) in
a process group of its own, so :meth:`Formation.kill` can SIGKILL a whole node, keeper and postmaster together:
killing only the postmaster makes the keeper restart it, which is not a node failure. PostgreSQL refuses to run
as root, so as root every node runs as the ``postgres`` account (the caller makes ``base`` traversable).

The monitor's health checks are tightened (1 s period, unhealthy after 6 s instead of 20 s) so a failover fits
in a test; docs/operations.md gives the production values.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from waiting import wait_until

from carewatch.embedded import find_postgres_bin, free_port
from carewatch.settings import process_env

#: Monitor settings for the test (production defaults in brackets): check every 1 s (5 s), 1 s timeout (5 s),
#: 1 retry (2) after 0.5 s (2 s); a node unhealthy after 6 s (20 s); demote timeout 5 s (30 s).
FAST_HEALTH_CHECKS = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "6000",
    # the monitor waits this long for an unreachable primary to demote itself before promoting (30 s); it must
    # stay above the keepers' network_partition_timeout (below), after which a cut-off primary demotes itself
    "pgautofailover.primary_demote_timeout": "5000",
}
#: Keeper settings of every node (production default 20 s): a primary that cannot reach the monitor or its
#: standby for this long stops taking writes (no split brain).
KEEPER_TIMEOUTS = {"timeout.network_partition_timeout": "3"}


def pg_autoctl() -> str | None:
    """Path of pg_autoctl, or None when pg_auto_failover is not installed."""
    return shutil.which("pg_autoctl") or next(
        (p for p in ("/usr/bin/pg_autoctl", *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin/pg_autoctl"))))
         if Path(p).exists()), None)


@dataclass
class Node:
    name: str
    port: int
    pgdata: Path
    proc: subprocess.Popen[bytes] | None = None


class Formation:
    """Monitor + nodes under ``base``; :meth:`stop` ends every process it started."""

    def __init__(self, base: Path, database: str = "carewatch") -> None:
        exe = pg_autoctl()
        if exe is None:
            raise RuntimeError("pg_autoctl not found")
        self.exe = exe
        self.base = base
        self.database = database
        self.account = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.user = self.account.pw_name if self.account else pwd.getpwuid(os.geteuid()).pw_name
        base.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            os.chown(base, self.account.pw_uid, self.account.pw_gid)
        self.env = process_env(drop_prefixes=("PG",), PATH=f"{find_postgres_bin()}:{os.environ.get('PATH', '')}",
                               XDG_CONFIG_HOME=str(base / "config"), XDG_DATA_HOME=str(base / "data"),
                               HOME=str(base), LC_ALL="C.UTF-8")
        self.monitor = Node("monitor", free_port(), base / "monitor")
        self.nodes: list[Node] = []

    # -- processes ---------------------------------------------------------------------------------------
    def _preexec(self) -> Callable[[], None] | None:
        if self.account is None:
            return None
        uid, gid = self.account.pw_uid, self.account.pw_gid

        def drop() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        return drop

    def _spawn(self, node: Node, *args: str) -> None:
        log = open(self.base / f"{node.name}.log", "ab")  # noqa: SIM115 - handed to the child
        node.proc = subprocess.Popen([self.exe, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=self._preexec(), start_new_session=True, cwd=self.base)
        log.close()

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True,
                             preexec_fn=self._preexec(), cwd=self.base, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(args)}: {out.stderr[-2000:]}")
        return out.stdout

    @property
    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor.port}/pg_auto_failover?sslmode=disable"

    @property
    def monitor_admin_dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.monitor.port}/pg_auto_failover"

    def start_monitor(self, timeout: float = 60) -> None:
        self._spawn(self.monitor, "create", "monitor", "--pgdata", str(self.monitor.pgdata), "--pgport",
                    str(self.monitor.port), "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl", "--run")
        self._wait(lambda: self._monitor_ready(), timeout, "the monitor")
        with psycopg.connect(self.monitor_admin_dsn, autocommit=True) as conn:
            for name, value in FAST_HEALTH_CHECKS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = {value}")
            conn.execute("SELECT pg_reload_conf()")

    def _monitor_ready(self) -> bool:
        try:
            with psycopg.connect(self.monitor_admin_dsn, connect_timeout=2) as conn:
                conn.execute("SELECT count(*) FROM pgautofailover.node")
            return True
        except psycopg.Error:
            return False

    def add_node(self, timeout: float = 90) -> Node:
        """Create and run the next node; the first becomes the primary, the next ones standbys."""
        node = Node(f"node{len(self.nodes) + 1}", free_port(), self.base / f"node{len(self.nodes) + 1}")
        self.nodes.append(node)
        self._spawn(node, "create", "postgres", "--pgdata", str(node.pgdata), "--pgport", str(node.port),
                    "--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--auth", "trust", "--no-ssl",
                    "--monitor", self.monitor_uri, "--name", node.name, "--dbname", self.database)

        def created() -> bool:
            if len(self.nodes) > 1:
                self._checkpoint()
            assert node.proc is not None
            return node.proc.poll() is not None

        self._wait(created, timeout, f"pg_autoctl create {node.name}")
        if node.proc is not None and node.proc.returncode != 0:
            raise RuntimeError(f"pg_autoctl create {node.name} failed:\n{self.log_tail()}")
        for name, value in KEEPER_TIMEOUTS.items():
            self.run("config", "set", "--pgdata", str(node.pgdata), name, value)
        self._spawn(node, "run", "--pgdata", str(node.pgdata))
        want = "single" if len(self.nodes) == 1 else "secondary"  # then the first one reports "primary"
        self._wait(lambda: self.state().get(node.name) == (want, want), timeout, f"{node.name} to be {want}")
        return node

    def _checkpoint(self) -> None:
        """pg_basebackup starts with a *spread* checkpoint (minutes on an idle server): hurry it along."""
        primary = next((n for n in self.nodes[:-1] if self.state().get(n.name, ("",))[0] in ("primary",
                                                                                            "wait_primary")), None)
        if primary is None:
            return
        with contextlib.suppress(psycopg.Error), psycopg.connect(
                f"postgresql://{self.user}@127.0.0.1:{primary.port}/postgres", connect_timeout=2,
                autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def state(self) -> dict[str, tuple[str, str]]:
        """node name -> (reported state, assigned state), from the monitor."""
        try:
            with psycopg.connect(self.monitor_admin_dsn, connect_timeout=2) as conn:
                return {n: (r, a) for n, r, a in conn.execute(
                    "SELECT nodename, reportedstate::text, goalstate::text FROM pgautofailover.node")}
        except psycopg.Error:
            return {}

    def primary(self) -> str | None:
        return next((n for n, (r, a) in self.state().items() if r == a and r in ("primary", "wait_primary",
                                                                                  "single")), None)

    @property
    def dsn(self) -> str:
        """The multi-host connection string every service uses: the read-write node, whichever it is."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return (f"postgresql://{self.user}@{hosts}/{self.database}"
                "?target_session_attrs=read-write&connect_timeout=3")

    def kill(self, name: str) -> None:
        """SIGKILL a node: its keeper and its PostgreSQL (every process of its group, and the postmaster)."""
        node = next(n for n in self.nodes if n.name == name)
        pids = []
        pidfile = node.pgdata / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(pidfile.read_text().split()[0]))
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if node.proc is not None:
            node.proc.wait(10)

    def stop(self) -> None:
        for node in [*self.nodes, self.monitor]:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in [*self.nodes, self.monitor]:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(5)
        # a postmaster that outlived its keeper
        for node in [*self.nodes, self.monitor]:
            with contextlib.suppress(OSError, ValueError, IndexError, ProcessLookupError):
                os.kill(int((node.pgdata / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for node in [self.monitor, *self.nodes]:
            path = self.base / f"{node.name}.log"
            if path.exists():
                parts.append(f"--- {node.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    @staticmethod
    def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(predicate, timeout, what, interval=1.0, error=TimeoutError)
