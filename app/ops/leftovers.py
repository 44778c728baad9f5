"""Leftovers of writers that died: temp files on the filesystem, unfinished multipart uploads
on S3. Keys never name them, so neither the attachments nor fsck's key scan see them; a crash
mid-upload or mid-promotion would otherwise leak up to a whole file each time, for good.

Removed by the worker (``Leftovers.sweep``, once older than STOWAGE_LEFTOVER_GRACE) and
reported and removed by ``stowage fsck``.
"""

from __future__ import annotations

import logging

import asyncpg

from app import db
from app.storage import Leftover, Storage

log = logging.getLogger(__name__)


async def in_use(conn: asyncpg.Connection) -> frozenset[str]:
    """Handles that look like leftovers but are not: the S3 multipart uploads of tus
    uploads in progress, which may wait hours for their next PATCH."""
    rows = await conn.fetch("SELECT s3_upload_id FROM tus_uploads WHERE s3_upload_id IS NOT NULL")
    return frozenset(r["s3_upload_id"] for r in rows)


class Leftovers:
    """The leftovers of both storages, found and removed."""

    def __init__(self, *, pool: asyncpg.Pool, cache: Storage, store: Storage) -> None:
        self.pool = pool
        self.storages = [("cache", cache), ("store", store)]

    async def find(self, older_than: float) -> list[tuple[str, Leftover]]:
        """(storage name, leftover) of both storages; each one once, also when the two storages
        share a root or a bucket."""
        async with self.pool.acquire() as conn:
            keep = await in_use(conn)
        seen: set[str] = set()
        found = []
        for name, storage in self.storages:
            async for leftover in storage.list_leftovers(older_than, keep):
                if leftover.ref not in seen:
                    seen.add(leftover.ref)
                    found.append((name, leftover))
        return found

    async def remove(self, name: str, leftover: Leftover) -> None:
        await dict(self.storages)[name].remove_leftover(leftover)

    async def sweep(self, older_than: float) -> list[Leftover]:
        """Remove every leftover older than `older_than` seconds; returns them. One worker at a
        time (an advisory lock): the others skip."""
        async with self.pool.acquire() as conn:
            if not await db.try_advisory_lock(conn, "leftovers"):
                return []
            try:
                found = await self.find(older_than)
                for name, leftover in found:
                    await self.remove(name, leftover)
                    log.info("removed leftover %s of %s (%s bytes, %.0f s old)", leftover.name,
                             name, leftover.size if leftover.size is not None else "?",
                             leftover.age_s)
            finally:
                await db.advisory_unlock(conn, "leftovers")
        return [leftover for _, leftover in found]
