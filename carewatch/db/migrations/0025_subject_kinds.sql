-- Subjects have kinds (issue 13, finding 1). A reading, latest value, alert, suppression (snooze), incident and
-- reading re-attribution names its subject by (subject_kind, subject_id); ids are unique per kind only, so a
-- resident created with a household's, site's, kit's, gateway's or device's id is a different subject and sees
-- none of that subject's data. Every reader and writer filters on the kind (docs/security.md). The constraints
-- below tie each kind to its registry: a resident subject is its row's resident_id (a foreign key to residents),
-- a household or site subject is its row's site_id. Same on plain PostgreSQL and TimescaleDB but for the
-- hourly roll-up (the last statement).

CREATE DOMAIN subject_kind AS text
    CHECK (VALUE IN ('resident', 'household', 'site', 'kit', 'device', 'gateway'));

-- The kind of a site subject: 'household' for households, 'site' for care homes (room sensors, scorer health).
CREATE FUNCTION carewatch_site_subject_kind(site text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT CASE kind WHEN 'household' THEN 'household' ELSE 'site' END FROM sites WHERE site_id = site
$$;
-- readings and latest_readings: resident (bound device, kit session, claim, move), kit (a shared kit's reading no
-- session covered) or the site (household or care-home room sensors). Backfilled from the device's binding;
-- readings moved or claimed onto a resident (or taken by a session) keep the resident.
CREATE FUNCTION pg_temp.reading_subject_kind(device text, subject text, site text, session bigint) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE
    WHEN session IS NOT NULL THEN 'resident'
    WHEN EXISTS (SELECT 1 FROM devices d WHERE d.device_id = device AND d.resident_id = subject) THEN 'resident'
    WHEN EXISTS (SELECT 1 FROM devices d WHERE d.device_id = device AND d.kit_id = subject) THEN 'kit'
    WHEN subject = site THEN carewatch_site_subject_kind(site)
    ELSE 'resident' END
$$;
ALTER TABLE readings ADD COLUMN subject_kind subject_kind;
UPDATE readings x SET subject_kind = pg_temp.reading_subject_kind(x.device_id, x.subject_id, x.site_id, x.session_id);
ALTER TABLE latest_readings ADD COLUMN subject_kind subject_kind;
UPDATE latest_readings x SET subject_kind = pg_temp.reading_subject_kind(x.device_id, x.subject_id, x.site_id, NULL);
ALTER TABLE readings ADD CONSTRAINT readings_session_resident CHECK (session_id IS NULL OR subject_kind = 'resident');
DROP INDEX readings_subject_metric_time;
CREATE INDEX readings_subject_metric_time ON readings (subject_kind, subject_id, metric, measured_at DESC);
-- the newest per (kind, subject, metric)
ALTER TABLE latest_readings DROP CONSTRAINT latest_readings_pkey;
ALTER TABLE latest_readings ADD PRIMARY KEY (subject_kind, subject_id, metric);

-- alerts: the subject kind follows from the alert kind (carewatch/subjects.py ALERT_SUBJECT_KIND is the same
-- table); a resident's alert is its resident_id's (foreign key), a household's or site's is its site_id.
ALTER TABLE alerts ADD COLUMN subject_kind subject_kind;
UPDATE alerts SET subject_kind = CASE
    WHEN kind IN ('battery_low', 'device_silent', 'device_fault') THEN 'device'
    WHEN kind = 'gateway_offline' THEN 'gateway'
    WHEN kind = 'scoring_stalled' THEN 'site'
    WHEN resident_id IS NOT NULL AND resident_id = subject_id THEN 'resident'
    WHEN subject_id = site_id THEN 'household'
    ELSE 'resident' END;
DROP INDEX alerts_one_open;
CREATE UNIQUE INDEX alerts_one_open ON alerts (subject_kind, subject_id, kind) WHERE status <> 'resolved';
DROP INDEX alerts_open_kind;
CREATE INDEX alerts_open_kind ON alerts (kind, subject_kind, subject_id) WHERE status <> 'resolved';
CREATE INDEX alerts_subject ON alerts (subject_kind, subject_id) WHERE status <> 'resolved';

-- alert_suppressions (snooze): the subject's kind and site; a resident's suppression names a resident (foreign key
-- through a generated column), so a snooze can never reach another kind's alerts.
ALTER TABLE alert_suppressions ADD COLUMN subject_kind subject_kind;
ALTER TABLE alert_suppressions ADD COLUMN site_id text REFERENCES sites;
UPDATE alert_suppressions s SET subject_kind = 'resident', site_id = r.site_id
  FROM residents r WHERE r.resident_id = s.subject_id;
UPDATE alert_suppressions s SET subject_kind = carewatch_site_subject_kind(s.subject_id), site_id = s.subject_id
 WHERE s.subject_kind IS NULL AND EXISTS (SELECT 1 FROM sites WHERE site_id = s.subject_id);
UPDATE alert_suppressions s SET subject_kind = 'gateway', site_id = g.site_id
  FROM gateways g WHERE s.subject_kind IS NULL AND g.gateway_id = s.subject_id;
UPDATE alert_suppressions s SET subject_kind = 'device', site_id = d.site_id
  FROM devices d WHERE s.subject_kind IS NULL AND d.device_id = s.subject_id;
DELETE FROM alert_suppressions WHERE subject_kind IS NULL;  -- names nothing registered: suppresses nothing
ALTER TABLE alert_suppressions ALTER COLUMN subject_kind SET NOT NULL;
ALTER TABLE alert_suppressions ALTER COLUMN site_id SET NOT NULL;
ALTER TABLE alert_suppressions ADD COLUMN resident_id text
    GENERATED ALWAYS AS (CASE WHEN subject_kind = 'resident' THEN subject_id END) STORED REFERENCES residents;
DROP INDEX alert_suppressions_subject;
DROP INDEX alert_suppressions_subject_kind;
CREATE INDEX alert_suppressions_subject_kind ON alert_suppressions (subject_kind, subject_id, kind, until DESC);

-- incidents: the kind of their component alerts' subject.
ALTER TABLE incidents ADD COLUMN subject_kind subject_kind;
UPDATE incidents i SET subject_kind = coalesce(
    (SELECT a.subject_kind FROM alerts a WHERE a.incident_id = i.incident_id AND a.subject_id = i.subject_id
      ORDER BY a.alert_id DESC LIMIT 1),
    CASE WHEN i.resident_id IS NOT NULL AND i.resident_id = i.subject_id THEN 'resident'
         WHEN i.subject_id = i.site_id THEN carewatch_site_subject_kind(i.site_id)
         WHEN EXISTS (SELECT 1 FROM gateways g WHERE g.gateway_id = i.subject_id) THEN 'gateway'
         ELSE 'device' END);
DROP INDEX incidents_one_open;
CREATE UNIQUE INDEX incidents_one_open ON incidents (subject_kind, subject_id) WHERE status <> 'resolved';

-- reading_assignments: a claim or session start takes a kit's reading ('kit') to a resident; a move takes a
-- resident's to another resident.
ALTER TABLE reading_assignments ADD COLUMN from_kind subject_kind;
ALTER TABLE reading_assignments ADD COLUMN to_kind subject_kind NOT NULL DEFAULT 'resident';
UPDATE reading_assignments SET from_kind = CASE kind WHEN 'move' THEN 'resident' ELSE 'kit' END;
ALTER TABLE reading_assignments ALTER COLUMN from_kind SET NOT NULL;
ALTER TABLE reading_assignments ALTER COLUMN to_kind DROP DEFAULT;
ALTER TABLE reading_assignments ADD CONSTRAINT reading_assignments_to_resident CHECK (to_kind = 'resident');

-- Every kind NOT NULL, and tied to its registry: a reading is a resident's, a kit's, a household's or a site's; a
-- resident's alert or incident is its resident_id's (a foreign key to residents); a household's or site's row is its
-- own site_id's. On alerts and incidents NOT VALID: enforced for every new or changed row, old rows not rescanned.
DO $$
DECLARE
  t text;
  readings boolean;
BEGIN
  FOREACH t IN ARRAY ARRAY['readings', 'latest_readings', 'alerts', 'incidents'] LOOP
    readings := t IN ('readings', 'latest_readings');
    EXECUTE format('ALTER TABLE %I ALTER COLUMN subject_kind SET NOT NULL', t);
    EXECUTE format($f$ALTER TABLE %I ADD CONSTRAINT %I
                      CHECK (subject_kind NOT IN ('household', 'site') OR subject_id = site_id)$f$ ||
                   CASE WHEN readings THEN '' ELSE ' NOT VALID' END, t, t || '_site_subject');
    IF readings THEN
      EXECUTE format($f$ALTER TABLE %I ADD CONSTRAINT %I
                        CHECK (subject_kind IN ('resident', 'household', 'site', 'kit'))$f$, t, t || '_subject_kind');
    ELSE
      EXECUTE format($f$ALTER TABLE %I ADD CONSTRAINT %I CHECK (subject_kind <> 'resident'
                        OR (resident_id IS NOT NULL AND resident_id = subject_id)) NOT VALID$f$,
                     t, t || '_resident_subject');
    END IF;
  END LOOP;
END $$;

-- The hourly roll-up per (kind, subject, metric). On plain PostgreSQL a view; a TimescaleDB continuous aggregate
-- cannot be rebuilt inside a transaction and is left as it is (docs/security.md, Open).
DO $$
BEGIN
  IF to_regclass('_timescaledb_catalog.continuous_agg') IS NULL THEN
    DROP VIEW hourly_vitals;
    CREATE VIEW hourly_vitals AS
    SELECT subject_kind, subject_id, metric, date_trunc('hour', measured_at) AS bucket,
           avg(value) AS avg_value, min(value) AS min_value, max(value) AS max_value, count(*) AS n
    FROM readings
    GROUP BY subject_kind, subject_id, metric, date_trunc('hour', measured_at);
  END IF;
END $$;
