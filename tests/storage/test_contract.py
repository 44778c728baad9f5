"""The Storage contract, run against both the filesystem and the S3 (moto) backend."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import random
import time
from collections.abc import AsyncIterator, Iterable
from functools import cache
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from app.storage import (
    MARKER_KEY,
    FilesystemStorage,
    MarkerUnreadable,
    ObjectInfo,
    S3Storage,
    Storage,
    StorageObjectNotFound,
    StorageURL,
    content_disposition,
    has_data,
    is_reserved,
    open_read,
    read_marker,
    storage_from_url,
    write_marker,
)
from app.storage import filesystem as fs_module

MiB = 1024 * 1024


@cache
def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunked(data: bytes, chunk: int = 1_000_003) -> AsyncIterator[bytes]:
    # An odd chunk size so chunk boundaries never line up with part or buffer sizes.
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]


async def aiter_of(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def read_all(storage: Storage, key: str, *args: Any, **kwargs: Any) -> bytes:
    return b"".join([c async for c in storage.read(key, *args, **kwargs)])


async def all_keys(storage: Storage, prefix: str = "") -> list[str]:
    return sorted([k async for k in storage.list_keys(prefix)])


async def assert_nothing_left(storage: Storage) -> None:
    """No object, no temp file, no pending multipart upload anywhere in `storage`."""
    assert await all_keys(storage) == []
    if isinstance(storage, FilesystemStorage):
        leftovers = [p for p in storage.root.rglob("*") if not p.is_dir()]
        assert leftovers == []
    else:
        assert isinstance(storage, S3Storage)
        uploads = await storage.client.list_multipart_uploads(Bucket=storage.bucket)
        assert uploads.get("Uploads", []) == []
        objects = await storage.client.list_objects_v2(Bucket=storage.bucket)
        assert objects.get("Contents", []) == []


async def assert_in_progress(storage: Storage) -> None:
    """Something is mid-write, so the cleanup checks that follow are meaningful."""
    if isinstance(storage, FilesystemStorage):
        assert [p for p in storage.root.rglob("*.part")]
    else:
        assert isinstance(storage, S3Storage)
        uploads = await storage.client.list_multipart_uploads(Bucket=storage.bucket)
        assert len(uploads.get("Uploads", [])) == 1


# -- write / read --------------------------------------------------------------------------


async def test_small_roundtrip(storage: Storage) -> None:
    n = await storage.write(
        "app/att/original.txt", aiter_of([b"hello ", b"world"]), content_type="text/plain"
    )
    assert n == 11
    assert await read_all(storage, "app/att/original.txt") == b"hello world"
    info = await storage.stat("app/att/original.txt")
    assert info is not None and info.size == 11
    if storage.kind == "s3":
        assert info.content_type == "text/plain"


async def test_empty_object(storage: Storage) -> None:
    assert await storage.write("empty", aiter_of([])) == 0
    assert await read_all(storage, "empty") == b""
    assert await storage.read_head("empty", 10) == b""
    info = await storage.stat("empty")
    assert info is not None and info.modified_at is not None
    assert dataclasses.replace(info, modified_at=None) == ObjectInfo(
        size=0, content_type=storage_ct(storage))


def storage_ct(storage: Storage) -> str | None:
    # S3 defaults a missing Content-Type; the filesystem keeps none.
    return "binary/octet-stream" if storage.kind == "s3" else None


async def test_large_roundtrip(storage: Storage) -> None:
    data = blob(20 * MiB + 12345)
    assert await storage.write("big/object.bin", chunked(data)) == len(data)
    assert await read_all(storage, "big/object.bin") == data
    info = await storage.stat("big/object.bin")
    assert info is not None and info.size == len(data)
    if isinstance(storage, S3Storage):
        head = await storage.client.head_object(Bucket=storage.bucket, Key="big/object.bin")
        assert head["ETag"].strip('"').endswith("-3")  # 8 + 8 + 4 MiB parts


async def test_one_huge_chunk(storage: Storage) -> None:
    data = blob(9 * MiB, seed=3)
    assert await storage.write("huge-chunk", aiter_of([data])) == len(data)
    assert await read_all(storage, "huge-chunk") == data


async def test_ranged_reads(storage: Storage) -> None:
    data = blob(1000, seed=1)
    await storage.write("r", aiter_of([data]))
    assert await read_all(storage, "r", 100) == data[100:]
    assert await read_all(storage, "r", 100, 199) == data[100:200]
    assert await read_all(storage, "r", 999) == data[999:]
    assert await read_all(storage, "r", 999, 999) == data[999:]
    assert await read_all(storage, "r", 0, 0) == data[:1]
    assert await read_all(storage, "r", 990, 5000) == data[990:]
    assert await read_all(storage, "r", 1000) == b""
    chunks = [c async for c in storage.read("r", 10, 509, chunk_size=100)]
    assert b"".join(chunks) == data[10:510]
    assert all(len(c) <= 100 for c in chunks)


async def test_bad_ranges(storage: Storage) -> None:
    await storage.write("r", aiter_of([b"abc"]))
    with pytest.raises(ValueError):
        await read_all(storage, "r", -1)
    with pytest.raises(ValueError):
        await read_all(storage, "r", 2, 1)


async def test_read_head(storage: Storage) -> None:
    data = blob(5000, seed=2)
    await storage.write("h", chunked(data, 1000))
    assert await storage.read_head("h", 16) == data[:16]
    assert await storage.read_head("h", 10_000) == data
    assert await storage.read_head("h", 0) == b""


async def test_missing_object(storage: Storage) -> None:
    assert await storage.stat("nope/nothing") is None
    with pytest.raises(StorageObjectNotFound):
        await read_all(storage, "nope/nothing")
    with pytest.raises(StorageObjectNotFound):
        await read_all(storage, "nope/nothing", 5, 10)
    with pytest.raises(StorageObjectNotFound):
        await storage.read_head("nope/nothing", 10)
    with pytest.raises(StorageObjectNotFound):
        await storage.read_head("nope/nothing", 0)


async def test_open_read_opens_before_returning(storage: Storage) -> None:
    """A download commits to a 200 once it has the reader: a missing object must be known
    before that, and one deleted after it must still read in full."""
    with pytest.raises(StorageObjectNotFound):
        await open_read(storage, "nope/nothing")
    data = blob(3 * MiB, seed=5)
    await storage.write("o/pen", chunked(data))
    await storage.write("o/empty", aiter_of([]))
    whole, part = await open_read(storage, "o/pen"), await open_read(storage, "o/pen", 10, 19)
    await storage.delete("o/pen")
    assert b"".join([c async for c in whole]) == data
    assert b"".join([c async for c in part]) == data[10:20]
    assert [c async for c in await open_read(storage, "o/empty")] == []


async def test_directory_like_key_is_not_an_object(storage: Storage) -> None:
    await storage.write("dir/file", aiter_of([b"x"]))
    assert await storage.stat("dir") is None
    with pytest.raises(StorageObjectNotFound):
        await read_all(storage, "dir")


async def test_overwrite(storage: Storage) -> None:
    await storage.write("k", aiter_of([b"first version"]), content_type="text/plain")
    await storage.write("k", aiter_of([b"v2"]), content_type="application/json")
    assert await read_all(storage, "k") == b"v2"
    info = await storage.stat("k")
    assert info is not None and info.size == 2
    if storage.kind == "s3":
        assert info.content_type == "application/json"
    assert await all_keys(storage) == ["k"]


# -- failed and cancelled writes -----------------------------------------------------------


class Boom(Exception):
    pass


async def failing_after(data: bytes) -> AsyncIterator[bytes]:
    async for chunk in chunked(data):
        yield chunk
    raise Boom("client went away")


@pytest.mark.parametrize("size", [1000, 10 * MiB], ids=["small", "multipart"])
async def test_failed_write_leaves_nothing(storage: Storage, size: int) -> None:
    with pytest.raises(Boom):
        await storage.write("a/b/c.bin", failing_after(blob(size)))
    assert await storage.stat("a/b/c.bin") is None
    await assert_nothing_left(storage)


async def test_failed_overwrite_keeps_previous_object(storage: Storage) -> None:
    await storage.write("k", aiter_of([b"old"]))
    with pytest.raises(Boom):
        await storage.write("k", failing_after(blob(10 * MiB)))
    assert await read_all(storage, "k") == b"old"
    assert await all_keys(storage) == ["k"]


@pytest.mark.parametrize("size", [1000, 10 * MiB], ids=["small", "multipart"])
async def test_cancelled_write_leaves_nothing(storage: Storage, size: int) -> None:
    blocked = asyncio.Event()

    async def stalls_after(data: bytes) -> AsyncIterator[bytes]:
        async for chunk in chunked(data):
            yield chunk
        blocked.set()
        await asyncio.Event().wait()  # the client stops sending, forever
        yield b"never"

    task = asyncio.create_task(storage.write("a/b/c.bin", stalls_after(blob(size))))
    await asyncio.wait_for(blocked.wait(), 10)
    if size > 8 * MiB or storage.kind == "file":
        await assert_in_progress(storage)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_nothing_left(storage)


async def test_cancel_during_commit_leaves_nothing(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancellation that lands while the object is being made visible still undoes it."""
    committing = asyncio.Event()
    committed = asyncio.Event()
    loop = asyncio.get_running_loop()
    if isinstance(storage, S3Storage):
        real_put = storage.client.put_object

        async def slow_put(**kwargs: Any) -> Any:
            committing.set()
            try:
                await asyncio.sleep(0.2)
                return await real_put(**kwargs)
            finally:
                loop.call_soon_threadsafe(committed.set)

        monkeypatch.setattr(storage.client, "put_object", slow_put)
    else:
        real_commit = fs_module._AtomicFile._commit

        def slow_commit(self: Any, *args: Any) -> None:
            loop.call_soon_threadsafe(committing.set)
            try:
                time.sleep(0.2)
                real_commit(self, *args)
            finally:
                loop.call_soon_threadsafe(committed.set)

        monkeypatch.setattr(fs_module._AtomicFile, "_commit", slow_commit)

    task = asyncio.create_task(storage.write("k", aiter_of([b"data"])))
    await asyncio.wait_for(committing.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The commit itself ran to completion (it cannot be interrupted), and was undone.
    await asyncio.wait_for(committed.wait(), 10)
    await assert_nothing_left(storage)


async def test_s3_failed_part_upload_aborts(
    s3_storage: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_upload_part = s3_storage.client.upload_part
    calls = 0

    async def flaky_upload_part(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "UploadPart")
        return await real_upload_part(**kwargs)

    monkeypatch.setattr(s3_storage.client, "upload_part", flaky_upload_part)
    with pytest.raises(ClientError):
        await s3_storage.write("k", chunked(blob(30 * MiB)))
    await assert_nothing_left(s3_storage)


# -- copy ----------------------------------------------------------------------------------


async def test_copy_within_storage(storage: Storage) -> None:
    data = blob(3000, seed=4)
    await storage.write("src/a.png", aiter_of([data]), content_type="image/png")
    await storage.copy_from(storage, "src/a.png", "dest/x/a.png")
    assert await read_all(storage, "dest/x/a.png") == data
    assert await read_all(storage, "src/a.png") == data
    info = await storage.stat("dest/x/a.png")
    assert info is not None and info.size == len(data)
    if storage.kind == "s3":
        assert info.content_type == "image/png"
    assert await all_keys(storage) == ["dest/x/a.png", "src/a.png"]


async def test_copy_across_storages(storage: Storage, other_storage: Storage) -> None:
    data = blob(2 * MiB, seed=5)
    await storage.write("cache/obj", chunked(data), content_type="video/mp4")
    await other_storage.copy_from(storage, "cache/obj", "store/obj")
    assert await read_all(other_storage, "store/obj") == data
    assert await all_keys(other_storage) == ["store/obj"]
    if isinstance(other_storage, S3Storage):
        head = await other_storage.client.head_object(
            Bucket=other_storage.bucket, Key="nested/prefix/store/obj"
        )
        assert head["ContentType"] == "video/mp4"


async def test_copy_overrides_content_type_and_metadata(
    storage: Storage, other_storage: Storage
) -> None:
    await storage.write("src", aiter_of([b"{}"]), content_type="text/plain", metadata={"a": "1"})
    await other_storage.copy_from(
        storage, "src", "dest", content_type="application/json", metadata={"b": "2"}
    )
    assert await read_all(other_storage, "dest") == b"{}"
    if isinstance(other_storage, S3Storage):
        head = await other_storage.client.head_object(
            Bucket=other_storage.bucket, Key=other_storage.object_key("dest")
        )
        assert head["ContentType"] == "application/json"
        assert head["Metadata"] == {"b": "2"}


async def test_copy_overwrites_destination(storage: Storage, other_storage: Storage) -> None:
    await other_storage.write("dest", aiter_of([b"stale"]))
    await storage.write("src", aiter_of([b"fresh"]))
    await other_storage.copy_from(storage, "src", "dest")
    await other_storage.copy_from(storage, "src", "dest")
    assert await read_all(other_storage, "dest") == b"fresh"
    assert await all_keys(other_storage) == ["dest"]


async def test_copy_onto_itself_is_a_no_op(storage: Storage) -> None:
    await storage.write("k", aiter_of([b"same"]), content_type="text/plain")
    await storage.copy_from(storage, "k", "k")
    assert await read_all(storage, "k") == b"same"
    assert await all_keys(storage) == ["k"]
    await assert_no_temp_files(storage)


async def assert_no_temp_files(storage: Storage) -> None:
    if isinstance(storage, FilesystemStorage):
        assert list(storage.root.rglob("*.part")) == []


async def test_copy_missing_source(storage: Storage, other_storage: Storage) -> None:
    with pytest.raises(StorageObjectNotFound):
        await other_storage.copy_from(storage, "missing", "dest")
    with pytest.raises(StorageObjectNotFound):
        await storage.copy_from(storage, "missing", "dest")
    assert await other_storage.stat("dest") is None
    assert await storage.stat("dest") is None


@pytest.mark.parametrize("direction", ["fs->s3", "s3->fs"])
async def test_copy_between_backends_streams(
    fs_storage: Storage, s3_storage: Storage, direction: str
) -> None:
    src, dest = (fs_storage, s3_storage) if direction == "fs->s3" else (s3_storage, fs_storage)
    data = blob(9 * MiB, seed=6)
    await src.write("x/y", chunked(data), content_type="image/jpeg")
    await dest.copy_from(src, "x/y", "z/y", content_type="image/jpeg")
    assert await read_all(dest, "z/y") == data
    info = await dest.stat("z/y")
    assert info is not None and info.size == len(data)
    if dest.kind == "s3":
        assert info.content_type == "image/jpeg"


async def test_s3_to_fs_copy_keeps_nothing_on_failure(
    fs_storage: FilesystemStorage, s3_storage: S3Storage
) -> None:
    with pytest.raises(StorageObjectNotFound):
        await fs_storage.copy_from(s3_storage, "missing", "dest")
    await assert_nothing_left(fs_storage)


async def test_fs_copy_uses_hard_link(make_storage: Any) -> None:
    a = await make_storage("file")
    b = await make_storage("file")
    await a.write("src", aiter_of([b"linked"]))
    await b.copy_from(a, "src", "dest")
    assert os.stat(a.path_for("src")).st_ino == os.stat(b.path_for("dest")).st_ino
    # Writes replace files rather than modifying them, so the copy is unaffected.
    await a.write("src", aiter_of([b"changed"]))
    assert await read_all(b, "dest") == b"linked"


async def test_fs_copy_falls_back_when_linking_fails(
    make_storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await make_storage("file")
    b = await make_storage("file")
    data = blob(3 * MiB, seed=7)
    await a.write("src", chunked(data))

    def no_link(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    await b.copy_from(a, "src", "dest")
    assert await read_all(b, "dest") == data
    assert os.stat(a.path_for("src")).st_ino != os.stat(b.path_for("dest")).st_ino
    await assert_no_temp_files(b)


async def test_s3_multipart_copy(s3_storage: S3Storage, make_storage: Any) -> None:
    dest: S3Storage = await make_storage("s3", prefix="p")
    dest.multipart_copy_threshold = 5 * MiB
    dest.copy_part_size = 5 * MiB
    data = blob(12 * MiB, seed=8)
    await s3_storage.write("src", chunked(data), content_type="image/png", metadata={"k": "v"})

    await dest.copy_from(s3_storage, "src", "dest")
    assert await read_all(dest, "dest") == data
    head = await dest.client.head_object(Bucket=dest.bucket, Key="p/dest")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"k": "v"}
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB

    await dest.copy_from(s3_storage, "src", "dest2", content_type="image/webp")
    head = await dest.client.head_object(Bucket=dest.bucket, Key="p/dest2")
    assert head["ContentType"] == "image/webp"
    assert await read_all(dest, "dest2") == data


async def test_s3_failed_multipart_copy_aborts(
    s3_storage: S3Storage, make_storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest: S3Storage = await make_storage("s3")
    dest.multipart_copy_threshold = 5 * MiB
    dest.copy_part_size = 5 * MiB
    await s3_storage.write("src", chunked(blob(12 * MiB)))
    real = dest.client.upload_part_copy

    async def flaky(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "x"}}, "UploadPartCopy")
        return await real(**kwargs)

    monkeypatch.setattr(dest.client, "upload_part_copy", flaky)
    with pytest.raises(ClientError, match="SlowDown"):
        await dest.copy_from(s3_storage, "src", "dest")
    await assert_nothing_left(dest)


# -- delete / list -------------------------------------------------------------------------


async def test_delete_is_idempotent(storage: Storage) -> None:
    await storage.write("a/b", aiter_of([b"x"]))
    await storage.delete("a/b")
    assert await storage.stat("a/b") is None
    await storage.delete("a/b")
    await storage.delete("never/existed")
    await storage.delete("a")  # only a "directory" on the filesystem
    assert await all_keys(storage) == []


async def populate(storage: Storage, keys: Iterable[str]) -> None:
    for key in keys:
        await storage.write(key, aiter_of([key.encode()]))


async def test_delete_prefix(storage: Storage) -> None:
    await populate(storage, ["a/1", "a/2", "a/b/3", "ab/4", "b/5"])
    assert await storage.delete_prefix("a/") == 3
    assert await all_keys(storage) == ["ab/4", "b/5"]
    assert await storage.delete_prefix("a/") == 0
    assert await storage.delete_prefix("missing/") == 0
    assert await read_all(storage, "ab/4") == b"ab/4"


async def test_delete_prefix_many(storage: Storage) -> None:
    await asyncio.gather(*(storage.write(f"p/{i:04}", aiter_of([b"x"])) for i in range(1100)))
    await storage.write("q/keep", aiter_of([b"x"]))
    assert await storage.delete_prefix("p/") == 1100
    assert await all_keys(storage) == ["q/keep"]


async def test_delete_prefix_needs_trailing_slash(storage: Storage) -> None:
    for bad in ["a", "", "/", "../"]:
        with pytest.raises(ValueError):
            await storage.delete_prefix(bad)


async def test_list_keys(storage: Storage) -> None:
    assert await all_keys(storage) == []
    await populate(storage, ["a/1", "a/b/3", "ab/4", "b/5"])
    assert await all_keys(storage) == ["a/1", "a/b/3", "ab/4", "b/5"]
    assert await all_keys(storage, "a/") == ["a/1", "a/b/3"]
    assert await all_keys(storage, "a") == ["a/1", "a/b/3", "ab/4"]
    assert await all_keys(storage, "a/b/") == ["a/b/3"]
    assert await all_keys(storage, "zzz/") == []


async def test_list_keys_with_s3_prefix(other_storage: Storage) -> None:
    await populate(other_storage, ["x/1", "y/2"])
    assert await all_keys(other_storage) == ["x/1", "y/2"]
    assert await all_keys(other_storage, "x/") == ["x/1"]
    if isinstance(other_storage, S3Storage):
        raw = await other_storage.client.list_objects_v2(Bucket=other_storage.bucket)
        assert sorted(o["Key"] for o in raw["Contents"]) == [
            "nested/prefix/x/1",
            "nested/prefix/y/2",
        ]
        assert await other_storage.delete_prefix("x/") == 1
        assert await all_keys(other_storage) == ["y/2"]


async def test_fs_temp_files_are_invisible(fs_storage: FilesystemStorage) -> None:
    await fs_storage.write("a/real", aiter_of([b"x"]))
    (fs_storage.root / "a" / ".real.deadbeef.part").write_bytes(b"partial")
    assert await all_keys(fs_storage) == ["a/real"]
    assert await fs_storage.delete_prefix("a/") == 1
    assert not (fs_storage.root / "a").exists()


# -- keys, urls, misc ----------------------------------------------------------------------

BAD_KEYS = ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".", "x\\y", "a\x00b", ".f.1.part"]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_rejected(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        await storage.write(key, aiter_of([b"x"]))
    with pytest.raises(ValueError):
        await read_all(storage, key)
    with pytest.raises(ValueError):
        await storage.stat(key)
    with pytest.raises(ValueError):
        await storage.delete(key)
    with pytest.raises(ValueError):
        await storage.copy_from(storage, key, "ok")
    with pytest.raises(ValueError):
        await storage.presigned_get_url(key, expires_in=60)
    await assert_nothing_left(storage)


async def test_presigned_get_url(storage: Storage) -> None:
    data = blob(4096, seed=9)
    await storage.write("files/report", aiter_of([data]), content_type="application/pdf")
    url = await storage.presigned_get_url(
        "files/report",
        expires_in=300,
        filename="Résumé «final».pdf",
        content_type="application/pdf",
        as_attachment=True,
    )
    if storage.kind == "file":
        assert url is None
        return
    assert url is not None
    async with httpx.AsyncClient() as http:
        resp = await http.get(url)
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["content-type"] == "application/pdf"
    assert resp.headers["content-disposition"] == content_disposition("Résumé «final».pdf", True)


async def test_ping(storage: Storage) -> None:
    await storage.ping()
    if isinstance(storage, FilesystemStorage):
        assert storage.root.is_dir()


async def test_ping_missing_bucket(s3_client: Any) -> None:
    with pytest.raises(ClientError):
        await S3Storage(s3_client, "no-such-bucket-here").ping()


async def test_location_and_exists(storage: Storage, s3_client: Any) -> None:
    if isinstance(storage, FilesystemStorage):
        assert storage.location == str(storage.root)
        assert not await storage.exists()  # a storage's root is made on first use only
        await storage.ping()
    else:
        assert isinstance(storage, S3Storage)
        assert storage.location.startswith(f"s3://{storage.bucket} at http://127.0.0.1:")
        assert not await S3Storage(s3_client, "no-such-bucket-here").exists()
    assert await storage.exists()


async def test_location_of_an_s3_prefix_and_of_a_relative_folder(other_storage: Storage,
                                                                  tmp_path: Any,
                                                                  monkeypatch: Any) -> None:
    if isinstance(other_storage, S3Storage):
        assert other_storage.location.startswith(f"s3://{other_storage.bucket}/nested/prefix ")
    monkeypatch.chdir(tmp_path)
    assert storage_from_url("file://./var/store").location == str(tmp_path / "var" / "store")


async def test_identity_marker(storage: Storage) -> None:
    assert await read_marker(storage) is None and not await has_data(storage)
    made = await write_marker(storage, "store")
    assert made.role == "store" and made.created_at
    assert await read_marker(storage) == made
    # the marker is no data, and no key of an attachment: fsck skips it
    assert [k async for k in storage.list_keys()] == [MARKER_KEY] and is_reserved(MARKER_KEY)
    assert not await has_data(storage)
    await storage.write("_doctor/probe-1", chunked(b"probe"))
    assert not await has_data(storage)
    await storage.write("app/id/original.txt", chunked(b"data"))
    assert await has_data(storage)
    await storage.write(MARKER_KEY, chunked(b"not json"))
    with pytest.raises(MarkerUnreadable, match=MARKER_KEY):
        await read_marker(storage)


async def test_aclose(storage: Storage) -> None:
    await storage.aclose()


def test_content_disposition() -> None:
    assert content_disposition(None, False) == "inline"
    assert content_disposition(None, True) == "attachment"
    assert content_disposition("a.txt", True) == 'attachment; filename="a.txt"'
    assert content_disposition("a.txt", False) == 'inline; filename="a.txt"'
    assert content_disposition("Résumé.pdf", True) == (
        "attachment; filename=\"Resume.pdf\"; filename*=UTF-8''R%C3%A9sum%C3%A9.pdf"
    )
    assert content_disposition("文件.pdf", False) == (
        "inline; filename=\"__.pdf\"; filename*=UTF-8''%E6%96%87%E4%BB%B6.pdf"
    )
    assert content_disposition('say "hi"\r\n.txt', True) == (
        "attachment; filename=\"say _hi___.txt\"; filename*=UTF-8''say%20%22hi%22__.txt"
    )
    assert content_disposition("../etc/passwd", True) == 'attachment; filename=".._etc_passwd"'


def test_parse_storage_url() -> None:
    def parse(url: str) -> tuple[str, str, str]:
        u = StorageURL.parse(url)
        return u.scheme, u.location, u.prefix

    assert parse("file://./var/cache") == ("file", "./var/cache", "")
    assert parse("file:///abs/path") == ("file", "/abs/path", "")
    assert parse("s3://bucket") == ("s3", "bucket", "")
    assert parse("s3://bucket/") == ("s3", "bucket", "")
    assert parse("s3://bucket/some/prefix/") == ("s3", "bucket", "some/prefix")
    assert str(StorageURL.parse("s3://bucket/some/prefix/")) == "s3://bucket/some/prefix"
    for bad in ["", "file://", "s3://", "s3:///x", "http://x", "s3://b/a/../c", "/var/x"]:
        with pytest.raises(ValueError):
            StorageURL.parse(bad)


def test_storage_from_url(tmp_path: Any) -> None:
    fs = storage_from_url(f"file://{tmp_path}/store")
    assert isinstance(fs, FilesystemStorage) and fs.root == tmp_path / "store"
    rel = storage_from_url("file://./var/cache")
    assert isinstance(rel, FilesystemStorage) and rel.root.is_absolute()
    with pytest.raises(ValueError, match="S3 client"):
        storage_from_url("s3://bucket/prefix")
    client = object()
    s3 = storage_from_url("s3://bucket/prefix", s3_client=client)
    assert isinstance(s3, S3Storage)
    assert (s3.client, s3.bucket, s3.prefix) == (client, "bucket", "prefix")
    assert s3.object_key("a/b") == "prefix/a/b"
