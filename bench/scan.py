#!/usr/bin/env python3
"""Issue 20's benchmark: what malware scanning costs a promotion, against clamd's own time.

    python bench/scan.py [--count 200] [--size 1048576] [--rate 10] [--duration 10]

One clamd (tests/clamd_server.py: Debian's clamd, the tests' own small signature database,
StreamMaxLength 64M, over TCP as in docker-compose.yml), and Stowage as in production:
`stowage serve` and ONE `stowage worker`, a profiles file with a `scan = true` profile
("scanned") and a plain one ("plain"), STOWAGE_CLAMD_URL pointing at that clamd.

1. Warm-up: `--warmup-mib` of random files through clamd (its first ~100 MiB after a start
   can be slower), then through Stowage (a few promotions per profile). All files below are
   uploaded first, with promote=false (they wait `cached`), before the worker starts.
2. `--rounds` paired rounds (default 4), each on its own share of the `--count` files per
   profile, the order of the three turning every round, so that this VM's drift moves all
   three alike:
   - clamd's own time (the baseline): `app.scan.Clamd` straight from memory, one file at a
     time, files of `--size` random bytes that clamd has never seen: ms per file;
   - promotions of the plain profile, and of the scanned one: POST /promote for all of the
     round's files at once; the clock runs until Postgres says all are `stored`.
   Summed over the rounds: time per promotion, promotions/s; request → stored p50/p99
   (Postgres timestamps), the worker's job run times (its log), the CPU of the worker, serve
   and clamd, and of the whole machine (other tenants of a shared VM included).
3. Reported beside the baseline: the same files scanned again (clamd keeps a cache of clean
   verdicts keyed by the file's hash, so a file it has seen costs it a fraction: every
   baseline and upload here is new to clamd, as uploads are in production), and new files
   STOWAGE_WORKER_MAX_JOBS at a time, as the worker runs them.
4. Upload → stored, per profile: uploads (promoted as usual) at `--rate` per second for
   `--duration` seconds; per upload, request start → `stored_at` (the same machine's clock)
   and 201 → `stored_at`: p50, p99, max.

Target (issue 20): scanning costs no more than clamd's own scan time of the same files plus
20%, i.e. (time per promotion scanned − plain) ≤ 1.2 × clamd's ms per file, all three from
step 2. The one worker runs up to STOWAGE_WORKER_MAX_JOBS promotions at once, so scans can
overlap: the difference is a cost in throughput, not one file's latency (step 4 shows that).

Prints Markdown tables and the verdict (met / not met), writes bench/results/scan.json. With
the official database (millions of signatures) clamd is slower per byte than with the test
one: the target compares Stowage's cost with clamd's own on the same database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from _common import (
    DEFAULT_PG,
    DEFAULT_REDIS,
    REPO,
    RESULTS,
    Server,
    Stowage,
    cpu_seconds,
    machine,
    percentile,
    start_stowage,
    terminate_cleanly,
    write_json,
)
from promotions import keep_logs, latencies_ms, log_messages, promote_all, wait_stored
from webhook_latency import arq_timings

sys.path.insert(0, str(REPO))  # app.*, tests.* of this checkout

from app.config import Settings
from app.scan import Clamd
from tests.clamd_server import ClamdServer, start_clamd

DEFAULT_JSON = RESULTS / "scan.json"
PROFILES = {"plain": "", "scanned": "scan = true\n"}
MODES = ("plain", "scanned")
WARMUP = 5  # promotions per profile before the clock runs
UPLOAD_CONCURRENCY = 8
TARGET_FACTOR = 1.2
# the worker's default STOWAGE_WORKER_MAX_JOBS: how many scans it may have in flight
MAX_JOBS = Settings.model_fields["worker_max_jobs"].default


def profiles_toml() -> str:
    return "".join(f"[profiles.{name}]\n{body}\n" for name, body in PROFILES.items())


# --- clamd's own time ------------------------------------------------------------------------

async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def clamd_ms_per_file(url: str, blobs: list[bytes], concurrency: int = 1) -> float:
    """app.scan.Clamd from memory, `concurrency` files at a time (one file at a time: clamd's
    own time per file), with its chunking and a connection per scan: wall ms per file."""
    client = Clamd(url)
    sem = asyncio.Semaphore(concurrency)

    async def one(data: bytes) -> None:
        async with sem:
            result = await client.scan(_one(data))
        if not result.clean:
            raise RuntimeError(f"a random file was reported infected: {result}")

    started = time.perf_counter()
    await asyncio.gather(*(one(data) for data in blobs))
    return (time.perf_counter() - started) / len(blobs) * 1000


def timed_clamd(clamd: ClamdServer, blobs: list[bytes], concurrency: int = 1,
                ) -> tuple[float, float]:
    """(wall ms per file, clamd's CPU ms per file)."""
    cpu = cpu_seconds(clamd_pid(clamd))
    wall = asyncio.run(clamd_ms_per_file(clamd.tcp_url, blobs, concurrency))
    return wall, (cpu_seconds(clamd_pid(clamd)) - cpu) / len(blobs) * 1000


def clamd_pid(clamd: ClamdServer) -> int:
    assert clamd.process is not None
    return clamd.process.pid


def random_files(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


# --- Stowage ---------------------------------------------------------------------------------

async def upload_cached(stowage: Stowage, profile: str, blobs: list[bytes]) -> list[str]:
    sem = asyncio.Semaphore(UPLOAD_CONCURRENCY)
    limits = httpx.Limits(max_connections=UPLOAD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=stowage.base, headers=stowage.auth_header,
                                 limits=limits, timeout=60) as client:
        async def one(i: int, data: bytes) -> str:
            async with sem:
                resp = await client.post(
                    "/v1/attachments/raw",
                    params={"filename": f"{profile}-{i}.bin", "profile": profile,
                            "promote": "false"},
                    content=data, headers={"content-type": "application/octet-stream"})
            if resp.status_code != 201 or resp.json()["state"] != "cached":
                raise RuntimeError(f"upload: HTTP {resp.status_code}: {resp.text[:200]}")
            return str(resp.json()["id"])

        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(blobs))))


async def paced_uploads(stowage: Stowage, profile: str, size: int, rate: float,
                        duration: float) -> list[tuple[str, float, float]]:
    """Uploads (promoted as usual) at `rate`/s: (id, request start, 201), wall clock."""
    count = max(1, round(rate * duration))
    blobs = random_files(count, size)  # made before the clock runs
    out: list[tuple[str, float, float]] = []
    async with httpx.AsyncClient(base_url=stowage.base, headers=stowage.auth_header,
                                 timeout=60) as client:
        async def one(i: int) -> None:
            started = time.time()
            resp = await client.post(
                "/v1/attachments/raw",
                params={"filename": f"{profile}-paced-{i}.bin", "profile": profile},
                content=blobs[i], headers={"content-type": "application/octet-stream"})
            answered = time.time()
            if resp.status_code != 201:
                raise RuntimeError(f"upload: HTTP {resp.status_code}: {resp.text[:200]}")
            out.append((str(resp.json()["id"]), started, answered))

        t0 = time.monotonic()
        tasks = []
        for i in range(count):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return out


async def stored_epochs(db_url: str, ids: list[str]) -> dict[str, float]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text, extract(epoch FROM stored_at) AS t FROM attachments"
            " WHERE id = ANY($1::uuid[]) AND stored_at IS NOT NULL", ids)
    finally:
        await conn.close()
    return {r["id"]: float(r["t"]) for r in rows}


async def scan_metadata(db_url: str, ids: list[str]) -> int:
    """How many of `ids` carry metadata.scan (a scanned profile must have it on every one)."""
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM attachments WHERE id = ANY($1::uuid[])"
            " AND metadata ? 'scan'", ids)
    finally:
        await conn.close()


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(percentile(values, 50), 1), "p99_ms": round(percentile(values, 99), 1),
            "max_ms": round(max(values), 1)}


class MachineCpu:
    """The whole machine's CPU over an interval (other tenants of a shared VM included)."""

    def __init__(self) -> None:
        self.start = psutil.cpu_times()

    def busy(self) -> dict[str, float]:
        """Seconds of all CPUs: busy (neither idle nor iowait), iowait, and the total."""
        end = psutil.cpu_times()
        delta = {f: getattr(end, f) - getattr(self.start, f) for f in end._fields}
        total = sum(delta.values())
        idle, iowait = delta.get("idle", 0.0), delta.get("iowait", 0.0)
        return {"busy": total - idle - iowait, "iowait": iowait, "total": total}


def add(into: dict[str, float], more: dict[str, float]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0.0) + value


def promotion_burst(stowage: Stowage, worker: Server, clamd: ClamdServer, mode: str,
                    ids: list[str], timeout: float) -> dict[str, Any]:
    """All of `ids` promoted at once; raw numbers, summed over the rounds by `summary`."""
    log_from = worker.log_path.stat().st_size
    procs = {"worker": worker.pid, "serve": stowage.server.pid, "clamd": clamd_pid(clamd)}
    cpu_before = {name: cpu_seconds(pid) for name, pid in procs.items()}
    whole = MachineCpu()
    t0 = time.monotonic()
    asyncio.run(promote_all(stowage, ids))
    stored, failed = asyncio.run(wait_stored(stowage.db_url, ids, timeout, worker))
    elapsed = time.monotonic() - t0
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in procs.items()}
    with open(worker.log_path, "rb") as f:
        f.seek(log_from)
        jobs = arq_timings(log_messages(f.read().decode(errors="replace")))
    print(f"[{mode}] {len(ids)} promoted at once: {elapsed:.2f} s,"
          f" {elapsed / len(ids) * 1000:.1f} ms each", flush=True)
    return {"ids": ids, "stored": stored, "failed": failed, "seconds": elapsed, "cpu_s": cpu,
            "machine_s": whole.busy(), "runs": jobs.get("promote run", [])}


def summary(stowage: Stowage, bursts: list[dict[str, Any]]) -> dict[str, Any]:
    ids = [i for b in bursts for i in b["ids"]]
    elapsed = sum(b["seconds"] for b in bursts)
    cpu: dict[str, float] = {}
    whole: dict[str, float] = {}
    for b in bursts:
        add(cpu, b["cpu_s"])
        add(whole, b["machine_s"])
    stored = sum(b["stored"] for b in bursts)
    return {
        "count": len(ids), "stored": stored, "failed": sum(b["failed"] for b in bursts),
        "with_scan_metadata": asyncio.run(scan_metadata(stowage.db_url, ids)),
        "seconds": round(elapsed, 3),
        "promotions_per_s": round(stored / elapsed, 1),
        "ms_per_promotion": round(elapsed / len(ids) * 1000, 2),
        "per_round_ms": [round(b["seconds"] / len(b["ids"]) * 1000, 2) for b in bursts],
        "request_to_stored": stats(asyncio.run(latencies_ms(stowage.db_url, ids))),
        "job_run": stats([r for b in bursts for r in b["runs"]]),
        "cpu_pct": {name: round(100 * s / elapsed) for name, s in cpu.items()},
        "clamd_cpu_ms_per_promotion": round(cpu["clamd"] / len(ids) * 1000, 2),
        # of all CPUs together (100% = every CPU busy), anyone's work
        "machine_busy_pct": round(100 * whole["busy"] / whole["total"]),
        "machine_iowait_pct": round(100 * whole["iowait"] / whole["total"]),
    }


def upload_to_stored(stowage: Stowage, worker: Server, mode: str, args: argparse.Namespace,
                     ) -> dict[str, Any]:
    print(f"[{mode}] uploading at {args.rate:g}/s for {args.duration:g} s", flush=True)
    sent = asyncio.run(paced_uploads(stowage, mode, args.size, args.rate, args.duration))
    ids = [i for i, _, _ in sent]
    stored, failed = asyncio.run(wait_stored(stowage.db_url, ids, args.timeout, worker))
    done = asyncio.run(stored_epochs(stowage.db_url, ids))
    from_start = [(done[i] - s) * 1000 for i, s, _ in sent if i in done]
    from_201 = [(done[i] - a) * 1000 for i, _, a in sent if i in done]
    return {"count": len(ids), "stored": stored, "failed": failed,
            "request_start_to_stored": stats(from_start), "answer_201_to_stored": stats(from_201),
            "upload_request": stats([(a - s) * 1000 for _, s, a in sent])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stowage-scan-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        if args.keep_logs:
            stack.callback(keep_logs, tmp, args.keep_logs)  # after the processes stopped
        clamd = stack.enter_context(start_clamd(stream_max_length="64M", tcp=True))
        version = clamd.version()
        print(f"{version}; clamd up in {clamd.startup_seconds:.2f} s; {clamd.tcp_url}",
              flush=True)

        # 1. clamd warm-up (then Stowage's, below)
        warm_count = max(1, args.warmup_mib * 1024 * 1024 // args.size)
        warm_ms, _ = timed_clamd(clamd, random_files(warm_count, args.size))
        print(f"clamd warm-up: {warm_count} files, {warm_ms:.1f} ms/file", flush=True)

        profiles = tmp / "profiles.toml"
        profiles.write_text(profiles_toml())
        stowage = start_stowage(stack, tmp, args.pg, args.redis, extra_env={
            "STOWAGE_PROFILES_FILE": str(profiles), "STOWAGE_CLAMD_URL": clamd.tcp_url})
        ids: dict[str, list[str]] = {}
        for mode in MODES:
            print(f"[{mode}] uploading {args.count + WARMUP} x {args.size} bytes, cached",
                  flush=True)
            ids[mode] = asyncio.run(upload_cached(
                stowage, mode, random_files(args.count + WARMUP, args.size)))
        worker = stowage.start_worker(stack)
        warm = [i for mode in MODES for i in ids[mode][:WARMUP]]
        asyncio.run(promote_all(stowage, warm))
        stored, failed = asyncio.run(wait_stored(stowage.db_url, warm, 60, worker))
        if stored != len(warm):
            raise RuntimeError(f"warm-up: {stored} of {len(warm)} stored, {failed} failed:\n"
                               f"{worker.log_tail()}")

        # 2. + 3. in paired rounds: clamd alone, plain and scanned promotions, each on its own
        # share of new files, the order turning every round (drift moves all three alike)
        steps = ("clamd", *MODES)
        bursts: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        clamd_wall = clamd_cpu = 0.0
        clamd_rounds: list[float] = []
        for r in range(args.rounds):
            lo, hi = r * args.count // args.rounds, (r + 1) * args.count // args.rounds
            for step in steps[r % 3:] + steps[:r % 3]:
                if step == "clamd":
                    wall, cpu = timed_clamd(clamd, random_files(hi - lo, args.size))
                    clamd_wall += wall * (hi - lo)
                    clamd_cpu += cpu * (hi - lo)
                    clamd_rounds.append(round(wall, 2))
                    print(f"[clamd] {hi - lo} new files one at a time: {wall:.1f} ms each",
                          flush=True)
                else:
                    bursts[step].append(promotion_burst(
                        stowage, worker, clamd, step, ids[step][WARMUP + lo:WARMUP + hi],
                        args.timeout))
        clamd_ms, clamd_cpu_ms = clamd_wall / args.count, clamd_cpu / args.count
        promotions = {mode: summary(stowage, bursts[mode]) for mode in MODES}

        # reported beside the baseline: clamd's cache, and scans as many at a time as the
        # worker runs jobs
        again = random_files(min(args.count, 50), args.size)
        timed_clamd(clamd, again)
        cached_ms, _ = timed_clamd(clamd, again)
        parallel_ms, parallel_cpu_ms = timed_clamd(clamd, random_files(args.count, args.size),
                                                   MAX_JOBS)

        # 4. upload → stored at a steady rate
        paced = {mode: upload_to_stored(stowage, worker, mode, args) for mode in MODES}

    cost_ms = promotions["scanned"]["ms_per_promotion"] - promotions["plain"]["ms_per_promotion"]
    limit_ms = TARGET_FACTOR * clamd_ms
    all_ok = all(b["stored"] == b["count"] for b in [*promotions.values(), *paced.values()])
    scanned_ok = (promotions["scanned"]["with_scan_metadata"] == promotions["scanned"]["count"]
                  and promotions["plain"]["with_scan_metadata"] == 0)
    return {
        "clamd": {"version": version, "warmup_files": warm_count,
                  "warmup_ms_per_file": round(warm_ms, 2),
                  "ms_per_file": round(clamd_ms, 2),
                  "cpu_ms_per_file": round(clamd_cpu_ms, 2),
                  "per_round_ms": clamd_rounds,
                  "ms_per_file_cached": round(cached_ms, 2),
                  "concurrency": MAX_JOBS, "ms_per_file_concurrent": round(parallel_ms, 2),
                  "cpu_ms_per_file_concurrent": round(parallel_cpu_ms, 2)},
        "promotions": promotions,
        "upload_to_stored": paced,
        "target": {"scan_cost_ms_per_promotion": round(cost_ms, 2),
                   "limit_ms": round(limit_ms, 2),
                   "ratio_to_clamd": round(cost_ms / clamd_ms, 2),
                   "passed": bool(cost_ms <= limit_ms and all_ok and scanned_ok),
                   "all_stored": all_ok, "scan_metadata_ok": scanned_ok},
    }


# --- output ----------------------------------------------------------------------------------

def _f(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def tables(r: dict[str, Any], args: argparse.Namespace) -> str:
    c, t = r["clamd"], r["target"]
    lines = [f"{args.count} promotions of {args.size} bytes per profile, one worker, in"
             f" {args.rounds} paired rounds ({c['version']}):", "",
             "| profile | promotions/s | ms per promotion | stored | failed | metadata.scan"
             " | request→stored p50 / p99 ms | job run p50 / p99 ms | worker CPU | serve CPU"
             " | clamd CPU | clamd CPU ms per file | machine busy / iowait |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, b in r["promotions"].items():
        lines.append(
            f"| {mode} | {b['promotions_per_s']:.1f} | {b['ms_per_promotion']:.2f}"
            f" | {b['stored']} | {b['failed']} | {b['with_scan_metadata']}"
            f" | {_f(b['request_to_stored']['p50_ms'], '.0f')}"
            f" / {_f(b['request_to_stored']['p99_ms'], '.0f')}"
            f" | {_f(b['job_run']['p50_ms'])} / {_f(b['job_run']['p99_ms'])}"
            f" | {b['cpu_pct']['worker']}% | {b['cpu_pct']['serve']}%"
            f" | {b['cpu_pct']['clamd']}% | {b['clamd_cpu_ms_per_promotion']:.1f}"
            f" | {b['machine_busy_pct']}% / {b['machine_iowait_pct']}% |")
    lines += ["", f"Upload → stored at {args.rate:g} uploads/s for {args.duration:g} s:", "",
              "| profile | uploads | stored | request start→stored p50 / p99 / max ms"
              " | 201→stored p50 / p99 ms | upload request p50 / p99 ms |",
              "|---|---:|---:|---:|---:|---:|"]
    for mode, p in r["upload_to_stored"].items():
        s, a, u = p["request_start_to_stored"], p["answer_201_to_stored"], p["upload_request"]
        lines.append(f"| {mode} | {p['count']} | {p['stored']}"
                     f" | {_f(s['p50_ms'])} / {_f(s['p99_ms'])} / {_f(s['max_ms'])}"
                     f" | {_f(a['p50_ms'])} / {_f(a['p99_ms'])}"
                     f" | {_f(u['p50_ms'])} / {_f(u['p99_ms'])} |")
    lines += ["", "clamd alone (app.scan.Clamd from memory over TCP, new files):", "",
              "| | ms per file | clamd CPU ms per file |", "|---|---:|---:|",
              f"| one at a time (the target's baseline) | {c['ms_per_file']:.2f}"
              f" | {c['cpu_ms_per_file']:.1f} |",
              f"| the same files again (clamd's cache of clean verdicts) |"
              f" {c['ms_per_file_cached']:.2f} | – |",
              f"| {c['concurrency']} at a time (as the worker's jobs) |"
              f" {c['ms_per_file_concurrent']:.2f} | {c['cpu_ms_per_file_concurrent']:.1f} |",
              "",
              "| check | measured | target | met |", "|---|---|---|---|",
              f"| scanning's cost per promotion (scanned − plain) vs clamd's own time per file"
              f" | {t['scan_cost_ms_per_promotion']:.2f} ms ({t['ratio_to_clamd']:.2f}× clamd's"
              f" {c['ms_per_file']:.2f} ms) | ≤ {t['limit_ms']:.2f} ms (1.2×)"
              f" | {'met' if t['passed'] else '**not met**'} |"]
    if not (t["all_stored"] and t["scan_metadata_ok"]):
        lines.append("\nNot every file was stored, or metadata.scan is missing where it should"
                     " be (or present on the plain profile): the run does not count.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--count", type=int, default=200, help="promotions per profile (200)")
    p.add_argument("--size", type=int, default=1024 * 1024, help="bytes each (1 MiB)")
    p.add_argument("--rate", type=float, default=10, help="uploads/s for upload→stored (10)")
    p.add_argument("--duration", type=float, default=10, help="seconds of it per profile (10)")
    p.add_argument("--rounds", type=int, default=4,
                   help="paired rounds the --count files are split into (4)")
    p.add_argument("--warmup-mib", type=int, default=128, help="through clamd first (128)")
    p.add_argument("--timeout", type=float, default=300,
                   help="give up waiting for the promotions after this many seconds")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--pg", default=DEFAULT_PG)
    p.add_argument("--redis", default=DEFAULT_REDIS)
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the serve and worker logs into DIR")
    args = p.parse_args(argv)
    if min(args.count, args.size, args.rate, args.duration, args.timeout, args.rounds) <= 0:
        p.error("--count, --size, --rate, --duration, --timeout and --rounds must be positive")
    if args.rounds > args.count:
        p.error("--rounds must not exceed --count")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()  # the load average before we add ours
    with terminate_cleanly():
        result = run(args)
    print()
    print(tables(result, args))
    write_json(args.json, {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": info,
        "params": {"count": args.count, "size_bytes": args.size, "rate_per_s": args.rate,
                   "duration_s": args.duration, "warmup_mib": args.warmup_mib,
                   "rounds": args.rounds, "workers": 1,
                   "stream_max_length": "64M", "clamd_transport": "tcp"},
        **result,
    })
    print(f"\nJSON: {args.json}")
    return 0 if result["target"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
