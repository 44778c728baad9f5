-- Scoped API keys and upload tokens (issue 24).
--
-- A key's scopes: what it may call (upload, read, delete, webhooks). Keys made before scopes
-- existed keep every scope, as they could do everything.
ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL
    DEFAULT ARRAY['upload', 'read', 'delete', 'webhooks'];

-- Upload tokens: short-lived bearer credentials a back-end mints (with an API key) for a
-- browser. Stored hashed like keys; they die with the key that minted them. uses_left is
-- taken one at a time by a single UPDATE ... WHERE uses_left > 0, exact under concurrency.
CREATE TABLE upload_tokens (
    id          uuid PRIMARY KEY,
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    key_id      uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,
    profile     text NOT NULL,
    record_type text,
    record_id   text,
    record_name text,
    metadata    jsonb NOT NULL DEFAULT '{}',
    max_size    bigint,
    uses        integer NOT NULL,
    uses_left   integer NOT NULL CHECK (uses_left >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX upload_tokens_app_id ON upload_tokens (app_id);
CREATE INDEX upload_tokens_key_id ON upload_tokens (key_id);
CREATE INDEX upload_tokens_expires_at ON upload_tokens (expires_at);

-- what a token made: it may read those attachments (and only those), and the tus upload it
-- created (and only that one)
ALTER TABLE attachments ADD COLUMN upload_token_id uuid;
ALTER TABLE tus_uploads ADD COLUMN upload_token_id uuid;
