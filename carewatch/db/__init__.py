"""Database schema, migrations and connection helpers, shared by every stage: the pools (:func:`make_pool`, and
the API's read-only report pool, :func:`make_report_pool`) and small query helpers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
from psycopg import Cursor
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from carewatch.settings import check_secret

Row = TypeVar("Row")


def one(cursor: Cursor[Row]) -> Row:
    """The row of a query that always returns one (an aggregate, ``now()``, ``RETURNING``, a row just locked):
    ``one(conn.execute(...))[0]`` instead of ``fetchone()[0]``, so a missing row is a clear error, not a TypeError."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("the query returned no row")
    return row


def any_of(filters: Iterable[tuple[str, Iterable[Any] | None]], params: list[Any]) -> str:
    """SQL `` AND <column> = ANY(%b)`` for each (column, values) whose values are given (None: no filter), each list
    appended to ``params`` in order. The columns are the caller's own SQL, never input."""
    sql = ""
    for column, values in filters:
        if values is not None:
            sql += f" AND {column} = ANY(%b)"
            params.append(list(values))
    return sql


#: ``prepare=`` for a statement given a scorer replica's share of sites as one array parameter (``site_id =
#: ANY(%s)``: thousands of ids, ``scoring/replicas.py``) and run every tick on one connection: never prepared, so
#: each execution is planned with the list's values (a hashed ``= ANY``, or an index probe per site). Prepared
#: (psycopg does so from a statement's 6th execution on a connection), the server switched to a generic plan from
#: about the 11th, which compares every row with the whole list: at 22,000 sites ``gateway_pass``'s query went from
#: ~0.2 s to 6-9 s a call, the escalation candidates from ~0.1 to 1.5 s (docs/scaling.md). Planning each time costs
#: a few ms more per statement.
SITE_LIST_PREPARE: Final = False


def text_array(values: Iterable[str]) -> str:
    """A ``text[]`` literal of ``values``, for ``%s::text[]``: the same array psycopg's list dumper sends, built
    at C speed (``str.join``). psycopg's dumper checks and converts each element in Python (~5 us each): the scorer
    sends a few arrays of every id of a batch, and the (kind, id, alert kind) keys of every finding, per batch."""
    items = list(values)
    if not items:
        return "{}"
    joined = '","'.join(items)
    if '"' in joined or "\\" in joined:  # rare: escape each element
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in items)
    return '{"' + joined + '"}'


def make_pool(dsn: str, *, min_size: int = 1, max_size: int = 4, name: str = "carewatch") -> ConnectionPool:
    """A psycopg connection pool that waits for the database instead of failing on start-up."""
    pool = ConnectionPool(dsn, min_size=min_size, max_size=max_size, name=name, open=False,
                          kwargs={"application_name": name})
    pool.open(wait=False)
    return pool


# ------------------------------------------------------------------------------------------------------------
# The report pool: heavy read-only reports on a standby (docs/operations.md, "Reports on the standby")
# ------------------------------------------------------------------------------------------------------------
REPORT_POOL_NAME = "carewatch-api-reports"

#: True when the login could read a secret or write the audit trail: the owner, a superuser, carewatch_app. A
#: carewatch_report login can do neither (migration 0008), and nothing less suffices for the reports.
_PRIVILEGED_LOGIN = ("SELECT has_column_privilege('users', 'password_hash', 'SELECT') "
                     "OR has_table_privilege('audit_log', 'INSERT')")

#: Where this connection reads, and how far behind the primary: in recovery (a standby), a WAL receiver connected
#: to the upstream (every role sees that the row exists; only its details need pg_read_all_stats), and the replay
#: lag (0 when everything received is replayed; else the age of the last replayed transaction).
_STANDBY_STATE = """
    SELECT pg_is_in_recovery(),
           EXISTS (SELECT 1 FROM pg_stat_wal_receiver),
           CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
                ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 END"""


#: target_session_attrs values libpq knows only from version 14 on
_LIBPQ_14_ATTRS = ("prefer-standby", "standby", "primary", "read-only")


class PrivilegedReportLogin(psycopg.OperationalError):
    """The report pool's login may read secrets or write: it must be a login of carewatch_report only."""


def report_conninfo(url: str, password: SecretStr | None) -> str:
    """The report pool's connection string: ``url``, with ``password`` (CAREWATCH_REPORT_DB_PASSWORD) when the URL
    names none. Either password is refused when short or published, as every secret we choose (WeakSecretError).
    ``prefer-standby`` (and the other standby choices) need libpq 14: an older one is refused here, not at every
    connection attempt."""
    params = conninfo_to_dict(url)
    if params.get("target_session_attrs") in _LIBPQ_14_ATTRS and psycopg.pq.version() < 140000:
        raise ValueError(f"CAREWATCH_REPORT_DATABASE_URL: target_session_attrs={params['target_session_attrs']} "
                         f"needs libpq 14 or newer (this is {psycopg.pq.version()}): install psycopg[binary] or a "
                         "newer libpq")
    named = params.get("password")
    if named is not None:
        check_secret(str(named), "the password in CAREWATCH_REPORT_DATABASE_URL")
        return url
    if password is None:
        return url  # no password: trust, peer, a client certificate or a .pgpass file
    return make_conninfo(url, password=check_secret(password.get_secret_value(), "CAREWATCH_REPORT_DB_PASSWORD"))


def seeks_standby(conninfo: str) -> bool:
    """Whether connecting again may find a standby where this connection string found a primary: several hosts
    and ``target_session_attrs=prefer-standby`` (one host, or any other choice, finds the same node again)."""
    params = conninfo_to_dict(conninfo)
    return params.get("target_session_attrs") == "prefer-standby" and "," in str(params.get("host") or "")


def configure_report_connection(conn: psycopg.Connection[Any]) -> None:
    """Every report connection: refused unless its login is least-privileged; read-only whatever it runs."""
    conn.autocommit = True
    if one(conn.execute(_PRIVILEGED_LOGIN))[0]:
        raise PrivilegedReportLogin(
            "the report login may read secrets or write (owner, superuser or carewatch_app): give "
            "CAREWATCH_REPORT_DATABASE_URL a login of carewatch_report (`carewatch db migrate --report-login`)")
    conn.execute("SET default_transaction_read_only = on")
    conn.autocommit = False
    conn.read_only = True


def make_report_pool(conninfo: str, *, max_size: int = 2) -> ConnectionPool:
    """The API's pool for heavy read-only reports, opened without waiting. Connections are checked at checkout (a
    standby that went away is noticed then) and retried for 30 s at a time, then again when a report asks."""
    pool = ConnectionPool(conninfo, min_size=1, max_size=max_size, name=REPORT_POOL_NAME, open=False,
                          kwargs={"application_name": REPORT_POOL_NAME}, configure=configure_report_connection,
                          check=ConnectionPool.check_connection, reconnect_timeout=30)
    pool.open(wait=False)
    return pool


@dataclass(frozen=True)
class StandbyState:
    """Where a connection reads: a standby (``in_recovery``) streaming from its primary, this far behind."""

    in_recovery: bool
    streaming: bool
    lag_s: float | None

    def fresh(self, max_lag_s: float) -> bool:
        """A primary always is; a standby when it streams and is at most ``max_lag_s`` behind."""
        if not self.in_recovery:
            return True
        return self.streaming and self.lag_s is not None and self.lag_s <= max_lag_s


def standby_state(conn: psycopg.Connection[Any]) -> StandbyState:
    in_recovery, streaming, lag = one(conn.execute(_STANDBY_STATE))
    return StandbyState(bool(in_recovery), bool(streaming), None if lag is None else float(lag))


# ------------------------------------------------------------------------------------------------------------
# A statement timeout told from a cancellation without reading the message (docs/operations.md, "Replay
# conflicts")
# ------------------------------------------------------------------------------------------------------------
#: Where in its source each server build raises "canceling statement due to statement timeout" (file, line,
#: function: the F, L and R fields of the error, never translated), by its ``server_version``. A timeout and an
#: operator's cancel share SQLSTATE 57014, and their messages follow the session's ``lc_messages``; the place each is
#: raised from does not (two ereports in ProcessInterrupts). (None, None, None): the build named no place.
_TIMEOUT_RAISED_AT: dict[str, tuple[str | None, str | None, str | None]] = {}


def server_build(conn: psycopg.Connection[Any]) -> str:
    """The server's ``server_version`` as it reported it at connection (distribution suffix included; no I/O)."""
    return conn.info.parameter_status("server_version") or ""


def knows_statement_timeout(build: str) -> bool:
    """Whether :func:`learn_statement_timeout` already ran against this server build."""
    return build in _TIMEOUT_RAISED_AT


def learn_statement_timeout(conn: psycopg.Connection[Any]) -> None:
    """Make this server raise one statement timeout (1 ms, in a transaction or savepoint rolled back at once) and
    note where it raised it, once per server build. Leaves the connection as it was."""
    build = server_build(conn)
    if knows_statement_timeout(build):
        return
    raised_at: tuple[str | None, str | None, str | None] = (None, None, None)
    try:
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 1")
            conn.execute("SELECT pg_sleep(1)")
    except psycopg.errors.QueryCanceled as exc:
        raised_at = (exc.diag.source_file, exc.diag.source_line, exc.diag.source_function)
    _TIMEOUT_RAISED_AT[build] = raised_at


def is_statement_timeout(exc: psycopg.Error, build: str | None) -> bool:
    """Whether a 57014 from a server of ``build`` was raised where that build raises a statement timeout. True
    too when the place is not known (never learned, or the server named none): a report that may have timed out is
    not read a second time."""
    raised_at = _TIMEOUT_RAISED_AT.get(build or "", (None, None, None))
    if raised_at == (None, None, None):
        return True
    return (exc.diag.source_file, exc.diag.source_line, exc.diag.source_function) == raised_at
