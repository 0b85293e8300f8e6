-- The slow tick takes a household whose inputs other than readings changed since its last evaluation (issue 19
-- leftovers; scoring/households.py: households_due; docs/clinical-safety.md H-HOME-11), instead of waiting for the
-- 5-minute cadence: a setting, a device bound or unbound, a resident's monitoring, a hub's state or its return from
-- silence, an alert a person resolved, a snooze ended. Each source is read by an index range over the last few
-- minutes (the cadence takes anything older), never by a scan of the estate.
--
-- sites, devices, residents and gateways have several writers (the API, ingest, seeding, an administrator's SQL):
-- their changed_at is written by one trigger each, only when a column the household rules read changes (not on
-- ingest's last_seen / battery updates of devices, which stay HOT). Rows already present start at -infinity, so
-- the migration makes no household due.
CREATE FUNCTION carewatch_touch_changed_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_at := now();
    RETURN NEW;
END
$$;

ALTER TABLE sites ADD COLUMN changed_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE sites ALTER COLUMN changed_at SET DEFAULT now();
CREATE TRIGGER sites_changed_at BEFORE UPDATE ON sites FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION carewatch_touch_changed_at();
CREATE INDEX sites_changed_at ON sites (changed_at);

ALTER TABLE devices ADD COLUMN changed_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE devices ALTER COLUMN changed_at SET DEFAULT now();
CREATE TRIGGER devices_changed_at BEFORE UPDATE ON devices FOR EACH ROW
    WHEN ((OLD.site_id, OLD.gateway_id, OLD.kind, OLD.resident_id, OLD.room, OLD.role, OLD.active, OLD.bound_at,
           OLD.unbound_at)
          IS DISTINCT FROM (NEW.site_id, NEW.gateway_id, NEW.kind, NEW.resident_id, NEW.room, NEW.role, NEW.active,
                            NEW.bound_at, NEW.unbound_at))
    EXECUTE FUNCTION carewatch_touch_changed_at();
CREATE INDEX devices_changed_at ON devices (changed_at);

ALTER TABLE residents ADD COLUMN changed_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE residents ALTER COLUMN changed_at SET DEFAULT now();
CREATE TRIGGER residents_changed_at BEFORE UPDATE ON residents FOR EACH ROW
    WHEN ((OLD.site_id, OLD.monitoring) IS DISTINCT FROM (NEW.site_id, NEW.monitoring))
    EXECUTE FUNCTION carewatch_touch_changed_at();
CREATE INDEX residents_changed_at ON residents (changed_at);

-- A hub's state, or its last_seen moving on by more than 5 minutes: a return from silence (the rules count a hub
-- silent for GATEWAY_SILENT_AFTER, 10 minutes, as offline; tests/scoring/test_households.py holds 5 below it).
ALTER TABLE gateways ADD COLUMN changed_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE gateways ALTER COLUMN changed_at SET DEFAULT now();
CREATE TRIGGER gateways_changed_at BEFORE UPDATE ON gateways FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.site_id IS DISTINCT FROM NEW.site_id
          OR (OLD.last_seen IS NULL) <> (NEW.last_seen IS NULL)
          OR NEW.last_seen > OLD.last_seen + interval '5 minutes')
    EXECUTE FUNCTION carewatch_touch_changed_at();
CREATE INDEX gateways_changed_at ON gateways (changed_at);

-- alerts a person resolved and snoozes ending (written by scoring/lifecycle.py), households' only
CREATE INDEX alerts_household_resolved ON alerts (resolved_at) WHERE subject_kind = 'household';
CREATE INDEX alert_suppressions_household_until ON alert_suppressions (until) WHERE subject_kind = 'household';

-- The earliest deadline other than a night completing at 06:00 (behaviour.household_recheck_times; 'infinity':
-- none): the slow tick evaluates those first and re-checks them between slices of the rest.
ALTER TABLE household_state ADD COLUMN urgent_at timestamptz;
UPDATE household_state SET urgent_at = recheck_at;
ALTER TABLE household_state ALTER COLUMN urgent_at SET NOT NULL;
CREATE INDEX household_state_urgent_at ON household_state (urgent_at);
