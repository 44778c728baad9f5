"""Idempotency-Key: a repeat answers what the first answered and creates nothing, on another
API process too; 409 while the first runs (and after a SIGKILL, until its lease ends); 422
for another request under the same key; failures are not remembered; keys expire."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from app.auth import service as auth
from app.bootstrap import build_services
from tests.conftest import (
    AppKey,
    api_client,
    env_for,
    free_port,
    process,
    wait_http,
)

TUS = {"Tus-Resumable": "1.0.0"}


def keyed(tenant: AppKey, key: str, **extra: str) -> dict[str, str]:
    return {**tenant.headers, "Idempotency-Key": key, **extra}


async def count(res, table: str, app_id) -> int:
    async with res.pool.acquire() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {table} WHERE app_id = $1", app_id)


def tus_metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def same_answer(first: httpx.Response, again: httpx.Response) -> None:
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert again.headers.get("location") == first.headers.get("location")
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


@pytest.fixture
def two_apis(tmp_path, res) -> Iterator[tuple[str, str, object, object]]:
    """Two `stowage serve` processes on the same database and storages, a 2 s lease."""
    env = {**env_for(res.settings), "STOWAGE_IDEMPOTENCY_LEASE": "2"}
    ports = free_port(), free_port()
    with process(["serve", "--port", str(ports[0]), "--workers", "1"], env,
                 tmp_path / "a.log") as a, \
            process(["serve", "--port", str(ports[1]), "--workers", "1"], env,
                    tmp_path / "b.log") as b:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        for base in bases:
            wait_http(f"{base}/healthz")
        yield bases[0], bases[1], a, b


async def test_each_endpoint_replays_on_another_api_process(two_apis, res, tenant, environment):
    a, b, _, _ = two_apis
    async with httpx.AsyncClient(base_url=a, timeout=10) as on_a, \
            httpx.AsyncClient(base_url=b, timeout=10) as on_b:
        # multipart
        files = {"file": ("cat.txt", b"the same bytes")}
        first = await on_a.post("/v1/attachments", headers=keyed(tenant, "mp-1"), files=files,
                                data={"profile": "default"})
        assert first.status_code == 201, first.text
        again = await on_b.post("/v1/attachments", headers=keyed(tenant, "mp-1"), files=files,
                                data={"profile": "default"})
        same_answer(first, again)
        # raw
        first = await on_a.post("/v1/attachments/raw?filename=r.bin",
                                headers=keyed(tenant, "raw-1"), content=b"raw bytes")
        assert first.status_code == 201, first.text
        again = await on_b.post("/v1/attachments/raw?filename=r.bin",
                                headers=keyed(tenant, "raw-1"), content=b"raw bytes")
        same_answer(first, again)
        assert await count(res, "attachments", tenant.app_id) == 2
        cache, _ = await environment.files()
        assert len(cache) == 2  # the repeats' bytes were dropped, not stored
        # tus creation, then creation-with-upload: the same upload URL
        headers = keyed(tenant, "tus-1", **TUS, **{
            "Upload-Length": "10", "Upload-Metadata": tus_metadata(filename="t.bin")})
        first = await on_a.post("/v1/tus/", headers=headers)
        assert first.status_code == 201, first.text
        again = await on_b.post("/v1/tus/", headers=headers)
        same_answer(first, again)
        headers = keyed(tenant, "tus-2", **TUS, **{
            "Upload-Length": "10", "Content-Type": "application/offset+octet-stream"})
        first = await on_a.post("/v1/tus/", headers=headers, content=b"01234")
        assert first.status_code == 201 and first.headers["upload-offset"] == "5"
        again = await on_b.post("/v1/tus/", headers=headers, content=b"01234")
        same_answer(first, again)
        assert await count(res, "tus_uploads", tenant.app_id) == 2
        # webhook endpoints: the same id and secret
        body = {"url": "https://example.com/hook", "events": ["attachment.stored"]}
        first = await on_a.post("/v1/webhook-endpoints", headers=keyed(tenant, "wh-1"),
                                json=body)
        assert first.status_code == 201, first.text
        again = await on_b.post("/v1/webhook-endpoints", headers=keyed(tenant, "wh-1"),
                                json=body)
        same_answer(first, again)
        assert await count(res, "webhook_endpoints", tenant.app_id) == 1
        # no key: every request is a request of its own
        for _ in range(2):
            r = await on_b.post("/v1/webhook-endpoints", headers=tenant.headers, json=body)
            assert r.status_code == 201 and "idempotent-replayed" not in r.headers
        assert await count(res, "webhook_endpoints", tenant.app_id) == 3


async def test_presigned_and_registration_replay_on_another_instance(s3_env):
    res, client, tenant, _, _ = s3_env
    async with build_services(res.settings) as other, api_client(other) as client_b:
        body = {"filename": "p.bin", "size": 5}
        first = await client.post("/v1/presigned-uploads", headers=keyed(tenant, "ps-1"),
                                  json=body)
        assert first.status_code == 201, first.text
        again = await client_b.post("/v1/presigned-uploads", headers=keyed(tenant, "ps-1"),
                                    json=body)
        same_answer(first, again)
        assert await count(res, "presigned_uploads", tenant.app_id) == 1
        p = first.json()
        async with httpx.AsyncClient() as plain:
            r = await plain.post(p["url"], data=p["fields"], files={"file": ("f", b"12345")})
            assert r.status_code in (200, 201, 204)
        reg = {"cached_key": p["key"]}
        first = await client.post("/v1/attachments", headers=keyed(tenant, "reg-1"), json=reg)
        assert first.status_code == 201, first.text
        again = await client_b.post("/v1/attachments", headers=keyed(tenant, "reg-1"),
                                    json=reg)
        same_answer(first, again)
        assert await count(res, "attachments", tenant.app_id) == 1
        r = await client_b.post("/v1/attachments", headers=keyed(tenant, "reg-1"),
                                json={**reg, "filename": "other"})
        assert r.status_code == 422


@pytest.mark.parametrize("change", [
    {"content": b"other bytes"},
    {"filename": "other.txt"},
    {"profile": "nope"},
    {"slot": ("user", "1", "avatar")},
])
async def test_same_key_another_upload_is_422_and_creates_nothing(client, res, tenant, change):
    async def send(content=b"bytes", filename="f.txt", profile=None, slot=None):
        data = {"profile": profile} if profile else {}
        if slot:
            data.update(record_type=slot[0], record_id=slot[1], record_name=slot[2])
        return await client.post("/v1/attachments", headers=keyed(tenant, "k"),
                                 files={"file": (filename, content)}, data=data)

    first = await send()
    assert first.status_code == 201
    r = await send(**change)
    assert r.status_code == 422, r.text
    assert r.json()["type"].endswith("idempotency-key-reused")
    assert await count(res, "attachments", tenant.app_id) == 1
    # the key still answers the first request
    same_answer(first, await send())


async def test_same_key_on_another_endpoint_or_body_is_422(client, res, tenant):
    first = await client.post("/v1/attachments/raw", headers=keyed(tenant, "k"), content=b"x")
    assert first.status_code == 201
    r = await client.post("/v1/attachments", headers=keyed(tenant, "k"),
                          files={"file": ("f", b"x")})
    assert r.status_code == 422
    r = await client.post("/v1/webhook-endpoints", headers=keyed(tenant, "k"),
                          json={"url": "https://example.com/a"})
    assert r.status_code == 422
    r = await client.post("/v1/attachments/raw?filename=y", headers=keyed(tenant, "k"),
                          content=b"x")
    assert r.status_code == 422
    assert await count(res, "webhook_endpoints", tenant.app_id) == 0
    assert await count(res, "attachments", tenant.app_id) == 1
    # keys are per app: another app's same key is a key of its own
    other = await auth.create_app(res.pool, "other")
    r = await client.post("/v1/attachments/raw", headers=keyed(AppKey(other.app_id,
                          other.api_key), "k"), content=b"x")
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers


async def test_a_repeat_while_the_first_runs_is_409(client, res, tenant):
    gate = asyncio.Event()

    async def slow_body():
        yield b"first half "
        await gate.wait()
        yield b"second half"

    first = asyncio.create_task(client.post("/v1/attachments/raw", headers=keyed(tenant, "k"),
                                            content=slow_body()))
    await asyncio.sleep(0.3)
    assert not first.done()
    async with build_services(res.settings) as other, api_client(other) as client_b:
        r = await client_b.post("/v1/attachments/raw", headers=keyed(tenant, "k"),
                                content=b"first half second half")
        assert r.status_code == 409, r.text
        assert r.json()["type"].endswith("idempotency-conflict")
        assert r.headers["retry-after"] == "1"
        r = await client_b.post("/v1/webhook-endpoints", headers=keyed(tenant, "k"),
                                json={"url": "https://example.com/a"})
        assert r.status_code == 422  # another endpoint: not the same request, running or not
        gate.set()
        done = await first
        assert done.status_code == 201
        r = await client_b.post("/v1/attachments/raw", headers=keyed(tenant, "k"),
                                content=b"first half second half")
        same_answer(done, r)
    assert await count(res, "attachments", tenant.app_id) == 1


async def test_a_failed_first_request_is_not_remembered(client, res, tenant):
    # refused once its bytes are in (a slot of two parts out of three): the key was held
    r = await client.post("/v1/attachments", headers=keyed(tenant, "k"),
                          files={"file": ("f", b"x")}, data={"record_type": "user"})
    assert r.status_code == 422
    assert not r.json()["type"].endswith("idempotency-key-reused")
    r = await client.post("/v1/attachments", headers=keyed(tenant, "k"),
                          files={"file": ("f", b"x")})
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    async with res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE app_id = $1",
                                   tenant.app_id) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "naïve", "tab\there"])
async def test_malformed_keys_are_refused(client, res, tenant, key):
    try:
        r = await client.post("/v1/attachments/raw", headers=keyed(tenant, key), content=b"x")
    except (UnicodeEncodeError, httpx.LocalProtocolError):
        return  # not even sendable as a header
    assert r.status_code == 422, r.text
    assert await count(res, "attachments", tenant.app_id) == 0


async def test_the_longest_key_works(client, tenant):
    key = "".join(chr(c) for c in range(0x21, 0x7f)) * 3  # 282: cut to 255 below
    r1 = await client.post("/v1/attachments/raw", headers=keyed(tenant, key[:255]), content=b"x")
    r2 = await client.post("/v1/attachments/raw", headers=keyed(tenant, key[:255]), content=b"x")
    assert r1.status_code == 201
    same_answer(r1, r2)


@pytest.mark.settings(idempotency_ttl=1)
async def test_keys_are_forgotten_after_their_time(res, client, tenant):
    r = await client.post("/v1/attachments/raw", headers=keyed(tenant, "k"), content=b"x")
    assert r.status_code == 201
    await asyncio.sleep(1.2)
    r = await client.post("/v1/attachments/raw", headers=keyed(tenant, "k"), content=b"y")
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    await asyncio.sleep(1.2)
    assert await res.sweep.run() is not None
    async with res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_sigkill_mid_upload_frees_the_key_when_its_lease_ends(two_apis, res, tenant):
    a, b, proc_a, _ = two_apis

    async def endless():
        yield b"x" * 1000
        await asyncio.sleep(30)
        yield b"never"

    async with httpx.AsyncClient(base_url=a, timeout=30) as on_a, \
            httpx.AsyncClient(base_url=b, timeout=10) as on_b:
        doomed = asyncio.create_task(on_a.post("/v1/attachments/raw",
                                               headers=keyed(tenant, "kill"), content=endless()))

        async def key_taken() -> bool:
            async with res.pool.acquire() as conn:
                return bool(await conn.fetchval(
                    "SELECT count(*) FROM idempotency_keys WHERE key = 'kill'"))

        deadline = time.monotonic() + 10
        while not await key_taken():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        os.killpg(proc_a.pid, signal.SIGKILL)
        proc_a.wait(5)
        doomed.cancel()  # its client would only notice when it next writes
        r = await on_b.post("/v1/attachments/raw", headers=keyed(tenant, "kill"),
                            content=b"x" * 1000)
        assert r.status_code == 409  # the lease (2 s) still runs
        await asyncio.sleep(2.2)
        r = await on_b.post("/v1/attachments/raw", headers=keyed(tenant, "kill"),
                            content=b"x" * 1000)
        assert r.status_code == 201, r.text
        assert "idempotent-replayed" not in r.headers
        again = await on_b.post("/v1/attachments/raw", headers=keyed(tenant, "kill"),
                                content=b"x" * 1000)
        same_answer(r, again)
    assert await count(res, "attachments", tenant.app_id) == 1


async def test_openapi_documents_the_header_and_answers(client):
    doc = (await client.get("/openapi.json")).json()
    for path in ("/v1/attachments", "/v1/attachments/raw", "/v1/presigned-uploads",
                 "/v1/tus/", "/v1/webhook-endpoints"):
        op = doc["paths"][path]["post"]
        names = [p["name"] for p in op.get("parameters", [])]
        assert "Idempotency-Key" in names, path
        assert "409" in op["responses"] and "422" in op["responses"], path
        assert "Idempotent-Replayed" in op["responses"]["201"]["headers"], path
        assert "content" in op["responses"]["201"] or path == "/v1/tus/", path
    feed = doc["paths"]["/v1/events"]["get"]
    assert {"after", "types", "limit", "wait"} <= {p["name"] for p in feed["parameters"]}
    assert "410" in feed["responses"]
