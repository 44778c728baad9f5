-- Issue 21: an attachment's image variants (count and bytes) on the attachment object, kept
-- on its row by a trigger so every read of an attachment (a page of 50, a webhook body) has
-- them without a query per attachment. Variants of every generation still held are counted:
-- a new generation's reprocess forgets the older ones' rows, which gives their bytes back.
ALTER TABLE attachments
    ADD COLUMN variants_count integer NOT NULL DEFAULT 0,
    ADD COLUMN variants_bytes bigint NOT NULL DEFAULT 0;

UPDATE attachments a SET variants_count = v.n, variants_bytes = v.bytes
FROM (SELECT attachment_id, count(*) AS n, sum(size) AS bytes
      FROM attachment_variants GROUP BY attachment_id) v
WHERE a.id = v.attachment_id;

CREATE FUNCTION count_variants() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE attachments SET variants_count = variants_count + 1,
                               variants_bytes = variants_bytes + NEW.size
        WHERE id = NEW.attachment_id;
        RETURN NEW;
    END IF;
    -- a row deleted by the attachment's own deletion (ON DELETE CASCADE) finds no row here
    UPDATE attachments SET variants_count = variants_count - 1,
                           variants_bytes = variants_bytes - OLD.size
    WHERE id = OLD.attachment_id;
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER attachment_variants_counted AFTER INSERT OR DELETE ON attachment_variants
    FOR EACH ROW EXECUTE FUNCTION count_variants();
