-- Webhooks: endpoints, the transactional outbox of events, deliveries and their attempts.

CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY,
    app_id           uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    url              text NOT NULL,
    secret           text NOT NULL,
    events           text[],                 -- NULL: every event type
    description      text,
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    failing_since    timestamptz,            -- first failure since the last success
    last_success_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_app ON webhook_endpoints (app_id, id DESC);

-- The outbox: written in the same transaction as the state change it describes.
CREATE TABLE events (
    id             uuid PRIMARY KEY,
    app_id         uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    type           text NOT NULL,
    attachment_id  uuid,
    body           jsonb NOT NULL,           -- exactly what receivers get
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_attachment ON events (attachment_id, created_at);

CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY,
    event_id          uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    -- when pending: due time; while an attempt is in flight it is pushed out as a lease, so a
    -- worker that dies mid-attempt leaves it due again later and no two workers send at once
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_status_code  integer,
    last_error        text,
    delivered_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id             bigserial PRIMARY KEY,
    delivery_id    uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    status_code    integer,
    error          text,
    duration_ms    integer NOT NULL,
    response_body  text
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- Wakes long-polls (GET /v1/attachments/{id}?wait=N) the moment a state changes.
CREATE FUNCTION notify_attachment_state() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('stowage_attachment_state', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER attachments_state_notify
    AFTER UPDATE OF state ON attachments
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION notify_attachment_state();
