-- Notification and escalation per incident (issue 16 after issue 15): one incident = one ladder. Automatic
-- escalation has its own status and events on incidents too ('auto_escalated', distinct from a person's
-- 'escalated' to GP, NHS 111 or 999); delivery attempts are claimed by one scorer replica before sending.
-- Same on plain PostgreSQL and TimescaleDB. docs/clinical-safety.md H-ESC-*, H-INC-*.

ALTER TABLE incidents DROP CONSTRAINT incidents_status_check;
ALTER TABLE incidents ADD CONSTRAINT incidents_status_check
    CHECK (status IN ('open', 'acknowledged', 'escalated', 'auto_escalated', 'resolved'));
-- Until now only the scorer set 'escalated' on an incident (nobody answered): that was automatic.
UPDATE incidents SET status = 'auto_escalated' WHERE status = 'escalated';

-- The policy level last told (0: nobody yet), when the next step is due, why the last step was taken; and who
-- escalated it outside the home (a person). Written only by carewatch.scoring.incident_store.
ALTER TABLE incidents ADD COLUMN notify_level smallint NOT NULL DEFAULT 0;
ALTER TABLE incidents ADD COLUMN notify_due_at timestamptz;
ALTER TABLE incidents ADD COLUMN notify_reason text;
ALTER TABLE incidents ADD COLUMN escalated_by text;
CREATE INDEX incidents_awaiting_notice ON incidents (site_id)
    WHERE status <> 'resolved' AND severity IN ('medium', 'high') AND outcome_at IS NULL;

-- A pending attempt is claimed (atomically, UPDATE ... RETURNING) by the replica that sends it; a claim older
-- than a few minutes (the replica died while sending) may be taken again.
ALTER TABLE notification_deliveries ADD COLUMN claimed_by text;
ALTER TABLE notification_deliveries ADD COLUMN claimed_at timestamptz;
