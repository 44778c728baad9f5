"""S3 misbehaving for real: a fault-injecting proxy in front of the moto server answers 500
and 503 (with S3's XML errors) or answers late. Whatever S3 does, nothing is lost (a 201 means
the bytes are there; an attachment waits in the cache until it can be promoted) and nothing is
orphaned (no object, no multipart upload without a live attachment that owns it)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from arq import Retry

from app.attachments import keys
from app.auth import service as auth
from app.bootstrap import Services
from app.main import create_app
from app.ops.readiness import CHECK_TIMEOUT
from app.transient import is_transient
from tests.conftest import AppKey, fresh_resources, is_marker, make_settings, run_worker
from tests.factories import age
from tests.s3_fault_proxy import S3FaultProxy
from worker import tasks

MiB = 1024 * 1024
PART_UPLOAD = "partNumber="  # UploadPart: PUT /bucket/key?partNumber=N&uploadId=…
COPY_SOURCE = "x-amz-copy-source"  # CopyObject: PUT with this header


@dataclass
class Env:
    res: Services
    client: httpx.AsyncClient
    tenant: AppKey
    proxy: S3FaultProxy
    s3: Any  # a client straight to moto, never through the proxy
    cache_bucket: str
    store_bucket: str
    store_prefix: str = "files/"

    async def objects(self, bucket: str) -> dict[str, int]:
        out: dict[str, int] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])
                        if not is_marker(o["Key"])})
        return out

    async def multipart_uploads(self) -> list[str]:
        found = []
        for bucket in (self.cache_bucket, self.store_bucket):
            resp = await self.s3.list_multipart_uploads(Bucket=bucket)
            found += [f"{bucket}/{u['Key']}" for u in resp.get("Uploads", [])]
        return found

    async def row(self, att_id: str) -> Any:
        async with self.res.pool.acquire() as conn:
            return await conn.fetchrow("SELECT * FROM attachments WHERE id = $1",
                                       uuid.UUID(att_id))

    async def assert_nothing_orphaned(self) -> None:
        """Each bucket holds exactly the objects the live attachments own, and no multipart
        upload is left open."""
        async with self.res.pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, app_id, state, key, derivatives,"
                                    " cache_purged_at FROM attachments")
        want_cache: set[str] = set()
        want_store: set[str] = set()
        for r in rows:
            if r["state"] == "cached" or (r["state"] == "stored" and not r["cache_purged_at"]):
                want_cache.add(keys.cache_key(r["app_id"], r["id"]))
            if r["state"] == "stored":
                want_store.add(self.store_prefix + r["key"])
                want_store |= {self.store_prefix + d["key"]
                               for d in (r["derivatives"] or {}).values()}
        assert set(await self.objects(self.cache_bucket)) == want_cache
        assert set(await self.objects(self.store_bucket)) == want_store
        assert await self.multipart_uploads() == []


@pytest.fixture
async def env(tmp_path, database_url, moto_endpoint, s3_client, fast_botocore_backoff):
    cache_bucket = f"cache-{secrets.token_hex(4)}"
    store_bucket = f"store-{secrets.token_hex(4)}"
    for b in (cache_bucket, store_bucket):
        await s3_client.create_bucket(Bucket=b)
    with S3FaultProxy(moto_endpoint) as proxy:
        settings = make_settings(tmp_path, database_url, cache_url=f"s3://{cache_bucket}",
                                 store_url=f"s3://{store_bucket}/files",
                                 s3_endpoint_url=proxy.url, s3_region="us-east-1",
                                 max_upload_size=64 * MiB)
        async with fresh_resources(settings) as res:
            app = create_app(settings, res)
            app.state.services = res  # ASGITransport does not run the lifespan
            # a 500 must come back as a response, as it would over the network
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                         timeout=60) as client:
                new = await auth.create_app(res.pool, "s3-faults")
                yield Env(res, client, AppKey(new.app_id, new.api_key), proxy, s3_client,
                          cache_bucket, store_bucket)
            proxy.clear()


async def raw_upload(env: Env, data: bytes, promote: bool = True) -> httpx.Response:
    return await env.client.post(
        "/v1/attachments/raw", headers=env.tenant.headers, content=data,
        params={"filename": "blob.bin", "promote": str(promote).lower()})


async def rows_count(env: Env) -> int:
    async with env.res.pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM attachments")


async def forget_queued_jobs(res: Services) -> None:
    """What Redis holds of this test's queue goes, as when arq gives a job up after its last
    try or Redis loses it: only Postgres still knows the work."""
    queue = res.settings.queue_name
    job_ids = [j.decode() for j in await res.redis.zrange(queue, 0, -1)]
    stale = [f"arq:{kind}:{j}" for j in job_ids for kind in ("job", "retry", "in-progress")]
    await res.redis.delete(queue, *stale)


# --- (a) uploads -----------------------------------------------------------------------------

@pytest.mark.parametrize("size, match", [
    (20 * MiB, {"method": "PUT", "contains": PART_UPLOAD}),  # multipart: 3 parts of 8 MiB
    (300 * 1024, {"method": "PUT"}),  # one PutObject
], ids=["multipart", "single-put"])
async def test_upload_rides_out_s3_503s(env, size, match):
    data = os.urandom(size)
    env.proxy.fail(2, 503, **match)
    r = await raw_upload(env, data)
    assert r.status_code == 201, r.text
    assert len(env.proxy.injected()) == 2  # botocore retried them
    att = r.json()
    assert att["sha256"] == hashlib.sha256(data).hexdigest() and att["size"] == size
    cached = await env.objects(env.cache_bucket)
    assert list(cached.values()) == [size]
    got = await env.s3.get_object(Bucket=env.cache_bucket, Key=next(iter(cached)))
    assert hashlib.sha256(await got["Body"].read()).hexdigest() == att["sha256"]
    await run_worker(env.res)
    assert (await env.row(att["id"]))["state"] == "stored"
    await env.assert_nothing_orphaned()


@pytest.mark.parametrize("size, match", [
    (20 * MiB, {"method": "PUT", "contains": PART_UPLOAD}),
    (300 * 1024, {"method": "PUT"}),
], ids=["multipart", "single-put"])
async def test_upload_failing_for_good_leaves_no_row_object_or_multipart_upload(env, size,
                                                                                 match):
    env.proxy.fail_always(503, **match)  # aborts (DELETE) and the rest still go through
    r = await raw_upload(env, os.urandom(size))
    assert r.status_code == 503, r.text  # S3 down is "retry later", like Postgres down
    assert r.headers["retry-after"].isdigit()
    assert r.headers["content-type"] == "application/problem+json"
    assert len(env.proxy.injected()) >= 5  # all of botocore's attempts were made
    env.proxy.clear()
    assert await rows_count(env) == 0
    assert await env.objects(env.cache_bucket) == {}
    await env.assert_nothing_orphaned()
    # and S3 being back, uploads work again
    r = await raw_upload(env, b"after the outage")
    assert r.status_code == 201


# --- (b) promotion retried by the worker ------------------------------------------------------

async def test_promotion_retried_after_copy_object_500s(env):
    r = await raw_upload(env, os.urandom(64 * 1024))
    assert r.status_code == 201
    att_id = r.json()["id"]
    # 5 failures exhaust botocore's attempts in the first try: the job itself is retried
    # (arq Retry, deferred 2 s), and its second try succeeds after one more 500
    env.proxy.fail(6, 500, method="PUT", header=COPY_SOURCE)
    started = time.monotonic()
    await run_worker(env.res)
    assert len(env.proxy.injected()) == 6
    assert time.monotonic() - started >= tasks.RETRY_DEFERS[0]  # it went through a Retry
    row = await env.row(att_id)
    assert row["state"] == "stored" and row["error"] is None
    assert list(await env.objects(env.store_bucket)) == [f"files/{row['key']}"]
    await env.assert_nothing_orphaned()


# --- (c) S3 down for good during promotion ----------------------------------------------------

async def test_promotion_during_s3_outage_stays_cached_then_completes(env):
    data = os.urandom(32 * 1024)
    r = await raw_upload(env, data)
    assert r.status_code == 201
    att_id = r.json()["id"]
    env.proxy.fail_always(500)

    with pytest.raises(Exception) as caught:
        await env.res.attachments.promote(uuid.UUID(att_id))
    assert is_transient(caught.value), repr(caught.value)
    # the job wrapper turns it into a deferred retry, not a failure
    with pytest.raises(Retry):
        await tasks.promote({"services": env.res, "job_try": 1, "job_id": "t"}, att_id)
    row = await env.row(att_id)
    assert row["state"] == "cached" and row["error"] is None
    r = await env.client.get(f"/v1/attachments/{att_id}", headers=env.tenant.headers)
    assert r.json()["state"] == "cached"
    # the sweep keeps running through the outage without losing or failing anything (the
    # failed attempt's backoff of 2 s is past after the two waits, as it was when they slept)
    await age(env.res, env.res.settings.stale_job_after + 0.1, backoffs=True)
    await forget_queued_jobs(env.res)  # arq gave up after its last try
    assert await env.res.sweep.run() is not None
    await forget_queued_jobs(env.res)
    assert (await env.row(att_id))["state"] == "cached"

    env.proxy.clear()
    assert list((await env.objects(env.cache_bucket)).values()) == [len(data)]  # kept
    await env.assert_nothing_orphaned()
    await age(env.res, env.res.settings.stale_job_after + 0.1, backoffs=True)
    report = await env.res.sweep.run()
    assert uuid.UUID(att_id) in report.promotions
    await run_worker(env.res)
    row = await env.row(att_id)
    assert row["state"] == "stored"
    store = await env.objects(env.store_bucket)
    assert list(store.values()) == [len(data)]
    await env.assert_nothing_orphaned()


# --- (d) slow S3 ------------------------------------------------------------------------------

async def test_slow_s3_uploads_succeed_and_readiness_answers_in_time(env):
    env.proxy.slow(1.0)
    small, big = os.urandom(100 * 1024), os.urandom(9 * MiB)  # one PUT; a 2-part upload
    started = time.monotonic()
    r_small, r_big, ready = await asyncio.gather(
        raw_upload(env, small), raw_upload(env, big), env.client.get("/readyz"))
    assert r_small.status_code == 201 and r_big.status_code == 201, (r_small.text, r_big.text)
    assert r_big.json()["sha256"] == hashlib.sha256(big).hexdigest()
    assert time.monotonic() - started >= 1.0  # the proxy really was slow
    assert ready.status_code == 200, ready.json()  # 1 s is within the readiness timeout

    # slower than the readiness check allows: it says so, on time, instead of hanging
    env.proxy.clear()
    env.proxy.slow(CHECK_TIMEOUT + 2)
    started = time.monotonic()
    ready = await env.client.get("/readyz")
    took = time.monotonic() - started
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["postgres"] == "ok" and checks["redis"] == "ok"
    assert checks["cache"] != "ok" and checks["store"] != "ok"
    assert took < CHECK_TIMEOUT + 1.0

    env.proxy.clear()
    env.proxy.slow(1.0)
    await run_worker(env.res)  # promotion with every S3 answer a second late
    for r in (r_small, r_big):
        assert (await env.row(r.json()["id"]))["state"] == "stored"
    env.proxy.clear()
    await env.assert_nothing_orphaned()
