-- The event feed (GET /v1/events): every event of an app, exactly once, in commit order.
--
-- A position is handed out at COMMIT, not at INSERT, by one sequencer per app: the deferred
-- trigger below runs as the transaction commits, takes the app's advisory transaction lock,
-- then draws the next position. Postgres makes a committing transaction visible before it
-- releases its locks, so the writer that takes the lock next is already behind a visible
-- commit: a reader that sees position N sees every position below N that will ever commit.
-- (Why this and not snapshots: app/webhooks/feed.py.)
--
-- The feed is a table of its own, beside the outbox: retention deletes feed rows only, so
-- the events themselves stay for the deliveries (ON DELETE CASCADE from events would take
-- their log with them) and for the attachment timeline.

CREATE SEQUENCE event_feed_position AS bigint;

CREATE TABLE event_feed (
    app_id      uuid NOT NULL,           -- an app deleted takes its events, hence these rows
    position    bigint NOT NULL,
    event_id    uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    type        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),   -- the commit, about
    PRIMARY KEY (app_id, position)       -- a page of the feed: one index range, O(limit)
);
CREATE UNIQUE INDEX event_feed_event ON event_feed (event_id);   -- `after` and the cascade
CREATE INDEX event_feed_created ON event_feed (created_at);      -- retention
CREATE INDEX event_feed_type ON event_feed (app_id, type, position); -- ?types=: O(limit) too

CREATE FUNCTION event_feed_sequence() RETURNS trigger AS $$
BEGIN
    -- two-key form: a lock space of its own, apart from the one-key locks of app.db
    PERFORM pg_advisory_xact_lock(1954047348, hashtext(NEW.app_id::text));
    INSERT INTO event_feed (app_id, position, event_id, type)
        VALUES (NEW.app_id, nextval('event_feed_position'), NEW.id, NEW.type);
    -- wakes the feed's long-polls, once the commit is visible
    PERFORM pg_notify('stowage_events', NEW.app_id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- webhook.test pings go to the one endpoint being tested: they are not events of the app
CREATE CONSTRAINT TRIGGER events_feed_sequence
    AFTER INSERT ON events DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.type <> 'webhook.test')
    EXECUTE FUNCTION event_feed_sequence();

-- Events written before the feed existed join it below position zero (newest nearest zero,
-- by id: UUIDv7, their creation order), in batches of their own transactions, so upgrading
-- a database of millions of events neither holds one long transaction nor locks the outbox.
-- Called by 0019, outside any transaction; it starts again where a crash left it.
CREATE TABLE event_feed_backfill (
    before_id      uuid,                 -- the oldest event done so far; NULL: none yet
    next_position  bigint NOT NULL
);
INSERT INTO event_feed_backfill VALUES (NULL, 0);

CREATE PROCEDURE event_feed_backfill(batch integer DEFAULT 5000) AS $$
DECLARE
    cursor_id  uuid;
    pos        bigint;
    done       integer;
BEGIN
    LOOP
        SELECT before_id, next_position INTO cursor_id, pos FROM event_feed_backfill;
        WITH batch AS (
            SELECT e.id, e.app_id, e.type, e.created_at FROM events e
            WHERE (cursor_id IS NULL OR e.id < cursor_id) AND e.type <> 'webhook.test'
              AND NOT EXISTS (SELECT 1 FROM event_feed f WHERE f.event_id = e.id)
            ORDER BY e.id DESC LIMIT batch
        ), ins AS (
            INSERT INTO event_feed (app_id, position, event_id, type, created_at)
            SELECT app_id, pos - row_number() OVER (ORDER BY id DESC), id, type, created_at
            FROM batch
            RETURNING position, event_id
        )
        SELECT count(*), min(position), (array_agg(event_id ORDER BY position))[1]
            INTO done, pos, cursor_id FROM ins;
        EXIT WHEN done = 0;
        UPDATE event_feed_backfill SET before_id = cursor_id, next_position = pos;
        COMMIT;
    END LOOP;
END;
$$ LANGUAGE plpgsql;

-- Idempotency-Key (app/idempotency): the first request's answer, per app and key, kept a day
-- (expires_at; the sweep removes it). While the first request runs, `owner` holds it under a
-- lease the request renews: a process killed mid-request frees the key when the lease ends.
CREATE TABLE idempotency_keys (
    app_id       uuid NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    key          text NOT NULL,
    endpoint     text NOT NULL,
    fingerprint  text,                   -- what makes a repeat "the same request"; NULL
                                         -- while an upload runs (its bytes tell at the end)
    owner        uuid,                   -- the running request; NULL once answered
    lease_until  timestamptz,
    status       integer,                -- the answer, once there is one
    headers      jsonb,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (app_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
