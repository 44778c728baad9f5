#!/usr/bin/env python3
"""A minimal tus 1.0 client for the benchmarks: creation, then fixed-size PATCHes.

    python bench/tus_client.py URL FILE [--chunk-mib 8] [--header 'Name: value'] ...
        [--metadata key=value ...]

POSTs to URL (the tus endpoint: .../files, .../v1/tus/) with `Upload-Length`, then sends the
file in PATCHes of --chunk-mib each over one keep-alive connection, each body handed to the
kernel with sendfile(2) straight from the file (nothing is read into this process, so the
client costs little CPU and no memory, like curl -T). Prints one JSON object: the PATCH phase's
seconds (first PATCH byte sent -> last response read; the creation POST is not counted, as
for the single-PATCH curl rows), the Location and the final response's headers.

Run as its own process by bench/uploads.py so that its CPU time is the client's alone.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

MiB = 1024 * 1024


@dataclass
class TusResult:
    seconds: float  # PATCH phase only
    cpu_seconds: float  # this process's CPU time in the PATCH phase (not its start-up)
    location: str
    patches: int
    status: int  # of the last PATCH
    headers: dict[str, str]  # of the last PATCH, lower-cased names


def _connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("the bench client speaks plain http only")
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=300)


def _fail(what: str, resp: http.client.HTTPResponse, body: bytes) -> RuntimeError:
    return RuntimeError(f"{what}: HTTP {resp.status}: {body[:300]!r}")


def encode_metadata(meta: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())


def upload(url: str, path: Path, *, chunk: int, headers: dict[str, str] | None = None,
           metadata: dict[str, str] | None = None) -> TusResult:
    size = path.stat().st_size
    common = {"Tus-Resumable": "1.0.0", **(headers or {})}
    conn = _connect(url)
    try:
        create = {**common, "Upload-Length": str(size), "Content-Length": "0"}
        if metadata:
            create["Upload-Metadata"] = encode_metadata(metadata)
        conn.request("POST", urlsplit(url).path or "/", headers=create)
        resp = conn.getresponse()
        body = resp.read()
        location = resp.getheader("Location")
        if resp.status != 201 or not location:
            raise _fail("tus creation", resp, body)
        location = urljoin(url, location)
        target = urlsplit(location).path
        offset, patches = 0, 0
        status, final_headers = 0, {}
        with open(path, "rb") as f:
            started, cpu_started = time.perf_counter(), time.process_time()
            while offset < size or patches == 0:
                n = min(chunk, size - offset)
                conn.putrequest("PATCH", target, skip_accept_encoding=True)
                for name, value in {**common, "Content-Type": "application/offset+octet-stream",
                                    "Upload-Offset": str(offset),
                                    "Content-Length": str(n)}.items():
                    conn.putheader(name, value)
                conn.endheaders()
                assert conn.sock is not None
                sent = conn.sock.sendfile(f, offset, n) if n else 0
                if sent != n:
                    raise RuntimeError(f"sendfile sent {sent} of {n} bytes")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 204:
                    raise _fail(f"tus PATCH at {offset}", resp, body)
                new_offset = int(resp.getheader("Upload-Offset") or -1)
                if new_offset != offset + n:
                    raise RuntimeError(f"PATCH at {offset} of {n} bytes: Upload-Offset"
                                       f" {new_offset}")
                offset, patches = new_offset, patches + 1
                status = resp.status
                final_headers = {k.lower(): v for k, v in resp.getheaders()}
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
    finally:
        conn.close()
    return TusResult(seconds, cpu, location, patches, status, final_headers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("file", type=Path)
    p.add_argument("--chunk-mib", type=float, default=8)
    p.add_argument("--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--metadata", action="append", default=[], help="key=value")
    args = p.parse_args(argv)
    headers = dict(h.split(": ", 1) for h in args.header)
    metadata = dict(m.split("=", 1) for m in args.metadata)
    try:
        result = upload(args.url, args.file, chunk=int(args.chunk_mib * MiB), headers=headers,
                        metadata=metadata)
    except (OSError, RuntimeError, http.client.HTTPException) as e:
        print(f"tus_client: {e}", file=sys.stderr)
        return 1
    json.dump(asdict(result), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
