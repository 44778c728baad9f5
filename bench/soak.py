#!/usr/bin/env python3
"""Soak: mixed traffic against real processes while things break, then a full audit.

    python bench/soak.py [--duration 600] [--clients 6] [--json out.json] [--keep-logs DIR]

Stowage runs as in production: `stowage serve` and two `stowage worker` processes, on a fresh
database (dropped at the end), a Redis database of its own, filesystem cache and store in a
temp dir. A webhook receiver in this process, subscribed to every event, answers 500 to 30 %
of the requests. For `--duration` seconds several concurrent clients upload (multipart and raw,
1 KB–2 MB, log-uniform), some with promote=false then promote, some never promoted, some into
record slots (each replacing the slot's attachment), poll (also long-poll), list, download and
delete, each remembering what the final state of its attachments must be. Meanwhile worker B is
SIGKILLed and restarted every minute (every duration/10 for shorter runs, at least once) and
Redis is flushed once, half-way.

Then traffic stops, the run waits for quiescence (read from Postgres: no promotion pending, no
delivery pending, every deleted attachment purged, no cached copy left over) and checks:

* states: every attachment is in the state its history implies (stored / deleted / cached; an
  expired upload is deleted with error "expired"); stored bytes hash to what was sent;
* webhooks: every event row reached the receiver (a 2xx answer) under webhook-id
  msg_<event id>; de-duplicated on webhook-id, one distinct event per row and none without a
  row; every signature valid; per attachment, the newest event (highest generation) names its
  final state;
* orphans: every file under the cache and store dirs belongs to a live attachment (stored:
  its store files only; cached: its cache file only; deleted: nothing), and none is missing;
* memory: the RSS of the API and of worker A (never killed), mean of the last 20 % of the run
  against the mean of the 20–40 % window: at most +25 MiB or +30 %, whichever is larger;
* the clients saw no unexpected answer, no state went backwards, the processes stayed up.

`run_soak()` is the same thing as a coroutine (tests/test_soak.py runs a 60 s version).
Needs PostgreSQL and Redis (scripts/services starts them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from redis import asyncio as aioredis
from standardwebhooks import Webhook, WebhookVerificationError

# `python bench/soak.py` and the CI test's `from bench import soak` both find the helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import drop_database, free_port, sha256_of, stowage_cli, stowage_cmd, write_json

MiB = 1024 * 1024
RETRY_DELAYS = "1,1,2,2,3,5,5,5"
# The receiver fails at random, but never one webhook-id this many times in a row: running out
# of retries is another test's business, and 0.3^9 per event would make a long soak flaky.
MAX_FAILS_IN_A_ROW = 5
EPHEMERAL_TTL = 4
SLOTS_PER_CLIENT = 3
REDIS_CLAIM = "stowage:soak:claim"
STATE_RANK = {"cached": 0, "stored": 1, "failed": 1, "deleted": 2}


@dataclass
class SoakConfig:
    duration: float = 600.0
    clients: int = 6
    pg: str = "postgresql://127.0.0.1:5432"
    redis: str = "redis://127.0.0.1:6379"
    redis_db: int | None = None  # None: claim a free one among 15..8
    fail_rate: float = 0.3
    min_size: int = 1024
    max_size: int = 2 * MiB
    think_s: float = 0.05  # a client's pause between operations, at most
    quiesce_timeout: float = 120.0
    memory_slack_mib: float = 25.0
    memory_slack_ratio: float = 0.30
    workdir: Path | None = None  # default: a temp dir, removed at the end
    seed: int | None = None
    log: Any = print


# --- the webhook receiver ---------------------------------------------------------------------

@dataclass
class Hit:
    webhook_id: str
    status: int
    body: bytes
    signature_ok: bool


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # resets from killed workers: expected
            super().handle_error(request, client_address)


class Receiver:
    """Answers 500 to `fail_rate` of the requests, 204 to the rest; records everything."""

    def __init__(self, fail_rate: float, rng: random.Random) -> None:
        self.fail_rate = fail_rate
        self.rng = rng
        self.webhook: Webhook | None = None  # set once the endpoint (and its secret) exists
        self.hits: list[Hit] = []
        self.fails_in_a_row: Counter[str] = Counter()
        self.torn = 0  # requests cut short by their sender
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (a SIGKILLed worker)
                    with receiver.lock:
                        receiver.torn += 1
                    self.close_connection = True
                    return
                status = receiver.record(body, {k.lower(): v for k, v in self.headers.items()})
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, body: bytes, headers: dict[str, str]) -> int:
        wid = headers.get("webhook-id", "")
        try:
            signature_ok = self.webhook is not None and bool(self.webhook.verify(body, headers))
        except (WebhookVerificationError, ValueError, KeyError):
            signature_ok = False
        with self.lock:
            fail = (self.rng.random() < self.fail_rate
                    and self.fails_in_a_row[wid] < MAX_FAILS_IN_A_ROW)
            if fail:
                self.fails_in_a_row[wid] += 1
            else:
                self.fails_in_a_row.pop(wid, None)
            status = 500 if fail else 204
            self.hits.append(Hit(wid, status, body, signature_ok))
        return status

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- processes --------------------------------------------------------------------------------

class Process:
    """A Stowage subprocess in its own session, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name, self.args, self.env, self.cwd = name, args, env, cwd
        self.log_path = cwd / f"{name}.log"
        self.starts = 0
        self.popen: subprocess.Popen[bytes] = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            return subprocess.Popen([*stowage_cmd(), *self.args], env=self.env, cwd=self.cwd,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def sigkill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def restart(self) -> None:
        self.popen = self._spawn()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.sigkill()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def wait_http(proc: Process, url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=1) as c:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get(url)).status_code < 500:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} in {within}s:\n{proc.log_tail()}")


async def claim_redis_db(base: str, wanted: int | None, ttl: int) -> tuple[int, str]:
    """A Redis database nobody else uses, since the soak flushes it: an empty one among 15..8
    (7 is the test suite's), marked with a claim key so that two soaks never share one."""
    token = secrets.token_hex(8)
    for db in [wanted] if wanted is not None else range(15, 7, -1):
        r = aioredis.from_url(f"{base}/{db}")
        try:
            if await r.set(REDIS_CLAIM, token, nx=True, ex=ttl):
                if wanted is not None or await r.dbsize() == 1:
                    return db, token
                await r.delete(REDIS_CLAIM)
        finally:
            await r.aclose()
    raise RuntimeError("no free Redis database among 15..8; pass --redis-db")


# --- what the clients did, and expect ---------------------------------------------------------

@dataclass
class Tracked:
    id: str
    client: int
    kind: str  # upload | two-phase | parked | ephemeral | slot
    size: int
    sha256: str
    profile: str
    expect: str  # cached | stored | deleted
    expired: bool = False  # ephemeral: deleted by the sweep, error "expired"
    # replaced in its slot: current until its successor is stored, then deleted (replaced)
    replaced: bool = False
    successor: str | None = None
    seen: str = "cached"  # the latest state a client saw


@dataclass
class ClientState:
    n: int
    mine: list[str] = field(default_factory=list)  # every attachment this client made
    live: list[str] = field(default_factory=list)  # not deleted (as far as we did)
    pending: list[str] = field(default_factory=list)  # promote=false, to promote later
    slots: dict[str, str | None] = field(default_factory=dict)


class Traffic:
    def __init__(self, cfg: SoakConfig, http: httpx.AsyncClient, rng: random.Random) -> None:
        self.cfg, self.http, self.rng = cfg, http, rng
        self.tracked: dict[str, Tracked] = {}
        self.ops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.bytes_up = 0

    def error(self, what: str, detail: str) -> None:
        self.errors[what] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{what}: {detail[:300]}")

    def _size(self) -> int:
        lo, hi = math.log(self.cfg.min_size), math.log(self.cfg.max_size)
        return int(math.exp(self.rng.uniform(lo, hi)))

    async def run_client(self, c: ClientState, stop: asyncio.Event) -> None:
        ops = [(self.upload_plain, 18), (self.upload_two_phase, 8), (self.promote_pending, 8),
               (self.upload_slot, 14), (self.delete, 9), (self.poll, 15), (self.list, 4),
               (self.download, 6), (self.upload_parked, 2), (self.upload_ephemeral, 3)]
        fns, weights = zip(*ops, strict=True)
        while not stop.is_set():
            op = self.rng.choices(fns, weights)[0]
            try:
                await op(c)
            except Exception as e:  # a timeout, a dropped connection, or a bug: all counted
                self.error(op.__name__, f"{type(e).__name__}: {e}")
            await asyncio.sleep(self.rng.uniform(0, self.cfg.think_s))

    async def _upload(self, c: ClientState, kind: str, *, promote: bool = True,
                      profile: str | None = None, slot: str | None = None) -> Tracked | None:
        size = self._size()
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        fields: dict[str, str] = {"promote": "true" if promote else "false"}
        if profile:
            fields["profile"] = profile
        if slot:
            fields.update(record_type="soak", record_id=f"c{c.n}-{slot}", record_name="file")
        if self.rng.random() < 0.5:
            self.ops["upload multipart"] += 1
            r = await self.http.post("/v1/attachments", data=fields,
                                     files={"file": (f"{kind}.bin", data)})
        else:
            self.ops["upload raw"] += 1
            r = await self.http.post("/v1/attachments/raw",
                                     params={"filename": f"{kind}.bin", **fields}, content=data)
        if r.status_code != 201:
            self.error(f"upload {kind}", f"{r.status_code} {r.text}")
            return None
        body = r.json()
        if body["sha256"] != sha or body["size"] != size or body["state"] != "cached":
            self.error(f"upload {kind}", f"unexpected answer {body}")
        self.bytes_up += size
        t = Tracked(body["id"], c.n, kind, size, sha, body["profile"],
                    "stored" if promote else ("deleted" if kind == "ephemeral" else "cached"),
                    expired=kind == "ephemeral")
        self.tracked[t.id] = t
        c.mine.append(t.id)
        if slot:
            previous = c.slots.get(slot)
            if previous:
                # replaced when this one is stored: until then it stays as it was
                self._forget(c, previous)
                self.tracked[previous].replaced = True
                self.tracked[previous].successor = t.id
            c.slots[slot] = t.id
        if kind != "ephemeral":
            c.live.append(t.id)
        return t

    def _forget(self, c: ClientState, att_id: str) -> None:
        self.tracked[att_id].expect = "deleted"
        for lst in (c.live, c.pending):
            if att_id in lst:
                lst.remove(att_id)
        for slot, holder in c.slots.items():
            if holder == att_id:
                c.slots[slot] = None

    async def upload_plain(self, c: ClientState) -> None:
        await self._upload(c, "upload")

    async def upload_two_phase(self, c: ClientState) -> None:
        t = await self._upload(c, "two-phase", promote=False)
        if t:
            c.pending.append(t.id)

    async def upload_parked(self, c: ClientState) -> None:
        await self._upload(c, "parked", promote=False)  # never promoted: stays cached

    async def upload_ephemeral(self, c: ClientState) -> None:
        await self._upload(c, "ephemeral", promote=False, profile="ephemeral")

    async def upload_slot(self, c: ClientState) -> None:
        await self._upload(c, "slot", slot=str(self.rng.randrange(SLOTS_PER_CLIENT)))

    async def promote_pending(self, c: ClientState) -> None:
        if not c.pending:
            return await self.upload_plain(c)
        att_id = c.pending.pop(self.rng.randrange(len(c.pending)))
        self.ops["promote"] += 1
        r = await self.http.post(f"/v1/attachments/{att_id}/promote")
        if r.status_code != 202:
            self.error("promote", f"{r.status_code} {r.text}")
            return
        self.tracked[att_id].expect = "stored"

    async def delete(self, c: ClientState) -> None:
        if not c.live:
            return await self.upload_plain(c)
        att_id = self.rng.choice(c.live)
        self.ops["delete"] += 1
        r = await self.http.delete(f"/v1/attachments/{att_id}")
        if r.status_code != 202 or r.json()["state"] != "deleted":
            self.error("delete", f"{r.status_code} {r.text}")
            return
        self._forget(c, att_id)
        self._saw(att_id, "deleted")

    async def poll(self, c: ClientState) -> None:
        if not c.mine:
            return await self.upload_plain(c)
        # mostly recent ones, where things still happen
        t = self.tracked[self.rng.choice(c.mine[-20:] if self.rng.random() < 0.8 else c.mine)]
        wait = t.expect == "stored" and t.seen == "cached" and self.rng.random() < 0.5
        self.ops["long-poll" if wait else "poll"] += 1
        r = await self.http.get(f"/v1/attachments/{t.id}", params={"wait": 1} if wait else None)
        if r.status_code != 200:
            self.error("poll", f"{r.status_code} {r.text}")
            return
        state = r.json()["state"]
        allowed = {"stored": {"cached", "stored"}, "cached": {"cached"},
                   "deleted": {"deleted"}}[t.expect]
        if t.expired:
            allowed = {"cached", "deleted"}
        if t.replaced:
            allowed = {"cached", "stored", "deleted"}
        if state not in allowed:
            self.error("poll", f"{t.kind} {t.id} is {state}, expected one of {sorted(allowed)}")
        self._saw(t.id, state)

    def _saw(self, att_id: str, state: str) -> None:
        t = self.tracked[att_id]
        if STATE_RANK[state] < STATE_RANK[t.seen]:
            self.error("state went backwards", f"{att_id}: {t.seen} then {state}")
        t.seen = state

    async def list(self, c: ClientState) -> None:
        self.ops["list"] += 1
        params: dict[str, Any] = {"limit": 20}
        if self.rng.random() < 0.5:
            params["state"] = self.rng.choice(["cached", "stored", "deleted"])
        r = await self.http.get("/v1/attachments", params=params)
        if r.status_code != 200 or not isinstance(r.json().get("items"), list):
            self.error("list", f"{r.status_code} {r.text}")

    async def download(self, c: ClientState) -> None:
        stored = [i for i in c.live if self.tracked[i].seen == "stored"]
        if not stored:
            return await self.poll(c)
        t = self.tracked[self.rng.choice(stored)]
        self.ops["download"] += 1
        r = await self.http.get(f"/v1/attachments/{t.id}/content")
        if r.status_code != 200 or hashlib.sha256(r.content).hexdigest() != t.sha256:
            self.error("download", f"{t.id}: {r.status_code}, {len(r.content)} bytes")


# --- chaos and memory -------------------------------------------------------------------------

@dataclass
class Chaos:
    kills: list[float] = field(default_factory=list)  # seconds into the run
    flushes: list[float] = field(default_factory=list)


async def chaos(victim: Process, redis_url: str, claim: str, t0: float, duration: float,
                stop: asyncio.Event, log: Any) -> Chaos:
    done = Chaos()
    interval = min(60.0, duration / 10)
    plan = [(k * interval, "kill") for k in range(1, max(int(duration / interval), 1) + 1)
            if k * interval < duration or k == 1]
    # half-way, but not on top of a kill
    plan.append((duration / 2 + interval / 2 if duration >= 20 else duration / 2, "flush"))
    for at, what in sorted(plan):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(t0 + at - time.monotonic(), 0))
        if stop.is_set():
            break
        now = time.monotonic() - t0
        if what == "kill":
            await asyncio.to_thread(victim.sigkill)
            victim.restart()
            done.kills.append(now)
            log(f"  {now:6.1f}s  SIGKILLed {victim.name}, restarted")
        else:
            r = aioredis.from_url(redis_url)
            try:
                await r.flushdb()
                await r.set(REDIS_CLAIM, claim, ex=3600)
            finally:
                await r.aclose()
            done.flushes.append(now)
            log(f"  {now:6.1f}s  FLUSHDB")
    return done


async def sample_memory(procs: list[Process], t0: float, stop: asyncio.Event,
                        out: dict[str, list[tuple[float, int]]]) -> None:
    while not stop.is_set():
        now = time.monotonic() - t0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                out[p.name].append((now, psutil.Process(p.pid).memory_info().rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


@dataclass
class MemoryRow:
    process: str
    samples: int
    baseline_mib: float  # mean over 20–40 % of the run
    final_mib: float  # mean over the last 20 %
    peak_mib: float
    limit_mib: float
    ok: bool
    slope_mib_per_min: float  # least-squares trend from 20 % on: a slow leak shows here first

    @property
    def growth_mib(self) -> float:
        return self.final_mib - self.baseline_mib


def judge_memory(name: str, samples: list[tuple[float, int]], duration: float,
                 cfg: SoakConfig) -> MemoryRow:
    def mean(lo: float, hi: float) -> float:
        vals = [rss for t, rss in samples if lo * duration <= t <= hi * duration]
        return sum(vals) / len(vals) / MiB if vals else float("nan")

    base, final = mean(0.2, 0.4), mean(0.8, 1.0)
    limit = base + max(cfg.memory_slack_mib, cfg.memory_slack_ratio * base)
    peak = max((rss for _, rss in samples), default=0) / MiB
    return MemoryRow(name, len(samples), base, final, peak, limit, final <= limit,
                     _slope([(t, rss) for t, rss in samples if t >= 0.2 * duration]))


def _slope(points: list[tuple[float, int]]) -> float:
    """MiB per minute, least squares."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if not var:
        return float("nan")
    return sum((t - mt) * (v - mv) for t, v in points) / var * 60 / MiB


# --- quiescence and the audit -----------------------------------------------------------------

QUIESCENCE_SQL = """
SELECT
  (SELECT count(*) FROM attachments WHERE state = 'cached'
     AND promote_requested_at IS NOT NULL) AS promoting,
  (SELECT count(*) FROM attachments WHERE state = 'cached' AND profile = 'ephemeral')
     AS expiring,
  (SELECT count(*) FROM attachments WHERE state = 'deleted' AND purged_at IS NULL) AS unpurged,
  (SELECT count(*) FROM attachments WHERE state IN ('stored', 'failed')
     AND cache_purged_at IS NULL) AS cache_left,
  (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS deliveries_pending
"""


async def wait_quiescent(dsn: str, within: float) -> tuple[bool, float, dict[str, int]]:
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            left = dict(await conn.fetchrow(QUIESCENCE_SQL))
            took = time.monotonic() - started
            if not any(left.values()):
                return True, took, left
            if took > within:
                return False, took, left
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


# every storage in use has one (app.storage.identity); it is no attachment's file
IDENTITY_MARKER = "_stowage/identity.json"


def _files(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - {
        IDENTITY_MARKER}


def _sample(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" … ({len(items)} in all)" if len(items) > n else "")


def check_states(rows: dict[str, Any], traffic: Traffic) -> Check:
    wrong = []
    for t in traffic.tracked.values():
        row = rows.get(t.id)
        if row is None:
            wrong.append(f"{t.id} ({t.kind}) missing")
            continue
        expect = {t.expect}
        if t.replaced:
            # deleted (replaced) once its successor was stored; a successor the client deleted
            # before that leaves it as it was
            successor = rows.get(t.successor or "")
            if successor is None or successor["state"] != "stored":
                expect = {"stored", "deleted"}
        if row["state"] not in expect:
            wrong.append(f"{t.id} ({t.kind}) {row['state']}, expected {t.expect}")
        elif t.replaced and row["state"] == "deleted" and expect == {"deleted"} and (
                row["error"] or {}).get("code") != "replaced":
            wrong.append(f"{t.id} (slot) deleted without error 'replaced'")
        elif row["sha256"] != t.sha256 or row["size"] != t.size:
            wrong.append(f"{t.id} ({t.kind}) sha256/size differ")
        elif t.expired and (row["error"] or {}).get("code") != "expired":
            wrong.append(f"{t.id} (ephemeral) deleted without error 'expired'")
    unknown = sorted(set(rows) - set(traffic.tracked))
    wrong += [f"{i} unknown to the clients" for i in unknown]
    by_state = Counter(t.expect for t in traffic.tracked.values())
    detail = (f"{len(traffic.tracked)} attachments: "
              + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items()))
              + (f"; WRONG: {_sample(wrong)}" if wrong else ""))
    return Check("final states", not wrong, detail)


def check_webhooks(events: list[Any], rows: dict[str, Any], receiver: Receiver,
                   failed_deliveries: int) -> tuple[Check, Check, dict[str, Any]]:
    with receiver.lock:
        hits = list(receiver.hits)
    accepted: Counter[str] = Counter()
    bodies: dict[str, set[str]] = defaultdict(set)
    parsed: dict[str, dict[str, Any]] = {}
    for h in hits:
        event = json.loads(h.body)
        bodies[h.webhook_id].add(json.dumps(event, sort_keys=True))
        parsed[h.webhook_id] = event
        if 200 <= h.status < 300:
            accepted[h.webhook_id] += 1
    by_id = {f"msg_{e['id']}": e for e in events}
    problems = []
    never = [wid for wid in by_id if not accepted[wid]]
    if never:
        problems.append(f"{len(never)} events never accepted, e.g. {_sample(never, 3)}")
    phantom = sorted(set(bodies) - set(by_id))
    if phantom:
        problems.append(f"{len(phantom)} webhook-ids without an event row: {_sample(phantom, 3)}")
    varying = [wid for wid, b in bodies.items() if len(b) > 1]
    if varying:
        problems.append(f"{len(varying)} webhook-ids with differing bodies: "
                        f"{_sample(varying, 3)}")
    mismatched = [wid for wid, e in by_id.items() if wid in parsed and (
        parsed[wid]["type"] != e["type"] or parsed[wid]["data"]["id"] != str(e["attachment_id"])
        or json.dumps(parsed[wid], sort_keys=True) != json.dumps(e["body"], sort_keys=True))]
    if mismatched:
        problems.append(f"{len(mismatched)} bodies differ from their event row: "
                        f"{_sample(mismatched, 3)}")
    bad_sig = sum(not h.signature_ok for h in hits)
    if bad_sig:
        problems.append(f"{bad_sig} requests with a bad signature")
    if failed_deliveries:
        problems.append(f"{failed_deliveries} deliveries marked failed")
    duplicates = sum(n - 1 for n in accepted.values() if n > 1)
    stats = {"events": len(by_id), "requests": len(hits), "torn_requests": receiver.torn,
             "answered_500": sum(h.status == 500 for h in hits),
             "duplicates_accepted": duplicates, "bad_signatures": bad_sig}
    delivery = Check(
        "webhooks: each event once (dedupe by webhook-id)", not problems,
        f"{len(by_id)} events, {len(hits)} requests ({stats['answered_500']} answered 500), "
        f"{duplicates} duplicate deliveries de-duplicated"
        + (f"; {'; '.join(problems)}" if problems else ""))

    # per attachment: the events make sense for what happened, and the newest one (highest
    # generation) tells the final state, as the README tells receivers to rely on
    per_att: dict[str, Counter[str]] = defaultdict(Counter)
    newest: dict[str, dict[str, Any]] = {}
    for e in events:
        per_att[str(e["attachment_id"])][e["type"]] += 1
    for wid, n in accepted.items():
        if n and wid in parsed:
            data = parsed[wid]["data"]
            if data["id"] not in newest or data["generation"] > newest[data["id"]]["generation"]:
                newest[data["id"]] = data
    wrong = []
    for att_id, row in rows.items():
        seen = per_att.get(att_id, Counter())
        want = {"attachment.cached": 1, "attachment.failed": 0,
                "attachment.stored": 1 if row["state"] == "stored" else seen["attachment.stored"],
                "attachment.deleted": 1 if row["state"] == "deleted" else 0}
        if seen["attachment.stored"] > 1 or any(seen[k] != v for k, v in want.items()):
            wrong.append(f"{att_id} ({row['state']}): {dict(seen)}")
        elif att_id not in newest or newest[att_id]["state"] != row["state"]:
            got = newest.get(att_id, {}).get("state")
            wrong.append(f"{att_id}: newest event says {got}, row is {row['state']}")
    story = Check("webhooks: events match each attachment's history", not wrong,
                  f"{len(rows)} attachments" + (f"; WRONG: {_sample(wrong)}" if wrong else ""))
    return delivery, story, stats


def check_files(rows: dict[str, Any], cache_root: Path, store_root: Path) -> Check:
    want_cache: set[str] = set()
    want_store: dict[str, str] = {}  # relative path -> sha256 (originals only)
    for r in rows.values():
        prefix = f"{r['app_id']}/{r['id']}/"
        if r["state"] == "cached":
            want_cache.add(prefix + "upload")
        elif r["state"] == "stored":
            want_store[r["key"]] = r["sha256"]
            for d in (r["derivatives"] or {}).values():
                want_store[d["key"]] = ""
    cache, store = _files(cache_root), _files(store_root)
    orphans = sorted((cache - want_cache) | (store - set(want_store)))
    missing = sorted((want_cache - cache) | (set(want_store) - store))
    corrupt = sorted(k for k, sha in want_store.items()
                     if sha and k in store and sha256_of(store_root / k) != sha)
    problems = []
    if orphans:
        problems.append(f"{len(orphans)} orphans: {_sample(orphans, 4)}")
    if missing:
        problems.append(f"{len(missing)} missing: {_sample(missing, 4)}")
    if corrupt:
        problems.append(f"{len(corrupt)} corrupt: {_sample(corrupt, 4)}")
    return Check("files: no orphan, none missing, bytes intact", not problems,
                 f"cache {len(cache)} files, store {len(store)} files (hashed)"
                 + (f"; {'; '.join(problems)}" if problems else ""))


# --- the run ----------------------------------------------------------------------------------

@dataclass
class SoakResult:
    duration: float
    checks: list[Check]
    memory: list[MemoryRow]
    stats: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def table(self) -> str:
        s = self.stats
        lines = [f"Soak: {self.duration:g} s of traffic, {s.get('clients')} clients, "
                 f"{s.get('worker_kills', 0)} worker SIGKILLs, {s.get('redis_flushes', 0)} "
                 f"Redis flush, quiescent {s.get('quiescence_s', float('nan')):.1f} s after",
                 "", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'ok' if c.ok else 'FAIL'} | {c.detail} |" for c in self.checks]
        lines += ["", "| process | samples | RSS 20–40 % MiB | RSS last 20 % MiB | growth MiB "
                  "| limit MiB | peak MiB | trend MiB/min | flat |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|---|"]
        lines += [f"| {m.process} | {m.samples} | {m.baseline_mib:.1f} | {m.final_mib:.1f} "
                  f"| {m.growth_mib:+.1f} | {m.limit_mib:.1f} | {m.peak_mib:.1f} "
                  f"| {m.slope_mib_per_min:+.2f} | {'ok' if m.ok else 'FAIL'} |"
                  for m in self.memory]
        ops = s.get("ops", {})
        lines += ["", "| operation | count |", "|---|--:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(ops.items())]
        lines += [f"| total ({s.get('ops_per_s', 0):.1f}/s, "
                  f"{s.get('mib_uploaded', 0):.0f} MiB up) | {sum(ops.values())} |"]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"duration_s": self.duration, "ok": self.ok,
                "checks": [asdict(c) for c in self.checks],
                "memory": [{**asdict(m), "growth_mib": m.growth_mib} for m in self.memory],
                "stats": self.stats}


async def run_soak(cfg: SoakConfig) -> SoakResult:
    """Start everything, run the traffic and the chaos, wait for quiescence, audit, clean up."""
    log = cfg.log
    rng = random.Random(cfg.seed)
    async with contextlib.AsyncExitStack() as stack:
        if cfg.workdir is None:
            work = Path(tempfile.mkdtemp(prefix="stowage-soak-"))
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        else:
            work = cfg.workdir
            work.mkdir(parents=True, exist_ok=True)
        db_name = f"stowage_soak_{secrets.token_hex(4)}"
        dsn = f"{cfg.pg}/{db_name}"
        redis_db, claim = await claim_redis_db(cfg.redis, cfg.redis_db,
                                               int(cfg.duration + cfg.quiesce_timeout + 900))
        redis_url = f"{cfg.redis}/{redis_db}"
        stack.push_async_callback(_release_redis, redis_url)
        stack.push_async_callback(drop_database, cfg.pg, db_name)
        profiles = work / "profiles.toml"
        profiles.write_text(f"[profiles.ephemeral]\ncache_ttl = {EPHEMERAL_TTL}\n")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STOWAGE_")},
            "STOWAGE_DATABASE_URL": dsn,
            "STOWAGE_REDIS_URL": redis_url,
            "STOWAGE_QUEUE_NAME": f"stowage:soak:{secrets.token_hex(4)}",
            "STOWAGE_CACHE_URL": f"file://{work / 'cache'}",
            "STOWAGE_STORE_URL": f"file://{work / 'store'}",
            "STOWAGE_PROFILES_FILE": str(profiles),
            "STOWAGE_SECRET_KEY": "soak-" * 10,
            "STOWAGE_PUBLIC_URL": base,
            "STOWAGE_WEBHOOK_ALLOW_PRIVATE": "true",
            "STOWAGE_WEBHOOK_RETRY_DELAYS": RETRY_DELAYS,
            "STOWAGE_WEBHOOK_TIMEOUT": "3",
            "STOWAGE_SWEEP_INTERVAL": "2",
            "STOWAGE_STALE_JOB_AFTER": "5",
            "STOWAGE_JOB_TIMEOUT": "5",
            "STOWAGE_WORKER_METRICS_PORT": "0",
            "STOWAGE_SHUTDOWN_GRACE": "5",
            "STOWAGE_LOG_FORMAT": "text",
        }
        await asyncio.to_thread(stowage_cli, ["migrate"], env, work)
        api_key = json.loads(await asyncio.to_thread(
            stowage_cli, ["apps", "create", "soak", "--json"], env, work))["api_key"]
        receiver = Receiver(cfg.fail_rate, random.Random(rng.random()))
        stack.callback(receiver.stop)
        api = Process("api", ["serve", "--port", str(port)], env, work)
        stack.callback(api.stop)
        workers = [Process(f"worker-{n}", ["worker"], env, work) for n in ("a", "b")]
        for w in workers:
            stack.callback(w.stop)
        await wait_http(api, f"{base}/healthz")
        http = await stack.enter_async_context(httpx.AsyncClient(
            base_url=base, timeout=60, headers={"Authorization": f"Bearer {api_key}"},
            limits=httpx.Limits(max_connections=cfg.clients * 2)))
        r = await http.post("/v1/webhook-endpoints", json={"url": receiver.url})
        r.raise_for_status()
        receiver.webhook = Webhook(r.json()["secret"])
        log(f"soak: {cfg.duration:g} s, {cfg.clients} clients, api pid {api.pid}, workers "
            f"{[w.pid for w in workers]}, database {db_name}, redis db {redis_db}, in {work}")

        traffic = Traffic(cfg, http, rng)
        stop = asyncio.Event()
        memory: dict[str, list[tuple[float, int]]] = defaultdict(list)
        t0 = time.monotonic()
        clients = [asyncio.create_task(traffic.run_client(ClientState(n), stop))
                   for n in range(cfg.clients)]
        sampler = asyncio.create_task(sample_memory([api, *workers], t0, stop, memory))
        chaos_task = asyncio.create_task(
            chaos(workers[1], redis_url, claim, t0, cfg.duration, stop, log))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*clients)), cfg.duration)
        stop.set()
        await asyncio.gather(*clients, sampler)
        ran = time.monotonic() - t0
        done = await chaos_task
        log(f"traffic stopped after {ran:.1f} s: {sum(traffic.ops.values())} operations; "
            "waiting for quiescence")

        quiet, quiesce_s, left = await wait_quiescent(dsn, cfg.quiesce_timeout)
        checks = [Check("quiescence", quiet, f"{quiesce_s:.1f} s"
                        + ("" if quiet else f"; still outstanding: {left}"))]
        conn = await asyncpg.connect(dsn)
        try:
            rows = {str(r["id"]): r for r in await conn.fetch(
                "SELECT id, app_id, state, key, size, sha256, error, derivatives"
                " FROM attachments")}
            rows = {k: {**dict(v), "error": _json(v["error"]),
                        "derivatives": _json(v["derivatives"])} for k, v in rows.items()}
            events = [{**dict(e), "body": _json(e["body"])} for e in await conn.fetch(
                "SELECT id, type, attachment_id, body FROM events WHERE type <> 'webhook.test'")]
            failed_deliveries = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'")
        finally:
            await conn.close()
        checks.append(check_states(rows, traffic))
        delivery, story, hook_stats = check_webhooks(events, rows, receiver, failed_deliveries)
        checks += [delivery, story]
        checks.append(await asyncio.to_thread(check_files, rows, work / "cache", work / "store"))
        mem = [judge_memory(p.name, memory[p.name], ran, cfg) for p in (api, workers[0])]
        checks.append(Check("memory flat (api, worker-a)", all(m.ok for m in mem),
                            "; ".join(f"{m.process} {m.baseline_mib:.0f} → {m.final_mib:.0f} "
                                      f"MiB (limit {m.limit_mib:.0f})" for m in mem)))
        checks.append(Check("clients saw no error", not traffic.errors,
                            f"{sum(traffic.ops.values())} operations"
                            + (f"; {dict(traffic.errors)}: {traffic.error_samples[:5]}"
                               if traffic.errors else "")))
        died = [p.name for p in (api, workers[0]) if not p.alive()]
        died += [workers[1].name] if not workers[1].alive() else []
        checks.append(Check("processes up", not died,
                            "api, worker-a, worker-b" if not died else f"exited: {died}"))
        checks.append(Check("chaos happened", bool(done.kills) and len(done.flushes) == 1,
                            f"worker-b SIGKILLed at {[round(k) for k in done.kills]} s, "
                            f"FLUSHDB at {[round(f) for f in done.flushes]} s"))
        stats = {
            "clients": cfg.clients, "ops": dict(traffic.ops),
            "ops_per_s": sum(traffic.ops.values()) / ran,
            "mib_uploaded": traffic.bytes_up / MiB, "worker_kills": len(done.kills),
            "redis_flushes": len(done.flushes), "quiescence_s": quiesce_s,
            "attachments": len(traffic.tracked), "webhooks": hook_stats,
            "errors": dict(traffic.errors), "error_samples": traffic.error_samples,
            "database": db_name, "redis_db": redis_db, "workdir": str(work),
        }
        result = SoakResult(ran, checks, mem, stats)
        if not result.ok:
            stats["log_tails"] = {p.name: p.log_tail() for p in (api, *workers)}
        return result


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


async def _release_redis(url: str) -> None:
    r = aioredis.from_url(url)
    try:
        await r.flushdb()  # ours alone (claimed empty): the queue, jobs and the claim go
    finally:
        await r.aclose()


# --- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600, help="seconds of traffic (600)")
    p.add_argument("--clients", type=int, default=6, help="concurrent clients (6)")
    p.add_argument("--pg", default="postgresql://127.0.0.1:5432",
                   help="PostgreSQL server for the throwaway database")
    p.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server (no db)")
    p.add_argument("--redis-db", type=int, default=None,
                   help="Redis database to use (flushed!); default: a free one among 15..8")
    p.add_argument("--quiesce-timeout", type=float, default=120)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="run in this directory and keep it (logs, files) instead of a temp dir")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.clients <= 0:
        p.error("--duration and --clients must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = SoakConfig(duration=args.duration, clients=args.clients, pg=args.pg,
                     redis=args.redis, redis_db=args.redis_db,
                     quiesce_timeout=args.quiesce_timeout, seed=args.seed,
                     workdir=args.keep_logs, log=lambda m: print(m, flush=True))

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds: processes, database, Redis db, temp dir

    signal.signal(signal.SIGTERM, on_sigterm)
    result = asyncio.run(run_soak(cfg))
    print()
    print(result.table())
    if not result.ok:
        for name, tail in result.stats.get("log_tails", {}).items():
            print(f"\n--- {name} log (tail) ---\n{tail}")
    if args.json:
        write_json(args.json, result.as_dict())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
