"""Liveness and readiness: no auth, for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import resources
from app.observability import metrics
from app.ops import gauges
from app.resources import Resources

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, CHECK_TIMEOUT)
    except Exception as e:
        return f"error: {type(e).__name__}: {e}"[:200]
    return "ok"


async def _postgres(res: Resources) -> None:
    async with res.pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


@router.get(
    "/readyz",
    summary="Postgres, Redis and both storages are reachable",
    responses={503: {"description": "A dependency is unreachable"}},
)
async def readyz(res: Resources = Depends(resources)) -> JSONResponse:
    names = ("postgres", "redis", "cache", "store")
    results = await asyncio.gather(
        _check(_postgres(res)), _check(res.redis.ping()), _check(res.cache.ping()),
        _check(res.store.ping()),
    )
    checks = dict(zip(names, results, strict=True))
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics_endpoint(res: Resources = Depends(resources)) -> Response:
    try:
        await gauges.refresh(res)
    except Exception as e:  # a scrape must still show the counters when a dependency is down
        log.warning("gauges not refreshed: %s", e)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
