-- The device rules' clock evidence (scoring/devices.py: readings flagged clock_not_set or clock_skewed in the last
-- 24 h, per device): read on every evaluation of new data (load_devices, for the batch's residents) and on every
-- slow tick (load_changing_devices, the estate). Without an index it was a scan of the whole window's readings
-- (a parallel sequential scan of the month's partition, whatever the batch) for the few rows that carry a flag.
-- Partial: only flagged readings are indexed (rare), so ingest's inserts pay nothing for the others. The
-- predicate is the literal scoring/devices.py sends (the planner proves a partial index's predicate only from
-- literals).
CREATE INDEX readings_clock_flagged ON readings (subject_kind, subject_id, device_id, measured_at)
    WHERE flags && ARRAY['clock_not_set', 'clock_skewed'];
