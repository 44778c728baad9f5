#!/usr/bin/env python3
"""Small uploads: 10 KiB files from 32 concurrent clients, Stowage beside the Node tus server.

    python bench/small_uploads.py [--duration 15] [--concurrency 32] [--size 10240] [--runs 1]

Targets (`--targets`, default all):

* stowage-raw: POST /v1/attachments/raw?promote=false, the file as the body.
* stowage-multipart: POST /v1/attachments, multipart/form-data with promote=false and the file.
* tus-node: the peer's creation-with-upload (one POST carrying the bytes) when its OPTIONS
  lists that extension, otherwise POST creation + one PATCH: what a tus client does for a
  small file.

The load is closed-loop: `--concurrency` workers in one asyncio process share one httpx
AsyncClient (that many keep-alive connections), each sending its next upload as soon as the
previous one is answered. So uploads/s is the server's capacity with that many uploads in
flight, and the latencies are what each of those clients saw. Every target gets an untimed
warm-up first, then the runs are interleaved (run 1 of every target, then run 2...), each run
starting one target later. Target (issue 7b): Stowage's uploads/s at least the Node tus
server's, in both modes.

The client shares the machine's cores with the server: its CPU is reported (a client near
100% of a core limits every row alike and narrows the differences).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    DEFAULT_PEER_DIR,
    DEFAULT_PG,
    DEFAULT_REDIS,
    RESULTS,
    Server,
    Stowage,
    TusNode,
    cpu_seconds,
    empty_dir,
    machine,
    percentile,
    start_stowage,
    start_tus_node,
    terminate_cleanly,
    write_json,
)

DEFAULT_JSON = RESULTS / "small_uploads.json"
TARGET_KEYS = ("stowage-raw", "stowage-multipart", "tus-node")
ERROR_SAMPLES = 5

# One upload against an open client; raises (or returns a message) when it did not work.
UploadFn = Callable[[httpx.AsyncClient], Awaitable[str | None]]


@dataclass
class Target:
    name: str
    server: Server
    base: str
    headers: dict[str, str]
    upload: UploadFn
    cleanup: Callable[[], None]


# --- targets ---------------------------------------------------------------------------------

def stowage_targets(stowage: Stowage, cache: Path, body: bytes, keys: set[str]) -> list[Target]:
    size = len(body)

    def check(resp: httpx.Response) -> str | None:
        if resp.status_code != 201:
            return f"HTTP {resp.status_code}: {resp.text[:200]}"
        if resp.json()["size"] != size:
            return f"size {resp.json()['size']} != {size}"
        return None

    async def raw(client: httpx.AsyncClient) -> str | None:
        return check(await client.post(
            "/v1/attachments/raw", params={"filename": "small.bin", "promote": "false"},
            content=body, headers={"content-type": "application/octet-stream"}))

    async def multipart(client: httpx.AsyncClient) -> str | None:
        # httpx writes the data fields before the file: promote is known up front
        return check(await client.post(
            "/v1/attachments", data={"promote": "false"},
            files={"file": ("small.bin", body, "application/octet-stream")}))

    def cleanup() -> None:
        empty_dir(cache)  # the rows stay in the bench database, dropped at the end

    made = {"stowage-raw": ("stowage raw", raw),
            "stowage-multipart": ("stowage multipart", multipart)}
    return [Target(name, stowage.server, stowage.base, stowage.auth_header, fn, cleanup)
            for key, (name, fn) in made.items() if key in keys]


async def tus_supports_creation_with_upload(base: str) -> bool:
    async with httpx.AsyncClient(base_url=base) as client:
        resp = await client.options("/files", headers={"tus-resumable": "1.0.0"})
    extensions = {e.strip() for e in resp.headers.get("tus-extension", "").split(",")}
    return "creation-with-upload" in extensions


def tus_node_target(node: TusNode, body: bytes, with_upload: bool) -> Target:
    size = len(body)
    tus = {"tus-resumable": "1.0.0"}
    octets = {**tus, "content-type": "application/offset+octet-stream"}

    async def one_request(client: httpx.AsyncClient) -> str | None:
        resp = await client.post("/files", content=body,
                                 headers={**octets, "upload-length": str(size)})
        if resp.status_code != 201:
            return f"HTTP {resp.status_code}: {resp.text[:200]}"
        if resp.headers.get("upload-offset") != str(size):
            return f"Upload-Offset {resp.headers.get('upload-offset')} != {size}"
        return None

    async def two_requests(client: httpx.AsyncClient) -> str | None:
        created = await client.post("/files", headers={**tus, "upload-length": str(size)})
        if created.status_code != 201:
            return f"creation: HTTP {created.status_code}: {created.text[:200]}"
        resp = await client.patch(created.headers["location"], content=body,
                                  headers={**octets, "upload-offset": "0"})
        if resp.status_code != 204 or resp.headers.get("upload-offset") != str(size):
            return f"PATCH: HTTP {resp.status_code}, Upload-Offset" \
                   f" {resp.headers.get('upload-offset')}"
        return None

    name = "tus-node" + ("" if with_upload else " (POST + PATCH)")
    return Target(name, node.server, node.base, {},
                  one_request if with_upload else two_requests,
                  lambda: empty_dir(node.files))


# --- the load --------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    uploads: int
    errors: int
    uploads_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    server_cpu_pct: float
    client_cpu_pct: float
    error_samples: list[str] = field(default_factory=list)


async def load(target: Target, concurrency: int, duration: float) -> Run:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=target.base, headers=target.headers, limits=limits,
                                 timeout=60) as client:
        # open every connection before the clock starts: the steady state is measured, not
        # 32 TCP handshakes
        await asyncio.gather(*(target.upload(client) for _ in range(concurrency)))
        deadline = 0.0

        async def worker() -> None:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    error = await target.upload(client)
                except (httpx.HTTPError, KeyError, ValueError) as e:
                    error = f"{type(e).__name__}: {e}"
                if error is None:
                    latencies.append(time.monotonic() - started)
                else:
                    errors.append(error)

        cpu_before, client_before = cpu_seconds(target.server.pid), time.process_time()
        t0 = time.monotonic()
        deadline = t0 + duration
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0  # includes the last uploads started before deadline
        server_cpu = cpu_seconds(target.server.pid) - cpu_before
        client_cpu = time.process_time() - client_before
    ms = [v * 1000 for v in latencies]
    return Run(
        seconds=elapsed, uploads=len(latencies), errors=len(errors),
        uploads_per_s=len(latencies) / elapsed,
        p50_ms=percentile(ms, 50) if ms else None, p99_ms=percentile(ms, 99) if ms else None,
        max_ms=max(ms, default=None),
        server_cpu_pct=100 * server_cpu / elapsed, client_cpu_pct=100 * client_cpu / elapsed,
        error_samples=sorted(set(errors))[:ERROR_SAMPLES],
    )


def run_targets(targets: list[Target], args: argparse.Namespace) -> dict[str, list[Run]]:
    for target in targets:  # untimed: imports, pools and caches warm up
        asyncio.run(load(target, args.concurrency, args.warmup))
        target.cleanup()
    runs: dict[str, list[Run]] = {t.name: [] for t in targets}
    for i in range(args.runs):
        shift = i % len(targets)
        for target in targets[shift:] + targets[:shift]:
            run = asyncio.run(load(target, args.concurrency, args.duration))
            target.cleanup()
            runs[target.name].append(run)
            print(f"  run {i + 1}/{args.runs} {target.name:<18} {run.uploads_per_s:8.0f}/s"
                  f"  p99 {run.p99_ms or 0:7.1f} ms  errors {run.errors}", flush=True)
    return runs


# --- reporting -------------------------------------------------------------------------------

def summarise(runs: dict[str, list[Run]]) -> list[dict[str, Any]]:
    """Median over the runs of each figure (errors: the total)."""
    tus = next((statistics.median(r.uploads_per_s for r in rs)
                for name, rs in runs.items() if name.startswith("tus-node")), None)
    rows = []
    for name, rs in runs.items():
        def med(attr: str, rs: list[Run] = rs) -> float | None:
            values = [v for r in rs if (v := getattr(r, attr)) is not None]
            return statistics.median(values) if values else None

        per_s = med("uploads_per_s") or 0.0
        rows.append({
            "name": name, "uploads_per_s": round(per_s, 1),
            "vs_tus_node": round(per_s / tus, 3) if tus else None,
            "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"), "max_ms": med("max_ms"),
            "errors": sum(r.errors for r in rs), "uploads": sum(r.uploads for r in rs),
            "server_cpu_pct": med("server_cpu_pct"), "client_cpu_pct": med("client_cpu_pct"),
            "runs": [asdict(r) for r in rs],
        })
    return rows


def _f(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | uploads/s | vs tus-node | p50 ms | p99 ms | max ms | errors"
             " | server CPU | client CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['uploads_per_s']:.0f} | {_f(r['vs_tus_node'], '.2f')}× "
            f"| {_f(r['p50_ms'], '.1f')} | {_f(r['p99_ms'], '.1f')} | {_f(r['max_ms'], '.1f')} "
            f"| {r['errors']} | {_f(r['server_cpu_pct'], '.0f')}% "
            f"| {_f(r['client_cpu_pct'], '.0f')}% |")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------

def _target_list(value: str) -> list[str]:
    keys = [k.strip() for k in value.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(TARGET_KEYS))
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown target(s) {', '.join(unknown) or '(none given)'}; choose from"
            f" {','.join(TARGET_KEYS)}")
    return [k for k in TARGET_KEYS if k in keys]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=float, default=15, help="seconds per run (default 15)")
    p.add_argument("--warmup", type=float, default=2, help="untimed seconds first (default 2)")
    p.add_argument("--concurrency", type=int, default=32, help="clients in flight (default 32)")
    p.add_argument("--size", type=int, default=10 * 1024, help="bytes per upload (10240)")
    p.add_argument("--runs", type=int, default=1, help="runs per target (median)")
    p.add_argument("--targets", type=_target_list, default=list(TARGET_KEYS),
                   help=f"comma-separated, default all: {','.join(TARGET_KEYS)}")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--peer-dir", type=Path, default=DEFAULT_PEER_DIR)
    p.add_argument("--pg", default=DEFAULT_PG)
    p.add_argument("--redis", default=DEFAULT_REDIS)
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.size < 1 \
            or args.runs < 1:
        p.error("--duration, --concurrency, --size and --runs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = set(args.targets)
    body = os.urandom(args.size)  # one payload for all: the client does not hash per upload
    with terminate_cleanly(), contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stowage-small-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        targets: list[Target] = []
        if keys & {"stowage-raw", "stowage-multipart"}:
            stowage = start_stowage(stack, tmp, args.pg, args.redis)
            cache = tmp / "stowage-cache"
            cache.mkdir(exist_ok=True)
            targets += stowage_targets(stowage, cache, body, keys)
        with_upload = None
        if "tus-node" in keys:
            node = start_tus_node(stack, args.peer_dir, tmp)
            with_upload = asyncio.run(tus_supports_creation_with_upload(node.base))
            targets.append(tus_node_target(node, body, with_upload))
        print(f"{args.size} bytes per upload, {args.concurrency} in flight, {args.duration:g} s"
              f" per run, {args.runs} run(s)", flush=True)
        runs = run_targets(targets, args)
    rows = summarise(runs)
    print()
    print(table(rows))
    write_json(args.json, {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "params": {"size_bytes": args.size, "concurrency": args.concurrency,
                   "duration_s": args.duration, "runs": args.runs,
                   "tus_node_creation_with_upload": with_upload},
        "results": rows,
    })
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
