"""`stowage fsck`: compare both storages with PostgreSQL, the source of truth.

Finds two kinds of problems:

- **orphans**: objects in the cache or the store that nothing owns. Owners are attachments
  (cached: their cache object and any store file a promotion is writing; stored: their
  original and the derivatives their ``derivatives`` column names; deleted or failed ones
  still waiting for the worker to remove their files), unregistered presigned uploads (their
  cache key) and tus uploads (everything under their own prefix, and the cache key of the
  attachment a completing upload is making). Leftover ``_doctor/`` probes are orphans too.
  Keys Stowage never makes are reported as *unrecognized* and never removed.
- **broken attachments**: a cached attachment without its cache object, a stored one without
  its original or one of its derivatives.

Scales with the number of objects, not memory: each storage is listed as a stream, keys are
checked against PostgreSQL a batch at a time (one query per table for ~1000 keys), and the
live files found are copied into a session-temporary table; one anti-join at the end then
names the attachments whose files were not found, which are each checked again by ``stat``
before being reported.

Objects younger than the grace period are never reported as orphans nor touched: an upload in
flight has its file before its row (they are counted as ``recent``).

``repair`` removes orphans older than the grace period and marks broken attachments
``failed`` (``error.code`` ``file_missing``, with an ``attachment.failed`` event written in the
same transaction), like a promotion that finds its file gone. Every repair holds the worker's
per-attachment advisory lock (an attachment a job is working on is skipped, counted as not
repaired) and re-reads PostgreSQL first.

A repair that would mark more than a small share of the attachments failed, or remove more
than a small share of the objects (more than ``MAX_SHARE`` and more than ``MAX_ITEMS``), is
refused unless forced: that many missing or unowned files means, far more often than real
damage, that fsck looks at another storage than the database describes. The check runs first
(a listing without changes), and the repair that follows never exceeds those limits either.
The identity marker of each storage (``_stowage/``) is neither listed nor counted.

Free of FastAPI and arq. The key grammar and ownership rules are in fsck_keys.py, the report
in fsck_report.py, the SQL in fsck_repository.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from app.attachments import keys
from app.attachments import repository as attachments_repo
from app.attachments.events import emit_attachment
from app.ops import fsck_repository as repo
from app.ops.fsck_keys import (
    DOCTOR_PROBE,
    LIVE,
    NO_OWNER,
    ORPHAN,
    ParsedKey,
    classify,
    load_owners,
    parse_key,
    uuid7_time,
)
from app.ops.fsck_report import (
    EXAMPLES,
    BrokenAttachment,
    FsckReport,
    Orphan,
    human_seconds,
)
from app.ops.leftovers import Leftovers
from app.storage import Storage, is_reserved
from app.uploads.presigned import PRESIGN_TTL_S, SWEEP_GRACE_S

if TYPE_CHECKING:
    from app.attachments.links import Links
    from app.jobs import JobQueue
    from app.webhooks.service import Webhooks

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 3600.0
BATCH_SIZE = 1000
# stat/HEAD requests in flight at once while judging orphan candidates and broken rows
STAT_CONCURRENCY = 16
# repairs lock this many attachments at a time
REPAIR_CHUNK = 100
DOCTOR_PREFIX = "_doctor/"
# without --force, a repair marks failed at most this share of the attachments checked (and
# removes at most this share of the objects listed), or MAX_ITEMS if that is more
MAX_SHARE = 0.10
MAX_ITEMS = 5


def repair_limit(total: int) -> int:
    """How many of `total` a repair may change without --force."""
    return max(MAX_ITEMS, math.floor(total * MAX_SHARE))

def grace_seconds(value: str) -> float:
    """argparse type for --grace: a non-negative number of seconds."""
    seconds = float(value)
    if not seconds >= 0:  # also refuses nan
        raise ValueError(f"grace must be >= 0 seconds, got {value!r}")
    return seconds


# --- object age --------------------------------------------------------------------------------

class _Unknown:
    """Age of an object in a storage fsck cannot ask (never removed)."""


UNKNOWN_AGE = _Unknown()


async def object_modified(storage: Storage, key: str) -> datetime | _Unknown | None:
    """When the object was last written (filesystem mtime, S3 LastModified); None if it is
    gone, UNKNOWN_AGE for a backend that cannot tell."""
    info = await storage.stat(key)
    if info is None:
        return None
    return info.modified_at if info.modified_at is not None else UNKNOWN_AGE


# --- where the storages are --------------------------------------------------------------------

def nested_prefix(outer: Storage, inner: Storage) -> str | None:
    """The key prefix under which `inner`'s objects appear when listing `outer`: "" when
    both are the same place, "sub/" when inner lives inside outer, None when apart."""
    return outer.placement.prefix_of(inner.placement)


@dataclass
class _Pass:
    """One listing: of `storage`, whose keys belong to `areas`, minus another storage's
    keys nested inside it."""

    storage: Storage
    areas: tuple[str, ...]
    skip: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "+".join(self.areas)


def plan_passes(cache: Storage, store: Storage) -> list[_Pass]:
    if nested_prefix(cache, store) == "":
        return [_Pass(cache, ("cache", "store"))]
    store_in_cache, cache_in_store = nested_prefix(cache, store), nested_prefix(store, cache)
    return [
        _Pass(cache, ("cache",), (store_in_cache,) if store_in_cache else ()),
        _Pass(store, ("store",), (cache_in_store,) if cache_in_store else ()),
    ]


# --- the check ---------------------------------------------------------------------------------

class Fsck:
    """Both storages checked against PostgreSQL, and repaired on request."""

    def __init__(self, *, pool: asyncpg.Pool, cache: Storage, store: Storage, links: Links,
                 jobs: JobQueue, webhooks: Webhooks, leftovers: Leftovers) -> None:
        self.pool = pool
        self.cache = cache
        self.store = store
        self.links = links  # the events of attachments a repair marks failed
        self.jobs = jobs
        self.webhooks = webhooks
        self.leftovers = leftovers

    async def check(self, *, repair: bool = False, grace: float = DEFAULT_GRACE_S,
                    examples: int = EXAMPLES, batch_size: int = BATCH_SIZE,
                    force: bool = False) -> FsckReport:
        """Check (and with `repair`, fix) both storages against PostgreSQL. A repair that
        would change more than the limits allow (repair_limit) is refused unless `force`."""
        if grace < 0:
            raise ValueError("grace must be >= 0")

        def checker(repair: bool, limits: tuple[int, int] | None = None) -> _Checker:
            return _Checker(self, repair=repair, grace=grace, examples=examples,
                            batch_size=batch_size, limits=limits)

        if not repair or force:
            return await checker(repair).run()
        # look before changing anything: a repair refused must leave everything as it was
        found = await checker(repair=False).run()
        found.repair = True
        if not (found.orphans or found.broken or found.leftovers):
            return found
        orphan_limit = repair_limit(found.objects_scanned)
        broken_limit = repair_limit(found.attachments_checked)
        if found.orphans > orphan_limit or found.broken > broken_limit:
            found.refused = _refusal(found)
            log.warning("fsck: refused to repair: %s", found.refused)
            return found
        # things move on meanwhile: the repair keeps to the limits of what was looked at
        return await checker(repair=True, limits=(orphan_limit, broken_limit)).run()


def _refusal(found: FsckReport) -> str:
    def share(n: int, total: int, what: str, done: str) -> str:
        percent = 100 * n / total if total else 100.0
        return f"{n} of {total} {what} ({percent:.0f}%) would be {done}"

    parts = []
    if found.broken > repair_limit(found.attachments_checked):
        parts.append(share(found.broken, found.attachments_checked, "attachments",
                           "marked failed"))
    if found.orphans > repair_limit(found.objects_scanned):
        parts.append(share(found.orphans, found.objects_scanned, "objects", "removed"))
    return (f"{' and '.join(parts)}, more than {MAX_SHARE:.0%} and more than {MAX_ITEMS}."
            " That many usually means that fsck looks at another storage than the one the"
            " database describes (check the storage URLs, and `stowage doctor`), not that the"
            " files are gone. Nothing was changed; if you are sure, run fsck --repair --force.")


@dataclass
class _Candidate:
    areas: tuple[str, ...]  # the storages the key may belong to (see classify)
    area: str  # the one it is reported under
    storage: Storage
    key: str
    parsed: ParsedKey | None
    reason: str


class _Checker:
    def __init__(self, fsck: Fsck, *, repair: bool, grace: float, examples: int,
                 batch_size: int, limits: tuple[int, int] | None = None) -> None:
        self.fsck = fsck
        self.repair = repair
        # (orphans to remove, attachments to mark failed) at most; None: no limit
        self.limits = limits
        self.grace = grace
        self.examples = examples
        self.batch_size = batch_size
        self.report = FsckReport(repair=repair, grace_s=grace, examples_limit=examples)
        self.stat_limit = asyncio.Semaphore(STAT_CONCURRENCY)
        self.tables: set[str] = set()
        self.conn: asyncpg.Connection

    async def run(self) -> FsckReport:
        t0 = time.monotonic()
        self.report.started_at = datetime.now(UTC).isoformat()
        async with self.fsck.pool.acquire() as conn:
            self.conn = conn
            self.tables = await repo.tables_present(conn)
            await repo.create_scan_tables(conn)
            try:
                scan_started = await repo.db_now(conn)
                self.report.attachments_checked = await repo.live_attachments(conn,
                                                                              scan_started)
                for p in plan_passes(self.fsck.cache, self.fsck.store):
                    await self._scan(p)
                await self._find_broken(scan_started)
                await self._leftovers()
            finally:
                try:
                    await repo.drop_scan_tables(conn)
                except Exception as exc:  # a dead connection: its temp tables died with it
                    log.warning("fsck: could not drop its temporary tables: %s", exc)
        self.report.duration_s = round(time.monotonic() - t0, 3)
        r = self.report
        log.info("fsck: %d orphan(s) (%d removed), %d broken (%d repaired), %d unrecognized",
                 r.orphans, r.orphans_removed, r.broken, r.broken_repaired, r.unrecognized)
        return r

    async def _leftovers(self) -> None:
        for name, leftover in await self.fsck.leftovers.find(self.grace):
            self.report.leftovers += 1
            self.report.leftover_bytes += leftover.size or 0
            removed = False
            if self.repair:
                await self.fsck.leftovers.remove(name, leftover)
                self.report.leftovers_removed += 1
                removed = True
            if len(self.report.leftover_examples) < self.examples:
                self.report.leftover_examples.append(
                    f"{name}: {leftover.name}  age {human_seconds(leftover.age_s)}"
                    + ("  removed" if removed else ""))

    # -- listing and ownership -----------------------------------------------------------------

    async def _scan(self, p: _Pass) -> None:
        self.report.scanned.setdefault(p.name, 0)
        batch: list[str] = []
        keys_iter = p.storage.list_keys()
        try:
            async for key in keys_iter:
                if any(key.startswith(s) for s in p.skip):
                    continue  # the other storage's, listed on its own
                if is_reserved(key):
                    continue  # the storage's identity marker: not data, never an orphan
                self.report.scanned[p.name] += 1
                batch.append(key)
                if len(batch) >= self.batch_size:
                    await self._check_batch(p, batch)
                    batch = []
                    if self.report.scanned[p.name] % (100 * self.batch_size) == 0:
                        log.info("fsck: %d %s object(s) checked", self.report.scanned[p.name],
                                 p.name)
            if batch:
                await self._check_batch(p, batch)
        finally:
            await keys_iter.aclose()

    async def _check_batch(self, p: _Pass, batch: list[str]) -> None:
        parsed = [(key, parse_key(key)) for key in batch]
        owners = await load_owners(self.conn, (k for _, k in parsed if k), self.tables)
        seen: list[tuple[str, str]] = []
        candidates: list[_Candidate] = []
        for key, pk in parsed:
            if pk is None:
                if key.startswith(DOCTOR_PREFIX):
                    candidates.append(_Candidate(p.areas, p.areas[0], p.storage, key, None,
                                                 DOCTOR_PROBE))
                else:
                    self.report.unrecognized += 1
                    if len(self.report.unrecognized_examples) < self.examples:
                        self.report.unrecognized_examples.append(f"{p.name}:{key}")
                continue
            (kind, reason), live_in = classify(p.areas, key, pk, owners)
            if kind == LIVE:
                seen += [(area, key) for area in live_in]
            elif kind == ORPHAN:
                area = _area_for(p.areas, pk)
                candidates.append(_Candidate(p.areas, area, p.storage, key, pk,
                                             reason or NO_OWNER))
        if seen:
            await repo.add_seen(self.conn, seen)
        if candidates:
            await self._judge(candidates)

    async def _judge(self, candidates: list[_Candidate]) -> None:
        """Keep the orphans older than the grace period; remove them when repairing."""
        ages = await self._gather(self._age(c) for c in candidates)
        now = time.time()
        old: list[tuple[_Candidate, Orphan]] = []
        for c, age in zip(candidates, ages, strict=True):
            if age is None:
                continue  # gone meanwhile
            if isinstance(age, float) and (age < self.grace or self._maybe_registering(c, now)):
                self.report.recent += 1
                continue
            found = Orphan(storage=c.area, key=c.key, reason=c.reason,
                           owner_id=str(c.parsed.owner_id) if c.parsed else None,
                           age_s=round(age, 1) if isinstance(age, float) else None)
            self.report.orphans += 1
            if len(self.report.orphan_examples) < self.examples:
                self.report.orphan_examples.append(found)
            if self.repair and isinstance(age, float):
                old.append((c, found))
        for i in range(0, len(old), REPAIR_CHUNK):
            await self._remove(old[i:i + REPAIR_CHUNK])

    def _maybe_registering(self, c: _Candidate, now: float) -> bool:
        """A presigned upload's object loses its presign row when registration starts, and
        registration reads the whole object before the attachment row exists: its key has no
        owner then, however old the object. Registration can only start while the presign
        lives (PRESIGN_TTL_S, then SWEEP_GRACE_S), so an id that young is left alone."""
        if not self.fsck.cache.direct_upload or c.area != "cache" or c.reason != NO_OWNER:
            return False
        if c.parsed is None or c.parsed.rest != "upload":
            return False
        made = uuid7_time(c.parsed.owner_id)
        return made is not None and now - made < self.grace + PRESIGN_TTL_S + SWEEP_GRACE_S

    async def _age(self, c: _Candidate) -> float | _Unknown | None:
        async with self.stat_limit:
            modified = await object_modified(c.storage, c.key)
        if modified is None or isinstance(modified, _Unknown):
            return modified
        return max(0.0, time.time() - modified.timestamp())

    async def _remove(self, chunk: list[tuple[_Candidate, Orphan]]) -> None:
        """Under each attachment's lock, with fresh rows: delete what is still an orphan."""
        ids = sorted({c.parsed.owner_id for c, _ in chunk if c.parsed})
        locked = [i for i in ids if await attachments_repo.try_lock_attachment(self.conn, i)]
        try:
            owners = await load_owners(self.conn, (c.parsed for c, _ in chunk if c.parsed),
                                       self.tables)
            for c, found in chunk:
                if c.parsed is not None:
                    if c.parsed.owner_id not in locked:
                        self.report.skipped_busy += 1
                        continue
                    (kind, _), _ = classify(c.areas, c.key, c.parsed, owners)
                    if kind != ORPHAN:
                        # owned again (e.g. a row appeared meanwhile): not an orphan after all
                        self.report.orphans -= 1
                        if found in self.report.orphan_examples:
                            self.report.orphan_examples.remove(found)
                        continue
                if self.limits is not None and self.report.orphans_removed >= self.limits[0]:
                    self.report.held_back += 1
                    continue
                await c.storage.delete(c.key)
                found.removed = True
                self.report.orphans_removed += 1
                log.info("fsck: removed orphan %s:%s (%s)", c.area, c.key, c.reason)
        finally:
            for i in locked:
                await attachments_repo.unlock_attachment(self.conn, i)

    # -- broken attachments --------------------------------------------------------------------

    async def _find_broken(self, scan_started: datetime) -> None:
        if not await repo.collect_missing(self.conn, scan_started):
            return
        after: UUID | None = None
        while rows := await repo.missing_page(self.conn, after, self.batch_size):
            after = rows[-1]["id"]
            await self._check_broken_page(rows)

    def _storage(self, name: str) -> Storage:
        return self.fsck.cache if name == "cache" else self.fsck.store

    async def _still_missing(self, rows: list[Any]) -> list[Any]:
        """Those of ``rows`` whose file is still not there: one batch per storage."""
        absent: set[tuple[str, str]] = set()
        for name in {r["storage"] for r in rows}:
            keys = [r["key"] for r in rows if r["storage"] == name]
            absent |= {(name, k) for k in await self._storage(name).missing(keys)}
        return [r for r in rows if (r["storage"], r["key"]) in absent]

    async def _check_broken_page(self, rows: list[Any]) -> None:
        """A page of files the listing did not find, a batch at a time: every file checked
        again (one batch per storage) and every row read again in one query,
        not one of each per attachment (a million attachments would take 10 minutes)."""
        missing = await self._still_missing(rows)
        if not missing:
            return
        gone: dict[UUID, list[Any]] = {}
        for r in missing:
            gone.setdefault(r["id"], []).append(r)
        fresh = {r["id"]: r for r in await repo.row_versions(self.conn, list(gone))}
        for att_id, att_missing in gone.items():
            first = att_missing[0]
            if not _unchanged(fresh.get(att_id), first):
                continue  # the row moved on since the listing
            found = BrokenAttachment(attachment_id=str(att_id), app_id=str(first["app_id"]),
                                     state=first["state"],
                                     missing=[f"{r['storage']}:{r['key']}" for r in att_missing])
            self.report.broken += 1
            if len(self.report.broken_examples) < self.examples:
                self.report.broken_examples.append(found)
            if self.repair:
                if self.limits is not None and self.report.broken_repaired >= self.limits[1]:
                    self.report.held_back += 1
                    continue
                await self._mark_failed(first, att_missing, found)

    async def _mark_failed(self, first: Any, missing: list[Any],
                           found: BrokenAttachment) -> None:
        att_id = first["id"]
        if not await attachments_repo.try_lock_attachment(self.conn, att_id):
            self.report.skipped_busy += 1
            return
        deliveries: list[UUID] = []
        try:
            # under the lock no job moves files: check once more what is really gone
            if not _unchanged(await repo.get_attachment(self.conn, att_id), first):
                self._forget_broken(found)
                return
            missing = await self._still_missing(missing)
            if not missing:
                self._forget_broken(found)
                return
            error = {"code": "file_missing", "detail": _missing_detail(first, missing)}
            async with self.conn.transaction():
                failed = await repo.mark_file_missing(self.conn, att_id, first["state"],
                                                      first["row_key"], first["generation"],
                                                      error)
                if failed is not None:
                    deliveries = await emit_attachment(self.conn, "attachment.failed", failed,
                                                       self.fsck.links)
            if failed is None:
                self._forget_broken(found)
                return
            found.marked_failed = True
            self.report.broken_repaired += 1
            log.warning("fsck: attachment %s marked failed: %s", att_id, error["detail"])
            # like a failed promotion: a failed attachment keeps no files
            await self.fsck.store.delete_prefix(keys.prefix(first["app_id"], att_id))
        finally:
            await attachments_repo.unlock_attachment(self.conn, att_id)
        await _best_effort(self.fsck.webhooks.dispatch(deliveries), "enqueue webhook deliveries")
        await _best_effort(self.fsck.jobs.purge_cache(att_id), "enqueue the cache purge")

    def _forget_broken(self, found: BrokenAttachment) -> None:
        self.report.broken -= 1
        if found in self.report.broken_examples:
            self.report.broken_examples.remove(found)

    async def _gather(self, aws: Iterable[Awaitable[Any]]) -> list[Any]:
        return list(await asyncio.gather(*aws))


def _area_for(areas: tuple[str, ...], p: ParsedKey) -> str:
    if len(areas) == 1:
        return areas[0]
    # "upload.unstripped": what a crash during a metadata rewrite leaves (see uploads/ingest)
    return "cache" if p.rest.startswith(("upload", "tus")) else "store"


def _unchanged(row: Any, seen: Any) -> bool:
    return row is not None and (row["state"], row["key"], row["generation"]) == (
        seen["state"], seen["row_key"], seen["generation"])


def _missing_detail(first: Any, missing: list[Any]) -> str:
    prefix = keys.prefix(first["app_id"], first["id"])
    if first["state"] == "cached":
        return "the uploaded file is no longer in the cache (found by stowage fsck)"
    names = ", ".join(r["key"].removeprefix(prefix) for r in missing)
    return f"missing from the store: {names} (found by stowage fsck)"


async def _best_effort(aw: Awaitable[Any], what: str) -> None:
    """After commit: the worker's sweep re-finds deliveries and cache leftovers Redis lost."""
    try:
        await aw
    except Exception as exc:
        log.warning("fsck: could not %s: %s (the worker's sweep will)", what, exc)
