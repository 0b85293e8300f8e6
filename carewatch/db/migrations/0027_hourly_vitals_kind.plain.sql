-- The hourly roll-up per (kind, subject, metric). On plain PostgreSQL, migration 0025 already made `hourly_vitals`
-- a view grouped by (subject_kind, subject_id, metric, hour); this states it again (the same definition, so a
-- no-op) so both stores carry schema version 0027 and the same columns. The TimescaleDB variant rebuilds the
-- continuous aggregate, which 0025 could not (0027_hourly_vitals_kind.timescale.sql).
CREATE OR REPLACE VIEW hourly_vitals AS
SELECT subject_kind, subject_id, metric, date_trunc('hour', measured_at) AS bucket,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
FROM readings
GROUP BY subject_kind, subject_id, metric, date_trunc('hour', measured_at);
