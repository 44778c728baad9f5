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

-- An app with a quota has a row in app_quota: its quota, the bytes of its live files (used, kept
-- by the same triggers as the counts, in the same statement) and the bytes its uploads in
-- progress hold (reserved, kept by reservations: see quota_reservations). Apps without a quota
-- have no row, so their writes touch none. An upload is let in by one UPDATE ... WHERE used +
-- reserved + n <= quota_bytes on that row: the row's lock orders concurrent uploads of one app,
-- and each re-checks against what the one before it committed.
CREATE TABLE app_quota (
    app_id       uuid PRIMARY KEY REFERENCES apps (id) ON DELETE CASCADE,
    quota_bytes  bigint NOT NULL CHECK (quota_bytes >= 0),
    used         bigint NOT NULL,
    reserved     bigint NOT NULL CHECK (reserved >= 0)
);

CREATE FUNCTION count_attachment_bytes() RETURNS trigger AS $$
DECLARE
    over record;
    covered uuid[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- A new upload whose reservation (it has the attachment's id) covers its bytes: the
        -- reservation is kept, converted (it holds the bytes until the sweep moves them into
        -- used, in one UPDATE), so this INSERT takes no lock on app_quota: uploads of one app
        -- are not serialised here. The quota was checked when the bytes were reserved.
        WITH cv AS (UPDATE quota_reservations r
                    SET converted_size = attachment_bytes(n.size, n.derivatives, n.purged_at),
                        expires_at = 'infinity'
                    FROM new_rows n WHERE r.id = n.id AND r.converted_size IS NULL
                    AND r.bytes >= attachment_bytes(n.size, n.derivatives, n.purged_at)
                    RETURNING r.id)
        SELECT coalesce(array_agg(id), '{}') INTO covered FROM cv;
        -- Any other (no reservation, or a smaller one): its reservation given back (trigger
        -- release_reserved), its size added to used and the quota checked on the row as
        -- updated, under the row's lock until this statement's transaction commits.
        DELETE FROM quota_reservations r USING new_rows n
        WHERE r.id = n.id AND r.converted_size IS NULL;
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'bytes', app_id, 'live', sum(attachment_bytes(size, derivatives, purged_at))
        FROM new_rows GROUP BY app_id
        HAVING sum(attachment_bytes(size, derivatives, purged_at)) <> 0;
        WITH d AS (SELECT app_id, sum(attachment_bytes(size, derivatives, purged_at)) AS delta
                   FROM new_rows WHERE id <> ALL (covered) GROUP BY app_id),
        u AS (UPDATE app_quota q SET used = q.used + d.delta FROM d
              WHERE q.app_id = d.app_id AND d.delta <> 0
              RETURNING q.app_id, q.quota_bytes, q.used, q.reserved)
        SELECT app_id, quota_bytes, used, reserved INTO over FROM u
        WHERE used + reserved > quota_bytes LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'stowage: quota exceeded'
                USING DETAIL = json_build_object('app_id', over.app_id, 'quota_bytes',
                    over.quota_bytes, 'used', over.used, 'reserved', over.reserved)::text;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        WITH d AS (SELECT app_id, -sum(attachment_bytes(size, derivatives, purged_at)) AS delta
                   FROM old_rows GROUP BY app_id),
        c AS (INSERT INTO row_count_changes (kind, scope, value, delta)
              SELECT 'bytes', app_id, 'live', delta FROM d WHERE delta <> 0)
        UPDATE app_quota q SET used = q.used + d.delta FROM d
        WHERE q.app_id = d.app_id AND d.delta <> 0;
    ELSE
        WITH d AS (SELECT app_id, sum(b) AS delta FROM (
                       SELECT app_id, -attachment_bytes(size, derivatives, purged_at) AS b
                       FROM old_rows
                       UNION ALL SELECT app_id, attachment_bytes(size, derivatives, purged_at)
                       FROM new_rows) x GROUP BY app_id),
        c AS (INSERT INTO row_count_changes (kind, scope, value, delta)
              SELECT 'bytes', app_id, 'live', delta FROM d WHERE delta <> 0)
        UPDATE app_quota q SET used = q.used + d.delta FROM d
        WHERE q.app_id = d.app_id AND d.delta <> 0;
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
        WITH d AS (SELECT a.app_id, sum(v.size) AS delta FROM new_rows v
                   JOIN attachments a ON a.id = v.attachment_id GROUP BY a.app_id),
        c AS (INSERT INTO row_count_changes (kind, scope, value, delta)
              SELECT 'bytes', app_id, 'live', delta FROM d)
        UPDATE app_quota q SET used = q.used + d.delta FROM d WHERE q.app_id = d.app_id;
    ELSE
        WITH d AS (SELECT a.app_id, -sum(v.size) AS delta FROM old_rows v
                   JOIN attachments a ON a.id = v.attachment_id GROUP BY a.app_id),
        c AS (INSERT INTO row_count_changes (kind, scope, value, delta)
              SELECT 'bytes', app_id, 'live', delta FROM d)
        UPDATE app_quota q SET used = q.used + d.delta FROM d WHERE q.app_id = d.app_id;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER variants_bytes_insert AFTER INSERT ON attachment_variants
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_variant_bytes();
CREATE TRIGGER variants_bytes_delete AFTER DELETE ON attachment_variants
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_variant_bytes();

-- Bytes an upload in progress holds against its app's quota (app_quota.reserved is their sum):
-- taken before the first byte is received, in the same statement as the check; dropped in the
-- transaction that records the attachment (or converted, see count_attachment_bytes), or when
-- the upload is refused. A process killed
-- mid-upload leaves its reservation until it expires: the sweep deletes it. A tus upload's
-- reservation has the upload's id and goes with its row. Whatever deletes reservations, the
-- trigger gives their bytes back.
CREATE TABLE quota_reservations (
    id          uuid PRIMARY KEY,
    app_id      uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    expires_at  timestamptz NOT NULL,
    -- set when its upload was recorded within it: it holds the bytes until the sweep moves
    -- this many into app_quota.used
    converted_size bigint
);
CREATE INDEX quota_reservations_app ON quota_reservations (app_id);
CREATE INDEX quota_reservations_expires ON quota_reservations (expires_at);

CREATE FUNCTION release_reserved() RETURNS trigger AS $$
BEGIN
    UPDATE app_quota q SET reserved = greatest(q.reserved - r.bytes, 0)
    FROM (SELECT app_id, sum(bytes) AS bytes FROM old_rows GROUP BY app_id) r
    WHERE q.app_id = r.app_id;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER quota_reservations_released AFTER DELETE ON quota_reservations
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION release_reserved();

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
