"""Rate limits (issue 24): N new uploads per app per window, across API instances (Redis);
429 with Retry-After; RateLimit-* headers on /v1 answers; Redis down: fail open, counted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from app.auth import service as auth
from app.bootstrap import build_services
from app.observability.metrics import RATE_LIMIT_UNAVAILABLE
from tests.conftest import AppKey, api_client
from tests.proxy import TCPProxy

TUS = {"Tus-Resumable": "1.0.0"}


async def raw(client: httpx.AsyncClient, key: AppKey, data: bytes = b"r") -> httpx.Response:
    return await client.post("/v1/attachments/raw", headers=key.headers, content=data)


@pytest.fixture
async def limited(res: Any, tenant: AppKey) -> AppKey:
    await auth.update_limits(res.pool, tenant.app_id, rate_limit=3)
    return tenant


async def test_over_the_limit_429_with_retry_after_and_headers(
        client: httpx.AsyncClient, limited: AppKey) -> None:
    seen = []
    for _ in range(3):
        r = await raw(client, limited)
        assert r.status_code == 201
        seen.append((r.headers["RateLimit-Limit"], r.headers["RateLimit-Remaining"]))
    assert seen == [("3", "2"), ("3", "1"), ("3", "0")]
    for attempt in (
            lambda: raw(client, limited),
            lambda: client.post("/v1/attachments", headers=limited.headers,
                                files={"file": ("f", b"x")}),
            lambda: client.post("/v1/tus/", headers={**TUS, **limited.headers,
                                                     "Upload-Length": "1"})):
        r = await attempt()
        assert r.status_code == 429, r.text
        assert r.json()["type"].endswith("rate-limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["RateLimit-Remaining"] == "0"
        assert 0 < int(r.headers["RateLimit-Reset"]) <= 60
    # reading is not an upload: answered, with where the app stands
    r = await client.get("/v1/attachments", headers=limited.headers)
    assert r.status_code == 200
    assert r.headers["RateLimit-Limit"] == "3" and r.headers["RateLimit-Remaining"] == "0"
    assert int(r.headers["RateLimit-Reset"]) > 0


async def test_an_app_without_a_limit_is_not_limited(client: httpx.AsyncClient,
                                                    tenant: AppKey, limited: Any,
                                                    other_tenant: AppKey) -> None:
    for _ in range(5):
        r = await raw(client, other_tenant)
        assert r.status_code == 201 and "RateLimit-Limit" not in r.headers


async def test_upload_tokens_count_against_the_rate(client: httpx.AsyncClient,
                                                    limited: AppKey) -> None:
    made = (await client.post("/v1/upload-tokens", json={"uses": 5},
                              headers=limited.headers)).json()
    token = AppKey(limited.app_id, made["token"])
    codes = [(await raw(client, token)).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]


async def test_the_window_moves(env_factory: Any) -> None:
    env = await env_factory("file", rate_limit_window=1)
    new = await auth.create_app(env.res.pool, "windowed")
    key = AppKey(new.app_id, new.api_key)
    await auth.update_limits(env.res.pool, key.app_id, rate_limit=2)
    async with api_client(env.res) as client:
        assert [(await raw(client, key)).status_code for _ in range(3)] == [201, 201, 429]
        await asyncio.sleep(2.1)  # the previous window's count weighs nothing by then
        assert (await raw(client, key)).status_code == 201


async def test_the_limit_holds_across_two_api_instances(env_factory: Any) -> None:
    env = await env_factory("file")
    new = await auth.create_app(env.res.pool, "two-instances")
    key = AppKey(new.app_id, new.api_key)
    await auth.update_limits(env.res.pool, key.app_id, rate_limit=5)
    # a second API instance: its own pools and Redis connections, the same database and Redis
    async with build_services(env.settings) as other, api_client(env.res) as first, \
            api_client(other) as second:
        assert other.rate_limits is not env.res.rate_limits
        answers = await asyncio.gather(*(raw(c, key) for c in [first, second] * 6))
        codes = [r.status_code for r in answers]
        assert codes.count(201) == 5 and codes.count(429) == 7, codes
        by_instance = {codes[i] for i in range(0, 12, 2)} | {codes[i] for i in range(1, 12, 2)}
        assert by_instance == {201, 429}


async def test_redis_down_uploads_still_accepted(env_factory: Any) -> None:
    proxy = TCPProxy("127.0.0.1", 6379)
    await proxy.start()
    try:
        env = await env_factory("file", redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        new = await auth.create_app(env.res.pool, "redis-down")
        key = AppKey(new.app_id, new.api_key)
        await auth.update_limits(env.res.pool, key.app_id, rate_limit=2)
        async with api_client(env.res) as client:
            assert (await raw(client, key)).status_code == 201
            await proxy.cut()
            before = RATE_LIMIT_UNAVAILABLE._value.get()
            started = time.monotonic()
            codes = [(await raw(client, key)).status_code for _ in range(4)]
            assert codes == [201] * 4  # over the limit of 2, but Redis cannot say so
            assert time.monotonic() - started < 15
            assert RATE_LIMIT_UNAVAILABLE._value.get() - before >= 4
            r = await client.get("/metrics")
            assert "stowage_rate_limit_unavailable_total" in r.text
            await proxy.start()  # back on the same port: limited again
            codes = [(await raw(client, key)).status_code for _ in range(3)]
            assert 429 in codes
    finally:
        await proxy.cut()


async def test_the_limit_lives_in_redis(res: Any, limited: AppKey, client: httpx.AsyncClient,
                                        redis_client: aioredis.Redis) -> None:
    assert (await raw(client, limited)).status_code == 201
    keys = [k async for k in redis_client.scan_iter(f"stowage:ratelimit*{limited.app_id}*")]
    assert keys
