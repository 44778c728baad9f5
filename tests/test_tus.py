"""tus 1.0 at /v1/tus/: the protocol through the in-process app, and whole uploads with the
tuspy client against a real uvicorn server, on filesystem and S3 (moto) cache storage."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import io
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from app.auth import service as auth
from app.bootstrap import Services
from app.main import create_app
from app.observability import metrics
from app.storage import S3Storage, file_resumable
from app.storage.s3 import part_size_for as s3_part_size_for
from app.uploads import tus, tus_protocol
from app.uploads.tus_routes import router as tus_router
from tests.conftest import (
    AppKey,
    env_for,
    files_under,
    free_port,
    is_marker,
    process,
    run_worker,
    wait_http,
)

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def tus_app(res: Services) -> FastAPI:
    """The app, with the tus router included if app/main.py does not include it yet."""
    app = create_app(res.settings, res)
    included = any(getattr(r, "original_router", None) is tus_router or
                   str(getattr(r, "path", "")).startswith("/v1/tus") for r in app.routes)
    if not included:
        app.include_router(tus_router)
    app.state.services = res  # ASGITransport does not run the lifespan
    return app


@contextlib.asynccontextmanager
async def asgi_client(res: Services, raise_app_exceptions: bool = True
                      ) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=tus_app(res), raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://stowage.test") as c:
        yield c


@contextlib.asynccontextmanager
async def live_server(res: Services, port: int) -> AsyncIterator[str]:
    """A real uvicorn serving the app on this event loop, sharing the test's resources."""
    config = uvicorn.Config(tus_app(res), host="127.0.0.1", port=port, lifespan="off",
                            log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Env:
    res: Services
    client: httpx.AsyncClient
    tenant: AppKey
    other: AppKey
    base_url: str
    cache_root: Path | None = None  # filesystem cache
    cache_bucket: str | None = None  # S3 cache
    s3: Any = None

    async def cache_objects(self) -> list[str]:
        if self.cache_bucket is None:
            assert self.cache_root is not None
            return files_under(self.cache_root)
        resp = await self.s3.list_objects_v2(Bucket=self.cache_bucket)
        return sorted(o["Key"] for o in resp.get("Contents", []) if not is_marker(o["Key"]))

    async def multipart_uploads(self) -> list[str]:
        if self.cache_bucket is None:
            return []
        resp = await self.s3.list_multipart_uploads(Bucket=self.cache_bucket)
        return [u["Key"] for u in resp.get("Uploads", [])]

    async def tus_rows(self) -> list[Any]:
        async with self.res.pool.acquire() as conn:
            return await conn.fetch("SELECT * FROM tus_uploads ORDER BY id")

    async def attachment_count(self) -> int:
        async with self.res.pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM attachments")


@pytest.fixture(params=["file", "s3"])
def backend(request) -> str:
    return request.param


# one port per backend for the session: public_url is part of the settings, and the same
# settings share one environment (conftest.env_factory)
_PORTS: dict[str, int] = {}


@pytest.fixture
async def env_factory(env_factory, s3_client):
    """An Env for a backend ("s3": an S3 cache, the store on files), with a live server on
    its port (public_url matches) when asked."""
    async with contextlib.AsyncExitStack() as stack:
        async def make(backend: str, live: bool = False, **overrides: Any) -> Env:
            port = _PORTS.setdefault(backend, free_port())
            shared = await env_factory("s3-cache" if backend == "s3" else "file",
                                       public_url=f"http://127.0.0.1:{port}", **overrides)
            res = shared.res
            client = await stack.enter_async_context(asgi_client(res))
            new = await auth.create_app(res.pool, "tus")
            other = await auth.create_app(res.pool, "other")
            if live:
                await stack.enter_async_context(live_server(res, port))
            return Env(res=res, client=client, tenant=AppKey(new.app_id, new.api_key),
                       other=AppKey(other.app_id, other.api_key), base_url=res.settings.public_url,
                       cache_root=shared.cache_root, cache_bucket=shared.cache_bucket,
                       s3=s3_client)

        yield make


@pytest.fixture
async def env(env_factory) -> Env:
    return await env_factory("file")


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def metadata(**kv: str) -> str:
    return ",".join(f"{k} {b64(v)}" for k, v in kv.items())


def path_of(location: str) -> str:
    return urlsplit(location).path


async def create(env: Env, length: int, key: AppKey | None = None, **meta: str) -> str:
    headers = {**TUS, **(key or env.tenant).headers, "Upload-Length": str(length)}
    if meta:
        headers["Upload-Metadata"] = metadata(**meta)
    r = await env.client.post("/v1/tus/", headers=headers)
    assert r.status_code == 201, r.text
    return path_of(r.headers["location"])


async def patch(env: Env, url: str, offset: int, data: Any, key: AppKey | None = None,
                **headers: str) -> httpx.Response:
    h = {**TUS, **OCTETS, **(key or env.tenant).headers, "Upload-Offset": str(offset),
         **{k.replace("_", "-"): v for k, v in headers.items()}}
    return await env.client.patch(url, headers=h, content=data)


async def head(env: Env, url: str, key: AppKey | None = None) -> httpx.Response:
    return await env.client.head(url, headers={**TUS, **(key or env.tenant).headers})


async def content_of(env: Env, att_id: str) -> bytes:
    r = await env.client.get(f"/v1/attachments/{att_id}/content", headers=env.tenant.headers)
    if r.status_code == 307:
        async with httpx.AsyncClient() as plain:
            r = await plain.get(r.headers["location"])
    assert r.status_code == 200
    return r.content


def tuspy_upload(base_url: str, key: AppKey, data: bytes, *, chunk_size: int,
                 url: str | None = None, stop_at: int | None = None,
                 meta: dict[str, str] | None = None) -> tuple[str, int, dict[str, str]]:
    """(upload URL, offset reached, headers of the last response), with the real client."""
    c = tus_client.TusClient(f"{base_url}/v1/tus/", headers=key.headers)
    uploader = c.uploader(file_stream=io.BytesIO(data), chunk_size=chunk_size, url=url,
                          metadata=meta or {"filename": "blob.bin"}, upload_checksum=True)
    uploader.upload(stop_at=stop_at)
    last = dict(uploader.request.response_headers) if uploader.request else {}
    return uploader.url, uploader.offset, last


# --- discovery and CORS --------------------------------------------------------------------------

async def test_options_discovery_needs_no_key(env):
    r = await env.client.options("/v1/tus/")
    assert r.status_code == 204
    h = r.headers
    assert h["tus-resumable"] == "1.0.0" and h["tus-version"] == "1.0.0"
    assert set(h["tus-extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "checksum", "expiration"}
    assert int(h["tus-max-size"]) == env.res.settings.max_upload_size
    assert set(h["tus-checksum-algorithm"].split(",")) == {"sha1", "sha256", "md5"}
    r = await env.client.options("/v1/tus/0193aaaa-0000-7000-8000-000000000000")
    assert r.status_code == 204 and r.headers["tus-version"] == "1.0.0"
    # CORS is off unless STOWAGE_CORS_ORIGINS says otherwise, for tus as for the rest of /v1
    assert "access-control-allow-origin" not in r.headers


async def test_cors_preflight_and_errors_with_an_origin_configured(env_factory):
    env = await env_factory("file", cors_origins="https://app.example")
    r = await env.client.options("/v1/tus/", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "tus-resumable, upload-length, upload-metadata"})
    assert r.status_code == 200
    h = r.headers
    assert h["access-control-allow-origin"] == "https://app.example"
    assert "PATCH" in h["access-control-allow-methods"]
    for name in ("Upload-Offset", "Upload-Metadata", "Tus-Resumable", "Authorization"):
        assert name in h["access-control-allow-headers"]
    # only what the server supports
    for name in ("Upload-Defer-Length", "Upload-Concat"):
        assert name not in h["access-control-allow-headers"]
    assert int(h["access-control-max-age"]) > 0
    # errors carry CORS headers too, or a browser could not read them
    r = await env.client.post("/v1/tus/", headers={**TUS, "Origin": "https://app.example",
                                                   "Upload-Length": "1"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    for name in ("Location", "Upload-Offset", "Upload-Expires", "Stowage-Attachment-Id",
                 "Tus-Checksum-Algorithm"):
        assert name in r.headers["access-control-expose-headers"]
    assert r.headers["tus-resumable"] == "1.0.0"


# --- whole uploads with the real client ----------------------------------------------------------

async def test_whole_upload_with_tuspy_becomes_a_stored_attachment(env_factory, backend):
    env = await env_factory(backend, live=True)
    # S3: 6 MiB chunks make 5 MiB parts plus a tail that the next PATCH merges
    size, chunk = (14 * MiB + 12345, 6 * MiB) if backend == "s3" else (3 * MiB + 7, MiB)
    data = os.urandom(size)
    meta = {"filename": "blob.bin", "record_type": "user", "record_id": "7",
            "record_name": "doc", "metadata": '{"k": "v"}'}
    url, offset, last = await asyncio.to_thread(tuspy_upload, env.base_url, env.tenant, data,
                                                chunk_size=chunk, meta=meta)
    assert url.startswith(f"{env.base_url}/v1/tus/")
    assert offset == size
    att_id = last["stowage-attachment-id"]
    r = await head(env, path_of(url))
    assert r.status_code == 200
    assert r.headers["stowage-attachment-id"] == att_id
    assert r.headers["upload-offset"] == r.headers["upload-length"] == str(size)
    r = await env.client.get(f"/v1/attachments/{att_id}", headers=env.tenant.headers)
    att = r.json()
    assert att["state"] == "cached" and att["size"] == size
    assert att["sha256"] == hashlib.sha256(data).hexdigest()
    assert att["filename"] == "blob.bin" and att["client_metadata"] == {"k": "v"}
    assert att["record"] == {"type": "user", "id": "7", "name": "doc"}
    # the tus bytes are gone as soon as the attachment has its own copy
    assert await env.multipart_uploads() == []
    assert [k for k in await env.cache_objects() if "/tus" in k] == []

    await run_worker(env.res)
    r = await env.client.get(f"/v1/attachments/{att_id}", headers=env.tenant.headers)
    assert r.json()["state"] == "stored"
    assert await content_of(env, att_id) == data
    assert await env.cache_objects() == []
    assert await env.multipart_uploads() == []
    assert await env.attachment_count() == 1


async def test_resume_after_interruption(env_factory, backend):
    env = await env_factory(backend, live=True)
    chunk = 6 * MiB if backend == "s3" else 2 * MiB
    size = 2 * chunk + 4 * MiB + 99
    data = os.urandom(size)
    # a first client sends two chunks and stops (the browser tab was closed)
    url, offset, _ = await asyncio.to_thread(tuspy_upload, env.base_url, env.tenant, data,
                                             chunk_size=chunk, stop_at=2 * chunk)
    assert offset == 2 * chunk
    # then a connection breaks off in the middle of a PATCH: what arrived is kept
    port = urlsplit(env.base_url).port
    sent = 3 * MiB + 5
    head_bytes = (f"PATCH {path_of(url)} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {env.tenant.api_key}\r\nTus-Resumable: 1.0.0\r\n"
                  f"Content-Type: application/offset+octet-stream\r\n"
                  f"Upload-Offset: {offset}\r\nContent-Length: {size - offset}\r\n\r\n").encode()

    def send_partial() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head_bytes + data[offset:offset + sent])

    await asyncio.to_thread(send_partial)

    async def settled() -> int:
        for _ in range(100):
            r = await head(env, path_of(url))
            rows = await env.tus_rows()
            if rows and rows[0]["lock_owner"] is None and int(r.headers["upload-offset"]) > offset:
                return int(r.headers["upload-offset"])
            await asyncio.sleep(0.1)
        raise AssertionError("the broken PATCH left no progress")

    kept = await settled()
    assert offset < kept <= offset + sent
    if backend == "file":
        tus_file = next(env.cache_root.rglob("tus"))
        assert tus_file.read_bytes() == data[:kept]  # the stored offset is the durable bytes
    # a new client with the same URL asks the server where to go on, and finishes
    url2, offset2, last = await asyncio.to_thread(tuspy_upload, env.base_url, env.tenant, data,
                                                  chunk_size=chunk, url=url)
    assert url2 == url and offset2 == size
    att_id = last["stowage-attachment-id"]
    assert (await head(env, path_of(url))).headers["stowage-attachment-id"] == att_id
    await run_worker(env.res)
    assert await content_of(env, att_id) == data
    assert await env.cache_objects() == [] and await env.multipart_uploads() == []


async def test_s3_tail_is_merged_and_parts_are_whole(env_factory):
    env = await env_factory("s3")
    size = 12 * MiB
    data = os.urandom(size)
    url = await create(env, size, filename="x.bin")
    upload_id = url.rsplit("/", 1)[1]
    r = await patch(env, url, 0, data[:6 * MiB])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(6 * MiB)
    row = (await env.tus_rows())[0]
    assert [p["Size"] for p in row["s3_parts"]] == [5 * MiB]
    assert row["tail_size"] == MiB and row["tail_key"].endswith(f"tus-tail-{6 * MiB}")
    objects = await env.cache_objects()
    assert objects == [f"{env.tenant.app_id}/{upload_id}/tus-tail-{6 * MiB}"]
    # a small PATCH only grows the tail
    r = await patch(env, url, 6 * MiB, data[6 * MiB:7 * MiB])
    assert r.status_code == 204
    row = (await env.tus_rows())[0]
    assert row["tail_size"] == 2 * MiB and len(row["s3_parts"]) == 1
    assert await env.cache_objects() == [f"{env.tenant.app_id}/{upload_id}/tus-tail-{7 * MiB}"]
    r = await patch(env, url, 7 * MiB, data[7 * MiB:])
    assert r.status_code == 204 and "stowage-attachment-id" in r.headers
    assert await env.multipart_uploads() == []
    att_id = r.headers["stowage-attachment-id"]
    assert await env.cache_objects() == [f"{env.tenant.app_id}/{att_id}/upload"]
    await run_worker(env.res)
    assert await content_of(env, att_id) == data


# --- protocol details ----------------------------------------------------------------------------

async def test_completed_uploads_are_counted_once(env):
    def count(outcome: str) -> float:
        return metrics.REGISTRY.get_sample_value(
            "stowage_uploads_total", {"mode": "tus", "outcome": outcome}) or 0.0

    ok, refused = count("ok"), count("invalid-record-slot")
    url = await create(env, 6)
    await patch(env, url, 0, b"abc")
    await patch(env, url, 3, b"def")
    assert count("ok") == ok + 1
    assert count("invalid-record-slot") == refused


async def test_creation_with_upload(env):
    data = b"hello tus" * 1000
    r = await env.client.post("/v1/tus/", content=data, headers={
        **TUS, **OCTETS, **env.tenant.headers, "Upload-Length": str(len(data)),
        "Upload-Metadata": metadata(filename="hello.txt", promote="false")})
    assert r.status_code == 201, r.text
    assert r.headers["location"].startswith(f"{env.base_url}/v1/tus/")
    assert r.headers["upload-offset"] == str(len(data))
    att_id = r.headers["stowage-attachment-id"]
    r = await env.client.get(f"/v1/attachments/{att_id}", headers=env.tenant.headers)
    assert r.json()["filename"] == "hello.txt" and r.json()["state"] == "cached"
    await run_worker(env.res)  # promote=false: it waits for an explicit promote
    r = await env.client.get(f"/v1/attachments/{att_id}", headers=env.tenant.headers)
    assert r.json()["state"] == "cached"

    # only the first part in the creation request, the rest by PATCH
    r = await env.client.post("/v1/tus", content=data[:100], headers={
        **TUS, **OCTETS, **env.tenant.headers, "Upload-Length": str(len(data))})
    assert r.status_code == 201 and r.headers["upload-offset"] == "100"
    assert "stowage-attachment-id" not in r.headers
    url = path_of(r.headers["location"])
    r = await patch(env, url, 100, data[100:])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    assert "stowage-attachment-id" in r.headers


async def test_empty_upload_is_complete_at_creation(env):
    r = await env.client.post("/v1/tus/", headers={**TUS, **env.tenant.headers,
                                                   "Upload-Length": "0"})
    assert r.status_code == 201
    att_id = r.headers["stowage-attachment-id"]
    r = await env.client.get(f"/v1/attachments/{att_id}", headers=env.tenant.headers)
    assert r.json()["size"] == 0


async def test_head_reports_offset_metadata_and_expiry(env):
    raw_meta = metadata(filename="a.txt", profile="default")
    r = await env.client.post("/v1/tus/", headers={**TUS, **env.tenant.headers,
                                                   "Upload-Length": "10",
                                                   "Upload-Metadata": raw_meta})
    url = path_of(r.headers["location"])
    assert "GMT" in r.headers["upload-expires"]
    await patch(env, url, 0, b"12345")
    r = await head(env, url)
    assert r.status_code == 200
    assert r.headers["upload-offset"] == "5" and r.headers["upload-length"] == "10"
    assert r.headers["upload-metadata"] == raw_meta
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["upload-expires"].endswith("GMT")
    assert r.headers["tus-resumable"] == "1.0.0"
    assert "stowage-attachment-id" not in r.headers


async def test_final_patch_and_later_head_name_the_attachment_and_retries_are_harmless(env):
    url = await create(env, 6, filename="six.txt")
    r = await patch(env, url, 0, b"abc")
    assert "stowage-attachment-id" not in r.headers
    r = await patch(env, url, 3, b"def")
    assert r.status_code == 204 and r.headers["upload-offset"] == "6"
    att_id = r.headers["stowage-attachment-id"]
    assert (await head(env, url)).headers["stowage-attachment-id"] == att_id
    # a retried final PATCH (its answer was lost) learns the same outcome
    r = await patch(env, url, 6, b"")
    assert r.status_code == 204 and r.headers["stowage-attachment-id"] == att_id
    r = await patch(env, url, 3, b"def")
    assert r.status_code == 409
    assert await env.attachment_count() == 1


async def test_completion_interrupted_after_the_attachment_is_made_is_finished_by_head(env):
    url = await create(env, 3)
    r = await patch(env, url, 0, b"abc")
    att_id = r.headers["stowage-attachment-id"]
    # the process died between recording the attachment and marking the upload done
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE tus_uploads SET state = 'completing'")
    r = await head(env, url)
    assert r.headers["stowage-attachment-id"] == att_id
    assert await env.attachment_count() == 1


async def test_completion_interrupted_before_the_attachment_is_made_is_redone(env, monkeypatch):
    url = await create(env, 3)
    real_record = env.res.intake.record
    calls = 0

    async def crash_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the process died here")
        return await real_record(*args, **kwargs)

    monkeypatch.setattr(env.res.intake, "record", crash_once)
    async with asgi_client(env.res, raise_app_exceptions=False) as c:
        r = await c.patch(url, content=b"abc", headers={**TUS, **OCTETS, **env.tenant.headers,
                                                       "Upload-Offset": "0"})
    assert r.status_code == 500
    row = (await env.tus_rows())[0]
    assert row["state"] == "completing" and row["upload_offset"] == 3
    # the client asks where it stands: the server finishes the job with the same id
    r = await head(env, url)
    assert r.headers["upload-offset"] == "3"
    assert r.headers["stowage-attachment-id"] == str(row["attachment_id"])
    assert await env.attachment_count() == 1
    await run_worker(env.res)
    assert await content_of(env, r.headers["stowage-attachment-id"]) == b"abc"


async def test_sweep_finishes_a_completion_whose_request_died(env, monkeypatch):
    url = await create(env, 3)

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the process died here")

    with monkeypatch.context() as m:
        m.setattr(env.res.intake, "record", crash)
        async with asgi_client(env.res, raise_app_exceptions=False) as c:
            r = await c.patch(url, content=b"xyz", headers={
                **TUS, **OCTETS, **env.tenant.headers, "Upload-Offset": "0"})
        assert r.status_code == 500
    # the client never comes back; a fresh stall is left alone, an old one is finished
    await env.res.tus.expire_uploads()
    assert (await env.tus_rows())[0]["state"] == "completing"
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE tus_uploads SET updated_at = now() - interval '2 minutes',"
                           " expires_at = now() - interval '1 second'")
    assert await env.res.tus.expire_uploads() == 0  # finished, not thrown away
    row = (await env.tus_rows())[0]
    assert row["state"] == "done"
    assert await env.attachment_count() == 1
    assert (await head(env, url)).headers["stowage-attachment-id"] == str(row["attachment_id"])
    assert [p.name for p in env.cache_root.rglob("*")
            if p.is_file() and not is_marker(p)] == ["upload"]
    # and once a finished upload's row expires it goes too, its attachment stays
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE tus_uploads SET expires_at = now() - interval '1 second'")
    assert await env.res.tus.expire_uploads() == 1
    assert await env.tus_rows() == [] and await env.attachment_count() == 1


async def test_lease_is_renewed_during_a_long_patch(env, monkeypatch):
    monkeypatch.setattr(tus, "LEASE_SECONDS", 1.0)
    monkeypatch.setattr(tus, "LEASE_RENEW_EVERY", 0.2)
    url = await create(env, 10)
    started, go_on = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"01234"
        started.set()
        await go_on.wait()
        yield b"56789"

    first = asyncio.create_task(patch(env, url, 0, slow_body()))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(2.5)  # well past the lease: only renewal keeps it
    assert (await patch(env, url, 0, b"0123456789")).status_code == 423
    go_on.set()
    r = await first
    assert r.status_code == 204 and "stowage-attachment-id" in r.headers


async def test_openapi_documents_the_tus_routes(env):
    spec = (await env.client.get("/openapi.json")).json()
    assert {"post", "options"} <= set(spec["paths"]["/v1/tus/"])
    one = spec["paths"]["/v1/tus/{upload_id}"]
    assert {"head", "patch", "delete"} <= set(one)
    for code in ("404", "409", "412", "413", "415", "423", "460"):
        assert code in one["patch"]["responses"], code


async def test_termination(env_factory, backend):
    env = await env_factory(backend)
    data = os.urandom(7 * MiB)
    url = await create(env, len(data) + 1)
    r = await patch(env, url, 0, data)
    assert r.status_code == 204
    assert await env.cache_objects() != []
    r = await env.client.delete(url, headers={**TUS, **env.other.headers})
    assert r.status_code == 404
    r = await env.client.delete(url, headers={**TUS, **env.tenant.headers})
    assert r.status_code == 204
    assert (await head(env, url)).status_code == 404
    assert (await patch(env, url, len(data), b"x")).status_code == 404
    assert await env.cache_objects() == []
    assert await env.multipart_uploads() == []
    assert await env.tus_rows() == []


async def test_checksums(env):
    data = b"0123456789" * 100
    url = await create(env, len(data) * 3)

    def digest(algo: str, b: bytes) -> str:
        return f"{algo} {base64.b64encode(hashlib.new(algo, b).digest()).decode()}"

    r = await patch(env, url, 0, data, Upload_Checksum=digest("sha256", data))
    assert r.status_code == 204 and r.headers["upload-offset"] == str(len(data))
    r = await patch(env, url, len(data), data, Upload_Checksum=digest("md5", b"something else"))
    assert r.status_code == 460
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 460
    assert (await head(env, url)).headers["upload-offset"] == str(len(data))
    tus_file = next(env.cache_root.rglob("tus"))
    assert tus_file.stat().st_size == len(data)  # the bad chunk is not kept
    r = await patch(env, url, len(data), data, Upload_Checksum=digest("sha1", data))
    assert r.status_code == 204
    r = await patch(env, url, 2 * len(data), data, Upload_Checksum=digest("md5", data))
    assert r.status_code == 204 and "stowage-attachment-id" in r.headers
    r = await patch(env, await create(env, 5), 0, b"12345", Upload_Checksum="crc32 AAAA")
    assert r.status_code == 400


async def test_checksum_mismatch_on_s3_keeps_the_offset(env_factory):
    env = await env_factory("s3")
    data = os.urandom(6 * MiB)
    url = await create(env, 2 * len(data))
    bad = "sha256 " + base64.b64encode(b"\0" * 32).decode()
    r = await patch(env, url, 0, data, Upload_Checksum=bad)
    assert r.status_code == 460
    row = (await env.tus_rows())[0]
    assert row["upload_offset"] == 0 and row["s3_parts"] == [] and row["tail_key"] is None
    good = "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert (await patch(env, url, 0, data, Upload_Checksum=good)).status_code == 204
    r = await patch(env, url, len(data), data)
    assert r.status_code == 204
    await run_worker(env.res)
    assert await content_of(env, r.headers["stowage-attachment-id"]) == data + data
    assert await env.multipart_uploads() == []


def _sha256_b64(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


async def _broken_body(data: bytes) -> AsyncIterator[bytes]:
    """A PATCH body whose client goes away after ``data``."""
    yield data
    raise httpx.ReadError("the client went away")


async def test_the_sha256_is_right_however_the_upload_went(env_factory, backend, monkeypatch):
    """The completion trusts the hash the PATCHes kept only while it covers exactly the
    durable bytes; otherwise it reads the file back. Either way the sha256 is the file's."""
    env = await env_factory(backend)
    reads: list[str] = []
    read = env.res.cache.read

    def counting_read(key: str, *args: Any, **kwargs: Any) -> Any:
        # the whole upload read back (not read_head's ranged read, not an S3 tail object)
        if key.endswith("/tus") and not args and not kwargs:
            reads.append(key)
        return read(key, *args, **kwargs)

    monkeypatch.setattr(env.res.cache, "read", counting_read)
    part = 6 * MiB  # over the S3 part size, so parts and tails are both exercised
    data = os.urandom(4 * part)

    async def finish(url: str, offset: int) -> dict[str, Any]:
        r = await patch(env, url, offset, data[offset:])
        assert r.status_code == 204, r.text
        att = await env.client.get(f"/v1/attachments/{r.headers['stowage-attachment-id']}",
                                   headers=env.tenant.headers)
        return att.json()

    # every PATCH on this process, one refused by its checksum, one cut off half-way
    url = await create(env, len(data))
    assert (await patch(env, url, 0, data[:part])).status_code == 204
    r = await patch(env, url, part, data[part:2 * part], Upload_Checksum=_sha256_b64(b"x"))
    assert r.status_code == 460
    # the tus routes answer whatever escapes them (here the transport's error: a server
    # would see ClientDisconnect), so that the answer carries the tus headers
    r = await patch(env, url, part, _broken_body(data[part:part + part // 2 + 7]))
    assert r.status_code == 500 and r.headers["tus-resumable"] == "1.0.0"
    offset = int((await head(env, url)).headers["upload-offset"])
    assert part < offset <= part + part // 2 + 7
    att = await finish(url, offset)
    assert att["sha256"] == hashlib.sha256(data).hexdigest()
    assert reads == []  # hashed as it arrived: the file was not read back

    # resumed after a restart (or on another instance): this process never saw the start
    url = await create(env, len(data))
    assert (await patch(env, url, 0, data[:part])).status_code == 204
    env.res.tus_digests.forget(UUID(url.rstrip("/").rsplit("/", 1)[1]))
    assert (await patch(env, url, part, data[part:3 * part])).status_code == 204
    att = await finish(url, 3 * part)
    assert att["sha256"] == hashlib.sha256(data).hexdigest()
    assert reads  # read back and hashed at completion


async def test_a_disk_error_mid_patch_keeps_the_offset_and_the_retry_completes(env,
                                                                               monkeypatch):
    """Writes are queued behind the socket read: one failing fails the PATCH, and the stored
    offset stays where it was (nothing half-written counts)."""
    data = os.urandom(5 * MiB)
    url = await create(env, len(data))
    assert (await patch(env, url, 0, data[:MiB])).status_code == 204
    real = file_resumable._pwrite_all
    calls = 0

    def full_disk(fd: int, buf: bytearray, pos: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        real(fd, buf, pos)

    monkeypatch.setattr(file_resumable, "_pwrite_all", full_disk)
    async def in_blocks() -> AsyncIterator[bytes]:  # so several writes are queued
        for i in range(MiB, len(data), MiB):
            yield data[i:i + MiB]

    async with asgi_client(env.res, raise_app_exceptions=False) as c:
        r = await c.patch(url, content=in_blocks(), headers={
            **TUS, **OCTETS, **env.tenant.headers, "Upload-Offset": str(MiB)})
    # a full disk is no outage to retry in 5 s: 507 Insufficient Storage
    assert r.status_code == 507 and r.headers["content-type"] == "application/problem+json"
    assert "ENOSPC" in r.json()["detail"] and "retry-after" not in r.headers
    assert (await head(env, url)).headers["upload-offset"] == str(MiB)
    monkeypatch.setattr(file_resumable, "_pwrite_all", real)
    r = await patch(env, url, MiB, data[MiB:])
    assert r.status_code == 204
    att = (await env.client.get(f"/v1/attachments/{r.headers['stowage-attachment-id']}",
                                headers=env.tenant.headers)).json()
    assert att["sha256"] == hashlib.sha256(data).hexdigest() and att["size"] == len(data)


async def test_protocol_errors(env):
    url = await create(env, 10)
    # wrong offset
    r = await patch(env, url, 3, b"abc")
    assert r.status_code == 409 and r.json()["upload_offset"] == 0
    # over Upload-Length, by Content-Length and by a streamed body without one
    r = await patch(env, url, 0, b"x" * 11)
    assert r.status_code == 413

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 6
        yield b"x" * 6

    r = await patch(env, url, 0, body())
    assert r.status_code == 413
    assert (await head(env, url)).headers["upload-offset"] == "0"
    # unknown upload, not a UUID, another app's upload
    for missing in ("/v1/tus/0193aaaa-0000-7000-8000-000000000000", "/v1/tus/nope"):
        assert (await head(env, missing)).status_code == 404
        assert (await patch(env, missing, 0, b"a")).status_code == 404
    assert (await head(env, url, key=env.other)).status_code == 404
    assert (await patch(env, url, 0, b"a", key=env.other)).status_code == 404
    # no API key
    r = await env.client.head(url, headers=TUS)
    assert r.status_code == 401
    # missing or wrong Tus-Resumable
    for headers in ({}, {"Tus-Resumable": "0.2.2"}):
        r = await env.client.patch(url, content=b"a", headers={
            **headers, **OCTETS, **env.tenant.headers, "Upload-Offset": "0"})
        assert r.status_code == 412
        assert r.headers["tus-version"] == "1.0.0"
        assert r.headers["content-type"] == "application/problem+json"
    r = await env.client.post("/v1/tus/", headers={**env.tenant.headers, "Upload-Length": "1"})
    assert r.status_code == 412
    # wrong content type
    r = await patch(env, url, 0, b"a", Content_Type="application/octet-stream")
    assert r.status_code == 415 and r.json()["type"].endswith("tus-content-type")
    # missing or bad headers
    r = await env.client.patch(url, content=b"a", headers={**TUS, **OCTETS, **env.tenant.headers})
    assert r.status_code == 400
    r = await env.client.post("/v1/tus/", headers={**TUS, **env.tenant.headers})
    assert r.status_code == 400
    r = await env.client.post("/v1/tus/", headers={**TUS, **env.tenant.headers,
                                                   "Upload-Length": "-1"})
    assert r.status_code == 400
    # the upload is still fine after all that
    assert (await patch(env, url, 0, b"0123456789")).status_code == 204


async def test_too_large_at_creation(env_factory):
    env = await env_factory("file", profiles='[profiles.small]\nmax_size = 100\n',
                            max_upload_size=10_000)
    for length, profile in ((10_001, "default"), (101, "small")):
        r = await env.client.post("/v1/tus/", headers={
            **TUS, **env.tenant.headers, "Upload-Length": str(length),
            "Upload-Metadata": metadata(profile=profile)})
        assert r.status_code == 413, r.text
        assert r.headers["content-type"] == "application/problem+json"
    r = await env.client.options("/v1/tus/")
    assert r.headers["tus-max-size"] == "10000"
    assert await env.tus_rows() == []


@pytest.mark.parametrize("meta", [
    metadata(profile="nope"),
    metadata(record_type="user", record_id="1"),
    metadata(promote="perhaps"),
    metadata(metadata="[1, 2]"),
    metadata(metadata="{not json"),
    "filename !!!not-base64!!!",
    "filename " + b64("a") + ",filename " + b64("b"),
])
async def test_bad_metadata_is_422(env, meta):
    r = await env.client.post("/v1/tus/", headers={**TUS, **env.tenant.headers,
                                                   "Upload-Length": "5", "Upload-Metadata": meta})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert await env.tus_rows() == []


async def test_unknown_metadata_keys_are_kept_and_name_is_a_filename(env):
    raw = metadata(name="photo.txt", filetype="text/plain", relativePath="null")
    r = await env.client.post("/v1/tus/", content=b"hi", headers={
        **TUS, **OCTETS, **env.tenant.headers, "Upload-Length": "2", "Upload-Metadata": raw})
    att_id = r.headers["stowage-attachment-id"]
    r = await env.client.get(f"/v1/attachments/{att_id}", headers=env.tenant.headers)
    assert r.json()["filename"] == "photo.txt"


async def test_file_refused_at_completion_leaves_nothing(env_factory):
    env = await env_factory("file", profiles='[profiles.images]\ntypes = ["image/*"]\n')
    url = await create(env, 20, profile="images")
    assert (await patch(env, url, 0, b"plain text, ")).status_code == 204
    r = await patch(env, url, 12, b"no image")  # the last byte: now the type is known
    assert r.status_code == 415
    assert r.json()["type"].endswith("unsupported-media-type")
    assert await env.tus_rows() == []
    assert await env.cache_objects() == []
    assert await env.attachment_count() == 0
    assert (await head(env, url)).status_code == 404


async def test_concurrent_patches_do_not_interleave(env):
    data = os.urandom(4 * MiB)
    url = await create(env, len(data))
    first_sent = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield data[:MiB]
        first_sent.set()
        await go_on.wait()
        yield data[MiB:2 * MiB]

    first = asyncio.create_task(patch(env, url, 0, slow_body()))
    await asyncio.wait_for(first_sent.wait(), 5)
    await asyncio.sleep(0.05)
    second = await patch(env, url, 0, data[:2 * MiB])
    assert second.status_code == 423
    assert second.json()["type"].endswith("tus-upload-locked")
    assert (await env.client.delete(url, headers={**TUS, **env.tenant.headers})).status_code == 423
    # HEAD still answers while a PATCH holds the lease
    assert (await head(env, url)).status_code == 200
    go_on.set()
    r = await first
    assert r.status_code == 204 and r.headers["upload-offset"] == str(2 * MiB)
    # a holder that died keeps others out only until its lease runs out
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE tus_uploads SET lock_owner = gen_random_uuid(),"
                           " lock_until = now() + interval '1 minute'")
    assert (await patch(env, url, 2 * MiB, data[2 * MiB:])).status_code == 423
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE tus_uploads SET lock_until = now() - interval '1 second'")
    r = await patch(env, url, 2 * MiB, data[2 * MiB:])
    assert r.status_code == 204 and "stowage-attachment-id" in r.headers
    await run_worker(env.res)
    assert await content_of(env, r.headers["stowage-attachment-id"]) == data


async def test_bytes_past_the_offset_from_a_dead_patch_are_overwritten(env):
    url = await create(env, 10)
    await patch(env, url, 0, b"01234")
    tus_file = next(env.cache_root.rglob("tus"))
    with tus_file.open("ab") as f:  # a PATCH that died after writing, before saving
        f.write(b"garbage")
    r = await patch(env, url, 5, b"56789")
    assert r.status_code == 204
    await run_worker(env.res)
    assert await content_of(env, r.headers["stowage-attachment-id"]) == b"0123456789"


async def test_method_override(env):
    url = await create(env, 3)
    r = await env.client.post(url, content=b"abc", headers={
        **TUS, **OCTETS, **env.tenant.headers, "Upload-Offset": "0",
        "X-HTTP-Method-Override": "PATCH"})
    assert r.status_code == 204 and "stowage-attachment-id" in r.headers


async def test_expired_uploads_are_removed(env_factory, backend):
    env = await env_factory(backend)
    data = os.urandom(6 * MiB)
    url = await create(env, 2 * len(data))
    done = await create(env, 2)
    assert (await patch(env, url, 0, data)).status_code == 204
    r = await patch(env, done, 0, b"ok")
    assert r.status_code == 204 and r.headers["upload-offset"] == "2"
    assert "stowage-attachment-id" in r.headers
    if backend == "s3":
        assert len(await env.multipart_uploads()) == 1
    assert await env.res.tus.expire_uploads() == 0
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE tus_uploads SET expires_at = now() - interval '1 second'")
    r = await head(env, url)
    assert r.status_code == 410
    assert (await patch(env, url, len(data), data)).status_code == 410
    assert await env.res.tus.expire_uploads() == 2
    assert await env.tus_rows() == []
    assert (await head(env, url)).status_code == 404
    assert await env.multipart_uploads() == []
    # only the finished upload's attachment is left in the cache
    assert [k.rsplit("/", 1)[1] for k in await env.cache_objects()] == ["upload"]
    assert await env.attachment_count() == 1


async def test_expiry_is_announced_and_slides_with_progress(env):
    url = await create(env, 10)
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE tus_uploads SET expires_at = now() + interval '1 minute'")
    r = await patch(env, url, 0, b"12345")
    async with env.res.pool.acquire() as conn:
        left = await conn.fetchval("SELECT expires_at - now() FROM tus_uploads")
    assert left.total_seconds() > env.res.settings.tus_expiry - 60  # a full period again
    expires = email.utils.parsedate_to_datetime(r.headers["upload-expires"])
    assert abs((expires - datetime.now(UTC)).total_seconds() - env.res.settings.tus_expiry) < 60


async def test_tuspy_sees_errors(env_factory):
    env = await env_factory("file", live=True)
    bad = AppKey(env.tenant.app_id, "stw_wrong")
    with pytest.raises(TusCommunicationError):
        await asyncio.to_thread(tuspy_upload, env.base_url, bad, b"abc", chunk_size=1)


def _main_includes_tus(settings: Any) -> bool:
    return any(getattr(r, "original_router", None) is tus_router or
               str(getattr(r, "path", "")).startswith("/v1/tus")
               for r in create_app(settings).routes)


async def test_tuspy_against_stowage_serve(tmp_path, env_factory):
    env = await env_factory("file")  # not live: `stowage serve` takes its port
    res, settings, key = env.res, env.res.settings, env.tenant
    port = urlsplit(settings.public_url).port
    if not _main_includes_tus(settings):
        pytest.skip("app/main.py does not include the tus router yet")
    data = os.urandom(3 * MiB + 1)
    with process(["serve", "--port", str(port)], env_for(settings), tmp_path / "api.log"):
        await asyncio.to_thread(wait_http, f"{settings.public_url}/healthz")
        _, offset, last = await asyncio.to_thread(
            tuspy_upload, settings.public_url, key, data, chunk_size=MiB)
    assert offset == len(data)
    att_id = last["stowage-attachment-id"]
    await run_worker(res)
    async with res.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT state, size FROM attachments WHERE id = $1",
                                  UUID(att_id))
    assert row["state"] == "stored" and row["size"] == len(data)


def test_part_size():
    def part_size_for(length: int) -> int:  # of a tus upload: a resumable one
        return s3_part_size_for(1, S3Storage.resumable_part_size, length)

    assert part_size_for(0) == 5 * MiB
    assert part_size_for(5 * 1024 * MiB) == 5 * MiB
    big = 200 * 1024 * MiB
    assert part_size_for(big) * 10_000 >= big and part_size_for(big) % MiB == 0


@pytest.mark.parametrize(("header", "expected"), [
    (None, {}),
    ("", {}),
    ("filename " + b64("a b.txt") + ", flag", {"filename": "a b.txt", "flag": None}),
    ("k " + b64("é"), {"k": "é"}),
])
def test_parse_metadata(header, expected):
    assert tus_protocol.parse_metadata(header) == expected


def test_upload_ids_are_uuids():
    assert UUID(str(tus.storage_key(UUID(int=1), UUID(int=2))).split("/")[1]) == UUID(int=2)
