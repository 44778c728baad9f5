-- stowage: no-transaction
-- Indexes that keep requests and the sweep O(rows asked for) at millions of attachments
-- (issue 25), built CONCURRENTLY: upgrading a live database does not lock uploads out while
-- a big table is indexed. Each statement is safe to run again (app.migrate).

-- an attachment's events page and the dashboard read the deliveries of each event
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_deliveries_event
    ON webhook_deliveries (event_id);

-- GET /v1/attachments?state=: an app's attachments in one state, newest first
CREATE INDEX CONCURRENTLY IF NOT EXISTS attachments_app_state
    ON attachments (app_id, state, id DESC);

-- the sweep, each query reading only the rows that are due (their predicate and order):
-- uploads never promoted, past their cache TTL
CREATE INDEX CONCURRENTLY IF NOT EXISTS attachments_expiry
    ON attachments (expires_at) WHERE state = 'cached' AND promote_requested_at IS NULL;
-- promotions asked for and not done
CREATE INDEX CONCURRENTLY IF NOT EXISTS attachments_promotion_pending
    ON attachments (updated_at) WHERE state = 'cached' AND promote_requested_at IS NOT NULL;
-- cached copies of stored or failed attachments not purged yet
CREATE INDEX CONCURRENTLY IF NOT EXISTS attachments_cache_unpurged
    ON attachments (updated_at)
    WHERE state IN ('stored', 'failed') AND cache_purged_at IS NULL;
-- replaced by the two above: no query orders cached rows by updated_at over both kinds, nor
-- stored rows by stored_at with their cache copy
DROP INDEX CONCURRENTLY IF EXISTS attachments_cached;
DROP INDEX CONCURRENTLY IF EXISTS attachments_cache_left;

-- the dashboard's profile filter lists the profiles in use by a skip scan over this index
CREATE INDEX CONCURRENTLY IF NOT EXISTS attachments_profile ON attachments (profile);
