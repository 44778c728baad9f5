"""The pool's release: no reset round trip for ordinary borrowers, the full reset for one
that took a session-level advisory lock; and the advisory locks' keys."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from app import db
from app.attachments import repository as attachments_repo
from app.db import create_pool

LOCK_SQL = "SELECT pg_try_advisory_lock(hashtextextended('attachment:' || $1::uuid::text, 0))"


async def test_an_ordinary_release_sends_no_reset_query(database_url):
    pool = await create_pool(database_url, max_size=1)
    try:
        seen: list[str] = []

        def log(record: Any) -> None:
            seen.append(record.query)

        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            raw = conn._con  # the logger must outlive this borrow
            raw.add_query_logger(log)
        async with pool.acquire() as conn:
            assert conn._con is raw  # max_size=1: the same connection again
            raw.remove_query_logger(log)
        assert seen == []
    finally:
        await pool.close()


async def test_a_session_lock_left_behind_is_released_with_the_connection(database_url):
    pool = await create_pool(database_url, max_size=1)
    other = await asyncpg.connect(database_url)
    att_id = uuid.uuid4()
    try:
        async with pool.acquire() as conn:
            # a job cancelled between lock and unlock: the unlock never runs
            await attachments_repo.lock_attachment(conn, att_id)
            assert not await other.fetchval(LOCK_SQL, att_id)
        assert await other.fetchval(LOCK_SQL, att_id)  # the release unlocked it
        # and the next borrower gets the light release again
        seen: list[str] = []
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: seen.append(record.query))
        assert seen == []
    finally:
        await other.close()
        await pool.close()


async def test_an_open_transaction_is_still_rolled_back_on_release(database_url):
    pool = await create_pool(database_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE t_rollback_probe (x int)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT to_regclass('pg_temp.t_rollback_probe')") is None
    finally:
        await pool.close()


async def test_lock_keys_are_those_of_earlier_releases(database_url):
    """Processes of the previous release, still running during a deploy, take the same locks:
    the names hashed by app.db.LOCK_KEY give the keys the SQL written before it gave."""
    conn = await asyncpg.connect(database_url)
    app_id, att_id = uuid.uuid4(), uuid.uuid4()
    try:
        async def key(name: str, seed: int = 0) -> int:
            return await conn.fetchval(f"SELECT {db.LOCK_KEY}", name, seed)

        assert await key(f"attachment:{att_id}") == await conn.fetchval(
            "SELECT hashtextextended('attachment:' || $1::uuid::text, 0)", att_id)
        assert await key(chr(31).join((str(app_id), "user", "42", "avatar")), 1) == (
            await conn.fetchval(
                "SELECT hashtextextended("
                "$1::uuid::text || chr(31) || $2 || chr(31) || $3 || chr(31) || $4, 1)",
                app_id, "user", "42", "avatar"))
        for name in ("sweep", "leftovers", "stowage:storage-identity"):
            assert await key(name) == await conn.fetchval(
                "SELECT hashtextextended($1, 0)", name)
    finally:
        await conn.close()


async def test_a_lock_taken_by_the_helpers_is_the_one_the_old_sql_takes(database_url):
    pool = await create_pool(database_url, max_size=1)
    other = await asyncpg.connect(database_url)
    att_id = uuid.uuid4()
    try:
        async with pool.acquire() as conn:
            assert await attachments_repo.try_lock_attachment(conn, att_id)
            assert not await other.fetchval(LOCK_SQL, att_id)
            await attachments_repo.unlock_attachment(conn, att_id)
            assert await other.fetchval(LOCK_SQL, att_id)
            assert not await attachments_repo.try_lock_attachment(conn, att_id)
    finally:
        await other.close()
        await pool.close()
