"""The delivery log: every notification attempt with its channel, recipient, time and result.

The one writer of ``notification_deliveries``. An attempt is recorded as 'pending' in the same transaction as the
escalation step that asked for it (so a crash between the two cannot lose it), claimed atomically by the one
replica that sends it (:func:`claim`), then completed with the channel's result after sending, outside any
transaction that holds incident locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from carewatch.db import SITE_LIST_PREPARE, one
from carewatch.notify.channels import Result


@dataclass(frozen=True)
class Pending:
    delivery_id: int
    site_id: str
    target_kind: str
    target_id: int
    level: int
    reason: str
    channel: str
    recipient: str
    created_at: datetime


def record_pending(conn: psycopg.Connection, *, site_id: str, target_kind: str, target_id: int, level: int,
                   reason: str, channel: str, recipient: str, at: datetime) -> int:
    """An attempt about to be made (call inside the escalation step's transaction)."""
    return one(conn.execute(
        """INSERT INTO notification_deliveries (site_id, target_kind, target_id, level, reason, channel, recipient,
                                                created_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING delivery_id""",
        (site_id, target_kind, target_id, level, reason, channel, recipient, at),
    ))[0]


def record_nobody(conn: psycopg.Connection, *, site_id: str, target_kind: str, target_id: int, level: int,
                  reason: str, at: datetime, level_name: str = "", detail: str | None = None) -> int:
    """A level with nobody on it: recorded as an attempt that reached no one (H-ESC-01). ``detail`` says why
    (default: the level's rota is empty)."""
    return one(conn.execute(
        """INSERT INTO notification_deliveries (site_id, target_kind, target_id, level, reason, channel, recipient,
                                                created_at, attempted_at, result, detail)
           VALUES (%s, %s, %s, %s, %s, 'none', 'nobody', %s, now(), 'no_recipient', %s) RETURNING delivery_id""",
        (site_id, target_kind, target_id, level, reason, at,
         detail or f"level {level} ({level_name}) has nobody on the rota: moving on to the next level"),
    ))[0]


#: A claim older than this (the replica died while sending) may be taken by another replica.
STALE_CLAIM = timedelta(minutes=2)
#: ``reason`` of the estate's own notifications (scoring stalled): any replica sends them, whatever its sites.
ESTATE = "estate"


def claim(conn: psycopg.Connection, claimant: str, limit: int = 200, *, site_ids: Sequence[str] | None = None,
          stale: timedelta = STALE_CLAIM) -> list[Pending]:
    """Claim pending attempts for sending, atomically: one ``UPDATE ... RETURNING`` over rows picked ``FOR UPDATE
    SKIP LOCKED``, so two replicas (or two passes) racing never both get one (no duplicate sends, H-ESC-11).
    ``site_ids``: only these sites' attempts (the replica's share; None: every site); the estate's own attempts
    go to whoever claims them first."""
    sites = None if site_ids is None else list(site_ids)
    with conn.transaction():
        rows = conn.execute(
        """UPDATE notification_deliveries d SET claimed_by = %(me)s, claimed_at = clock_timestamp()
           WHERE d.delivery_id IN (
               SELECT delivery_id FROM notification_deliveries
               WHERE result = 'pending' AND (claimed_at IS NULL OR claimed_at < clock_timestamp() - %(stale)s)
                 AND (%(sites)s::text[] IS NULL OR site_id = ANY(%(sites)s) OR reason = %(estate)s)
               ORDER BY delivery_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
             AND d.result = 'pending' AND (d.claimed_at IS NULL OR d.claimed_at < clock_timestamp() - %(stale)s)
           RETURNING delivery_id, site_id, target_kind, target_id, level, reason, channel, recipient, created_at""",
        {"me": claimant, "stale": stale, "sites": sites, "estate": ESTATE, "limit": limit},
        prepare=SITE_LIST_PREPARE).fetchall()
    return sorted((Pending(*row) for row in rows), key=lambda p: p.delivery_id)


def pending(conn: psycopg.Connection, limit: int = 200, *, site_ids: Sequence[str] | None = None) -> list[Pending]:
    """Pending attempts (read only: the delivery log; sending goes through :func:`claim`)."""
    sites = None if site_ids is None else list(site_ids)
    rows = conn.execute(
        """SELECT delivery_id, site_id, target_kind, target_id, level, reason, channel, recipient, created_at
           FROM notification_deliveries WHERE result = 'pending' AND (%s::text[] IS NULL OR site_id = ANY(%s))
           ORDER BY delivery_id LIMIT %s""", (sites, sites, limit),
    ).fetchall()
    return [Pending(*row) for row in rows]


def record_results(conn: psycopg.Connection, results: Mapping[int, Result], claimant: str | None = None) -> None:
    """Complete attempts with what their channels said (wall-clock time of the attempt); with ``claimant``, only
    the attempts it still holds the claim of."""
    if not results:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """UPDATE notification_deliveries SET result = %s, detail = %s, external_id = %s,
                      attempted_at = clock_timestamp()
               WHERE delivery_id = %s AND result = 'pending' AND (%s::text IS NULL OR claimed_by = %s)""",
            [(r.result, r.detail, r.external_id, key, claimant, claimant) for key, r in results.items()],
        )


def undelivered_levels(conn: psycopg.Connection, delivery_ids: Iterable[int]) -> list[tuple[str, int, int, str]]:
    """(target_kind, target_id, level, reason) of the steps among these deliveries that reached nobody."""
    return [tuple(r) for r in conn.execute(
        """SELECT target_kind, target_id, level, reason FROM notification_deliveries
           WHERE (target_kind, target_id, level, reason) IN (
               SELECT target_kind, target_id, level, reason FROM notification_deliveries
               WHERE delivery_id = ANY(%s))
           GROUP BY target_kind, target_id, level, reason
           HAVING bool_and(result IN ('failed', 'timeout', 'no_recipient'))""",
        (list(delivery_ids),),
    ).fetchall()]


def for_target(conn: psycopg.Connection, target_kind: str, target_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM notification_deliveries WHERE target_kind = %s AND target_id = %s ORDER BY delivery_id",
            (target_kind, target_id)).fetchall()


def summary(conn: psycopg.Connection, after_id: int = 0) -> list[dict[str, Any]]:
    """Every attempt after ``after_id``: channel, recipient, delivered (the demo's headless summary)."""
    return [{"delivery_id": d, "target": f"{k}:{t}", "level": lv, "reason": reason, "channel": ch, "recipient": rc,
             "delivered": res == "delivered", "result": res}
            for d, k, t, lv, reason, ch, rc, res in conn.execute(
                """SELECT delivery_id, target_kind, target_id, level, reason, channel, recipient, result
                   FROM notification_deliveries WHERE delivery_id > %s ORDER BY delivery_id""", (after_id,))]


__all__: Sequence[str] = ["ESTATE", "Pending", "claim", "for_target", "pending", "record_nobody", "record_pending",
                          "record_results", "summary", "undelivered_levels"]
