-- Direct-to-S3 uploads handed out by POST /v1/presigned-uploads and not yet registered.
-- The row is deleted when the upload is registered (or refused), so "not registered yet" is
-- simply "the row exists"; the sweep removes objects whose presign expired unregistered.

CREATE TABLE presigned_uploads (
    attachment_id  uuid PRIMARY KEY,          -- the id the attachment will have
    app_id         uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    key            text NOT NULL UNIQUE,      -- cache key, derived from the attachment id
    profile        text NOT NULL,
    filename       text,
    max_size       bigint NOT NULL,
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX presigned_uploads_expiry ON presigned_uploads (expires_at);
