"""The arq worker: job functions, the sweep loop, and the services from the shared builder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import redis.exceptions
from arq import func

from app import jobs
from app.bootstrap import Services, build_services
from app.config import ConfigError, Settings
from app.db import CONNECTION_ERRORS
from app.jobs import redis_settings
from app.transient import is_transient
from worker import tasks
from worker.resilience import REDIS_DOWN, Outage, ResilientWorker, watch_dependencies

log = logging.getLogger(__name__)


async def sweep_loop(services: Services, interval: float) -> None:
    """Re-find lost work from Postgres every interval, and leftovers of dead writers every
    so often. Runs in the worker process itself (not as an arq job) so that it keeps going
    even when Redis was flushed."""
    leftovers_every = max(interval, min(services.settings.leftover_grace / 2, 600))
    leftovers_due = time.monotonic()
    while True:
        if time.monotonic() >= leftovers_due:
            leftovers_due = time.monotonic() + leftovers_every
            try:
                await services.leftovers.sweep(services.settings.leftover_grace)
            except Exception as e:
                log.warning("leftover sweep failed: %s: %s", type(e).__name__, e)
        try:
            report = await services.sweep.run()
            if report and (report.expired or report.promotions or report.destroys
                           or report.cache_purges):
                log.info("sweep: %s", report)
        except Exception as e:
            if is_transient(e):  # an outage: the dependency watch and the poll loop report it
                log.warning("sweep skipped: %s: %s", type(e).__name__, e)
            else:
                log.exception("sweep failed; trying again next interval")
        await asyncio.sleep(interval)


def functions(settings: Settings) -> list[Any]:
    """File work: promote, destroy, purge_cache, reprocess, rescan.

    Attachment work runs under its own deadline (app.attachments.work: it grows with the
    file) and counts its attempts in Postgres, which decides when to give up; arq's timeout
    is only an outer guard and its try limit is out of the way. The in-progress key is kept
    short by the worker and renewed by running jobs (worker.tasks.heartbeat)."""
    outer = settings.job_timeout_max + 60
    return [
        func(tasks.promote, name=jobs.PROMOTE, timeout=outer, keep_result=0, max_tries=1000),
        func(tasks.destroy, name=jobs.DESTROY, timeout=outer, keep_result=0, max_tries=1000),
        func(tasks.purge_cache, name=jobs.PURGE_CACHE, timeout=outer, keep_result=0,
             max_tries=1000),
        func(tasks.reprocess, name=jobs.REPROCESS, timeout=outer, keep_result=0,
             max_tries=1000),
        func(tasks.rescan, name=jobs.RESCAN, timeout=outer, keep_result=0, max_tries=1000),
    ]


def delivery_functions(settings: Settings) -> list[Any]:
    # A delivery's schedule is in Postgres; arq's tries only count "endpoint busy" put-backs
    # and our own database trouble.
    return [
        func(tasks.deliver_webhook, name=jobs.DELIVER_WEBHOOK,
             timeout=min(settings.job_timeout, 3 * settings.webhook_timeout + 15),
             keep_result=0, max_tries=1000),
    ]


class StowageWorker:
    """The worker process: two arq workers on one event loop and one set of services.

    File work and webhook deliveries have queues and job slots of their own
    (app.jobs.delivery_queue): however many deliveries wait on dead receivers, promotions and
    deletions keep their STOWAGE_WORKER_MAX_JOBS slots. SIGTERM reaches the file worker (it
    owns the signal handlers), which then stops the delivery worker the same graceful way."""

    def __init__(self, files: ResilientWorker, deliveries: ResilientWorker,
                 stack: contextlib.AsyncExitStack, burst: bool) -> None:
        self.files = files
        self.deliveries = deliveries
        self.workers = (files, deliveries)
        self._stack = stack
        self._burst = burst
        if files._handle_signals:
            files.on_stop = deliveries.handle_sig_wait_for_completion

    async def main(self) -> None:
        if self._burst:  # file work first: it enqueues the deliveries
            await self.files.main()
            await self.deliveries.main()
            return
        await self.async_run()

    async def async_run(self) -> None:
        for w in self.workers:
            w.main_task = asyncio.ensure_future(w.main())
        # wait for both (gather would return at the first one cancelled by its signal handler
        # while the other still finishes its running jobs)
        pending = {w.main_task for w in self.workers}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            crashed = [t for t in done if not t.cancelled() and t.exception() is not None]
            if crashed and pending:
                # One loop died (a bug, or an error nobody foresaw): a process that went on
                # with the other loop alone would look alive to its supervisor and never do
                # that loop's work again. Stop the rest the graceful way, exit non-zero.
                log.error("a worker loop stopped: %r; stopping the worker",
                          crashed[0].exception(), exc_info=crashed[0].exception())
                for w in self.workers:
                    if w.main_task in pending:
                        w.handle_sig_wait_for_completion(signal.SIGTERM)
        # a worker that could not start (a refused storage, ...) must not exit 0 as if
        # stopped by a signal
        for w in self.workers:
            if not w.main_task.cancelled() and w.main_task.exception() is not None:
                raise w.main_task.exception()

    def run(self) -> None:
        loop = self.files.loop
        try:
            loop.run_until_complete(self.async_run())
        finally:
            loop.run_until_complete(self.close())

    async def close(self) -> None:
        try:
            for w in reversed(self.workers):
                await w.close()
        finally:
            await self._stack.aclose()


def build_worker(settings: Settings, *, services: Services | None = None, burst: bool = False,
                 handle_signals: bool = True, sweep: bool = True) -> StowageWorker:
    stack = contextlib.AsyncExitStack()
    shared: dict[str, Services] = {}
    building = asyncio.Lock()

    refused: list[ConfigError] = []
    # one account of Postgres for the process: startup (which checks the storages' identity
    # in Postgres) waits out an outage with it, then the dependency watch keeps it
    postgres = Outage("postgres")

    async def get_services() -> Services:
        async with building:  # both workers start at once; one set of services for both
            if refused:  # no use asking twice (an outage, in contrast, is retried)
                raise refused[0]
            while "services" not in shared:
                try:
                    shared["services"] = services or await stack.enter_async_context(
                        build_services(settings))
                except ConfigError as e:
                    refused.append(e)
                    raise
                except redis.exceptions.RedisError:
                    raise  # ResilientWorker waits out Redis (and says so)
                except CONNECTION_ERRORS as e:
                    await asyncio.sleep(postgres.failed(e))
            return shared["services"]

    async def files_startup(ctx: dict[str, Any]) -> None:
        if "services" in ctx:  # ResilientWorker runs startup again after a failed attempt
            return
        built = await get_services()
        ctx["services"] = built
        ctx["background"] = [asyncio.create_task(watch_dependencies(built.pool, postgres))]
        if sweep:
            ctx["background"].append(
                asyncio.create_task(sweep_loop(built, settings.sweep_interval)))

    async def deliveries_startup(ctx: dict[str, Any]) -> None:
        if "services" not in ctx:
            ctx["services"] = await get_services()

    async def shutdown(ctx: dict[str, Any]) -> None:
        for task in ctx.pop("background", []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ctx.pop("services", None)

    rs = redis_settings(settings)
    # A command on a dropped connection is tried once more on a new one; an outage beyond
    # that is waited out by ResilientWorker (with backoff), at start as well.
    rs.retry_on_error = list(REDIS_DOWN)
    common: dict[str, Any] = dict(
        redis_settings=rs,
        on_shutdown=shutdown,
        burst=burst,
        # SIGTERM: finish running jobs (up to the grace period) instead of cancelling them
        job_completion_wait=settings.shutdown_grace,
        job_timeout=settings.job_timeout,
        keep_result=0,
        health_check_interval=30,
        # An upload's stored webhook waits for up to two polls (the promotion's, then the
        # delivery's). bench/webhook_latency.py at 20 uploads/s, p99 201 → event received:
        # 109 ms at 0.05 s, 54 ms at 0.02 s, 37 ms at 0.01 s; an idle worker's CPU: 1.4%,
        # 2.7%, 5.3% of a core. 0.02 keeps the p99 well under 100 ms for little.
        poll_delay=0.02,
    )
    files = ResilientWorker(functions=functions(settings), queue_name=settings.queue_name,
                            on_startup=files_startup, handle_signals=handle_signals,
                            max_jobs=settings.worker_max_jobs, **common)
    deliveries = ResilientWorker(functions=delivery_functions(settings),
                                 queue_name=jobs.delivery_queue(settings.queue_name),
                                 on_startup=deliveries_startup, handle_signals=False,
                                 report_outages=False,
                                 max_jobs=settings.webhook_concurrency, **common)
    # arq would keep a job's in-progress key for its largest timeout (hours, above): a worker
    # killed mid-job would block the job that long. Running jobs renew it instead.
    files.in_progress_timeout_s = settings.job_timeout + 10
    return StowageWorker(files, deliveries, stack, burst)
