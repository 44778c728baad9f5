"""Migrations: a no-transaction migration (CREATE INDEX CONCURRENTLY) runs statement by
statement, can be run again from the start after a crash, and replaces an index a crash left
invalid instead of keeping it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from app.migrate import NO_TRANSACTION, migrate, migration_files, statements
from tests.conftest import throwaway_database


@pytest.fixture
async def empty_db() -> AsyncIterator[str]:
    async with throwaway_database("stowage_migrate", migrated=False) as dsn:
        yield dsn


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(sql)


CONCURRENT = f"""{NO_TRANSACTION}
-- an index on a big table, built without locking writes out
CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);  -- why, at the end of a line
CREATE INDEX CONCURRENTLY IF NOT EXISTS t_y
    ON t (y) WHERE y > 0;
"""


async def index_valid(dsn: str, name: str) -> bool | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid"
            " WHERE c.relname = $1", name)
    finally:
        await conn.close()


def test_statements_split_at_line_ends_and_skip_comments() -> None:
    assert statements(CONCURRENT) == [
        f"{NO_TRANSACTION}\n-- an index on a big table, built without locking writes out\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x)",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_y\n    ON t (y) WHERE y > 0",
    ]


async def test_a_concurrent_index_migration_is_applied_outside_a_transaction(
        empty_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write(folder, "0001_t.sql", "CREATE TABLE t (x int, y int);")
    write(folder, "0002_idx.sql", CONCURRENT)
    # in one transaction, Postgres refuses CONCURRENTLY: this passing is the point
    assert await migrate(empty_db, folder) == ["0001_t.sql", "0002_idx.sql"]
    assert await index_valid(empty_db, "t_x") is True
    assert await index_valid(empty_db, "t_y") is True
    assert await migrate(empty_db, folder) == []  # each once


async def test_an_index_left_invalid_by_a_crash_is_built_again(empty_db: str,
                                                                tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write(folder, "0001_t.sql", "CREATE TABLE t (x int, y int);")
    assert await migrate(empty_db, folder) == ["0001_t.sql"]
    # what a crash during CREATE INDEX CONCURRENTLY leaves: the index there, but invalid (a
    # unique index over duplicates fails the same way, half-built)
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute("INSERT INTO t VALUES (1, 1), (1, 1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY t_x ON t (x)")
        await conn.execute("DELETE FROM t")
    finally:
        await conn.close()
    assert await index_valid(empty_db, "t_x") is False
    write(folder, "0002_idx.sql", CONCURRENT)
    assert await migrate(empty_db, folder) == ["0002_idx.sql"]
    assert await index_valid(empty_db, "t_x") is True  # IF NOT EXISTS alone would keep it


def test_the_shipped_concurrent_migrations_are_rerunnable() -> None:
    # a no-transaction migration runs again from its start after a crash: every statement
    # must say IF (NOT) EXISTS
    shipped = [p for p in migration_files() if p.read_text().startswith(NO_TRANSACTION)]
    assert shipped, "no no-transaction migration shipped: nothing checked"
    for path in shipped:
        for statement in statements(path.read_text()):
            # or a CALL of a procedure that resumes where it stopped (0018's feed backfill,
            # tested by test_event_feed_backfill_resumes)
            resumes = statement.splitlines()[-1].startswith("CALL event_feed_backfill(")
            assert " IF NOT EXISTS " in statement or " IF EXISTS " in statement or resumes, \
                f"{path.name}: not safe to run twice: {statement}"
