"""arq job functions: each one line around a domain service call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from arq import Retry
from arq.constants import in_progress_key_prefix

from app.attachments import work
from app.attachments.service import STORAGE_PROBLEMS
from app.observability import metrics
from app.observability.logs import request_id_var
from app.renewal import renewing
from app.transient import is_transient
from app.webhooks.endpoint_slots import EndpointBusy

if TYPE_CHECKING:
    from app.bootstrap import Services

log = logging.getLogger(__name__)

# Backoff for transient failures of work that keeps no attempts in Postgres (deliveries keep
# their own schedule; this only covers our own database trouble), indexed by try number.
RETRY_DEFERS = (2, 5, 15, 30, 60)
# How often a running job renews arq's in-progress key (see heartbeat)
HEARTBEAT_EVERY = 10.0


@contextlib.asynccontextmanager
async def heartbeat(ctx: dict[str, Any], ttl: float) -> AsyncIterator[None]:
    """Keep arq's in-progress key of this job alive while it runs.

    arq marks a running job with a key that expires after its in-progress timeout; a job
    still running past that could be started twice, and a worker killed mid-job blocks the
    job until the key expires. Deadlines here grow with the file (hours for a large one), so
    the key's lifetime stays short (the worker sets it) and the running job renews it: after
    a SIGKILL the job can run again within `ttl`, however long its deadline."""
    redis, job_id = ctx.get("redis"), ctx.get("job_id")
    if redis is None or job_id is None:
        yield
        return

    key = in_progress_key_prefix + job_id

    async def renew() -> None:  # Redis down: the job goes on, the next turn tries again
        await redis.pexpire(key, int(ttl * 1000))

    async with renewing(renew, min(HEARTBEAT_EVERY, ttl / 3)):
        yield


def job(name: str, call: Callable[[Services, UUID], Awaitable[str]]
        ) -> Callable[..., Awaitable[str]]:
    """An arq function around a domain call on one id: the request id of the request that
    caused it in the logs, retries with backoff for transient failures, and its outcome (the
    returned word, "retry" or "error") counted.

    Attachment work (promote, reprocess, destroy, purge_cache) also counts its attempts in
    Postgres (app.attachments.work): each attempt runs under a deadline that grows with the
    file, and a promotion or reprocess whose attempts are used up gives up instead of
    running again."""
    tracked = name in work.KINDS

    async def run(ctx: dict[str, Any], target_id: str, request_id: str | None = None) -> str:
        token = request_id_var.set(request_id or f"job:{ctx.get('job_id')}")
        # looked up on each run, not kept: Services.rewire takes effect at once
        services: Services = ctx["services"]
        target = UUID(target_id)
        outcome = "error"
        started = time.perf_counter()
        attempt: work.Attempt | None = None
        deadline = None
        try:
            if tracked:
                async with services.pool.acquire() as conn:
                    attempt = await work.begin(conn, services.settings, name, target)
                if attempt is None:
                    outcome = "skipped"
                    return outcome
                if attempt.exhausted:
                    log.warning("%s %s: attempts used up (%s); giving up", name, target,
                                attempt.last_error)
                    outcome = await services.attachments.give_up(attempt)
                    return outcome
            async with heartbeat(ctx, services.settings.job_timeout + 10):
                async with asyncio.timeout(attempt.deadline if attempt else None) as deadline:
                    outcome = await call(services, target)
            if attempt is not None:
                async with services.pool.acquire() as conn:
                    await work.done(conn, name, target)
            return outcome
        except EndpointBusy as e:  # not an attempt: the endpoint's slots are all taken
            outcome = "busy"
            raise Retry(defer=e.retry_in) from e
        except STORAGE_PROBLEMS as e:
            # Not transient (seconds later the disk is as full, the folder as read-only), and
            # not the file's fault: the attempt keeps its error but does not count towards
            # giving up, and the sweep offers the work again every work.BLOCKED_RETRY
            # seconds, so it completes once an operator has made room or fixed permissions.
            outcome = "blocked"
            error = f"{type(e).__name__}: {e}"
            delay = await _record_failure(services, attempt, e, timed_out=False, error=error,
                                          counts=False)
            log.error("%s %s blocked: %s; trying again in %s", name, target_id, error,
                      f"{delay}s" if delay else "a while")
            return outcome
        except Exception as e:
            timed_out = isinstance(e, TimeoutError) and deadline is not None \
                and deadline.expired()
            if not (timed_out or is_transient(e)):
                await _record_failure(services, attempt, e, timed_out=False)
                raise  # a bug: the sweep tries again after the backoff, not in a tight loop
            outcome = "timeout" if timed_out else "retry"
            error = (f"ran out of time after {attempt.deadline:.0f} s" if timed_out and attempt
                     else f"{type(e).__name__}: {e}")
            delay = await _record_failure(services, attempt, e, timed_out=timed_out, error=error)
            if delay is None:
                tries = ctx.get("job_try", 1)
                delay = RETRY_DEFERS[min(tries - 1, len(RETRY_DEFERS) - 1)]
            log.warning("%s %s failed (attempt %d): %s; retrying in %ds", name, target_id,
                        attempt.number if attempt else ctx.get("job_try", 1), error, delay)
            raise Retry(defer=delay) from e
        finally:
            request_id_var.reset(token)
            metrics.JOBS.labels(name, outcome).inc()
            if name == "promote":
                metrics.PROMOTIONS.labels(outcome).inc()
                metrics.PROMOTION_SECONDS.observe(time.perf_counter() - started)

    run.__name__ = run.__qualname__ = name
    return run


async def _record_failure(services: Services, attempt: work.Attempt | None, exc: BaseException,
                          *, timed_out: bool, error: str | None = None,
                          counts: bool = True) -> int | None:
    """Keep why the attempt failed in Postgres; the seconds until the next attempt, or None
    when there is no attempt to record (or Postgres is what failed)."""
    if attempt is None:
        return None
    try:
        async with services.pool.acquire() as conn:
            return await work.failed(conn, attempt, error or f"{type(exc).__name__}: {exc}",
                                     timed_out=timed_out, counts=counts)
    except Exception as e:
        log.warning("could not record the failed attempt of %s %s: %s", attempt.kind,
                    attempt.attachment_id, e)
        return work.backoff(attempt.number)


promote = job("promote", lambda services, att_id: services.attachments.promote(att_id))
destroy = job("destroy", lambda services, att_id: services.attachments.destroy(att_id))
purge_cache = job("purge_cache",
                  lambda services, att_id: services.attachments.purge_cache(att_id))
reprocess = job("reprocess", lambda services, att_id: services.attachments.reprocess(att_id))
# not counted in attachment_work: the request stays on the row until done, and the sweep
# offers it again while it is (clamd down: every sweep)
rescan = job("rescan", lambda services, att_id: services.attachments.rescan(att_id))
# HTTP failures are the delivery's own business (backoff kept in Postgres); only our own
# database trouble is retried by arq
deliver_webhook = job("deliver_webhook",
                      lambda services, delivery_id: services.webhooks.deliver(delivery_id))
