"""Idempotency-Key, the domain part: claiming a key for a first request, keeping its answer,
and telling a repeat what to do (replay it, 409 while the first runs, 422 for another request).

A key is taken with one INSERT … ON CONFLICT under the (app, key) primary key, so of two
requests at once on any API instances exactly one runs. The one that runs holds the key
under a lease it renews while it works (an upload may take long); a process killed in the
middle stops renewing, and once the lease is over a repeat takes the key and runs instead of
meeting 409 forever. Only answers below 400 are kept: a request that failed is forgotten and
may be tried again. Keys live ``ttl_s`` (a day), then the sweep removes them.

"The same request": the endpoint and a fingerprint of what the endpoint makes of the request
(for an upload: profile, filename, record slot, size and sha256 of the bytes; for a JSON
body: the body as validated). An upload's fingerprint is only known once its bytes are read,
so it is stored when the first request ends, and a repeat reads (and discards) its bytes to
compare."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from app.errors import IdempotencyConflict, IdempotencyMismatch
from app.idempotency import repository as repo
from app.renewal import renewing

EXPIRE_BATCH = 10_000


def fingerprint(*parts: Any) -> str:
    """A digest of the parts (JSON-encoded, so None, numbers and text stay distinct)."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


@dataclass
class Answer:
    """The kept answer of the first request."""
    status: int
    headers: dict[str, str]
    body: bytes
    fingerprint: str


@dataclass
class Begun:
    """What a request with a key does: run (it holds the key: ``owner``), or replay
    ``answer`` (once its fingerprint, if it had none yet, is checked against the answer's)."""
    owner: UUID | None = None
    answer: Answer | None = None


class Idempotency:
    def __init__(self, *, pool: asyncpg.Pool, ttl_s: float, lease_s: float) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.lease_s = lease_s

    async def begin(self, app_id: UUID, key: str, endpoint: str,
                    fingerprint: str | None) -> Begun:
        """Claim the key, or say how a repeat is answered. ``fingerprint`` None: not known
        before the request's bytes are read (an upload)."""
        owner = uuid.uuid4()
        async with self.pool.acquire() as conn:
            for _ in range(3):  # the row may go (released, expired) between claim and read
                if await repo.claim(conn, app_id, key, endpoint, fingerprint, owner,
                                    self.lease_s, self.ttl_s):
                    return Begun(owner=owner)
                row = await repo.get(conn, app_id, key)
                if row is None:
                    continue
                if row["endpoint"] != endpoint or (
                        fingerprint is not None and row["fingerprint"] is not None
                        and row["fingerprint"] != fingerprint):
                    raise IdempotencyMismatch(
                        "this Idempotency-Key was used for a different request; use a new key"
                        " for a new request")
                if row["status"] is None:
                    raise IdempotencyConflict(
                        "the first request with this Idempotency-Key is still running; try"
                        " again once it has answered")
                return Begun(answer=Answer(row["status"], dict(row["headers"] or {}),
                                           bytes(row["body"]), row["fingerprint"]))
        raise IdempotencyConflict("this Idempotency-Key is changing hands; try again")

    @staticmethod
    def check_same(answer: Answer, fingerprint: str) -> None:
        if fingerprint != answer.fingerprint:
            raise IdempotencyMismatch("this Idempotency-Key was used for a different request"
                                      " (other content or options); use a new key")

    @contextlib.asynccontextmanager
    async def holding(self, app_id: UUID, key: str, owner: UUID) -> AsyncIterator[None]:
        """Renew the lease while the first request runs."""

        async def renew() -> None:
            async with self.pool.acquire() as conn:
                await repo.renew(conn, app_id, key, owner, self.lease_s)

        async with renewing(renew, self.lease_s / 3):
            yield

    async def keep(self, app_id: UUID, key: str, owner: UUID, fingerprint: str,
                   status: int, headers: dict[str, str], body: bytes) -> None:
        async with self.pool.acquire() as conn:
            await repo.answer(conn, app_id, key, owner, fingerprint, status, headers, body,
                              self.ttl_s)

    async def release(self, app_id: UUID, key: str, owner: UUID) -> None:
        async with self.pool.acquire() as conn:
            await repo.release(conn, app_id, key, owner)

    async def expire(self) -> int:
        """Remove the keys past their day, in batches (the sweep)."""
        removed = 0
        while True:
            async with self.pool.acquire() as conn:
                n = await repo.expire(conn, EXPIRE_BATCH)
            removed += n
            if n < EXPIRE_BATCH:
                return removed
