#!/usr/bin/env python3
"""Event-loop CPU of the ingest pipeline, raw body vs multipart, with no network.

    python bench/ingest_cpu.py [--size-mib 1024] [--chunk-kib 256] [--runs 2]

Feeds the same bytes, in chunks the size uvicorn hands over, through what the upload routes
run (`receive`: sniff, hash and write behind, into a filesystem storage in a temp dir), once as
a raw body and once wrapped in multipart/form-data and parsed by `iter_multipart`. Prints
MB/s and the CPU time of the event-loop thread per GiB: the part of an upload that competes
with receiving the socket. The difference between the rows is the multipart parser's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.profiles import load_profiles
from app.storage.filesystem import FilesystemStorage
from app.uploads.ingest import Received, receive
from app.uploads.multipart import FileStart, file_bytes, iter_multipart

BOUNDARY = b"----stowage-bench-boundary"
GiB = 1 << 30


def _chunks(size_mib: int, chunk: int) -> Iterator[bytes]:
    block = os.urandom(1 << 20)
    for _ in range(size_mib):
        for i in range(0, len(block), chunk):
            yield block[i:i + chunk]


async def _raw(size_mib: int, chunk: int) -> AsyncIterator[bytes]:
    for c in _chunks(size_mib, chunk):
        yield c


async def _multipart(size_mib: int, chunk: int) -> AsyncIterator[bytes]:
    yield (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file";'
           b' filename="a.bin"\r\nContent-Type: application/octet-stream\r\n\r\n')
    for c in _chunks(size_mib, chunk):
        yield c
    yield b"\r\n--" + BOUNDARY + b"--\r\n"


async def _one(mode: str, size_mib: int, chunk: int, root: Path) -> tuple[float, float]:
    storage = FilesystemStorage(root)
    profile = load_profiles(None).get(None)
    got: Received | None = None
    started, cpu = time.perf_counter(), time.thread_time()
    if mode == "raw":
        got = await receive(_raw(size_mib, chunk), storage=storage, key=f"{mode}/file",
                            profile=profile, max_upload_size=1 << 50)
    else:
        events = iter_multipart(_multipart(size_mib, chunk), BOUNDARY)
        async for event in events:
            if isinstance(event, FileStart):
                got = await receive(file_bytes(events), storage=storage, key=f"{mode}/file",
                                    profile=profile, max_upload_size=1 << 50)
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    assert got is not None and got.size == size_mib << 20
    await storage.delete(f"{mode}/file")
    return got.size / 1e6 / seconds, cpu * GiB / got.size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--chunk-kib", type=int, default=256)
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"raw": [], "multipart": []}
    with tempfile.TemporaryDirectory(prefix="stowage-ingest-") as tmp:
        for _ in range(args.runs):
            for mode in results:  # interleaved, so drift hits both alike
                results[mode].append(asyncio.run(
                    _one(mode, args.size_mib, args.chunk_kib * 1024, Path(tmp))))
    print(f"\n{args.size_mib} MiB in {args.chunk_kib} KiB chunks, {args.runs} run(s), medians:")
    print("| pipeline | MB/s | event-loop CPU s/GiB |\n|---|---:|---:|")
    for mode, runs in results.items():
        print(f"| {mode} | {statistics.median(r[0] for r in runs):.0f} |"
              f" {statistics.median(r[1] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
