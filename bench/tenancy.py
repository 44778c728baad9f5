#!/usr/bin/env python3
"""Tenancy's cost (issue 24): small-upload throughput of an app with a storage quota and a
rate limit against an app with neither, on one `stowage serve`.

    python bench/tenancy.py [--duration 15] [--concurrency 32] [--size 10240] [--runs 1]

Both apps upload 10 KiB raw bodies (POST /v1/attachments/raw?promote=false) with wrk, closed
loop (as bench/small_uploads.py). The limited app's quota and rate are far above what the run
reaches, so every upload takes the whole path and none is refused: the quota's reservation
on the app's row and the INSERT's trigger (app/uploads/quotas.py) and the rate limit's
sliding window counter in Redis (app/uploads/rate_limits.py). Runs alternate (off, on, on,
off, ...). BENCH_TENANCY_LIMITS=quota or =rate limits the app by one of them only. Server
CPU per upload (the API processes) is printed too: less noisy than uploads/s on a shared VM.
Target: the limited app's uploads/s at most 10% below the open app's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    RESULTS,
    empty_dir,
    machine,
    start_stowage,
    stowage_cli,
    terminate_cleanly,
    write_json,
)
from small_uploads import Request, Target, check_one, ensure_wrk, load_wrk, parse_args

DEFAULT_JSON = RESULTS / "tenancy.json"
TARGET_COST = 0.10


def main(argv: list[str] | None = None) -> int:
    sys.argv[0] = "tenancy.py"
    args = parse_args(argv)
    body = os.urandom(args.size)
    with terminate_cleanly(), contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stowage-tenancy-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stowage = start_stowage(stack, tmp, args.pg, args.redis, extra_env={
            "STOWAGE_API_WORKERS": str(args.api_workers)})
        cache = tmp / "stowage-cache"
        cache.mkdir(exist_ok=True)
        limited = json.loads(stowage_cli(["apps", "create", "limited", "--json"], stowage.env,
                                         tmp))
        which = os.environ.get("BENCH_TENANCY_LIMITS", "quota,rate").split(",")
        stowage_cli(["apps", "update", limited["app_id"],
                     *(["--quota-bytes", "1TB"] if "quota" in which else []),
                     *(["--rate-limit", "100000000"] if "rate" in which else [])],
                    stowage.env, tmp)
        path = "/v1/attachments/raw?filename=small.bin&promote=false"

        def target(name: str, key: str) -> Target:
            headers = {"Authorization": f"Bearer {key}"}

            async def upload(client):  # type: ignore[no-untyped-def]
                r = await client.post(path, content=body)
                return None if r.status_code == 201 else f"HTTP {r.status_code}: {r.text[:200]}"

            return Target(name, stowage.server, stowage.base, headers, upload,
                          lambda: empty_dir(cache),
                          Request(path, {**headers, "Content-Type": "application/octet-stream"},
                                  body))

        off = target("quota and rate limit off", stowage.api_key)
        on = target("quota and rate limit on", limited["api_key"])
        ensure_wrk()
        for t in (off, on):
            asyncio.run(check_one(t))
            if args.warmup:
                load_wrk(t, args.concurrency, args.warmup, tmp)
            t.cleanup()
        print(f"{args.size} bytes per upload, {args.concurrency} in flight,"
              f" {args.duration:g} s per run, {args.runs} run(s) each", flush=True)
        runs: dict[str, list] = {off.name: [], on.name: []}
        for i in range(args.runs):
            for t in ((off, on) if i % 2 == 0 else (on, off)):
                run = load_wrk(t, args.concurrency, args.duration, tmp)
                runs[t.name].append(run)
                t.cleanup()
                print(f"  run {i + 1}/{args.runs} {t.name:<26} {run.uploads_per_s:8.0f}/s"
                      f"  p99 {run.p99_ms or 0:7.1f} ms  errors {run.errors}", flush=True)
    per_s = {name: statistics.median(r.uploads_per_s for r in rs) for name, rs in runs.items()}
    p99 = {name: statistics.median(r.p99_ms or 0 for r in rs) for name, rs in runs.items()}
    errors = {name: sum(r.errors for r in rs) for name, rs in runs.items()}
    # API processes' CPU per upload (ms): what tenancy adds, less exposed to the neighbours
    cpu_ms = {name: statistics.median(1000 * (r.server_cpu_pct or 0) / 100 * r.seconds
                                      / max(r.uploads, 1) for r in rs)
              for name, rs in runs.items()}
    cost = 1 - per_s[on.name] / per_s[off.name]
    met = cost < TARGET_COST and not any(errors.values())
    print()
    print("| app | uploads/s | p99 ms | API CPU ms/upload | errors |")
    print("|---|---:|---:|---:|---:|")
    for name in (off.name, on.name):
        print(f"| {name} | {per_s[name]:.0f} | {p99[name]:.1f} | {cpu_ms[name]:.2f}"
              f" | {errors[name]} |")
    print(f"\nAPI CPU per upload: {cpu_ms[on.name] / cpu_ms[off.name] - 1:+.1%}")
    print(f"\ncost of quota + rate limit: {cost:+.1%} (target < {TARGET_COST:.0%}):"
          f" {'met' if met else 'not met'}")
    write_json(args.json if args.json != RESULTS / "small_uploads.json" else DEFAULT_JSON, {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["tenancy.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "params": {"size_bytes": args.size, "concurrency": args.concurrency,
                   "duration_s": args.duration, "runs": args.runs},
        "uploads_per_s": per_s, "p99_ms": p99, "errors": errors, "cost": cost, "met": met,
        "api_cpu_ms_per_upload": cpu_ms,
    })
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
