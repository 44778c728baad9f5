"""Apps and API keys: creation, listing, revocation, and resolving a bearer key to its app."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from app.auth import repository as repo
from app.auth.scopes import SCOPES
from app.errors import AppNotFound, InvalidInput, InvalidState, NotFound, Unauthorized
from app.ids import uuid7

KEY_PREFIX = "stw_"


@dataclass(frozen=True)
class NewKey:
    app_id: UUID
    key_id: UUID
    api_key: str
    scopes: tuple[str, ...] = SCOPES


@dataclass(frozen=True)
class Principal:
    """Who a request is: an API key (its scopes), or an upload token (``token``, whose
    scopes are those of uploading and reading what it made)."""

    app_id: UUID
    key_id: UUID | None
    scopes: tuple[str, ...]
    token: Any = None  # app.uploads.tokens.UploadToken
    # the app's limits as the request found them (None: none)
    quota_bytes: int | None = None
    rate_limit: int | None = None


def hash_key(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or any(ord(c) < 32 for c in name):
        raise InvalidInput("an app name is 1 to 100 printable characters", field="name")
    return name


async def create_app(pool: asyncpg.Pool, name: str) -> NewKey:
    name = _check_name(name)
    async with pool.acquire() as conn, conn.transaction():
        app_id = uuid7()
        try:
            await repo.insert_app(conn, app_id, name)
        except asyncpg.UniqueViolationError:
            raise InvalidState(f"an app named {name!r} exists already; names tell apps"
                               " apart, choose another") from None
        return await _create_key(conn, app_id)


async def rename_app(pool: asyncpg.Pool, app_id: UUID, name: str) -> asyncpg.Record:
    name = _check_name(name)
    async with pool.acquire() as conn:
        try:
            row = await repo.rename_app(conn, app_id, name)
        except asyncpg.UniqueViolationError:
            raise InvalidState(f"an app named {name!r} exists already") from None
    if row is None:
        raise AppNotFound(f"no app {app_id}")
    return row


# what Postgres' bigint and integer hold
MAX_QUOTA_BYTES = 2**63 - 1
MAX_RATE_LIMIT = 2**31 - 1


async def update_limits(pool: asyncpg.Pool, app_id: UUID, *,
                        quota_bytes: int | str | None = "keep",
                        rate_limit: int | str = "keep") -> asyncpg.Record:
    """Set an app's storage quota (bytes; None: no quota) and rate limit (uploads per
    window; 0: none); "keep" leaves one as it is."""
    set_quota, set_rate = quota_bytes != "keep", rate_limit != "keep"
    if set_quota and quota_bytes is not None and not (
            isinstance(quota_bytes, int) and 0 <= quota_bytes <= MAX_QUOTA_BYTES):
        raise InvalidInput(f"the quota is 0 to {MAX_QUOTA_BYTES} bytes, or none",
                           field="quota_bytes")
    if set_rate and not (isinstance(rate_limit, int) and 0 <= rate_limit <= MAX_RATE_LIMIT):
        raise InvalidInput(f"the rate limit is 0 (none) to {MAX_RATE_LIMIT} uploads a minute",
                           field="rate_limit")
    if not (set_quota or set_rate):
        raise InvalidInput("nothing to update: give --quota-bytes or --rate-limit")
    async with pool.acquire() as conn, conn.transaction():
        row = await repo.update_limits(
            conn, app_id, set_quota=set_quota,
            quota_bytes=quota_bytes if set_quota else None, set_rate=set_rate,
            rate_limit=(rate_limit or None) if set_rate else None)
    if row is None:
        raise AppNotFound(f"no app {app_id}")
    return row


async def create_key(pool: asyncpg.Pool, app_id: UUID,
                     scopes: tuple[str, ...] | None = None) -> NewKey:
    """A new key of the app, with ``scopes`` (None: all of them)."""
    async with pool.acquire() as conn, conn.transaction():
        if await repo.get_app(conn, app_id) is None:
            raise AppNotFound(f"no app {app_id}")
        return await _create_key(conn, app_id, scopes or SCOPES)


async def _create_key(conn: asyncpg.Connection, app_id: UUID,
                      scopes: tuple[str, ...] = SCOPES) -> NewKey:
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid7()
    await repo.insert_key(conn, key_id, app_id, hash_key(api_key), api_key[:8], list(scopes))
    return NewKey(app_id=app_id, key_id=key_id, api_key=api_key, scopes=scopes)


async def delete_app(pool: asyncpg.Pool, app_id: UUID) -> asyncpg.Record:
    async with pool.acquire() as conn, conn.transaction():
        row = await repo.mark_app_deleted(conn, app_id)
    if row is None:
        raise AppNotFound(f"no app {app_id}")
    return row


async def sweep_deleted_apps(pool: asyncpg.Pool) -> list[UUID]:
    """For the worker's sweep: attachments a deleted app still gained (a tus upload that was
    completing) are deleted too; apps whose files are all gone are removed."""
    async with pool.acquire() as conn:
        await repo.delete_attachments_of_deleted_apps(conn)
        return await repo.remove_emptied_apps(conn)


async def list_apps(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await repo.list_apps(conn)


async def list_keys(pool: asyncpg.Pool, app_id: UUID) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        if await repo.get_app(conn, app_id) is None:
            raise AppNotFound(f"no app {app_id}")
        return await repo.list_keys(conn, app_id)


async def revoke_key(pool: asyncpg.Pool, key_id: UUID) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await repo.revoke_key(conn, key_id)
    if row is None:
        raise NotFound(f"no key {key_id}")
    return row


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Authorization: Bearer <api key> is required")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization must be 'Bearer <api key>'")
    return token


class ApiKeys:
    """The API's key check: the app of a request's key, looked up by its hash on every
    request, so a key revoked (by any process, the CLI included) is refused by the very next
    request. An in-memory cache emptied by LISTEN/NOTIFY was tried (issue 19) and removed: a
    request sent right after the revocation committed could still beat the notice."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def authenticate(self, authorization: str | None) -> UUID:
        return (await self.principal(authorization)).app_id

    async def principal(self, authorization: str | None) -> Principal:
        """The key of the request, with its scopes."""
        async with self.pool.acquire() as conn:
            row = await repo.key_for_hash(conn, hash_key(bearer_token(authorization)))
        if row is None:
            raise Unauthorized("unknown or revoked API key")
        return Principal(app_id=row["app_id"], key_id=row["id"], scopes=tuple(row["scopes"]),
                         quota_bytes=row["quota_bytes"], rate_limit=row["rate_limit"])
