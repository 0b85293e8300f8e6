-- Incidents (one thing to act on per subject), oxygen prescriptions, household rule settings, the nurse role,
-- and CHECK constraints on vital signs. Same on plain PostgreSQL and TimescaleDB. docs/clinical-safety.md H-INC-*.

-- One incident per subject at a time: its components are the subject's unresolved alerts (alerts.incident_id).
-- One acknowledgement, one owner, one outcome. Written only by carewatch.scoring.incident_store.
CREATE TABLE incidents (
    incident_id     bigserial PRIMARY KEY,
    site_id         text NOT NULL REFERENCES sites,
    resident_id     text REFERENCES residents,
    subject_id      text NOT NULL,             -- resident, household site, device or gateway id
    category        text NOT NULL CHECK (category IN ('clinical', 'household', 'device', 'data')),
    severity        text NOT NULL CHECK (severity IN ('info', 'low', 'medium', 'high')),
    band            text CHECK (band IN ('low', 'low-medium', 'medium', 'high')),  -- NEWS2 risk band now
    peak_band       text CHECK (peak_band IN ('low', 'low-medium', 'medium', 'high')),
    status          text NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'acknowledged', 'escalated', 'resolved')),
    headline        text NOT NULL,             -- the worst component's reason
    action          text NOT NULL,             -- the worst component's action
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    acknowledged_at timestamptz,
    acknowledged_by text,
    ack_due_at      timestamptz,               -- when it escalates if nobody acknowledges (re-set by a band rise)
    escalation_level smallint NOT NULL DEFAULT 0,
    escalated_at    timestamptz,
    owner           text,                      -- who is dealing with it
    outcome         text,                      -- what was decided (monitoring plan, gp_called, nhs_111, ...)
    outcome_comment text,
    outcome_at      timestamptz,
    outcome_by      text,
    resolved_at     timestamptz,
    resolved_by     text,
    resolution      text
);
CREATE UNIQUE INDEX incidents_one_open ON incidents (subject_id) WHERE status <> 'resolved';
CREATE INDEX incidents_site_status ON incidents (site_id, status, opened_at DESC);
CREATE INDEX incidents_resident ON incidents (resident_id, opened_at DESC);
CREATE INDEX incidents_ack_due ON incidents (ack_due_at)
    WHERE status <> 'resolved' AND acknowledged_at IS NULL AND ack_due_at IS NOT NULL;

CREATE TABLE incident_events (
    event_id    bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES incidents,
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,   -- opened, components_added, components_cleared, band_rose, severity_rose, updated,
                                 -- acknowledged, outcome, owner, escalated, resolved, auto_resolved, commented
    outcome     text,
    comment     text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, at);

-- A component alert belongs to the incident it joined (its own row and alert_events history stay as they are).
ALTER TABLE alerts ADD COLUMN incident_id bigint REFERENCES incidents;
CREATE INDEX alerts_incident ON alerts (incident_id) WHERE incident_id IS NOT NULL;

-- Oxygen prescription (a clinical decision, like Scale 2): used for device-only rounds until staff confirm.
ALTER TABLE residents ADD COLUMN oxygen_prescribed boolean;  -- NULL: not recorded
ALTER TABLE residents ADD COLUMN oxygen_flow_lpm real CHECK (oxygen_flow_lpm IS NULL OR oxygen_flow_lpm BETWEEN 0 AND 15);
ALTER TABLE residents ADD COLUMN oxygen_set_by text;
ALTER TABLE residents ADD COLUMN oxygen_set_at timestamptz;
ALTER TABLE residents ADD CONSTRAINT oxygen_recorded CHECK (
    oxygen_prescribed IS NULL OR (oxygen_set_by IS NOT NULL AND oxygen_set_at IS NOT NULL));

-- Household rule settings (long lie, out and not back); NULL: the defaults in scoring/behaviour.py.
ALTER TABLE sites ADD COLUMN long_lie_minutes smallint CHECK (long_lie_minutes IS NULL OR long_lie_minutes BETWEEN 30 AND 720);
ALTER TABLE sites ADD COLUMN home_by time;

-- Why the next observations are due when they are (care_plan, news2, first_set, incomplete): the task list.
ALTER TABLE resident_state ADD COLUMN next_obs_why text;

-- Nurses (nursing homes: a site; community nurses: a practice) beside GPs.
ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check
    CHECK (role IN ('care_staff', 'manager', 'gp', 'nurse', 'council', 'admin'));
ALTER TABLE users ADD CONSTRAINT users_nurse_scope
    CHECK (role <> 'nurse' OR site_id IS NOT NULL OR practice_code IS NOT NULL);

-- Vital signs within their plausible ranges (carewatch.wire.METRICS): an implausible value can never be stored
-- in an observation set. NOT VALID: enforced for every new or changed row without rescanning history.
ALTER TABLE observation_sets
    ADD CONSTRAINT obs_respiration_rate_plausible CHECK (respiration_rate IS NULL OR respiration_rate BETWEEN 3 AND 70) NOT VALID,
    ADD CONSTRAINT obs_spo2_plausible CHECK (spo2 IS NULL OR spo2 BETWEEN 40 AND 100) NOT VALID,
    ADD CONSTRAINT obs_systolic_bp_plausible CHECK (systolic_bp IS NULL OR systolic_bp BETWEEN 40 AND 300) NOT VALID,
    ADD CONSTRAINT obs_pulse_plausible CHECK (pulse IS NULL OR pulse BETWEEN 20 AND 250) NOT VALID,
    ADD CONSTRAINT obs_temperature_plausible CHECK (temperature IS NULL OR temperature BETWEEN 25 AND 45) NOT VALID;
