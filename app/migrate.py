"""Apply migrations/NNNN_*.sql in order, each once, under an advisory lock.

The SQL files are package data (``app.migrations``, installed from the top-level migrations/
folder), so an installed wheel migrates from anywhere; STOWAGE_MIGRATIONS_DIR overrides them
with a folder of the operator's.

A migration runs in one transaction, unless its first line is ``-- stowage: no-transaction``:
then its statements (separated by a ``;`` at the end of a line) run one by one, outside any
transaction, which ``CREATE INDEX CONCURRENTLY`` needs so that indexing a big table does not
lock writes out for the time it takes. Such a migration must be safe to run again from the
start (``IF NOT EXISTS``), as it is after a crash half-way; an index a crash left invalid is
dropped first, since ``IF NOT EXISTS`` would keep it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)



def default_migrations() -> Traversable:
    override = os.environ.get("STOWAGE_MIGRATIONS_DIR")
    return Path(override) if override else resources.files("app.migrations")


# Any constant works; it only has to be the same in every process that migrates.
_LOCK_ID = 0x5707A6E
LOCK_POLL_S = 0.2

NO_TRANSACTION = "-- stowage: no-transaction"
_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.I)


def statements(sql: str) -> list[str]:
    """The statements of a no-transaction migration: split at a ';' that ends a line (such a
    migration holds plain DDL, no function bodies); a chunk of comments alone is none."""
    chunks = (c.strip() for c in re.split(r";[ \t]*(?:--[^\n]*)?\n", sql + "\n"))
    return [c for c in chunks
            if any(line.strip() and not line.strip().startswith("--") for line in c.splitlines())]


async def _apply_without_transaction(conn: asyncpg.Connection, sql: str) -> None:
    for name in _CONCURRENT_INDEX.findall(sql):
        invalid = await conn.fetchval(
            "SELECT c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid"
            " WHERE c.relname = $1 AND c.relnamespace = 'public'::regnamespace"
            " AND NOT i.indisvalid", name)
        if invalid:
            log.warning("dropping index %s, left invalid by an interrupted migration", name)
            await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
    for statement in statements(sql):
        await conn.execute(statement)


def migration_files(directory: Traversable | None = None) -> list[Traversable]:
    directory = default_migrations() if directory is None else directory
    return sorted((p for p in directory.iterdir()
                   if p.name.endswith(".sql") and p.name[:4].isdigit()), key=lambda p: p.name)


def _split_dsn(dsn: str) -> tuple[str, str]:
    """(database name, DSN of the maintenance database on the same server)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/") or "postgres"
    return name, urlunsplit(parts._replace(path="/postgres"))


async def create_database_if_missing(dsn: str) -> bool:
    name, admin_dsn = _split_dsn(dsn)
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    conn = await asyncpg.connect(admin_dsn)
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        log.info("created database %s", name)
        return True
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        # another process won the race (Postgres reports a concurrent CREATE DATABASE of the
        # same name as a unique violation on pg_database, not as a duplicate database)
        return False
    finally:
        await conn.close()


async def migrate(dsn: str, directory: Traversable | None = None) -> list[str]:
    """Create the database if needed and apply pending migrations; returns those applied."""
    files = migration_files(directory)
    if not files:
        # an install without its migrations would otherwise "succeed" doing nothing
        raise FileNotFoundError(f"no migrations found in {directory or default_migrations()}")
    await create_database_if_missing(dsn)
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        # Wait by polling, not in pg_advisory_lock: a session blocked in that call sits in
        # an open transaction, and CREATE INDEX CONCURRENTLY in the session holding the lock
        # waits for every open transaction to end: a deadlock between two `stowage migrate`.
        # (no event to wait on: the holder is another process)
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_ID):  # noqa: ASYNC110
            await asyncio.sleep(LOCK_POLL_S)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for path in files:
                if path.name in done:
                    continue
                sql = path.read_text()
                if sql.startswith(NO_TRANSACTION):
                    await _apply_without_transaction(conn, sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", path.name)
                else:
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", path.name
                        )
                applied.append(path.name)
                log.info("applied migration %s", path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()
    return applied
