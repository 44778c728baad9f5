-- What happened to an attachment that neither its columns nor the events outbox tell: a
-- promotion started (each try), aborted because the attachment moved on, a reprocess asked
-- for, done or failed, a slot replacement, an operator's action in the dashboard. Read by the
-- attachment's timeline (dashboard and GET /v1/attachments/{id}/events).

CREATE TABLE attachment_activity (
    id             bigserial PRIMARY KEY,
    attachment_id  uuid NOT NULL REFERENCES attachments (id) ON DELETE CASCADE,
    -- the transaction's time, like the attachment's own timestamps, so an entry written with
    -- a state change sorts with it
    at             timestamptz NOT NULL DEFAULT now(),
    kind           text NOT NULL,
    detail         jsonb
);
CREATE INDEX attachment_activity_attachment ON attachment_activity (attachment_id, at);

-- The operator's dashboard reads by time: uploads and promotions per hour, the
-- cached->stored lag of the last hour, the list's date range. Without these each overview
-- would scan every attachment ever uploaded.
CREATE INDEX attachments_created_at ON attachments (created_at);
CREATE INDEX attachments_stored_at ON attachments (stored_at) WHERE stored_at IS NOT NULL;

-- The delivery log and each endpoint's health read an endpoint's deliveries newest first by
-- created_at (delivery ids are random, so the (endpoint_id, id) index cannot order them), and
-- "retry every failed delivery since T" and the failed counts want only the failed ones.
CREATE INDEX webhook_deliveries_endpoint_created ON webhook_deliveries (endpoint_id, created_at DESC);
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (endpoint_id, updated_at)
    WHERE status = 'failed';
