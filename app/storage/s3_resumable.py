"""The resumable-upload capability on S3: one multipart upload whose parts are all of one size
(part_size_for the upload's length) but for the last. The bytes after the last whole part wait
in a small "tail" object, merged into the next part by the next write. At most one part is in
memory."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from .base import StorageObjectNotFound, run_shielded
from .resumable import Record, ResumableDataLost, ResumableState, Verify, drive, no_chunks
from .s3_multipart import MultipartUpload, error_code, part_size_for

if TYPE_CHECKING:
    from .s3 import S3Storage

log = logging.getLogger(__name__)


class S3Resumable:
    def __init__(self, storage: S3Storage, key: str, length: int,
                 state: ResumableState) -> None:
        self.storage = storage
        self.key = key
        self.length = length
        self.state = state
        self.obj_key = storage.object_key(key)
        self.part_size = part_size_for(1, storage.resumable_part_size, length)

    def tail_key(self, end: int) -> str:
        # named by where it ends: a new tail never overwrites the one the caller records
        return f"{self.key}-tail-{end}"

    def multipart(self) -> MultipartUpload:
        upload = MultipartUpload(self.storage.client, self.storage.bucket, self.obj_key, {},
                                  upload_id=self.state.handle)
        upload.resume_after(self.state.parts)
        return upload

    async def write_at(self, offset: int, chunks: AsyncIterable[bytes], *, record: Record,
                       verify: Verify | None = None) -> int:
        writer = _S3Writer(self, offset, record, checkpoints=verify is None)
        return await drive(writer, chunks, verify)

    async def finish(self) -> ResumableState:
        state = self.state
        if state.handle is None or not state.parts:
            if self.length == 0 and await self.storage.stat(self.key) is None:
                await self.storage.write(self.key, no_chunks())  # no write_at made it
            return state
        try:
            await self.multipart().complete()
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise
            # completed already (by a request that died before recording it)?
            info = await self.storage.stat(self.key)
            if info is None or info.size != self.length:
                raise
        return dataclasses.replace(state, handle=None)

    async def abort(self) -> None:
        """Aborts the multipart upload(s) (one whose id was never recorded too), removes the
        object and its tails."""
        s3, bucket = self.storage.client, self.storage.bucket
        ids = {self.state.handle} - {None}
        resp = await s3.list_multipart_uploads(Bucket=bucket, Prefix=self.obj_key)
        ids |= {u["UploadId"] for u in resp.get("Uploads", []) if u["Key"] == self.obj_key}
        for upload_id in ids:
            try:
                await s3.abort_multipart_upload(Bucket=bucket, Key=self.obj_key,
                                                UploadId=upload_id)
            except ClientError as exc:
                if error_code(exc) != "NoSuchUpload":
                    raise
        await self.storage.delete(self.key)
        async for key in self.storage.list_keys(f"{self.key}-tail-"):
            await self.storage.delete(key)


class _S3Writer:
    """Fills parts of exactly `part_size` bytes; what is left over when the write ends
    becomes the tail object, and the first bytes of the next part."""

    def __init__(self, upload: S3Resumable, offset: int, record: Record,
                 checkpoints: bool) -> None:
        self.upload = upload
        self.storage = upload.storage
        self.record = record
        self.checkpoints = checkpoints
        self.offset = offset
        self.recorded = upload.state
        self.multipart = upload.multipart()
        self.parts: list[dict[str, Any]] = list(self.recorded.parts)
        self.buf = bytearray()

    @property
    def position(self) -> int:
        return sum(p["Size"] for p in self.parts) + len(self.buf)

    async def open(self) -> None:
        key = self.recorded.tail_key
        if key:
            try:
                async for data in self.storage.read(key):
                    self.buf += data
            except StorageObjectNotFound:
                raise ResumableDataLost(key) from None
        if self.position != self.offset:
            raise ResumableDataLost(self.upload.obj_key)

    async def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        part_size = self.upload.part_size
        while len(self.buf) + len(view) >= part_size:
            take = part_size - len(self.buf)
            self.buf += view[:take]
            view = view[take:]
            await self._upload_part(self.buf)
            self.buf = bytearray()
            if self.checkpoints and self.position < self.upload.length:
                await self._commit(self.position, tail=None)
        self.buf += view

    async def save(self) -> int:
        position = self.position
        if position == self.offset:
            return position  # nothing new: the buffer is the recorded tail
        tail = None
        if position == self.upload.length:
            if self.parts:
                if self.buf:
                    await self._upload_part(self.buf)  # the last part may be small
            else:
                # never reached a whole part: one plain object, no multipart upload
                await self.storage.client.put_object(Bucket=self.storage.bucket,
                                                     Key=self.upload.obj_key, Body=self.buf)
            self.buf = bytearray()
        elif self.buf:
            tail = self.upload.tail_key(position)
            await self.storage.client.put_object(Bucket=self.storage.bucket,
                                                 Key=self.storage.object_key(tail),
                                                 Body=bytes(self.buf))
        try:
            await self._commit(position, tail=tail)
        except BaseException:
            if tail:
                await run_shielded(self.storage.delete(tail))
            raise
        return position

    async def discard(self) -> None:
        # parts uploaded by this write but not recorded are overwritten by the next one,
        # which starts from the same part number
        self.buf = bytearray()
        self.parts = list(self.recorded.parts)
        self.multipart.resume_after(self.parts)

    async def close(self) -> None:
        return None

    async def _commit(self, offset: int, tail: str | None) -> None:
        old_tail = self.recorded.tail_key
        state = ResumableState(handle=self.multipart.upload_id, parts=list(self.parts),
                               tail_key=tail, tail_size=len(self.buf) if tail else 0)
        await self.record(offset, state)
        self.recorded = self.upload.state = state
        self.offset = offset
        if old_tail and old_tail != tail:
            try:
                await self.storage.delete(old_tail)
            except Exception as exc:  # removed with the upload's other objects later anyway
                log.warning("could not delete the tail %s of a resumable upload: %s",
                            old_tail, exc)

    async def _upload_part(self, body: bytearray) -> None:
        if self.multipart.upload_id is None:
            await self.multipart.start()
            # recorded at once, so that an abort (termination, expiry) can always find it
            try:
                await self.record(self.offset, dataclasses.replace(
                    self.recorded, handle=self.multipart.upload_id))
            except BaseException:
                await run_shielded(self.multipart.undo())
                raise
            self.recorded = self.upload.state = dataclasses.replace(
                self.recorded, handle=self.multipart.upload_id)
        await self.multipart.submit_part(body)
        await self.multipart.drain()
        number = self.multipart.part_count
        self.parts.append({"PartNumber": number, "ETag": self.multipart.etag(number),
                           "Size": len(body)})
