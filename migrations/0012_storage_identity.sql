-- The storages this database's files live in, per role, as first seen: the id in the
-- storage's marker (_stowage/identity.json). A process pointed at another folder or bucket
-- (a relative file:// path run from another directory, a wrong or empty bucket) refuses to
-- start instead of taking every file for missing. See app/storage_identity.
CREATE TABLE storage_identities (
    role        text PRIMARY KEY CHECK (role IN ('cache', 'store')),
    storage_id  uuid NOT NULL,
    -- where it was last seen (an absolute path, s3://bucket/prefix): for messages only, the
    -- id decides; updated when the storage moves with its marker
    location    text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);
