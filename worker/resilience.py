"""A worker that outlives its dependencies.

arq's ``Worker`` exits when a Redis command fails: its poll loop lets a ``ConnectionError``
escape ``main()``. A worker that exits on a Redis blip stops promoting, deleting and delivering
until someone restarts it, and only a supervisor with a restart policy hides that. Here a Redis
failure (connection refused or reset, timeout, a name that does not resolve) is logged once,
waited out with exponential backoff and retried, at start as well as while running; running jobs
go on meanwhile, and what Redis lost is re-found from Postgres by the sweep.

Postgres is watched separately (``watch_dependencies``): jobs that meet a Postgres outage retry
with their own backoff (worker.tasks), and the sweep keeps its loop; the watch logs the outage
once and exposes both dependencies as ``stowage_worker_dependency_up`` on the worker's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.exceptions
from arq.worker import Worker

from app.db import CONNECTION_ERRORS
from app.observability.metrics import DEPENDENCY_UP

log = logging.getLogger("stowage.worker")

# What a Redis that is gone looks like to redis-py: refused/reset connections, timeouts, DNS
# failures (socket.gaierror is an OSError), a Redis still loading its data set after a restart.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0  # work resumes at most this long after the dependency is back
# while a dependency stays down, say so again this often (one line, not one per retry)
REMIND_EVERY = 60.0


class Outage:
    """One dependency's up/down state: logs the transitions (and a reminder while down), sets
    its gauge, and hands out the next backoff delay."""

    def __init__(self, name: str, *, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet  # backoff only: another Outage of the same dependency reports
        self.down_since: float | None = None
        self._reminded = 0.0
        self._delay = BACKOFF_FIRST
        if not quiet:
            DEPENDENCY_UP.labels(name).set(1)

    def failed(self, exc: BaseException) -> float:
        now = time.monotonic()
        if self.quiet:
            self.down_since = self.down_since or now
        elif self.down_since is None:
            self.down_since = self._reminded = now
            log.warning("%s unreachable (%s: %s); waiting for it, retrying with backoff",
                        self.name, type(exc).__name__, exc)
        elif now - self._reminded >= REMIND_EVERY:
            self._reminded = now
            log.warning("%s still unreachable after %.0f s (%s: %s)", self.name,
                        now - self.down_since, type(exc).__name__, exc)
        if not self.quiet:
            DEPENDENCY_UP.labels(self.name).set(0)
        delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
        return delay

    def ok(self) -> None:
        if self.down_since is not None and self.quiet:
            self.down_since = None
        elif self.down_since is not None:
            log.info("%s reachable again after %.1f s", self.name,
                     time.monotonic() - self.down_since)
            self.down_since = None
            DEPENDENCY_UP.labels(self.name).set(1)
        self._delay = BACKOFF_FIRST


class ResilientWorker(Worker):
    """arq's Worker, with Redis failures waited out instead of ending the process."""

    def __init__(self, *args: Any, report_outages: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # of several workers in one process, one says when Redis goes and comes back
        self.redis_outage = Outage("redis", quiet=not report_outages)

    async def main(self) -> None:
        # Startup (the pool, arq's INFO, our on_startup) needs Redis too: retry it until it
        # works. on_startup must be idempotent (worker.settings' is).
        while True:
            try:
                await super().main()
                return
            except REDIS_DOWN as e:
                await asyncio.sleep(self.redis_outage.failed(e))

    async def _poll_iteration(self) -> None:
        self._reap_jobs_cut_off_by_redis()
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as e:
            await asyncio.sleep(self.redis_outage.failed(e))
        else:
            self.redis_outage.ok()

    def _reap_jobs_cut_off_by_redis(self) -> None:
        # A job that ends while Redis is down cannot record its end, and its task keeps that
        # ConnectionError. arq reaps finished tasks in the poll loop and re-raises their
        # errors there, one task per poll: after an outage during which N jobs ended, the next
        # N polls would each fail with an old error and back off (up to BACKOFF_MAX each), so
        # the worker would look down and take no work long after Redis is back. Those errors
        # are the outage already seen; the jobs' own state is in Postgres (the sweep re-finds
        # what Redis lost, and every job is idempotent). Other errors still reach arq.
        for job_id, task in list(self.tasks.items()):
            if (task.done() and not task.cancelled()
                    and isinstance(task.exception(), REDIS_DOWN)):
                del self.tasks[job_id]
                log.debug("job %s ended while Redis was unreachable: %s", job_id,
                          task.exception())

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # arq takes a job slot (semaphore and counter) before it talks to Redis about the job,
        # and gives it back only through the job's task: a Redis error in between would leak
        # the slot for good, and after max_jobs such errors the worker would take no more work.
        #
        # arq claims a job in a WATCH transaction and expects a WatchError only from its
        # EXEC (another worker took the job). redis-py also raises WatchError when the
        # connection drops while watching (Redis killed between WATCH and EXEC, or a pooled
        # connection that Redis closed on restart): that one is an outage, not a lost race,
        # and would otherwise end the worker's poll loop.
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except (*REDIS_DOWN, redis.exceptions.WatchError) as e:
                if job_id.decode() not in self.tasks:
                    self._release_sem_dec_counter_on_complete()
                if isinstance(e, redis.exceptions.WatchError):
                    raise redis.exceptions.ConnectionError(str(e)) from e
                raise

    async def close(self) -> None:
        try:
            await super().close()
        except REDIS_DOWN as e:
            # arq's close deletes its health key first; without Redis, still shut our
            # resources down (the key expires by itself)
            log.warning("redis unreachable at shutdown (%s); closing without it", e)
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
            if self._pool is not None:
                with contextlib.suppress(Exception):
                    await self._pool.close(close_connection_pool=True)
                self._pool = None


async def watch_dependencies(pool: Any, postgres: Outage | None = None,
                             interval: float = 5.0) -> None:
    """Probe Postgres every interval: one log line when it goes away and one when it is back,
    and its gauge. (Redis is watched by the poll loop itself, which uses it every 50 ms.)"""
    postgres = postgres or Outage("postgres")
    while True:
        try:
            async with asyncio.timeout(interval):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except (*CONNECTION_ERRORS, TimeoutError) as e:
            postgres.failed(e)
        else:
            postgres.ok()
        await asyncio.sleep(interval)
