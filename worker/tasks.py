"""arq job functions: each one line around a domain service call."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from arq import Retry

from app.attachments import service
from app.ops import metrics
from app.ops.logs import request_id_var
from app.resources import Resources
from app.transient import is_transient
from app.webhooks import service as webhooks

log = logging.getLogger(__name__)

# Backoff for transient failures (storage or network hiccups), indexed by try number.
RETRY_DEFERS = (2, 5, 15, 30, 60)


def job(name: str, call: Callable[[Resources, UUID], Awaitable[str]]
        ) -> Callable[..., Awaitable[str]]:
    """An arq function around a domain call on one id: the request id of the request that
    caused it in the logs, retries with backoff for transient failures, and its outcome (the
    returned word, "retry" or "error") counted."""

    async def run(ctx: dict[str, Any], target_id: str, request_id: str | None = None) -> str:
        token = request_id_var.set(request_id or f"job:{ctx.get('job_id')}")
        outcome = "error"
        started = time.perf_counter()
        try:
            outcome = await call(ctx["resources"], UUID(target_id))
            return outcome
        except Exception as e:
            if not is_transient(e):
                raise  # a bug: the sweep tries again much later, not in a tight loop
            outcome = "retry"
            tries = ctx.get("job_try", 1)
            defer = RETRY_DEFERS[min(tries - 1, len(RETRY_DEFERS) - 1)]
            log.warning("%s %s failed (try %d): %s: %s; retrying in %ds", name, target_id,
                        tries, type(e).__name__, e, defer)
            raise Retry(defer=defer) from e
        finally:
            request_id_var.reset(token)
            metrics.JOBS.labels(name, outcome).inc()
            if name == "promote":
                metrics.PROMOTIONS.labels(outcome).inc()
                metrics.PROMOTION_SECONDS.observe(time.perf_counter() - started)

    run.__name__ = run.__qualname__ = name
    return run


promote = job("promote", service.promote)
destroy = job("destroy", service.destroy)
purge_cache = job("purge_cache", service.purge_cache)
reprocess = job("reprocess", service.reprocess)
# HTTP failures are the delivery's own business (backoff kept in Postgres); only our own
# database trouble is retried by arq
deliver_webhook = job("deliver_webhook", webhooks.deliver)
