-- Counts that /metrics and the dashboard read in O(apps), not O(rows) (issue 25): attachments
-- per app and state, webhook deliveries per endpoint and status, kept by triggers in the same
-- transaction as the change.
--
-- A change does not update a count row (parallel uploads of one app would queue on it): each
-- statement adds its net change to row_count_changes, and the worker's sweep folds those
-- into row_counts every few seconds (app/counts.py). A reader adds both, so a count is exact
-- at every commit. Statement-level triggers: a bulk change (an app deleted with its
-- attachments, the sweep expiring uploads) adds one row per (app, state), not one per row.
--
-- No foreign keys: a change row outlives the app it counts when the app is deleted in the same
-- statement; readers join apps and endpoints, and the fold drops what they no longer have.
-- Creating the triggers and counting what exists happen in this one transaction, which holds
-- writes to both tables for the time of the count (about a second at a million rows).

CREATE TABLE row_counts (
    kind   text NOT NULL,     -- 'attachments': scope = app id, value = state
    scope  uuid NOT NULL,     -- 'deliveries': scope = endpoint id, value = status
    value  text NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (kind, scope, value)
);

CREATE TABLE row_count_changes (
    id     bigserial PRIMARY KEY,
    kind   text NOT NULL,
    scope  uuid NOT NULL,
    value  text NOT NULL,
    delta  bigint NOT NULL
);

-- what every reader reads: the counts with the changes not folded yet
CREATE VIEW current_row_counts AS
SELECT kind, scope, value, sum(n)::bigint AS n FROM (
    SELECT kind, scope, value, n FROM row_counts
    UNION ALL SELECT kind, scope, value, delta FROM row_count_changes) c
GROUP BY kind, scope, value;

CREATE FUNCTION count_attachments() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'attachments', app_id, state, count(*) FROM new_rows GROUP BY app_id, state;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'attachments', app_id, state, -count(*) FROM old_rows GROUP BY app_id, state;
    ELSE
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'attachments', app_id, state, sum(d) FROM (
            SELECT app_id, state, -1 AS d FROM old_rows
            UNION ALL SELECT app_id, state, 1 FROM new_rows) c
        GROUP BY app_id, state HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER attachments_counted_insert AFTER INSERT ON attachments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_attachments();
CREATE TRIGGER attachments_counted_update AFTER UPDATE ON attachments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_attachments();
CREATE TRIGGER attachments_counted_delete AFTER DELETE ON attachments
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_attachments();

CREATE FUNCTION count_deliveries() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'deliveries', endpoint_id, status, count(*) FROM new_rows
        GROUP BY endpoint_id, status;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'deliveries', endpoint_id, status, -count(*) FROM old_rows
        GROUP BY endpoint_id, status;
    ELSE
        INSERT INTO row_count_changes (kind, scope, value, delta)
        SELECT 'deliveries', endpoint_id, status, sum(d) FROM (
            SELECT endpoint_id, status, -1 AS d FROM old_rows
            UNION ALL SELECT endpoint_id, status, 1 FROM new_rows) c
        GROUP BY endpoint_id, status HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON webhook_deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_deliveries();
CREATE TRIGGER deliveries_counted_update AFTER UPDATE ON webhook_deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_deliveries();
CREATE TRIGGER deliveries_counted_delete AFTER DELETE ON webhook_deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_deliveries();

INSERT INTO row_counts (kind, scope, value, n)
SELECT 'attachments', app_id, state, count(*) FROM attachments GROUP BY app_id, state;
INSERT INTO row_counts (kind, scope, value, n)
SELECT 'deliveries', endpoint_id, status, count(*) FROM webhook_deliveries
GROUP BY endpoint_id, status;
