"""Read the state gauges from their sources of truth at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from arq.constants import in_progress_key_prefix

from app.attachments import repository as attachments_repo
from app.observability import metrics
from app.ops import repository as repo
from app.uploads.quotas import usage_by_app

# the series of the apps beyond STOWAGE_METRICS_MAX_APPS
OTHER = "_other"

if TYPE_CHECKING:
    import asyncpg
    from arq.connections import ArqRedis

    from app.jobs import JobQueue


class Gauges:
    def __init__(self, *, pool: asyncpg.Pool, redis: ArqRedis, jobs: JobQueue,
                 max_apps: int = 50) -> None:
        self.pool = pool
        self.redis = redis
        self.jobs = jobs
        self.max_apps = max_apps

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
        await self.refresh_apps()

    async def refresh_apps(self) -> None:
        """Usage per app, its label the app id: for every app while there are at most
        max_apps (STOWAGE_METRICS_MAX_APPS) of them, else for the max_apps - 1 holding the
        most bytes and one series app="_other" for the rest. The number of series stays
        bounded whatever the number of apps."""
        async with self.pool.acquire() as conn:
            usage = await usage_by_app(conn)
            quotas = await repo.app_quotas(conn)
        apps = set(quotas)  # every live app (deleted ones are gone from the gauges)
        ranked = sorted(apps, key=lambda a: (-usage.get(a, (0, 0))[0], str(a)))
        if len(ranked) > self.max_apps:
            named, rest = ranked[:max(self.max_apps - 1, 0)], ranked[max(self.max_apps - 1, 0):]
        else:
            named, rest = ranked, []
        for gauge in (metrics.APP_BYTES, metrics.APP_ATTACHMENTS, metrics.APP_QUOTA_BYTES):
            gauge.clear()  # apps gone, or folded into _other, leave no stale series
        for app_id in named:
            used, live = usage.get(app_id, (0, 0))
            metrics.APP_BYTES.labels(str(app_id)).set(used)
            metrics.APP_ATTACHMENTS.labels(str(app_id)).set(live)
            if quotas.get(app_id) is not None:
                metrics.APP_QUOTA_BYTES.labels(str(app_id)).set(quotas[app_id])
        if rest:
            metrics.APP_BYTES.labels(OTHER).set(sum(usage.get(a, (0, 0))[0] for a in rest))
            metrics.APP_ATTACHMENTS.labels(OTHER).set(sum(usage.get(a, (0, 0))[1]
                                                          for a in rest))
            metrics.APP_QUOTA_BYTES.labels(OTHER).set(sum(quotas.get(a) or 0 for a in rest))
