"""A plain streaming replica of a private test cluster: the standby the API's report pool reads.

``StreamingStandby`` clones a running :class:`EmbeddedPostgres` with ``pg_basebackup -R`` (which writes
``primary_conninfo`` and ``standby.signal``) and runs it as a hot standby on a port of its own. The primary's
defaults are enough (``wal_level = replica``, ten WAL senders, and initdb's ``trust`` lines for replication from
127.0.0.1). As root, both run as the ``postgres`` account, as every embedded cluster does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg

from carewatch.embedded import EmbeddedError, EmbeddedPostgres, find_postgres_bin, wait_for


def skip_reason() -> str | None:
    """Why a primary and a standby cannot run here (None: they can)."""
    try:
        bindir = find_postgres_bin()
    except EmbeddedError as exc:
        return str(exc)
    if not (bindir / "pg_basebackup").exists() and shutil.which("pg_basebackup") is None:
        return f"pg_basebackup is not installed next to {bindir} (Debian: apt-get install postgresql)"
    return None


class StreamingStandby(EmbeddedPostgres):
    """A hot standby of ``primary``, streaming from it; :meth:`stop` and :meth:`start` it at will."""

    def __init__(self, primary: EmbeddedPostgres, data_dir: Path, port: int) -> None:
        super().__init__(data_dir, port, primary.database, primary.user)
        self.primary = primary

    def start(self, timeout: float = 60) -> str:
        self._prepare_dir()
        if not self.initialised():
            # -c fast: the backup's checkpoint at once, not spread over minutes of an idle server
            self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", self.user,
                      "-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast", "--no-sync")
        super().start(timeout)  # initdb skipped (a data directory exists); the database came with the clone
        wait_for(self.streaming, timeout, f"the standby on port {self.port} to stream from the primary",
                 interval=0.2)
        return self.dsn

    def streaming(self) -> bool:
        try:
            with psycopg.connect(self.primary.admin_dsn, connect_timeout=2) as conn:
                return conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                                    ).fetchone() == (1,)
        except psycopg.Error:
            return False

    def catch_up(self, timeout: float = 30) -> None:
        """Wait until the standby has replayed everything the primary wrote so far."""
        with psycopg.connect(self.primary.admin_dsn, autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]

        def replayed() -> bool:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                return bool(conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0])

        wait_for(replayed, timeout, "the standby to replay the primary's writes", interval=0.1)
