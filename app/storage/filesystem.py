"""Local-directory storage: one regular file per key below a root directory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import shutil
import stat as stat_mod
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterator,
    Sequence,
)
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

from app.failpoints import failpoint
from app.offload import OrderedOffload

from .base import (
    TEMP_SUFFIX,
    Leftover,
    ObjectInfo,
    Placement,
    PresignedPost,
    Storage,
    StorageObjectNotFound,
    check_range,
    explain_os_errors,
    is_temp_name,
    read_head_via,
    run_shielded,
    stream_copy,
    validate_key,
    validate_prefix,
)
from .resumable import Resumable, ResumableState

T = TypeVar("T")

_LIST_BATCH = 1000


class FilesystemStorage:
    kind = "file"
    # Chunks from an upload are often small; coalescing them means one thread hop per MiB.
    write_buffer_size = 1 << 20
    shares_copies = True
    direct_upload = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # Absolute now, so a later chdir cannot silently move the storage.
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"FilesystemStorage({str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        """The file that holds `key` (whether or not it exists)."""
        return self.root.joinpath(*validate_key(key).split("/"))

    async def write(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        path = self.path_for(key)
        target = _AtomicFile(path)
        total = 0
        with explain_os_errors("write", path):
            try:
                await target.open()
                buf = bytearray()
                async for chunk in chunks:
                    total += len(chunk)
                    if not buf and len(chunk) >= self.write_buffer_size:
                        await target.write_behind(chunk)
                        continue
                    buf += chunk
                    if len(buf) >= self.write_buffer_size:
                        await target.write_behind(buf)
                        # A fresh buffer, not clear(): the old one is still being written.
                        buf = bytearray()
                await failpoint("storage.before_commit")  # a writer killed mid-write
                # the last bytes go with the commit: one thread hop less
                await target.commit(buf)
            except BaseException:
                await run_shielded(target.discard())
                raise
        return total

    async def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]:
        check_range(start, end)
        path = self.path_for(key)
        try:
            with explain_os_errors("read", path):
                f = await asyncio.to_thread(_open_at, path, start)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageObjectNotFound(key) from None
        try:
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                n = chunk_size if remaining is None else min(chunk_size, remaining)
                data = await asyncio.to_thread(f.read, n)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            f.close()

    async def read_head(self, key: str, n: int) -> bytes:
        return await read_head_via(self, key, n)

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_for(key)
        try:
            with explain_os_errors("stat", path):
                st = await asyncio.to_thread(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(size=st.st_size, content_type=None,
                          modified_at=datetime.fromtimestamp(st.st_mtime, UTC))

    async def missing(self, keys: Sequence[str]) -> set[str]:
        # one thread for the whole batch: a stat is microseconds, a thread hop per key is
        # most of the cost (fsck asks about every attachment)
        # plain strings, not path_for's Path: building a Path per key was a fifth of fsck's
        # time at a million attachments (py-spy); validate_key admits only relative keys
        # with "/" between their parts, the separator here
        root = os.fspath(self.root)
        paths = [(key, os.path.join(root, validate_key(key))) for key in keys]

        def check() -> set[str]:
            absent = set()
            for key, path in paths:
                try:
                    st = os.stat(path)
                except (FileNotFoundError, NotADirectoryError):
                    absent.add(key)
                    continue
                if not stat_mod.S_ISREG(st.st_mode):
                    absent.add(key)
            return absent

        with explain_os_errors("stat", self.root):
            return await asyncio.to_thread(check)

    async def copy_from(
        self,
        source: Storage,
        src_key: str,
        dest_key: str,
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
        independent: bool = False,
    ) -> None:
        if isinstance(source, FilesystemStorage):
            src, dest = source.path_for(src_key), self.path_for(dest_key)
            with explain_os_errors("copy into", dest):
                await asyncio.to_thread(_copy_local, src, dest, src_key, not independent)
            return
        await stream_copy(
            self, source, src_key, dest_key, content_type=content_type, metadata=metadata
        )

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        # A directory at `key` is not an object, so deleting "it" is a no-op.
        with (explain_os_errors("delete", path),
              contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            await asyncio.to_thread(os.unlink, path)

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix, allow_empty=False)
        if not prefix.endswith("/"):
            raise ValueError("delete_prefix needs a prefix ending with '/'")
        top = self.path_for(prefix.removesuffix("/"))
        with explain_os_errors("delete", top):
            return await asyncio.to_thread(_remove_tree, top)

    async def list_keys(self, prefix: str = "") -> AsyncGenerator[str, None]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix pins down; filter the rest by name.
        base_dir = prefix.rpartition("/")[0]
        base = self.path_for(base_dir) if base_dir else self.root
        keys = self._walk_keys(base, prefix)
        while True:
            with explain_os_errors("list", base):
                batch = await asyncio.to_thread(_take, keys, _LIST_BATCH)
            if not batch:
                return
            for key in batch:
                yield key

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
        validate_key(key)
        return None

    async def presigned_post(self, key: str, *, max_size: int, expires_in: int
                             ) -> PresignedPost:
        raise NotImplementedError("a filesystem storage takes no direct uploads")

    @contextlib.asynccontextmanager
    async def local_path(self, key: str) -> AsyncIterator[Path]:
        # the file itself: objects are never changed in place
        path = self.path_for(key)
        if not await asyncio.to_thread(path.is_file):
            raise StorageObjectNotFound(key)
        yield path

    def open_resumable(self, key: str, length: int, state: ResumableState) -> Resumable:
        from .file_resumable import FileResumable  # it builds on this module

        return FileResumable(self, key, length)

    @property
    def placement(self) -> Placement:
        return Placement(("file",), PurePosixPath(os.path.realpath(self.root)))

    async def list_leftovers(self, older_than: float, keep: frozenset[str] = frozenset()
                             ) -> AsyncGenerator[Leftover, None]:
        # A writer that is alive keeps writing its temp file (or renames it away within
        # moments of its last write), so an old mtime means nobody will finish it.
        for leftover in await asyncio.to_thread(self._find_temp_files, older_than):
            if leftover.ref not in keep:
                yield leftover

    async def remove_leftover(self, leftover: Leftover) -> None:
        path = Path(leftover.ref)
        if path.parent != self.root and self.root not in path.parents:
            raise ValueError(f"{path} is not inside {self.root}")
        if not is_temp_name(path.name):
            raise ValueError(f"{path} is not a temporary file")
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)

    def _find_temp_files(self, older_than: float) -> list[Leftover]:
        now = time.time()
        found = []
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if not is_temp_name(name):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:  # its writer finished meanwhile
                    continue
                age = now - st.st_mtime
                if age >= older_than and stat_mod.S_ISREG(st.st_mode):
                    found.append(Leftover(os.path.relpath(path, self.root), st.st_size,
                                          age, path))
        return found

    async def ping(self) -> None:
        with explain_os_errors("write into", self.root):
            await asyncio.to_thread(self._check_root)

    @property
    def location(self) -> str:
        return str(self.root)

    async def exists(self) -> bool:
        return await asyncio.to_thread(self.root.is_dir)

    async def aclose(self) -> None:
        return None

    def _check_root(self) -> None:
        """The root exists, a file can be made in it (as the uploads will: this names the real
        errno of a read-only, immutable or foreign folder) and the disk is not full."""
        ensure_dir(self.root)
        probe = temp_path_for(self.root / "ping")
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
        st = os.statvfs(self.root)
        if st.f_bavail == 0 or (st.f_files and st.f_favail == 0):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root))

    def _walk_keys(self, base: Path, prefix: str) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if is_temp_name(name):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    yield key


WRITEBACK_WINDOW = 16 << 20


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing these bytes back now (and to drop the pages once
    clean), so a later fsync has little left to wait for and large files do not flood the page
    cache. A hint: a no-op where posix_fadvise does not exist."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class _AtomicFile:
    """A temp file next to `path` that either replaces `path` durably or vanishes.

    Blocking calls run in worker threads. Those threads cannot be cancelled, so the current
    one is remembered and `discard` waits for it before closing and unlinking; otherwise a
    late thread could recreate or write to the temp file after cleanup ran.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = temp_path_for(path)
        self._file: BinaryIO | None = None
        self._committed = False
        self._inflight: asyncio.Future[Any] | None = None
        self._writes = OrderedOffload()
        self._written = 0
        self._new_dirs: list[Path] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._inflight = fut
        # Shielded so cancellation leaves the future intact for discard() to wait on.
        return await asyncio.shield(fut)

    async def open(self) -> None:
        await self.run(self._open)

    async def write_behind(self, data: bytes | bytearray) -> None:
        """Queue `data` to be written after what is queued already, without waiting for it:
        the caller receives the next MiB from the network while this one goes to disk."""
        assert self._file is not None
        await self._writes.submit(self._write, data)

    async def commit(self, last: bytes | bytearray = b"") -> None:
        """Write `last`, then make the file durable under its name."""
        await self._writes.drain()
        await self.run(self._commit, last)

    async def discard(self) -> None:
        await self._writes.settle()
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
        await asyncio.to_thread(self._discard)

    def _write(self, data: bytes | bytearray) -> None:
        assert self._file is not None
        self._file.write(data)
        before, self._written = self._written, self._written + len(data)
        # Every WRITEBACK_WINDOW bytes, ask the kernel to start writing back the window
        # before the last one (and to drop those pages once clean): the disk works while the
        # upload streams, so the fsync before the 201 has little left to do, and a large
        # upload does not flood the page cache. Measured here: fsync of 1 GiB 0.25 s → 0.03 s.
        if before // WRITEBACK_WINDOW != self._written // WRITEBACK_WINDOW:
            end = (self._written // WRITEBACK_WINDOW - 1) * WRITEBACK_WINDOW
            if end > 0:
                self._file.flush()
                start_writeback(self._file.fileno(), max(end - WRITEBACK_WINDOW, 0),
                                WRITEBACK_WINDOW)

    def _open(self) -> None:
        self._new_dirs = make_dirs(self.path.parent)  # made durable by _commit
        self._file = open(self.tmp, "xb")  # closed by _commit/_discard

    def _commit(self, last: bytes | bytearray) -> None:
        assert self._file is not None
        if last:
            self._write(last)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        self._committed = True
        fsync_dir(self.path.parent)
        # New directories' entries last: on journalling filesystems the fsyncs above have
        # usually committed them already, so these are cheap (one journal commit per file
        # where mkdir-then-fsync costs two).
        for d in reversed(self._new_dirs):
            fsync_dir(d.parent)

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        if self._committed:
            # The caller is told the write failed, so it must not find the object either.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def _open_at(path: Path, start: int) -> BinaryIO:
    f = open(path, "rb")  # the caller owns it
    try:
        f.seek(start)
    except BaseException:
        f.close()
        raise
    return f


def _take(it: Iterator[T], n: int) -> list[T]:
    return list(itertools.islice(it, n))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (e.g. certain network mounts) cannot fsync a directory at all.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """mkdir -p, fsyncing each parent so that new directories survive a crash too."""
    for d in make_dirs(path):
        fsync_dir(d.parent)


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p without fsync; returns the directories it made, outermost first, whose
    parents the caller must fsync before relying on them after a crash."""
    if path.is_dir():
        return []
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    missing.reverse()
    for d in missing:
        with contextlib.suppress(FileExistsError):  # a concurrent writer won the race
            d.mkdir()
    return missing


def _copy_local(src: Path, dest: Path, src_key: str, link: bool = True) -> None:
    if not src.is_file():
        raise StorageObjectNotFound(src_key)
    ensure_dir(dest.parent)
    tmp = temp_path_for(dest)
    try:
        if link:
            try:
                # A hard link is instant and safe to share: objects are never modified in
                # place (the caller says otherwise with link=False)
                os.link(src, tmp)
            except OSError:
                # Cross-device, hard links unsupported, link limit reached...
                _copy_file_durably(src, tmp)
        else:
            _copy_file_durably(src, tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # If src and dest already were the same inode, rename() is a no-op that keeps tmp.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _copy_file_durably(src: Path, tmp: Path) -> None:
    with open(src, "rb") as fsrc, open(tmp, "xb") as fdst:
        # in the kernel (copy_file_range: a reflink on filesystems that have them), else
        # through user space
        try:
            size = os.fstat(fsrc.fileno()).st_size
            while size > 0:
                n = os.copy_file_range(fsrc.fileno(), fdst.fileno(), size)
                if n == 0:
                    break
                size -= n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            fsrc.seek(0)
            fdst.seek(0)
            fdst.truncate()
            shutil.copyfileobj(fsrc, fdst, 1 << 20)
        fdst.flush()
        os.fsync(fdst.fileno())


def _remove_tree(top: Path) -> int:
    """Delete every file below `top`, returning how many were objects (not temp files).

    Unlinks file by file instead of rmtree so that a writer racing into the tree makes the
    final rmdir fail harmlessly instead of aborting the whole deletion.
    """
    if not top.is_dir() or top.is_symlink():
        return 0
    count = 0
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(dirpath, name))
                if not is_temp_name(name):
                    count += 1
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(dirpath, name))
    with contextlib.suppress(OSError):
        os.rmdir(top)
    return count
