-- carewatch: no-transaction
-- Readings store on TimescaleDB: a hypertable with compression, retention and an hourly continuous aggregate.
-- Chosen by `carewatch db migrate` when the timescaledb extension is available. Not exercised by the test suite
-- (TimescaleDB cannot be installed on the CI machines); see docs/storage.md.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE readings (
    measured_at timestamptz NOT NULL,
    gateway_id  text NOT NULL,
    seq         bigint NOT NULL,
    site_id     text NOT NULL,
    subject_id  text NOT NULL,
    device_id   text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    received_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    flags       text[] NOT NULL DEFAULT '{}'
);
SELECT create_hypertable('readings', 'measured_at', chunk_time_interval => interval '7 days');
CREATE UNIQUE INDEX readings_gateway_seq ON readings (gateway_id, seq, measured_at);
CREATE INDEX readings_subject_metric_time ON readings (subject_id, metric, measured_at DESC);

ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'subject_id, metric',
                          timescaledb.compress_orderby = 'measured_at DESC');
SELECT add_compression_policy('readings', interval '14 days');

-- Same function names as the plain path, so callers need not know which store they have.
CREATE FUNCTION carewatch_ensure_partitions(from_ts timestamptz, to_ts timestamptz) RETURNS integer
LANGUAGE sql AS $$ SELECT 0 $$;  -- hypertables create chunks on demand

CREATE FUNCTION carewatch_apply_retention(keep interval) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM drop_chunks('readings', older_than => now() - keep);
  RETURN 0;
END $$;

CREATE MATERIALIZED VIEW hourly_vitals WITH (timescaledb.continuous) AS
SELECT subject_id, metric, time_bucket(interval '1 hour', measured_at) AS bucket,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
FROM readings
GROUP BY subject_id, metric, time_bucket(interval '1 hour', measured_at)
WITH NO DATA;
SELECT add_continuous_aggregate_policy('hourly_vitals', start_offset => interval '3 days',
                                       end_offset => interval '1 hour', schedule_interval => interval '30 minutes');
