"""Scale fixture (issue 25 item 1): the requests of a large Stowage against a small one.

    python bench/scale.py                  # 1,000,000 attachments (several minutes to build)
    python bench/scale.py --rows 100000    # smaller, for a quick look
    python bench/scale.py --keep           # keep the large database (and its files) for reruns
    python bench/scale.py --reuse stowage_bench_ab12cd34   # measure a kept database again
    python bench/scale.py --skip-fsck

Builds two databases with one generator (bench/scale_data.py): N attachments in the issue's
shape, and 1,000. Each is made by the project's migrations (`stowage migrate`), then filled
with set-based SQL. Against each it starts `stowage serve` (filesystem storage in a temp dir),
logs in to the dashboard, and times every request of the table from 4 concurrent httpx
clients (p50/p95); then one sweep pass in-process (app.sweep.sweep, what the worker's
sweep_loop calls; nothing is due), and `stowage fsck --json` (wall time, peak RSS).

fsck: files are written only for a sample of the live attachments (`--fsck-files`, default
all of the 1,000-row database and 20,000 of the large one); fsck reports the others missing,
so at N it lists fewer files than a real storage of N would hold, and it takes fsck's path
for broken attachments for all the others: each one stat'ed again and its row read again,
one query per attachment (app/ops/fsck.py _check_broken). That path, not the listing,
dominates its time at 1 M with the default sample; `--fsck-files all` writes every file
(~4 KiB of disk each) for the real case. Say which when quoting its numbers.

Prints a Markdown table (request, p50 at 1k, p50 at N, ratio, target, met) and writes
bench/results/scale.json. Targets (issue 25): every API request and dashboard page within 2×
of the 1,000-row database and under 50 ms p50; /metrics under 20 ms; a sweep pass under 10 ms
with nothing due; fsck of 1 M rows in under 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # app.* from this checkout

import scale_data
from _common import (
    DEFAULT_PG,
    DEFAULT_REDIS,
    REPO,
    RESULTS,
    clean_env,
    drop_database,
    drop_queue,
    free_port,
    machine,
    percentile,
    start_server,
    stowage_cli,
    stowage_cmd,
    terminate_cleanly,
    write_json,
)

SMALL = 1000
CLIENTS = 4
API_TARGET_MS = 50.0
METRICS_TARGET_MS = 20.0
SWEEP_TARGET_MS = 10.0
FSCK_TARGET_S = 120.0
RATIO_TARGET = 2.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- one database: built, served ---------------------------------------------------------------

def stowage_env(db_url: str, files: Path, queue: str, redis_url: str, base: str) -> dict[str, str]:
    return {
        **clean_env(),
        "STOWAGE_DATABASE_URL": db_url,
        "STOWAGE_REDIS_URL": redis_url,
        "STOWAGE_QUEUE_NAME": queue,
        "STOWAGE_CACHE_URL": f"file://{files / 'cache'}",
        "STOWAGE_STORE_URL": f"file://{files / 'store'}",
        "STOWAGE_PUBLIC_URL": base,
        "STOWAGE_SECRET_KEY": "scale-" * 8,
        "STOWAGE_ADMIN_TOKEN": scale_data.ADMIN_TOKEN,
        "STOWAGE_WORKER_METRICS_PORT": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


async def write_files(db_url: str, files: Path, limit: int | None) -> int:
    """The files of live attachments (stored: store, cached: cache), `limit` of them at most,
    with the content the generator hashed."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT id, storage, key FROM attachments WHERE state IN ('stored', 'cached')"
            " ORDER BY id DESC LIMIT $1", limit)
    finally:
        await conn.close()
    for r in rows:
        path = files / r["storage"] / r["key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"stowage scale fixture {r['id']}\n".encode())
    return len(rows)


async def fixture_info(db_url: str) -> dict[str, Any]:
    """Ids to ask for: the big app, sample attachments in the middle of its history (stored,
    with deliveries), a slot, a deep cursor, its endpoint."""
    from app.api_common import encode_cursor

    conn = await asyncpg.connect(db_url)
    try:
        app_id = await conn.fetchval("SELECT id FROM apps WHERE name = 'scale-0'")
        n = await conn.fetchval("SELECT count(*) FROM attachments WHERE app_id = $1", app_id)
        pivot = await conn.fetchval(
            "SELECT id FROM attachments WHERE app_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1",
            app_id, n // 4)
        samples = await conn.fetch(
            "SELECT a.id, a.record_id FROM attachments a WHERE a.app_id = $1 AND a.id <= $2"
            " AND a.state = 'stored' AND a.record_type IS NOT NULL AND EXISTS ("
            "  SELECT 1 FROM events e JOIN webhook_deliveries d ON d.event_id = e.id"
            "  WHERE e.attachment_id = a.id)"
            " ORDER BY a.id DESC LIMIT 20", app_id, pivot)
        if not samples:
            raise RuntimeError("no stored attachment in a slot with deliveries to ask for")
        deep = await conn.fetchval(
            "SELECT id FROM attachments WHERE app_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1",
            app_id, n * 3 // 4)
        endpoint = await conn.fetchval(
            "SELECT id FROM webhook_endpoints WHERE app_id = $1", app_id)
    finally:
        await conn.close()
    return {"app_id": app_id, "samples": [(str(r["id"]), r["record_id"]) for r in samples],
            "deep_cursor": encode_cursor(deep), "endpoint": str(endpoint)}


def requests_for(info: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(name, kind, i -> path): kind api/dashboard/metrics picks the client and the target."""
    s = info["samples"]

    def att(i: int) -> str:
        return s[i % len(s)][0]

    def slot(i: int) -> str:
        return s[i % len(s)][1]

    return [
        ("GET /v1/attachments?record_type=&record_id=&record_name= (slot)", "api",
         lambda i: f"/v1/attachments?record_type=user&record_id={slot(i)}&record_name=avatar"),
        ("GET /v1/attachments (page 1)", "api", lambda i: "/v1/attachments"),
        ("GET /v1/attachments?cursor= (deep page)", "api",
         lambda i: f"/v1/attachments?cursor={info['deep_cursor']}"),
        ("GET /v1/attachments/{id}", "api", lambda i: f"/v1/attachments/{att(i)}"),
        ("GET /v1/attachments/{id}/events", "api", lambda i: f"/v1/attachments/{att(i)}/events"),
        ("GET /metrics", "metrics", lambda i: "/metrics"),
        ("dashboard overview", "dashboard", lambda i: "/dashboard"),
        ("dashboard attachments list", "dashboard", lambda i: "/dashboard/attachments"),
        ("dashboard attachment page", "dashboard", lambda i: f"/dashboard/attachments/{att(i)}"),
        ("dashboard webhook deliveries", "dashboard",
         lambda i: f"/dashboard/webhooks/{info['endpoint']}"),
    ]


async def measure_requests(base: str, api_key: str, info: dict[str, Any],
                           iterations: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    headers = {"authorization": f"Bearer {api_key}"}
    clients = []
    try:
        for _ in range(CLIENTS):
            c = httpx.AsyncClient(base_url=base, timeout=120)
            clients.append(c)
            r = await c.post("/dashboard/login",
                             data={"token": scale_data.ADMIN_TOKEN, "next": "/dashboard"})
            if r.status_code != 303:
                raise RuntimeError(f"dashboard login: {r.status_code} {r.text[:300]}")
        for name, kind, path in requests_for(info):
            hdrs = headers if kind == "api" else {}
            # warm up: each client once (connections, plans, caches)
            for k, c in enumerate(clients):
                r = await c.get(path(k), headers=hdrs)
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")
            latencies: list[float] = []
            per_client = max(iterations // CLIENTS, 1)

            async def run(c: httpx.AsyncClient, offset: int, name: str = name, path: Any = path,
                          hdrs: dict[str, str] = hdrs, latencies: list[float] = latencies,
                          per_client: int = per_client) -> None:
                for j in range(per_client):
                    t0 = time.perf_counter()
                    r = await c.get(path(offset + j * CLIENTS), headers=hdrs)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200:
                        raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")

            await asyncio.gather(*(run(c, k) for k, c in enumerate(clients)))
            out[name] = {"kind": kind, "p50_ms": round(percentile(latencies, 50), 2),
                         "p95_ms": round(percentile(latencies, 95), 2), "n": len(latencies)}
            log(f"    {name}: p50 {out[name]['p50_ms']} ms, p95 {out[name]['p95_ms']} ms")
    finally:
        for c in clients:
            await c.aclose()
    return out


async def measure_sweep(env: dict[str, str], passes: int) -> dict[str, Any]:
    """One sweep pass in this process, as the worker's sweep_loop calls it (app.sweep.sweep),
    `passes` times: p50/p95 and what the last pass found (nothing is due in the fixture)."""
    from app.bootstrap import build_services
    from app.config import Settings

    saved = {k: os.environ.get(k) for k in env if k.startswith("STOWAGE_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("STOWAGE_")})
    try:
        settings = Settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    times: list[float] = []
    report = None
    async with build_services(settings) as res:
        await res.sweep.run()  # warm up: the pool's connections, the plans
        for _ in range(passes):
            t0 = time.perf_counter()
            report = await res.sweep.run()
            times.append((time.perf_counter() - t0) * 1000)
    found = {k: (len(v) if isinstance(v, list) else v)
             for k, v in (vars(report).items() if report is not None else [])}
    return {"p50_ms": round(percentile(times, 50), 2), "p95_ms": round(percentile(times, 95), 2),
            "passes": passes, "last_pass_found": found}


def measure_fsck(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    with open(cwd / "fsck.json", "wb") as out:
        proc = subprocess.Popen([*stowage_cmd(), "fsck", "--json"], env=env, cwd=cwd,
                                stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    summary: dict[str, Any] = {}
    with contextlib.suppress(ValueError, OSError):
        doc = json.loads((cwd / "fsck.json").read_text())
        summary = {k: (len(v) if isinstance(v, list) else v) for k, v in doc.items()
                   if not isinstance(v, dict)}
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "exit_code": proc.returncode, "report": summary}


async def run_one(stack: contextlib.ExitStack, label: str, rows: int, args: argparse.Namespace,
                  *, reuse: str | None, keep: bool, fsck_files: int | None) -> dict[str, Any]:
    db_name = reuse or f"stowage_bench_{secrets.token_hex(4)}"
    db_url = f"{args.pg}/{db_name}"
    queue = f"stowage:bench:{secrets.token_hex(4)}"
    files = Path(tempfile.gettempdir()) / f"{db_name}-files"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = stowage_env(db_url, files, queue, args.redis, base)
    stack.callback(lambda: asyncio.run(drop_queue(args.redis, queue)))
    if not keep:
        stack.callback(lambda: shutil.rmtree(files, ignore_errors=True))
        stack.callback(lambda: asyncio.run(drop_database(args.pg, db_name)))
    result: dict[str, Any] = {"database": db_name, "kept": keep}
    if reuse:
        log(f"[{label}] reusing {db_name} (files in {files})")
        api_key = json.loads((files / "apps.json").read_text())[0]["api_key"]
        stowage_cli(["migrate"], env, files)
    else:
        files.mkdir(parents=True, exist_ok=True)
        log(f"[{label}] building {rows:,} attachments in {db_name}")
        stowage_cli(["migrate"], env, files)
        t0 = time.monotonic()
        built = await scale_data.build(db_url, rows, log=log)
        result["build_s"] = round(time.monotonic() - t0, 1)
        result["build_steps_s"] = built.seconds
        (files / "apps.json").write_text(json.dumps(built.apps))
        api_key = built.apps[0]["api_key"]
        result["files_written"] = await write_files(db_url, files, fsck_files)
    result["shape"] = await scale_data.shape(db_url)
    info = await fixture_info(db_url)
    server = start_server(stack, f"serve-{label}", [*stowage_cmd(), "serve", "--port", str(port)],
                          env=env, cwd=files, log_dir=files)
    server.wait_http(f"{base}/healthz", timeout=60)
    log(f"[{label}] requests: {args.iterations} each, {CLIENTS} clients")
    try:
        result["requests"] = await measure_requests(base, api_key, info, args.iterations)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\nserver log:\n{server.log_tail(60)}") from None
    server.stop()
    log(f"[{label}] sweep: {args.sweep_passes} passes")
    result["sweep"] = await measure_sweep(env, args.sweep_passes)
    log(f"    sweep: p50 {result['sweep']['p50_ms']} ms,"
        f" found {result['sweep']['last_pass_found']}")
    if not args.skip_fsck:
        log(f"[{label}] stowage fsck --json")
        result["fsck"] = measure_fsck(env, files)
        log(f"    fsck: {result['fsck']}")
    if keep:
        log(f"[{label}] kept: --reuse {db_name}  (files in {files})")
    return result


# --- the verdict -------------------------------------------------------------------------------

def verdicts(small: dict[str, Any], large: dict[str, Any], rows: int) -> list[dict[str, Any]]:
    out = []
    for name, lg in large["requests"].items():
        sm = small["requests"][name]
        ratio = lg["p50_ms"] / sm["p50_ms"] if sm["p50_ms"] else float("inf")
        if lg["kind"] == "metrics":
            target, met = f"< {METRICS_TARGET_MS:g} ms", lg["p50_ms"] < METRICS_TARGET_MS
        else:
            target = f"≤ {RATIO_TARGET:g}× and < {API_TARGET_MS:g} ms"
            met = ratio <= RATIO_TARGET and lg["p50_ms"] < API_TARGET_MS
        out.append({"check": name, "small": sm["p50_ms"], "large": lg["p50_ms"],
                    "large_p95": lg["p95_ms"], "ratio": round(ratio, 2), "target": target,
                    "met": met, "unit": "ms"})
    sm, lg = small["sweep"], large["sweep"]
    out.append({"check": "sweep pass (nothing due)", "small": sm["p50_ms"], "large": lg["p50_ms"],
                "large_p95": lg["p95_ms"], "ratio": round(lg["p50_ms"] / sm["p50_ms"], 2),
                "target": f"< {SWEEP_TARGET_MS:g} ms", "met": lg["p50_ms"] < SWEEP_TARGET_MS,
                "unit": "ms"})
    if "fsck" in large and "fsck" in small:
        sm, lg = small["fsck"], large["fsck"]
        # the target is for 1 M rows; at another N it is scaled linearly (said in the row)
        limit = FSCK_TARGET_S * rows / 1_000_000
        files = large.get("files_written")
        live = sum(large["shape"]["states"].get(k, 0) for k in ("stored", "cached"))
        sample = ("" if files is None or files >= live
                  else f"; files for {files:,} of {live:,} live rows, the rest reported missing")
        out.append({"check": f"stowage fsck --json (wall; peak RSS {sm['peak_rss_mib']} →"
                             f" {lg['peak_rss_mib']} MiB{sample})",
                    "small": sm["wall_s"], "large": lg["wall_s"], "large_p95": None,
                    "ratio": round(lg["wall_s"] / sm["wall_s"], 2),
                    "target": (f"< {FSCK_TARGET_S:g} s at 1 M" if rows == 1_000_000
                               else f"< {limit:.1f} s (2 min × N/1 M)"),
                    "met": lg["wall_s"] < limit and lg["exit_code"] in (0, 1), "unit": "s"})
    return out


def table(rows_: list[dict[str, Any]], n: int) -> str:
    lines = [f"| request | p50 at 1k | p50 at {n:,} | p95 at {n:,} | ratio | target | met |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows_:
        u = r["unit"]
        p95 = f"{r['large_p95']} {u}" if r["large_p95"] is not None else "–"
        lines.append(f"| {r['check']} | {r['small']} {u} | {r['large']} {u} | {p95} |"
                     f" {r['ratio']}× | {r['target']} | {'yes' if r['met'] else '**NO**'} |")
    return "\n".join(lines)


def empty_redis_db(url: str) -> str:
    """`url` with the first empty database index (1-15) of its server: `/metrics` counts the
    jobs in progress by SCANning the whole Redis database (app/ops/gauges.py), so on a Redis
    shared with millions of other keys it times the other keys, not Stowage's rows. The run
    writes only its own queue keys there and deletes them; nothing is flushed."""
    import redis

    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    client = redis.Redis.from_url(f"{base}/0")
    try:
        used = {int(k[2:]) for k in client.info("keyspace")}
    finally:
        client.close()
    index = next((i for i in range(15, 0, -1) if i not in used), 0)
    return f"{base}/{index}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="attachments in the large database")
    p.add_argument("--keep", action="store_true",
                   help="keep the large database and its files (for --reuse)")
    p.add_argument("--reuse", metavar="DBNAME", help="measure a database --keep left")
    p.add_argument("--skip-fsck", action="store_true")
    p.add_argument("--fsck-files", type=lambda v: None if v == "all" else int(v), default=20_000,
                   help="files written for the large database (the newest live attachments;"
                   " 'all': every one, ~4 KiB of disk each); fsck reports the others missing"
                   " and checks each of them again one by one, which dominates its time")
    p.add_argument("--iterations", type=int, default=200, help="requests per row and database")
    p.add_argument("--sweep-passes", type=int, default=20)
    p.add_argument("--pg", default=DEFAULT_PG)
    p.add_argument("--redis", default=None,
                   help="Redis URL (default: the first empty database of 127.0.0.1:6379,"
                   " from 15 down; see empty_redis_db)")
    p.add_argument("--json", type=Path, default=RESULTS / "scale.json")
    args = p.parse_args()
    args.redis = args.redis or empty_redis_db(DEFAULT_REDIS)

    doc: dict[str, Any] = {"benchmark": "scale", "machine": machine(), "rows": args.rows,
                           "redis": args.redis,
                           "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "command": " ".join(["python", "bench/scale.py", *sys.argv[1:]])}
    with terminate_cleanly(), contextlib.ExitStack() as stack:
        large = asyncio.run(run_one(stack, f"{args.rows:,}", args.rows, args, reuse=args.reuse,
                                    keep=args.keep or bool(args.reuse),
                                    fsck_files=args.fsck_files))
        small = asyncio.run(run_one(stack, f"{SMALL:,}", SMALL, args, reuse=None, keep=False,
                                    fsck_files=None))
    rows = large["shape"]["attachments"]
    doc.update(large=large, small=small, verdicts=verdicts(small, large, rows))
    write_json(args.json, doc)
    print(f"\nScale fixture: {rows:,} attachments against {SMALL:,} (p50, {CLIENTS} clients,"
          f" {args.iterations} requests each)\n")
    print(table(doc["verdicts"], rows))
    print(f"\nlarge database: {json.dumps(large['shape'])}")
    print(f"JSON: {args.json}")
    return 0 if all(v["met"] for v in doc["verdicts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
