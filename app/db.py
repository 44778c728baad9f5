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


# Connections whose session state needs asyncpg's full reset on release, by backend pid (a
# public, per-connection identity: the pool hands its reset hook the connection itself and
# borrowers a proxy of it). A pid left here by a connection that died unreleased costs at
# most one needless reset of a later connection given the same pid.
_SESSION_STATE: set[int] = set()


def keep_session_state(conn: asyncpg.Connection) -> None:
    """Call before taking session-level state (a session advisory lock) on ``conn``: the
    pool then resets the connection on release, so a lock whose unlock never ran (a
    cancelled job) cannot outlive the borrower."""
    _SESSION_STATE.add(conn.get_server_pid())


async def _reset(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, skipping asyncpg's reset query unless it is needed.

    asyncpg resets every released connection with one more round trip (unlock all advisory
    locks, CLOSE ALL, UNLISTEN *, RESET ALL): on a small upload, which borrows a connection
    several times, that is a good part of the database time. Stowage sets no session state
    on pooled connections (LISTEN has its own connection, settings are per transaction) but
    for session-level advisory locks, taken through `keep_session_state`, so only those
    connections get the full reset. An open transaction is rolled back on release either
    way: the pool does that before calling this (asyncpg's documented ``reset=`` hook).
    """
    pid = conn.get_server_pid()
    if pid in _SESSION_STATE:
        _SESSION_STATE.discard(pid)
        await conn.execute(conn.get_reset_query())


# Every advisory lock is keyed by a name hashed in Postgres, and this is the one place the
# expression is written. The key numbers must not change: processes of the previous release,
# still running during a deploy, take the same locks. ($2 is the hash seed: 0, or 1 for the
# record-slot locks, which have always used it.)
LOCK_KEY = "hashtextextended($1::text, $2::bigint)"


async def advisory_lock(conn: asyncpg.Connection, name: str, *, seed: int = 0) -> None:
    """Wait for the session-level lock ``name``; released by `advisory_unlock`, or by the
    pool's reset if the holder never gets there."""
    keep_session_state(conn)
    await conn.execute(f"SELECT pg_advisory_lock({LOCK_KEY})", name, seed)


async def try_advisory_lock(conn: asyncpg.Connection, name: str, *, seed: int = 0) -> bool:
    """`advisory_lock` without waiting: whether it was taken."""
    keep_session_state(conn)
    return bool(await conn.fetchval(f"SELECT pg_try_advisory_lock({LOCK_KEY})", name, seed))


async def advisory_unlock(conn: asyncpg.Connection, name: str, *, seed: int = 0) -> None:
    await conn.execute(f"SELECT pg_advisory_unlock({LOCK_KEY})", name, seed)


async def advisory_xact_lock(conn: asyncpg.Connection, name: str, *, seed: int = 0) -> None:
    """Wait for the lock ``name``, held until the transaction ends."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_KEY})", name, seed)


async def try_advisory_xact_lock(conn: asyncpg.Connection, name: str, *, seed: int = 0
                                 ) -> bool:
    """`advisory_xact_lock` without waiting: whether it was taken."""
    return bool(await conn.fetchval(f"SELECT pg_try_advisory_xact_lock({LOCK_KEY})", name,
                                    seed))


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
        reset=_reset,
        command_timeout=30,
        timeout=5,
        max_inactive_connection_lifetime=60,
        # No JIT: every query here reads a handful of rows by index, yet a planner estimate
        # over jit_above_cost (a generate_series it guesses at 1,000 rows) made Postgres
        # compile the dashboard's hourly chart for ~125 ms to run it in 2 ms
        # (bench/scale.py at 1 M rows). asyncpg's own advice for short queries.
        server_settings={"jit": "off"},
    )
