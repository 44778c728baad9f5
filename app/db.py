"""asyncpg pool and the errors that mean "the database is not reachable"."""

from __future__ import annotations

import json

import asyncpg

# Errors that say nothing about the query and everything about the connection: the API answers
# them with 503 so clients retry, and the pool reconnects on its own once Postgres is back.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    TimeoutError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    # min_size=0: a pool made while Postgres is down still comes up, and connects on demand.
    return await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        timeout=5,
        max_inactive_connection_lifetime=60,
    )
