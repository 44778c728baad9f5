"""What tests make over and over, made one way: uploads through the API (checked 201), an
upload taken to `stored` by the worker, a stray object in a storage, an attachment's row."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

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
