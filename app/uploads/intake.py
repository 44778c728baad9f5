"""The intake of every upload (multipart, raw body, presigned, tus): a file streamed into the
cache under its attachment's key and checked against its profile (stage), then its row and
attachment.cached event written and its promotion enqueued (record).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg

from app.attachments import keys
from app.attachments.events import insert_attachment
from app.ids import uuid7
from app.uploads.ingest import Received, check_against_profile, receive, restrip
from app.uploads.options import UploadOptions
from app.uploads.quotas import quota_refusal

if TYPE_CHECKING:
    from app.attachments.links import Links
    from app.config import Settings
    from app.jobs import JobQueue
    from app.profiles import Profiles
    from app.storage import Storage
    from app.uploads.quotas import Quotas
    from app.webhooks.service import Webhooks


@dataclass
class Staged:
    """A file received into the cache whose row is not written yet."""

    app_id: UUID
    att_id: UUID
    profile: str
    file: Received


class Intake:
    """Every upload's way in: into the cache, then its row, event and promotion."""

    def __init__(self, *, pool: asyncpg.Pool, cache: Storage, jobs: JobQueue,
                 profiles: Profiles, links: Links, webhooks: Webhooks,
                 settings: Settings, quotas: Quotas) -> None:
        self.pool = pool
        self.cache = cache
        self.jobs = jobs
        self.profiles = profiles
        self.links = links
        self.webhooks = webhooks
        self.settings = settings
        self.quotas = quotas

    async def stage(self, app_id: UUID, profile: str | None,
                    chunks: AsyncIterable[bytes], max_size: int | None = None, *,
                    att_id: UUID | None = None) -> Staged:
        """Stream into the cache under the attachment's own key, checked against the profile
        (and ``max_size``, an upload token's, when lower than the service's limit).
        ``att_id``: the attachment's id when chosen already (its quota reservation's)."""
        prof = self.profiles.get(profile)
        att_id = att_id or uuid7()
        received = await receive(
            chunks,
            storage=self.cache,
            key=keys.cache_key(app_id, att_id),
            profile=prof,
            max_upload_size=(self.settings.max_upload_size if max_size is None
                             else min(max_size, self.settings.max_upload_size)),
        )
        return Staged(app_id=app_id, att_id=att_id, profile=prof.name, file=received)

    async def discard(self, staged: Staged) -> None:
        # shielded: a cancelled request must still not leave its file behind
        await asyncio.shield(self.cache.delete(staged.file.key))

    async def record(self, staged: Staged, options: UploadOptions) -> asyncpg.Record:
        """Write the row for a staged file and its attachment.cached event, then enqueue.

        An upload into a record slot does not touch the slot's current attachment: it replaces it
        when it becomes stored (see promote). On any error the staged file is removed, so a
        refused upload leaves nothing behind.
        """
        try:
            prof = self.profiles.get(options.profile or staged.profile)
            if prof.name != staged.profile:  # the profile field came after the file part
                check_against_profile(prof, mime_type=staged.file.mime_type, size=staged.file.size,
                                      max_upload_size=self.settings.max_upload_size,
                                      metadata=staged.file.metadata)
                # stored as this profile wants it: without its metadata, if it removes that
                staged.file = await restrip(self.cache, staged.file, prof)
            cache_ttl = prof.cache_ttl or self.settings.default_cache_ttl
            row, deliveries = await self._insert(staged, options, prof.name, cache_ttl)
        except BaseException:
            await self.discard(staged)
            raise
        await self.webhooks.dispatch(deliveries)
        if options.promote:
            await self.jobs.promote(row["id"], row["generation"])
        return row

    async def _insert(self, staged: Staged, options: UploadOptions, profile: str,
                      cache_ttl: int) -> tuple[asyncpg.Record, list[UUID]]:
        """The row and its event in one statement."""
        slot = options.record
        values = dict(
            id=staged.att_id, app_id=staged.app_id, profile=profile,
            key=staged.file.key, filename=options.filename,
            mime_type=staged.file.mime_type, size=staged.file.size,
            sha256=staged.file.sha256, metadata=staged.file.metadata,
            client_metadata=options.client_metadata,
            record_type=slot.type if slot else None,
            record_id=slot.id if slot else None,
            record_name=slot.name if slot else None,
            promote=options.promote, cache_ttl=cache_ttl,
            upload_token_id=options.upload_token,
        )
        async with self.pool.acquire() as conn:
            # the quota's second check is the INSERT's own (app.uploads.quotas)
            try:
                return await insert_attachment(conn, values, datetime.now(UTC), self.links)
            except asyncpg.RaiseError as e:
                raise quota_refusal(e, staged.file.size) from None

    async def upload(self, app_id: UUID, chunks: AsyncIterable[bytes],
                     options: UploadOptions, max_size: int | None = None, *,
                     att_id: UUID | None = None) -> asyncpg.Record:
        """Stage and record in one go (raw body, tus): the options are all known up front."""
        staged = await self.stage(app_id, options.profile, chunks, max_size,
                                  att_id=att_id)
        return await self.record(staged, options)
