-- The worker's attempts at each attachment's work (promote, reprocess, destroy, purge_cache),
-- kept where the work itself is known, not in Redis: how many tries, the last error, when the
-- next may start. A job counts its attempt here before it starts, so an attempt killed by a
-- timeout or a SIGKILL still counts; after STOWAGE_JOB_MAX_ATTEMPTS a promotion gives up
-- (the attachment becomes failed) instead of redoing the whole copy forever. A row is removed
-- when its work succeeds; the generation resets the count when the attachment moved on.

CREATE TABLE attachment_work (
    attachment_id    uuid NOT NULL REFERENCES attachments (id) ON DELETE CASCADE,
    kind             text NOT NULL,
    generation       integer NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    timed_out        boolean NOT NULL DEFAULT false,
    started_at       timestamptz,
    next_attempt_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (attachment_id, kind)
);
-- the sweep skips work whose next attempt is not due yet
CREATE INDEX attachment_work_due ON attachment_work (next_attempt_at);
