"""Storage fixtures: a moto S3 server for the session and fresh storages per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from app.storage import FilesystemStorage, S3Storage, Storage

MakeStorage = Callable[..., Awaitable[Storage]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_storage(tmp_path: Path, s3_client: Any) -> AsyncIterator[MakeStorage]:
    """Factory: `await make_storage("file" | "s3", prefix="")` gives an empty storage.

    Each call gets its own directory or bucket; buckets are emptied and dropped afterwards.
    """
    buckets: list[str] = []

    async def make(kind: str, prefix: str = "") -> Storage:
        name = uuid.uuid4().hex[:12]
        if kind == "file":
            # Not created: storages must create their root on first use.
            return FilesystemStorage(tmp_path / f"root-{name}")
        if kind == "s3":
            bucket = f"test-{name}"
            await s3_client.create_bucket(Bucket=bucket)
            buckets.append(bucket)
            return S3Storage(s3_client, bucket, prefix)
        raise ValueError(kind)

    yield make
    for bucket in buckets:
        await _drop_bucket(s3_client, bucket)


async def _drop_bucket(client: Any, bucket: str) -> None:
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    for up in uploads.get("Uploads", []):
        await client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    paginator = client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            await client.delete_object(Bucket=bucket, Key=obj["Key"])
    await client.delete_bucket(Bucket=bucket)


@pytest.fixture(params=["file", "s3"])
def storage_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest_asyncio.fixture(loop_scope="session")
async def storage(make_storage: MakeStorage, storage_kind: str) -> Storage:
    """A fresh, empty storage of each kind in turn."""
    return await make_storage(storage_kind)


@pytest_asyncio.fixture(loop_scope="session")
async def other_storage(make_storage: MakeStorage, storage_kind: str) -> Storage:
    """A second storage of the same kind as `storage` (another dir / another bucket).

    The S3 one has a key prefix so prefix mapping is exercised too.
    """
    return await make_storage(storage_kind, prefix="nested/prefix")


@pytest_asyncio.fixture(loop_scope="session")
async def fs_storage(make_storage: MakeStorage) -> Storage:
    return await make_storage("file")


@pytest_asyncio.fixture(loop_scope="session")
async def s3_storage(make_storage: MakeStorage) -> Storage:
    return await make_storage("s3")
