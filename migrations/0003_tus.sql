-- tus 1.0 resumable uploads: the state of every upload in progress lives here, so an upload
-- resumes across API restarts and across API instances.

CREATE TABLE tus_uploads (
    id               uuid PRIMARY KEY,               -- UUIDv7; also the upload's URL
    app_id           uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    length           bigint NOT NULL CHECK (length >= 0),
    -- bytes received AND durable ("offset" is an SQL keyword)
    upload_offset    bigint NOT NULL DEFAULT 0 CHECK (upload_offset >= 0 AND upload_offset <= length),
    profile          text NOT NULL,
    options          jsonb NOT NULL,                 -- the parsed Upload-Metadata (UploadOptions)
    metadata_header  text,                           -- Upload-Metadata as sent, echoed on HEAD
    storage_key      text NOT NULL,                  -- in the cache storage
    -- S3 cache only: the multipart upload, its parts [{"PartNumber", "ETag", "Size"}], and the
    -- bytes after the last whole part, kept as a small object until the next PATCH merges them
    s3_upload_id     text,
    s3_parts         jsonb NOT NULL DEFAULT '[]',
    tail_key         text,
    tail_size        bigint NOT NULL DEFAULT 0,
    -- receiving -> completing (every byte is here; attachment_id is chosen) -> done (the
    -- attachment exists). attachment_id is picked before the attachment is made, so a retried
    -- completion reuses it instead of making a second attachment.
    state            text NOT NULL DEFAULT 'receiving'
                         CHECK (state IN ('receiving', 'completing', 'done')),
    attachment_id    uuid,
    -- a lease: whoever holds it (a PATCH, a completion, the expiry sweep) is the only writer;
    -- a holder that dies simply stops renewing it
    lock_owner       uuid,
    lock_until       timestamptz,
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    CHECK ((state = 'receiving') = (attachment_id IS NULL))
);

CREATE INDEX tus_uploads_app ON tus_uploads (app_id, id);
CREATE INDEX tus_uploads_expires ON tus_uploads (expires_at);
