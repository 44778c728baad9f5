-- A record slot's attachment is replaced when its successor becomes stored, not when the
-- successor is uploaded: until then both live in the slot (the current one stored, the
-- pending ones cached). At most one attachment of a slot is stored at a time.
DROP INDEX attachments_live_slot;
CREATE UNIQUE INDEX attachments_stored_slot
    ON attachments (app_id, record_type, record_id, record_name)
    WHERE state = 'stored' AND record_type IS NOT NULL;
-- a slot's attachments in every state: the replacement at store time, and the list's filter
CREATE INDEX attachments_slot
    ON attachments (app_id, record_type, record_id, record_name, created_at)
    WHERE record_type IS NOT NULL;
