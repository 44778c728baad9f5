"""SQL of an attachment's timeline: its events and every delivery attempt of them."""

from __future__ import annotations

from uuid import UUID

import asyncpg


async def attachment_events(conn: asyncpg.Connection, attachment_id: UUID, limit: int
                            ) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT e.id, e.type, e.created_at, e.body,"
        " (SELECT count(*) FROM webhook_deliveries d WHERE d.event_id = e.id) AS deliveries"
        " FROM events e WHERE e.attachment_id = $1 ORDER BY e.created_at, e.id LIMIT $2",
        attachment_id, limit,
    )


async def attachment_deliveries(conn: asyncpg.Connection, attachment_id: UUID,
                                snippet_chars: int, limit: int) -> list[asyncpg.Record]:
    """Every delivery of the attachment's events with each of its attempts (one row per
    attempt; a delivery not attempted yet is one row with NULL attempt columns)."""
    return await conn.fetch(
        "SELECT d.id AS delivery_id, d.event_id, e.type AS event_type, d.endpoint_id,"
        " ep.url, d.status, d.attempts, d.next_attempt_at, d.created_at,"
        " wa.id AS attempt_id, wa.attempted_at, wa.status_code, wa.error, wa.duration_ms,"
        " left(wa.response_body, $2) AS response_body,"
        " row_number() OVER (PARTITION BY d.id ORDER BY wa.id) AS attempt_no"
        " FROM events e JOIN webhook_deliveries d ON d.event_id = e.id"
        " JOIN webhook_endpoints ep ON ep.id = d.endpoint_id"
        " LEFT JOIN webhook_attempts wa ON wa.delivery_id = d.id"
        " WHERE e.attachment_id = $1"
        " ORDER BY coalesce(wa.attempted_at, d.created_at), wa.id LIMIT $3",
        attachment_id, snippet_chars, limit,
    )
