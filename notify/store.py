"""Where each site's escalation policy is kept: the one writer of ``escalation_policies``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from carewatch.db import one
from carewatch.notify.policy import EscalationPolicy, default_policy


def load(conn: psycopg.Connection, site_id: str) -> tuple[EscalationPolicy, str | None, datetime | None]:
    """The site's policy, who set it and when; the default (tablets only) when none was set."""
    row = conn.execute("SELECT levels, outcome_minutes, updated_by, updated_at FROM escalation_policies "
                       "WHERE site_id = %s", (site_id,)).fetchone()
    if row is None:
        return default_policy(), None, None
    return EscalationPolicy(levels=row[0], outcome_minutes=row[1]), row[2], row[3]


def load_many(conn: psycopg.Connection, site_ids: Iterable[str]) -> dict[str, EscalationPolicy]:
    """Policies of several sites in one query (default for those without one)."""
    ids = sorted(set(site_ids))
    found = {s: EscalationPolicy(levels=lv, outcome_minutes=om) for s, lv, om in conn.execute(
        "SELECT site_id, levels, outcome_minutes FROM escalation_policies WHERE site_id = ANY(%s)", (ids,))}
    return {s: found.get(s) or default_policy() for s in ids}


def save(conn: psycopg.Connection, site_id: str, policy: EscalationPolicy, actor: str) -> datetime:
    """Set the site's policy (the API audits who did it); returns when."""
    return one(conn.execute(
        """INSERT INTO escalation_policies (site_id, levels, outcome_minutes, updated_by, updated_at)
           VALUES (%s, %s, %s, %s, now())
           ON CONFLICT (site_id) DO UPDATE SET levels = EXCLUDED.levels, outcome_minutes = EXCLUDED.outcome_minutes,
                                               updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
           RETURNING updated_at""",
        (site_id, Jsonb(policy.model_dump(mode="json")["levels"]), Jsonb(policy.outcome_minutes), actor),
    ))[0]
