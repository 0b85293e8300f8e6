-- Scorer replicas (issue 19, scoring/replicas.py is the one writer of both tables): the sites are divided into a
-- fixed number of buckets; a replica owns a bucket while it holds a session advisory lock on it, so a replica that
-- dies (its session ends) frees its buckets at once. These tables are what the others (and /healthz) can see.

-- Which bucket a site belongs to: the one definition of the hash (replicas ask the database, never compute it).
CREATE FUNCTION carewatch_site_bucket(site_id text, buckets integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ((('x' || substr(md5(site_id), 1, 8))::bit(32)::integer) & 2147483647) % buckets $$;

-- One row per running replica, heartbeat every few seconds; lease_pid is the backend holding its bucket locks
-- (a row whose backend is gone, or whose heartbeat is old, is a dead replica).
CREATE TABLE scorer_replicas (
    replica_id   text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    lease_pid    integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    buckets      integer[] NOT NULL DEFAULT '{}'
);

-- One row per bucket: who last held it and when its sites were last scored (the watchdog's heartbeat per bucket).
CREATE TABLE scorer_buckets (
    bucket      integer PRIMARY KEY,
    replica_id  text,
    acquired_at timestamptz,
    scored_at   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
