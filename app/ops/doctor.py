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
from app.migrate import migration_files
from app.ops import repository as repo
from app.profiles import ProfileError, load_profiles
from app.resources import redis_settings
from app.storage import open_s3_client, storage_from_url

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
    except Exception as e:
        return Check(name, False, f"{type(e).__name__}: {e}".strip())
    return Check(name, True, detail)


async def diagnose(settings: Settings) -> list[Check]:
    checks = [Check("configuration", True, "STOWAGE_* variables are valid")]
    checks += [Check("configuration", True, w, warning=True)
               for w in unknown_variables(os.environ)]
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
    async with contextlib.AsyncExitStack() as stack:
        s3 = None
        if "s3://" in (settings.cache_url[:5], settings.store_url[:5]):
            s3 = await open_s3_client(stack, endpoint_url=settings.s3_endpoint_url,
                                      region=settings.s3_region)
        for name, url in (("cache storage", settings.cache_url),
                          ("store storage", settings.store_url)):
            checks.append(await _run(name, lambda url=url: _probe(url, s3)))
    return checks


async def _probe(url: str, s3: object) -> str:
    """Write, read back and delete a small object: proves the credentials and permissions."""
    storage = storage_from_url(url, s3_client=s3)
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
    return f"{url}: write, read and delete work"


def report(checks: list[Check]) -> tuple[str, bool]:
    lines = []
    for c in checks:
        mark = "warn" if c.warning else ("ok" if c.ok else "FAIL")
        lines.append(f"{mark:4}  {c.name}: {c.detail}")
    healthy = all(c.ok for c in checks)
    lines.append("all good" if healthy else "problems found: see FAIL lines above")
    return "\n".join(lines), healthy
