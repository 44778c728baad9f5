"""Upload tokens: short-lived credentials a back-end mints with its API key and hands to a
browser, for one upload (or a few). A token fixes the profile, the record slot, the metadata
and the largest size; the request may choose only the filename and whether to promote.

Accepted by the upload endpoints (multipart, raw, tus creation and that upload's PATCH/HEAD)
and for GET of the attachments it made; stored hashed (SHA-256: 256 random bits, a slow hash
adds nothing); dead when expired or when the key that minted it is revoked. Each upload takes
one use in a single UPDATE ... WHERE uses_left > 0, so concurrent uploads never take more uses
than the token has; a refused upload gives its use back."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from app.auth.scopes import UPLOAD_TOKEN_PREFIX
from app.errors import InvalidInput, Unauthorized
from app.ids import uuid7
from app.uploads import tokens_repository as repo
from app.uploads.options import RecordSlot, UploadOptions, make_options

if TYPE_CHECKING:
    from app.config import Settings
    from app.profiles import Profiles

TOKEN_PREFIX = UPLOAD_TOKEN_PREFIX
MAX_EXPIRES_IN = 3600
DEFAULT_EXPIRES_IN = 600
MAX_USES = 1000


@dataclass(frozen=True)
class UploadToken:
    """A live token, as its bearer presents it."""

    id: UUID
    app_id: UUID
    profile: str
    record: tuple[str, str, str] | None
    metadata: dict[str, Any]
    max_size: int | None
    expires_at: datetime
    # its app's limits (app.uploads.quotas, rate limits), as the request found them
    quota_bytes: int | None = None
    rate_limit: int | None = None

    @classmethod
    def of(cls, row: asyncpg.Record) -> UploadToken:
        record = ((row["record_type"], row["record_id"], row["record_name"])
                  if row["record_type"] is not None else None)
        return cls(id=row["id"], app_id=row["app_id"], profile=row["profile"], record=record,
                   metadata=row["metadata"], max_size=row["max_size"],
                   expires_at=row["expires_at"], quota_bytes=row.get("quota_bytes"),
                   rate_limit=row.get("rate_limit"))

    def size_limit(self, limit: int) -> int:
        return min(limit, self.max_size) if self.max_size is not None else limit

    def fix(self, options: UploadOptions) -> UploadOptions:
        """``options`` with what the token fixes; a request that asks for something else
        (another profile, slot or metadata) is refused (422), never silently changed."""
        mine = self.record
        asked = ((options.record.type, options.record.id, options.record.name)
                 if options.record else None)
        for name, wanted, fixed in (
                ("profile", options.profile, self.profile),
                ("record", asked, mine),
                ("metadata", options.client_metadata or None, self.metadata or None)):
            if wanted is not None and wanted != fixed:
                raise InvalidInput(f"the upload token fixes {name}; the request may not set"
                                   " it to something else", field=name)
        record = RecordSlot(*mine) if mine is not None else None
        return dataclasses.replace(options, profile=self.profile, record=record,
                                   client_metadata=dict(self.metadata), upload_token=self.id)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class UploadTokens:
    """Minting, presenting and using upload tokens."""

    def __init__(self, *, pool: asyncpg.Pool, profiles: Profiles, settings: Settings) -> None:
        self.pool = pool
        self.profiles = profiles
        self.settings = settings

    async def mint(self, app_id: UUID, key_id: UUID, *, profile: str | None,
                   record_type: str | None, record_id: str | None, record_name: str | None,
                   metadata: dict[str, Any] | None, max_size: int | None, uses: int,
                   expires_in: int) -> tuple[str, datetime]:
        """A new token: (the token, when it expires). Its options are checked now, as an
        upload's would be (422), so a token never fixes what no upload could use."""
        options = make_options(profile=profile, record_type=record_type, record_id=record_id,
                               record_name=record_name, client_metadata=metadata)
        prof = self.profiles.get(options.profile)  # an unknown profile: 422
        if max_size is not None and max_size < 0:
            raise InvalidInput("max_size is a number of bytes, 0 or more", field="max_size")
        if not 1 <= uses <= MAX_USES:
            raise InvalidInput(f"uses is 1 to {MAX_USES}", field="uses")
        if not 1 <= expires_in <= MAX_EXPIRES_IN:
            raise InvalidInput(f"expires_in is 1 to {MAX_EXPIRES_IN} seconds",
                               field="expires_in")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = ((options.record.type, options.record.id, options.record.name)
                  if options.record else None)
        async with self.pool.acquire() as conn:
            row = await repo.insert(
                conn, id=uuid7(), app_id=app_id, key_id=key_id, token_hash=hash_token(token),
                profile=prof.name, record=record, metadata=options.client_metadata,
                max_size=max_size, uses=uses, expires_in=expires_in)
        return token, row["expires_at"]

    async def authenticate(self, credential: str) -> UploadToken:
        async with self.pool.acquire() as conn:
            row = await repo.live_by_hash(conn, hash_token(credential))
        if row is None:
            raise Unauthorized("unknown, expired or revoked upload token")
        return UploadToken.of(row)

    async def take_use(self, token: UploadToken) -> None:
        """One use of the token for a new upload; 401 when it has none left."""
        async with self.pool.acquire() as conn:
            left = await repo.take_use(conn, token.id)
        if left is None:
            raise Unauthorized("the upload token is used up, expired or revoked")

    async def give_back(self, token: UploadToken) -> None:
        """An upload that was refused did not use the token."""
        async with self.pool.acquire() as conn:
            await repo.give_use_back(conn, token.id)

    async def sweep(self) -> int:
        """Remove tokens expired for a day (kept that long to tell 'expired' in logs)."""
        async with self.pool.acquire() as conn:
            return await repo.delete_expired(conn, 24 * 3600)
