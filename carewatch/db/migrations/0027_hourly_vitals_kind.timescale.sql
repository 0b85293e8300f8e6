-- carewatch: no-transaction
-- The hourly roll-up per (kind, subject, metric) on TimescaleDB too. Migration 0025 gave every reading its
-- subject_kind (ids are unique per kind only: a resident and a household may share one) and regrouped the plain
-- view, but left the continuous aggregate of 0002 grouped by subject_id alone, which adds a resident's and a
-- household's readings of one id and metric into one row: a continuous aggregate cannot be rebuilt inside a
-- transaction, and 0025 runs in one. This file runs statement by statement in autocommit (migrate.py):
--  1. drop the old aggregate (its refresh policy goes with it; the readings are untouched);
--  2. create it again grouped by (subject_kind, subject_id, metric, hour), WITH NO DATA (WITH DATA refreshes
--     over (NULL, NULL): TimescaleDB's troubleshooting notes say that can leave the watermark in the future);
--  3. materialise the history once, up to the last whole hour before the policy's end offset, as 0002's policy
--     had done bucket by bucket (a refresh cannot run in a transaction either; it reads every stored reading once,
--     minutes on a large estate: run the migration in a quiet hour);
--  4. the same refresh policy as 0002.
-- Same columns as the plain view (0025), in the same order. Not exercised by the test suite (no TimescaleDB on the
-- CI machines); tests/core/test_migrate.py holds its statements and columns to the plain view's.
DROP MATERIALIZED VIEW IF EXISTS hourly_vitals;

CREATE MATERIALIZED VIEW hourly_vitals WITH (timescaledb.continuous) AS
SELECT subject_kind, subject_id, metric, time_bucket(interval '1 hour', measured_at) AS bucket,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
FROM readings
GROUP BY subject_kind, subject_id, metric, time_bucket(interval '1 hour', measured_at)
WITH NO DATA;

CALL refresh_continuous_aggregate('hourly_vitals', NULL::timestamptz,
                                  date_trunc('hour', now()) - interval '1 hour');

SELECT add_continuous_aggregate_policy('hourly_vitals', start_offset => interval '3 days',
                                       end_offset => interval '1 hour', schedule_interval => interval '30 minutes');
