"""The floor of a small upload with Stowage's guarantees, as the least Python can do it
(issue 19): a bare ASGI app, no framework, run by the same uvicorn the API uses.

Per POST it does only what the guarantees require, the way `stowage serve` does them:
- the API key checked against Postgres on every request (a revoked key refused at once);
- the body streamed into a temp file with its sha256, fsynced, renamed into place, the
  directory fsynced (the file is on disk before the 201);
- the row and its event inserted in one transaction, committed before the 201;
- a 201 with a small JSON body.
It skips everything else Stowage does (sniffing, profiles, limits, validation, problem
answers, middleware, logging, metrics). If this cannot reach a target, no tuning of the API
can; `small_uploads.py --targets floor,...` runs it beside the others.

Configured by environment: FLOOR_DSN (a database it may create tables in), FLOOR_DIR.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid

import asyncpg

DSN = os.environ.get("FLOOR_DSN", "postgresql://127.0.0.1:5432/postgres")
ROOT = os.environ.get("FLOOR_DIR", "/tmp/floor")
KEY = "floor-key"
SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_keys (hash text PRIMARY KEY, app_id uuid NOT NULL);
CREATE TABLE IF NOT EXISTS floor_files (id uuid PRIMARY KEY, app_id uuid NOT NULL,
    key text NOT NULL, size bigint NOT NULL, sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS floor_events (id uuid PRIMARY KEY, app_id uuid NOT NULL,
    type text NOT NULL, data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""

_pool: asyncpg.Pool | None = None


async def _setup() -> asyncpg.Pool:
    pool = await asyncpg.create_pool(DSN, min_size=2, max_size=10,
                                     server_settings={"jit": "off"})
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(42)")  # one worker creates the tables
        try:
            await conn.execute(SCHEMA)
            await conn.execute("INSERT INTO floor_keys VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               hashlib.sha256(KEY.encode()).hexdigest(), uuid.uuid4())
        finally:
            await conn.execute("SELECT pg_advisory_unlock(42)")
    os.makedirs(ROOT, exist_ok=True)
    return pool


def _write(path: str, chunks: list[bytes]) -> str:
    tmp = f"{path}.tmp"
    digest = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for c in chunks:
            digest.update(c)
            os.write(fd, c)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(ROOT, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return digest.hexdigest()


async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    global _pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _pool = await _setup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _pool is not None:
                    await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert _pool is not None
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    token = auth.removeprefix("Bearer ")
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    async with _pool.acquire() as conn:
        app_id = await conn.fetchval("SELECT app_id FROM floor_keys WHERE hash = $1",
                                     hashlib.sha256(token.encode()).hexdigest())
    if app_id is None:
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    file_id = uuid.uuid4()
    key = str(file_id)
    digest = await asyncio.to_thread(_write, os.path.join(ROOT, key), chunks)
    size = sum(map(len, chunks))
    row = {"id": key, "size": size, "sha256": digest, "state": "cached"}
    async with _pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO floor_files (id, app_id, key, size, sha256)"
                           " VALUES ($1, $2, $3, $4, $5)", file_id, app_id, key, size, digest)
        await conn.execute("INSERT INTO floor_events (id, app_id, type, data)"
                           " VALUES ($1, $2, 'attachment.cached', $3::jsonb)",
                           uuid.uuid4(), app_id, json.dumps(row))
    body = json.dumps(row).encode()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
