"""scoring/households.py against real PostgreSQL: what the household evaluation reads, and when it runs."""

from __future__ import annotations

from importlib import resources

import psycopg

from carewatch.scoring import households


def test_the_look_back_reads_use_their_partial_indexes(db: psycopg.Connection) -> None:
    """The night events and the newest kitchen event are read through migration 0028's partial indexes, whose
    predicates the planner proves only from the literals the query sends: the two must stay the same text."""
    sql = (resources.files("carewatch.db") / "migrations" / "0028_behaviour_lookback_indexes.sql").read_text()
    assert f"kind IN ({households._KITCHEN_SQL})" in sql
    flat = " ".join(sql.split())
    assert " ".join(households._NIGHT_EVENTS_SQL.split()) in flat
    db.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in db.execute(
        f"EXPLAIN SELECT 1 FROM behaviour_events WHERE site_id = 'x' AND {households._NIGHT_EVENTS_SQL}"))
    assert "behaviour_events_night" in plan
    plan = "\n".join(r[0] for r in db.execute(
        f"EXPLAIN SELECT 1 FROM behaviour_events WHERE site_id = 'x' AND kind IN ({households._KITCHEN_SQL}) "
        "ORDER BY ended_at DESC NULLS LAST LIMIT 1"))
    assert "behaviour_events_kitchen_end" in plan
