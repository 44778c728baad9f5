#!/usr/bin/env python3
"""The event feed (GET /v1/events, issue 23): read throughput with 1 M events stored, and
commit → visible-in-the-feed latency at a steady 100 events/s.

    python bench/event_feed.py [--events 1000000] [--read 300000] [--rate 100] [--duration 30]

`stowage serve` runs in its own process against a throwaway database holding `--events`
events (nine in ten of the app read, one in ten of another app), put in place with the
commit-time trigger off and positions in order (filling a million through the trigger one by
one would take minutes and measure nothing of the feed). Then:

* read: one client follows the feed from its start, `limit=1000` (and `limit=100`), over one
  keep-alive connection; events/s = events received / wall time. Also 4 clients at once,
  each from its own cursor. Target: ≥ 20,000 events/s.
* latency: a writer commits one event per transaction at `--rate`/s through the outbox's own
  SQL (app.webhooks.repository.insert_event, so the deferred trigger, its lock and its NOTIFY
  run as in production), timing each COMMIT's return; a client long-polls the feed
  (`wait=30`) and times each event's arrival. Target: p99 < 100 ms.
* the cost of the sequencer, for the record: commits/s of 8 concurrent writers into one app
  (they commit one at a time) and into 8 apps.

Prints a table with met / not met; the exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import (
    DEFAULT_PG,
    DEFAULT_REDIS,
    REPO,
    machine,
    percentile,
    start_stowage,
    terminate_cleanly,
    write_json,
)

sys.path.insert(0, str(REPO))
from app.ids import uuid7
from app.webhooks import repository as outbox_repo

DEFAULT_JSON = REPO / "bench" / "results" / "event_feed.json"
TARGET_READ = 20_000  # events/s
TARGET_P99_MS = 100.0

# an attachment object as events carry it (~700 bytes of JSON)
DATA = {
    "state": "stored", "profile": "default", "filename": "holiday-photo-0042.jpg",
    "mime_type": "image/jpeg", "size": 2_483_112, "sha256": "ab" * 32,
    "metadata": {"width": 4032, "height": 3024, "orientation": 1},
    "client_metadata": {"source": "mobile"},
    "record": {"type": "user", "id": "42", "name": "avatar"}, "derivatives": {},
    "url": "http://127.0.0.1:8000/v1/attachments/x/content?token=" + "t" * 60,
    "error": None, "created_at": "2026-12-05T10:00:00Z", "updated_at": "2026-12-05T10:00:01Z",
    "stored_at": "2026-12-05T10:00:01Z",
}


async def fill(dsn: str, app_id: uuid.UUID, total: int) -> float:
    """`total` events, nine in ten of ``app_id``, in the feed in order; seconds taken."""
    t0 = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        other = await conn.fetchval(
            "INSERT INTO apps (id, name) VALUES (gen_random_uuid(), 'other') RETURNING id")
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_feed_sequence")
        batch = 100_000
        for start in range(1, total + 1, batch):
            end = min(start + batch - 1, total)
            await conn.execute(
                "INSERT INTO events (id, app_id, type, attachment_id, body, created_at)"
                " SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid,"
                "  CASE WHEN n % 10 = 0 THEN $3::uuid ELSE $4::uuid END,"
                "  CASE WHEN n % 2 = 0 THEN 'attachment.stored' ELSE 'attachment.cached' END,"
                "  gen_random_uuid(),"
                "  jsonb_build_object('type', CASE WHEN n % 2 = 0 THEN 'attachment.stored'"
                "   ELSE 'attachment.cached' END, 'timestamp', '2026-12-05T10:00:00Z',"
                "   'data', $5::jsonb || jsonb_build_object('id', gen_random_uuid())),"
                "  now() - make_interval(secs => $2 - n)"
                " FROM generate_series($1::int, $2::int) AS n",
                start, end, other, app_id, json.dumps(DATA))
            await conn.execute(
                "INSERT INTO event_feed (app_id, position, event_id, type, created_at)"
                " SELECT app_id, nextval('event_feed_position'), id, type, created_at"
                " FROM events WHERE id >= ('00000000-0000-7000-8000-' || lpad(to_hex($1::int), 12,"
                "  '0'))::uuid AND id <= ('00000000-0000-7000-8000-' || lpad(to_hex($2::int), 12,"
                "  '0'))::uuid ORDER BY id", start, end)
            print(f"  filled {end:,} events", flush=True)
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_feed_sequence")
        await conn.execute("VACUUM ANALYZE events")
        await conn.execute("VACUUM ANALYZE event_feed")
    finally:
        await conn.close()
    return time.monotonic() - t0


async def follow(base: str, headers: dict[str, str], want: int, limit: int,
                 after: str | None = None) -> tuple[int, float]:
    """Read ``want`` events from ``after``; (events read, seconds)."""
    got = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        t0 = time.monotonic()
        while got < want:
            params: dict[str, Any] = {"limit": min(limit, want - got)}
            if after:
                params["after"] = after
            r = await client.get("/v1/events", params=params)
            r.raise_for_status()
            page = r.json()
            if not page["items"]:
                break
            got += len(page["items"])
            after = page["next_cursor"]
        return got, time.monotonic() - t0


async def cursor_at(dsn: str, app_id: uuid.UUID, nth: int) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        event_id = await conn.fetchval(
            "SELECT event_id FROM event_feed WHERE app_id = $1 ORDER BY position"
            " OFFSET $2 LIMIT 1", app_id, nth)
    finally:
        await conn.close()
    return f"msg_{event_id}"


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    return conn


async def latency(base: str, headers: dict[str, str], dsn: str, app_id: uuid.UUID,
                  rate: float, duration: float, start_after: str) -> dict[str, Any]:
    committed: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    body = {"type": "attachment.stored", "timestamp": "2026-12-05T10:00:00Z", "data": DATA}

    async def writer() -> None:
        conn = await connect(dsn)
        try:
            n = int(rate * duration)
            t0 = time.monotonic()
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                event_id = uuid7()
                await outbox_repo.insert_event(conn, event_id, app_id, "attachment.stored",
                                               None, body, None)
                committed[f"msg_{event_id}"] = time.monotonic()
        finally:
            await conn.close()

    async def reader() -> None:
        after = start_after
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
            while not (stop.is_set() and len(seen) >= len(committed)):
                r = await client.get("/v1/events", params={"after": after, "wait": 5,
                                                           "limit": 1000})
                now = time.monotonic()
                r.raise_for_status()
                page = r.json()
                for item in page["items"]:
                    seen.setdefault(item["id"], now)
                after = page["next_cursor"] or after

    read_task = asyncio.create_task(reader())
    await asyncio.sleep(0.5)  # the reader is waiting
    await writer()
    stop.set()
    await asyncio.wait_for(read_task, 30)
    lat = [(seen[i] - committed[i]) * 1000 for i in committed if i in seen]
    return {"events": len(committed), "received": len(seen),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat)}


async def commit_rate(dsn: str, apps: list[uuid.UUID], seconds: float = 5.0) -> float:
    body = {"type": "attachment.stored", "timestamp": "t", "data": {}}
    count = 0
    deadline = time.monotonic() + seconds

    async def one(app_id: uuid.UUID) -> None:
        nonlocal count
        conn = await connect(dsn)
        try:
            while time.monotonic() < deadline:
                await outbox_repo.insert_event(conn, uuid7(), app_id, "attachment.stored",
                                               None, body, None)
                count += 1
        finally:
            await conn.close()

    await asyncio.gather(*(one(a) for a in apps))
    return count / seconds


def run(args: argparse.Namespace, tmp: Path) -> int:
    # the cleanups start_stowage registers run their own event loops: outside of ours
    with contextlib.ExitStack() as stack:
        stowage = start_stowage(stack, tmp, args.pg, args.redis)
        results, fill_s, ours = asyncio.run(measure(stowage, args))
    return report(args, results, fill_s, ours)


async def measure(stowage: Any, args: argparse.Namespace
                  ) -> tuple[dict[str, Any], float, int]:
    if True:
        headers = stowage.auth_header
        conn = await asyncpg.connect(stowage.db_url)
        app_id = await conn.fetchval("SELECT id FROM apps WHERE name = 'bench'")
        await conn.close()
        print(f"filling {args.events:,} events …", flush=True)
        fill_s = await fill(stowage.db_url, app_id, args.events)
        ours = args.events - args.events // 10
        results: dict[str, Any] = {"events_stored": args.events, "events_of_app": ours,
                                   "fill_s": round(fill_s, 1)}
        await follow(stowage.base, headers, 5000, 1000)  # warm up
        want = min(args.read, ours)
        got, secs = await follow(stowage.base, headers, want, 1000)
        results["read_1000"] = {"events": got, "s": secs, "per_s": got / secs}
        got, secs = await follow(stowage.base, headers, min(want, 100_000), 100)
        results["read_100"] = {"events": got, "s": secs, "per_s": got / secs}
        starts = [await cursor_at(stowage.db_url, app_id, i * ours // 4) for i in range(4)]
        t0 = time.monotonic()
        parts = await asyncio.gather(*(follow(stowage.base, headers, want // 4, 1000, after=s)
                                       for s in starts))
        secs = time.monotonic() - t0
        total = sum(p[0] for p in parts)
        results["read_1000_x4"] = {"events": total, "s": secs, "per_s": total / secs}
        last = await cursor_at(stowage.db_url, app_id, ours - 1)
        results["latency"] = await latency(stowage.base, headers, stowage.db_url, app_id,
                                           args.rate, args.duration, last)
        conn = await asyncpg.connect(stowage.db_url)
        extra = [await conn.fetchval(
            "INSERT INTO apps (id, name) VALUES (gen_random_uuid(), $1) RETURNING id",
            f"w{i}") for i in range(8)]
        await conn.close()
        results["commits_one_app_8_writers_per_s"] = await commit_rate(
            stowage.db_url, [app_id] * 8)
        results["commits_8_apps_8_writers_per_s"] = await commit_rate(stowage.db_url, extra)
    return results, fill_s, ours


def report(args: argparse.Namespace, results: dict[str, Any], fill_s: float, ours: int) -> int:

    read_best = results["read_1000"]["per_s"]
    lat = results["latency"]
    rows = [
        ("feed read, 1 client, limit=1000", f"{read_best:,.0f} events/s",
         f"≥ {TARGET_READ:,}/s", read_best >= TARGET_READ),
        ("feed read, 1 client, limit=100", f"{results['read_100']['per_s']:,.0f} events/s",
         "", None),
        ("feed read, 4 clients, limit=1000", f"{results['read_1000_x4']['per_s']:,.0f} events/s",
         "", None),
        (f"commit → visible p50 / p99 / max at {args.rate:g}/s",
         f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.1f} ms",
         f"p99 < {TARGET_P99_MS:.0f} ms",
         lat["p99_ms"] < TARGET_P99_MS and lat["received"] == lat["events"]),
        ("events committed / received", f"{lat['events']} / {lat['received']}", "all", None),
        ("commits/s, 8 writers, one app (sequenced)",
         f"{results['commits_one_app_8_writers_per_s']:,.0f}", "", None),
        ("commits/s, 8 writers, 8 apps", f"{results['commits_8_apps_8_writers_per_s']:,.0f}",
         "", None),
    ]
    print(f"\n{args.events:,} events stored ({ours:,} of the app read), filled in {fill_s:.0f} s")
    print("| measure | result | target | |\n|---|---|---|---|")
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("met" if ok else "**not met**")
        print(f"| {name} | {value} | {target} | {verdict} |")
    write_json(args.json, {"machine": machine(), "args": vars(args) | {"json": str(args.json)},
                           "results": results})
    print(f"JSON: {args.json}")
    return 0 if all(ok is not False for *_, ok in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--read", type=int, default=300_000, help="events the reader follows")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s for the latency")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    with terminate_cleanly(), tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
