-- The slow tick's catch-all for a missed NOTIFY (scoring/households.py: due_by_urgency; docs/clinical-safety.md
-- H-HOME-11): "a reading newer than the newest the household's last evaluation had", asked of every household on
-- every slow tick. Through the primary key it read each household's ~7 latest values from the heap to compare
-- measured_at (20,000 households: ~200k buffer visits, 260-620 ms a call); with measured_at in the index it is
-- one descent per household that stops at the first newer entry, and never visits the heap when there is none.
-- Partial: only the households' rows are indexed. The cost is on ingest's latest_readings upsert: an index on
-- measured_at (which every upsert changes) makes the table's updates non-HOT, for residents' rows too (measured
-- on 20,000 households: ~+10 % on that statement's time; docs/scaling.md). The predicate is the literal
-- scoring/households.py sends (the planner proves a partial index's predicate only from literals).
CREATE INDEX latest_readings_household_newest ON latest_readings (subject_id, measured_at)
    WHERE subject_kind = 'household';
