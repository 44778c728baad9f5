"""The worker's periodic sweep over every domain: Postgres is the truth, Redis only carries
work, so whatever Redis lost is found here and enqueued again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app import counts
from app.attachments.service import SweepReport
from app.auth import service as auth

if TYPE_CHECKING:
    import asyncpg

    from app.attachments.service import Attachments
    from app.idempotency.service import Idempotency
    from app.uploads.presigned import PresignedUploads
    from app.uploads.quotas import Quotas
    from app.uploads.tokens import UploadTokens
    from app.uploads.tus import TusUploads
    from app.webhooks.feed import EventFeed
    from app.webhooks.service import Webhooks


class Sweep:
    def __init__(self, *, pool: asyncpg.Pool, attachments: Attachments, webhooks: Webhooks,
                 presigned: PresignedUploads, tus: TusUploads, quotas: Quotas,
                 upload_tokens: UploadTokens,
                 event_feed: EventFeed | None = None,
                 idempotency: Idempotency | None = None) -> None:
        self.pool = pool
        self.attachments = attachments
        self.webhooks = webhooks
        self.presigned = presigned
        self.tus = tus
        self.event_feed = event_feed
        self.idempotency = idempotency
        self.quotas = quotas
        self.upload_tokens = upload_tokens

    async def run(self) -> SweepReport | None:
        """One pass; None when another worker holds the sweep lock right now."""
        report = await self.attachments.sweep()
        if report is None:
            return None
        report.deliveries += await self.webhooks.sweep_due()
        report.presigns_expired = await self.presigned.sweep_expired()
        report.tus_expired = await self.tus.expire_uploads()
        report.apps_removed = await auth.sweep_deleted_apps(self.pool)
        # what processes killed mid-upload left holding quota, and long-expired upload tokens
        await self.quotas.sweep()
        await self.upload_tokens.sweep()
        if self.event_feed is not None:
            await self.event_feed.expire()
        if self.idempotency is not None:
            await self.idempotency.expire()
        async with self.pool.acquire() as conn:
            await counts.fold(conn)  # keeps reading the counts O(apps)
        return report
