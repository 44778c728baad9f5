"""What tests make over and over, made one way: uploads through the API (checked 201), an
upload taken to `stored` by the worker, a stray object in a storage, an attachment's row."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import asyncpg
import httpx

from app.attachments.links import Links
from tests.conftest import AppKey, run_worker


async def upload(client: httpx.AsyncClient, tenant: AppKey, data: bytes = b"payload",
                 filename: str = "f.txt", **fields: Any) -> dict[str, Any]:
    """A multipart upload with these form fields; its JSON (201 asserted)."""
    r = await client.post("/v1/attachments", headers=tenant.headers, data=fields,
                          files={"file": (filename, data)})
    assert r.status_code == 201, r.text
    return r.json()


async def stored(client: httpx.AsyncClient, tenant: AppKey, res: Any, data: bytes = b"payload",
                 filename: str = "f.txt", **fields: Any) -> dict[str, Any]:
    """An upload the worker has promoted; its JSON once `stored` (asserted)."""
    att = await upload(client, tenant, data, filename, **fields)
    await run_worker(res)
    r = await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    assert r.json()["state"] == "stored", r.text
    return r.json()


async def put(storage: Any, key: str, data: bytes = b"stray") -> str:
    """An object written straight into a storage, behind Stowage's back."""

    async def once() -> Any:
        yield data

    await storage.write(key, once())
    return key


async def row(res: Any, att_id: str | uuid.UUID) -> asyncpg.Record | None:
    """The attachment's row as Postgres has it (every column)."""
    async with res.pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM attachments WHERE id = $1",
                                   att_id if isinstance(att_id, uuid.UUID) else uuid.UUID(att_id))


async def age(res: Any, seconds: float, *, backoffs: bool = False) -> None:
    """Every attachment's clocks `seconds` earlier (updated, deleted, promotion asked): what
    waiting that long does to what the sweep sees past its grace (stale_job_after), without
    the wait. The backoffs of failed attempts (attachment_work) too if `backoffs`; by default
    they are left alone, for tests that wait them out on their own."""
    async with res.pool.acquire() as conn:
        await conn.execute(
            "UPDATE attachments SET updated_at = updated_at - make_interval(secs => $1),"
            " deleted_at = deleted_at - make_interval(secs => $1),"
            " promote_requested_at = promote_requested_at - make_interval(secs => $1)",
            float(seconds))
        if backoffs:
            await conn.execute(
                "UPDATE attachment_work SET next_attempt_at = next_attempt_at"
                " - make_interval(secs => $1)", float(seconds))


class Clock:
    """A wall clock that can be moved forward: links signed and checked on it expire when
    the test says, not after a real wait."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def on_clock(links: Links, clock: Clock) -> Links:
    """These links (same keys, TTLs, public profiles), read off `clock`."""
    moved = copy.copy(links)
    moved.clock = clock
    return moved


async def age_webhooks(res: Any, seconds: float) -> None:
    """Every delivery's next attempt, every endpoint's failing streak and old secret's end
    `seconds` earlier: what waiting that long does to the sweep's grace for due deliveries,
    webhook_disable_after and webhook_secret_overlap, without the wait."""
    async with res.pool.acquire() as conn:
        await conn.execute(
            "UPDATE webhook_deliveries SET next_attempt_at = next_attempt_at"
            " - make_interval(secs => $1)", float(seconds))
        await conn.execute(
            "UPDATE webhook_endpoints SET failing_since = failing_since"
            " - make_interval(secs => $1), previous_secret_until = previous_secret_until"
            " - make_interval(secs => $1)", float(seconds))
