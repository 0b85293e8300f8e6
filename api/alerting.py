"""What the alert and incident routes share (``api/routes_alerts.py``, ``api/routes_incidents.py``): the status
filter, the query of rows with their home's and resident's names, the audit note of a page read, and running a
state transition (whose only implementation is in scoring/) with its refusals answered 409."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from fastapi import HTTPException, status

from carewatch.api.deps import Ctx, PageParams


def statuses(requested: list[str] | None, unresolved: Sequence[str]) -> list[str]:
    """The statuses asked for (default: every unresolved one); 422 naming the first unknown one."""
    chosen = requested or list(unresolved)
    allowed = [*unresolved, "resolved"]
    bad = set(chosen) - set(allowed)
    if bad:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            [{"loc": ["query", "status"], "field": "status", "type": "value_error",
                              "msg": f"unknown status {sorted(bad)[0]!r}: use {', '.join(allowed[:-1])} or "
                                     f"{allowed[-1]}"}])
    return chosen


def named_rows_sql(table: str, alias: str, visible: str, filters: str, order: str) -> str:
    """Rows of ``table`` the caller may see (``visible``), with their site's and resident's names, filtered by
    ``%(statuses)s``, ``%(site)s``, ``%(resident)s`` and ``filters`` (more ``AND`` clauses), one page long.
    Every argument is written in code, never taken from a request."""
    return f"""SELECT {alias}.*, r.display_name AS resident_name, s.name AS site_name
                FROM {table} {alias} JOIN sites s ON s.site_id = {alias}.site_id
                LEFT JOIN residents r ON r.resident_id = {alias}.resident_id
                WHERE {visible}
                  AND {alias}.status = ANY(%(statuses)s)
                  AND (%(site)s::text IS NULL OR {alias}.site_id = %(site)s)
                  AND (%(resident)s::text IS NULL OR {alias}.resident_id = %(resident)s)
                  {filters}
                ORDER BY {order}
                LIMIT %(limit)s OFFSET %(offset)s"""


def noted_page(ctx: Ctx, rows: list[dict[str, Any]], paging: PageParams, what: str, key: str) -> list[dict[str, Any]]:
    """The page of ``rows`` (one more was fetched to know if there is a next page), its read noted in the audit log."""
    page = rows[: paging.limit]
    ctx.note("read", what, None, ids=[r[key] for r in page],
             residents=sorted({r["resident_id"] for r in page if r["resident_id"]}))
    return page


def transition(ctx: Ctx, call: Callable[[], object], refusals: tuple[type[Exception], ...], refused: str) -> None:
    """Run ``call`` in a transaction; a refusal (the state machine's ValueError, LookupError...) is a 409 with its
    message (``refused`` when it has none). Database errors go on to the API's own handler."""
    try:
        with ctx.conn.transaction():
            call()
    except psycopg.Error:
        raise
    except refusals as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc) or refused) from None
