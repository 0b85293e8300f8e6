-- Ingest additions (see docs/storage.md): dead-letter classification and de-duplication, gateway events.

-- A short machine class for each dead letter ('unknown_device', 'invalid_reading', ...) so device management
-- can count problems per gateway/device without parsing the human-readable reason.
ALTER TABLE dead_letters ADD COLUMN reason_class text;
-- Hash of (stage, topic, gateway, seq, reason, raw): a message re-delivered after a crash between commit and
-- acknowledgement is dead-lettered once, not twice (ON CONFLICT (fingerprint) DO NOTHING). NULL for rows
-- written by others.
ALTER TABLE dead_letters ADD COLUMN fingerprint text UNIQUE;
-- "Dead letters from this gateway, newest first" (device management; per device: 0003's dead_letters_device).
CREATE INDEX dead_letters_gateway ON dead_letters (gateway_id, at DESC);

-- Counts per site, gateway, device and reason class: what device management shows next to each device.
CREATE VIEW dead_letter_counts AS
SELECT site_id, gateway_id, device_id, coalesce(reason_class, 'other') AS reason_class,
       count(*) AS n, max(at) AS last_at
FROM dead_letters
GROUP BY site_id, gateway_id, device_id, coalesce(reason_class, 'other');

-- Gateway events that are not dead letters: outbox alarms, pairings, clock alarms (GatewayEvent in wire.py).
CREATE TABLE gateway_events (
    event_id    bigserial PRIMARY KEY,
    site_id     text NOT NULL,
    gateway_id  text NOT NULL REFERENCES gateways ON DELETE CASCADE,
    kind        text NOT NULL,
    device_id   text,
    at          timestamptz NOT NULL,           -- gateway clock
    received_at timestamptz NOT NULL DEFAULT now(),
    message     text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    fingerprint text NOT NULL UNIQUE            -- re-delivered events are stored once
);
-- "Recent events of this gateway" and "recent events of this kind at a site".
CREATE INDEX gateway_events_gateway_time ON gateway_events (gateway_id, at DESC);
CREATE INDEX gateway_events_site_kind_time ON gateway_events (site_id, kind, at DESC);
