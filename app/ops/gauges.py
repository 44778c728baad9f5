"""Read the state gauges from their sources of truth at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from arq.constants import in_progress_key_prefix

from app.attachments import repository as attachments_repo
from app.observability import metrics
from app.ops import repository as repo

if TYPE_CHECKING:
    import asyncpg
    from arq.connections import ArqRedis

    from app.jobs import JobQueue


class Gauges:
    def __init__(self, *, pool: asyncpg.Pool, redis: ArqRedis, jobs: JobQueue) -> None:
        self.pool = pool
        self.redis = redis
        self.jobs = jobs

    async def refresh(self) -> None:
        metrics.QUEUE_DEPTH.set(await self.redis.zcard(self.jobs.queue_name)
                                + await self.redis.zcard(self.jobs.delivery_queue_name))
        in_progress = 0
        async for _ in self.redis.scan_iter(match=f"{in_progress_key_prefix}*", count=500):
            in_progress += 1
        metrics.JOBS_IN_PROGRESS.set(in_progress)
        async with self.pool.acquire() as conn:
            by_state = await repo.attachments_by_state(conn)
            by_status = await repo.deliveries_by_status(conn)
        for state in attachments_repo.STATES:
            metrics.ATTACHMENTS.labels(state).set(by_state.get(state, 0))
        for status in ("pending", "delivered", "failed"):
            metrics.DELIVERIES.labels(status).set(by_status.get(status, 0))
