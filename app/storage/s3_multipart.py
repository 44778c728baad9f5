"""S3 multipart uploads: the one writer of big objects (streamed writes, multipart copies,
resumable uploads) and its one part-size policy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from botocore.exceptions import ClientError

S3Client = Any

MIB = 1024 * 1024
GIB = 1024 * MIB

MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB


def part_size_for(number: int, first: int, length: int | None = None) -> int:
    """The size of part `number` of a multipart upload: `first` bytes, grown so that the object
    fits in S3's 10,000 parts. A write of unknown length doubles its parts every 1000; an
    upload whose length is known (resumable) has parts all of one size, whole MiB."""
    if length is not None:
        need = -(-length // MAX_PARTS)
        return max(first, -(-need // MIB) * MIB)
    return min(first << ((number - 1) // 1000), MAX_PART_SIZE)


class MultipartUpload:
    """One multipart upload, undoable at any point: the only one here, for streamed writes,
    multipart copies and resumable uploads (s3_resumable.py, which resumes one by its id).

    Requests whose outcome matters for cleanup (create, complete) run as shielded futures:
    if the caller is cancelled mid-request, `undo` can still learn the upload id, or
    whether the object was already assembled.
    """

    def __init__(self, client: S3Client, bucket: str, key: str, extra: dict[str, Any],
                 upload_id: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.extra = extra
        self.part_count = 0
        self._etags: dict[int, str] = {}
        # one started elsewhere (a resumable upload's earlier request)
        self._resumed_id = upload_id
        self._create: asyncio.Future[Any] | None = None
        self._complete: asyncio.Future[Any] | None = None
        # At most one part uploads while the next one is being received.
        self._inflight: asyncio.Task[None] | None = None

    @property
    def upload_id(self) -> str | None:
        """Known without a request: resumed, or created and answered."""
        if self._resumed_id is not None:
            return self._resumed_id
        if self._create is not None and self._create.done() and not self._create.cancelled() \
                and self._create.exception() is None:
            return str(self._create.result()["UploadId"])
        return None

    def resume_after(self, parts: list[dict[str, Any]]) -> None:
        """Go on after these parts ({"PartNumber", "ETag"}, in order): the next part is
        numbered after them, and one uploaded since under a later number is overwritten."""
        self._etags = {p["PartNumber"]: p["ETag"] for p in parts}
        self.part_count = len(parts)

    async def start(self) -> str:
        if self._resumed_id is not None:
            return self._resumed_id
        if self._create is None:
            self._create = asyncio.ensure_future(
                self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key, **self.extra)
            )
        resp = await asyncio.shield(self._create)
        upload_id: str = resp["UploadId"]
        return upload_id

    async def submit_part(self, body: bytearray) -> None:
        """Start uploading the next part once the previous one has finished."""
        upload_id = await self.start()
        await self.drain()
        self.part_count += 1
        if self.part_count > MAX_PARTS:
            raise ValueError("object too large for a multipart upload")
        self._inflight = asyncio.create_task(self._upload_part(upload_id, self.part_count, body))

    async def copy_part(self, number: int, src: dict[str, str], first: int, last: int) -> None:
        upload_id = await self.start()
        resp = await self.client.upload_part_copy(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource=src,
            CopySourceRange=f"bytes={first}-{last}",
        )
        self._etags[number] = resp["CopyPartResult"]["ETag"]

    async def complete(self) -> None:
        upload_id = await self.start()
        await self.drain()
        parts = [{"ETag": etag, "PartNumber": n} for n, etag in sorted(self._etags.items())]
        self._complete = asyncio.ensure_future(
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        )
        await asyncio.shield(self._complete)

    async def undo(self) -> None:
        """Leave no upload and no object behind. Never raises for "nothing to undo"."""
        if self._inflight is not None:
            # Parts still arriving after the abort could resurrect storage charges.
            self._inflight.cancel()
            await settled_ok(self._inflight)
        if self._complete is not None and await settled_ok(self._complete):
            await self.client.delete_object(Bucket=self.bucket, Key=self.key)
            return
        if self._create is None or not await settled_ok(self._create):
            return
        upload_id = self._create.result()["UploadId"]
        await self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=upload_id
        )

    async def _upload_part(self, upload_id: str, number: int, body: bytearray) -> None:
        resp = await self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=upload_id, PartNumber=number, Body=body
        )
        self._etags[number] = resp["ETag"]

    def etag(self, number: int) -> str:
        return self._etags[number]

    async def drain(self) -> None:
        """Wait for the part in flight; raise its error."""
        if self._inflight is not None:
            # Cleared only on success: undo() must still see a part that failed or was
            # cancelled mid-request.
            await self._inflight
            self._inflight = None


async def settled_ok(fut: Awaitable[Any]) -> bool:
    """Wait for `fut` and report whether it succeeded, without raising its error."""
    future = asyncio.ensure_future(fut)
    await asyncio.wait([future])
    return not future.cancelled() and future.exception() is None


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
