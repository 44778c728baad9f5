"""Storage quotas and usage (issue 24): bytes of live files per app, exact under concurrency,
checked before an upload starts and again when its size is known; over the quota: 403
quota-exceeded with nothing written; deletions give the bytes back when the files are gone."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.auth import service as auth
from tests.conftest import AppKey, api_client, env_for, run_worker

STOWAGE = str(Path(sys.executable).with_name("stowage"))
TUS = {"Tus-Resumable": "1.0.0"}
PROFILES = """
[profiles.thumbs]
types = ["image/png"]
[profiles.thumbs.derivatives.small]
width = 8
height = 8
format = "png"
"""


@pytest.fixture
async def env(env_factory: Any) -> Any:
    return await env_factory("file", profiles=PROFILES)


@pytest.fixture
async def client(env: Any) -> Any:
    async with api_client(env.res) as c:
        yield c


@pytest.fixture
async def tenant(env: Any) -> AppKey:
    new = await auth.create_app(env.res.pool, "quota-app")
    return AppKey(new.app_id, new.api_key)


async def usage(client: httpx.AsyncClient, tenant: AppKey) -> dict[str, Any]:
    r = await client.get("/v1/usage", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def raw(client: httpx.AsyncClient, tenant: AppKey, data: bytes,
              chunked: bool = False) -> httpx.Response:
    if chunked:  # no Content-Length: only the check as it is recorded applies
        async def body() -> Any:
            yield data[:1]
            yield data[1:]
        return await client.post("/v1/attachments/raw", headers=tenant.headers, content=body())
    return await client.post("/v1/attachments/raw", headers=tenant.headers, content=data)


async def files_and_rows(env: Any) -> tuple[list[str], int]:
    async with env.res.pool.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM attachments")
    cache, store = await env.files()
    return cache + store, rows


async def test_usage_counts_live_files(client: Any, tenant: AppKey, env: Any) -> None:
    assert await usage(client, tenant) == {"bytes": 0, "attachments": 0, "quota_bytes": None,
                                           "rate_limit": None}
    for size in (10, 20, 30):
        assert (await raw(client, tenant, b"x" * size)).status_code == 201
    assert await usage(client, tenant) == {"bytes": 60, "attachments": 3, "quota_bytes": None,
                                           "rate_limit": None}
    await auth.update_limits(env.res.pool, tenant.app_id, quota_bytes=1000, rate_limit=50)
    got = await usage(client, tenant)
    assert got["quota_bytes"] == 1000 and got["rate_limit"] == 50


async def test_over_the_quota_nothing_is_written(client: Any, tenant: AppKey, env: Any) -> None:
    await auth.update_limits(env.res.pool, tenant.app_id, quota_bytes=100)
    assert (await raw(client, tenant, b"a" * 60)).status_code == 201
    before = await files_and_rows(env)
    for chunked in (False, True):
        r = await raw(client, tenant, b"b" * 41, chunked=chunked)
        assert r.status_code == 403, r.text
        problem = r.json()
        assert problem["type"].endswith("quota-exceeded")
        assert problem["quota_bytes"] == 100
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("f.txt", b"c" * 41)})
    assert r.status_code == 403 and r.json()["type"].endswith("quota-exceeded")
    r = await client.post("/v1/tus/", headers={**TUS, **tenant.headers, "Upload-Length": "41"})
    assert r.status_code == 403 and r.json()["type"].endswith("quota-exceeded")
    assert await files_and_rows(env) == before
    async with env.res.pool.acquire() as conn:  # the one recorded upload's, converted
        assert await conn.fetchval("SELECT count(*) FROM quota_reservations"
                                   " WHERE converted_size IS NULL") == 0
        assert await conn.fetchval("SELECT count(*) FROM tus_uploads") == 0
    # exactly up to the quota is fine
    assert (await raw(client, tenant, b"d" * 40)).status_code == 201
    assert (await usage(client, tenant))["bytes"] == 100


@pytest.mark.parametrize("mode", ["raw", "chunked", "multipart", "tus"])
async def test_concurrent_uploads_straddling_the_quota_never_exceed_it(
        client: Any, tenant: AppKey, env: Any, mode: str) -> None:
    quota = 10_500
    await auth.update_limits(env.res.pool, tenant.app_id, quota_bytes=quota)

    async def one(i: int) -> int:
        data = bytes([65 + i % 26]) * 1000
        if mode == "multipart":
            r = await client.post("/v1/attachments", headers=tenant.headers,
                                  files={"file": (f"{i}.txt", data)})
            return r.status_code
        if mode == "tus":
            r = await client.post("/v1/tus/", headers={
                **TUS, **tenant.headers, "Upload-Length": "1000",
                "Content-Type": "application/offset+octet-stream"}, content=data)
            return r.status_code
        return (await raw(client, tenant, data, chunked=mode == "chunked")).status_code

    codes = await asyncio.gather(*(one(i) for i in range(20)))
    assert set(codes) <= {201, 403}, codes
    got = await usage(client, tenant)
    assert got["bytes"] <= quota and got["bytes"] == 1000 * codes.count(201)
    # raw and tus declare the size: exactly as many as fit are accepted
    if mode in ("raw", "chunked", "tus"):
        assert codes.count(201) == 10, codes
    assert codes.count(201) >= 1
    async with env.res.pool.acquire() as conn:
        # what the recorded uploads reserved holds their bytes until the sweep moves them
        held = await conn.fetchrow("SELECT used + reserved AS held FROM app_quota")
        assert got["bytes"] <= held["held"] <= quota
    await env.res.quotas.sweep()
    async with env.res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM quota_reservations") == 0
        assert await conn.fetchval("SELECT coalesce(sum(size), 0) FROM attachments") == (
            got["bytes"])
        row = await conn.fetchrow("SELECT used, reserved FROM app_quota")
        assert (row["used"], row["reserved"]) == (got["bytes"], 0)


async def test_a_tus_upload_holds_its_length_until_it_ends(client: Any, tenant: AppKey,
                                                           env: Any) -> None:
    await auth.update_limits(env.res.pool, tenant.app_id, quota_bytes=1000)
    r = await client.post("/v1/tus/", headers={**TUS, **tenant.headers, "Upload-Length": "700"})
    assert r.status_code == 201
    url = r.headers["Location"].replace(str(env.res.settings.public_url).rstrip("/"), "")
    # the 700 bytes it declared are held while it is in progress
    assert (await raw(client, tenant, b"x" * 301)).status_code == 403
    assert (await raw(client, tenant, b"x" * 300)).status_code == 201
    # terminated: they are free again
    r = await client.delete(url, headers={**TUS, **tenant.headers})
    assert r.status_code == 204
    assert (await raw(client, tenant, b"y" * 700)).status_code == 201


async def test_a_reservation_left_by_a_killed_process_expires(client: Any, tenant: AppKey,
                                                              env: Any) -> None:
    await auth.update_limits(env.res.pool, tenant.app_id, quota_bytes=1000)
    # what a process killed mid-upload leaves: its reservation, never recorded nor released
    assert await env.res.quotas.reserve(tenant.app_id, 900) is not None
    assert (await raw(client, tenant, b"x" * 200)).status_code == 403
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE quota_reservations SET expires_at = now() - interval '1s'")
    assert await env.res.quotas.sweep() == 1
    assert (await raw(client, tenant, b"x" * 200)).status_code == 201
    await env.res.quotas.sweep()
    async with env.res.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT used, reserved FROM app_quota")
    assert (row["used"], row["reserved"]) == (200, 0)


async def test_deleting_gives_the_bytes_back_when_the_files_are_gone(
        client: Any, tenant: AppKey, env: Any) -> None:
    await auth.update_limits(env.res.pool, tenant.app_id, quota_bytes=100)
    att = (await raw(client, tenant, b"z" * 100)).json()
    await run_worker(env.res)
    assert (await raw(client, tenant, b"z")).status_code == 403
    r = await client.delete(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    assert r.status_code == 202
    await run_worker(env.res)  # removes the files
    got = await usage(client, tenant)
    assert got == {"bytes": 0, "attachments": 0, "quota_bytes": 100, "rate_limit": None}
    await env.res.quotas.sweep()
    async with env.res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT used FROM app_quota") == 0
    assert (await raw(client, tenant, b"z" * 100)).status_code == 201


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def test_derivatives_count(client: Any, tenant: AppKey, env: Any) -> None:
    png = _png()
    r = await client.post("/v1/attachments/raw", params={"profile": "thumbs"},
                          headers=tenant.headers, content=png)
    assert r.status_code == 201, r.text
    await run_worker(env.res)
    att = (await client.get(f"/v1/attachments/{r.json()['id']}", headers=tenant.headers)).json()
    assert att["state"] == "stored"
    derivative = att["derivatives"]["small"]["size"]
    assert derivative > 0
    assert (await usage(client, tenant))["bytes"] == att["size"] + derivative
    # folding the counts changes nothing
    assert await env.res.sweep.run() is not None
    assert (await usage(client, tenant))["bytes"] == att["size"] + derivative


async def test_upload_tokens_count_against_the_quota(client: Any, tenant: AppKey,
                                                     env: Any) -> None:
    await auth.update_limits(env.res.pool, tenant.app_id, quota_bytes=50)
    made = (await client.post("/v1/upload-tokens", json={"uses": 2},
                              headers=tenant.headers)).json()
    headers = {"Authorization": f"Bearer {made['token']}"}
    r = await client.post("/v1/attachments/raw", headers=headers, content=b"t" * 51)
    assert r.status_code == 403 and r.json()["type"].endswith("quota-exceeded")
    # the refused upload gave its use back: two more fit
    for _ in range(2):
        r = await client.post("/v1/attachments/raw", headers=headers, content=b"t" * 20)
        assert r.status_code == 201


def _cli(env: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STOWAGE, *args], env=env_for(env.res.settings), capture_output=True,
                          text=True, timeout=60)


async def test_cli_apps_update_and_list(client: Any, tenant: AppKey, env: Any) -> None:
    assert (await raw(client, tenant, b"q" * 123)).status_code == 201
    app = str(tenant.app_id)
    out = _cli(env, "apps", "update", app, "--quota-bytes", "10MB", "--rate-limit", "30")
    assert out.returncode == 0, out.stderr
    assert "quota=10000000" in out.stdout and "rate=30/min" in out.stdout
    listed = _cli(env, "apps", "list")
    line = next(x for x in listed.stdout.splitlines() if x.startswith(app))
    assert "attachments=1" in line and "bytes=123" in line and "quota=10000000" in line
    assert "rate=30/min" in line
    rows = json.loads(_cli(env, "apps", "list", "--json").stdout)
    mine = next(r for r in rows if r["app_id"] == app)
    assert (mine["bytes"], mine["attachments"], mine["quota_bytes"], mine["rate_limit"]) == (
        123, 1, 10_000_000, 30)
    out = _cli(env, "apps", "update", app, "--quota-bytes", "none", "--rate-limit", "0")
    assert out.returncode == 0 and "quota=none" in out.stdout and "rate=none" in out.stdout
    for bad, says in ((["--quota-bytes", "-5"], "not a number of bytes"),
                      (["--quota-bytes", "12XB"], "not a number of bytes"),
                      (["--quota-bytes", "99999999999TB"], "more bytes"),
                      (["--rate-limit", "fast"], "not a number of uploads"),
                      (["--rate-limit", "-1"], "not a number of uploads")):
        out = _cli(env, "apps", "update", app, *bad)
        assert out.returncode == 2 and says in out.stderr, (bad, out.stderr)
    out = _cli(env, "apps", "update", app)
    assert out.returncode == 1 and "nothing to update" in out.stderr
    out = _cli(env, "apps", "update", str(uuid.uuid4()), "--rate-limit", "5")
    assert out.returncode == 1 and "no app" in out.stderr


def _sample(text: str, name: str, app: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'{name}{{app="{app}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_usage_gauges_per_app_with_bounded_cardinality(env_factory: Any) -> None:
    env = await env_factory("file", metrics_max_apps=3)
    keys = []
    for i in range(5):
        new = await auth.create_app(env.res.pool, f"metered-{i}")
        keys.append(AppKey(new.app_id, new.api_key))
    await auth.update_limits(env.res.pool, keys[0].app_id, quota_bytes=10_000)
    async with api_client(env.res) as client:
        for i, key in enumerate(keys[:3]):  # 300, 200, 100 bytes
            assert (await raw(client, key, b"m" * (300 - 100 * i))).status_code == 201
        text = (await client.get("/metrics")).text
    series = [ln for ln in text.splitlines() if ln.startswith("stowage_app_bytes{")]
    assert len(series) == 3  # two apps by name, the rest together
    assert _sample(text, "stowage_app_bytes", str(keys[0].app_id)) == 300
    assert _sample(text, "stowage_app_bytes", str(keys[1].app_id)) == 200
    assert _sample(text, "stowage_app_bytes", "_other") == 100
    assert _sample(text, "stowage_app_attachments", str(keys[0].app_id)) == 1
    assert _sample(text, "stowage_app_attachments", "_other") == 1
    assert _sample(text, "stowage_app_quota_bytes", str(keys[0].app_id)) == 10_000
    # few apps: each by its id
    env.res.gauges.max_apps = 50
    async with api_client(env.res) as client:
        text = (await client.get("/metrics")).text
    assert _sample(text, "stowage_app_bytes", "_other") is None
    assert _sample(text, "stowage_app_bytes", str(keys[2].app_id)) == 100
