-- Storage quotas and rate limits per app (issue 24).
ALTER TABLE apps ADD COLUMN quota_bytes bigint CHECK (quota_bytes >= 0);
ALTER TABLE apps ADD COLUMN rate_limit integer CHECK (rate_limit >= 0);

-- Bytes of each app's live files, kept like the row counts of 0014 (no hot row: each statement
-- adds its net change to row_count_changes, kind 'bytes', value 'live'; the sweep folds them):
-- an attachment's original and derivatives count from its INSERT until its files are gone
-- (purged_at), its variants from their row's INSERT until its DELETE.
CREATE FUNCTION attachment_bytes(size bigint, derivatives jsonb, purged_at timestamptz)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN purged_at IS NOT NULL THEN 0 ELSE coalesce(size, 0) + coalesce(
        (SELECT sum((d.value->>'size')::bigint) FROM jsonb_each(
            CASE WHEN jsonb_typeof(derivatives) = 'object' THEN derivatives ELSE '{}' END) d
         WHERE jsonb_typeof(d.value->'size') = 'number'), 0) END
$$;

CREATE FUNCTION count_attachment_bytes() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'bytes', app_id, 'live', sum(attachment_bytes(size, derivatives, purged_at))
        FROM new_rows GROUP BY app_id
        HAVING sum(attachment_bytes(size, derivatives, purged_at)) <> 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'bytes', app_id, 'live', -sum(attachment_bytes(size, derivatives, purged_at))
        FROM old_rows GROUP BY app_id
        HAVING sum(attachment_bytes(size, derivatives, purged_at)) <> 0;
    ELSE
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'bytes', app_id, 'live', sum(d) FROM (
            SELECT app_id, -attachment_bytes(size, derivatives, purged_at) AS d FROM old_rows
            UNION ALL SELECT app_id, attachment_bytes(size, derivatives, purged_at) FROM new_rows) c
        GROUP BY app_id HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER attachments_bytes_insert AFTER INSERT ON attachments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_attachment_bytes();
CREATE TRIGGER attachments_bytes_update AFTER UPDATE ON attachments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_attachment_bytes();
CREATE TRIGGER attachments_bytes_delete AFTER DELETE ON attachments
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_attachment_bytes();

CREATE FUNCTION count_variant_bytes() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'bytes', a.app_id, 'live', sum(v.size) FROM new_rows v
        JOIN attachments a ON a.id = v.attachment_id GROUP BY a.app_id;
    ELSE
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'bytes', a.app_id, 'live', -sum(v.size) FROM old_rows v
        JOIN attachments a ON a.id = v.attachment_id GROUP BY a.app_id;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER variants_bytes_insert AFTER INSERT ON attachment_variants
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_variant_bytes();
CREATE TRIGGER variants_bytes_delete AFTER DELETE ON attachment_variants
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_variant_bytes();

-- Bytes an upload in progress holds against its app's quota: taken before the first byte is
-- received, dropped in the transaction that records the attachment (or when the upload is
-- refused). A process killed mid-upload leaves its reservation: it stops counting at
-- expires_at, and the sweep deletes it. A tus upload's reservation has the upload's id and
-- goes with its row.
CREATE TABLE quota_reservations (
    id          uuid PRIMARY KEY,
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX quota_reservations_app ON quota_reservations (app_id, expires_at);
CREATE INDEX quota_reservations_expires ON quota_reservations (expires_at);

-- what exists already
INSERT INTO row_counts (kind, scope, value, n)
SELECT 'bytes', app_id, 'live', sum(b) FROM (
    SELECT app_id, attachment_bytes(size, derivatives, purged_at) AS b FROM attachments
    UNION ALL SELECT a.app_id, v.size FROM attachment_variants v
    JOIN attachments a ON a.id = v.attachment_id) c
GROUP BY app_id HAVING sum(b) <> 0;

CREATE FUNCTION drop_tus_reservations() RETURNS trigger AS $$
BEGIN
    DELETE FROM quota_reservations r USING old_rows o WHERE r.id = o.id;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER tus_uploads_drop_reservations AFTER DELETE ON tus_uploads
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION drop_tus_reservations();
