-- Shared kits (issue 17): one set of bedside devices per home or floor, measuring whoever the carer picks on the
-- tablet. A device belongs to a resident (bound), a room, or a kit. A kit's readings are attributed through
-- measurement sessions (kit + resident + staff member); see docs/kits.md.

CREATE TABLE kits (
    kit_id     text PRIMARY KEY,              -- unique in the estate, e.g. 'oakview-kit-01'
    site_id    text NOT NULL REFERENCES sites,
    name       text NOT NULL,                 -- as labelled on the case: 'kit-01'
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, name)
);

ALTER TABLE devices ADD COLUMN kit_id text REFERENCES kits;
-- A device measures one resident, or anyone through its kit: never both.
ALTER TABLE devices ADD CONSTRAINT devices_resident_or_kit CHECK (kit_id IS NULL OR resident_id IS NULL);
CREATE INDEX devices_kit ON devices (kit_id) WHERE kit_id IS NOT NULL;

-- One measurement session: the kit's readings measured in [started_at, end) belong to resident_id. The end is
-- ended_at when set (saved, another resident chosen, ended by staff), else 10 minutes after the newest reading
-- (or the start): written down as 'idle' the next time anyone looks.
CREATE TABLE kit_sessions (
    session_id      bigserial PRIMARY KEY,
    kit_id          text NOT NULL REFERENCES kits,
    site_id         text NOT NULL REFERENCES sites,
    resident_id     text NOT NULL REFERENCES residents,
    started_by      text NOT NULL,
    started_at      timestamptz NOT NULL,
    last_reading_at timestamptz,              -- newest measurement time attributed to it (the idle timer)
    ended_at        timestamptz,
    ended_by        text,
    end_reason      text CHECK (end_reason IN ('saved', 'switched', 'idle', 'ended', 'replaced')),
    CHECK (ended_at IS NULL OR ended_at >= started_at),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
-- One kit, one open session: starting a second asks to end the first (the API answers 409).
CREATE UNIQUE INDEX kit_sessions_one_open ON kit_sessions (kit_id) WHERE ended_at IS NULL;
CREATE INDEX kit_sessions_kit_time ON kit_sessions (kit_id, started_at DESC);
CREATE INDEX kit_sessions_resident ON kit_sessions (resident_id, started_at DESC);

-- Which session attributed a reading (NULL: bound or room device, or a kit reading not yet assigned, whose
-- subject_id is then the kit's id).
ALTER TABLE readings ADD COLUMN session_id bigint;

-- Every change of a stored reading's subject after ingest: a claim (an unassigned kit reading taken by a
-- session started within 5 minutes), a move (staff put it on the right resident), or a session start that
-- covers readings stored a moment before the session row. Append-only history; the audit log has the request.
CREATE TABLE reading_assignments (
    assignment_id bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    kind          text NOT NULL CHECK (kind IN ('claim', 'move', 'session_start')),
    gateway_id    text NOT NULL,
    seq           bigint NOT NULL,
    measured_at   timestamptz NOT NULL,
    from_subject  text NOT NULL,
    to_subject    text NOT NULL,
    session_id    bigint,
    by_user       text NOT NULL,
    reason        text
);
CREATE INDEX reading_assignments_reading ON reading_assignments (gateway_id, seq);
CREATE INDEX reading_assignments_at ON reading_assignments (at DESC);
