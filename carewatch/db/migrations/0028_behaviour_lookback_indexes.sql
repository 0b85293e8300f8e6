-- What the household rules look back at before the 36 h re-derivation window, read per household on every
-- evaluation (scoring/households.py, issue 19): the newest kitchen event (by its end) and the night-time
-- (00:00-06:00 local) bathroom visits and night activity of 16 days. Each was a scan of all 16 days of the
-- household's events (~600 rows); the newest kitchen event a sort of them. The predicates are the literals
-- scoring/households.py sends (the planner proves a partial index's predicate only from literals).
CREATE INDEX behaviour_events_kitchen_end ON behaviour_events (site_id, ended_at DESC NULLS LAST)
    WHERE kind IN ('fridge_open', 'kettle_use', 'kitchen_activity');
CREATE INDEX behaviour_events_night ON behaviour_events (site_id, started_at)
    WHERE kind IN ('bathroom_visit', 'night_activity')
      AND (started_at AT TIME ZONE 'Europe/London')::time < '06:00';
