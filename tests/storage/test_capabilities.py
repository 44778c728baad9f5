"""The storage capabilities beyond plain objects, run against both backends: what callers
(tus, fsck, derivatives, presigned uploads) use instead of knowing which backend they have."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.storage import (
    PresignedPost,
    ResumableDataLost,
    ResumableState,
    Storage,
    StorageObjectNotFound,
    file_resumable,
)
from tests.storage.conftest import MakeStorage
from tests.storage.test_contract import (
    aiter_of,
    all_keys,
    assert_nothing_left,
    blob,
    chunked,
    read_all,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

MiB = 1024 * 1024
KEY = "app/upload/tus"


class Records:
    """The caller's side of a resumable upload: the durable offset and state, as a tus row
    keeps them."""

    def __init__(self) -> None:
        self.offset = 0
        self.state = ResumableState()
        self.offsets: list[int] = []
        self.fail_at: int | None = None  # record refuses this offset (a lost lease)

    async def __call__(self, offset: int, state: ResumableState) -> None:
        if offset == self.fail_at:
            raise PermissionError("the lease was lost")
        self.offset, self.state = offset, state
        self.offsets.append(offset)

    async def write(self, storage: Storage, length: int, data: bytes, **kw: Any) -> int:
        """One write_at from the recorded offset, on a freshly opened upload (as another
        request, another process, would)."""
        upload = storage.open_resumable(KEY, length, self.state)
        return await upload.write_at(self.offset, chunked(data), record=self, **kw)


async def finish(storage: Storage, rec: Records, length: int) -> None:
    rec.state = await storage.open_resumable(KEY, length, rec.state).finish()


# -- object info, placement -------------------------------------------------------------------

async def test_stat_says_when_an_object_was_written(storage: Storage) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    await storage.write("a/b", aiter_of([b"x"]))
    info = await storage.stat("a/b")
    assert info is not None and info.modified_at is not None
    assert before <= info.modified_at <= datetime.now(UTC) + timedelta(seconds=5)


async def test_placement_tells_same_nested_and_apart(make_storage: MakeStorage,
                                                     storage_kind: str) -> None:
    outer = await make_storage(storage_kind)
    apart = await make_storage(storage_kind)
    assert outer.placement.prefix_of(outer.placement) == ""
    assert outer.placement.prefix_of(apart.placement) is None
    inner = _inside(outer, "sub/dir")
    assert outer.placement.prefix_of(inner.placement) == "sub/dir/"
    assert inner.placement.prefix_of(outer.placement) is None


def _inside(storage: Storage, sub: str) -> Storage:
    """A storage whose keys live under `sub/` of `storage`'s."""
    from app.storage import FilesystemStorage, S3Storage

    if isinstance(storage, FilesystemStorage):
        return FilesystemStorage(storage.root / sub)
    assert isinstance(storage, S3Storage)
    return S3Storage(storage.client, storage.bucket, sub)


# -- local_path ---------------------------------------------------------------------------------

async def test_local_path_holds_the_object(storage: Storage) -> None:
    data = blob(3 * MiB + 7)
    await storage.write("a/pic", chunked(data))
    async with storage.local_path("a/pic") as path:
        assert await asyncio.to_thread(path.read_bytes) == data
    assert await read_all(storage, "a/pic") == data  # a temporary copy went, not the object


async def test_local_path_of_a_missing_object(storage: Storage) -> None:
    with pytest.raises(StorageObjectNotFound):
        async with storage.local_path("a/missing"):
            pass


async def test_a_temporary_local_copy_is_removed(storage: Storage) -> None:
    await storage.write("a/pic", aiter_of([b"pixels"]))
    async with storage.local_path("a/pic") as path:
        held = Path(path)
    # the filesystem's is the file itself, S3's a download
    assert await asyncio.to_thread(held.exists) == (storage.kind == "file")


# -- direct upload ------------------------------------------------------------------------------

async def test_direct_upload_where_the_storage_offers_it(storage: Storage) -> None:
    if not storage.direct_upload:
        with pytest.raises(NotImplementedError):
            await storage.presigned_post("a/direct", max_size=10, expires_in=60)
        return
    post = await storage.presigned_post("a/direct", max_size=10, expires_in=60)
    assert isinstance(post, PresignedPost) and post.fields["key"].endswith("a/direct")
    async with httpx.AsyncClient() as http:
        r = await http.post(post.url, data=post.fields, files={"file": ("f", b"0123456789")})
    assert r.status_code in (200, 201, 204), r.text
    assert await read_all(storage, "a/direct") == b"0123456789"


# -- resumable uploads --------------------------------------------------------------------------

async def test_resumable_in_one_write(storage: Storage) -> None:
    data = blob(2 * MiB + 5)
    rec = Records()
    assert await rec.write(storage, len(data), data) == len(data)
    assert rec.offset == len(data)
    await finish(storage, rec, len(data))
    assert await read_all(storage, KEY) == data
    assert rec.state.handle is None


@pytest.mark.parametrize("pieces", [[6, 3, 2], [1, 1, 1, 1, 1, 1, 5], [11]])
async def test_resumable_in_pieces_across_processes(storage: Storage, pieces: list[int]) -> None:
    """Piece sizes in MiB: across S3's 5 MiB parts, below them (tails merged), one of all."""
    data = blob(sum(pieces) * MiB + 3)
    sizes = [p * MiB for p in pieces]
    sizes[-1] += 3
    rec = Records()
    pos = 0
    for size in sizes:
        assert await rec.write(storage, len(data), data[pos:pos + size]) == pos + size
        pos += size
        assert rec.offset == pos
    await finish(storage, rec, len(data))
    assert await read_all(storage, KEY) == data
    assert await all_keys(storage) == [KEY]  # no tail left over


async def test_resumable_parts_are_whole_and_the_rest_waits_in_a_tail(s3_storage: Storage
                                                                      ) -> None:
    rec = Records()
    await rec.write(s3_storage, 20 * MiB, blob(6 * MiB))
    assert [p["Size"] for p in rec.state.parts] == [5 * MiB]
    assert rec.state.tail_size == MiB and rec.state.tail_key == f"{KEY}-tail-{6 * MiB}"
    assert rec.state.handle is not None
    # the multipart upload in progress is no leftover while its handle is kept
    found = [x async for x in s3_storage.list_leftovers(0.0, keep=frozenset())]
    kept = [x async for x in s3_storage.list_leftovers(0.0, keep=frozenset({rec.state.handle}))]
    assert len(found) == 1 and kept == []


async def test_finish_again_finds_it_done(storage: Storage) -> None:
    data = blob(7 * MiB)
    rec = Records()
    await rec.write(storage, len(data), data)
    state = rec.state
    await finish(storage, rec, len(data))
    # a completion that died before recording it is done again from the old state
    assert (await storage.open_resumable(KEY, len(data), state).finish()).handle is None
    assert await read_all(storage, KEY) == data


async def test_an_empty_upload_finishes_as_an_empty_object(storage: Storage) -> None:
    rec = Records()
    await finish(storage, rec, 0)
    assert await read_all(storage, KEY) == b""


async def test_progress_is_recorded_during_a_long_write(storage: Storage, monkeypatch) -> None:
    monkeypatch.setattr(file_resumable, "CHECKPOINT_BYTES", 4 * MiB)
    data = blob(12 * MiB)
    rec = Records()
    await rec.write(storage, len(data), data)
    assert rec.offsets[-1] == len(data)
    assert any(0 < o < len(data) for o in rec.offsets)


async def test_a_verified_write_is_one_unit(storage: Storage, monkeypatch) -> None:
    monkeypatch.setattr(file_resumable, "CHECKPOINT_BYTES", MiB)
    data = blob(12 * MiB)

    async def refuse() -> None:
        raise ValueError("checksum mismatch")

    async def accept() -> None:
        return None

    rec = Records()
    with pytest.raises(ValueError):
        await rec.write(storage, len(data), data, verify=refuse)
    assert rec.offsets == [] or rec.offsets == [0]  # nothing of it recorded
    assert rec.offset == 0 and rec.state.parts == [] and rec.state.tail_key is None
    assert await rec.write(storage, len(data), data, verify=accept) == len(data)
    assert [o for o in rec.offsets if o] == [len(data)]  # no checkpoint in between
    await finish(storage, rec, len(data))
    assert await read_all(storage, KEY) == data


async def test_a_broken_source_keeps_only_what_was_recorded(storage: Storage) -> None:
    data = blob(8 * MiB)
    rec = Records()
    await rec.write(storage, len(data), data[:MiB])

    async def breaks() -> AsyncIterator[bytes]:
        yield b"X" * (2 * MiB)
        raise ConnectionResetError("the client went away")

    upload = storage.open_resumable(KEY, len(data), rec.state)
    with pytest.raises(ConnectionResetError):
        await upload.write_at(rec.offset, breaks(), record=rec)
    assert rec.offset == MiB
    # the unrecorded bytes are overwritten by the next write from the recorded offset
    await rec.write(storage, len(data), data[MiB:])
    await finish(storage, rec, len(data))
    assert await read_all(storage, KEY) == data


async def test_a_lost_record_ends_the_write_and_leaves_no_stray_upload(storage: Storage
                                                                         ) -> None:
    data = blob(7 * MiB)
    rec = Records()
    s3 = storage.kind == "s3"
    rec.fail_at = 0 if s3 else len(data)  # S3: the record of the multipart upload's handle
    with pytest.raises(PermissionError):
        await rec.write(storage, len(data), data)
    assert rec.offset == 0 and rec.state.handle is None
    if s3:  # the multipart upload it started is aborted
        assert [x async for x in storage.list_leftovers(0.0)] == []
    rec.fail_at = None
    await rec.write(storage, len(data), data)
    await finish(storage, rec, len(data))
    assert await read_all(storage, KEY) == data


async def test_bytes_lost_from_the_storage_are_reported(storage: Storage) -> None:
    data = blob(6 * MiB + 1)
    rec = Records()
    await rec.write(storage, 20 * MiB, data)
    lost = rec.state.tail_key or KEY  # S3: the tail; the filesystem: the file
    await storage.delete(lost)
    upload = storage.open_resumable(KEY, 20 * MiB, rec.state)
    with pytest.raises(ResumableDataLost):
        await upload.write_at(rec.offset, chunked(b"more"), record=rec)
    assert rec.offset == len(data)


async def test_abort_leaves_nothing(storage: Storage) -> None:
    rec = Records()
    await rec.write(storage, 20 * MiB, blob(6 * MiB))
    await storage.open_resumable(KEY, 20 * MiB, rec.state).abort()
    await assert_nothing_left(storage)


async def test_abort_finds_an_upload_whose_handle_was_never_recorded(s3_storage: Storage
                                                                      ) -> None:
    rec = Records()
    rec.fail_at = 5 * MiB  # the part's record fails: its handle was recorded before it
    with pytest.raises(PermissionError):
        await rec.write(s3_storage, 20 * MiB, blob(6 * MiB))
    await s3_storage.open_resumable(KEY, 20 * MiB, ResumableState()).abort()
    await assert_nothing_left(s3_storage)


async def test_abort_after_finish_removes_the_object(storage: Storage) -> None:
    data = blob(MiB)
    rec = Records()
    await rec.write(storage, len(data), data)
    await finish(storage, rec, len(data))
    await storage.open_resumable(KEY, len(data), rec.state).abort()
    await assert_nothing_left(storage)


async def test_a_full_disk_is_a_storage_error(fs_storage: Storage, monkeypatch) -> None:
    from app.storage import StorageFull

    def full(fd: int, data: Any, pos: int) -> None:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(file_resumable, "_pwrite_all", full)
    rec = Records()
    with pytest.raises(StorageFull):
        await rec.write(fs_storage, 3 * MiB, blob(2 * MiB))
    assert rec.offset == 0


async def test_missing_names_the_keys_without_an_object(storage: Storage) -> None:
    # fsck's batch check: one call for many keys, a folder is no object
    await storage.write("m/here", aiter_of([b"x"]))
    await storage.write("m/dir/inside", aiter_of([b"y"]))
    asked = ["m/here", "m/gone", "m/dir", "m/dir/inside", "m/here/below"]
    assert await storage.missing(asked) == {"m/gone", "m/dir", "m/here/below"}
    assert await storage.missing([]) == set()
