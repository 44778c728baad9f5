"""Liveness and readiness: no auth, for load balancers and orchestrators."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import provided
from app.observability import metrics
from app.ops.gauges import Gauges
from app.ops.readiness import Readiness

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Postgres, Redis and both storages are reachable",
    responses={503: {"description": "A dependency is unreachable"}},
)
async def readyz(readiness: Annotated[Readiness, Depends(provided("readiness"))]
                 ) -> JSONResponse:
    checks = await readiness.checks()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics_endpoint(gauges: Annotated[Gauges, Depends(provided("gauges"))]
                           ) -> Response:
    try:
        await gauges.refresh()
    except Exception as e:  # a scrape must still show the counters when a dependency is down
        log.warning("gauges not refreshed: %s", e)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
