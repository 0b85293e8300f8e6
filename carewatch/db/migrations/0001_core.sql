-- Carewatch core schema. Plain PostgreSQL (15+); 0002 adds TimescaleDB features when the extension exists.
-- Times are timestamptz (UTC on the wire). Ids are short text keys chosen by the estate (site, gateway, device).

-- NHS number: 10 digits, modulus-11 check digit (NHS Data Dictionary). Mirrors carewatch.nhs.is_valid_nhs_number.
CREATE FUNCTION carewatch_nhs_valid(n text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT n ~ '^[0-9]{10}$' AND (
    SELECT CASE WHEN 11 - (sum((substr(n, i, 1))::int * (11 - i)) % 11) = 11 THEN 0
                ELSE 11 - (sum((substr(n, i, 1))::int * (11 - i)) % 11) END
    FROM generate_series(1, 9) AS i
  ) = substr(n, 10, 1)::int
$$;

CREATE TABLE gp_practices (
    practice_code text PRIMARY KEY,
    name          text NOT NULL
);

CREATE TABLE sites (
    site_id        text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('care_home', 'household')),
    name           text NOT NULL,
    council        text,                       -- council responsible for a household's care package
    care_package   text,                       -- e.g. 'waking-night care' (households)
    package_hours_per_week numeric(6,1),
    hourly_rate_gbp numeric(8,2),
    consent_vitals boolean NOT NULL DEFAULT false,  -- council may see clinical vitals for this household
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE residents (
    resident_id     text PRIMARY KEY,
    site_id         text NOT NULL REFERENCES sites,
    display_name    text NOT NULL,
    nhs_number      text UNIQUE CHECK (nhs_number IS NULL OR carewatch_nhs_valid(nhs_number)),
    date_of_birth   date NOT NULL,
    gp_practice     text REFERENCES gp_practices,
    obs_per_day     smallint NOT NULL DEFAULT 2 CHECK (obs_per_day BETWEEN 1 AND 24),
    monitoring      text NOT NULL DEFAULT 'active' CHECK (monitoring IN ('active', 'paused', 'discharged', 'deceased')),
    baseline_confused boolean NOT NULL DEFAULT false,  -- e.g. dementia: confusion is this person's norm
    scale2          boolean NOT NULL DEFAULT false,    -- NEWS2 SpO2 Scale 2 (prescribed target 88-92%)
    scale2_set_by   text,
    scale2_set_at   timestamptz,
    scale2_reason   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Scale 2 is a clinical decision: it must say who made it, when and why.
    CONSTRAINT scale2_recorded CHECK (
        NOT scale2 OR (scale2_set_by IS NOT NULL AND scale2_set_at IS NOT NULL AND scale2_reason IS NOT NULL))
);
CREATE INDEX residents_site ON residents (site_id);
CREATE INDEX residents_practice ON residents (gp_practice);

CREATE TABLE gateways (
    gateway_id   text PRIMARY KEY,
    site_id      text NOT NULL REFERENCES sites,
    state        text NOT NULL DEFAULT 'unknown' CHECK (state IN ('unknown', 'online', 'offline')),
    status       jsonb,                     -- last status message as sent
    status_at    timestamptz,
    last_seen    timestamptz,               -- last message of any kind
    last_seq     bigint NOT NULL DEFAULT 0, -- highest sequence number stored
    missing_seqs bigint NOT NULL DEFAULT 0, -- sequence numbers never received below last_seq
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Contiguous runs of stored sequence numbers per gateway; more than one run means a gap.
CREATE TABLE gateway_seq_runs (
    gateway_id text NOT NULL REFERENCES gateways ON DELETE CASCADE,
    first_seq  bigint NOT NULL,
    last_seq   bigint NOT NULL,
    PRIMARY KEY (gateway_id, first_seq),
    CHECK (last_seq >= first_seq)
);

CREATE TABLE devices (
    device_id   text PRIMARY KEY,
    site_id     text NOT NULL REFERENCES sites,
    gateway_id  text REFERENCES gateways,
    kind        text NOT NULL,
    model       text,
    mac         text,
    bind_key    text,                 -- BTHome AES key (hex); never returned by the API
    resident_id text REFERENCES residents,   -- bound to a person...
    room        text,                        -- ...or to a room of the site
    role        text,                        -- e.g. 'bathroom', 'fridge_door', 'kettle'
    active      boolean NOT NULL DEFAULT true,
    battery_pct real,
    rssi_dbm    smallint,
    last_seen   timestamptz,
    bound_at    timestamptz NOT NULL DEFAULT now(),
    unbound_at  timestamptz
);
CREATE INDEX devices_site ON devices (site_id);
CREATE INDEX devices_resident ON devices (resident_id) WHERE resident_id IS NOT NULL;

-- The readings table itself is created by 0002 (plain partitioning or a TimescaleDB hypertable).

-- Latest value per subject and metric: overview pages are O(residents), not O(history).
CREATE TABLE latest_readings (
    subject_id  text NOT NULL,
    metric      text NOT NULL,
    site_id     text NOT NULL,
    device_id   text NOT NULL,
    value       double precision NOT NULL,
    measured_at timestamptz NOT NULL,
    flags       text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (subject_id, metric)
);
CREATE INDEX latest_readings_site ON latest_readings (site_id);

-- One NEWS2 observation set: manual (tablet), device-derived, or both.
CREATE TABLE observation_sets (
    obs_id        bigserial PRIMARY KEY,
    resident_id   text NOT NULL REFERENCES residents,
    site_id       text NOT NULL REFERENCES sites,
    taken_at      timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    recorded_by   text NOT NULL,           -- username, or 'scorer' for device rounds
    source        text NOT NULL CHECK (source IN ('manual', 'device', 'mixed')),
    round_key     text,                    -- device rounds: one set per resident and round window
    respiration_rate real,
    spo2          real,
    spo2_scale    smallint NOT NULL DEFAULT 1 CHECK (spo2_scale IN (1, 2)),
    on_oxygen     boolean NOT NULL DEFAULT false,
    systolic_bp   real,
    pulse         real,
    consciousness char(1) CHECK (consciousness IN ('A', 'C', 'V', 'P', 'U')),
    temperature   real,
    soft_signs    text[] NOT NULL DEFAULT '{}',
    note          text,
    inputs        jsonb NOT NULL DEFAULT '{}',  -- per parameter: source device/user and time
    score         smallint NOT NULL,
    risk          text NOT NULL,
    subscores     jsonb NOT NULL,
    complete      boolean NOT NULL,
    missing       text[] NOT NULL DEFAULT '{}',
    UNIQUE (resident_id, round_key)
);
CREATE INDEX observation_sets_resident_time ON observation_sets (resident_id, taken_at DESC);

-- Current clinical state per resident, maintained by the scorer.
CREATE TABLE resident_state (
    resident_id   text PRIMARY KEY REFERENCES residents,
    site_id       text NOT NULL,
    news2_score   smallint,
    news2_risk    text,
    news2_complete boolean,
    news2_at      timestamptz,
    last_obs_id   bigint,
    next_obs_due  timestamptz,
    last_seen     timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Behaviour derived from home sensors (bathroom visits, kitchen use, time out...).
CREATE TABLE behaviour_events (
    event_id    bigserial PRIMARY KEY,
    site_id     text NOT NULL REFERENCES sites,
    kind        text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    device_id   text,
    detail      jsonb NOT NULL DEFAULT '{}',
    UNIQUE (site_id, kind, started_at)
);
CREATE INDEX behaviour_events_site_time ON behaviour_events (site_id, started_at DESC);

CREATE TABLE alerts (
    alert_id      bigserial PRIMARY KEY,
    site_id       text NOT NULL REFERENCES sites,
    resident_id   text REFERENCES residents,
    subject_id    text NOT NULL,            -- resident, household site, device or gateway id
    kind          text NOT NULL,
    severity      text NOT NULL CHECK (severity IN ('info', 'low', 'medium', 'high')),
    status        text NOT NULL DEFAULT 'open'
                  CHECK (status IN ('open', 'acknowledged', 'escalated', 'resolved')),
    reason        text NOT NULL,            -- plain language: which readings, compared with what
    action        text NOT NULL,            -- what to do now
    data          jsonb NOT NULL DEFAULT '{}',   -- evidence and SBARD material
    score         smallint,                 -- NEWS2 at the time, where relevant
    opened_at     timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    escalated_at  timestamptz,
    escalation_level smallint NOT NULL DEFAULT 0,
    resolved_at   timestamptz,
    resolved_by   text,
    resolution    text
);
-- De-duplication: at most one unresolved alert per subject and kind.
CREATE UNIQUE INDEX alerts_one_open ON alerts (subject_id, kind) WHERE status <> 'resolved';
CREATE INDEX alerts_site_status ON alerts (site_id, status, opened_at DESC);
CREATE INDEX alerts_resident ON alerts (resident_id, opened_at DESC);

CREATE TABLE alert_events (
    event_id  bigserial PRIMARY KEY,
    alert_id  bigint NOT NULL REFERENCES alerts,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,   -- opened, updated, acknowledged, escalated, resolved, commented, auto_resolved
    outcome   text,            -- for escalations: gp_called, nhs_111, called_999, visit_booked, ...
    comment   text,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, at);

-- Snooze/suppress an alert kind for a subject, with a reason and an expiry.
CREATE TABLE alert_suppressions (
    suppression_id bigserial PRIMARY KEY,
    subject_id  text NOT NULL,
    kind        text,            -- NULL = every kind
    reason      text NOT NULL,
    until       timestamptz NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_suppressions_subject ON alert_suppressions (subject_id, until);

CREATE TABLE users (
    username      text PRIMARY KEY,
    full_name     text NOT NULL,
    role          text NOT NULL CHECK (role IN ('care_staff', 'manager', 'gp', 'council', 'admin')),
    site_id       text REFERENCES sites,       -- care_staff, manager
    practice_code text REFERENCES gp_practices, -- gp
    council       text,                         -- council
    password_hash text NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (role NOT IN ('care_staff', 'manager') OR site_id IS NOT NULL),
    CHECK (role <> 'gp' OR practice_code IS NOT NULL),
    CHECK (role <> 'council' OR council IS NOT NULL)
);

-- Who read or changed whose data. Append-only: the trigger below refuses UPDATE and DELETE.
CREATE TABLE audit_log (
    audit_id     bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    username     text,
    role         text,
    action       text NOT NULL,      -- read, create, update, delete, login, login_failed, export
    method       text,
    path         text,
    subject_type text,               -- resident, household, alert, user, ...
    subject_id   text,
    status       smallint,
    client       text,               -- address and user agent
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_subject ON audit_log (subject_id, at DESC);
CREATE INDEX audit_log_user ON audit_log (username, at DESC);

CREATE FUNCTION carewatch_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION carewatch_audit_append_only();

-- Input we could not use, kept with its raw form and a reason a person can read.
CREATE TABLE dead_letters (
    dl_id       bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    stage       text NOT NULL,       -- 'gateway' (bad frame) or 'ingest' (bad reading/message)
    site_id     text,
    gateway_id  text,
    device_id   text,
    seq         bigint,
    topic       text,
    reason      text NOT NULL,
    raw         text NOT NULL
);
CREATE INDEX dead_letters_site ON dead_letters (site_id, at DESC);
