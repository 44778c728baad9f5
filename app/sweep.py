"""The worker's periodic sweep over every domain: Postgres is the truth, Redis only carries
work, so whatever Redis lost is found here and enqueued again."""

from __future__ import annotations

from app import counts
from app.attachments import service as attachments
from app.attachments.service import SweepReport
from app.auth import service as auth
from app.resources import Resources
from app.uploads import presigned, tus
from app.webhooks import service as webhooks


async def sweep(res: Resources) -> SweepReport | None:
    """One pass; None when another worker holds the sweep lock right now."""
    report = await attachments.sweep(res)
    if report is None:
        return None
    report.deliveries += await webhooks.sweep_due(res)
    report.presigns_expired = await presigned.sweep_expired(res)
    report.tus_expired = await tus.expire_uploads(res)
    report.apps_removed = await auth.sweep_deleted_apps(res.pool)
    async with res.pool.acquire() as conn:
        await counts.fold(conn)  # keeps reading the counts O(apps)
    return report
