"""Refuse a storage that is not the one this database describes.

The database records, per role (cache, store), the id in the marker of the storage it first
saw (app.storage.identity). Every process that works on the files (`serve`, `worker`, `dev`,
`fsck`: all through app.bootstrap.build_services) checks it before anything else, and
`stowage doctor` reports it:

- marker and record agree: go on (one small read per storage, one query);
- they differ, or a database that has a record meets a storage without a marker (empty: the
  wrong folder, an empty bucket; or files without a marker): refuse, naming both, and
  create nothing;
- nothing recorded yet: record the marker's id; a storage without a marker gets one first,
  whether it is new (empty) or an existing one from before identities (adopted, and logged).
  The exception: an empty storage for a database whose attachments have files in it (the
  first start after an upgrade, from the wrong folder) is refused too.

First uses run under one advisory lock, so processes starting together agree on one id.
Free of FastAPI and arq; SQL is in repository.py.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.config import ConfigError, Settings
from app.storage import (
    MARKER_KEY,
    MarkerUnreadable,
    Storage,
    StorageIdentity,
    has_data,
    open_s3_client,
    read_marker,
    storage_from_url,
    write_marker,
)
from app.storage_identity import repository as repo

log = logging.getLogger(__name__)

ROLES = ("cache", "store")
_VARIABLE = {"cache": "STOWAGE_CACHE_URL", "store": "STOWAGE_STORE_URL"}


@dataclass(frozen=True)
class Target:
    """A storage to check, in the role the settings give it."""

    role: str
    storage: Storage
    url: str  # as configured: what the operator recognises

    @property
    def where(self) -> str:
        location = self.storage.location
        plain = self.url.removeprefix("file://")
        return self.url if location in (self.url, plain) else f"{self.url} ({location})"


class Action(enum.StrEnum):
    OK = "ok"  # the recorded storage
    RECORD = "record"  # has a marker, nothing recorded yet
    NEW = "new"  # empty and nothing recorded: a new setup
    ADOPT = "adopt"  # files but no marker, nothing recorded: from before identities
    REFUSE = "refuse"


@dataclass(frozen=True)
class Verdict:
    target: Target
    action: Action
    marker: StorageIdentity | None
    recorded: Any  # the database's row (storage_id, location, recorded_at), or None
    reason: str = ""  # why it is refused: the whole explanation

    @property
    def moved(self) -> bool:
        return (self.action is Action.OK
                and self.recorded["location"] != self.target.storage.location)

    def summary(self) -> str:
        """One line for `stowage doctor`."""
        if self.action is Action.REFUSE:
            return self.reason
        if self.action is Action.OK:
            return f"storage {self.marker.id if self.marker else '?'}, as recorded"
        if self.action is Action.RECORD:
            return (f"storage {self.marker.id if self.marker else '?'}, not recorded yet: the"
                    " next `stowage serve`, `worker` or `fsck` records it")
        if self.action is Action.NEW:
            return ("empty, no identity yet: the next `stowage serve`, `worker` or `fsck`"
                    " gives it one and records it")
        return ("holds files but no identity marker (from before identities): the next"
                " `stowage serve`, `worker` or `fsck` adopts and records it")


class StorageIdentityRefused(ConfigError):
    """A storage is not the one the database recorded; nothing was written anywhere."""

    def __init__(self, verdicts: Sequence[Verdict]) -> None:
        self.verdicts = list(verdicts)
        super().__init__("\n".join(v.reason for v in self.verdicts))


async def judge(conn: asyncpg.Connection, target: Target, recorded: Any) -> Verdict:
    """What to do with one storage, given the database's record of its role (or None).
    Reads only."""
    try:
        marker = await read_marker(target.storage)
    except MarkerUnreadable as exc:
        return _refuse(target, None, recorded, f"{target.role} storage {target.where}: {exc}.")
    if recorded is not None:
        if marker is not None and marker.id == recorded["storage_id"]:
            return Verdict(target, Action.OK, marker, recorded)
        if marker is not None:
            found = f"it is storage {marker.id}"
        elif not await target.storage.exists():
            found = "it does not exist (and was not created)"
        elif await has_data(target.storage):
            found = f"it holds files but no identity marker ({MARKER_KEY})"
        else:
            found = "it is empty: no files, no identity marker"
        return _refuse(target, marker, recorded,
                       f"{target.role} storage {target.where} is not this database's"
                       f" {target.role} storage: {found}, but the database recorded storage"
                       f" {recorded['storage_id']}, last seen at {recorded['location']}.")
    if marker is not None:
        return Verdict(target, Action.RECORD, marker, None)
    if await has_data(target.storage):
        return Verdict(target, Action.ADOPT, None, None)
    if await repo.has_live_files(conn, target.role):
        return _refuse(target, None, None,
                       f"{target.role} storage {target.where} is empty (no files, no identity"
                       f" marker), but this database has attachments whose files are in its"
                       f" {target.role} storage. (No {target.role} storage was recorded yet:"
                       " the database is from before storage identities.)")
    return Verdict(target, Action.NEW, None, None)


def _refuse(target: Target, marker: StorageIdentity | None, recorded: Any, what: str
            ) -> Verdict:
    return Verdict(target, Action.REFUSE, marker, recorded,
                   f"{what}\n  {_advice(target, recorded)}")


def _advice(target: Target, recorded: Any) -> str:
    role, variable = target.role, _VARIABLE.get(target.role, "its URL")
    text = f"Nothing was changed. Point {variable} at {'that' if recorded else 'the'} storage"
    if target.url.startswith("file://") and not target.url.startswith("file:///"):
        text += (f" ({target.url} is relative: it depends on the folder stowage is started"
                 " from; start stowage from the usual folder, or use an absolute file:/// URL"
                 + (f" such as file://{recorded['location']}"
                    if recorded is not None and recorded["location"].startswith("/") else "")
                 + ")")
    return (text + f". If this really is the {role} storage now (moved or restored without its"
            f" marker, or the old one is lost for good), record it with `stowage storage adopt"
            f" {role}`, then run `stowage fsck`.")


async def verify(pool: asyncpg.Pool, targets: Sequence[Target]) -> list[Verdict]:
    """Check the storages against the database; record first uses. Raises
    StorageIdentityRefused (a ConfigError) without writing anything when one is refused."""
    async with pool.acquire() as conn:
        rows = await _recorded(conn)
        verdicts = [await judge(conn, t, rows.get(t.role)) for t in targets]
        _raise_refused(verdicts)
        if all(v.action is Action.OK and not v.moved for v in verdicts):
            return verdicts
        async with conn.transaction():
            await repo.lock(conn)
            # again under the lock: another process may have recorded meanwhile
            rows = await repo.recorded(conn)
            verdicts = [await judge(conn, t, rows.get(t.role)) for t in targets]
            _raise_refused(verdicts)
            for v in verdicts:
                await _apply(conn, v)
        return verdicts


def _raise_refused(verdicts: Sequence[Verdict]) -> None:
    refused = [v for v in verdicts if v.action is Action.REFUSE]
    if refused:
        for v in refused:
            log.error("storage refused: %s", v.reason)
        raise StorageIdentityRefused(refused)


async def _apply(conn: asyncpg.Connection, v: Verdict) -> None:
    t = v.target
    location = t.storage.location
    if v.action is Action.OK:
        if v.moved:
            await repo.moved(conn, t.role, v.recorded["storage_id"], location)
            log.info("%s storage %s moved: from %s to %s", t.role, v.recorded["storage_id"],
                     v.recorded["location"], location)
        return
    # a root shared by cache and store got its marker from the other role a moment ago
    marker = v.marker or await read_marker(t.storage) or await write_marker(t.storage, t.role)
    await repo.record(conn, t.role, marker.id, location)
    row = (await repo.recorded(conn))[t.role]
    if row["storage_id"] != marker.id:  # recorded by a process outside our lock
        _raise_refused([_refuse(t, marker, row,
                                f"{t.role} storage {t.where} is storage {marker.id}, but the"
                                f" database recorded storage {row['storage_id']} at"
                                f" {row['location']} at the same moment.")])
    if v.action is Action.ADOPT:
        log.warning("%s storage %s: adopted existing files without an identity marker (from"
                    " before storage identities): gave it identity %s (%s) and recorded it",
                    t.role, t.where, marker.id, MARKER_KEY)
    elif v.action is Action.NEW:
        log.info("%s storage %s: new, gave it identity %s and recorded it", t.role, t.where,
                 marker.id)
    else:
        log.info("%s storage %s: recorded its identity %s", t.role, t.where, marker.id)


async def adopt(pool: asyncpg.Pool, target: Target) -> tuple[Any, StorageIdentity]:
    """The operator says: this storage is the role's now. Gives it a marker if it has none
    and records it in place of what was recorded; returns (the old record or None, its
    identity)."""
    async with pool.acquire() as conn:
        await _recorded(conn)  # the table exists
        async with conn.transaction():
            await repo.lock(conn)
            old = (await repo.recorded(conn)).get(target.role)
            marker = await read_marker(target.storage) or await write_marker(
                target.storage, target.role)
            await repo.replace(conn, target.role, marker.id, target.storage.location)
    log.warning("%s storage %s adopted by the operator: identity %s recorded%s", target.role,
                target.where, marker.id,
                f" in place of {old['storage_id']} (last seen at {old['location']})"
                if old is not None and old["storage_id"] != marker.id else "")
    return old, marker


async def _recorded(conn: asyncpg.Connection) -> dict[str, Any]:
    try:
        return await repo.recorded(conn)
    except asyncpg.UndefinedTableError:
        raise ConfigError("the database has no storage_identities table yet: run `stowage"
                          " migrate`") from None


async def open_targets(stack: contextlib.AsyncExitStack, settings: Settings,
                       roles: Sequence[str] = ROLES) -> list[Target]:
    """The configured storages of these roles, for commands that need no other resources.
    An S3 client, if needed, lives as long as `stack`."""
    urls = {"cache": settings.cache_url, "store": settings.store_url}
    s3 = None
    if any(settings.storage_url(r).needs_s3_client for r in roles):
        s3 = await open_s3_client(stack, endpoint_url=settings.s3_endpoint_url,
                                  region=settings.s3_region)
    return [Target(r, storage_from_url(settings.storage_url(r), s3_client=s3), urls[r])
            for r in roles]
