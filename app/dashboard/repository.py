"""SQL the operator's dashboard reads: across every app, by time, with health figures.

Writes are not here: the dashboard's actions go through the services of attachments and
webhooks, so an operator's promote or retry is exactly a client's.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from app.attachments.repository import STATES
from app.sql import Where

# --- overview --------------------------------------------------------------------------------

async def apps(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, name FROM apps ORDER BY name, id")


async def state_counts(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Attachments per state, one row per app (apps without any included), from the counts
    the triggers keep (migration 0014): O(apps), not O(attachments)."""
    return await conn.fetch(
        "SELECT a.id AS app_id, a.name,"
        " coalesce(sum(c.n) FILTER (WHERE c.value = 'cached'), 0)::bigint AS cached,"
        " coalesce(sum(c.n) FILTER (WHERE c.value = 'stored'), 0)::bigint AS stored,"
        " coalesce(sum(c.n) FILTER (WHERE c.value = 'failed'), 0)::bigint AS failed,"
        " coalesce(sum(c.n) FILTER (WHERE c.value = 'deleted'), 0)::bigint AS deleted,"
        " coalesce(sum(c.n), 0)::bigint AS total"
        " FROM apps a LEFT JOIN current_row_counts c"
        "   ON c.kind = 'attachments' AND c.scope = a.id"
        " GROUP BY a.id, a.name ORDER BY a.name, a.id"
    )


async def promotion_lag(conn: asyncpg.Connection, window_s: int) -> asyncpg.Record:
    """p50/p95 seconds from "promotion asked for" to stored, over what was stored recently.

    Measured from promote_requested_at, which is created_at for an upload promoted at once:
    a two-phase upload's wait for its client's promote call is not the service's lag.
    """
    return await conn.fetchrow(
        "SELECT count(*) AS n,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM"
        "   stored_at - coalesce(promote_requested_at, created_at))) AS p50,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM"
        "   stored_at - coalesce(promote_requested_at, created_at))) AS p95"
        " FROM attachments WHERE stored_at >= now() - make_interval(secs => $1)",
        window_s,
    )


async def hourly_activity(conn: asyncpg.Connection, hours: int) -> list[asyncpg.Record]:
    """Uploads (created) and promotions (stored) in each of the last `hours` hours, the
    current one included; hours without any are there with zeros."""
    return await conn.fetch(
        "WITH hours AS (SELECT generate_series("
        "   date_trunc('hour', now()) - make_interval(hours => $1 - 1),"
        "   date_trunc('hour', now()), interval '1 hour') AS h)"
        " SELECT h AS hour,"
        " (SELECT count(*) FROM attachments"
        "   WHERE created_at >= h AND created_at < h + interval '1 hour') AS uploads,"
        " (SELECT count(*) FROM attachments"
        "   WHERE stored_at >= h AND stored_at < h + interval '1 hour') AS promotions"
        " FROM hours ORDER BY h",
        hours,
    )


async def webhook_counts(conn: asyncpg.Connection, failed_window_s: int
                         ) -> list[asyncpg.Record]:
    """Per app: endpoints, disabled ones, deliveries pending, deliveries failed lately."""
    return await conn.fetch(
        "SELECT ep.app_id, count(*) AS endpoints,"
        " count(*) FILTER (WHERE NOT ep.enabled) AS disabled,"
        " coalesce(sum(p.n), 0)::bigint AS pending, coalesce(sum(f.n), 0)::bigint AS failed"
        " FROM webhook_endpoints ep"
        " LEFT JOIN current_row_counts p"
        "   ON p.kind = 'deliveries' AND p.scope = ep.id AND p.value = 'pending'"
        " LEFT JOIN LATERAL (SELECT count(*) AS n FROM webhook_deliveries d"
        "   WHERE d.endpoint_id = ep.id AND d.status = 'failed'"
        "   AND d.updated_at >= now() - make_interval(secs => $1)) f ON true"
        " GROUP BY ep.app_id",
        failed_window_s,
    )


async def waiting_for_scanner(conn: asyncpg.Connection) -> int:
    """Promotions held back because clamd did not answer (their last attempt says so)."""
    return await conn.fetchval(
        "SELECT count(*) FROM attachment_work WHERE kind = 'promote'"
        " AND last_error LIKE 'ScannerUnavailable:%'")


async def disabled_endpoints(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT ep.id, ep.app_id, a.name AS app_name, ep.url, ep.disabled_reason,"
        " ep.updated_at, ep.last_success_at"
        " FROM webhook_endpoints ep JOIN apps a ON a.id = ep.app_id"
        " WHERE NOT ep.enabled ORDER BY ep.updated_at DESC LIMIT $1",
        limit,
    )


# --- attachments -----------------------------------------------------------------------------

LIST_COLUMNS = (
    "t.id, t.app_id, a.name AS app_name, t.profile, t.state, t.filename, t.mime_type, t.size,"
    " t.record_type, t.record_id, t.record_name, t.created_at, t.stored_at, t.error"
)


async def list_attachments(
    conn: asyncpg.Connection,
    *,
    app_id: UUID | None,
    state: str | None,
    profile: str | None,
    record_type: str | None,
    record_id: str | None,
    record_name: str | None,
    created_from: datetime | None,
    created_to: datetime | None,
    before: UUID | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Newest first (ids are UUIDv7), every filter optional; `before` is the cursor."""
    where = Where()  # only the filters given: see app.sql
    where.add_known("t.state", state, STATES)
    for condition, value in (("t.app_id = {}", app_id),
                             ("t.profile = {}", profile), ("t.record_type = {}", record_type),
                             ("t.record_id = {}", record_id),
                             ("t.record_name = {}", record_name),
                             ("t.created_at >= {}", created_from),
                             ("t.created_at < {}", created_to), ("t.id < {}", before)):
        where.add_if(condition, value)
    return await conn.fetch(
        f"SELECT {LIST_COLUMNS} FROM attachments t JOIN apps a ON a.id = t.app_id"
        f" WHERE {where.sql()} ORDER BY t.id DESC LIMIT {int(limit)}",
        *where.args,
    )


async def profiles_in_use(conn: asyncpg.Connection) -> list[str]:
    """Profile names found on attachments: a profile removed from the file still has them."""
    # a skip scan of attachments_profile: one index probe per profile, not a read of every
    # row (Postgres has no loose index scan of its own)
    rows = await conn.fetch(
        "WITH RECURSIVE p AS ("
        " (SELECT profile FROM attachments ORDER BY profile LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT profile FROM attachments WHERE profile > p.profile"
        "         ORDER BY profile LIMIT 1) FROM p WHERE p.profile IS NOT NULL)"
        " SELECT profile FROM p WHERE profile IS NOT NULL")
    return [r["profile"] for r in rows]


# --- an attachment's timeline ----------------------------------------------------------------

# --- webhooks --------------------------------------------------------------------------------

ENDPOINT_COLUMNS = (
    "ep.id, ep.app_id, a.name AS app_name, ep.url, ep.events, ep.description, ep.enabled,"
    " ep.disabled_reason, ep.failing_since, ep.last_success_at, ep.created_at, ep.updated_at"
)


async def endpoints_with_health(conn: asyncpg.Connection, app_id: UUID | None, window: int
                                ) -> list[asyncpg.Record]:
    """Endpoints (of one app, or all) with the outcome of their last `window` finished
    deliveries and how many are pending."""
    return await conn.fetch(
        f"SELECT {ENDPOINT_COLUMNS}, h.finished, h.delivered, h.last_delivery_at,"
        " coalesce(p.n, 0) AS pending"
        " FROM webhook_endpoints ep JOIN apps a ON a.id = ep.app_id"
        " LEFT JOIN current_row_counts p"
        "   ON p.kind = 'deliveries' AND p.scope = ep.id AND p.value = 'pending'"
        " LEFT JOIN LATERAL (SELECT count(*) AS finished,"
        "   count(*) FILTER (WHERE r.status = 'delivered') AS delivered,"
        "   max(r.created_at) AS last_delivery_at"
        "   FROM (SELECT d.status, d.created_at FROM webhook_deliveries d"
        "     WHERE d.endpoint_id = ep.id AND d.status <> 'pending'"
        "     ORDER BY d.created_at DESC LIMIT $2) r) h ON true"
        " WHERE ($1::uuid IS NULL OR ep.app_id = $1)"
        " ORDER BY a.name, ep.id",
        app_id, window,
    )


async def get_endpoint(conn: asyncpg.Connection, endpoint_id: UUID) -> asyncpg.Record | None:
    """Any app's endpoint: the operator sees them all."""
    return await conn.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ep JOIN apps a ON a.id = ep.app_id"
        " WHERE ep.id = $1",
        endpoint_id,
    )


async def endpoint_deliveries(conn: asyncpg.Connection, endpoint_id: UUID,
                              status: str | None, before: UUID | None, limit: int
                              ) -> list[asyncpg.Record]:
    """The delivery log, newest first, with what was sent (the event body)."""
    return await conn.fetch(
        "SELECT d.id, d.event_id, e.type AS event_type, e.attachment_id, e.body, d.status,"
        " d.attempts, d.last_status_code, d.last_error, d.next_attempt_at, d.delivered_at,"
        " d.created_at, d.updated_at"
        " FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.status = $2)"
        " AND ($3::uuid IS NULL OR (d.created_at, d.id) <"
        "   (SELECT created_at, id FROM webhook_deliveries WHERE id = $3))"
        " ORDER BY d.created_at DESC, d.id DESC LIMIT $4",
        endpoint_id, status, before, limit,
    )


async def attempts_of(conn: asyncpg.Connection, delivery_ids: list[UUID], snippet_chars: int
                      ) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, delivery_id, attempted_at, status_code, error, duration_ms,"
        " left(response_body, $2) AS response_body"
        " FROM webhook_attempts WHERE delivery_id = ANY($1::uuid[]) ORDER BY delivery_id, id",
        delivery_ids, snippet_chars,
    )


async def failed_deliveries_since(conn: asyncpg.Connection, endpoint_id: UUID,
                                  since: datetime, limit: int) -> list[asyncpg.Record]:
    """Deliveries that ended failed at or after `since` (a failed delivery is final, so its
    updated_at is when it failed)."""
    return await conn.fetch(
        "SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'failed'"
        " AND updated_at >= $2 ORDER BY updated_at LIMIT $3",
        endpoint_id, since, limit,
    )


async def tenancy(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Per app: its quota and rate limit, the bytes of its live files (row counts of kind
    'bytes', migration 0021) and its live keys with their scopes."""
    return await conn.fetch(
        "SELECT a.id AS app_id, a.quota_bytes, a.rate_limit,"
        " (SELECT coalesce(sum(c.n), 0) FROM current_row_counts c"
        "   WHERE c.kind = 'bytes' AND c.scope = a.id)::bigint AS bytes,"
        " ARRAY(SELECT k.prefix || ' ' || array_to_string(k.scopes, ',') FROM api_keys k"
        "   WHERE k.app_id = a.id AND k.revoked_at IS NULL ORDER BY k.created_at) AS keys"
        " FROM apps a")
