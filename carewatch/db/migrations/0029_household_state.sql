-- Households evaluated only when something can have changed (issue 19; scoring/households.py is the one writer).
-- The slow tick ran every household's rules every 30 s. Each evaluation now records, per household, when it ran
-- (its ``now``), the newest reading it had (latest_readings.measured_at) and recheck_at: the earliest time at
-- which time passing alone can change one of its rules' decisions (a long-lie or silence threshold crossed, the
-- morning deadline, a night complete at 06:00...), capped at the bounded cadence. The slow tick evaluates only the
-- households with no row, a newer reading, recheck_at <= now, an evaluation older than the cadence, or a clock
-- gone back (scoring/households.py: households_due; docs/clinical-safety.md, H-HOME-11).
CREATE TABLE household_state (
    site_id        text PRIMARY KEY REFERENCES sites ON DELETE CASCADE,
    evaluated_at   timestamptz NOT NULL,
    newest_reading timestamptz,
    recheck_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
