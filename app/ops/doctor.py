"""`stowage doctor`: check configuration and connectivity, and say what is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from arq import create_pool

from app.config import MISSING_SECRET_KEY, Settings, unknown_variables
from app.jobs import redis_settings
from app.migrate import migration_files
from app.ops import repository as repo
from app.profiles import ProfileError, load_profiles
from app.scan import Clamd
from app.storage import Storage
from app.storage_identity import repository as identity_repo
from app.storage_identity.service import Action, Target, Verdict, judge, open_targets

TIMEOUT = 5.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False


async def _run(name: str, fn: Callable[[], Awaitable[str]]) -> Check:
    try:
        detail = await asyncio.wait_for(fn(), TIMEOUT)
    except _Failed as e:
        return Check(name, False, str(e))
    except Exception as e:
        return Check(name, False, f"{type(e).__name__}: {e}".strip())
    return Check(name, True, detail)


async def diagnose(settings: Settings) -> list[Check]:
    checks = [Check("configuration", True, "STOWAGE_* variables are valid")]
    checks += [Check("configuration", True, w, warning=True)
               for w in unknown_variables(os.environ)]
    profiles = None
    try:
        profiles = load_profiles(settings.profiles_file)
        checks.append(Check("profiles", True, ", ".join(profiles.names())))
    except ProfileError as e:
        checks.append(Check("profiles", False, str(e)))
    if settings.secret_key:
        checks.append(Check("secret key", True, f"set ({len(settings.secret_key.encode())}"
                            " bytes); the API and the worker must share it"))
    else:
        checks.append(Check("secret key", False, f"{MISSING_SECRET_KEY} (`stowage dev`"
                            " alone makes one up, per process)"))

    async def postgres() -> str:
        conn = await asyncpg.connect(settings.database_url, timeout=TIMEOUT)
        try:
            applied = await repo.applied_migrations(conn)
        finally:
            await conn.close()
        pending = [p.name for p in migration_files() if p.name not in applied]
        if pending:
            raise RuntimeError(f"{len(pending)} migration(s) pending: run `stowage migrate`")
        return f"reachable, {len(applied)} migrations applied"

    async def redis() -> str:
        pool = await create_pool(redis_settings(settings))
        try:
            info = await pool.info("server")
        finally:
            await pool.aclose()
        return f"reachable, Redis {info.get('redis_version', '?')}"

    checks.append(await _run("postgres", postgres))
    checks.append(await _run("redis", redis))
    scanning = [] if profiles is None else profiles.scanning_names()
    if settings.clamd_url:

        async def clamd() -> str:
            version = await Clamd(settings.clamd_url).version()
            return (f"{settings.clamd_url}: {version.engine}, signatures"
                    f" {version.database or '?'} ({version.database_date or '?'});"
                    f" scanning profiles: {', '.join(scanning) or 'none'}")

        checks.append(await _run("clamd", clamd))
    elif scanning:
        checks.append(Check("clamd", False, f"profiles {', '.join(scanning)} have scan = true"
                            " and STOWAGE_CLAMD_URL is not set"))
    async with contextlib.AsyncExitStack() as stack:
        conn = None
        with contextlib.suppress(Exception):  # the postgres line above says what is wrong
            conn = await asyncpg.connect(settings.database_url, timeout=TIMEOUT)
            stack.push_async_callback(conn.close)
        for target in await open_targets(stack, settings):
            checks.append(await _run(f"{target.role} storage",
                                     lambda target=target: _storage(target, conn)))
    return checks


class _Failed(Exception):
    """A check's failure, worded for the operator as it is."""


async def _storage(target: Target, conn: asyncpg.Connection | None) -> str:
    """Is it the storage the database recorded? Then write, read back and delete a small
    object: proves the credentials and permissions. A storage that is not the recorded one
    is left untouched (not even created)."""
    where = target.where
    verdict = await _identity(target, conn)
    if verdict is None:
        if not await target.storage.exists():
            raise _Failed(f"{where} does not exist, and was not created: without PostgreSQL"
                          " (and its migrations) there is no telling whether it should be")
        identity = "identity not checked (PostgreSQL unreachable or not migrated)"
    elif verdict.action is Action.REFUSE:
        raise _Failed(verdict.reason)
    else:
        identity = verdict.summary()
    await _probe(target.storage)
    return f"{where}: {identity}; write, read and delete work"


async def _identity(target: Target, conn: asyncpg.Connection | None) -> Verdict | None:
    if conn is None:
        return None
    try:
        recorded = await identity_repo.recorded(conn)
    except asyncpg.UndefinedTableError:
        return None
    return await judge(conn, target, recorded.get(target.role))


async def _probe(storage: Storage) -> None:
    await storage.ping()
    key = f"_doctor/probe-{uuid.uuid4().hex}"

    async def body():
        yield b"stowage doctor"

    await storage.write(key, body(), content_type="text/plain")
    try:
        if await storage.read_head(key, 64) != b"stowage doctor":
            raise RuntimeError("read back different bytes than written")
    finally:
        await storage.delete(key)


def report(checks: list[Check]) -> tuple[str, bool]:
    lines = []
    for c in checks:
        mark = "warn" if c.warning else ("ok" if c.ok else "FAIL")
        lines.append(f"{mark:4}  {c.name}: {c.detail}")
    healthy = all(c.ok for c in checks)
    lines.append("all good" if healthy else "problems found: see FAIL lines above")
    return "\n".join(lines), healthy
