-- `stowage apps delete`: the app is marked deleted at once (keys revoked, attachments
-- deleted, endpoints disabled) and its row, with everything that cascades from it, is removed
-- by the worker's sweep once every file of it is gone: nothing orphaned in either storage.
ALTER TABLE apps ADD COLUMN deleted_at timestamptz;
