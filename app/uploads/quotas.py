"""Storage quotas: the bytes of an app's live files (originals, derivatives, variants) stay
within its quota_bytes, exactly, however many uploads run at once, on any API instance.

An upload is checked twice, as the contract says: before its first byte (its declared size:
Content-Length, tus Upload-Length, a presign's size) and when its size is known, in the
transaction that records it. Both take the app's row lock (only for apps with a quota), so
checks of one app run one at a time and each sees what the previous ones committed: no two
uploads can both pass the last byte of the quota.

The first check reserves the declared bytes (quota_reservations), so concurrent uploads count
each other while their bytes stream; the recording transaction deletes the reservation as it
inserts the attachment (whose bytes the triggers of migration 0021 count). A refused upload
releases it; one whose process was killed leaves it until it expires (the sweep deletes
it). The recording check does not depend on reservations, so an expired one cannot let an
upload exceed the quota.

Derivatives and variants are made after the upload was accepted: they count, and may take an
app over its quota, after which its uploads are refused until it deletes files."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from app import counts
from app.errors import StowageError
from app.ids import uuid7
from app.uploads import quotas_repository as repo


class QuotaExceeded(StowageError):
    """The app's live files and uploads in progress would exceed its storage quota."""

    status, slug, title = 403, "quota-exceeded", "Storage quota exceeded"


def exceeded(quota: int, held: int, size: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"this upload of {size} bytes would take the app over its storage quota of {quota}"
        f" bytes ({held} held by its files and uploads in progress); delete attachments or"
        " ask for a larger quota", quota_bytes=quota, used_bytes=held)


class Quotas:
    def __init__(self, *, pool: asyncpg.Pool, reservation_ttl: float) -> None:
        self.pool = pool
        self.reservation_ttl = reservation_ttl

    async def reserve(self, app_id: UUID, size: int | None, *, reservation: UUID | None = None,
                      ttl: float | None = None) -> UUID | None:
        """Before an upload's first byte: hold ``size`` bytes (None: unknown, then only
        whether the app is under its quota at all). Returns the reservation (None: the app
        has no quota, or nothing was reserved); 403 quota-exceeded when over."""
        async with self.pool.acquire() as conn, conn.transaction():
            quota = await repo.lock_quota(conn, app_id)
            if quota is None:
                return None
            held = await repo.held(conn, app_id, reservation)
            wanted = size or 0
            if held + wanted > quota or (size is None and held >= quota):
                raise exceeded(quota, held, wanted)
            if not wanted:
                return None
            reservation = reservation or uuid7()
            await repo.insert_reservation(conn, reservation, app_id, wanted,
                                          ttl or self.reservation_ttl)
            return reservation

    async def check(self, app_id: UUID, size: int) -> None:
        """A check that holds nothing (a presigned upload, checked again when registered)."""
        async with self.pool.acquire() as conn:
            quota = await repo.quota_of(conn, app_id)
            if quota is None:
                return
            held = await repo.held(conn, app_id)
        if held + size > quota:
            raise exceeded(quota, held, size)

    async def admit(self, conn: asyncpg.Connection, app_id: UUID, size: int,
                    reservation: UUID | None) -> None:
        """In the transaction that records an upload of ``size`` bytes: the second check,
        under the app's row lock; the reservation is dropped with the commit."""
        quota = await repo.lock_quota(conn, app_id)
        if quota is not None:
            held = await repo.held(conn, app_id, reservation)
            if held + size > quota:
                raise exceeded(quota, held, size)
        if reservation is not None:
            await repo.delete_reservation(conn, reservation)

    async def release(self, reservation: UUID | None) -> None:
        """An upload refused or abandoned: its bytes are free again (shielded: a cancelled
        request still releases)."""
        if reservation is None:
            return

        async def drop() -> None:
            async with self.pool.acquire() as conn:
                await repo.delete_reservation(conn, reservation)

        await asyncio.shield(drop())

    async def has_quota(self, app_id: UUID) -> bool:
        async with self.pool.acquire() as conn:
            return await repo.quota_of(conn, app_id) is not None

    async def sweep(self) -> int:
        """Reservations whose uploads died with their process."""
        async with self.pool.acquire() as conn:
            return await repo.delete_expired(conn)


@dataclass(frozen=True)
class Usage:
    bytes: int
    attachments: int  # live: cached or stored
    quota_bytes: int | None
    rate_limit: int | None

    def as_json(self) -> dict[str, int | None]:
        return {"bytes": self.bytes, "attachments": self.attachments,
                "quota_bytes": self.quota_bytes, "rate_limit": self.rate_limit}


LIVE_STATES = ("cached", "stored")


async def usage_by_app(conn: asyncpg.Connection) -> dict[UUID, tuple[int, int]]:
    """{app id: (bytes, live attachments)} for every app with either, from the row counts
    (O(apps), not O(attachments))."""
    out: dict[UUID, tuple[int, int]] = {}
    for (app_id, _), n in (await counts.by_scope(conn, "bytes")).items():
        out[app_id] = (n, out.get(app_id, (0, 0))[1])
    for (app_id, state), n in (await counts.by_scope(conn, "attachments")).items():
        if state in LIVE_STATES:
            b, a = out.get(app_id, (0, 0))
            out[app_id] = (b, a + n)
    return out


async def usage_of(pool: asyncpg.Pool, app_id: UUID) -> Usage:
    async with pool.acquire() as conn:
        limits = await repo.limits_of(conn, app_id)
        live = await repo.live_bytes(conn, app_id)
        attachments = await repo.live_attachments(conn, app_id, list(LIVE_STATES))
    quota, rate = limits if limits is not None else (None, None)
    return Usage(bytes=live, attachments=attachments, quota_bytes=quota, rate_limit=rate)
