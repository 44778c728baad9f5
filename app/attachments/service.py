"""The attachment lifecycle: atomic promotion, replacement in slots, deletion, expiry, sweep
(uploads come in through app.uploads.intake, which records them here).

Free of FastAPI and arq: the API and the worker share one Attachments, built at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from app import activity
from app.attachments import keys, work
from app.attachments import repository as repo
from app.attachments import variants_repository as variants_repo
from app.attachments.events import emit_attachment
from app.attachments.scanning import Scanner, Unscannable, Verdict
from app.errors import (
    AttachmentNotFound,
    InsufficientStorage,
    InvalidState,
    ScannerUnavailable,
    StorageMisconfigured,
    StowageError,
)
from app.failpoints import failpoint
from app.media.derivatives import ImageProcessingError
from app.media.previews import MediaLimits, kind_of
from app.media.render import preview
from app.observability import metrics
from app.pagination import Page, page_of
from app.storage import Storage, StorageObjectNotFound, one_chunk

if TYPE_CHECKING:
    from app.attachments.links import Links
    from app.attachments.watch import StateWatcher
    from app.jobs import JobQueue
    from app.profiles import Profiles
    from app.webhooks.service import Webhooks

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """Processing can never succeed for this file: the attachment becomes ``failed``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail





async def _remove(storage: Storage, keys_written: list[str]) -> None:
    """What an aborted or failed job wrote: it belongs to nobody."""
    for key in keys_written:
        await storage.delete(key)



# A storage that cannot take the work (full, read-only, not writable): not the file's fault,
# so the attachment is not failed for it, and not an outage to retry in seconds either.
# clamd not answering is the same kind of problem: the file waits (never stored unscanned)
# and is offered again, without using up its attempts.
STORAGE_PROBLEMS = (InsufficientStorage, StorageMisconfigured, ScannerUnavailable)



async def _blocked(conn: asyncpg.Connection, att_id: UUID, kind: str, error: StowageError,
                   storage: Storage, written: list[str]) -> None:
    """Undo what this run wrote and say in the attachment's activity why it could not go on.
    The attachment stays as it is (an upload stays safe in the cache) and the caller raises
    on; the sweep offers the work again later, so it completes once an operator made room."""
    with contextlib.suppress(Exception):  # a read-only store cannot be cleaned either: fsck
        await _remove(storage, written)
    # the problem's detail, not str(): the timeline is the API client's too, and the server's
    # paths are for its operators (the worker's log line has them)
    await activity.record(conn, att_id, kind, {
        "code": getattr(error, "code", error.slug), "errno": getattr(error, "errno_name", None),
        "detail": error.detail,
    })



@dataclass
class SweepReport:
    expired: list[UUID] = field(default_factory=list)
    promotions: list[UUID] = field(default_factory=list)
    rescans: list[UUID] = field(default_factory=list)
    destroys: list[UUID] = field(default_factory=list)
    cache_purges: list[UUID] = field(default_factory=list)
    deliveries: list[UUID] = field(default_factory=list)
    presigns_expired: int = 0
    tus_expired: int = 0
    apps_removed: list[UUID] = field(default_factory=list)


class Attachments:
    """The lifecycle of attachments: what the API asks for, and the worker's jobs on them."""

    def __init__(self, *, pool: asyncpg.Pool, cache: Storage, store: Storage, jobs: JobQueue,
                 profiles: Profiles, links: Links, watcher: StateWatcher, webhooks: Webhooks,
                 stale_job_after: float, scanner: Scanner | None = None,
                 quarantine: Storage | None = None,
                 preview_limits: MediaLimits | None = None) -> None:
        self.pool = pool
        self.cache = cache
        self.store = store
        self.jobs = jobs
        self.profiles = profiles
        self.links = links
        self.watcher = watcher
        self.webhooks = webhooks
        # how long queued work may go unseen before the sweep takes it for lost
        self.stale_job_after = stale_job_after
        self.scanner = scanner or Scanner(None)
        # infected files go there (None: they are removed)
        self.quarantine = quarantine
        # bounds on previews of PDFs and videos (STOWAGE_PREVIEW_*)
        self.preview_limits = preview_limits or MediaLimits()

    async def get_public(self, att_id: UUID) -> asyncpg.Record | None:
        """The attachment when a public profile's: its links need no key and no signature."""
        if not self.links.public_profiles:
            return None
        async with self.pool.acquire() as conn:
            row = await repo.get(conn, att_id)
        if row is None or row["profile"] not in self.links.public_profiles:
            return None
        return row

    async def get_by_link(self, att_id: UUID, token: str,
                          derivative: str | None = None, version: int | None = None
                          ) -> asyncpg.Record:
        """The attachment behind a signed download link (no API key involved)."""
        self.links.verify(token, att_id, derivative, version)
        async with self.pool.acquire() as conn:
            row = await repo.get(conn, att_id)
        if row is None:
            raise AttachmentNotFound(f"no attachment {att_id}")
        return row

    async def get(self, app_id: UUID, att_id: UUID) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            row = await repo.get_for_app(conn, app_id, att_id)
        if row is None:
            raise AttachmentNotFound(f"no attachment {att_id}")
        return row

    async def moved(self, row: asyncpg.Record) -> asyncpg.Record | None:
        """The attachment anew if it changed since ``row`` was read, else None: a file that is
        gone under a download was usually moved (promotion purged the cached copy, a reprocess
        replaced the derivatives), and the row now says where it is."""
        async with self.pool.acquire() as conn:
            fresh = await repo.get(conn, row["id"])
        if fresh is None or fresh["generation"] == row["generation"]:
            return None
        return fresh

    async def wait_for_change(self, app_id: UUID, att_id: UUID, wait: float
                              ) -> asyncpg.Record:
        """The attachment, once it is no longer `cached` or after `wait` seconds (long-poll).

        Holds no pooled connection while waiting: one LISTEN connection serves every waiter.
        """
        row = await self.get(app_id, att_id)
        if wait <= 0 or row["state"] != "cached":
            return row
        await self.watcher.start()
        with self.watcher.subscribe(att_id) as changed:
            row = await self.get(app_id, att_id)  # it may have changed before we subscribed
            if row["state"] != "cached":
                return row
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed, wait)
        return await self.get(app_id, att_id)

    async def list_attachments(self, app_id: UUID, *, state: str | None = None,
                               record_type: str | None = None, record_id: str | None = None,
                               record_name: str | None = None, before: UUID | None = None,
                               limit: int = 50) -> Page:
        async with self.pool.acquire() as conn:
            rows = await repo.list_for_app(
                conn, app_id, state=state, record_type=record_type, record_id=record_id,
                record_name=record_name, before=before, limit=limit + 1,
            )
        return page_of(rows, limit)

    async def request_promotion(self, app_id: UUID, att_id: UUID) -> asyncpg.Record:
        """Ask for promotion of a two-phase upload; harmless when already asked or stored."""
        await self.get(app_id, att_id)  # tenant check
        async with self.pool.acquire() as conn:
            row = await repo.request_promotion(conn, att_id)
        if row["state"] in ("failed", "deleted"):
            raise InvalidState(f"attachment {att_id} is {row['state']}", state=row["state"])
        if row["state"] == "cached":
            await self.jobs.promote(row["id"], row["generation"])
        return row

    async def delete(self, app_id: UUID, att_id: UUID) -> asyncpg.Record:
        """Mark deleted at once; the files go in the background. Deleting twice is fine."""
        await self.get(app_id, att_id)
        deliveries: list[UUID] = []
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                row = await repo.mark_deleted(conn, att_id)
                if row is not None:
                    deliveries = await emit_attachment(conn, "attachment.deleted", row,
                                                       self.links)
            row = row or await repo.get(conn, att_id)
        await self.webhooks.dispatch(deliveries)
        await self.jobs.destroy(att_id)
        return row

    @contextlib.asynccontextmanager
    async def _attachment_lock(self, att_id: UUID):
        """One worker job at a time per attachment, held on a connection the job then uses."""
        async with self.pool.acquire() as conn:
            await repo.lock_attachment(conn, att_id)
            try:
                yield conn
            finally:
                await repo.unlock_attachment(conn, att_id)

    async def promote(self, att_id: UUID) -> str:
        """Atomic promotion (Shrine's atomic_promote, for a service). Returns what happened."""
        async with self._attachment_lock(att_id) as conn:
            row = await repo.get(conn, att_id)
            if row is None or row["state"] != "cached" or row["promote_requested_at"] is None:
                return "skipped"
            await activity.record(conn, att_id, "promotion.started",
                                  {"generation": row["generation"]})
            cached_key = row["key"]
            store_key = keys.store_key(row["app_id"], att_id, row["mime_type"])
            written = [store_key]
            scan = None
            try:
                if self.profiles.get_or_default(row["profile"]).scan:
                    # before any byte of it reaches the store
                    verdict = await self.scanner.scan(self.cache, cached_key)
                    if not verdict.clean:
                        return await self._infected(conn, row, verdict)
                    scan = verdict.metadata
                await self.store.copy_from(self.cache, cached_key, store_key,
                                           content_type=row["mime_type"])
                derivatives, facts = await self._build_derivatives(row, self.cache, cached_key,
                                                                   written)
            except StorageObjectNotFound:
                return await self._fail(conn, row, PermanentError(
                    "file_missing", "the uploaded file is no longer in the cache"))
            except (ImageProcessingError, Unscannable) as e:
                return await self._fail(conn, row, PermanentError(e.code, e.detail))
            except STORAGE_PROBLEMS as e:
                await _blocked(conn, att_id, "promotion.blocked", e, self.store, written)
                raise
            await failpoint("promote.after_copy")
            async with conn.transaction():
                stored, replaced, deliveries = await self._store_in_slot(
                    conn, row, store_key, derivatives, scan, facts)
            if stored is None:
                # replaced or deleted meanwhile: what this run wrote belongs to nobody
                await activity.record(conn, att_id, "promotion.aborted",
                                      {"reason": "replaced or deleted while it was promoted"})
                await _remove(self.store, written)
                await self.webhooks.dispatch(deliveries)
                for old in replaced:
                    await self.jobs.destroy(old["id"])
                return "aborted"
        metrics.PROMOTION_LAG.observe((stored["stored_at"] - stored["created_at"]).total_seconds())
        await self.webhooks.dispatch(deliveries)
        for old in replaced:
            await self.jobs.destroy(old["id"])
        await self.purge_cache(att_id)
        return "stored"

    async def _store_in_slot(self, conn: asyncpg.Connection, row: asyncpg.Record,
                             store_key: str, derivatives: dict[str, Any],
                             scan: dict[str, Any] | None = None,
                             facts: dict[str, Any] | None = None
                             ) -> tuple[asyncpg.Record | None, list[asyncpg.Record], list[UUID]]:
        """The compare-and-set of a promotion, and the slot's replacement in the same
        transaction: (the stored row or None, the attachments it replaced, deliveries).

        Of a slot's uploads the one uploaded last wins: it replaces every earlier one when it is
        stored, and an earlier one finding it stored already is replaced itself instead."""
        att_id, deliveries = row["id"], []
        if row["record_type"] is not None:
            await repo.lock_slot(conn, row["app_id"], row["record_type"], row["record_id"],
                                 row["record_name"])
            newer = await repo.newer_stored_in_slot(conn, row)
            if newer is not None:
                lost = await repo.mark_deleted(conn, att_id, {
                    "code": "replaced", "detail": f"replaced by {newer['id']}"})
                if lost is not None:
                    await activity.record(conn, att_id, "replaced", {"by": str(newer["id"])})
                    deliveries = await emit_attachment(conn, "attachment.deleted", lost, self.links)
                    return None, [lost], deliveries
                return None, [], []
        replaced: list[asyncpg.Record] = []
        if row["record_type"] is not None:
            # the slot's current attachment goes before this one is stored (one stored per slot),
            # so first make sure this one will be: locked, and still the upload it was
            if not await repo.lock_if_cached(conn, att_id, row["key"]):
                return None, [], []
            replaced = await repo.replace_older_in_slot(conn, row)
            for old in replaced:
                await activity.record(conn, old["id"], "replaced", {"by": str(att_id)})
                deliveries += await emit_attachment(conn, "attachment.deleted", old, self.links)
        stored = await repo.mark_stored(conn, att_id, row["key"], store_key, derivatives, scan,
                                        facts)
        if stored is None:
            return None, [], []
        deliveries += await emit_attachment(conn, "attachment.stored", stored, self.links)
        return stored, replaced, deliveries

    async def _build_derivatives(self, row: asyncpg.Record, source: Storage, key: str,
                                 written: list[str]
                                 ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Render the profile's derivatives into the store; every key written is appended to
        `written` as it is written, so an aborted run knows what to remove. Also returns the
        facts for the attachment's metadata (PDF pages, durations, codecs, thumbhash: see
        app.media.previews), which every profile gets.

        The keys carry the row's generation: a re-run of this job overwrites its own files, and a
        reprocess never overwrites the set that is live until its swap commits.
        """
        profile = self.profiles.get_or_default(row["profile"])
        kind = kind_of(row["mime_type"])
        if not profile.derivatives and (
                kind == "other" or (row["size"] or 0) > self.preview_limits.extras_max_size):
            return {}, {}  # nothing to promise, and no facts worth copying a large file out
        with metrics.timed(metrics.DERIVATIVE_SECONDS):
            made = await preview(source, key, row["mime_type"], profile.derivatives,
                                 profile.max_pixels, self.preview_limits)
        rendered = made.derivatives
        out = {}
        for name, r in rendered.items():
            dkey = keys.derivative_key(row["app_id"], row["id"], f"g{row['generation']}/{name}",
                                       r.ext)
            written.append(dkey)
            await self.store.write(dkey, one_chunk(r.data), content_type=r.mime_type)
            out[name] = {"mime_type": r.mime_type, "size": r.size, "width": r.width,
                         "height": r.height, "key": dkey}
        return out, made.metadata

    async def request_reprocess(self, app_id: UUID, att_id: UUID) -> asyncpg.Record:
        row = await self.get(app_id, att_id)
        if row["state"] != "stored":
            raise InvalidState(f"attachment {att_id} is {row['state']}; only stored attachments"
                               " can be reprocessed", state=row["state"])
        await self.jobs.reprocess(att_id, row["generation"])
        async with self.pool.acquire() as conn:
            await activity.record(conn, att_id, "reprocess.requested",
                                  {"generation": row["generation"]})
        return row

    async def reprocess(self, att_id: UUID) -> str:
        """Rebuild derivatives from the stored original (after a profile changed), swapping the
        whole set in one UPDATE; the old files go only after that commits."""
        async with self._attachment_lock(att_id) as conn:
            row = await repo.get(conn, att_id)
            if row is None or row["state"] != "stored":
                return "skipped"
            written: list[str] = []
            try:
                derivatives, facts = await self._build_derivatives(row, self.store, row["key"],
                                                                   written)
            except ImageProcessingError as e:
                log.warning("reprocess %s: %s (%s); keeping the current derivatives", att_id,
                            e.code, e.detail)
                await activity.record(conn, att_id, "reprocess.failed",
                                      {"code": e.code, "detail": e.detail})
                await _remove(self.store, written)
                return "failed"
            except STORAGE_PROBLEMS as e:
                await _blocked(conn, att_id, "reprocess.blocked", e, self.store, written)
                raise
            async with conn.transaction():
                swapped = await repo.swap_derivatives(conn, att_id, row["generation"], derivatives,
                                                      facts)
                if swapped is not None:
                    await activity.record(conn, att_id, "reprocessed",
                                          {"derivatives": sorted(derivatives)})
                    # clients that keep derivative links from webhooks learn the new ones
                    deliveries = await emit_attachment(conn, "attachment.updated", swapped,
                                                       self.links)
            if swapped is None:
                await activity.record(conn, att_id, "reprocess.aborted",
                                      {"reason": "changed while it was reprocessed"})
                await _remove(self.store, written)
                return "aborted"
        await self.webhooks.dispatch(deliveries)
        for old in (row["derivatives"] or {}).values():
            if old.get("key") not in written:
                await self.store.delete(old["key"])
        # image variants were rendered from the old generation's files: rendered anew
        await self.store.delete_prefix(keys.variants_prefix(row["app_id"], att_id,
                                                            row["generation"]))
        async with self.pool.acquire() as conn:
            await variants_repo.forget_older(conn, att_id, swapped["generation"])
        return "reprocessed"

    async def _fail(self, conn: asyncpg.Connection, row: asyncpg.Record,
                    error: PermanentError, scan: dict[str, Any] | None = None) -> str:
        async with conn.transaction():
            failed = await repo.mark_failed(conn, row["id"], row["key"],
                                            {"code": error.code, "detail": error.detail}, scan)
            if failed is not None:
                deliveries = await emit_attachment(conn, "attachment.failed", failed,
                                                   self.links)
        if failed is None:
            return "aborted"
        await self.webhooks.dispatch(deliveries)
        await self.store.delete_prefix(keys.prefix(row["app_id"], row["id"]))
        await self.jobs.purge_cache(row["id"])
        return "failed"

    async def _quarantine(self, source: Storage, file_keys: list[str]) -> None:
        """Copies kept apart for an operator (STOWAGE_QUARANTINE_URL), under the same keys,
        before the files are removed; nothing when no quarantine is set."""
        if self.quarantine is None:
            return
        for key in file_keys:
            # independent: the quarantined copy shares nothing with what is removed next
            await self.quarantine.copy_from(source, key, key, independent=True)

    async def _infected(self, conn: asyncpg.Connection, row: asyncpg.Record,
                        verdict: Verdict) -> str:
        """An upload the scanner found infected: quarantined, failed (`infected`, the
        signature's name), and removed from the cache; never a byte of it in the store."""
        await self._quarantine(self.cache, [row["key"]])
        await activity.record(conn, row["id"], "scan.infected",
                              {"signature": verdict.signature})
        return await self._fail(conn, row, PermanentError("infected", verdict.signature or "?"),
                                verdict.metadata)

    async def request_rescan(self, app_id: UUID, att_id: UUID) -> asyncpg.Record:
        """Scan a stored file again (after new signatures): the request is kept on the row
        until the worker has done it."""
        row = await self.get(app_id, att_id)
        if not self.scanner.configured:
            raise InvalidState("this service has no malware scanner (STOWAGE_CLAMD_URL)")
        async with self.pool.acquire() as conn:
            asked = await repo.request_rescan(conn, att_id)
            if asked is None:
                raise InvalidState(f"attachment {att_id} is {row['state']}; only stored"
                                   " attachments can be rescanned", state=row["state"])
            await activity.record(conn, att_id, "rescan.requested",
                                  {"generation": asked["generation"]})
        await self.jobs.rescan(att_id, asked["generation"])
        return asked

    async def rescan(self, att_id: UUID) -> str:
        """Scan the stored original again: clean → its metadata.scan renewed; infected → the
        original and its derivatives quarantined and removed, the attachment failed."""
        async with self._attachment_lock(att_id) as conn:
            row = await repo.get(conn, att_id)
            if row is None:
                return "skipped"
            if row["state"] != "stored":
                await repo.rescanned(conn, att_id, row["generation"], None)
                return "skipped"
            try:
                verdict = await self.scanner.scan(self.store, row["key"])
            except Unscannable as e:
                await activity.record(conn, att_id, "rescan.failed",
                                      {"code": e.code, "detail": e.detail})
                await repo.rescanned(conn, att_id, row["generation"], None)
                return "failed"
            except ScannerUnavailable as e:
                await _blocked(conn, att_id, "rescan.blocked", e, self.store, [])
                raise
            if verdict.clean:
                await repo.rescanned(conn, att_id, row["generation"], verdict.metadata)
                await activity.record(conn, att_id, "rescanned", {"result": "clean"})
                return "clean"
            files = [row["key"], *(d["key"] for d in (row["derivatives"] or {}).values())]
            await self._quarantine(self.store, files)
            async with conn.transaction():
                failed = await repo.mark_infected_stored(
                    conn, att_id, row["generation"],
                    {"code": "infected", "detail": verdict.signature or "?"}, verdict.metadata)
                if failed is None:  # changed meanwhile (deleted, reprocessed): next time
                    return "aborted"
                # its image variants go with the files below: their rows (and the count on
                # the attachment, which the event shows) go now
                await variants_repo.forget(conn, att_id)
                failed = await repo.get(conn, att_id)
                await activity.record(conn, att_id, "scan.infected",
                                      {"signature": verdict.signature})
                deliveries = await emit_attachment(conn, "attachment.failed", failed,
                                                   self.links)
        await self.webhooks.dispatch(deliveries)
        await self.store.delete_prefix(keys.prefix(row["app_id"], att_id))
        return "infected"

    async def give_up(self, attempt: work.Attempt) -> str:
        """Work that used up its attempts: a promotion fails the attachment (event
        attachment.failed, files removed as for any failure), a reprocess leaves the stored
        attachment as it is and says so in its timeline."""
        code, detail = work.give_up_error(attempt)
        async with self._attachment_lock(attempt.attachment_id) as conn:
            row = await repo.get(conn, attempt.attachment_id)
            outcome = "skipped"
            if row is not None and attempt.kind == work.PROMOTE and row["state"] == "cached":
                outcome = await self._fail(conn, row, PermanentError(code, detail))
            elif row is not None and attempt.kind == work.REPROCESS:
                await activity.record(conn, row["id"], "reprocess.failed",
                                      {"code": code, "detail": detail})
                outcome = "failed"
            await work.done(conn, attempt.kind, attempt.attachment_id)
        return outcome

    async def purge_cache(self, att_id: UUID) -> str:
        """Remove the cached copy of a stored (or failed) attachment; idempotent."""
        async with self.pool.acquire() as conn:
            row = await repo.get(conn, att_id)
            if row is None or row["state"] not in ("stored", "failed") or row["cache_purged_at"]:
                return "skipped"
            await self.cache.delete(keys.cache_key(row["app_id"], att_id))
            await repo.mark_cache_purged(conn, att_id)
        return "purged"

    async def destroy(self, att_id: UUID) -> str:
        """Remove every file of a deleted attachment from both storages; idempotent."""
        async with self._attachment_lock(att_id) as conn:
            row = await repo.get(conn, att_id)
            if row is None or row["state"] != "deleted":
                return "skipped"
            prefix = keys.prefix(row["app_id"], att_id)
            await self.cache.delete_prefix(prefix)
            await self.store.delete_prefix(prefix)  # the image variants too
            await variants_repo.forget(conn, att_id)
            await repo.mark_purged(conn, att_id)
        return "destroyed"

    async def sweep(self) -> SweepReport | None:
        """Find from Postgres the attachment work Redis may have lost and enqueue it again; expire
        stale cached uploads. None when another worker is sweeping right now."""
        report = SweepReport()
        grace = self.stale_job_after
        async with self.pool.acquire() as conn, conn.transaction():
            if not await repo.try_lock_sweep(conn):
                return None
            expired = await repo.expire_cached(conn)
            report.expired = [r["id"] for r in expired]
            for row in expired:
                report.deliveries += await emit_attachment(conn, "attachment.deleted", row,
                                                           self.links)
            promotions = await repo.stale_promotions(conn, grace)
            rescans = await repo.stale_rescans(conn, grace)
            report.destroys = [r["id"] for r in await repo.unpurged_deleted(conn, grace)]
            report.cache_purges = [r["id"] for r in await repo.cache_leftovers(conn, grace)]
        for r in promotions:
            # False when the job is still queued or running: not lost, nothing to report
            if await self.jobs.promote(r["id"], r["generation"]):
                report.promotions.append(r["id"])
        for r in rescans:
            if await self.jobs.rescan(r["id"], r["generation"]):
                report.rescans.append(r["id"])
        for att_id in report.expired + report.destroys:
            await self.jobs.destroy(att_id)
        for att_id in report.cache_purges:
            await self.jobs.purge_cache(att_id)
        await self.webhooks.dispatch(report.deliveries)
        return report
