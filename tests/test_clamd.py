"""The clamd client against a real clamd (tests/clamd_server.py), with our own signatures."""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from app.scan import (
    Clamd,
    ClamdError,
    ClamdUnavailable,
    ScanTooLarge,
    parse_clamd_url,
)
from tests.clamd_server import (
    EICAR,
    EICAR_SIGNATURE,
    MARKER,
    MARKER_SIGNATURE,
    ClamdServer,
    free_port,
    require,
    scanned_name,
    start_clamd,
)

MiB = 1024 * 1024


async def stream(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start:start + piece]


async def pieces(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.fixture(params=["unix", "tcp"])
def url(request: pytest.FixtureRequest, clamd: ClamdServer) -> str:
    return clamd.unix_url if request.param == "unix" else clamd.tcp_url


async def test_ping_and_version(url: str) -> None:
    client = Clamd(url)
    await client.ping()
    version = await client.version()
    assert version.engine.startswith("ClamAV 1."), version
    assert version.database == "1", version  # the first database the helper built
    assert version.database_date, version


async def test_clean_file(url: str) -> None:
    data = os.urandom(300 * 1024)
    result = await Clamd(url).scan(stream(data))
    assert result.clean and result.signature is None
    assert result.engine.startswith("ClamAV 1.") and result.database == "1"
    assert result.bytes_scanned == len(data)


async def test_empty_file_is_clean(clamd: ClamdServer) -> None:
    result = await Clamd(clamd.unix_url).scan(pieces([]))
    assert result.clean and result.bytes_scanned == 0


async def test_eicar_is_infected(url: str) -> None:
    result = await Clamd(url).scan(pieces([EICAR]))
    assert not result.clean
    assert result.signature == scanned_name(EICAR_SIGNATURE)
    assert result.database == "1" and result.bytes_scanned == len(EICAR)


async def test_eicar_in_one_byte_pieces(clamd: ClamdServer) -> None:
    # the client re-cuts whatever it is given: 68 one-byte pieces go as one chunk
    result = await Clamd(clamd.unix_url).scan(pieces(EICAR[i:i + 1] for i in range(len(EICAR))))
    assert result.signature == scanned_name(EICAR_SIGNATURE)


@pytest.mark.parametrize("incoming", [1000, 4096, 70_000])
async def test_marker_across_a_chunk_boundary(clamd: ClamdServer, incoming: int) -> None:
    chunk_size = 4096
    boundary = 40 * chunk_size
    before = os.urandom(boundary - len(MARKER) // 2)
    after = os.urandom(200 * 1024)
    infected = before + MARKER + after
    # the marker straddles the boundary between the 40th and 41st chunk sent to clamd
    assert infected.index(MARKER) < boundary < infected.index(MARKER) + len(MARKER)
    client = Clamd(clamd.unix_url, chunk_size=chunk_size)

    result = await client.scan(stream(infected, incoming))
    assert result.signature == scanned_name(MARKER_SIGNATURE)
    assert result.bytes_scanned == len(infected)

    # the same file with the marker broken in its last byte is clean: the match above is the
    # marker's, whole
    broken = before + MARKER[:-1] + b"?" + after
    assert (await client.scan(stream(broken, incoming))).clean


async def test_over_stream_max_length_is_too_large(url: str) -> None:
    client = Clamd(url)
    # exactly StreamMaxLength (1M) still scans ...
    assert (await client.scan(stream(bytes(MiB)))).clean
    # ... one byte more: clamd refuses, and that is never a pass
    with pytest.raises(ScanTooLarge, match="StreamMaxLength"):
        await client.scan(stream(bytes(MiB + 1)))
    # far more: clamd answers and closes while the client is still sending
    with pytest.raises(ScanTooLarge):
        await client.scan(stream(bytes(20 * MiB), MiB))
    # the marker past the limit would have been found, if it had been scanned
    with pytest.raises(ScanTooLarge):
        await client.scan(stream(bytes(MiB) + MARKER))


async def test_max_bytes_refuses_before_sending(clamd: ClamdServer) -> None:
    sent = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1
            yield bytes(MiB)

    with pytest.raises(ScanTooLarge, match=str(MiB)) as caught:
        await Clamd(clamd.unix_url).scan(counted(), max_bytes=MiB)
    assert caught.value.limit == MiB
    assert sent == 2  # stopped at the first chunk past the limit, not at the end
    result = await Clamd(clamd.unix_url).scan(stream(EICAR), max_bytes=len(EICAR))
    assert result.signature == scanned_name(EICAR_SIGNATURE)


async def test_stopped_clamd_is_unavailable_quickly() -> None:
    with start_clamd() as server:
        client = Clamd(server.unix_url, timeout=1.0)
        await client.ping()
    # stopped: its socket is gone
    started = time.monotonic()
    for call in (client.ping(), client.version(), client.scan(stream(b"hello"))):
        with pytest.raises(ClamdUnavailable, match="unreachable"):
            await call
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("where", ["missing-socket", "closed-port"])
async def test_nothing_listening_is_unavailable(tmp_path: Path, where: str) -> None:
    url = (f"unix://{tmp_path}/nothing.sock" if where == "missing-socket"
           else f"tcp://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ClamdUnavailable, match="unreachable"):
        await Clamd(url, timeout=1.0).scan(stream(b"hello"))
    with pytest.raises(ClamdUnavailable):
        await Clamd(url, timeout=1.0).ping()
    assert time.monotonic() - started < 2


async def test_clamd_killed_mid_scan_is_unavailable() -> None:
    with start_clamd(stream_max_length="100M") as server:
        client = Clamd(server.unix_url, timeout=2.0)
        await client.ping()

        async def slow() -> AsyncIterator[bytes]:
            for i in range(50):
                if i == 5:
                    assert server.process is not None
                    server.process.kill()
                    server.process.wait()
                yield os.urandom(64 * 1024)
                await asyncio.sleep(0.01)

        started = time.monotonic()
        with pytest.raises(ClamdUnavailable, match="during a scan"):
            await client.scan(slow())
        assert time.monotonic() - started < 5


async def test_a_failing_source_is_not_clamd_being_down(clamd: ClamdServer) -> None:
    # a cache file that cannot be read raises its own error, not ClamdUnavailable (which
    # would have the promotion wait for a clamd that is fine)
    async def unreadable() -> AsyncIterator[bytes]:
        yield os.urandom(300 * 1024)
        raise FileNotFoundError("cache/abc: gone")

    client = Clamd(clamd.unix_url)
    with pytest.raises(FileNotFoundError, match="gone"):
        await client.scan(unreadable())
    assert (await client.scan(stream(EICAR))).signature == scanned_name(EICAR_SIGNATURE)


async def test_a_cancelled_scan_leaves_nothing_behind(clamd: ClamdServer) -> None:
    # a job timeout cancels the scan mid-stream; the next scans on the same loop still work
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield os.urandom(64 * 1024)
            await asyncio.sleep(0.01)  # well under StreamMaxLength (1M) by the cancel

    client = Clamd(clamd.unix_url, timeout=2.0)
    for _ in range(3):
        task = asyncio.create_task(client.scan(endless()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await client.scan(stream(MARKER))
        assert result.signature == scanned_name(MARKER_SIGNATURE)


async def _peer(reply: bytes | None) -> tuple[asyncio.Server, str]:
    """A socket peer that reads what it is sent and answers `reply` to the first command
    (None: never answers): for the replies a healthy clamd does not give on demand."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\0")
        if reply is None:
            await asyncio.sleep(30)
        elif reply.startswith(b"stream"):
            # answer VERSION like clamd, then the scan with `reply` on the next connection
            writer.write(b"ClamAV 1.4.6/1/Thu Jan  1 00:00:00 2026\0")
        else:
            writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"tcp://127.0.0.1:{port}"


async def test_a_silent_peer_times_out() -> None:
    server, url = await _peer(None)
    async with server:
        started = time.monotonic()
        with pytest.raises(ClamdUnavailable, match="timed out"):
            await Clamd(url, timeout=0.5).ping()
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("reply", [b"HELLO\0", b"\0"])
async def test_unexpected_replies_are_unavailable(reply: bytes) -> None:
    server, url = await _peer(reply)
    async with server:
        with pytest.raises(ClamdUnavailable, match="answered"):
            await Clamd(url, timeout=1.0).ping()
        with pytest.raises(ClamdUnavailable, match="answered VERSION"):
            await Clamd(url, timeout=1.0).version()


async def test_an_error_reply_is_a_clamd_error() -> None:
    # two servers would be needed for VERSION then INSTREAM; one peer answers both in turn
    replies = [b"ClamAV 1.4.6/1/Thu Jan  1 00:00:00 2026\0",
               b"Can't allocate memory ERROR\0"]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = await reader.readuntil(b"\0")
        if command == b"zINSTREAM\0":
            while length := int.from_bytes(await reader.readexactly(4), "big"):
                await reader.readexactly(length)
        writer.write(replies.pop(0))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ClamdError, match="Can't allocate memory"):
            await Clamd(f"tcp://127.0.0.1:{port}").scan(stream(b"hello"))


@pytest.mark.parametrize("bad", [
    "", "clamd:3310", "http://127.0.0.1:3310", "tcp://127.0.0.1", "tcp://:3310",
    "tcp://127.0.0.1:0", "tcp://127.0.0.1:99999", "tcp://127.0.0.1:port",
    "tcp://127.0.0.1:3310/x", "tcp://u@127.0.0.1:3310", "unix://", "unix:///",
    "unix://host/tmp/clamd.sock", "unix:relative.sock", "unix:///tmp/c.sock?x=1",
])
def test_bad_urls_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid clamd URL") as caught:
        Clamd(bad)
    assert repr(bad) in str(caught.value)


def test_good_urls() -> None:
    assert parse_clamd_url("tcp://clamav:3310") == ("clamav", 3310)
    assert parse_clamd_url("tcp://[::1]:3310") == ("::1", 3310)
    assert parse_clamd_url("unix:///run/clamav/clamd.ctl") == "/run/clamav/clamd.ctl"


@pytest.mark.parametrize("chunk_size", [0, 2 * MiB])
def test_chunk_size_is_bounded(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        Clamd("tcp://127.0.0.1:3310", chunk_size=chunk_size)


async def test_64_mib_streams_in_bounded_memory() -> None:
    size = 64 * MiB
    with start_clamd(stream_max_length="100M") as server:
        client = Clamd(server.unix_url, chunk_size=MiB)
        produced = 0

        async def generated() -> AsyncIterator[bytes]:
            # fresh 1 MiB chunks as a cache read gives them, the marker in the last bytes
            nonlocal produced
            while produced < size - MiB:
                produced += MiB
                yield os.urandom(MiB)
            produced += MiB
            yield os.urandom(MiB - len(MARKER)) + MARKER

        tracemalloc.start()
        try:
            result = await client.scan(generated())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.signature == scanned_name(MARKER_SIGNATURE)  # every byte reached clamd
    assert result.bytes_scanned == size
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a {size // MiB} MiB stream"


async def test_a_new_signature_after_reload() -> None:
    later = b"STOWAGE-SIGNATURE-ADDED-LATER-91d2"
    data = os.urandom(100 * 1024) + later + os.urandom(1000)
    with start_clamd() as server:
        client = Clamd(server.unix_url)
        first = await client.scan(stream(data))
        assert first.clean and first.database == "1"
        server.add_body_signature("Stowage.Test.Later", later)
        again = await client.scan(stream(data))
        assert again.signature == scanned_name("Stowage.Test.Later")
        assert again.database == "2"
        # the old signatures survive the reload
        assert (await client.scan(stream(EICAR))).signature == scanned_name(EICAR_SIGNATURE)


async def test_one_client_many_concurrent_scans(clamd: ClamdServer) -> None:
    client = Clamd(clamd.unix_url, chunk_size=16 * 1024)
    files = [os.urandom(200 * 1024), EICAR, os.urandom(50_000) + MARKER] * 8
    results = await asyncio.gather(*(client.scan(stream(data, 10_000)) for data in files))
    assert [r.signature for r in results] == [
        None, scanned_name(EICAR_SIGNATURE), scanned_name(MARKER_SIGNATURE)] * 8
    assert [r.bytes_scanned for r in results] == [len(data) for data in files]


async def test_a_restarted_clamd_answers_on_the_same_socket() -> None:
    # what a later "clamd down, then back" lifecycle test does with a server of its own
    with start_clamd(tcp=True) as server:
        client, over_tcp = Clamd(server.unix_url, timeout=1.0), Clamd(server.tcp_url, timeout=1.0)
        server.stop()
        with pytest.raises(ClamdUnavailable):
            await client.scan(stream(EICAR))
        with pytest.raises(ClamdUnavailable):
            await over_tcp.ping()
        server.start()
        assert (await client.scan(stream(EICAR))).signature == scanned_name(EICAR_SIGNATURE)
        await over_tcp.ping()


def test_a_missing_clamd_fails_clearly() -> None:
    # no skip: a machine without clamd fails the scan tests, saying what to install
    with pytest.raises(pytest.fail.Exception, match="scripts/test installs"):
        require("clamd-not-installed")
    assert require("clamd").endswith("/clamd")
