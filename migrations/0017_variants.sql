-- Image variants rendered on request (GET /v1/attachments/{id}/image): one row per variant
-- of an attachment's generation, written once its file is in the store. The row is how a
-- second request (on any API instance) knows the variant exists, what the attachment's
-- variant count and bytes are, and what goes with the attachment. The files live under the
-- attachment's prefix (variants/g<generation>/...), so deleting the attachment removes them.
CREATE TABLE attachment_variants (
    attachment_id  uuid NOT NULL REFERENCES attachments (id) ON DELETE CASCADE,
    generation     integer NOT NULL,
    params         text NOT NULL,        -- the normalised parameters: one variant, one row
    key            text NOT NULL,
    mime_type      text NOT NULL,
    size           bigint NOT NULL,
    width          integer NOT NULL,
    height         integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (attachment_id, generation, params)
);
