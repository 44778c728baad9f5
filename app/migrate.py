"""Apply migrations/NNNN_*.sql in order, each once, under an advisory lock.

The SQL files are package data (``app.migrations``, installed from the top-level migrations/
folder), so an installed wheel migrates from anywhere; STOWAGE_MIGRATIONS_DIR overrides them
with a folder of the operator's.
"""

from __future__ import annotations

import logging
import os
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
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for path in files:
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
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
