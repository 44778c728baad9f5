"""SQL for webhook endpoints, the events outbox, deliveries and attempts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

ENDPOINT_COLUMNS = (
    "id, app_id, url, secret, events, description, enabled, disabled_reason, failing_since,"
    " last_success_at, created_at, updated_at,"
    # when the secret a rotation replaced stops signing; NULL when none signs any more
    " CASE WHEN previous_secret_until > now() THEN previous_secret_until END"
    "  AS previous_secret_expires_at"
)
DELIVERY_COLUMNS = (
    "d.id, d.event_id, e.type AS event_type, e.attachment_id, d.endpoint_id, d.status,"
    " d.attempts, d.last_status_code, d.last_error, d.next_attempt_at, d.delivered_at,"
    " d.created_at"
)


# --- endpoints -------------------------------------------------------------------------------

async def insert_endpoint(conn: asyncpg.Connection, **v: Any) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO webhook_endpoints (id, app_id, url, secret, events, description)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}",
        v["id"], v["app_id"], v["url"], v["secret"], v["events"], v["description"],
    )


async def get_endpoint(conn: asyncpg.Connection, app_id: UUID, endpoint_id: UUID
                       ) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND app_id = $2",
        endpoint_id, app_id,
    )


async def list_endpoints(conn: asyncpg.Connection, app_id: UUID, before: UUID | None,
                         limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE app_id = $1"
        " AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        app_id, before, limit,
    )


async def update_endpoint(conn: asyncpg.Connection, app_id: UUID, endpoint_id: UUID,
                          changes: dict[str, Any], secret_overlap_s: float = 0
                          ) -> asyncpg.Record | None:
    """Apply the given changes; only whitelisted column names ever reach the SQL text.

    A new ``secret`` keeps the one it replaces signing for ``secret_overlap_s`` more seconds
    (read from the row in the same statement: two rotations at once cannot lose a secret
    that was handed out). Rotating again within the overlap drops the oldest: only the
    secret just replaced goes on signing."""
    allowed = {"url", "events", "description", "enabled", "secret", "disabled_reason",
               "failing_since"}
    assert set(changes) <= allowed, changes
    sets = [f"{col} = ${i}" for i, col in enumerate(changes, start=3)]
    args: list[Any] = [endpoint_id, app_id, *changes.values()]
    if "secret" in changes:
        # the right-hand sides see the row as it was: previous_secret is the old secret
        args.append(secret_overlap_s)
        sets += ["previous_secret = secret",
                 f"previous_secret_until = now() + make_interval(secs => ${len(args)})"]
    return await conn.fetchrow(
        f"UPDATE webhook_endpoints SET {', '.join([*sets, 'updated_at = now()'])}"
        f" WHERE id = $1 AND app_id = $2 RETURNING {ENDPOINT_COLUMNS}",
        *args,
    )


async def delete_endpoint(conn: asyncpg.Connection, app_id: UUID, endpoint_id: UUID) -> bool:
    done = await conn.execute(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND app_id = $2", endpoint_id, app_id
    )
    return done.endswith(" 1")


async def record_success(conn: asyncpg.Connection, endpoint_id: UUID) -> None:
    await conn.execute(
        "UPDATE webhook_endpoints SET last_success_at = now(), failing_since = NULL"
        " WHERE id = $1", endpoint_id,
    )


async def disable_endpoint(conn: asyncpg.Connection, endpoint_id: UUID, reason: str) -> None:
    await conn.execute(
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, updated_at = now()"
        " WHERE id = $1", endpoint_id, reason,
    )


async def record_failure(conn: asyncpg.Connection, endpoint_id: UUID, disable_after_s: int
                         ) -> asyncpg.Record | None:
    """Note a failure; disable the endpoint once it has failed, without a success, too long."""
    return await conn.fetchrow(
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now()),"
        " enabled = CASE WHEN failing_since < now() - make_interval(secs => $2) THEN false"
        "   ELSE enabled END,"
        " disabled_reason = CASE WHEN enabled AND failing_since < now() - make_interval(secs => $2)"
        "   THEN 'no successful delivery for ' || ($2 / 3600)::int || ' hours'"
        "   ELSE disabled_reason END"
        f" WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}",
        endpoint_id, disable_after_s,
    )


# --- outbox ----------------------------------------------------------------------------------

def _event_ctes(source: str, first: int) -> str:
    """CTEs ``ev``, the event (one per row of ``source``), and ``dl``, one delivery per
    enabled endpoint of the app (still there) subscribed to its type (or only the endpoint
    named, whatever its filter: test pings). Parameters from ``$first``: event id, app id,
    type, attachment id, body, the one endpoint or NULL."""
    ev, app, type_, att, body, only = (f"${first + i}" for i in range(6))
    return (
        f"ev AS (INSERT INTO events (id, app_id, type, attachment_id, body)"
        f"  SELECT {ev}::uuid, {app}::uuid, {type_}::text, {att}::uuid, {body}::jsonb"
        f"  FROM {source} RETURNING id),"
        " dl AS (INSERT INTO webhook_deliveries (id, event_id, endpoint_id)"
        "  SELECT gen_random_uuid(), ev.id, ep.id FROM ev, webhook_endpoints ep"
        f"  WHERE ep.app_id = {app} AND ep.enabled"
        f"    AND (CASE WHEN {only}::uuid IS NULL"
        f"         THEN ep.events IS NULL OR {type_} = ANY (ep.events) ELSE ep.id = {only} END)"
        # an endpoint deleted meanwhile (its DELETE not yet committed when this statement
        # began) is waited for and then skipped: without the lock the foreign key check met
        # the deleted row and the whole change failed (a 500 on DELETE of an attachment)
        "  FOR KEY SHARE OF ep"
        "  RETURNING id)"
    )


async def insert_event(conn: asyncpg.Connection, event_id: UUID, app_id: UUID, type_: str,
                       attachment_id: UUID | None, body: dict[str, Any],
                       only_endpoint: UUID | None) -> list[UUID]:
    """The event and its deliveries in one statement (one round trip); returns the
    delivery ids."""
    rows = await conn.fetch(
        f"WITH one AS (SELECT), {_event_ctes('one', 1)} SELECT id FROM dl",
        event_id, app_id, type_, attachment_id, body, only_endpoint,
    )
    return [r["id"] for r in rows]


async def change_with_event(conn: asyncpg.Connection, change: str, args: Sequence[Any],
                            event_id: UUID, app_id: UUID, type_: str,
                            attachment_id: UUID | None, body: dict[str, Any]
                            ) -> asyncpg.Record | None:
    """``change`` (a data-modifying statement ending in RETURNING one row) together with its
    event and deliveries, as one statement: atomic with no transaction block around it, so
    one round trip where BEGIN, change, event, COMMIT took four. Returns the change's row plus
    ``delivery_ids``; None (and nothing written) when the change returned no row."""
    n = len(args)
    return await conn.fetchrow(
        f"WITH change AS ({change}), {_event_ctes('change', n + 1)}"
        " SELECT change.*, ARRAY(SELECT id FROM dl) AS delivery_ids FROM change",
        *args, event_id, app_id, type_, attachment_id, body, None,
    )


# --- deliveries ------------------------------------------------------------------------------

async def endpoint_of_delivery(conn: asyncpg.Connection, delivery_id: UUID) -> UUID | None:
    return await conn.fetchval("SELECT endpoint_id FROM webhook_deliveries WHERE id = $1",
                               delivery_id)


async def claim_delivery(conn: asyncpg.Connection, delivery_id: UUID, lease_s: int
                         ) -> asyncpg.Record | None:
    """Take a due delivery for one attempt. SKIP LOCKED plus the lease on next_attempt_at mean
    two workers never send the same delivery at once."""
    return await conn.fetchrow(
        "WITH due AS ("
        "  SELECT id FROM webhook_deliveries WHERE id = $1 AND status = 'pending'"
        "  AND next_attempt_at <= now() FOR UPDATE SKIP LOCKED)"
        " UPDATE webhook_deliveries d SET attempts = d.attempts + 1,"
        "  next_attempt_at = now() + make_interval(secs => $2), updated_at = now()"
        " FROM due, events e, webhook_endpoints ep"
        " WHERE d.id = due.id AND e.id = d.event_id AND ep.id = d.endpoint_id"
        " RETURNING d.id, d.attempts, d.event_id, e.type AS event_type, e.body, ep.id AS"
        "  endpoint_id, ep.url, ep.secret, ep.enabled,"
        # the replaced secret signs too while its overlap lasts (the database's clock decides,
        # as it did when the rotation set the end)
        "  CASE WHEN ep.previous_secret_until > now() THEN ep.previous_secret END"
        "   AS previous_secret",
        delivery_id, lease_s,
    )


async def finish_delivery(conn: asyncpg.Connection, delivery_id: UUID, *, status: str,
                          status_code: int | None, error: str | None,
                          next_attempt_in_s: float | None) -> None:
    await conn.execute(
        "UPDATE webhook_deliveries SET status = $2, last_status_code = $3, last_error = $4,"
        " next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at"
        "   ELSE now() + make_interval(secs => $5) END,"
        " delivered_at = CASE WHEN $2 = 'delivered' THEN now() ELSE delivered_at END,"
        " updated_at = now() WHERE id = $1",
        delivery_id, status, status_code, error, next_attempt_in_s,
    )


async def insert_attempt(conn: asyncpg.Connection, delivery_id: UUID, status_code: int | None,
                         error: str | None, duration_ms: int, response_body: str | None) -> None:
    await conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, status_code, error, duration_ms,"
        " response_body) VALUES ($1, $2, $3, $4, $5)",
        delivery_id, status_code, error, duration_ms, response_body,
    )


async def list_deliveries(conn: asyncpg.Connection, endpoint_id: UUID, status: str | None,
                          before: UUID | None, limit: int) -> list[asyncpg.Record]:
    # deliveries are ordered by creation: their ids are UUIDv4, so the cursor is created_at+id
    return await conn.fetch(
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.status = $2)"
        " AND ($3::uuid IS NULL OR (d.created_at, d.id) <"
        "   (SELECT created_at, id FROM webhook_deliveries WHERE id = $3))"
        " ORDER BY d.created_at DESC, d.id DESC LIMIT $4",
        endpoint_id, status, before, limit,
    )


async def get_delivery(conn: asyncpg.Connection, endpoint_id: UUID, delivery_id: UUID
                       ) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.id = $1 AND d.endpoint_id = $2",
        delivery_id, endpoint_id,
    )


async def reset_delivery(conn: asyncpg.Connection, endpoint_id: UUID, delivery_id: UUID
                         ) -> asyncpg.Record | None:
    """Make a delivery due now again (manual retry), whatever its status."""
    return await conn.fetchrow(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(),"
        " updated_at = now() WHERE id = $1 AND endpoint_id = $2 RETURNING id, attempts",
        delivery_id, endpoint_id,
    )


async def due_deliveries(conn: asyncpg.Connection, grace_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, attempts FROM webhook_deliveries WHERE status = 'pending'"
        " AND next_attempt_at <= now() - make_interval(secs => $1)"
        " ORDER BY next_attempt_at LIMIT 1000",
        grace_s,
    )
