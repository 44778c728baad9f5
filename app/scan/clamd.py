"""An asyncio client for clamd's protocol: PING, VERSION and INSTREAM, nothing more.

Spoken directly rather than through a library: the protocol is a few lines, and the
maintained asyncio clients either read the whole file into memory or treat a size-limit
reply as an ordinary answer. Every command uses the `z` form (NUL-terminated command and
reply) on a connection of its own, which is how clamd expects one-shot commands. Raw
non-blocking sockets (loop.sock_*), not asyncio streams: see `scan` for why.

INSTREAM: after `zINSTREAM\\0`, the file goes as chunks, each prefixed by its length as a
4-byte big-endian integer, and a zero-length chunk ends it. clamd answers
`stream: OK`, `stream: <signature> FOUND`, or `<message> ERROR`; past its StreamMaxLength it
answers `INSTREAM size limit exceeded. ERROR` and closes the connection, possibly while we
are still sending.

Three ways a scan can end without a verdict, kept apart because the caller must treat them
differently: `ScanTooLarge` (the file can never be scanned by this clamd: a permanent
failure, never a pass), `ClamdUnavailable` (no answer: retry later) and `ClamdError` (clamd
answered ERROR for another reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CHUNK_SIZE = 256 * 1024
# clamd copies every chunk into a buffer of its own: bigger chunks save no time (measured:
# 256 KiB and 1 MiB scan alike) and cost memory on both sides
MAX_CHUNK_SIZE = 1024 * 1024
DEFAULT_TIMEOUT = 10.0
# clamd's own MaxScanTime defaults to 120 s; the verdict may take that long for an archive
DEFAULT_SCAN_TIMEOUT = 130.0

_LENGTH = struct.Struct(">I")
_END_OF_STREAM = _LENGTH.pack(0)
_MAX_REPLY = 64 * 1024  # a signature name is short; more is not clamd
_FOUND = re.compile(r"^stream: (?P<signature>.+) FOUND$")
# "ClamAV 1.4.6/27480/Thu Dec  4 09:31:02 2026"; only "ClamAV 1.4.6" when no .cvd/.cld/.cud
# database is loaded (loose .hdb/.ndb files carry no version)
_VERSION = re.compile(r"^(?P<engine>ClamAV [^/]+)(?:/(?P<database>[^/]+)/(?P<date>.+))?$")


class ScanError(Exception):
    """A scan that ended without a verdict."""


class ClamdUnavailable(ScanError):
    """clamd could not be reached, or did not answer sensibly in time: try again later."""


class ClamdError(ScanError):
    """clamd answered ERROR (other than the size limit)."""


class ScanTooLarge(ScanError):
    """The file exceeds clamd's StreamMaxLength: it was not scanned, and never will be by
    this clamd. A permanent failure, never a pass."""

    def __init__(self, message: str, *, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class _Disconnected(Exception):
    """Sending to clamd failed (its cause is the OSError). Kept apart from errors of the
    chunks' source: a cache file that cannot be read is not clamd being down."""


@dataclass(frozen=True)
class ClamdVersion:
    engine: str  # "ClamAV 1.4.6"
    database: str | None  # the signature database version, e.g. "27480"; None if unversioned
    database_date: str | None  # as clamd prints it, e.g. "Thu Dec  4 09:31:02 2026"
    raw: str

    @classmethod
    def parse(cls, reply: str) -> ClamdVersion:
        match = _VERSION.match(reply)
        if match is None:
            raise ClamdUnavailable(f"clamd answered VERSION with {reply!r}")
        return cls(match["engine"], match["database"], match["date"], reply)


@dataclass(frozen=True)
class ScanResult:
    clean: bool
    signature: str | None  # the matching signature's name when infected
    engine: str
    database: str | None
    bytes_scanned: int


@dataclass(frozen=True)
class _Address:
    host: str | None = None
    port: int | None = None
    path: str | None = None


def parse_clamd_url(url: str) -> tuple[str, int] | str:
    """`tcp://HOST:PORT` → (host, port); `unix:///PATH` → the socket's path; else ValueError."""
    address = _parse(url)
    if address.path is not None:
        return address.path
    assert address.host is not None and address.port is not None
    return address.host, address.port


def _parse(url: str) -> _Address:
    def bad(why: str) -> ValueError:
        return ValueError(f"invalid clamd URL {url!r}: {why} "
                          "(expected tcp://HOST:PORT or unix:///PATH)")

    if not isinstance(url, str) or not url:
        raise bad("empty")
    parts = urlsplit(url)
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise bad("no user, query or fragment allowed")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise bad("a unix socket needs an absolute path and no host")
        return _Address(path=parts.path)
    if parts.scheme == "tcp":
        if parts.path not in ("", "/"):
            raise bad("a tcp address has no path")
        try:
            port = parts.port
        except ValueError:
            raise bad("the port must be a number from 1 to 65535") from None
        if not parts.hostname:
            raise bad("a host is required")
        if not port:
            raise bad("a port is required")
        return _Address(host=parts.hostname, port=port)
    raise bad(f"unknown scheme {parts.scheme!r}")


class Clamd:
    """A clamd at `url`. Holds no connection: every call opens its own, so one instance can
    be shared by every task of a process."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 scan_timeout: float = DEFAULT_SCAN_TIMEOUT,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size {chunk_size} is not within 1..{MAX_CHUNK_SIZE}")
        if timeout <= 0 or scan_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.url = url
        self._address = _parse(url)
        self.timeout = timeout
        self.scan_timeout = scan_timeout
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"Clamd({self.url!r})"

    async def ping(self) -> None:
        """Raise ClamdUnavailable unless clamd answers PONG."""
        reply = await self._command(b"zPING\0")
        if reply != "PONG":
            raise ClamdUnavailable(f"clamd at {self.url} answered PING with {reply!r}")

    async def version(self) -> ClamdVersion:
        """The engine and signature database versions clamd runs now."""
        return ClamdVersion.parse(await self._command(b"zVERSION\0"))

    async def scan(self, chunks: AsyncIterable[bytes], *,
                   max_bytes: int | None = None) -> ScanResult:
        """Scan the bytes of `chunks` (any chunk sizes), streamed: never more than one
        incoming chunk plus `chunk_size` bytes in memory.

        `max_bytes` is clamd's StreamMaxLength when the caller knows it: a longer stream is
        refused with ScanTooLarge as soon as it passes the limit, instead of sending it.
        clamd's own size-limit answer raises ScanTooLarge too.
        """
        # the database version goes with the verdict (metadata.scan); asked first, so a
        # reload during the scan reports the older database, and a rescan follows later
        version = await self.version()
        sock = await self._connect()
        # read while sending: clamd answers early past its StreamMaxLength, and then closes
        reply_task = asyncio.ensure_future(_read_reply(sock))
        try:
            try:
                sent, complete = await self._send_stream(sock, chunks, reply_task, max_bytes)
            except _Disconnected as disconnected:
                # clamd closed on us (its size limit, or it died): an answer already sent is
                # still in the socket's buffer, which a raw socket (unlike asyncio's streams,
                # which drop it on a write error) can read
                exc = disconnected.__cause__ or disconnected
                sent, complete = None, False
                try:
                    async with asyncio.timeout(self.timeout):
                        raw = await reply_task
                except OSError:
                    raise ClamdUnavailable(f"clamd at {self.url} failed during a scan: "
                                           f"{_describe(exc)}") from exc
            else:
                try:
                    async with asyncio.timeout(self.scan_timeout):
                        raw = await reply_task
                except OSError as exc:
                    raise ClamdUnavailable(f"clamd at {self.url} failed during a scan: "
                                           f"{_describe(exc)}") from exc
        finally:
            try:
                if not reply_task.done():
                    reply_task.cancel()
                    await asyncio.wait([reply_task])  # its socket callbacks are gone then
            finally:
                if reply_task.done() and not reply_task.cancelled():
                    reply_task.exception()  # retrieved: no "never retrieved" warning
                _close(sock)
        reply = _decode(raw)
        if reply.endswith(" ERROR"):
            if "size limit exceeded" in reply:
                raise ScanTooLarge(f"the file exceeds clamd's StreamMaxLength ({self.url}): "
                                   "not scanned", limit=max_bytes)
            raise ClamdError(f"clamd at {self.url}: {reply}")
        if not complete or sent is None:
            raise ClamdUnavailable(f"clamd at {self.url} answered before the end of the "
                                   f"stream: {reply!r}")
        if reply == "stream: OK":
            return ScanResult(True, None, version.engine, version.database, sent)
        found = _FOUND.match(reply)
        if found is None:
            raise ClamdUnavailable(f"clamd at {self.url} answered INSTREAM with {reply!r}")
        return ScanResult(False, found["signature"], version.engine, version.database, sent)

    async def _send_stream(self, sock: socket.socket, chunks: AsyncIterable[bytes],
                           reply_task: asyncio.Future[bytes],
                           max_bytes: int | None) -> tuple[int, bool]:
        """Send `chunks` re-cut to `chunk_size`, then the end mark: (bytes sent, whether all
        were). Stops early when clamd answers before the end (its size limit)."""
        loop = asyncio.get_running_loop()
        size = self.chunk_size
        pending = bytearray()  # less than one chunk, held back to fill the next one
        total = 0

        async def send(data: bytes | bytearray | memoryview) -> None:
            try:
                async with asyncio.timeout(self.timeout):
                    await loop.sock_sendall(sock, data)
            except OSError as exc:  # TimeoutError included
                raise _Disconnected from exc

        await send(b"zINSTREAM\0")
        async for chunk in chunks:
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise ScanTooLarge(f"the file exceeds clamd's StreamMaxLength of {max_bytes} "
                                   "bytes: not scanned", limit=max_bytes)
            if reply_task.done():
                return total, False  # clamd gave its answer early: stop feeding it
            view = memoryview(chunk)
            if pending:
                take = size - len(pending)
                pending += view[:take]
                view = view[take:]
                if len(pending) < size:
                    continue
                await send(_LENGTH.pack(size) + pending)
                pending = bytearray()
            while len(view) >= size:
                await send(_LENGTH.pack(size))
                await send(view[:size])
                view = view[size:]
            pending += view
        if pending:
            await send(_LENGTH.pack(len(pending)) + pending)
        await send(_END_OF_STREAM)
        return total, True

    async def _command(self, command: bytes) -> str:
        sock = await self._connect()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                await loop.sock_sendall(sock, command)
                raw = await _read_reply(sock)
        except OSError as exc:
            raise ClamdUnavailable(
                f"clamd at {self.url} did not answer {command[1:-1].decode()}: "
                f"{_describe(exc)}") from exc
        finally:
            _close(sock)
        return _decode(raw)

    async def _connect(self) -> socket.socket:
        """A connected non-blocking socket; ClamdUnavailable when none can be had in time."""
        loop = asyncio.get_running_loop()
        address = self._address
        try:
            async with asyncio.timeout(self.timeout):
                if address.path is not None:
                    targets: list[tuple[int, Any]] = [(socket.AF_UNIX, address.path)]
                else:
                    infos = await loop.getaddrinfo(address.host, address.port,
                                                   type=socket.SOCK_STREAM)
                    targets = [(family, addr) for family, _, _, _, addr in infos]
                error: OSError = OSError("no address")
                for family, target in targets:
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    try:
                        await loop.sock_connect(sock, target)
                        return sock
                    except OSError as exc:
                        _close(sock)
                        error = exc
                    except BaseException:
                        _close(sock)
                        raise
                raise error
        except OSError as exc:
            raise ClamdUnavailable(f"clamd at {self.url} is unreachable: {_describe(exc)}") \
                from exc


async def _read_reply(sock: socket.socket) -> bytes:
    """One NUL-terminated reply; ConnectionResetError if clamd closes without one."""
    loop = asyncio.get_running_loop()
    reply = b""
    while b"\0" not in reply:
        if len(reply) > _MAX_REPLY:
            raise ConnectionResetError(f"an endless reply: {reply[:100]!r}…")
        data = await loop.sock_recv(sock, 4096)
        if not data:
            if reply:
                return reply
            raise ConnectionResetError("clamd closed the connection without an answer")
        reply += data
    return reply[:reply.index(b"\0")]


def _close(sock: socket.socket) -> None:
    """Close a socket the loop may still watch. A cancelled sock_recv/sock_connect leaves
    a callback that unregisters its file descriptor on the next turn of the loop; removing
    the registration now disarms it, so it cannot hit a new socket given the same number."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ValueError, OSError):  # already closed
        fd = sock.fileno()
        if fd >= 0:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
    sock.close()


def _decode(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace").strip()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
