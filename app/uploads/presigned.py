"""Direct-to-S3 uploads: hand out a POST policy for the attachment's own cache key, then
register what arrived there after checking it like any other upload."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app.attachments import keys
from app.errors import InvalidInput, InvalidState, UploadTooLarge
from app.ids import uuid7
from app.resources import Resources
from app.text import check_text
from app.uploads import intake
from app.uploads import presigned_repository as repo
from app.uploads.ingest import Received, inspect
from app.uploads.options import UploadOptions

PRESIGN_TTL_S = 3600
# objects of expired presigns get this much longer, for uploads still in flight at expiry
SWEEP_GRACE_S = 3600


def _require_s3(res: Resources) -> None:
    if not res.cache.direct_upload:
        raise InvalidState("presigned uploads need an S3 cache (STOWAGE_CACHE_URL=s3://…);"
                           " this service caches on its filesystem: upload to /v1/attachments")


async def create(res: Resources, app_id: UUID, *, filename: str | None, size: int,
                 profile: str | None) -> dict[str, Any]:
    _require_s3(res)
    check_text("filename", filename)  # kept in presigned_uploads until registration
    prof = res.profiles.get(profile)
    limit = prof.size_limit(res.settings.max_upload_size)
    if size > limit:
        raise UploadTooLarge(f"{size} bytes is over the limit of {limit} (profile {prof.name!r})")
    att_id = uuid7()
    key = keys.cache_key(app_id, att_id)
    expires_at = datetime.now(UTC) + timedelta(seconds=PRESIGN_TTL_S)
    # the declared size, not the profile's limit, is the most the policy and the
    # registration accept: a client cannot presign a small file and send a large one
    post = await res.cache.presigned_post(key, max_size=size, expires_in=PRESIGN_TTL_S)
    async with res.pool.acquire() as conn:
        await repo.insert(conn, attachment_id=att_id, app_id=app_id, key=key,
                          profile=prof.name, filename=filename, max_size=size,
                          expires_at=expires_at)
    return {"key": key, "method": "POST", "url": post.url, "fields": post.fields,
            "headers": {}, "expires_at": expires_at}


async def register(res: Resources, app_id: UUID, cached_key: str, options: UploadOptions
                   ) -> asyncpg.Record:
    """Turn an object uploaded with a presign into an attachment; refused → nothing left."""
    _require_s3(res)
    # only a key this app was handed reaches the storage: anything else is no key of ours
    # (and "../x" is not a key at all), nor may one app learn whether another's exists
    if keys.cache_key_id(app_id, cached_key) is None:
        raise InvalidInput("cached_key is not a key POST /v1/presigned-uploads handed out to"
                           " this app", field="cached_key")
    if await res.cache.stat(cached_key) is None:  # checked before the presign is used up
        raise InvalidInput("nothing has been uploaded to cached_key (yet)", field="cached_key")
    async with res.pool.acquire() as conn:
        presign = await repo.claim(conn, app_id, cached_key)
    if presign is None:
        raise InvalidInput("cached_key was not handed out to this app by"
                           " POST /v1/presigned-uploads, or is already registered",
                           field="cached_key")
    try:
        received = await _inspect(res, cached_key, presign, options)
    except BaseException:
        await res.cache.delete(cached_key)
        raise
    staged = intake.Staged(app_id=app_id, att_id=presign["attachment_id"],
                                profile=options.profile or presign["profile"], file=received)
    if options.filename is None:
        options = dataclasses.replace(options, filename=presign["filename"])
    return await intake.record(res, staged, options)


async def _inspect(res: Resources, key: str, presign: Any, options: UploadOptions) -> Received:
    prof = res.profiles.get(options.profile or presign["profile"])
    # dest=key: an image whose metadata the profile removes is rewritten in place
    return await inspect(res.cache, key, profile=prof,
                         max_upload_size=res.settings.max_upload_size,
                         declared_size=presign["max_size"], dest=key)


async def sweep_expired(res: Resources) -> int:
    """Remove objects uploaded with a presign that expired without registration."""
    async with res.pool.acquire() as conn:
        expired = await repo.take_expired(conn, SWEEP_GRACE_S)
    for row in expired:
        await res.cache.delete(row["key"])
    return len(expired)
