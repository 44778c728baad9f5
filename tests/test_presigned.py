"""Direct-to-S3 uploads: presign, POST to the bucket with httpx, register, and the refusals.
moto does not enforce POST policies, so the policy itself is checked on its own."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest

from app.storage.s3 import post_policy_conditions
from tests.conftest import is_marker, run_worker
from tests.helpers import png_bytes


async def presign(client, tenant, **body):
    r = await client.post("/v1/presigned-uploads", headers=tenant.headers,
                          json={"filename": "pic.png", "size": 100, **body})
    return r


async def post_to_bucket(p: dict, data: bytes) -> int:
    async with httpx.AsyncClient() as plain:
        r = await plain.post(p["url"], data=p["fields"], files={"file": ("f", data)})
    return r.status_code


async def test_presign_upload_register_promote(s3_env):
    res, client, tenant, _, _ = s3_env
    r = await presign(client, tenant)
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["method"] == "POST" and p["key"].startswith(f"{tenant.app_id}/")
    assert p["expires_at"]
    data = png_bytes(12, 8)
    assert await post_to_bucket(p, data) in (200, 201, 204)
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": p["key"], "record_type": "u", "record_id": "1",
                                "record_name": "pic", "metadata": {"k": "v"}})
    assert r.status_code == 201, r.text
    att = r.json()
    assert p["key"] == f"{tenant.app_id}/{att['id']}/upload"  # no copy: it is already home
    assert (att["mime_type"], att["size"], att["metadata"]) == (
        "image/png", len(data), {"width": 12, "height": 8, "orientation": 1})
    assert att["filename"] == "pic.png" and att["client_metadata"] == {"k": "v"}
    await run_worker(res)
    r = await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    assert r.json()["state"] == "stored"
    # registering twice is refused
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": p["key"]})
    assert r.status_code == 422


async def test_register_refusals_leave_nothing(s3_env, s3_client, other_tenant_s3):
    res, client, tenant, cache_bucket, _ = s3_env
    p = (await presign(client, tenant)).json()
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": p["key"]})
    assert r.status_code == 422 and "nothing has been uploaded" in r.json()["detail"]
    # the presign is still usable after that
    assert await post_to_bucket(p, b"x" * (21 * 1024 * 1024)) in (200, 201, 204)
    other = await other_tenant_s3(res)
    r = await client.post("/v1/attachments", headers=other.headers,
                          json={"cached_key": p["key"]})
    assert r.status_code == 422  # another app's presign
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": p["key"]})
    assert r.status_code == 413  # moto let the oversized object in; registration does not
    listed = await s3_client.list_objects_v2(Bucket=cache_bucket)
    assert [o for o in listed.get("Contents", []) if not is_marker(o["Key"])] == []
    async with res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachments") == 0
    for bad in [{"cached_key": "made/up/key"}, {"nope": 1},
                {"cached_key": p["key"], "record_type": "x"},
                {"cached_key": p["key"], "metadata": {"big": "x" * 20_000}},
                {"cached_key": p["key"], "metadata": [1, 2]}]:
        r = await client.post("/v1/attachments", headers=tenant.headers, json=bad)
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == "application/problem+json"


@pytest.fixture
def other_tenant_s3():
    from app.auth import service as auth
    from tests.conftest import AppKey

    async def make(res):
        new = await auth.create_app(res.pool, "other")
        return AppKey(new.app_id, new.api_key)

    return make


async def test_presign_limits(s3_env):
    _, client, tenant, _, _ = s3_env
    r = await presign(client, tenant, size=21 * 1024 * 1024)
    assert r.status_code == 413
    r = await presign(client, tenant, profile="nope")
    assert r.status_code == 422
    r = await presign(client, tenant, size=-1)
    assert r.status_code == 422


async def test_presign_needs_an_s3_cache(client, tenant):
    r = await presign(client, tenant)  # the default fixtures cache on the filesystem
    assert r.status_code == 409 and "S3" in r.json()["detail"]
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": "a/b/upload"})
    assert r.status_code == 409


def test_post_policy_limits_size_and_key():
    assert post_policy_conditions(5000) == [["content-length-range", 0, 5000]]


async def test_policy_pins_key_and_size(s3_env):
    _, client, tenant, cache_bucket, _ = s3_env
    p = (await presign(client, tenant, size=10)).json()
    policy = json.loads(base64.b64decode(p["fields"]["policy"]))
    conditions = policy["conditions"]
    assert {"key": p["key"]} in conditions and {"bucket": cache_bucket} in conditions
    assert ["content-length-range", 0, 10] in conditions  # the declared size
    assert policy["expiration"]


async def test_sweep_removes_expired_unregistered_uploads(s3_env, s3_client):
    res, client, tenant, cache_bucket, _ = s3_env
    p = (await presign(client, tenant)).json()
    await post_to_bucket(p, b"abandoned")
    async with res.pool.acquire() as conn:
        await conn.execute("UPDATE presigned_uploads SET expires_at = now() - interval '2 days'")
    report = await res.sweep.run()
    assert report.presigns_expired == 1
    listed = await s3_client.list_objects_v2(Bucket=cache_bucket)
    assert [o for o in listed.get("Contents", []) if not is_marker(o["Key"])] == []
    assert uuid.UUID(p["key"].split("/")[1])
