"""Uploads through the HTTP API: multipart and raw, limits, sniffing; refusals leave nothing."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from app.main import create_app
from tests.conftest import settings_with
from tests.helpers import jpeg_bytes, multipart_body, png_bytes


async def count_rows(res) -> int:
    async with res.pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM attachments")


async def assert_nothing_left(res, storage_files) -> None:
    assert await count_rows(res) == 0
    assert await storage_files() == ([], [])


async def test_multipart_upload_records_cached_attachment(client, tenant, storage_files):
    data = b"hello world\n" * 5000
    r = await client.post(
        "/v1/attachments", headers=tenant.headers,
        data={"metadata": '{"source": "test"}', "promote": "false"},
        files={"file": ("notes.txt", data, "image/png")},  # the client's type is ignored
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/attachments/{body['id']}"
    assert body["state"] == "cached"
    assert body["mime_type"] == "text/plain"
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["filename"] == "notes.txt"
    assert body["client_metadata"] == {"source": "test"}
    assert body["profile"] == "default"
    assert body["record"] is None
    cache, store = await storage_files()
    assert len(cache) == 1 and store == []


async def test_fields_after_the_file_are_honoured(client, tenant):
    body = multipart_body("XyZ", [
        ("file", "a.bin", b"\x00\x01binary"),
        ("record_type", None, b"user"), ("record_id", None, b"7"), ("record_name", None, b"cv"),
    ])
    r = await client.post("/v1/attachments", headers={
        **tenant.headers, "Content-Type": "multipart/form-data; boundary=XyZ"}, content=body)
    assert r.status_code == 201, r.text
    assert r.json()["record"] == {"type": "user", "id": "7", "name": "cv"}
    assert r.json()["mime_type"] == "application/octet-stream"


async def test_image_dimensions_follow_exif_orientation(client, tenant):
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("p.jpg", jpeg_bytes(64, 48, orientation=6))})
    assert r.status_code == 201
    assert r.json()["mime_type"] == "image/jpeg"
    assert r.json()["metadata"] == {"width": 48, "height": 64, "orientation": 6}
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("p.png", png_bytes(30, 20))})
    assert r.json()["metadata"] == {"width": 30, "height": 20, "orientation": 1}


async def test_raw_upload_streams_body(client, tenant):
    data = png_bytes(5, 7)
    r = await client.post("/v1/attachments/raw?filename=dot.png&promote=false&record_type=u"
                          "&record_id=1&record_name=avatar", headers=tenant.headers, content=data)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["mime_type"], body["size"]) == ("image/png", len(data))
    assert body["filename"] == "dot.png"
    assert body["record"] == {"type": "u", "id": "1", "name": "avatar"}


async def test_empty_raw_upload_is_accepted_as_octet_stream(client, tenant):
    r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=b"")
    assert r.status_code == 201
    assert (r.json()["size"], r.json()["mime_type"]) == (0, "application/octet-stream")


@pytest.fixture
async def small_limit_client(res, tmp_path, database_url):
    """The same resources, but a service-wide limit of 100 KB."""
    res.rewire(settings=settings_with(res.settings, max_upload_size=100_000))
    app = create_app(res.settings, res)
    app.state.services = res
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        yield c


@pytest.mark.parametrize("size", [100_001, 3_000_000])
async def test_too_large_multipart_is_413_and_leaves_nothing(small_limit_client, tenant, res,
                                                            storage_files, size):
    r = await small_limit_client.post("/v1/attachments", headers=tenant.headers,
                                      files={"file": ("big.bin", b"\x01" * size)})
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/upload-too-large")
    await assert_nothing_left(res, storage_files)


async def test_too_large_raw_is_413_even_without_content_length(small_limit_client, tenant, res,
                                                               storage_files):
    async def body():
        for _ in range(30):
            yield b"\x02" * 10_000

    r = await small_limit_client.post("/v1/attachments/raw", headers=tenant.headers,
                                      content=body())
    assert r.status_code == 413
    await assert_nothing_left(res, storage_files)
    r = await small_limit_client.post("/v1/attachments/raw", headers=tenant.headers,
                                      content=b"x" * 100_000)
    assert r.status_code == 201  # exactly at the limit is fine


@pytest.mark.parametrize("fields,detail", [
    ({"profile": "nope"}, "unknown-profile"),
    ({"record_type": "user"}, "invalid-record-slot"),
    ({"record_type": "user", "record_id": "1"}, "invalid-record-slot"),
    ({"metadata": "{not json"}, "invalid-input"),
    ({"metadata": "[1, 2]"}, "invalid-input"),
    ({"promote": "maybe"}, "invalid-input"),
])
async def test_bad_fields_are_422_and_leave_nothing(client, tenant, res, storage_files, fields,
                                                    detail):
    r = await client.post("/v1/attachments", headers=tenant.headers, data=fields,
                          files={"file": ("f.txt", b"text")})
    assert r.status_code == 422, r.text
    assert r.json()["type"].endswith(detail)
    assert r.json()["status"] == 422
    await assert_nothing_left(res, storage_files)


async def test_bad_field_after_the_file_still_leaves_nothing(client, tenant, res, storage_files):
    body = multipart_body("B0", [("file", "a.txt", b"abc" * 1000), ("profile", None, b"nope")])
    r = await client.post("/v1/attachments", headers={
        **tenant.headers, "Content-Type": "multipart/form-data; boundary=B0"}, content=body)
    assert r.status_code == 422
    await assert_nothing_left(res, storage_files)


async def test_raw_bad_query_is_422(client, tenant, res, storage_files):
    r = await client.post("/v1/attachments/raw?profile=nope", headers=tenant.headers,
                          content=b"abc")
    assert r.status_code == 422
    r = await client.post("/v1/attachments/raw?record_id=1", headers=tenant.headers,
                          content=b"abc")
    assert r.status_code == 422
    await assert_nothing_left(res, storage_files)


@pytest.mark.parametrize("body,ctype", [
    (b"--B1\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc",
     "multipart/form-data; boundary=B1"),  # truncated: no closing boundary
    (b"garbage without any boundary at all", "multipart/form-data; boundary=B1"),
    (b"--B1\r\nX-Nothing: here\r\n\r\nabc\r\n--B1--\r\n", "multipart/form-data; boundary=B1"),
    (b"abc", "multipart/form-data"),  # no boundary parameter
])
async def test_malformed_multipart_is_400_and_leaves_nothing(client, tenant, res, storage_files,
                                                             body, ctype):
    r = await client.post("/v1/attachments", headers={**tenant.headers, "Content-Type": ctype},
                          content=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    await assert_nothing_left(res, storage_files)


async def test_missing_file_part_is_422(client, tenant, res, storage_files):
    r = await client.post("/v1/attachments", headers=tenant.headers, data={"profile": "default"},
                          files={"other": ("x", b"")})
    assert r.status_code == 422
    body = multipart_body("B2", [("profile", None, b"default")])
    r = await client.post("/v1/attachments", headers={
        **tenant.headers, "Content-Type": "multipart/form-data; boundary=B2"}, content=body)
    assert r.status_code == 422
    assert "file" in r.json()["detail"]
    await assert_nothing_left(res, storage_files)


async def test_two_file_parts_are_refused_and_leave_nothing(client, tenant, res, storage_files):
    body = multipart_body("B3", [("file", "a", b"one"), ("file", "b", b"two")])
    r = await client.post("/v1/attachments", headers={
        **tenant.headers, "Content-Type": "multipart/form-data; boundary=B3"}, content=body)
    assert r.status_code == 422
    await assert_nothing_left(res, storage_files)


async def test_non_multipart_body_is_415(client, tenant):
    r = await client.post("/v1/attachments", headers={**tenant.headers,
                                                      "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 415
    assert r.json()["type"].endswith("unsupported-media-type")


async def test_multipart_data_resembling_the_boundary_survives_any_chunking(client, tenant):
    # near-boundaries force the parser to hold bytes back and emit them later (look-behind)
    # (never the whole delimiter "\r\n--XyZ", which a part may not contain)
    data = b"".join(b"line %d\r\n--Xy\r\n-\r\n--XyA\r\n--X" % i for i in range(3000))
    body = multipart_body("XyZ", [("file", "tricky.bin", data)])

    async def tiny_chunks():
        for i in range(0, len(body), 7):
            yield body[i:i + 7]

    r = await client.post("/v1/attachments", headers={
        **tenant.headers, "Content-Type": "multipart/form-data; boundary=XyZ"},
        content=tiny_chunks())
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(data)
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
