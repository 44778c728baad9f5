"""Storage quotas: the bytes of an app's live files (originals, derivatives, variants) stay
within its quota_bytes, exactly, however many uploads run at once, on any API instance.

An app with a quota has a row in app_quota (migration 0021): quota_bytes, used (its live
files, kept by the triggers that count bytes, in the statement that changes them) and
reserved (the bytes of its uploads in progress). An upload is checked twice, as the contract
says:

1. before its first byte, for its declared size (Content-Length, tus Upload-Length, a
   presign's size): one UPDATE app_quota SET reserved = reserved + n WHERE used + reserved +
   n <= quota_bytes, with its quota_reservations row in the same statement. The row lock
   orders concurrent uploads of the app, and Postgres re-checks the WHERE against the row
   the previous one committed: two uploads cannot both take the last bytes.
2. when its size is known, by the INSERT that records it (the trigger of migration 0021, in
   the same statement). When its reservation covers its bytes (they were checked then), the
   reservation is converted: it keeps holding them until the worker's sweep moves them into
   used, and the INSERT touches no app_quota row (uploads of one app are not serialised on
   it). Otherwise (no reservation: a body without Content-Length; a smaller one; one that
   expired) its reservation is given back, its size added to used and the row as updated
   checked, under the row's lock until the statement commits; over the quota the trigger
   raises and nothing is written.

Every increase of used or reserved happens under that row lock, and used + reserved is never
below what the app's live files and uploads in progress hold (a converted reservation holds
at least its upload's size), so no two uploads can both take the last bytes, whatever the
concurrency, on any API instance. The reservation statement commits without waiting for the
WAL flush (its lock is held for microseconds); a reservation a crash loses is harmless, as the
INSERT of an upload without one checks the quota itself.

A refused upload deletes its reservation; one whose process was killed leaves it until it
expires and the sweep deletes it (a tus upload's goes with its row). Apps without a quota have
no row: their uploads take none of these steps.

Derivatives and variants are made after the upload was accepted: they count, and may take an
app over its quota, after which its uploads are refused until it deletes files."""

from __future__ import annotations

import asyncio
import json
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


def quota_refusal(error: Exception, size: int) -> Exception:
    """The INSERT of an attachment refused by the quota check of migration 0021's trigger, as
    QuotaExceeded; any other error raised by a trigger, as it is."""
    if not str(error).startswith("stowage: quota exceeded"):
        return error
    try:
        detail = json.loads(getattr(error, "detail", None) or "{}")
        quota, held = int(detail["quota_bytes"]), int(detail["used"]) + int(detail["reserved"])
    except (ValueError, KeyError, TypeError):
        return QuotaExceeded("this upload would take the app over its storage quota")
    return exceeded(quota, held - size, size)


class Quotas:
    def __init__(self, *, pool: asyncpg.Pool, reservation_ttl: float) -> None:
        self.pool = pool
        self.reservation_ttl = reservation_ttl

    async def reserve(self, app_id: UUID, size: int | None, *, reservation: UUID | None = None,
                      ttl: float | None = None) -> UUID | None:
        """Before an upload's first byte: hold ``size`` bytes (None: unknown, then only
        whether the app is under its quota at all). Returns the reservation (None: nothing
        held: the app has no quota, or nothing was declared); 403 quota-exceeded when over."""
        reservation = reservation or uuid7()
        async with self.pool.acquire() as conn:
            if size and await repo.reserve(conn, reservation, app_id, size,
                                           ttl or self.reservation_ttl):
                return reservation
            row = await repo.standing(conn, app_id)
        if row is None:
            return None  # no quota
        held = row["used"] + row["reserved"]
        if size:
            raise exceeded(row["quota_bytes"], held, size)
        if held >= row["quota_bytes"]:
            raise exceeded(row["quota_bytes"], held, 0)
        return None

    async def check(self, app_id: UUID, size: int) -> None:
        """A check that holds nothing (a presigned upload, checked again when registered)."""
        async with self.pool.acquire() as conn:
            row = await repo.standing(conn, app_id)
        if row is not None and row["used"] + row["reserved"] + size > row["quota_bytes"]:
            raise exceeded(row["quota_bytes"], row["used"] + row["reserved"], size)

    async def release(self, reservation: UUID | None) -> None:
        """An upload refused or abandoned: its bytes are free again (shielded: a cancelled
        request still releases)."""
        if reservation is None:
            return

        async def drop() -> None:
            async with self.pool.acquire() as conn:
                await repo.delete_reservation(conn, reservation)

        await asyncio.shield(drop())

    async def hand_over(self, upload_id: UUID, att_id: UUID) -> None:
        """A completed tus upload's reservation passes to the attachment it becomes."""
        async with self.pool.acquire() as conn:
            await repo.rename_reservation(conn, upload_id, att_id)

    async def sweep(self) -> int:
        """Converted reservations folded into used; reservations whose uploads died with
        their process dropped (how many)."""
        async with self.pool.acquire() as conn:
            await repo.fold_converted(conn)
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
