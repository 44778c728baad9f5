"""The storage contract shared by the filesystem and S3 backends."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import unicodedata
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .resumable import Resumable, ResumableState
from urllib.parse import quote

from app.errors import InsufficientStorage, StorageMisconfigured

TEMP_SUFFIX = ".part"

# errno values that say "this storage cannot take it", as opposed to "is unreachable": they
# are not transient (a retry in seconds finds the disk as full, the folder as read-only).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
ACCESS_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class StorageObjectNotFound(LookupError):
    """The requested key does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _errno_name(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, str(err.errno))


class StorageFull(InsufficientStorage):
    """A storage had no room for an operation. The problem detail (what clients see) names
    the errno only; ``str()`` (logs, /readyz, activity) also says where and what."""

    code = "storage_full"

    def __init__(self, operation: str, path: str, err: OSError) -> None:
        self.errno_name = _errno_name(err)
        super().__init__(f"the storage has no space left ({self.errno_name}); try again later")
        self.operation, self.path = operation, path
        self.explanation = (f"no space left ({self.errno_name}: {err.strerror}) to {operation}"
                            f" {path}")

    def __str__(self) -> str:
        return self.explanation


class StorageAccessDenied(StorageMisconfigured):
    """A storage refused an operation (EACCES, EPERM, EROFS). The problem detail keeps the
    path to itself; ``str()`` names the path, the operation and the user."""

    code = "storage_access_denied"

    def __init__(self, operation: str, path: str, err: OSError) -> None:
        self.errno_name = _errno_name(err)
        super().__init__(f"the server may not {operation} in its storage ({self.errno_name});"
                         " an operator must fix the storage's permissions")
        self.operation, self.path = operation, path
        self.explanation = (f"{err.strerror} ({self.errno_name}) to {operation} {path}, as uid"
                            f" {os.geteuid()}: the storage folder must be writable by the user"
                            " that runs stowage")

    def __str__(self) -> str:
        return self.explanation


def storage_error(err: OSError, operation: str, path: object
                  ) -> StorageFull | StorageAccessDenied | None:
    """The storage error an OSError means, naming the operation and the path; None for the
    others (missing files, I/O trouble), which callers handle or raise as they are."""
    where = str(err.filename if err.filename is not None else path)
    if err.errno in DISK_FULL_ERRNOS:
        return StorageFull(operation, where, err)
    if err.errno in ACCESS_DENIED_ERRNOS:
        return StorageAccessDenied(operation, where, err)
    return None


@contextlib.contextmanager
def explain_os_errors(operation: str, path: object) -> Iterator[None]:
    """An OSError that says the storage cannot take it (full, read-only, not writable by this
    user) becomes the storage error that says so, naming the operation and the path: it is
    not an outage to wait out. Other OSErrors (a missing file, ...) go on as they are."""
    try:
        yield
    except OSError as e:
        problem = storage_error(e, operation, path)
        if problem is None:
            raise
        raise problem from e


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    # None on the filesystem backend: it keeps no metadata, the database is authoritative.
    content_type: str | None = None
    # when the object was last written (file mtime, S3 LastModified): fsck judges by it
    # whether an unowned object may still be an upload in flight
    modified_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a storage's keys live: a space (the filesystem; one bucket at one endpoint) and
    the path in it under which they start. Two storages can share a space: a store folder
    inside the cache folder, two prefixes of one bucket."""

    space: tuple[object, ...]
    root: PurePosixPath  # absolute: "/" is the whole space

    def prefix_of(self, inner: Placement) -> str | None:
        """The key prefix under which `inner`'s objects appear when listing this storage:
        "" when both are the same place, "sub/" when inner lives inside, None when apart."""
        if self.space != inner.space:
            return None
        if self.root == inner.root:
            return ""
        try:
            rel = inner.root.relative_to(self.root)
        except ValueError:
            return None
        return rel.as_posix() + "/"


@dataclass(frozen=True, slots=True)
class PresignedPost:
    """A browser-style form upload straight into the storage: POST `fields` and the file to
    `url`."""

    url: str
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class Leftover:
    """What a writer that died left behind: a filesystem temp file, an unfinished S3
    multipart upload. Never part of any key; removed by the sweep and `stowage fsck` once
    older than their grace period (a live writer keeps its own young)."""

    name: str          # for reports: the temp file's relative path, or the key and upload id
    size: int | None   # bytes, where the storage can tell cheaply
    age_s: float       # since last written (file) or started (multipart upload)
    ref: str           # the storage's own handle, for remove_leftover


class Storage(Protocol):
    """Object storage keyed by '/'-separated relative keys.

    `read` and `list_keys` are async generators: iterate them with ``async for`` and, when
    stopping early, close them (``contextlib.aclosing``) to release the file or connection.
    """

    kind: str
    # copy_from may share the data between source and copy (a hard link) unless asked for
    # an independent copy
    shares_copies: bool
    # clients can upload straight into it (presigned_post), past this service
    direct_upload: bool

    async def write(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int: ...

    def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncGenerator[bytes, None]: ...

    async def read_head(self, key: str, n: int) -> bytes: ...

    async def stat(self, key: str) -> ObjectInfo | None: ...

    async def missing(self, keys: Sequence[str]) -> set[str]:
        """Of ``keys``, those with no object: a batch at once (fsck asks about a million),
        cheaper than a ``stat`` each. See ``missing_via_stat``."""
        ...

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
        """Copy an object. A storage may share the data between the two (a hard link)
        while objects are never changed in place; `independent` asks for a copy that shares
        nothing, for a source that some writer may still change."""
        ...

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    def list_keys(self, prefix: str = "") -> AsyncGenerator[str, None]: ...

    async def presigned_get_url(
        self,
        key: str,
        *,
        expires_in: int,
        filename: str | None = None,
        content_type: str | None = None,
        as_attachment: bool = False,
        method: str = "GET",
    ) -> str | None: ...

    async def presigned_post(self, key: str, *, max_size: int, expires_in: int
                             ) -> PresignedPost:
        """A form upload of at most `max_size` bytes to exactly `key`, for a client to send
        itself. Only where `direct_upload` (NotImplementedError elsewhere)."""
        ...

    def local_path(self, key: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """A file holding the object, for readers that need one (Pillow): the file itself,
        or a temporary copy removed afterwards. StorageObjectNotFound if it is missing."""
        ...

    def open_resumable(self, key: str, length: int, state: ResumableState) -> Resumable:
        """Go on with (or start, from ``ResumableState()``) a resumable upload of `length`
        bytes to `key`; see resumable.py. No I/O until its first call."""
        ...

    @property
    def placement(self) -> Placement:
        """Where its keys live, to tell whether two storages overlap (see Placement)."""
        ...

    def list_leftovers(self, older_than: float, keep: frozenset[str] = frozenset()
                       ) -> AsyncGenerator[Leftover, None]:
        """Leftovers at least `older_than` seconds old; `keep` names handles still in use
        (S3 upload ids of tus uploads in progress)."""
        ...

    async def remove_leftover(self, leftover: Leftover) -> None: ...

    async def ping(self) -> None: ...

    @property
    def location(self) -> str:
        """Where the storage is, absolute, for people: a folder's absolute path, or
        ``s3://BUCKET[/PREFIX]`` (and the endpoint, when not AWS's)."""
        ...

    async def exists(self) -> bool:
        """Whether the root (folder, bucket) exists; creates nothing, unlike ``ping``."""
        ...

    async def aclose(self) -> None: ...


def is_temp_name(name: str) -> bool:
    """Whether a path segment looks like an in-progress filesystem write."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative key, else raise ValueError.

    Keys become filesystem paths, so anything that could escape the root or alias another
    key is refused. Temp-file-looking segments are refused on every backend so that a key
    valid on one backend is valid on all of them.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if "\x00" in key or "\\" in key:
        raise ValueError(f"storage key contains a forbidden character: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"invalid storage key {key!r}: empty, '.' or '..' segment")
        if is_temp_name(segment):
            raise ValueError(f"invalid storage key {key!r}: reserved temp-file name")
    return key


def validate_prefix(prefix: str, *, allow_empty: bool = True) -> str:
    """Validate a key prefix. A prefix is a key fragment, optionally ending with '/'."""
    if prefix == "":
        if allow_empty:
            return prefix
        raise ValueError("prefix must not be empty")
    validate_key(prefix.removesuffix("/"))
    return prefix


def check_range(start: int, end: int | None) -> None:
    if start < 0:
        raise ValueError("start must be >= 0")
    if end is not None and end < start:
        raise ValueError("end must be >= start")


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    """Bytes already in memory as the chunks ``Storage.write`` takes."""
    yield data


async def read_head_via(storage: Storage, key: str, n: int) -> bytes:
    if n <= 0:
        # Still fail for a missing key: callers use read_head to sniff objects they expect.
        if await storage.stat(key) is None:
            raise StorageObjectNotFound(key)
        return b""
    parts = [chunk async for chunk in storage.read(key, 0, n - 1, chunk_size=n)]
    return b"".join(parts)


async def open_read(
    storage: Storage, key: str, start: int = 0, end: int | None = None
) -> AsyncGenerator[bytes, None]:
    """``storage.read(key, start, end)``, started: the object is open (or
    StorageObjectNotFound raised) when this returns, not when the caller is already committed
    to it. An HTTP response that has sent its status line cannot take it back: a file that
    vanishes between that and the first read breaks the connection off after a 200. Once
    open, the object reads in full even if it is deleted meanwhile (an open file descriptor,
    an S3 GET under way)."""
    chunks = storage.read(key, start, end)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None  # an empty object (or range): opened, nothing to send
    except BaseException:
        await chunks.aclose()
        raise
    return _started(first, chunks)


async def _started(first: bytes | None, rest: AsyncGenerator[bytes, None]
                   ) -> AsyncGenerator[bytes, None]:
    async with contextlib.aclosing(rest):
        if first is not None:
            yield first
        async for chunk in rest:
            yield chunk


_background_cleanups: set[asyncio.Task[object]] = set()


async def run_shielded(aw: Awaitable[object]) -> None:
    """Await cleanup work that must finish even if the caller is being cancelled.

    Errors from the cleanup are swallowed: it runs while another exception is propagating,
    and that one is the interesting one. If the caller is cancelled again while waiting, the
    cleanup keeps running in the background (a strong reference stops it being collected).
    """
    task = asyncio.ensure_future(aw)
    _background_cleanups.add(task)
    task.add_done_callback(_forget_cleanup)
    try:
        await asyncio.shield(task)
    except Exception:
        pass


def _forget_cleanup(task: asyncio.Task[object]) -> None:
    _background_cleanups.discard(task)
    if not task.cancelled():
        task.exception()  # mark retrieved so asyncio does not log it


# RFC 5987 attr-char minus the characters quote() never escapes anyway.
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"


def content_disposition(filename: str | None, as_attachment: bool) -> str:
    """Build an RFC 6266 Content-Disposition value.

    Non-ASCII names get an ASCII `filename` fallback for old clients plus a `filename*`
    carrying the exact UTF-8 name, which modern browsers prefer.
    """
    disposition = "attachment" if as_attachment else "inline"
    if not filename:
        return disposition
    # Header injection and path tricks: control chars and separators never reach the header.
    cleaned = "".join(
        "_" if (unicodedata.category(c) == "Cc" or c in "/\\") else c for c in filename
    )
    fallback = _ascii_fallback(cleaned)
    value = f'{disposition}; filename="{fallback}"'
    if fallback != cleaned:
        value += f"; filename*=UTF-8''{quote(cleaned, safe=_ATTR_CHAR_SAFE)}"
    return value


def _ascii_fallback(name: str) -> str:
    # NFKD splits "é" into "e" + combining accent, so accented Latin degrades gracefully.
    decomposed = unicodedata.normalize("NFKD", name)
    out = []
    for c in decomposed:
        if unicodedata.combining(c):
            continue
        if c == '"' or not (0x20 <= ord(c) < 0x7F):
            out.append("_")
        else:
            out.append(c)
    return "".join(out)


async def stream_copy(
    dest: Storage,
    source: Storage,
    src_key: str,
    dest_key: str,
    *,
    content_type: str | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Copy between unrelated backends by piping source.read() into dest.write()."""
    info = await source.stat(src_key)
    if info is None:
        raise StorageObjectNotFound(src_key)
    # aclosing: if the write fails, release the source's file or HTTP connection right away.
    async with contextlib.aclosing(source.read(src_key)) as chunks:
        await dest.write(
            dest_key,
            chunks,
            content_type=content_type if content_type is not None else info.content_type,
            metadata=metadata,
        )


# How many stat requests a batch keeps in flight (S3 HEADs).
MISSING_CONCURRENCY = 16


async def missing_via_stat(storage: Storage, keys: Sequence[str],
                           concurrency: int = MISSING_CONCURRENCY) -> set[str]:
    """``Storage.missing`` for a backend without a batch of its own: a ``stat`` per key,
    ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def absent(key: str) -> bool:
        async with limit:
            return await storage.stat(key) is None

    flags = await asyncio.gather(*(absent(k) for k in keys))
    return {k for k, gone in zip(keys, flags, strict=True) if gone}
