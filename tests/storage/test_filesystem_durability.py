"""The filesystem storage's crash-safety bookkeeping: every directory entry a write creates is
fsynced before the write returns, the new directories' own entries after the file's."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.storage import StorageFull
from app.storage import filesystem as fs_module
from app.storage.filesystem import FilesystemStorage


async def _chunks(*parts: bytes):
    for p in parts:
        yield p


async def test_a_write_into_new_directories_fsyncs_every_parent(tmp_path, monkeypatch):
    synced: list[Path] = []
    real = fs_module.fsync_dir
    monkeypatch.setattr(fs_module, "fsync_dir", lambda p: (synced.append(p), real(p)))
    storage = FilesystemStorage(tmp_path / "root")
    (tmp_path / "root").mkdir()
    await storage.write("a/b/c/file", _chunks(b"x" * 10, b"y"))
    root = tmp_path / "root"
    assert (root / "a/b/c/file").read_bytes() == b"x" * 10 + b"y"
    # the file's directory first (the rename), then each new directory's parent
    assert synced == [root / "a/b/c", root / "a/b", root / "a", root]

    synced.clear()
    await storage.write("a/b/c/other", _chunks(b"z"))
    assert synced == [root / "a/b/c"]  # nothing new above it: one directory fsync


def test_make_dirs_reports_only_what_it_made(tmp_path):
    (tmp_path / "a").mkdir()
    made = fs_module.make_dirs(tmp_path / "a/b/c")
    assert made == [tmp_path / "a/b", tmp_path / "a/b/c"]
    assert (tmp_path / "a/b/c").is_dir()
    assert fs_module.make_dirs(tmp_path / "a/b/c") == []


async def test_a_disk_error_in_a_queued_write_fails_the_write_and_leaves_the_old_object(
        tmp_path, monkeypatch):
    """Blocks are written behind the caller: an error on a later block still reaches it."""
    storage = FilesystemStorage(tmp_path)
    await storage.write("k", _chunks(b"old"))
    real = fs_module._AtomicFile._write
    calls = 0

    def full_disk(self, data):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        real(self, data)

    monkeypatch.setattr(fs_module._AtomicFile, "_write", full_disk)
    block = b"x" * (1 << 20)
    # not an OSError any more: a full disk is no outage to retry (app.transient)
    with pytest.raises(StorageFull, match="ENOSPC"):
        await storage.write("k", _chunks(*[block] * 8))
    assert (tmp_path / "k").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temp file left
