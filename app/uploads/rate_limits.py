"""Rate limits: at most N new uploads per app per window (STOWAGE_RATE_LIMIT_WINDOW, 60 s),
counted in Redis with the sliding-window-counter strategy of the `limits` library, shared by
every API instance: two counters per app (this window, the one before), the previous one
weighted by how much of it still overlaps the sliding window, checked and incremented
atomically in one Lua script. O(1) per check whatever N is; the moving window (a log of
every hit) was tried first and cost O(N) per check, a quarter of the upload throughput at
N = 100,000/min. The counter assumes the previous window's uploads were spread evenly: a
burst at its end may let through up to N more, spread, than the log would.

Redis unreachable: the upload is let through (fail open: a limit is a guard against abuse, not
a reason to stop a service whose other parts still work), logged (at most once a minute per
process) and counted in stowage_rate_limit_unavailable_total."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from app.errors import StowageError
from app.observability.metrics import RATE_LIMIT_UNAVAILABLE, RATE_LIMITED

log = logging.getLogger(__name__)

# a check that takes longer than this is Redis not answering: the request goes on
CHECK_TIMEOUT_S = 0.5
_LOG_EVERY_S = 60.0


class RateLimited(StowageError):
    """Over the app's rate limit: 429 with Retry-After."""

    status, slug, title = 429, "rate-limited", "Too many uploads"

    rate_headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {**(self.rate_headers or {}), "Retry-After": str(self.extra.get("retry_after", 1))}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_in: int  # seconds until the window has room for one more

    def headers(self) -> dict[str, str]:
        """RateLimit-Limit, -Remaining, -Reset (draft-ietf-httpapi-ratelimit-headers)."""
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset_in)}


class RateLimits:
    def __init__(self, *, redis_url: str, window: int, prefix: str = "stowage:ratelimit"
                 ) -> None:
        self.window = window
        self.storage = RedisStorage(
            "async+" + redis_url, implementation="redispy", key_prefix=prefix,
            socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._last_logged = -math.inf

    def _item(self, limit: int) -> RateLimitItemPerSecond:
        return RateLimitItemPerSecond(limit, self.window)

    async def check(self, app_id: UUID, limit: int, *, hit: bool) -> Decision:
        """``hit``: a new upload, taking one of the window's ``limit`` (raises RateLimited when
        none is left); else only where the app stands, for the headers."""
        item = self._item(limit)
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S * 2):
                allowed = await self.limiter.hit(item, str(app_id)) if hit else True
                stats = await self.limiter.get_window_stats(item, str(app_id))
        except Exception as e:  # Redis down or slow: fail open
            RATE_LIMIT_UNAVAILABLE.inc()
            now = time.monotonic()
            if now - self._last_logged >= _LOG_EVERY_S:
                self._last_logged = now
                log.warning("rate limit of app %s not checked, Redis unreachable (%s: %s);"
                            " requests go through until it is back", app_id,
                            type(e).__name__, e)
            return Decision(allowed=True, limit=limit, remaining=limit, reset_in=0)
        reset_in = max(0, math.ceil(stats.reset_time - time.time()))
        decision = Decision(allowed=allowed, limit=limit, remaining=max(0, stats.remaining),
                            reset_in=reset_in if stats.remaining < limit else 0)
        if not allowed:
            retry = max(1, reset_in)
            RATE_LIMITED.inc()
            error = RateLimited(f"this app may start {limit} uploads per {self.window} s;"
                                f" try again in {retry} s", retry_after=retry, limit=limit)
            error.rate_headers = decision.headers()
            raise error
        return decision

    async def aclose(self) -> None:
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()


class RateLimitHeaders:
    """Pure ASGI: the RateLimit-* headers a request's check left in its state (app.deps), on
    its answer, whatever answered it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                found = (scope.get("state") or {}).get("rate_limit_headers")
                if found:
                    names = {k.lower() for k, _ in message.get("headers", [])}
                    message["headers"] = [*message.get("headers", []), *(
                        (k.lower().encode(), v.encode()) for k, v in found.items()
                        if k.lower().encode() not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
