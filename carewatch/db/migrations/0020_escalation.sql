-- Escalation that reaches a person (carewatch.notify): per-site policy, delivery log, automatic escalation
-- state and the outcome staff record after acknowledging. Same on plain PostgreSQL and TimescaleDB.

-- Automatic escalation has its own status, distinct from a person's "escalated" (GP, NHS 111, 999 called).
ALTER TABLE alerts DROP CONSTRAINT alerts_status_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_status_check
    CHECK (status IN ('open', 'acknowledged', 'escalated', 'auto_escalated', 'resolved'));

-- The policy level last notified (0: nobody yet), when the next step is due if nobody answers, and why the last
-- step was taken ('unacknowledged' or 'no_outcome'). Written only by the alert transitions.
ALTER TABLE alerts ADD COLUMN notify_level smallint NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN notify_due_at timestamptz;
ALTER TABLE alerts ADD COLUMN notify_reason text;
-- What was done after acknowledging (monitoring plan, GP called, 111, 999, admitted), by whom and when; a medium
-- or high NEWS2 alert needs one within its policy's outcome window after acknowledgement or it escalates again.
ALTER TABLE alerts ADD COLUMN outcome text;
ALTER TABLE alerts ADD COLUMN outcome_at timestamptz;
ALTER TABLE alerts ADD COLUMN outcome_by text;
CREATE INDEX alerts_notify_due ON alerts (notify_due_at) WHERE status <> 'resolved' AND notify_due_at IS NOT NULL;
CREATE INDEX alerts_awaiting_notice ON alerts (site_id)
    WHERE status <> 'resolved' AND severity IN ('medium', 'high') AND outcome_at IS NULL;

-- One policy per site, set by a manager or admin (every change is in audit_log). ``levels`` is a JSON list of
-- {level, name, contacts: [{channel, recipient, name}], window_minutes: {high, medium, low}} validated by
-- carewatch.notify.policy.EscalationPolicy; writer: carewatch.notify.store.
CREATE TABLE escalation_policies (
    site_id     text PRIMARY KEY REFERENCES sites,
    levels      jsonb NOT NULL,
    outcome_minutes jsonb NOT NULL,
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every notification attempt: channel, recipient, time, result. Writer: carewatch.notify.deliveries.
CREATE TABLE notification_deliveries (
    delivery_id  bigserial PRIMARY KEY,
    site_id      text NOT NULL REFERENCES sites,
    target_kind  text NOT NULL CHECK (target_kind IN ('alert', 'incident')),
    target_id    bigint NOT NULL,
    level        smallint NOT NULL CHECK (level BETWEEN 1 AND 3),
    reason       text NOT NULL,                 -- 'unacknowledged', 'no_outcome'
    channel      text NOT NULL,                 -- 'dashboard', 'email', 'sms', 'webhook'
    recipient    text NOT NULL,
    created_at   timestamptz NOT NULL,          -- the escalation clock (simulated in the demo)
    attempted_at timestamptz,                   -- wall clock when the channel was tried
    result       text NOT NULL DEFAULT 'pending'
                 CHECK (result IN ('pending', 'delivered', 'failed', 'timeout', 'no_recipient')),
    detail       text,                          -- the channel's answer or error, for people
    external_id  text                           -- e.g. the Notify notification id, the SMTP message id
);
CREATE INDEX notification_deliveries_target ON notification_deliveries (target_kind, target_id, delivery_id);
CREATE INDEX notification_deliveries_site ON notification_deliveries (site_id, delivery_id DESC);
CREATE INDEX notification_deliveries_pending ON notification_deliveries (delivery_id) WHERE result = 'pending';
