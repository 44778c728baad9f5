-- stowage: no-transaction
-- The sweep's query for rescans asked for and not done (0015); tiny: only rows with a request.
CREATE INDEX CONCURRENTLY IF NOT EXISTS attachments_rescan_requested
    ON attachments (rescan_requested_at) WHERE rescan_requested_at IS NOT NULL;
