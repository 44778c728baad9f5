#!/usr/bin/env python3
"""Promotions per second through one worker, filesystem and S3 (moto).

    python bench/promotions.py [--count 300] [--size 65536] [--backends fs,s3]

Per backend, on a fresh database and queue:

1. `stowage serve` alone; `--count` (+ a few warm-up) attachments of `--size` random bytes
   uploaded with promote=false, so they wait `cached` and nothing is queued yet.
2. ONE `stowage worker` (its default STOWAGE_WORKER_MAX_JOBS), warmed up by promoting the
   warm-up attachments and waiting until they are stored: then it is polling and its pools are
   open.
3. POST /v1/attachments/{id}/promote for all `--count` at once, and the clock runs until
   Postgres says all of them are `stored` (polled every 20 ms). promotions/s = count / that.

Besides the rate: per attachment, promote request → stored (both Postgres timestamps), the
worker's arq job run times and queue waits (from its log), and the CPU the worker (and moto)
used, to show where the time goes.

S3 is moto's ThreadedMotoServer in a process of its own (so it does not share this process's
GIL), with two buckets for cache and store. Moto is an in-memory Python fake, far slower than
a real S3: the s3 row says how Stowage drives S3, not what S3 costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
from _common import (
    DEFAULT_PG,
    DEFAULT_REDIS,
    RESULTS,
    Server,
    Stowage,
    choice_list,
    cpu_seconds,
    free_port,
    machine,
    percentile,
    start_server,
    start_stowage,
    terminate_cleanly,
    write_json,
)
from webhook_latency import arq_timings

DEFAULT_JSON = RESULTS / "promotions.json"
BACKENDS = ("fs", "s3")
WARMUP = 5
POLL_INTERVAL = 0.02
UPLOAD_CONCURRENCY = 16
PROMOTE_CONCURRENCY = 64  # "all at once", without opening hundreds of sockets
# ThreadedMotoServer in a child process, until SIGTERM
MOTO_SCRIPT = """
import signal, sys, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
server.stop()
"""
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(stack: contextlib.ExitStack, tmp: Path) -> tuple[Server, dict[str, str]]:
    """moto with a cache and a store bucket; returns it and the STOWAGE_* settings for it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_server(stack, "moto", [sys.executable, "-c", MOTO_SCRIPT, str(port)],
                          env={**os.environ, **S3_ENV}, cwd=tmp, log_dir=tmp)
    server.wait_http(f"{endpoint}/")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    for bucket in ("bench-cache", "bench-store"):
        s3.create_bucket(Bucket=bucket)
    return server, {
        **S3_ENV,
        "STOWAGE_CACHE_URL": "s3://bench-cache",
        "STOWAGE_STORE_URL": "s3://bench-store",
        "STOWAGE_S3_ENDPOINT_URL": endpoint,
        "STOWAGE_S3_REGION": "us-east-1",
    }


async def upload_cached(stowage: Stowage, count: int, size: int) -> list[str]:
    limits = httpx.Limits(max_connections=UPLOAD_CONCURRENCY)
    sem = asyncio.Semaphore(UPLOAD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=stowage.base, headers=stowage.auth_header,
                                 limits=limits, timeout=60) as client:
        async def one(i: int) -> str:
            async with sem:
                resp = await client.post(
                    "/v1/attachments/raw", params={"filename": f"p{i}.bin", "promote": "false"},
                    content=os.urandom(size),
                    headers={"content-type": "application/octet-stream"})
            if resp.status_code != 201 or resp.json()["state"] != "cached":
                raise RuntimeError(f"upload: HTTP {resp.status_code}: {resp.text[:200]}")
            return str(resp.json()["id"])

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def promote_all(stowage: Stowage, ids: list[str]) -> float:
    """Every promote call at once; returns when the last one was answered (monotonic)."""
    limits = httpx.Limits(max_connections=PROMOTE_CONCURRENCY)
    async with httpx.AsyncClient(base_url=stowage.base, headers=stowage.auth_header,
                                 limits=limits, timeout=60) as client:
        async def one(att_id: str) -> None:
            resp = await client.post(f"/v1/attachments/{att_id}/promote")
            if resp.status_code != 202:
                raise RuntimeError(f"promote: HTTP {resp.status_code}: {resp.text[:200]}")

        await asyncio.gather(*(one(i) for i in ids))
    return time.monotonic()


async def wait_stored(db_url: str, ids: list[str], limit_s: float,
                      worker: Server) -> tuple[int, int]:
    """Poll until every id is stored or failed; returns (stored, failed)."""
    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + limit_s
        while True:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE state = 'stored') AS stored,"
                " count(*) FILTER (WHERE state = 'failed') AS failed"
                " FROM attachments WHERE id = ANY($1::uuid[])", ids)
            if row["stored"] + row["failed"] >= len(ids) or time.monotonic() > deadline:
                return row["stored"], row["failed"]
            worker.check_alive()
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        await conn.close()


async def latencies_ms(db_url: str, ids: list[str]) -> list[float]:
    """Per attachment: promote requested → stored, both written by Postgres (one clock)."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM stored_at - promote_requested_at) * 1000 AS ms"
            " FROM attachments WHERE id = ANY($1::uuid[]) AND stored_at IS NOT NULL", ids)
    finally:
        await conn.close()
    return [float(r["ms"]) for r in rows]


def log_messages(log: str) -> str:
    """The messages of a JSON-lines log (the default STOWAGE_LOG_FORMAT), one a line: arq's
    arrows are \\u-escaped in the JSON, and arq_timings reads the plain text."""
    out = []
    for line in log.splitlines():
        try:
            out.append(str(json.loads(line).get("message", "")))
        except (ValueError, AttributeError):
            out.append(line)  # the text format, or a traceback line
    return "\n".join(out)


def keep_logs(tmp: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in tmp.glob("*.log"):
        shutil.copy(log, dest / log.name)


def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix=f"stowage-promo-bench-{backend}-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        if args.keep_logs:
            # runs after the processes stopped (LIFO), so the logs are complete
            stack.callback(keep_logs, tmp, args.keep_logs / backend)
        moto, extra_env = start_moto(stack, tmp) if backend == "s3" else (None, {})
        stowage = start_stowage(stack, tmp, args.pg, args.redis, extra_env=extra_env)
        print(f"[{backend}] uploading {args.count + WARMUP} x {args.size} bytes, cached",
              flush=True)
        ids = asyncio.run(upload_cached(stowage, args.count + WARMUP, args.size))
        warm, ids = ids[:WARMUP], ids[WARMUP:]
        worker = stowage.start_worker(stack)
        asyncio.run(promote_all(stowage, warm))
        stored, failed = asyncio.run(wait_stored(stowage.db_url, warm, 60, worker))
        if stored != len(warm):
            raise RuntimeError(f"[{backend}] warm-up: {stored} of {len(warm)} stored,"
                               f" {failed} failed:\n{worker.log_tail()}")
        log_from = worker.log_path.stat().st_size
        procs = {"worker": worker.pid, "serve": stowage.server.pid}
        if moto is not None:
            procs["moto"] = moto.pid
        cpu_before = {name: cpu_seconds(pid) for name, pid in procs.items()}
        print(f"[{backend}] promoting {args.count} at once, one worker", flush=True)
        t0 = time.monotonic()
        requests_done = asyncio.run(promote_all(stowage, ids))
        stored, failed = asyncio.run(wait_stored(stowage.db_url, ids, args.timeout, worker))
        elapsed = time.monotonic() - t0
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in procs.items()}
        ms = asyncio.run(latencies_ms(stowage.db_url, ids))
        with open(worker.log_path, "rb") as f:
            f.seek(log_from)
            jobs = arq_timings(log_messages(f.read().decode(errors="replace")))
    promote_runs = jobs.get("promote run", [])
    promote_waits = jobs.get("promote queue wait", [])
    return {
        "backend": backend,
        "count": args.count,
        "stored": stored,
        "failed": failed,
        "seconds": round(elapsed, 3),
        "promotions_per_s": round(stored / elapsed, 1),
        "promote_requests_s": round(requests_done - t0, 3),
        "latency_p50_ms": round(percentile(ms, 50), 1) if ms else None,
        "latency_p99_ms": round(percentile(ms, 99), 1) if ms else None,
        "job_run_p50_ms": round(percentile(promote_runs, 50), 1) if promote_runs else None,
        "job_run_p99_ms": round(percentile(promote_runs, 99), 1) if promote_runs else None,
        "queue_wait_p50_ms": round(percentile(promote_waits, 50), 1) if promote_waits else None,
        "cpu_pct": {name: round(100 * s / elapsed) for name, s in cpu.items()},
        "other_jobs": {k: len(v) for k, v in jobs.items() if not k.startswith("promote ")},
    }


def _f(value: float | None, spec: str = ".0f") -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| backend | promotions/s | stored | failed | seconds | request→stored p50 ms"
             " | p99 ms | job run p50 ms | job run p99 ms | worker CPU | serve CPU"
             " | moto CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpu = r["cpu_pct"]
        lines.append(
            f"| {r['backend']} | {r['promotions_per_s']:.0f} | {r['stored']} | {r['failed']}"
            f" | {r['seconds']:.2f} | {_f(r['latency_p50_ms'])} | {_f(r['latency_p99_ms'])}"
            f" | {_f(r['job_run_p50_ms'], '.1f')} | {_f(r['job_run_p99_ms'], '.1f')}"
            f" | {cpu['worker']}% | {cpu['serve']}% | {_f(cpu.get('moto'))}"
            f"{'%' if 'moto' in cpu else ''} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--count", type=int, default=300, help="attachments promoted (300)")
    p.add_argument("--size", type=int, default=64 * 1024, help="bytes each (65536)")
    p.add_argument("--backends", type=choice_list(BACKENDS), default=list(BACKENDS),
                   help="comma-separated: fs,s3 (default both)")
    p.add_argument("--timeout", type=float, default=300,
                   help="give up waiting for the promotions after this many seconds")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--pg", default=DEFAULT_PG)
    p.add_argument("--redis", default=DEFAULT_REDIS)
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the serve, worker (and moto) logs into DIR/<backend>/")
    args = p.parse_args(argv)
    if args.count < 1 or args.size < 1 or args.timeout <= 0:
        p.error("--count, --size and --timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with terminate_cleanly():
        rows = [bench_backend(backend, args) for backend in args.backends]
    print()
    print(f"{args.count} promotions of {args.size} bytes through one worker:")
    print(table(rows))
    write_json(args.json, {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "params": {"count": args.count, "size_bytes": args.size, "workers": 1},
        "results": rows,
    })
    print(f"\nJSON: {args.json}")
    return 0 if all(r["stored"] == r["count"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
