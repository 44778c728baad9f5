#!/usr/bin/env python3
"""Transforms on request over HTTP (issue 21): first requests (each renders) and repeated ones
(each streams the kept variant) against naive Pillow, in one run.

    python bench/variants_http.py [--count 48] [--clients 8] [--hits 2000]

`stowage serve` (its default processes: one per core) and one `stowage worker`, filesystem
storage, a profile with `[transforms]`. `--count` attachments of the same 12-megapixel JPEG
(thumbnails.py's source: 4000x3000, gradients plus noise, ~5 MiB) are uploaded and stored
first; a variant is keyed by its attachment, so each one is a render of its own.

1. Renders: `--clients` concurrent clients GET /v1/attachments/{id}/image?w=512&h=512&format=webp
   once per attachment; every answer is a render (checked: the variant files appear). A 503
   (the render queue is full) is retried after its Retry-After, as a client would, and counted.
2. Cached hits: the same clients GET those URLs round-robin, `--hits` requests in all.
3. Naive Pillow in the same run, between the two: `Image.open` + `thumbnail((512, 512))` +
   save WebP quality 80 on `--clients` threads, `--count` times, in a process of its own.

Peak RSS of each API process (and their sum) is sampled every 20 ms through both phases.
Targets (issue 21): renders/s >= 3x naive Pillow's; cached hits/s >= 20x renders/s; every API
process's RSS under load < 300 MiB. For scale only: imgproxy's published k6 run (JPEG -> 512 px,
2 vCPUs, another machine) is 79.6 requests/s. Writes bench/results/variants_http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import (
    DEFAULT_PG,
    DEFAULT_REDIS,
    RESULTS,
    Stowage,
    machine,
    percentile,
    start_stowage,
    terminate_cleanly,
    write_json,
)
from thumbnails import make_source
from uploads import RssSampler

DEFAULT_JSON = RESULTS / "variants_http.json"
IMGPROXY_REQ_S = 79.6
PARAMS = {"w": "512", "h": "512", "format": "webp", "q": "80"}
PROFILES = """\
[profiles.photos]
types = ["image/*"]
max_size = 67108864
[profiles.photos.transforms]
max_width = 4096
max_height = 4096
formats = ["webp", "jpeg", "png"]
"""
NAIVE = """
import io, sys, time
from concurrent.futures import ThreadPoolExecutor
from PIL import Image
path, count, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def one(_):
    im = Image.open(path)
    im.thumbnail((512, 512))
    out = io.BytesIO()
    im.save(out, "WEBP", quality=80)
    return len(out.getvalue())
with ThreadPoolExecutor(threads) as pool:
    list(pool.map(one, range(threads)))  # warm-up
    t0 = time.perf_counter()
    list(pool.map(one, range(count)))
    print(time.perf_counter() - t0)
"""


@contextlib.contextmanager
def api_memory(supervisor: int) -> Iterator[list[RssSampler]]:
    """Peak RSS of each API process (the supervisor and its children), each sampled by
    uploads.py's RssSampler (every 20 ms, and its kernel high-water mark where readable)."""
    pids = [supervisor, *(c.pid for c in psutil.Process(supervisor).children(recursive=True))]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(RssSampler(pid)) for pid in pids]


async def upload_stored(stowage: Stowage, source: bytes, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {stowage.api_key}", "Content-Type": "image/jpeg"}
    async with httpx.AsyncClient(base_url=stowage.base, headers=headers, timeout=60) as client:
        ids = []
        for i in range(count):
            r = await client.post("/v1/attachments/raw", content=source,
                                  params={"profile": "photos", "filename": f"p{i}.jpg"})
            r.raise_for_status()
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 300
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for att_id in list(pending):
                state = (await client.get(f"/v1/attachments/{att_id}")).json()["state"]
                if state == "stored":
                    pending.discard(att_id)
                elif state != "cached":
                    raise RuntimeError(f"{att_id} is {state}")
            await asyncio.sleep(0.2)
        if pending:
            raise RuntimeError(f"{len(pending)} attachments not stored in 300 s")
        return ids


async def fetch_all(stowage: Stowage, urls: list[str], clients: int) -> dict[str, Any]:
    """Every URL once, `clients` at a time; 503s retried after Retry-After."""
    headers = {"Authorization": f"Bearer {stowage.api_key}"}
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    latencies: list[float] = []
    busy = 0
    sizes: list[int] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal busy
        while not queue.empty():
            url = queue.get_nowait()
            while True:
                t0 = time.perf_counter()
                r = await client.get(url)
                if r.status_code == 503:
                    busy += 1
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                if r.status_code != 200:
                    raise RuntimeError(f"GET {url}: HTTP {r.status_code}: {r.text[:200]}")
                latencies.append((time.perf_counter() - t0) * 1000)
                sizes.append(len(r.content))
                break

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=stowage.base, headers=headers, timeout=120,
                                 limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - t0
    return {"requests": len(latencies), "seconds": round(seconds, 3),
            "per_s": round(len(latencies) / seconds, 1), "retried_503": busy,
            "p50_ms": round(percentile(latencies, 50), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "bytes_p50": int(percentile([float(s) for s in sizes], 50))}


def naive_pillow(source: Path, count: int, threads: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", NAIVE, str(source), str(count), str(threads)],
                         check=True, capture_output=True, text=True)
    seconds = float(out.stdout.strip())
    return {"renders": count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stowage-variants-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        source = tmp / "source.jpg"
        make_source(source)
        profiles = tmp / "profiles.toml"
        profiles.write_text(PROFILES)
        stowage = start_stowage(stack, tmp, args.pg, args.redis,
                                extra_env={"STOWAGE_PROFILES_FILE": str(profiles)})
        stowage.start_worker(stack)
        print(f"uploading {args.count} × {source.stat().st_size} bytes, waiting for stored",
              flush=True)
        ids = asyncio.run(upload_stored(stowage, source.read_bytes(), args.count))
        query = "&".join(f"{k}={v}" for k, v in PARAMS.items())
        urls = [f"/v1/attachments/{i}/image?{query}" for i in ids]
        store = tmp / "stowage-store"
        before = sum(1 for _ in store.rglob("*") if _.is_file())
        with api_memory(stowage.server.pid) as samplers:
            print(f"renders: {len(urls)} first requests, {args.clients} clients", flush=True)
            renders = asyncio.run(fetch_all(stowage, urls, args.clients))
            rendered_files = sum(1 for _ in store.rglob("*") if _.is_file()) - before
            print("naive Pillow, same source", flush=True)
            naive = naive_pillow(source, args.count, args.clients)
            repeated = (urls * (args.hits // len(urls) + 1))[:args.hits]
            print(f"cached hits: {len(repeated)} requests, {args.clients} clients", flush=True)
            hits = asyncio.run(fetch_all(stowage, repeated, args.clients))
        after = sum(1 for _ in store.rglob("*") if _.is_file()) - before
        if rendered_files != len(urls) or after != len(urls):
            raise RuntimeError(f"expected {len(urls)} variant files, found {rendered_files}"
                               f" after the renders and {after} after the hits")
        mib = 1024 * 1024
        peaks = [s.peak for s in samplers]
        result = {
            "renders": renders, "naive_pillow": naive, "cached": hits,
            "api_processes": len(peaks),
            "api_peak_rss_mib_each": round(max(peaks) / mib, 1),
            # each process's own peak, summed: an upper bound of the API's peak
            "api_peak_rss_mib_sum": round(sum(peaks) / mib, 1),
            "source_bytes": source.stat().st_size,
        }
    r, n, c = result["renders"], result["naive_pillow"], result["cached"]
    result["targets"] = {
        "render_vs_naive": {"ratio": round(r["per_s"] / n["per_s"], 2), "target": 3.0},
        "cached_vs_render": {"ratio": round(c["per_s"] / r["per_s"], 1), "target": 20.0},
        "api_rss_mib": {"value": result["api_peak_rss_mib_each"], "target": 300},
    }
    t = result["targets"]
    t["render_vs_naive"]["met"] = t["render_vs_naive"]["ratio"] >= 3.0
    t["cached_vs_render"]["met"] = t["cached_vs_render"]["ratio"] >= 20.0
    t["api_rss_mib"]["met"] = t["api_rss_mib"]["value"] < 300
    return result


def table(r: dict[str, Any], args: argparse.Namespace) -> str:
    t = r["targets"]

    def met(x: dict[str, Any]) -> str:
        return "yes" if x["met"] else "**NO**"

    rows = [
        "| | requests | per s | p50 / p99 ms | 503 retried |", "|---|---:|---:|---:|---:|",
        f"| first requests (render) | {r['renders']['requests']} | {r['renders']['per_s']}"
        f" | {r['renders']['p50_ms']} / {r['renders']['p99_ms']} | {r['renders']['retried_503']} |",
        f"| repeated (kept variant) | {r['cached']['requests']} | {r['cached']['per_s']}"
        f" | {r['cached']['p50_ms']} / {r['cached']['p99_ms']} | {r['cached']['retried_503']} |",
        f"| naive Pillow, {args.clients} threads, no HTTP | {r['naive_pillow']['renders']}"
        f" | {r['naive_pillow']['per_s']} | – | – |",
        f"| imgproxy's published k6 run (another machine, 2 vCPUs) | – | {IMGPROXY_REQ_S}"
        " | – | – |",
        "", "| check | measured | target | met |", "|---|---|---|---|",
        f"| renders/s vs naive Pillow | {t['render_vs_naive']['ratio']}× | ≥ 3× |"
        f" {met(t['render_vs_naive'])} |",
        f"| cached hits/s vs renders/s | {t['cached_vs_render']['ratio']}× | ≥ 20× |"
        f" {met(t['cached_vs_render'])} |",
        f"| API RSS under load, largest process ({r['api_processes']} processes, peaks summed"
        f" {r['api_peak_rss_mib_sum']} MiB) | {t['api_rss_mib']['value']} MiB | < 300 MiB |"
        f" {met(t['api_rss_mib'])} |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--count", type=int, default=48, help="attachments, one render each (48)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    p.add_argument("--hits", type=int, default=2000, help="cached requests in all (2000)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--pg", default=DEFAULT_PG)
    p.add_argument("--redis", default=DEFAULT_REDIS)
    args = p.parse_args(argv)
    if min(args.count, args.clients, args.hits) <= 0:
        p.error("--count, --clients and --hits must be positive")
    info = machine()
    with terminate_cleanly():
        result = run(args)
    print()
    print(table(result, args))
    write_json(args.json, {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                           "machine": info, "params": vars(args) | {"json": str(args.json)},
                           **result})
    print(f"\nJSON: {args.json}")
    return 0 if all(t["met"] for t in result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
