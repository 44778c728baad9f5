#!/usr/bin/env python3
"""Webhook latency: from an upload's 201 to its attachment.stored event at a local receiver.

One command, a steady open-loop load of raw uploads (no derivatives), one generated JSON file:

    python bench/webhook_latency.py [--rate 20] [--duration 30] [--size 10240]

Stowage runs as in production: `stowage serve` and `stowage worker` in their own processes,
against a throwaway database and queue. The receiver is an HTTP server inside this process, so
the 201 and the event are timed on the same monotonic clock. Target: p99 < 100 ms at 20/s and
< 250 ms at 200/s, with no event lost; the exit status is 1 when it is missed.

Besides the end-to-end figure it prints where the time went: the event's own timestamp
(written inside the promotion's transaction) splits promotion from delivery, and the worker's
arq log gives each job's queue wait and run time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from _common import (
    DEFAULT_PG,
    DEFAULT_REDIS,
    REPO,
    Server,
    machine,
    percentile,
    start_stowage,
    terminate_cleanly,
)
from _common import write_json as write_doc

DEFAULT_JSON = REPO / "bench" / "results" / "webhook_latency.json"


# issue 19: p99 < 100 ms at 20 uploads/s, < 250 ms at 200/s (a rate between: the latter)
def target_p99_ms(rate: float) -> float:
    return 100.0 if rate <= 20 else 250.0
WARMUP_UPLOADS = 10
# arq logs "<queue wait>s → <job id>:<function>(…)" at start, "<run time>s ← <job id>:<function>
# ● …" at the end; the job id starts with the function name (app/jobs.py).
ARQ_LINE = re.compile(r"\s(\d+\.\d+)s ([→←]) (([a-z_]+):[^\s(]+)")


# --- percentiles -----------------------------------------------------------------------------

@dataclass
class Stats:
    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values_ms: list[float]) -> Stats:
        if not values_ms:
            return cls(0, None, None, None, None)
        return cls(len(values_ms), percentile(values_ms, 50), percentile(values_ms, 90),
                   percentile(values_ms, 99), max(values_ms))

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, **{k: None if v is None else round(v, 1) for k, v in
                                        (("p50_ms", self.p50), ("p90_ms", self.p90),
                                         ("p99_ms", self.p99), ("max_ms", self.max))}}


# --- the receiver ----------------------------------------------------------------------------

@dataclass
class Received:
    mono: float  # time.monotonic() when the body was in: comparable with the 201's
    wall: float  # time.time(), comparable with the event's timestamp written by the worker
    event_wall: float | None  # the event's "timestamp": its outbox row, inside the promotion


@dataclass
class Receiver:
    """A webhook receiver that records when each attachment.stored event arrives."""

    stored: dict[str, Received] = field(default_factory=dict)
    duplicates: int = 0
    tests: int = 0
    # a Condition, so that waiting for events needs no polling
    lock: threading.Condition = field(default_factory=threading.Condition)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # keep-alive, as a real receiver would allow: the worker's client reuses connections
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                mono, wall = time.monotonic(), time.time()
                self.send_response(204)
                self.end_headers()
                receiver.record(body, mono, wall)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per event would drown the table

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def record(self, body: bytes, mono: float, wall: float) -> None:
        event = json.loads(body)
        with self.lock:
            if event["type"] == "webhook.test":
                self.tests += 1
            elif event["type"] != "attachment.stored":
                return
            elif event["data"]["id"] in self.stored:
                self.duplicates += 1  # at-least-once: a retry after a lost answer
            else:
                self.stored[event["data"]["id"]] = Received(mono, wall,
                                                            _wall(event.get("timestamp")))
            self.lock.notify_all()

    def wait_test(self, seconds: float) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: self.tests > 0, seconds)

    def wait_stored(self, ids: set[str], seconds: float) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: ids <= self.stored.keys(), seconds)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _wall(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


# --- processes -------------------------------------------------------------------------------

@dataclass
class Deployment:
    """Stowage as in production: the API and a worker, each in its own process."""

    base: str
    api_key: str
    worker: Server


def start_deployment(stack: contextlib.ExitStack, tmp: Path, pg_base: str,
                     redis_url: str) -> Deployment:
    # the receiver listens on 127.0.0.1, which the SSRF guard refuses unless told otherwise
    api = start_stowage(stack, tmp, pg_base, redis_url,
                        extra_env={"STOWAGE_WEBHOOK_ALLOW_PRIVATE": "true"})
    return Deployment(api.base, api.api_key, api.start_worker(stack))


# --- the load --------------------------------------------------------------------------------

@dataclass
class Upload:
    scheduled: float  # monotonic: when the schedule says it starts
    started: float = 0.0
    answered: float = 0.0  # monotonic: the 201 (headers and body) is in
    answered_wall: float = 0.0
    att_id: str | None = None
    error: str | None = None


async def upload(client: httpx.AsyncClient, size: int, up: Upload) -> None:
    up.started = time.monotonic()
    try:
        resp = await client.post("/v1/attachments/raw", params={"filename": "x"},
                                 content=os.urandom(size),
                                 headers={"content-type": "application/octet-stream"})
        up.answered, up.answered_wall = time.monotonic(), time.time()
        if resp.status_code != 201:
            up.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            return
        up.att_id = resp.json()["id"]
    except httpx.HTTPError as e:
        up.error = f"{type(e).__name__}: {e}"


async def open_loop(client: httpx.AsyncClient, rate: float, duration: float,
                    size: int) -> list[Upload]:
    """Upload i starts at t0 + i/rate whatever the earlier ones are doing: a slow server
    queues work up instead of slowing the load down (which would hide its latency)."""
    n = round(rate * duration)
    t0 = time.monotonic() + 0.1
    uploads = [Upload(t0 + i / rate) for i in range(n)]
    tasks = []
    for up in uploads:
        await asyncio.sleep(max(up.scheduled - time.monotonic(), 0))
        tasks.append(asyncio.create_task(upload(client, size, up)))
    await asyncio.gather(*tasks)
    return uploads


async def prepare(client: httpx.AsyncClient, stowage: Deployment, receiver: Receiver,
                  hook_url: str, size: int) -> None:
    """Subscribe the receiver, then prove the whole path works before timing anything."""
    resp = await client.post("/v1/webhook-endpoints",
                             json={"url": hook_url, "events": ["attachment.stored"]})
    resp.raise_for_status()
    endpoint_id = resp.json()["id"]
    # webhook.test goes through the worker: when it arrives, the worker is polling.
    (await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test")).raise_for_status()
    if not await asyncio.to_thread(receiver.wait_test, 30):
        stowage.worker.check_alive()
        raise RuntimeError(f"no webhook.test within 30 s:\n{stowage.worker.log_tail()}")
    # Warm connections and pools on every hop, so the timed run measures the steady state.
    warm = [Upload(0.0) for _ in range(WARMUP_UPLOADS)]
    for up in warm:
        await upload(client, size, up)
        if up.error:
            raise RuntimeError(f"warm-up upload failed: {up.error}")
    await asyncio.to_thread(receiver.wait_stored, {up.att_id for up in warm if up.att_id}, 30)


@dataclass
class Outcome:
    uploads: list[Upload]
    received: dict[str, Received]
    duplicates: int
    worker_log_from: int  # offset in the worker's log where the timed run starts


async def run_load(stowage: Deployment, receiver: Receiver, hook_url: str, rate: float,
                   duration: float, size: int, grace: float) -> Outcome:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=stowage.base, limits=limits, timeout=60,
                                 headers={"authorization": f"Bearer {stowage.api_key}"}
                                 ) as client:
        await prepare(client, stowage, receiver, hook_url, size)
        log_start = stowage.worker.log_path.stat().st_size
        print(f"load: {rate:g} uploads/s for {duration:g} s, {size} bytes each", flush=True)
        uploads = await open_loop(client, rate, duration, size)
    ids = {up.att_id for up in uploads if up.att_id}
    # stragglers: the grace period counts from the end of the load, not per upload
    await asyncio.to_thread(receiver.wait_stored, ids, grace)
    stowage.worker.check_alive()
    with receiver.lock:
        received = {k: v for k, v in receiver.stored.items() if k in ids}
        duplicates = receiver.duplicates
    return Outcome(uploads, received, duplicates, log_start)


# --- results ---------------------------------------------------------------------------------

def arq_timings(log: str) -> dict[str, list[float]]:
    """Milliseconds per "<function> queue wait" (enqueue → start) and "<function> run"."""
    out: dict[str, list[float]] = {}
    started: set[str] = set()
    for m in ARQ_LINE.finditer(log):
        seconds, arrow, ref, function = m.groups()
        if arrow == "→":
            started.add(ref)
        elif ref not in started:
            continue  # a warm-up job that finished inside the timed window
        key = f"{function} {'queue wait' if arrow == '→' else 'run'}"
        out.setdefault(key, []).append(float(seconds) * 1000)
    return out


def analyse(o: Outcome, worker_log: str) -> dict[str, Any]:
    ok = [up for up in o.uploads if up.att_id]
    webhook, promotion, delivery = [], [], []
    for up in ok:
        got = o.received.get(up.att_id or "")
        if got is None:
            continue
        webhook.append((got.mono - up.answered) * 1000)
        if got.event_wall is not None:
            promotion.append((got.event_wall - up.answered_wall) * 1000)
            delivery.append((got.wall - got.event_wall) * 1000)
    rows = {
        "webhook: 201 → attachment.stored received": Stats.of(webhook),
        "upload: request start → 201": Stats.of([(u.answered - u.started) * 1000 for u in ok]),
        "  201 → event written (promotion)": Stats.of(promotion),
        "  event written → received (delivery)": Stats.of(delivery),
    }
    rows |= {f"  worker: {k}": Stats.of(v) for k, v in sorted(arq_timings(worker_log).items())}
    return {
        "rows": rows,
        "uploads": len(o.uploads),
        "uploads_failed": len(o.uploads) - len(ok),
        "upload_errors": sorted({up.error for up in o.uploads if up.error})[:5],
        "lost": len(ok) - len(webhook),
        "duplicates": o.duplicates,
        # how late the client itself started uploads: a busy client would bias the load
        "schedule_lag_max_ms": round(max((u.started - u.scheduled for u in o.uploads),
                                         default=0) * 1000, 1),
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(result: dict[str, Any]) -> str:
    rows: dict[str, Stats] = result["rows"]
    width = max(len(name) for name in rows)
    lines = [f"| {'':<{width}} | count | p50 ms | p90 ms | p99 ms | max ms | lost |",
             f"|{'-' * (width + 2)}|------:|-------:|-------:|-------:|-------:|-----:|"]
    for i, (name, s) in enumerate(rows.items()):
        lost = str(result["lost"]) if i == 0 else "-"
        lines.append(f"| {name:<{width}} | {s.count:>5} | {_ms(s.p50):>6} | {_ms(s.p90):>6} "
                     f"| {_ms(s.p99):>6} | {_ms(s.max):>6} | {lost:>4} |")
    return "\n".join(lines)


def write_json(path: Path, args: argparse.Namespace, result: dict[str, Any],
               passed: bool) -> None:
    webhook = next(iter(result["rows"].values()))
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "params": {"rate_per_s": args.rate, "duration_s": args.duration,
                   "size_bytes": args.size, "grace_s": args.grace, "derivatives": False},
        "target": {"p99_ms_below": target_p99_ms(args.rate), "passed": passed,
                   "p99_ms": None if webhook.p99 is None else round(webhook.p99, 1)},
        **{k: v for k, v in result.items() if k != "rows"},
        "latencies": {name.strip(): s.as_dict() for name, s in result["rows"].items()},
    }
    write_doc(path, doc)


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rate", type=float, default=20, help="uploads per second (default 20)")
    p.add_argument("--duration", type=float, default=30, help="seconds of load (default 30)")
    p.add_argument("--size", type=int, default=10240, help="bytes per upload (default 10240)")
    p.add_argument("--grace", type=float, default=10,
                   help="seconds to wait for late events after the load (default 10)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--pg", default=DEFAULT_PG,
                   help="PostgreSQL server for the throwaway bench database")
    p.add_argument("--redis", default=DEFAULT_REDIS)
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the serve and worker logs into this directory")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.size <= 0 or args.grace < 0:
        p.error("--rate, --duration and --size must be positive, --grace not negative")
    return args


def keep_logs(tmp: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("stowage.log", "worker.log"):
        if (tmp / name).exists():
            shutil.copy(tmp / name, dest / name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with terminate_cleanly(), contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="stowage-webhook-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        if args.keep_logs:
            # runs after the processes stopped (LIFO), so the logs are complete
            stack.callback(keep_logs, tmp, args.keep_logs)
        receiver = Receiver()
        hook_url = receiver.start()
        stack.callback(receiver.stop)
        stowage = start_deployment(stack, tmp, args.pg, args.redis)
        outcome = asyncio.run(run_load(stowage, receiver, hook_url, args.rate, args.duration,
                                       args.size, args.grace))
        with open(stowage.worker.log_path, "rb") as f:
            f.seek(outcome.worker_log_from)  # the timed run only, not start-up and warm-up
            worker_log = f.read().decode(errors="replace")
    result = analyse(outcome, worker_log)
    webhook: Stats = next(iter(result["rows"].values()))
    passed = (result["lost"] == 0 and webhook.p99 is not None
              and webhook.p99 < target_p99_ms(args.rate))
    print()
    print(f"{result['uploads']} uploads at {args.rate:g}/s for {args.duration:g} s, "
          f"{args.size} bytes each, no derivatives; indented rows are parts of the first")
    print(table(result))
    print(f"uploads failed: {result['uploads_failed']}  duplicates: {result['duplicates']}  "
          f"client schedule lag max: {result['schedule_lag_max_ms']} ms")
    for error in result["upload_errors"]:
        print(f"  upload error: {error}")
    print(f"target p99 < {target_p99_ms(args.rate):g} ms with nothing lost: "
          f"{'PASS' if passed else 'FAIL'} (p99 {_ms(webhook.p99)} ms)")
    write_json(args.json, args, result, passed)
    print(f"JSON: {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
