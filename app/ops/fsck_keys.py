"""fsck's key grammar and ownership: what a key in either storage names (an attachment, a tus
upload, a presign, a doctor probe), and whether PostgreSQL says someone owns it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from app.ops import fsck_repository as repo

# Verdicts of the ownership check of one key.
LIVE = "live"  # a file an attachment serves right now
PENDING = "pending"  # owned by work not finished yet (promotion, purge, tus, presign)
ORPHAN = "orphan"

# Why an object is an orphan (the `reason` of an example).
NO_OWNER = "no_owner"  # no attachment, presign or tus upload with this id
WRONG_APP = "wrong_app"  # the id exists, but in another app
DELETED = "deleted"  # the attachment is deleted and its files were purged
CACHE_PURGED = "cache_purged"  # the cached copy of a stored/failed attachment, purged
FAILED = "failed"  # a store file of a failed attachment
UNREFERENCED = "unreferenced"  # not the original nor a current derivative (old generation)
UNEXPECTED = "unexpected_key"  # a cache key Stowage never makes inside an attachment prefix
DOCTOR_PROBE = "doctor_probe"  # a `stowage doctor` probe left behind


# --- keys --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ParsedKey:
    """`{app_id}/{owner_id}/{rest}`: owner_id is an attachment's or a tus upload's id."""

    app_id: UUID
    owner_id: UUID
    rest: str


def parse_key(key: str) -> ParsedKey | None:
    parts = key.split("/", 2)
    if len(parts) != 3 or not parts[2]:
        return None
    app, owner, rest = parts
    try:
        app_id, owner_id = UUID(app), UUID(owner)
    except ValueError:
        return None
    if str(app_id) != app or str(owner_id) != owner:  # keys only ever hold the canonical form
        return None
    return ParsedKey(app_id, owner_id, rest)


def uuid7_time(value: UUID) -> float | None:
    """Creation time (epoch seconds) of a UUIDv7, None for other versions."""
    if value.version != 7:
        return None
    return (value.int >> 80) / 1000


# --- ownership ---------------------------------------------------------------------------------

@dataclass
class Owners:
    """The rows that may own the keys of one batch."""

    attachments: dict[UUID, Any] = field(default_factory=dict)
    presigns: dict[UUID, Any] = field(default_factory=dict)  # by attachment id
    tus: dict[UUID, Any] = field(default_factory=dict)  # by tus upload id
    tus_completing: dict[UUID, Any] = field(default_factory=dict)  # by attachment id


Verdict = tuple[str, str | None]  # (LIVE | PENDING | ORPHAN, reason)


def classify_cache(key: str, p: ParsedKey, owners: Owners) -> Verdict:
    tus = owners.tus.get(p.owner_id)
    if tus is not None and tus["app_id"] == p.app_id:
        return PENDING, "tus upload"  # its bytes and tails; removed with it
    att = owners.attachments.get(p.owner_id)
    if p.rest != "upload":
        # e.g. the bytes of a tus upload whose row is gone
        return ORPHAN, (UNEXPECTED if att is not None else NO_OWNER)
    if att is not None:
        if att["app_id"] != p.app_id:
            return ORPHAN, WRONG_APP
        state = att["state"]
        if state == "cached":
            if att["storage"] == "cache" and att["key"] == key:
                return LIVE, None
            return ORPHAN, UNREFERENCED
        if state in ("stored", "failed"):
            return (PENDING, "cache purge") if att["cache_purged_at"] is None else (
                ORPHAN, CACHE_PURGED)
        return (PENDING, "destroy") if att["purged_at"] is None else (ORPHAN, DELETED)
    presign = owners.presigns.get(p.owner_id)
    if presign is not None and presign["app_id"] == p.app_id and presign["key"] == key:
        return PENDING, "presigned upload"
    completing = owners.tus_completing.get(p.owner_id)
    if completing is not None and completing["app_id"] == p.app_id:
        return PENDING, "tus completion"
    return ORPHAN, NO_OWNER


def classify_store(key: str, p: ParsedKey, owners: Owners) -> Verdict:
    att = owners.attachments.get(p.owner_id)
    if att is None:
        return ORPHAN, NO_OWNER
    if att["app_id"] != p.app_id:
        return ORPHAN, WRONG_APP
    state = att["state"]
    if state == "cached":
        return PENDING, "promotion"  # a promotion writes here before the row says stored
    if state == "stored":
        if att["storage"] == "store" and att["key"] == key:
            return LIVE, None
        if key in derivative_keys(att):
            return LIVE, None
        if p.rest.startswith(f"variants/g{att['generation']}/"):
            # an image variant of the current generation (GET .../image); its row may not
            # be written yet (a render in flight), and one the row lost is re-rendered
            return LIVE, None
        return ORPHAN, UNREFERENCED
    if state == "failed":
        return ORPHAN, FAILED
    return (PENDING, "destroy") if att["purged_at"] is None else (ORPHAN, DELETED)


def derivative_keys(att: Any) -> set[str]:
    out = set()
    for d in (att["derivatives"] or {}).values():
        if isinstance(d, dict) and isinstance(d.get("key"), str):
            out.add(d["key"])
    return out


_CLASSIFIERS: dict[str, Callable[[str, ParsedKey, Owners], Verdict]] = {
    "cache": classify_cache, "store": classify_store,
}


def classify(areas: tuple[str, ...], key: str, p: ParsedKey, owners: Owners
             ) -> tuple[Verdict, list[str]]:
    """The verdict over every storage the key may belong to (two when cache and store share
    one location), and the storages in which it is a live file."""
    verdicts = [(area, _CLASSIFIERS[area](key, p, owners)) for area in areas]
    live = [area for area, (kind, _) in verdicts if kind == LIVE]
    if live:
        return (LIVE, None), live
    for _, v in verdicts:
        if v[0] == PENDING:
            return v, []
    reasons = [v[1] for _, v in verdicts]
    return (ORPHAN, next((r for r in reasons if r != UNEXPECTED), reasons[0])), []


async def load_owners(conn: asyncpg.Connection, parsed: Iterable[ParsedKey],
                      tables: set[str]) -> Owners:
    parsed = list(parsed)
    ids = sorted({p.owner_id for p in parsed})
    owners = Owners()
    owners.attachments = {r["id"]: r for r in await repo.attachments_by_id(conn, ids)}
    rowless = sorted({p.owner_id for p in parsed
                      if p.rest == "upload" and p.owner_id not in owners.attachments})
    if "presigned_uploads" in tables:
        owners.presigns = {r["attachment_id"]: r
                           for r in await repo.presigns_by_attachment_id(conn, rowless)}
    if "tus_uploads" in tables:
        tus_ids = [i for i in ids if i not in owners.attachments]
        owners.tus = {r["id"]: r for r in await repo.tus_by_id(conn, tus_ids)}
        owners.tus_completing = {r["attachment_id"]: r
                                 for r in await repo.tus_completing_for(conn, rowless)}
    return owners
