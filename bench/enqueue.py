#!/usr/bin/env python3
"""Enqueue cost: app.jobs.JobQueue's one-round-trip script against arq's own enqueue_job.

    python bench/enqueue.py [--rounds 11] [--jobs 500] [--redis redis://127.0.0.1:6379/0]

JobQueue enqueues with a Lua script that does what arq's `ArqRedis.enqueue_job` does (same
keys, same serialized job, same "a job id already queued or done is not enqueued again"),
in one Redis round trip instead of three. That ties it to arq's key layout, so it stays only
while this measures a large gain. Each round enqueues `--jobs` fresh job ids both ways on the
real Redis (its own queue, deleted afterwards), alternating which goes first (paired: this VM
drifts); the verdict is the median of the per-round ratios. Both ways must store what an arq
worker reads back (checked on one job of each).

Prints a table and writes bench/results/enqueue.json (--json elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from pathlib import Path

from _common import DEFAULT_REDIS, RESULTS, machine, write_json
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job

from app.jobs import JobQueue

DEFAULT_JSON = RESULTS / "enqueue.json"
TARGET = 1.5  # the script must be at least this many times faster to be worth the coupling


async def run(redis_url: str, rounds: int, jobs: int) -> dict:
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    queue = f"stowage:bench-enqueue:{secrets.token_hex(4)}"
    jq = JobQueue(redis, queue)

    async def arq_way(n: int, tag: str) -> None:
        for i in range(n):
            await redis.enqueue_job("promote", "x", _job_id=f"{tag}:{i}", _queue_name=queue,
                                    request_id=None)

    async def script_way(n: int, tag: str) -> None:
        for i in range(n):
            await jq._enqueue("promote", f"{tag}:{i}", "x")

    try:
        await arq_way(1, "check-arq")
        await script_way(1, "check-script")
        a = deserialize_job(await redis.get(job_key_prefix + "check-arq:0"))
        b = deserialize_job(await redis.get(job_key_prefix + "check-script:0"))
        if (a.function, a.args, a.kwargs) != (b.function, b.args, b.kwargs):
            raise SystemExit(f"the two ways store different jobs: {a} != {b}")
        if await jq._enqueue("promote", "check-script:0", "x"):
            raise SystemExit("the script enqueued a job id that was queued already")
        arq_s, script_s, ratios = [], [], []
        for r in range(rounds):
            order = [("arq", arq_way), ("script", script_way)]
            if r % 2:
                order.reverse()
            got = {}
            for name, way in order:
                t0 = time.perf_counter()
                await way(jobs, f"{name}-{r}")
                got[name] = (time.perf_counter() - t0) / jobs
            arq_s.append(got["arq"])
            script_s.append(got["script"])
            ratios.append(got["arq"] / got["script"])
    finally:
        keys = [k async for k in redis.scan_iter(match=job_key_prefix + "*", count=1000)
                if b"check-" in k or b"arq-" in k or b"script-" in k]
        for i in range(0, len(keys), 500):
            await redis.delete(*keys[i:i + 500])
        await redis.delete(queue)
        await redis.aclose()
    return {"arq_us": statistics.median(arq_s) * 1e6,
            "script_us": statistics.median(script_s) * 1e6,
            "speedup": statistics.median(ratios), "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--jobs", type=int, default=500, help="enqueues per way and round")
    p.add_argument("--redis", default=DEFAULT_REDIS)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args()
    got = asyncio.run(run(args.redis, args.rounds, args.jobs))
    print("| enqueue | µs per job (median) |")
    print("|---|---:|")
    print(f"| arq enqueue_job (WATCH, EXISTS, MULTI/EXEC) | {got['arq_us']:.0f} |")
    print(f"| JobQueue script (one EVALSHA) | {got['script_us']:.0f} |")
    passed = got["speedup"] >= TARGET
    print(f"\npaired speedup {got['speedup']:.2f}× over {args.rounds} rounds"
          f" (target ≥ {TARGET:g}×): {'met' if passed else 'NOT met'}")
    write_json(args.json, {
        "benchmark": "enqueue", "machine": machine(),
        "params": {"rounds": args.rounds, "jobs": args.jobs},
        **got, "target": {"speedup": TARGET, "passed": passed},
    })


if __name__ == "__main__":
    main()
