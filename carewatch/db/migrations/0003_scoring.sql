-- Alert engine additions (scoring/engine.py, scoring/lifecycle.py). Same on plain PostgreSQL and TimescaleDB.

-- When an unacknowledged alert escalates next. Set when an alert opens (opened_at + the severity's
-- acknowledgement window), moved on by each automatic escalation, by a severity rise and by a snooze; NULL once
-- acknowledged, resolved, or for 'info' alerts (which never escalate). A separate column because updated_at
-- moves with every refreshed reason and must not postpone escalation.
ALTER TABLE alerts ADD COLUMN ack_due_at timestamptz;
CREATE INDEX alerts_ack_due ON alerts (ack_due_at)
    WHERE status <> 'resolved' AND acknowledged_at IS NULL AND ack_due_at IS NOT NULL;

-- The open-alert lookups of the engine and the tick go by kind across the estate (e.g. every open
-- gateway_offline alert).
CREATE INDEX alerts_open_kind ON alerts (kind, subject_id) WHERE status <> 'resolved';

-- Dead letters by device (device_fault rule).
CREATE INDEX dead_letters_device ON dead_letters (device_id, at DESC) WHERE device_id IS NOT NULL;

-- Active suppressions by subject and kind.
CREATE INDEX alert_suppressions_subject_kind ON alert_suppressions (subject_id, kind, until DESC);
