"""The whole lifecycle with both storages on S3 (a moto server): server-side promotion copy,
redirect downloads, deletion, and refused uploads that leave no object and no multipart upload."""

from __future__ import annotations

import secrets

import httpx

from tests.conftest import fresh_resources, is_marker, make_settings, run_worker


async def bucket_keys(s3_client, bucket: str) -> list[str]:
    resp = await s3_client.list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []) if not is_marker(o["Key"]))


async def test_lifecycle_on_s3(s3_env, s3_client):
    res, client, tenant, cache_bucket, store_bucket = s3_env
    data = secrets.token_bytes(9 * 1024 * 1024)  # over the 8 MiB multipart threshold
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("blob.bin", data)})
    assert r.status_code == 201, r.text
    att = r.json()
    assert len(await bucket_keys(s3_client, cache_bucket)) == 1
    await run_worker(res)
    r = await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    assert r.json()["state"] == "stored"
    assert await bucket_keys(s3_client, cache_bucket) == []
    stored = await bucket_keys(s3_client, store_bucket)
    assert len(stored) == 1 and stored[0].startswith(f"files/{tenant.app_id}/{att['id']}/")
    head = await s3_client.head_object(Bucket=store_bucket, Key=stored[0])
    assert head["ContentType"] == "application/octet-stream"

    r = await client.get(f"/v1/attachments/{att['id']}/content", headers=tenant.headers)
    assert r.status_code == 307
    async with httpx.AsyncClient() as plain:
        got = await plain.get(r.headers["location"])
    assert got.status_code == 200 and got.content == data
    assert "blob.bin" in got.headers["content-disposition"]

    await client.delete(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    await run_worker(res)
    assert await bucket_keys(s3_client, store_bucket) == []


async def test_refused_s3_upload_leaves_no_object_or_multipart(s3_env, s3_client):
    res, client, tenant, cache_bucket, _ = s3_env
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("big.bin", b"\x01" * (21 * 1024 * 1024))})
    assert r.status_code == 413
    assert await bucket_keys(s3_client, cache_bucket) == []
    uploads = await s3_client.list_multipart_uploads(Bucket=cache_bucket)
    assert uploads.get("Uploads", []) == []
    async with res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachments") == 0


async def test_presigned_urls_use_the_public_endpoint_and_sigv4(tmp_path, database_url,
                                                                moto_endpoint, s3_client):
    bucket = f"pub-{secrets.token_hex(4)}"
    await s3_client.create_bucket(Bucket=bucket)
    settings = make_settings(tmp_path, database_url, cache_url=f"s3://{bucket}",
                             store_url=f"s3://{bucket}/store", s3_endpoint_url=moto_endpoint,
                             s3_region="us-east-1",
                             s3_public_endpoint_url="http://files.example.test:9000")
    async with fresh_resources(settings) as res:
        url = await res.store.presigned_get_url("a/b", expires_in=60)
        post = await res.cache.presigned_post("a/c", max_size=10, expires_in=60)
    assert url.startswith(f"http://files.example.test:9000/{bucket}/store/a/b?")
    assert "X-Amz-Signature=" in url and "AWSAccessKeyId" not in url
    assert post.url.startswith("http://files.example.test:9000/")
