-- POST /v1/attachments/{id}/rescan: the request is kept on the row until its scan is done, so
-- the worker's sweep finds a rescan whose job Redis lost (Postgres is the truth).
ALTER TABLE attachments ADD COLUMN rescan_requested_at timestamptz;
