#!/usr/bin/env python3
"""clamd's own scan time for N files of one size: the baseline of issue 20's benchmark
("scanning costs no more than clamd's own scan time of the same files plus 20%").

    python bench/clamd_scan.py [--count 100] [--size 1048576] [--rounds 5]

One clamd (tests/clamd_server.py: Debian's clamd, the tests' own small signature database,
StreamMaxLength 100M, unix socket and TCP), files of `--size` random bytes in a
temp folder, one warm-up pass (clamd's first ~100 MiB after start run several times slower),
then `--rounds` paired rounds of, each over `--count` files clamd has never seen (it caches
clean verdicts by hash: a file seen before costs it a fraction), one at a time:

- `clamdscan --stream` (clamd's own client, one process for all files);
- a blocking client from memory: clamd's time with next to nothing around it;
- `app.scan.Clamd` reading the files in 256 KiB pieces, over the unix socket and TCP.

Prints the median seconds per round and files/s. With the official database (millions of
signatures) clamd is slower per byte; this measures the client's share, not the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # app.*, tests.* of this checkout

from app.scan import Clamd
from tests.clamd_server import start_clamd


async def read(path: Path, piece: int = 256 * 1024) -> AsyncIterator[bytes]:
    # as the cache gives a file: pieces read off the event loop
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, piece):
            yield chunk


async def with_client(url: str, files: list[Path]) -> None:
    client = Clamd(url)
    for path in files:
        result = await client.scan(read(path))
        assert result.clean, result


def blocking(socket_path: str, blobs: list[bytes], piece: int = 256 * 1024) -> None:
    for data in blobs:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(socket_path)
            s.sendall(b"zINSTREAM\0")
            for i in range(0, len(data), piece):
                s.sendall(struct.pack(">I", len(data[i:i + piece])) + data[i:i + piece])
            s.sendall(struct.pack(">I", 0))
            reply = b""
            while not reply.endswith(b"\0"):
                reply += s.recv(128)
            assert reply == b"stream: OK\0", reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clamd-bench-") as tmp, \
            start_clamd(stream_max_length="100M", tcp=True) as server:
        made = 0

        def fresh() -> tuple[list[Path], list[bytes]]:
            # clamd caches clean verdicts by the file's hash: a file it has seen costs it a
            # fraction of a new one, so every run scans files it has never seen, as uploads are
            nonlocal made
            files, blobs = [], []
            for _ in range(args.count):
                data = os.urandom(args.size)
                path = Path(tmp) / f"f{made:05}"
                made += 1
                path.write_bytes(data)
                files.append(path)
                blobs.append(data)
            return files, blobs

        print(f"{server.version()}; clamd up in {server.startup_seconds:.2f} s; "
              f"{args.count} × {args.size} bytes, new to clamd in every run; "
              f"{os.cpu_count()} CPUs")
        conf = server.root / "clamd.conf"
        runs: dict[str, Callable[[list[Path], list[bytes]], object]] = {
            "clamdscan --stream (unix)": lambda files, _: subprocess.run(
                ["clamdscan", "-c", str(conf), "--stream", "--no-summary", *map(str, files)],
                capture_output=True, check=True),
            "blocking client from memory (unix)": lambda _, blobs: blocking(
                str(server.socket_path), blobs),
            "app.scan.Clamd from files (unix)": lambda files, _: asyncio.run(
                with_client(server.unix_url, files)),
            "app.scan.Clamd from files (tcp)": lambda files, _: asyncio.run(
                with_client(server.tcp_url, files)),
        }
        runs["blocking client from memory (unix)"](*fresh())  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                files, blobs = fresh()
                started = time.perf_counter()
                run(files, blobs)
                times[name].append(time.perf_counter() - started)
                for path in files:
                    path.unlink()
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:38} {median:6.3f} s  {args.count / median:6.0f} files/s  "
                  f"{median / args.count * 1000:5.1f} ms/file  rounds: "
                  f"{' '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
