"""The intake of every upload (multipart, raw body, presigned, tus): a file streamed into the
cache under its attachment's key and checked against its profile (stage), then its row and
attachment.cached event written and its promotion enqueued (record).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from app.attachments import keys
from app.attachments.events import insert_attachment
from app.ids import uuid7
from app.resources import Resources
from app.uploads.ingest import Received, check_against_profile, receive, restrip
from app.uploads.options import UploadOptions
from app.webhooks.service import dispatch


@dataclass
class Staged:
    """A file received into the cache whose row is not written yet."""

    app_id: UUID
    att_id: UUID
    profile: str
    file: Received


async def stage(res: Resources, app_id: UUID, profile: str | None,
                chunks: AsyncIterable[bytes]) -> Staged:
    """Stream into the cache under the attachment's own key, checked against the profile."""
    prof = res.profiles.get(profile)
    att_id = uuid7()
    received = await receive(
        chunks,
        storage=res.cache,
        key=keys.cache_key(app_id, att_id),
        profile=prof,
        max_upload_size=res.settings.max_upload_size,
    )
    return Staged(app_id=app_id, att_id=att_id, profile=prof.name, file=received)


async def discard(res: Resources, staged: Staged) -> None:
    # shielded: a cancelled request must still not leave its file behind
    await asyncio.shield(res.cache.delete(staged.file.key))


async def record(res: Resources, staged: Staged, options: UploadOptions) -> asyncpg.Record:
    """Write the row for a staged file and its attachment.cached event, then enqueue.

    An upload into a record slot does not touch the slot's current attachment: it replaces it
    when it becomes stored (see promote). On any error the staged file is removed, so a
    refused upload leaves nothing behind.
    """
    try:
        prof = res.profiles.get(options.profile or staged.profile)
        if prof.name != staged.profile:  # the profile field came after the file part
            check_against_profile(prof, mime_type=staged.file.mime_type, size=staged.file.size,
                                  max_upload_size=res.settings.max_upload_size,
                                  metadata=staged.file.metadata)
            # stored as this profile wants it: without its metadata, if it removes that
            staged.file = await restrip(res.cache, staged.file, prof)
        cache_ttl = prof.cache_ttl or res.settings.default_cache_ttl
        row, deliveries = await _insert(res, staged, options, prof.name, cache_ttl)
    except BaseException:
        await discard(res, staged)
        raise
    await dispatch(res, deliveries)
    if options.promote:
        await res.jobs.promote(row["id"], row["generation"])
    return row


async def _insert(res: Resources, staged: Staged, options: UploadOptions, profile: str,
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
    )
    async with res.pool.acquire() as conn:
        return await insert_attachment(conn, values, datetime.now(UTC), res.links)


async def upload(res: Resources, app_id: UUID, chunks: AsyncIterable[bytes],
                 options: UploadOptions) -> asyncpg.Record:
    """Stage and record in one go (raw body, tus): the options are all known up front."""
    staged = await stage(res, app_id, options.profile, chunks)
    return await record(res, staged, options)
