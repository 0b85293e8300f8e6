-- Security (issue 13): revocable sessions, login failures shared by every API worker, gateway accounts, and
-- least-privilege database roles. See docs/security.md.

-- One row per sign-in (a refresh-token family). Only a hash of the current refresh token's id is stored; a
-- refresh swaps it (rotation). Presenting an older token of the family revokes the family (theft detected).
-- Access tokens carry session_id and are refused once the session is revoked.
CREATE TABLE auth_sessions (
    session_id   uuid PRIMARY KEY,
    username     text NOT NULL REFERENCES users,
    refresh_hash text NOT NULL,              -- sha256 of the current refresh token's jti
    created_at   timestamptz NOT NULL DEFAULT now(),
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    revoked_why  text
);
CREATE INDEX auth_sessions_user ON auth_sessions (username) WHERE revoked_at IS NULL;

-- Failed sign-ins, per account and per client address (the real one: see api/auth.py client_address). Kept in
-- the database so the limits hold across restarts and across API workers.
CREATE TABLE login_failures (
    at       timestamptz NOT NULL DEFAULT now(),
    username text NOT NULL,
    client   text NOT NULL
);
CREATE INDEX login_failures_user ON login_failures (username, at);
CREATE INDEX login_failures_client ON login_failures (client, at);

-- A gateway's own API account: the only non-admin account that may read that gateway's BTHome bind keys.
ALTER TABLE users ADD COLUMN gateway_id text REFERENCES gateways;
ALTER TABLE users ADD CONSTRAINT users_gateway_account CHECK (gateway_id IS NULL OR role = 'care_staff');

-- Partition upkeep runs from ingest under the application role, which owns no table: these run as their owner.
ALTER FUNCTION carewatch_ensure_partitions(timestamptz, timestamptz) SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION carewatch_apply_retention(interval) SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION carewatch_apply_retention(interval) FROM PUBLIC;

-- Database roles (cluster-wide; created once, tolerating other databases on the server doing the same at once).
--   carewatch_app:    API, ingest, scorer. Reads and writes data; audit_log only INSERT and SELECT.
--   carewatch_report: read-only reporting.
-- The owner of the tables is the role that runs migrations (never the application role). Login accounts are
-- made members of these roles (`carewatch db roles`).
DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['carewatch_app', 'carewatch_report'] LOOP
    BEGIN
      EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS', r);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;  -- another database's migration made it first
    END;
  END LOOP;
END $$;

-- (Re)grant the roles' privileges on every table, view, sequence and function. migrate() calls this after each
-- run, so tables of later migrations are covered without each migration repeating the grants.
CREATE FUNCTION carewatch_apply_grants() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO carewatch_app, carewatch_report', current_database());
  REVOKE CREATE ON SCHEMA public FROM PUBLIC;
  GRANT USAGE ON SCHEMA public TO carewatch_app, carewatch_report;
  GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO carewatch_app;
  REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_log FROM carewatch_app;
  REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM carewatch_app;
  GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO carewatch_app;
  GRANT SELECT ON ALL TABLES IN SCHEMA public TO carewatch_report;
  -- ...but no secret: password hashes, sessions, sign-in failures, BTHome bind keys.
  REVOKE SELECT ON users, devices, auth_sessions, login_failures FROM carewatch_report;
  EXECUTE (SELECT format('GRANT SELECT (%s) ON users TO carewatch_report', string_agg(quote_ident(attname), ', '))
           FROM pg_attribute WHERE attrelid = 'users'::regclass AND attnum > 0 AND NOT attisdropped
             AND attname <> 'password_hash');
  EXECUTE (SELECT format('GRANT SELECT (%s) ON devices TO carewatch_report', string_agg(quote_ident(attname), ', '))
           FROM pg_attribute WHERE attrelid = 'devices'::regclass AND attnum > 0 AND NOT attisdropped
             AND attname <> 'bind_key');
  GRANT EXECUTE ON FUNCTION carewatch_apply_retention(interval) TO carewatch_app;
END $$;
REVOKE EXECUTE ON FUNCTION carewatch_apply_grants() FROM PUBLIC;
