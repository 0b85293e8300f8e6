-- Readings store on plain PostgreSQL: native range partitioning by month on measured_at.
-- Chosen by `carewatch db migrate` when the timescaledb extension is not available (see docs/storage.md).

-- (gateway_id, seq) identifies a reading; the unique key includes measured_at because a partitioned table's
-- unique keys must include the partition key. A re-delivered reading is byte-identical (same measured_at), so
-- this still catches every duplicate.
CREATE TABLE readings (
    measured_at timestamptz NOT NULL,
    gateway_id  text NOT NULL,
    seq         bigint NOT NULL,
    site_id     text NOT NULL,
    subject_id  text NOT NULL,     -- resident_id, or the household's site_id for home sensors
    device_id   text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    received_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    flags       text[] NOT NULL DEFAULT '{}'
) PARTITION BY RANGE (measured_at);
CREATE UNIQUE INDEX readings_gateway_seq ON readings (gateway_id, seq, measured_at);
CREATE INDEX readings_subject_metric_time ON readings (subject_id, metric, measured_at DESC);
-- Catches readings outside the prepared months (e.g. a device clock years out); kept, never lost.
CREATE TABLE readings_default PARTITION OF readings DEFAULT;

-- Create the monthly partitions covering [from, to). Idempotent; called by migrate and by ingest daily.
CREATE FUNCTION carewatch_ensure_partitions(from_ts timestamptz, to_ts timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  m timestamptz := date_trunc('month', from_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
  made integer := 0;
  part text;
BEGIN
  WHILE m < to_ts LOOP
    part := 'readings_' || to_char(m AT TIME ZONE 'UTC', 'YYYY_MM');
    IF to_regclass(part) IS NULL THEN
      EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                     part, m, (m AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
      made := made + 1;
    END IF;
    m := (m AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
  END LOOP;
  RETURN made;
END $$;

-- Retention: drop whole months older than the cut-off (cheap), and trim the default partition.
CREATE FUNCTION carewatch_apply_retention(keep interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  r record;
  dropped integer := 0;
  cutoff timestamptz := now() - keep;
BEGIN
  FOR r IN
    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'readings'::regclass AND c.relname ~ '^readings_[0-9]{4}_[0-9]{2}$'
  LOOP
    IF (to_date(substr(r.relname, 10), 'YYYY_MM') + interval '1 month') < cutoff THEN
      EXECUTE format('DROP TABLE %I', r.relname);
      dropped := dropped + 1;
    END IF;
  END LOOP;
  DELETE FROM readings_default WHERE measured_at < cutoff;
  RETURN dropped;
END $$;

SELECT carewatch_ensure_partitions(now() - interval '13 months', now() + interval '3 months');

-- Hourly vitals. On TimescaleDB this is a continuous aggregate; here a plain view, so the same queries work.
CREATE VIEW hourly_vitals AS
SELECT subject_id, metric, date_trunc('hour', measured_at) AS bucket,
       avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
FROM readings
GROUP BY subject_id, metric, date_trunc('hour', measured_at);
