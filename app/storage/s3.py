"""S3 (and S3-compatible) storage on top of an aiobotocore client."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .base import (
    Leftover,
    ObjectInfo,
    Placement,
    PresignedPost,
    Storage,
    StorageObjectNotFound,
    check_range,
    content_disposition,
    missing_via_stat,
    read_head_via,
    run_shielded,
    stream_copy,
    validate_key,
    validate_prefix,
)
from .resumable import Resumable, ResumableState
from .s3_multipart import (
    GIB,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    MultipartUpload,
    error_code,
    part_size_for,
    settled_ok,
)

# types-aiobotocore is not a dependency; the client is dynamically generated anyway.
S3Client = Any

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DELETE_BATCH = 1000


class S3StorageError(RuntimeError):
    """S3 reported a failure that is not a plain ClientError (e.g. partial batch deletes)."""


async def open_s3_client(
    stack: contextlib.AsyncExitStack,
    *,
    endpoint_url: str | None,
    region: str | None,
    max_pool_connections: int = 50,
) -> S3Client:
    """Open an S3 client that lives as long as `stack`.

    Checksums only "when required": many S3-compatible servers reject the flexible
    checksum headers that recent botocore sends by default. Path-style addressing works
    with every S3-compatible server and with bucket names that contain dots.
    """
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        # SigV4 for presigned URLs too: botocore would otherwise sign them with SigV2,
        # which AWS has deprecated and some regions and buckets refuse
        signature_version="s3v4",
        max_pool_connections=max_pool_connections,
        retries={"mode": "standard", "max_attempts": 5},
    )
    session = aioboto3.Session()
    client_cm = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    return await stack.enter_async_context(client_cm)


class S3Storage:
    kind = "s3"
    shares_copies = False
    direct_upload = True
    # the first part size of a streamed write (see part_size_for)
    part_size = 8 * MIB
    # the part size of a resumable upload: the smallest S3 takes, so that a write holds
    # little in memory and leaves a small tail
    resumable_part_size = MIN_PART_SIZE
    # copy_object refuses sources above 5 GIB; those need a multipart copy.
    multipart_copy_threshold = 5 * GIB
    copy_part_size = 512 * MIB
    copy_concurrency = 4

    def __init__(self, client: S3Client, bucket: str, prefix: str = "",
                 presign_client: S3Client | None = None) -> None:
        if not bucket:
            raise ValueError("S3 bucket name must not be empty")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.client = client
        # URLs handed to clients may need another endpoint than the one we reach S3 by
        # (e.g. http://minio:9000 inside compose, a public name outside)
        self.presign_client = presign_client or client
        self.bucket = bucket
        self.prefix = prefix

    def __repr__(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"S3Storage('s3://{where}')"

    async def list_leftovers(self, older_than: float, keep: frozenset[str] = frozenset()
                             ) -> AsyncGenerator[Leftover, None]:
        # Every multipart upload under our prefix is ours; those of tus uploads still in
        # progress are in `keep` (they may wait for their next PATCH for hours).
        now = time.time()
        paginator = self.client.get_paginator("list_multipart_uploads")
        prefix = f"{self.prefix}/" if self.prefix else ""
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                upload_id, key = upload["UploadId"], upload["Key"]
                age = now - upload["Initiated"].timestamp()
                if upload_id in keep or age < older_than:
                    continue
                # a long upload started long ago may still be sending parts: its age is
                # that of its newest part
                age = min(age, await self._since_last_part(key, upload_id, now))
                if age < older_than:
                    continue
                yield Leftover(f"{key} (multipart upload {upload_id[:16]})", None, age,
                               f"{key}\n{upload_id}")

    async def _since_last_part(self, key: str, upload_id: str, now: float) -> float:
        newest = 0.0
        paginator = self.client.get_paginator("list_parts")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Key=key,
                                                 UploadId=upload_id):
                for part in page.get("Parts", []):
                    newest = max(newest, part["LastModified"].timestamp())
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise
            return 0.0  # finished or aborted meanwhile: not a leftover
        return now - newest if newest else float("inf")

    async def remove_leftover(self, leftover: Leftover) -> None:
        key, _, upload_id = leftover.ref.partition("\n")
        try:
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                      UploadId=upload_id)
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":  # finished or aborted meanwhile
                raise

    def object_key(self, key: str) -> str:
        """The S3 object key that holds `key`."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def write(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        obj_key = self.object_key(key)
        extra = _object_args(content_type, metadata)
        upload = MultipartUpload(self.client, self.bucket, obj_key, extra)
        put: asyncio.Future[Any] | None = None
        buf = bytearray()
        total = 0
        try:
            async for chunk in chunks:
                total += len(chunk)
                view = memoryview(chunk)
                while len(buf) + len(view) >= (
                        size := part_size_for(upload.part_count + 1, self.part_size)):
                    take = size - len(buf)
                    buf += view[:take]
                    view = view[take:]
                    # The buffer itself becomes the part body (no copy), so memory holds at
                    # most the part in flight plus the one being filled.
                    await upload.submit_part(buf)
                    buf = bytearray()
                buf += view
            if upload.part_count:
                if buf:
                    await upload.submit_part(buf)
                await upload.complete()
            else:
                put = asyncio.ensure_future(
                    self.client.put_object(Bucket=self.bucket, Key=obj_key, Body=buf, **extra)
                )
                await asyncio.shield(put)
        except BaseException:
            await run_shielded(self._undo_write(upload, put))
            raise
        return total

    async def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]:
        check_range(start, end)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        # No Range header for whole-object reads: S3 answers 416 to "bytes=0-" on an empty
        # object.
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            resp = await self.client.get_object(**args)
        except ClientError as exc:
            if _is_not_found(exc):
                raise StorageObjectNotFound(key) from None
            if error_code(exc) == "InvalidRange":
                # Starting at or past the end yields nothing, as reading a file at EOF does.
                return
            raise
        body = resp["Body"]
        async with body:
            while data := await body.read(chunk_size):
                yield data

    async def read_head(self, key: str, n: int) -> bytes:
        return await read_head_via(self, key, n)

    async def stat(self, key: str) -> ObjectInfo | None:
        head = await self._head(self.bucket, self.object_key(key))
        if head is None:
            return None
        return ObjectInfo(size=head["ContentLength"], content_type=head.get("ContentType"),
                          modified_at=head.get("LastModified"))

    async def missing(self, keys: Sequence[str]) -> set[str]:
        return await missing_via_stat(self, keys)  # S3 has no batch HEAD

    async def copy_from(
        self,
        source: Storage,
        src_key: str,
        dest_key: str,
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        independent: bool = False,  # an S3 copy always is
    ) -> None:
        if isinstance(source, S3Storage) and self._can_copy_server_side(source):
            await self._server_side_copy(source, src_key, dest_key, content_type, metadata)
            return
        await stream_copy(
            self, source, src_key, dest_key, content_type=content_type, metadata=metadata
        )

    async def delete(self, key: str) -> None:
        # DeleteObject already succeeds for missing keys.
        await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix, allow_empty=False)
        if not prefix.endswith("/"):
            raise ValueError("delete_prefix needs a prefix ending with '/'")
        count = 0
        async for keys in self._list_pages(self._full_prefix(prefix)):
            for i in range(0, len(keys), _DELETE_BATCH):
                batch = keys[i : i + _DELETE_BATCH]
                await self._delete_batch(batch)
                count += len(batch)
        return count

    async def list_keys(self, prefix: str = "") -> AsyncGenerator[str, None]:
        validate_prefix(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        async for keys in self._list_pages(self._full_prefix(prefix)):
            for k in keys:
                yield k[strip:]

    async def presigned_get_url(
        self,
        key: str,
        *,
        expires_in: int,
        filename: str | None = None,
        content_type: str | None = None,
        as_attachment: bool = False,
        method: str = "GET",
    ) -> str | None:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.object_key(key),
            "ResponseContentDisposition": content_disposition(filename, as_attachment),
        }
        if content_type is not None:
            params["ResponseContentType"] = content_type
        # the signature covers the method: a HEAD needs a URL of its own
        operation = "head_object" if method == "HEAD" else "get_object"
        url: str = await self.presign_client.generate_presigned_url(
            operation, Params=params, ExpiresIn=expires_in
        )
        return url

    async def presigned_post(self, key: str, *, max_size: int, expires_in: int
                             ) -> PresignedPost:
        """A browser-style POST policy for exactly this key and at most max_size bytes."""
        post: dict[str, Any] = await self.presign_client.generate_presigned_post(
            Bucket=self.bucket,
            Key=self.object_key(key),
            Conditions=post_policy_conditions(max_size),
            ExpiresIn=expires_in,
        )
        return PresignedPost(url=post["url"], fields=post["fields"])

    @contextlib.asynccontextmanager
    async def local_path(self, key: str) -> AsyncIterator[Path]:
        # a temporary download, removed afterwards
        fd, name = tempfile.mkstemp(prefix="stowage-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in self.read(key):
                    await asyncio.to_thread(f.write, chunk)
            yield path
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    def open_resumable(self, key: str, length: int, state: ResumableState) -> Resumable:
        from .s3_resumable import S3Resumable

        return S3Resumable(self, key, length, state)

    @property
    def placement(self) -> Placement:
        # the same bucket name on another endpoint is another bucket
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        return Placement(("s3", endpoint, self.bucket), PurePosixPath("/", self.prefix))

    async def ping(self) -> None:
        await self.client.head_bucket(Bucket=self.bucket)

    @property
    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        # the same bucket name on another endpoint is another bucket
        if endpoint and not endpoint.endswith(".amazonaws.com"):
            where += f" at {endpoint}"
        return where

    async def exists(self) -> bool:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise
        return True

    async def aclose(self) -> None:
        # The client belongs to whoever opened it (see open_s3_client).
        return None

    # -- internals -------------------------------------------------------------------------

    def _full_prefix(self, prefix: str) -> str:
        if not self.prefix:
            return prefix
        return f"{self.prefix}/{prefix}"

    def _can_copy_server_side(self, source: S3Storage) -> bool:
        return source.client is self.client or (
            source.client.meta.endpoint_url == self.client.meta.endpoint_url
        )

    async def _head(self, bucket: str, obj_key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = await self.client.head_object(Bucket=bucket, Key=obj_key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise
        return head

    async def _undo_write(self, upload: MultipartUpload, put: asyncio.Future[Any] | None) -> None:
        if put is not None and await settled_ok(put):
            # The caller is told the write failed, so it must not find the object either.
            await self.client.delete_object(Bucket=self.bucket, Key=upload.key)
        await upload.undo()

    async def _server_side_copy(
        self,
        source: S3Storage,
        src_key: str,
        dest_key: str,
        content_type: str | None,
        metadata: dict[str, str] | None,
    ) -> None:
        src = {"Bucket": source.bucket, "Key": source.object_key(src_key)}
        dest = self.object_key(dest_key)
        head = await self._head(src["Bucket"], src["Key"])
        if head is None:
            raise StorageObjectNotFound(src_key)
        replace = content_type is not None or metadata is not None
        # Whatever the caller does not override is carried over from the source.
        extra = _object_args(
            content_type if content_type is not None else head.get("ContentType"),
            metadata if metadata is not None else head.get("Metadata", {}),
        )
        if src == {"Bucket": self.bucket, "Key": dest} and not replace:
            # S3 rejects copying an object onto itself unchanged; it already is the copy.
            return
        if head["ContentLength"] > self.multipart_copy_threshold:
            await self._multipart_copy(src, dest, head["ContentLength"], extra)
        else:
            directive = {"MetadataDirective": "REPLACE", **extra} if replace else {}
            await self.client.copy_object(Bucket=self.bucket, Key=dest, CopySource=src, **directive)

    async def _multipart_copy(
        self, src: dict[str, str], dest: str, size: int, extra: dict[str, Any]
    ) -> None:
        part_size = max(self.copy_part_size, math.ceil(size / MAX_PARTS), MIN_PART_SIZE)
        upload = MultipartUpload(self.client, self.bucket, dest, extra)
        limit = asyncio.Semaphore(self.copy_concurrency)

        async def copy_part(number: int, first: int, last: int) -> None:
            async with limit:
                await upload.copy_part(number, src, first, last)

        try:
            await upload.start()
            try:
                # TaskGroup: one failed part cancels the others before we abort.
                async with asyncio.TaskGroup() as tg:
                    for number, first in enumerate(range(0, size, part_size), start=1):
                        last = min(first + part_size, size) - 1
                        tg.create_task(copy_part(number, first, last))
            except BaseExceptionGroup as group:
                # Callers expect the same errors as from a single copy_object, not a group.
                raise group.exceptions[0] from group
            await upload.complete()
        except BaseException:
            await run_shielded(upload.undo())
            raise

    async def _list_pages(self, full_prefix: str) -> AsyncIterator[list[str]]:
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            keys = [obj["Key"] for obj in page.get("Contents", [])]
            if keys:
                yield keys

    async def _delete_batch(self, keys: list[str]) -> None:
        resp = await self.client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise S3StorageError(
                f"could not delete {len(errors)} object(s) from {self.bucket!r}, e.g. "
                f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
            )


def _object_args(content_type: str | None, metadata: dict[str, str] | None) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if content_type is not None:
        args["ContentType"] = content_type
    if metadata is not None:
        args["Metadata"] = metadata
    return args


def _is_not_found(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in _NOT_FOUND_CODES or (
        status == 404 and error_code(exc) != "NoSuchBucket"
    )


def post_policy_conditions(max_size: int) -> list[Any]:
    # the key and bucket conditions are added by botocore from Bucket and Key
    return [["content-length-range", 0, max_size]]
