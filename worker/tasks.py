"""arq job functions: each a few lines around a domain service call."""

from __future__ import annotations

import functools
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


def _res(ctx: dict[str, Any]) -> Resources:
    return ctx["resources"]


def counted(fn: Callable[..., Awaitable[str]]) -> Callable[..., Awaitable[str]]:
    """Count every run by its outcome: the returned word, "retry", or "error"."""

    @functools.wraps(fn)
    async def wrapper(ctx: dict[str, Any], *args: Any, request_id: str | None = None) -> str:
        # the id of the request that caused this job, so its logs line up with the API's
        token = request_id_var.set(request_id or f"job:{ctx.get('job_id')}")
        outcome = "error"
        started = time.perf_counter()
        try:
            outcome = await fn(ctx, *args)
            return outcome
        except Retry:
            outcome = "retry"
            raise
        finally:
            request_id_var.reset(token)
            metrics.JOBS.labels(fn.__name__, outcome).inc()
            if fn.__name__ == "promote":
                metrics.PROMOTIONS.labels(outcome).inc()
                metrics.PROMOTION_SECONDS.observe(time.perf_counter() - started)

    return wrapper


async def _transient(ctx: dict[str, Any], what: str, exc: Exception) -> None:
    """Retry a transient failure with backoff; anything else propagates and fails the job
    (the sweep tries it again much later, so a bug is not hammered in a tight loop)."""
    if not is_transient(exc):
        return
    tries = ctx.get("job_try", 1)
    defer = RETRY_DEFERS[min(tries - 1, len(RETRY_DEFERS) - 1)]
    log.warning("%s failed (try %d): %s: %s; retrying in %ds", what, tries, type(exc).__name__,
                exc, defer)
    raise Retry(defer=defer) from exc


@counted
async def promote(ctx: dict[str, Any], attachment_id: str) -> str:
    try:
        return await service.promote(_res(ctx), UUID(attachment_id))
    except Exception as e:
        await _transient(ctx, f"promote {attachment_id}", e)
        raise


@counted
async def destroy(ctx: dict[str, Any], attachment_id: str) -> str:
    try:
        return await service.destroy(_res(ctx), UUID(attachment_id))
    except Exception as e:
        await _transient(ctx, f"destroy {attachment_id}", e)
        raise


@counted
async def purge_cache(ctx: dict[str, Any], attachment_id: str) -> str:
    try:
        return await service.purge_cache(_res(ctx), UUID(attachment_id))
    except Exception as e:
        await _transient(ctx, f"purge_cache {attachment_id}", e)
        raise


@counted
async def deliver_webhook(ctx: dict[str, Any], delivery_id: str) -> str:
    # HTTP failures are the delivery's own business (backoff in Postgres); only our own
    # database trouble is retried here
    try:
        return await webhooks.deliver(_res(ctx), UUID(delivery_id))
    except Exception as e:
        await _transient(ctx, f"deliver_webhook {delivery_id}", e)
        raise


@counted
async def reprocess(ctx: dict[str, Any], attachment_id: str) -> str:
    try:
        return await service.reprocess(_res(ctx), UUID(attachment_id))
    except Exception as e:
        await _transient(ctx, f"reprocess {attachment_id}", e)
        raise
