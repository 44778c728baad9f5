"""asyncpg pool and the errors that mean "the database is not reachable"."""

from __future__ import annotations

import json

import asyncpg

# Errors that say nothing about the query and everything about the connection: the API answers
# them with 503 so clients retry, and the pool reconnects on its own once Postgres is back.
# OSError stays whole: a connection fails as many kinds of it (refused, reset, unreachable
# host, a name that does not resolve, asyncpg's "Multiple exceptions" without an errno). The
# storages raise their own errors for a full disk or a permission problem (app.storage), so
# those never reach this tuple, and app.transient refuses the errnos of any stray one.
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


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pool connection that skips asyncpg's reset query on release unless it needs it.

    asyncpg resets every released connection with one more round trip (unlock all advisory
    locks, CLOSE ALL, UNLISTEN *, RESET ALL): on a small upload, which borrows a connection
    several times, that is a good part of the database time. Stowage sets no session state
    on pooled connections (LISTEN has its own connection, settings are per transaction) but
    for session-level advisory locks, so a connection that takes one is marked with
    `keep_session_state` and gets the full reset. An open transaction is still rolled back
    on release either way (asyncpg does that before asking for the query).
    """

    _session_state = False

    def keep_session_state(self) -> None:
        self._session_state = True

    def get_reset_query(self) -> str:
        if not self._session_state:
            return ""
        self._session_state = False
        return str(super().get_reset_query())


def keep_session_state(conn: asyncpg.Connection) -> None:
    """Call before taking session-level state (a session advisory lock) on ``conn``: the
    pool then resets the connection on release, so a lock whose unlock never ran (a
    cancelled job) cannot outlive the borrower."""
    mark = getattr(conn, "keep_session_state", None)  # a plain connection resets itself
    if mark is not None:
        mark()


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
        connection_class=PooledConnection,
        command_timeout=30,
        timeout=5,
        max_inactive_connection_lifetime=60,
    )
