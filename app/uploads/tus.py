"""tus 1.0 resumable uploads (core, creation, creation-with-upload, termination, checksum,
expiration): protocol parsing, upload state, and the bytes in the cache storage.

Free of FastAPI: tus_routes.py translates HTTP to these calls; tus_protocol.py parses the
protocol's headers.

The state of an upload lives in Postgres (tus_uploads), its bytes in the cache storage under
the upload's own prefix, so an upload resumes on any API instance, after any restart.

- One writer at a time: every PATCH (and completion, termination, expiry) first takes a lease
  on the row and renews it while it works. A second PATCH meanwhile gets 423; once a dead
  holder's lease runs out, anyone may take over.
- The stored offset is always bytes that are durable: the cache storage's resumable-upload
  capability (app/storage/resumable.py) makes them so before it has the offset recorded, with
  the state it needs to go on (an S3 multipart upload's id and parts, its tail) in the same
  row. Bytes written past the stored offset were never acknowledged and are overwritten (or
  truncated) by the next PATCH.
- Completion: when the last byte is durable the row becomes ``completing`` and the
  attachment's id is chosen and stored in the same UPDATE. The file is then checked where it
  lies (sniffed, held against the profile), linked or copied server-side to that
  attachment's cache key, and recorded. Its SHA-256 comes from the PATCHes, which hash what
  they receive (running_digests.py); only an upload resumed elsewhere is read back to hash.
  A completion that dies half-way is redone by the next PATCH or HEAD with the same
  attachment id: either the attachment row exists (then only the bookkeeping is left) or the
  cache key is simply overwritten. Never two attachments for one upload.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg

from app.attachments import keys
from app.attachments import repository as attachments_repo
from app.errors import (
    InvalidInput,
    UnsupportedMediaType,
    UploadTooLarge,
)
from app.ids import uuid7
from app.observability.metrics import track_upload
from app.renewal import renewing
from app.storage import Resumable, ResumableDataLost, ResumableState
from app.storage.base import run_shielded
from app.uploads import tus_repository as repo
from app.uploads.ingest import BLOCK, HashBehind, inspect
from app.uploads.intake import Intake, Staged
from app.uploads.quotas import QuotaExceeded
from app.uploads.tus_protocol import (
    Checksum,
    TusChecksumMismatch,
    TusOffsetMismatch,
    TusUploadGone,
    TusUploadLocked,
    TusUploadNotFound,
    options_from_metadata,
    options_json,
    options_of,
    parse_metadata,
)

if TYPE_CHECKING:
    from app.config import Settings
    from app.profiles import Profiles
    from app.storage import Storage
    from app.uploads.running_digests import RunningDigests
    from app.uploads.tokens import UploadToken

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
LEASE_RENEW_EVERY = 15.0


# --- status ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UploadStatus:
    id: UUID
    length: int
    offset: int
    metadata_header: str | None
    expires_at: datetime
    attachment_id: UUID | None  # set once the attachment exists

    @classmethod
    def of(cls, row: asyncpg.Record) -> UploadStatus:
        return cls(
            id=row["id"], length=row["length"], offset=row["upload_offset"],
            metadata_header=row["metadata_header"], expires_at=row["expires_at"],
            attachment_id=row["attachment_id"] if row["state"] == "done" else None,
        )


def storage_key(app_id: UUID, upload_id: UUID) -> str:
    return f"{keys.prefix(app_id, upload_id)}tus"


class TusUploads:
    """The tus uploads of every API instance, their leases and completion."""

    def __init__(self, *, pool: asyncpg.Pool, cache: Storage, profiles: Profiles,
                 intake: Intake, digests: RunningDigests, settings: Settings) -> None:
        self.pool = pool
        self.cache = cache
        self.profiles = profiles
        self.intake = intake
        # the SHA-256 of the uploads this process receives, kept between PATCHes
        self.tus_digests = digests
        self.settings = settings

    def expiry_seconds(self) -> int:
        return self.settings.tus_expiry

    def max_size(self) -> int:
        """Tus-Max-Size: what the default profile accepts."""
        return self.profiles.get(None).size_limit(self.settings.max_upload_size)

    def resumable(self, row: asyncpg.Record) -> Resumable:
        """The upload's bytes in the cache storage, as far as the row records them."""
        state = ResumableState(handle=row["s3_upload_id"], parts=list(row["s3_parts"]),
                               tail_key=row["tail_key"], tail_size=row["tail_size"])
        return self.cache.open_resumable(row["storage_key"], row["length"], state)

    async def create(self, app_id: UUID, *, length: int, metadata_header: str | None,
                     token: UploadToken | None = None, quota: bool = False) -> UploadStatus:
        """Create an upload (validating its options now); an empty one is complete at once.
        With an upload token: what it fixes, and its size limit."""
        options = options_from_metadata(parse_metadata(metadata_header))
        if token is not None:
            options = token.fix(options)
        profile = self.profiles.get(options.profile)
        limit = profile.size_limit(self.settings.max_upload_size)
        if token is not None:
            limit = token.size_limit(limit)
        if length > limit:
            raise UploadTooLarge(f"Upload-Length {length} is over the limit of {limit} bytes"
                                 f" (profile {profile.name!r})")
        upload_id = uuid7()
        if quota:  # its bytes held from now on, under the upload's id (app.uploads.quotas)
            await self.intake.quotas.reserve(app_id, length, reservation=upload_id,
                                             ttl=self.expiry_seconds())
        try:
            async with self.pool.acquire() as conn:
                row = await repo.insert(
                    conn, id=upload_id, app_id=app_id, length=length, profile=profile.name,
                    options=options_json(options), metadata_header=metadata_header or None,
                    storage_key=storage_key(app_id, upload_id), expiry=self.expiry_seconds(),
                    upload_token_id=token.id if token is not None else None,
                )
        except BaseException:
            await self.intake.quotas.release(upload_id if quota else None)
            raise
        if length == 0:
            async with self._leased(app_id, upload_id) as (row, token):
                row = await self._save(row, token, offset=0)
                row = await self._complete(row, token)
        return UploadStatus.of(row)

    async def check_token(self, app_id: UUID, upload_id: UUID, token: UploadToken) -> None:
        """An upload token reaches the upload it created, and no other (404 as for another
        app's)."""
        async with self.pool.acquire() as conn:
            row = await repo.get_for_app(conn, app_id, upload_id)
        if row is None or row["upload_token_id"] != token.id:
            raise TusUploadNotFound(f"no upload {upload_id}")

    async def status(self, app_id: UUID, upload_id: UUID) -> UploadStatus:
        """The upload's offset (HEAD). Finishes a completion its request left half-done."""
        async with self.pool.acquire() as conn:
            row = await repo.get_for_app(conn, app_id, upload_id)
        if row is None:
            raise TusUploadNotFound(f"no upload {upload_id}")
        if row["state"] == "completing":
            try:
                async with self._leased(app_id, upload_id) as (row, token):
                    if row["state"] == "completing":
                        row = await self._complete(row, token)
            except TusUploadLocked:
                # its request is still at work (or died holding the lease): every byte is here
                # but the attachment is not yet, and a HEAD answering the full offset without
                # Stowage-Attachment-Id would leave the client with a finished upload and nothing
                # to show for it; 423 says "try again" to tus clients
                raise TusUploadLocked("every byte is here and the upload is becoming its"
                                      " attachment; retry in a moment") from None
        elif row["state"] == "receiving" and row["expired"]:
            raise TusUploadGone(f"upload {upload_id} expired")
        return UploadStatus.of(row)

    async def append(self, app_id: UUID, upload_id: UUID, *, offset: int,
                     chunks: AsyncIterable[bytes], content_length: int | None,
                     checksum: Checksum | None) -> UploadStatus:
        """PATCH: append the body at ``offset``; with the last byte, make the attachment."""
        async with self._leased(app_id, upload_id) as (row, token):
            if row["state"] != "receiving":
                # every byte is here already: a retried final PATCH only learns the outcome
                if offset != row["length"] or content_length:
                    raise TusOffsetMismatch(f"the upload is complete at {row['length']} bytes",
                                            upload_offset=row["length"])
                if row["state"] == "completing":
                    row = await self._complete(row, token)
                return UploadStatus.of(row)
            if row["expired"]:
                raise TusUploadGone(f"upload {upload_id} expired")
            if offset != row["upload_offset"]:
                raise TusOffsetMismatch(
                    f"Upload-Offset is {offset} but the upload is at {row['upload_offset']}",
                    upload_offset=row["upload_offset"])
            if content_length is not None and offset + content_length > row["length"]:
                raise UploadTooLarge(f"{offset} + {content_length} bytes is over the Upload-Length"
                                     f" of {row['length']}")
            row = await self._receive(row, token, chunks, checksum)
            if row["state"] == "completing":
                digest = self.tus_digests.take(row["id"], row["length"])
                row = await self._complete(row, token,
                                      sha256=digest.hexdigest() if digest is not None else None)
            return UploadStatus.of(row)

    async def terminate(self, app_id: UUID, upload_id: UUID) -> None:
        """DELETE: remove the upload and its bytes (a finished upload's attachment stays)."""
        async with self._leased(app_id, upload_id) as (row, token):
            await self._drop(row, token)

    async def expire_uploads(self, *, batch: int = 100) -> int:
        """For the worker's sweep: remove uploads past their expiry (bytes, S3 multipart
        uploads, rows); returns how many. First it finishes uploads whose every byte arrived but
        whose completing request died, so those become their attachment instead."""
        finished = await self._finish_stalled(batch)
        if finished:
            log.info("finished %d stalled tus completion(s)", finished)
        removed = 0
        while True:
            token = uuid.uuid4()
            async with self.pool.acquire() as conn:
                rows = await repo.claim_expired(conn, token, LEASE_SECONDS, batch)
            for row in rows:
                try:
                    async with self._lease_kept(row["id"], token):
                        await self._drop(row, token)
                    removed += 1
                except Exception:
                    # the lease runs out and a later sweep tries again
                    log.exception("could not remove expired tus upload %s", row["id"])
            if len(rows) < batch:
                return removed

    async def _finish_stalled(self, batch: int) -> int:
        token = uuid.uuid4()
        async with self.pool.acquire() as conn:
            rows = await repo.claim_stalled_completions(conn, token, LEASE_SECONDS, LEASE_SECONDS,
                                                        batch)
        finished = 0
        for row in rows:
            try:
                async with self._lease_kept(row["id"], token):
                    await self._complete(row, token)
                finished += 1
            except (UploadTooLarge, UnsupportedMediaType, InvalidInput):
                pass  # refused: _complete removed it
            except Exception:
                log.exception("could not finish tus upload %s; trying again later", row["id"])
        return finished

    @contextlib.asynccontextmanager
    async def _leased(self, app_id: UUID, upload_id: UUID
                      ) -> AsyncIterator[tuple[asyncpg.Record, UUID]]:
        """Hold the upload's lease (renewed in the background) for the duration of the block."""
        token = uuid.uuid4()
        async with self.pool.acquire() as conn:
            row = await repo.acquire_lease(conn, app_id, upload_id, token, LEASE_SECONDS)
            if row is None:
                if await repo.get_for_app(conn, app_id, upload_id) is None:
                    raise TusUploadNotFound(f"no upload {upload_id}")
                raise TusUploadLocked(f"another request is writing upload {upload_id}; retry")
        async with self._lease_kept(upload_id, token):
            yield row, token

    @contextlib.asynccontextmanager
    async def _lease_kept(self, upload_id: UUID, token: UUID) -> AsyncIterator[None]:
        """Renew a lease taken with ``token`` while the block runs; release it afterwards."""
        try:
            async with renewing(lambda: self._renew_lease(upload_id, token), LEASE_RENEW_EVERY,
                                what=f"the lease of tus upload {upload_id}"):
                yield
        finally:
            await run_shielded(self._release(upload_id, token))

    async def _renew_lease(self, upload_id: UUID, token: UUID) -> bool:
        """False once the lease is lost (or the row is gone): the next save notices."""
        async with self.pool.acquire() as conn:
            return bool(await repo.renew_lease(conn, upload_id, token, LEASE_SECONDS))

    async def _release(self, upload_id: UUID, token: UUID) -> None:
        async with self.pool.acquire() as conn:
            await repo.release_lease(conn, upload_id, token)

    async def _save(self, row: asyncpg.Record, token: UUID, *, offset: int,
                    state: ResumableState | None = None) -> asyncpg.Record:
        """Move the durable offset (and the storage's state with it); at the last byte the upload
        becomes ``completing``."""
        state = state or ResumableState()
        async with self.pool.acquire() as conn:
            new = await repo.save_progress(
                conn, row["id"], token, committed_offset=row["upload_offset"], offset=offset,
                s3_upload_id=state.handle, s3_parts=state.parts, tail_key=state.tail_key,
                tail_size=state.tail_size,
                attachment_id=uuid7() if offset == row["length"] else None,
                expiry=self.expiry_seconds(), lease=LEASE_SECONDS,
            )
        if new is None:
            raise TusUploadLocked("another request took this upload over; retry from its offset")
        return new

    async def _receive(self, row: asyncpg.Record, token: UUID,
                       chunks: AsyncIterable[bytes], checksum: Checksum | None) -> asyncpg.Record:
        """Stream a PATCH body into the upload; returns the row as saved."""
        start = row["upload_offset"]
        saved = row

        async def keep_progress(offset: int, state: ResumableState) -> None:
            nonlocal saved
            saved = await self._save(saved, token, offset=offset, state=state)

        # the whole file's SHA-256 so far (None: not known in this process; the completion then
        # reads the file back), and the PATCH's own Upload-Checksum
        running = self.tus_digests.take(row["id"], start)
        whole = HashBehind(running) if running is not None else None
        body_hash = HashBehind(checksum.new()) if checksum else None
        # a body refused by its checksum is discarded: the hash goes back to this state
        before = running.copy() if running is not None and checksum else None
        hashes = [h for h in (whole, body_hash) if h is not None]
        room = row["length"] - start
        received = 0
        broke: Exception | None = None

        async def blocks() -> AsyncIterator[bytes]:
            # network chunks go on in blocks: one thread hop per block for each hash and the write
            nonlocal received, broke
            buf = bytearray()
            source = aiter(chunks)
            while True:
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    # The body broke off (the client went away). tus allows partial progress:
                    # keep what arrived (the write ends as if the body had), unless a checksum
                    # covers the whole body (the write is abandoned)
                    if body_hash is not None:
                        raise
                    broke = exc
                    break
                if not chunk:
                    continue
                received += len(chunk)
                if received > room:
                    raise UploadTooLarge(f"the body goes past the Upload-Length of {row['length']}")
                buf += chunk
                if len(buf) >= BLOCK:
                    block, buf = buf, bytearray()
                    for h in hashes:
                        await h.feed(block)
                    yield block
            if buf:
                for h in hashes:
                    await h.feed(buf)
                yield buf

        async def verify() -> None:
            assert checksum is not None and body_hash is not None
            if await body_hash.digest() != checksum.digest:
                if before is not None:  # back at the offset the PATCH started from
                    self.tus_digests.keep(row["id"], start, before)
                raise TusChecksumMismatch(f"the body does not match its {checksum.algorithm}"
                                          " checksum; it was discarded")

        try:
            try:
                await self.resumable(row).write_at(start, blocks(), record=keep_progress,
                                                   verify=verify if checksum else None)
            except ResumableDataLost:
                await self._drop(row, token)
                raise TusUploadGone("the bytes of this upload are lost; start a new upload"
                                    ) from None
            except Exception:
                if broke is not None:
                    log.exception("could not keep the partial PATCH of %s", row["id"])
                    raise broke from None
                raise
            if whole is not None and saved["upload_offset"] == start + received:
                await whole.drain()
                self.tus_digests.keep(row["id"], saved["upload_offset"], whole.hasher)
            if broke is not None:
                raise broke
            return saved
        finally:
            for h in hashes:
                await run_shielded(h.settle())

    async def _complete(self, row: asyncpg.Record, token: UUID, *,
                        sha256: str | None = None) -> asyncpg.Record:
        """Turn a ``completing`` upload into its attachment (idempotent; see the module doc).
        ``sha256``: the file's, when the PATCHes hashed every byte in this process."""
        app_id, att_id = row["app_id"], row["attachment_id"]
        if not await self._attachment_exists(att_id):
            row = await self._assemble(row, token)
            try:
                # counted here, once per upload (not per PATCH); the time is the completion's
                with track_upload("tus") as accepted:
                    options = options_of(row)
                    profile = self.profiles.get(options.profile or row["profile"])
                    # checked and hashed where it lies, then linked (filesystem) or copied
                    # server-side (S3) to the attachment's key: the bytes are not written again
                    # (but for an image whose metadata the profile removes: that one is
                    # rewritten there without it). Unless a PATCH that lost its lease may still
                    # hold the file open (taken_over): its pwrite or ftruncate must not reach the
                    # attachment, so then a real copy first, and the copy is what is checked,
                    # hashed (and stripped in place).
                    att_key = keys.cache_key(app_id, att_id)
                    independent = bool(row["taken_over"]) and self.cache.shares_copies
                    if independent:
                        await self.cache.copy_from(self.cache, row["storage_key"], att_key,
                                                  independent=True)
                    try:
                        received = await inspect(
                            self.cache, att_key if independent else row["storage_key"],
                            profile=profile, max_upload_size=self.settings.max_upload_size,
                            sha256=None if independent else sha256, dest=att_key)
                    except (UploadTooLarge, UnsupportedMediaType, InvalidInput):
                        if independent:
                            await self.cache.delete(att_key)
                        raise
                    # the bytes it reserved at creation pass to the attachment, whose INSERT
                    # gives them back as it checks the quota again (app.uploads.quotas)
                    await self.intake.quotas.hand_over(row["id"], att_id)
                    await self.intake.record(Staged(app_id=app_id, att_id=att_id,
                                                    profile=profile.name, file=received),
                                             options)
                    accepted.append(received.size)
            except (UploadTooLarge, UnsupportedMediaType, InvalidInput, QuotaExceeded):
                # refused for good: like any refused upload, it leaves nothing behind
                await self.intake.quotas.release(att_id)
                await self._drop(row, token)
                raise
        async with self.pool.acquire() as conn:
            done = await repo.mark_done(conn, row["id"], token, self.expiry_seconds())
        if done is None:
            raise TusUploadLocked("another request took this upload over")
        try:
            await self._delete_data(row)
        except Exception as exc:  # the expiry sweep removes them again
            log.warning("could not remove the bytes of finished tus upload %s: %s", row["id"], exc)
        return done

    async def _assemble(self, row: asyncpg.Record, token: UUID) -> asyncpg.Record:
        """Make the upload's object from its bytes (once; a retry finds it already made)."""
        state = await self.resumable(row).finish()
        if state.handle == row["s3_upload_id"]:
            return row
        async with self.pool.acquire() as conn:
            new = await repo.set_s3_upload_id(conn, row["id"], token, state.handle)
        if new is None:
            raise TusUploadLocked("another request took this upload over")
        return new

    async def _attachment_exists(self, att_id: UUID | None) -> bool:
        if att_id is None:
            return False
        async with self.pool.acquire() as conn:
            return await attachments_repo.get(conn, att_id) is not None

    async def _drop(self, row: asyncpg.Record, token: UUID) -> None:
        """Remove an upload: its bytes, an unfinished attachment's staged file, the row."""
        self.tus_digests.forget(row["id"])
        await self._delete_data(row)
        att_id = row["attachment_id"]
        if att_id is not None and not await self._attachment_exists(att_id):
            await self.cache.delete(keys.cache_key(row["app_id"], att_id))
        async with self.pool.acquire() as conn:
            await repo.delete(conn, row["id"], token)

    async def _delete_data(self, row: asyncpg.Record) -> None:
        await self.resumable(row).abort()
        await self.cache.delete_prefix(keys.prefix(row["app_id"], row["id"]))
