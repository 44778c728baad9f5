"""Auth, tenant scoping, reads, lists, downloads and the problem+json shape of every error."""

from __future__ import annotations

import pytest

from app.auth import service as auth
from tests.factories import Clock, on_clock, upload


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer stw_wrong"}, {"Authorization": "Basic abc"},
    {"Authorization": "Bearer"},
])
async def test_missing_or_wrong_key_is_401(client, headers):
    r = await client.get("/v1/attachments", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/unauthorized")


async def test_revoked_key_stops_working_at_once(client, res, tenant):
    extra = await auth.create_key(res.pool, tenant.app_id)
    headers = {"Authorization": f"Bearer {extra.api_key}"}
    assert (await client.get("/v1/attachments", headers=headers)).status_code == 200
    await auth.revoke_key(res.pool, extra.key_id)
    assert (await client.get("/v1/attachments", headers=headers)).status_code == 401
    assert (await client.get("/v1/attachments", headers=tenant.headers)).status_code == 200


async def test_keys_are_stored_hashed(res, tenant):
    async with res.pool.acquire() as conn:
        rows = await conn.fetch("SELECT key_hash, prefix FROM api_keys")
    assert rows and all(tenant.api_key.encode() not in bytes(r["key_hash"]) for r in rows)
    assert all(len(r["prefix"]) < 10 for r in rows)


async def test_other_apps_attachment_is_404(client, tenant, other_tenant):
    att = await upload(client, tenant)
    for method, path in [("GET", ""), ("GET", "/content"), ("DELETE", ""), ("POST", "/promote")]:
        r = await client.request(method, f"/v1/attachments/{att['id']}{path}",
                                 headers=other_tenant.headers)
        assert r.status_code == 404, (method, path)
        assert r.json()["type"].endswith("attachment-not-found")
    r = await client.get("/v1/attachments", headers=other_tenant.headers)
    assert r.json()["items"] == []


@pytest.mark.parametrize("att_id", ["not-a-uuid", "0193aaaa-0000-7000-8000-000000000000"],
                         ids=["malformed", "unknown"])
async def test_unknown_or_malformed_id_is_404(client, tenant, att_id):
    r = await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)
    assert r.status_code == 404
    assert r.json()["status"] == 404 and r.json()["detail"]


async def test_unknown_route_and_wrong_method_are_problems(client, tenant):
    r = await client.get("/v1/nothing-here", headers=tenant.headers)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    r = await client.put("/v1/attachments", headers=tenant.headers)
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 405


async def test_list_is_newest_first_with_cursor_and_filters(client, tenant):
    ids = [(await upload(client, tenant, f"file {i}".encode()))["id"] for i in range(5)]
    slot = await upload(client, tenant, b"slotted", record_type="user", record_id="9",
                        record_name="avatar")
    r = await client.get("/v1/attachments?limit=2", headers=tenant.headers)
    page = r.json()
    assert [a["id"] for a in page["items"]] == [slot["id"], ids[4]]
    seen = [a["id"] for a in page["items"]]
    while page["next_cursor"]:
        r = await client.get(f"/v1/attachments?limit=2&cursor={page['next_cursor']}",
                             headers=tenant.headers)
        page = r.json()
        seen += [a["id"] for a in page["items"]]
    assert seen == [slot["id"], *reversed(ids)]
    r = await client.get("/v1/attachments?record_type=user&record_id=9&record_name=avatar",
                         headers=tenant.headers)
    assert [a["id"] for a in r.json()["items"]] == [slot["id"]]
    r = await client.get("/v1/attachments?state=stored", headers=tenant.headers)
    assert r.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("query", ["state=bogus", "limit=0", "limit=1000", "cursor=%%%"])
async def test_bad_list_parameters_are_422(client, tenant, query):
    r = await client.get(f"/v1/attachments?{query}", headers=tenant.headers)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"


async def test_download_full_and_ranges(client, tenant):
    data = bytes(range(256)) * 40
    att = await upload(client, tenant, data)
    url = f"/v1/attachments/{att['id']}/content"
    r = await client.get(url, headers=tenant.headers)
    assert r.status_code == 200 and r.content == data
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{att["sha256"]}"'
    assert "f.txt" in r.headers["content-disposition"]
    for rng, expected, content_range in [
        ("bytes=10-19", data[10:20], f"bytes 10-19/{len(data)}"),
        ("bytes=10000-", data[10000:], f"bytes 10000-{len(data) - 1}/{len(data)}"),
        ("bytes=-5", data[-5:], f"bytes {len(data) - 5}-{len(data) - 1}/{len(data)}"),
        ("bytes=0-999999", data, f"bytes 0-{len(data) - 1}/{len(data)}"),
    ]:
        r = await client.get(url, headers={**tenant.headers, "Range": rng})
        assert r.status_code == 206, rng
        assert r.content == expected, rng
        assert r.headers["content-range"] == content_range
    r = await client.get(url, headers={**tenant.headers, "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"
    r = await client.get(url, headers={**tenant.headers, "If-None-Match": f'"{att["sha256"]}"'})
    assert r.status_code == 304


async def test_html_downloads_as_attachment(client, tenant):
    att = await upload(client, tenant, b"<!DOCTYPE html><html><script>alert(1)</script></html>")
    assert att["mime_type"] == "text/html"
    r = await client.get(f"/v1/attachments/{att['id']}/content", headers=tenant.headers)
    assert r.headers["content-disposition"].startswith("attachment")
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_openapi_lists_every_endpoint(client):
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in ["/v1/attachments", "/v1/attachments/raw", "/v1/attachments/{attachment_id}",
                 "/v1/attachments/{attachment_id}/promote",
                 "/v1/attachments/{attachment_id}/content", "/healthz", "/readyz"]:
        assert path in paths, path
    assert "multipart/form-data" in paths["/v1/attachments"]["post"]["requestBody"]["content"]
    problem_types = spec["components"]["schemas"]["Problem"]["description"]
    for slug in ["attachment-not-found", "upload-too-large", "tus-checksum-mismatch"]:
        assert slug in problem_types, slug


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"postgres": "ok", "redis": "ok", "cache": "ok", "store": "ok"}


async def test_signed_url_works_without_the_key_and_refuses_tampering(client, tenant):
    att = await upload(client, tenant, b"signed bytes")
    other = await upload(client, tenant, b"other")
    r = await client.get(att["url"])  # no Authorization header
    assert r.status_code == 200 and r.content == b"signed bytes"
    assert r.headers["x-content-type-options"] == "nosniff"
    r = await client.get(att["url"], headers={"Range": "bytes=0-5"})
    assert r.status_code == 206 and r.content == b"signed"
    token = att["url"].split("token=")[1]
    for bad in [att["url"][:-2] + "xx", other["url"].replace(other["id"], att["id"]),
                f"/v1/attachments/{att['id']}/content?token={token[::-1]}"]:
        r = await client.get(bad)
        assert r.status_code == 403, bad
        assert r.headers["content-type"] == "application/problem+json"
    r = await client.get(f"/v1/attachments/{att['id']}/content")
    assert r.status_code == 401  # neither a link nor a key


async def test_signed_url_expires(client, tenant, res):
    clock = Clock()
    short = on_clock(res.links, clock)
    short.ttl = 1
    res.rewire(links=short)
    att = await upload(client, tenant, b"short-lived")
    r = await client.get(att["url"])
    assert r.status_code == 200  # within its TTL
    clock.advance(3.1)  # a TTL of 1 s rounded up to its window: 1 to 2 s
    r = await client.get(att["url"])
    assert r.status_code == 403 and "expired" in r.json()["detail"]
