"""The counts the triggers keep (migration 0014, app/counts.py) equal a count of the rows,
after every kind of change, with the changes folded or not, under parallel writers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app import counts
from tests.conftest import throwaway_database


@pytest.fixture(scope="module")
async def counts_db() -> AsyncIterator[str]:
    async with throwaway_database("stowage_counts") as dsn:
        yield dsn


@pytest.fixture
async def conn(counts_db: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(counts_db)
    try:
        yield c
    finally:
        await c.close()


async def new_app(conn: asyncpg.Connection) -> uuid.UUID:
    app_id = uuid.uuid4()
    await conn.execute("INSERT INTO apps (id, name) VALUES ($1, $2)", app_id, str(app_id))
    return app_id


async def add(conn: asyncpg.Connection, app_id: uuid.UUID, state: str, n: int = 1) -> None:
    await conn.execute(
        "INSERT INTO attachments (id, app_id, profile, state, storage, key, mime_type, size,"
        " sha256) SELECT gen_random_uuid(), $1, 'default', $2, 'cache', 'k', 'text/plain', 1,"
        " '' FROM generate_series(1, $3)", app_id, state, n)


async def truth(conn: asyncpg.Connection) -> dict[tuple[uuid.UUID, str], int]:
    rows = await conn.fetch("SELECT app_id, state, count(*) AS n FROM attachments"
                            " GROUP BY app_id, state")
    return {(r["app_id"], r["state"]): r["n"] for r in rows}


async def test_counts_follow_every_change(conn: asyncpg.Connection) -> None:
    a, b = await new_app(conn), await new_app(conn)
    await add(conn, a, "cached", 5)
    await add(conn, b, "stored", 3)
    assert await counts.by_scope(conn, "attachments") == await truth(conn)
    # one row, then many in one statement (the sweep's expiry), then a change of no count
    await conn.execute("UPDATE attachments SET state = 'stored' WHERE id ="
                       " (SELECT id FROM attachments WHERE app_id = $1 LIMIT 1)", a)
    await conn.execute("UPDATE attachments SET state = 'deleted' WHERE app_id = $1"
                       " AND state = 'cached'", a)
    await conn.execute("UPDATE attachments SET updated_at = now() WHERE app_id = $1", b)
    assert await counts.by_scope(conn, "attachments") == await truth(conn)
    assert await counts.fold(conn) > 0
    assert await conn.fetchval("SELECT count(*) FROM row_count_changes") == 0
    assert await counts.by_scope(conn, "attachments") == await truth(conn)
    # rows deleted, an app deleted with its attachments: its counts go with it
    await conn.execute("DELETE FROM attachments WHERE app_id = $1 AND state = 'stored'", a)
    await conn.execute("DELETE FROM apps WHERE id = $1", b)
    assert await counts.by_scope(conn, "attachments") == await truth(conn)
    await counts.fold(conn)
    assert await counts.by_scope(conn, "attachments") == await truth(conn)
    assert await conn.fetchval("SELECT count(*) FROM row_counts WHERE scope = $1", b) == 0
    totals = await counts.totals(conn, "attachments")
    assert totals == {s: n for (_, s), n in (await truth(conn)).items()}


async def test_counts_hold_under_parallel_writers_and_folds(counts_db: str,
                                                            conn: asyncpg.Connection) -> None:
    app_id = await new_app(conn)
    pool = await asyncpg.create_pool(counts_db, min_size=4, max_size=8)
    try:
        async def writer(k: int) -> None:
            for i in range(20):
                async with pool.acquire() as c, c.transaction():
                    await add(c, app_id, "cached")
                    if i % 3 == 0:
                        await c.execute(
                            "UPDATE attachments SET state = 'stored' WHERE id = (SELECT id"
                            " FROM attachments WHERE app_id = $1 AND state = 'cached'"
                            " LIMIT 1 FOR UPDATE SKIP LOCKED)", app_id)

        async def folder() -> None:
            for _ in range(15):
                async with pool.acquire() as c:
                    await counts.fold(c)
                await asyncio.sleep(0)

        await asyncio.gather(*(writer(k) for k in range(6)), folder(), folder())
    finally:
        await pool.close()
    mine = {k: n for k, n in (await counts.by_scope(conn, "attachments")).items()
            if k[0] == app_id}
    assert mine == {k: n for k, n in (await truth(conn)).items() if k[0] == app_id}
    assert sum(mine.values()) == 120


async def test_deliveries_are_counted_per_endpoint(conn: asyncpg.Connection) -> None:
    app_id = await new_app(conn)
    endpoint = uuid.uuid4()
    await conn.execute("INSERT INTO webhook_endpoints (id, app_id, url, secret)"
                       " VALUES ($1, $2, 'https://example.com/', 's')", endpoint, app_id)
    event = uuid.uuid4()
    await conn.execute("INSERT INTO events (id, app_id, type, body) VALUES ($1, $2, 't', '{}')",
                       event, app_id)
    await conn.execute("INSERT INTO webhook_deliveries (id, event_id, endpoint_id)"
                       " SELECT gen_random_uuid(), $1, $2 FROM generate_series(1, 4)",
                       event, endpoint)
    await conn.execute("UPDATE webhook_deliveries SET status = 'delivered' WHERE id IN"
                       " (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 LIMIT 3)",
                       endpoint)
    assert await counts.by_scope(conn, "deliveries") == {
        (endpoint, "pending"): 1, (endpoint, "delivered"): 3}
    await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint)
    assert await counts.by_scope(conn, "deliveries") == {}
