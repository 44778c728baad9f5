-- Apps, their API keys, and attachments: the core of Stowage.

CREATE TABLE apps (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    -- SHA-256 of the whole key: keys carry 256 random bits, so a slow hash adds nothing.
    key_hash    bytea NOT NULL UNIQUE,
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_app_id ON api_keys (app_id);

CREATE TABLE attachments (
    id                    uuid PRIMARY KEY,            -- UUIDv7: ordering by id is ordering by creation
    app_id                uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    profile               text NOT NULL,
    state                 text NOT NULL CHECK (state IN ('cached', 'stored', 'failed', 'deleted')),
    storage               text NOT NULL CHECK (storage IN ('cache', 'store')),
    key                   text NOT NULL,
    filename              text,
    mime_type             text NOT NULL,
    size                  bigint NOT NULL,
    sha256                text NOT NULL,
    metadata              jsonb NOT NULL DEFAULT '{}',
    client_metadata       jsonb NOT NULL DEFAULT '{}',
    derivatives           jsonb NOT NULL DEFAULT '{}',
    record_type           text,
    record_id             text,
    record_name           text,
    generation            integer NOT NULL DEFAULT 1,
    error                 jsonb,
    promote_requested_at  timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    stored_at             timestamptz,
    expires_at            timestamptz,
    deleted_at            timestamptz,
    -- set once every file of a deleted attachment is gone; NULL means the sweep must (re)destroy
    purged_at             timestamptz,
    -- set once the cached copy of a stored attachment is gone
    cache_purged_at       timestamptz,
    CHECK ((record_type IS NULL) = (record_id IS NULL) AND (record_id IS NULL) = (record_name IS NULL))
);

CREATE UNIQUE INDEX attachments_live_slot ON attachments (app_id, record_type, record_id, record_name)
    WHERE state <> 'deleted' AND record_type IS NOT NULL;
CREATE INDEX attachments_app_id ON attachments (app_id, id DESC);
CREATE INDEX attachments_cached ON attachments (updated_at) WHERE state = 'cached';
CREATE INDEX attachments_unpurged ON attachments (deleted_at) WHERE state = 'deleted' AND purged_at IS NULL;
CREATE INDEX attachments_cache_left ON attachments (stored_at)
    WHERE state = 'stored' AND cache_purged_at IS NULL;
