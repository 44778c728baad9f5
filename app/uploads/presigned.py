"""Direct-to-S3 uploads: hand out a POST policy for the attachment's own cache key, then
register what arrived there after checking it like any other upload."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from app.attachments import keys
from app.errors import InvalidInput, InvalidState, UploadTooLarge
from app.ids import uuid7
from app.text import check_text
from app.uploads import intake
from app.uploads import presigned_repository as repo
from app.uploads.ingest import Received, inspect
from app.uploads.options import UploadOptions

if TYPE_CHECKING:
    from app.config import Settings
    from app.profiles import Profiles
    from app.storage import Storage

PRESIGN_TTL_S = 3600
# objects of expired presigns get this much longer, for uploads still in flight at expiry
SWEEP_GRACE_S = 3600


class PresignedUploads:
    """Direct-to-S3 uploads: presigns handed out, and what arrived registered."""

    def __init__(self, *, pool: asyncpg.Pool, cache: Storage, profiles: Profiles,
                 intake: intake.Intake, settings: Settings) -> None:
        self.pool = pool
        self.cache = cache
        self.profiles = profiles
        self.intake = intake
        self.settings = settings

    def _require_s3(self) -> None:
        if not self.cache.direct_upload:
            raise InvalidState("presigned uploads need an S3 cache (STOWAGE_CACHE_URL=s3://…);"
                               " this service caches on its filesystem: upload to /v1/attachments")

    async def create(self, app_id: UUID, *, filename: str | None, size: int,
                     profile: str | None) -> dict[str, Any]:
        self._require_s3()
        check_text("filename", filename)  # kept in presigned_uploads until registration
        prof = self.profiles.get(profile)
        limit = prof.size_limit(self.settings.max_upload_size)
        if size > limit:
            raise UploadTooLarge(f"{size} bytes is over the limit of {limit}"
                                 f" (profile {prof.name!r})")
        att_id = uuid7()
        key = keys.cache_key(app_id, att_id)
        expires_at = datetime.now(UTC) + timedelta(seconds=PRESIGN_TTL_S)
        # the declared size, not the profile's limit, is the most the policy and the
        # registration accept: a client cannot presign a small file and send a large one
        post = await self.cache.presigned_post(key, max_size=size, expires_in=PRESIGN_TTL_S)
        async with self.pool.acquire() as conn:
            await repo.insert(conn, attachment_id=att_id, app_id=app_id, key=key,
                              profile=prof.name, filename=filename, max_size=size,
                              expires_at=expires_at)
        return {"key": key, "method": "POST", "url": post.url, "fields": post.fields,
                "headers": {}, "expires_at": expires_at}

    async def register(self, app_id: UUID, cached_key: str, options: UploadOptions
                       ) -> asyncpg.Record:
        """Turn an object uploaded with a presign into an attachment; refused → nothing left."""
        self._require_s3()
        # only a key this app was handed reaches the storage: anything else is no key of ours
        # (and "../x" is not a key at all), nor may one app learn whether another's exists
        if keys.cache_key_id(app_id, cached_key) is None:
            raise InvalidInput("cached_key is not a key POST /v1/presigned-uploads handed out to"
                               " this app", field="cached_key")
        if await self.cache.stat(cached_key) is None:  # checked before the presign is used up
            raise InvalidInput("nothing has been uploaded to cached_key (yet)", field="cached_key")
        async with self.pool.acquire() as conn:
            presign = await repo.claim(conn, app_id, cached_key)
        if presign is None:
            raise InvalidInput("cached_key was not handed out to this app by"
                               " POST /v1/presigned-uploads, or is already registered",
                               field="cached_key")
        try:
            received = await self._inspect(cached_key, presign, options)
        except BaseException:
            await self.cache.delete(cached_key)
            raise
        staged = intake.Staged(app_id=app_id, att_id=presign["attachment_id"],
                                    profile=options.profile or presign["profile"], file=received)
        if options.filename is None:
            options = dataclasses.replace(options, filename=presign["filename"])
        return await self.intake.record(staged, options)

    async def _inspect(self, key: str, presign: Any, options: UploadOptions) -> Received:
        prof = self.profiles.get(options.profile or presign["profile"])
        # dest=key: an image whose metadata the profile removes is rewritten in place
        return await inspect(self.cache, key, profile=prof,
                             max_upload_size=self.settings.max_upload_size,
                             declared_size=presign["max_size"], dest=key)

    async def sweep_expired(self) -> int:
        """Remove objects uploaded with a presign that expired without registration."""
        async with self.pool.acquire() as conn:
            expired = await repo.take_expired(conn, SWEEP_GRACE_S)
        for row in expired:
            await self.cache.delete(row["key"])
        return len(expired)
