#!/usr/bin/env python3
"""Small uploads: 10 KiB files from 32 concurrent clients, Stowage beside the Node tus server.

    python bench/small_uploads.py [--duration 15] [--concurrency 32] [--size 10240] [--runs 1]
                                  [--client wrk|python]

Targets (`--targets`, default all):

* stowage-raw: POST /v1/attachments/raw?promote=false, the file as the body.
* stowage-multipart: POST /v1/attachments, multipart/form-data with promote=false and the file.
* floor: `floor_app.py`, the least a Python ASGI app can do per upload with Stowage's
  guarantees (key checked in Postgres, file fsynced and renamed, row and event committed),
  under the same uvicorn with as many processes as `stowage serve`: the ceiling of any
  tuning of the API on this machine (issue 19).
* tus-node: the peer's creation-with-upload (one POST carrying the bytes) when its OPTIONS
  lists that extension, otherwise POST creation + one PATCH: what a tus client does for a
  small file.

The load is closed-loop: `--concurrency` keep-alive connections, each sending its next upload
as soon as the previous one is answered. So uploads/s is the server's capacity with that many
uploads in flight, and the latencies are what each of those clients saw. Every target gets an
untimed warm-up first (and one upload whose answer is checked: status, size), then the runs
are interleaved (run 1 of every target, then run 2...), each run starting one target later.
Target (issue 7b): Stowage's uploads/s at least the Node tus server's, in both modes.

The client shares the machine's two cores with the server, so it must be light. `--client
wrk` (the default; installed with apt-get when missing and run as root) sends the same
pre-built request on every connection from C, at a few percent of a core. `--client python`
is the httpx load generator this script used first: it needs most of a core itself (its CPU is
reported), which caps every row near the same rate and hides most of the servers' difference.
Every response must be a 2xx (wrk counts the others as errors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
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
    REPO,
    RESULTS,
    Server,
    Stowage,
    TusNode,
    choice_list,
    cpu_seconds,
    drop_database,
    empty_dir,
    free_port,
    machine,
    percentile,
    start_server,
    start_stowage,
    start_tus_node,
    terminate_cleanly,
    write_json,
)

DEFAULT_JSON = RESULTS / "small_uploads.json"
TARGET_KEYS = ("stowage-raw", "stowage-multipart", "floor", "tus-node")
ERROR_SAMPLES = 5

# One upload against an open client; raises (or returns a message) when it did not work.
UploadFn = Callable[[httpx.AsyncClient], Awaitable[str | None]]


@dataclass
class Request:
    """What wrk sends on every connection: one POST, built once."""

    path: str  # with the query string
    headers: dict[str, str]
    body: bytes


@dataclass
class Target:
    name: str
    server: Server
    base: str
    headers: dict[str, str]
    upload: UploadFn
    cleanup: Callable[[], None]
    request: Request | None = None  # None: only the python client can drive it


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

    boundary = "stowagebench" + os.urandom(8).hex()
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"promote\"\r\n\r\n"
            f"false\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\";"
            f" filename=\"small.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + body + f"\r\n--{boundary}--\r\n".encode()
    made = {
        "stowage-raw": ("stowage raw", raw, Request(
            "/v1/attachments/raw?filename=small.bin&promote=false",
            {"Content-Type": "application/octet-stream"}, body)),
        "stowage-multipart": ("stowage multipart", multipart, Request(
            "/v1/attachments", {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            form)),
    }
    return [Target(name, stowage.server, stowage.base, stowage.auth_header, fn, cleanup,
                   Request(req.path, {**stowage.auth_header, **req.headers}, req.body))
            for key, (name, fn, req) in made.items() if key in keys]


def floor_target(stack: contextlib.ExitStack, tmp: Path, pg_base: str, workers: int,
                 body: bytes) -> Target:
    """floor_app.py under uvicorn, `workers` processes (0: one per core, as `stowage serve`),
    on a throwaway database."""
    db_name = f"stowage_bench_floor_{os.urandom(4).hex()}"
    files = tmp / "floor-files"
    files.mkdir()
    port = free_port()

    async def create() -> None:
        import asyncpg
        conn = await asyncpg.connect(f"{pg_base}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{db_name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    stack.callback(lambda: asyncio.run(drop_database(pg_base, db_name)))
    env = {**os.environ, "FLOOR_DSN": f"{pg_base}/{db_name}", "FLOOR_DIR": str(files)}
    server = start_server(stack, "floor", [
        sys.executable, "-m", "uvicorn", "floor_app:app", "--app-dir", str(REPO / "bench"),
        "--port", str(port), "--workers", str(workers or os.cpu_count() or 1),
        "--http", "httptools", "--log-level", "warning", "--no-access-log"],
        env=env, cwd=tmp, log_dir=tmp)
    base = f"http://127.0.0.1:{port}"
    server.wait_http(f"{base}/", timeout=60)
    headers = {"Authorization": "Bearer floor-key"}

    async def upload(client: httpx.AsyncClient) -> str | None:
        resp = await client.post("/", content=body)
        if resp.status_code != 201 or resp.json()["size"] != len(body):
            return f"HTTP {resp.status_code}: {resp.text[:200]}"
        return None

    return Target("floor (bare ASGI)", server, base, headers, upload,
                  lambda: empty_dir(files),
                  Request("/", {**headers, "Content-Type": "application/octet-stream"}, body))


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
    request = Request("/files", {**octets, "upload-length": str(size)}, body)
    return Target(name, node.server, node.base, {},
                  one_request if with_upload else two_requests,
                  lambda: empty_dir(node.files), request if with_upload else None)


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


# wrk sends the pre-built request; done() prints what the table needs as one JSON line.
WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
for line in string.gmatch(os.getenv("BENCH_HEADERS"), "[^\n]+") do
  local k, v = line:match("^([^:]+):%s*(.*)$")
  wrk.headers[k] = v
end
function done(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format(
    '{"requests": %d, "duration_us": %d, "status": %d, "connect": %d, "read": %d,'
    .. ' "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def ensure_wrk() -> str:
    """wrk's path; installs Debian's package when it is missing and we may."""
    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get)...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env,
                          capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env,
                           capture_output=True)
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit("bench/small_uploads.py: wrk is not installed (apt-get install wrk),"
                         " or pass --client python")
    return found


def load_wrk(target: Target, concurrency: int, duration: float, work: Path) -> Run:
    assert target.request is not None
    script, body = work / "wrk.lua", work / f"wrk-body-{target.name.replace(' ', '-')}"
    script.write_text(WRK_SCRIPT)
    body.write_bytes(target.request.body)
    env = {**os.environ, "BENCH_BODY": str(body),
           "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in target.request.headers.items())}
    threads = min(2, concurrency)
    cmd = [ensure_wrk(), f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s",
           "--timeout", "60s", "-s", str(script), target.base + target.request.path]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = cpu_seconds(target.server.pid)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    server_cpu = cpu_seconds(target.server.pid) - cpu_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (children.ru_utime - children_before.ru_utime
                  + children.ru_stime - children_before.ru_stime)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    r = json.loads(lines[-1])
    elapsed = r["duration_us"] / 1e6
    errors = sum(r[k] for k in ("status", "connect", "read", "write", "timeout"))
    samples = [f"{r[k]} {k} errors" for k in ("status", "connect", "read", "write", "timeout")
               if r[k]]
    done = r["requests"] - r["status"]  # wrk counts a non-2xx answer as a request too
    return Run(
        seconds=elapsed, uploads=done, errors=errors, uploads_per_s=done / elapsed,
        p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000, max_ms=r["max_us"] / 1000,
        server_cpu_pct=100 * server_cpu / elapsed, client_cpu_pct=100 * client_cpu / elapsed,
        error_samples=samples,
    )


async def check_one(target: Target) -> None:
    """One upload through httpx, its answer checked (wrk only sees status codes)."""
    async with httpx.AsyncClient(base_url=target.base, headers=target.headers,
                                 timeout=60) as client:
        error = await target.upload(client)
    if error is not None:
        raise RuntimeError(f"{target.name}: the check upload failed: {error}")


def run_targets(targets: list[Target], args: argparse.Namespace, work: Path
                ) -> dict[str, list[Run]]:
    def one(target: Target, seconds: float) -> Run:
        if args.client == "wrk" and target.request is not None:
            return load_wrk(target, args.concurrency, seconds, work)
        return asyncio.run(load(target, args.concurrency, seconds))

    for target in targets:  # untimed: imports, pools and caches warm up
        asyncio.run(check_one(target))
        if args.warmup:
            one(target, args.warmup)
        target.cleanup()
    runs: dict[str, list[Run]] = {t.name: [] for t in targets}
    for i in range(args.runs):
        shift = i % len(targets)
        for target in targets[shift:] + targets[:shift]:
            run = one(target, args.duration)
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

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=float, default=15, help="seconds per run (default 15)")
    p.add_argument("--warmup", type=float, default=2, help="untimed seconds first (default 2)")
    p.add_argument("--concurrency", type=int, default=32, help="clients in flight (default 32)")
    p.add_argument("--size", type=int, default=10 * 1024, help="bytes per upload (10240)")
    p.add_argument("--runs", type=int, default=1, help="runs per target (median)")
    p.add_argument("--client", choices=("wrk", "python"), default="wrk",
                   help="load generator (default wrk; see the docstring)")
    p.add_argument("--targets", type=choice_list(TARGET_KEYS), default=list(TARGET_KEYS),
                   help=f"comma-separated, default all: {','.join(TARGET_KEYS)}")
    p.add_argument("--api-workers", type=int, default=0, metavar="N",
                   help="`stowage serve` processes (default 0: serve's default, one per core)")
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
            # 0: what `stowage serve` picks by default (one process per core)
            stowage = start_stowage(stack, tmp, args.pg, args.redis, extra_env={
                "STOWAGE_API_WORKERS": str(args.api_workers)})
            cache = tmp / "stowage-cache"
            cache.mkdir(exist_ok=True)
            targets += stowage_targets(stowage, cache, body, keys)
        if "floor" in keys:
            targets.append(floor_target(stack, tmp, args.pg, args.api_workers, body))
        with_upload = None
        if "tus-node" in keys:
            node = start_tus_node(stack, args.peer_dir, tmp)
            with_upload = asyncio.run(tus_supports_creation_with_upload(node.base))
            targets.append(tus_node_target(node, body, with_upload))
        if args.client == "wrk":
            ensure_wrk()
        print(f"{args.size} bytes per upload, {args.concurrency} in flight, {args.duration:g} s"
              f" per run, {args.runs} run(s), client {args.client}, Stowage API processes"
              f" {args.api_workers or 'default (one per core)'}", flush=True)
        runs = run_targets(targets, args, tmp)
    rows = summarise(runs)
    print()
    print(table(rows))
    write_json(args.json, {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "params": {"size_bytes": args.size, "concurrency": args.concurrency,
                   "duration_s": args.duration, "runs": args.runs, "client": args.client,
                   "tus_node_creation_with_upload": with_upload,
                   "api_workers": args.api_workers or None},
        "results": rows,
    })
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
