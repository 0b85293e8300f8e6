-- Set-history memory in the scorer replica (issue 19, part 0; scoring/memory.py; docs/clinical-safety.md H-BASE-06).
-- A scorer replica keeps each resident's observation sets older than FULL_SETS (28 h) in memory, validated on
-- every evaluation by this per-resident version. Every writer of observation_sets other than the scorer's own
-- round plans (which never touch a set that old) bumps it in the same transaction as its write; a resident with
-- no row is at version 0. scoring/observation_sets.py is the one writer of both tables.
CREATE TABLE observation_set_versions (
    resident_id text PRIMARY KEY,
    version     bigint NOT NULL DEFAULT 1
);
