"""What /readyz checks: every dependency a request may need, each within a bound."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg
    from arq.connections import ArqRedis

    from app.scan import Clamd
    from app.storage import Storage

CHECK_TIMEOUT = 2.0


async def _check(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, CHECK_TIMEOUT)
    except Exception as e:
        return f"error: {type(e).__name__}: {e}"[:200]
    return "ok"


class Readiness:
    def __init__(self, *, pool: asyncpg.Pool, redis: ArqRedis, cache: Storage,
                 store: Storage, clamd: Clamd | None = None) -> None:
        self.pool = pool
        self.clamd = clamd  # checked when scanning is set up
        self.redis = redis
        self.cache = cache
        self.store = store

    async def _postgres(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def checks(self) -> dict[str, str]:
        """Each dependency's name → "ok" or "error: …", checked at once."""
        probes = {"postgres": self._postgres(), "redis": self.redis.ping(),
                  "cache": self.cache.ping(), "store": self.store.ping()}
        if self.clamd is not None:
            probes["clamd"] = self.clamd.ping()
        results = await asyncio.gather(*map(_check, probes.values()))
        return dict(zip(probes, results, strict=True))
