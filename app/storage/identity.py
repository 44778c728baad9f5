"""The identity marker of a storage root: which folder or bucket this is.

A process started in another folder (a relative ``file://`` path), or pointed at another
bucket, sees a different storage under the same URL; without a way to tell, it took every
file for missing and "repaired" the database accordingly. Each root therefore holds one small
object, written once, naming a random id; the database records the id it first saw per role
(app.storage_identity) and refuses any other.

The key lives under ``_stowage/``, which no attachment key can start with (those begin with
an app's UUID) and which `stowage fsck` skips: it is never reported nor removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from .base import Storage, StorageObjectNotFound, one_chunk

log = logging.getLogger(__name__)

RESERVED_PREFIX = "_stowage/"
MARKER_KEY = RESERVED_PREFIX + "identity.json"
# the marker is a few hundred bytes: anything longer is not one
_MAX_MARKER_BYTES = 4096
# keys that are not data: this module's, and `stowage doctor`'s probes
_NOT_DATA_SEGMENTS = frozenset({"_stowage"})
_NOT_DATA_PREFIXES = ("_doctor/",)


class MarkerUnreadable(ValueError):
    """The marker key holds something that is not a marker."""


@dataclass(frozen=True, slots=True)
class StorageIdentity:
    id: uuid.UUID
    role: str  # the role it was made for (a root shared by cache and store has one marker)
    created_at: str


def is_reserved(key: str) -> bool:
    """Keys of the storage's own bookkeeping, never an attachment's: never report or remove."""
    return key.startswith(RESERVED_PREFIX)


async def read_marker(storage: Storage) -> StorageIdentity | None:
    """The storage's identity, or None when it has no marker (or the root does not exist)."""
    try:
        raw = await storage.read_head(MARKER_KEY, _MAX_MARKER_BYTES)
    except StorageObjectNotFound:
        return None
    try:
        data = json.loads(raw)
        return StorageIdentity(uuid.UUID(data["id"]), str(data.get("role", "")),
                               str(data.get("created_at", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MarkerUnreadable(
            f"{storage.location}: {MARKER_KEY} is not a Stowage identity marker ({exc});"
            " restore it from a backup of this storage"
        ) from None


async def write_marker(storage: Storage, role: str) -> StorageIdentity:
    """Give the storage a new identity and return the one it holds afterwards.

    Call only when `read_marker` found none, under the lock that app.storage_identity takes:
    writers sharing one database never race. The read-back answers for the rest: a writer
    outside that lock (another database on the same storage) that wrote in between wins, and
    its id is the one returned.
    """
    mine = StorageIdentity(uuid.uuid4(), role, datetime.now(UTC).isoformat())
    body = json.dumps({
        "id": str(mine.id),
        "role": mine.role,
        "created_at": mine.created_at,
        "about": "Identifies this storage to Stowage, which records the id in its database"
                 " and refuses to run against any other storage. Keep it with the files;"
                 " never copy it into another storage.",
    }, indent=2).encode() + b"\n"
    await storage.write(MARKER_KEY, one_chunk(body), content_type="application/json")
    found = await read_marker(storage)
    if found is None:  # written, then gone: someone is removing files as we write
        raise MarkerUnreadable(f"{storage.location}: {MARKER_KEY} vanished right after it was"
                               " written")
    if found.id != mine.id:
        log.warning("%s: another process gave this storage its identity at the same moment;"
                    " using theirs (%s)", storage.location, found.id)
    return found


async def has_data(storage: Storage) -> bool:
    """Whether the storage holds any object besides markers and doctor probes. Stops at the
    first one: a single listing request on S3."""
    keys = storage.list_keys()
    async with contextlib.aclosing(keys):
        async for key in keys:
            if _is_data(key):
                return True
    return False


def _is_data(key: str) -> bool:
    # also the markers of storages nested inside this one (cache inside store, ...)
    return not (_NOT_DATA_SEGMENTS.intersection(key.split("/"))
                or key.startswith(_NOT_DATA_PREFIXES))

