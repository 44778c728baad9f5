"""Bad upload options are refused with 422 (or 400 for a broken multipart header) before
anything is written: no row, no tus upload, no cached object. Every upload mode goes through
the same checks (app/uploads/options.py): multipart, raw, tus creation, JSON registration."""

from __future__ import annotations

import base64
import json
import random
import secrets
import time
from typing import Any

import httpx
import pytest

from app.uploads.options import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_RECORD_ID,
    MAX_RECORD_NAME,
    MAX_RECORD_TYPE,
    json_nests_deeper,
)
from tests.conftest import is_marker, run_worker
from tests.helpers import multipart_body

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}
DATA = b"hello, limits\n" * 10
SLOT = {"record_type": "user", "record_id": "42", "record_name": "avatar"}
MODES = ["multipart", "raw", "tus"]


# --- helpers ----------------------------------------------------------------------------------

def tus_metadata(fields: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


async def upload(client: httpx.AsyncClient, tenant: Any, mode: str, fields: dict[str, str],
                 data: bytes = DATA) -> httpx.Response:
    """One upload of ``data`` with ``fields`` as its options, in the given mode."""
    if mode == "multipart":
        return await client.post("/v1/attachments", headers=tenant.headers, data=fields,
                                 files={"file": ("f.txt", data, "text/plain")})
    if mode == "raw":
        return await client.post("/v1/attachments/raw", headers=tenant.headers, params=fields,
                                 content=data)
    assert mode == "tus"  # creation-with-upload: the whole file in the creating POST
    return await client.post("/v1/tus/", content=data, headers={
        **tenant.headers, **TUS, **OCTETS, "Upload-Length": str(len(data)),
        "Upload-Metadata": tus_metadata(fields)})


async def rows(res: Any, table: str) -> int:
    async with res.pool.acquire() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def assert_nothing_written(res: Any, storage_files: Any) -> None:
    assert await rows(res, "attachments") == 0
    assert await rows(res, "tus_uploads") == 0
    assert await storage_files() == ([], [])


def assert_refused(r: httpx.Response, field: str, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem.get("field") == field, problem
    return problem


def four_byte_text(n: int) -> str:
    """``n`` random characters of four UTF-8 bytes each: the most index space per character,
    and nothing for Postgres' compression to shrink."""
    rnd = random.Random(n)
    return "".join(chr(rnd.randrange(0x10000, 0x10FFFF)) for _ in range(n))


def nested(depth: int) -> dict[str, Any]:
    """A metadata object ``depth`` levels deep (the object itself is level 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


# --- record slot limits (items 4 and 6) ---------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("field", "limit"), [
    ("record_type", MAX_RECORD_TYPE), ("record_id", MAX_RECORD_ID),
    ("record_name", MAX_RECORD_NAME)])
async def test_record_parts_over_their_limit_are_refused(client, tenant, res, storage_files,
                                                         mode, field, limit):
    r = await upload(client, tenant, mode, {**SLOT, field: "x" * (limit + 1)})
    problem = assert_refused(r, field)
    assert str(limit) in problem["detail"]
    await assert_nothing_written(res, storage_files)


async def test_tus_record_over_the_index_limit_is_refused_at_creation(client, tenant, res,
                                                                      storage_files):
    """It used to be created, then every PATCH and HEAD answered 500 (the slot index refused
    the attachment row) and the sweep retried the completion for 24 hours."""
    meta = tus_metadata({**SLOT, "record_id": secrets.token_urlsafe(2250)})  # 3000 characters
    r = await client.post("/v1/tus/", headers={**tenant.headers, **TUS, "Upload-Length": "5",
                                               "Upload-Metadata": meta})
    assert_refused(r, "record_id")
    await assert_nothing_written(res, storage_files)


async def test_a_stored_tus_upload_with_options_now_refused_is_dropped(client, tenant, res,
                                                                       storage_files):
    """An upload created before the limits existed (its options were never checked against
    them) is refused at completion like a refused file, not retried with 500s forever."""
    r = await client.post("/v1/tus/", headers={**tenant.headers, **TUS, "Upload-Length": "5",
                                               "Upload-Metadata": tus_metadata(SLOT)})
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    async with res.pool.acquire() as conn:
        options = await conn.fetchval("SELECT options FROM tus_uploads")
        options["record"][1] = secrets.token_urlsafe(2250)
        await conn.execute("UPDATE tus_uploads SET options = $1", options)
    r = await client.patch(location, content=b"12345", headers={
        **tenant.headers, **TUS, **OCTETS, "Upload-Offset": "0"})
    assert_refused(r, "record_id")
    r = await client.head(location, headers={**tenant.headers, **TUS})
    assert r.status_code == 404
    await assert_nothing_written(res, storage_files)


async def test_longest_record_slot_fits_the_index(client, tenant, res):
    """The limits are characters; even four-byte ones at every limit make an index entry
    Postgres accepts, for the upload and for the promotion that replaces the slot."""
    slot = {"record_type": four_byte_text(MAX_RECORD_TYPE),
            "record_id": four_byte_text(MAX_RECORD_ID),
            "record_name": four_byte_text(MAX_RECORD_NAME)}
    ids = []
    for _ in range(2):
        r = await upload(client, tenant, "multipart", slot)
        assert r.status_code == 201, r.text
        assert r.json()["record"] == {"type": slot["record_type"], "id": slot["record_id"],
                                      "name": slot["record_name"]}
        ids.append(r.json()["id"])
        await run_worker(res)
    first = (await client.get(f"/v1/attachments/{ids[0]}", headers=tenant.headers)).json()
    second = (await client.get(f"/v1/attachments/{ids[1]}", headers=tenant.headers)).json()
    assert (first["state"], second["state"]) == ("deleted", "stored")
    r = await client.get("/v1/attachments", headers=tenant.headers,
                         params={**slot, "state": "stored"})
    assert [a["id"] for a in r.json()["items"]] == [ids[1]]


# --- NUL characters (item 7) --------------------------------------------------------------------

NUL_CASES = [
    ("filename", {"filename": "cat\x00.php"}),
    ("record_type", {**SLOT, "record_type": "us\x00er"}),
    ("record_id", {**SLOT, "record_id": "\x00"}),
    ("record_name", {**SLOT, "record_name": "avatar\x00"}),
    ("metadata", {"metadata": '{"a": "x\\u0000y"}'}),
    ("metadata", {"metadata": '{"a\\u0000": 1}'}),
    ("metadata", {"metadata": '{"a": [{"b": {"c": "\\u0000"}}]}'}),
    ("metadata", {"metadata": '{"a": "x\x00y"}'}),  # a raw NUL: json.loads refuses it
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("field", "fields"), NUL_CASES)
async def test_nul_characters_are_refused(client, tenant, res, storage_files, mode, field,
                                          fields):
    r = await upload(client, tenant, mode, fields)
    assert_refused(r, field)
    await assert_nothing_written(res, storage_files)


async def test_nul_in_the_file_parts_filename_is_refused_before_the_bytes(client, tenant, res,
                                                                          storage_files):
    body = multipart_body("b0undary", [("file", "cat\x00.php", DATA)])
    r = await client.post("/v1/attachments", content=body, headers={
        **tenant.headers, "Content-Type": "multipart/form-data; boundary=b0undary"})
    assert_refused(r, "filename")
    await assert_nothing_written(res, storage_files)


@pytest.mark.parametrize("raw_meta", [
    '{"a": NaN}', '{"a": [Infinity]}', '{"a": -Infinity}',  # JSON has no such numbers
    '{"a": 1e999}',  # read as infinity
    '{"a": "\\ud800"}',  # a lone surrogate: not a character, Postgres refuses it
    '{"a": ' + "1" * 5000 + "}",  # more digits than Python converts to an int
])
@pytest.mark.parametrize("mode", ["multipart", "tus"])
async def test_metadata_postgres_cannot_hold_is_refused(client, tenant, res, storage_files,
                                                        mode, raw_meta):
    r = await upload(client, tenant, mode, {"metadata": raw_meta})
    assert_refused(r, "metadata")
    await assert_nothing_written(res, storage_files)


async def test_list_filters_with_nul_are_refused(client, tenant):
    for name in ("record_type", "record_id", "record_name"):
        r = await client.get("/v1/attachments", headers=tenant.headers, params={name: "a\x00"})
        assert_refused(r, name)


# --- metadata depth (item 8) --------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
async def test_metadata_depth_limit(client, tenant, res, storage_files, mode):
    r = await upload(client, tenant, mode, {"metadata": json.dumps(nested(MAX_METADATA_DEPTH))})
    assert r.status_code == 201, r.text
    att_id = r.headers.get("stowage-attachment-id") or r.json()["id"]  # tus: no body
    att = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
    assert att["client_metadata"] == nested(MAX_METADATA_DEPTH)
    before = await storage_files()  # the accepted upload's file
    r = await upload(client, tenant, mode,
                     {"metadata": json.dumps(nested(MAX_METADATA_DEPTH + 1))})
    problem = assert_refused(r, "metadata")
    assert str(MAX_METADATA_DEPTH) in problem["detail"]
    assert await rows(res, "attachments") == 1
    assert await rows(res, "tus_uploads") == (1 if mode == "tus" else 0)  # the first one's
    assert await storage_files() == before


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("raw_meta", [
    "[" * MAX_METADATA_BYTES,  # every byte of the size limit an open bracket
    '{"a": ' + "[" * (MAX_METADATA_BYTES - 10) + "}",
    '{"a": ' + '{"b": ' * 2000 + "1" + "}" * 2001,  # well-formed, too deep
])
async def test_deep_nesting_within_the_size_limit_never_reaches_the_parser(
        client, tenant, res, storage_files, mode, raw_meta):
    assert len(raw_meta.encode()) <= MAX_METADATA_BYTES
    r = await upload(client, tenant, mode, {"metadata": raw_meta})
    assert_refused(r, "metadata")
    await assert_nothing_written(res, storage_files)


@pytest.mark.parametrize(("text", "depth"), [
    ('{"a": "\\\\"}', 1), ('{"a": "\\"[[[["}', 1), ('[[["]"]]]', 3),
    ('{"a\\"[": [[1]]}', 3), ('{"a": "\\\\", "b": [[{}]]}', 4), ("[" * 17 + "]" * 17, 17),
    ("[" + ", ".join(['{"a": [1]}'] * 20) + "]", 3),
])
def test_nesting_is_measured_like_the_parser_reads_it(text, depth):
    json.loads(text)  # the cases are JSON
    assert not json_nests_deeper(text, depth)
    assert json_nests_deeper(text, depth - 1)


def test_measuring_nesting_takes_linear_time():
    """An unclosed string full of escaped quotes (and brackets, past the quick count): a
    pattern matching whole strings would be retried from every quote."""
    started = time.perf_counter()
    assert not json_nests_deeper('"' + '\\"' * 85_000 + "[" * 20, 16)
    assert not json_nests_deeper('"' + '\\"[{' * 60_000, 16)
    assert time.perf_counter() - started < 2  # 0.05 s; quadratic: minutes


# --- multipart boundary (item 9) ----------------------------------------------------------------

@pytest.mark.parametrize(("length", "status"), [(70, 201), (256, 201), (257, 400), (5000, 400)])
async def test_multipart_boundary_length(client, tenant, res, storage_files, length, status):
    boundary = ("b" * length)
    body = multipart_body(boundary, [("file", "f.txt", DATA)])
    r = await client.post("/v1/attachments", content=body, headers={
        **tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == status, r.text
    if status == 400:
        assert r.headers["content-type"] == "application/problem+json"
        assert "boundary" in r.json()["detail"] and "256" in r.json()["detail"]
        await assert_nothing_written(res, storage_files)


# --- JSON registration of a presigned upload (items 6, 7, 8, 10) -------------------------------

async def presigned_object(client: httpx.AsyncClient, tenant: Any) -> str:
    r = await client.post("/v1/presigned-uploads", headers=tenant.headers,
                          json={"filename": "f.txt", "size": len(DATA)})
    assert r.status_code == 201, r.text
    p = r.json()
    async with httpx.AsyncClient() as plain:
        up = await plain.post(p["url"], data=p["fields"], files={"file": ("f", DATA)})
    assert up.status_code in (200, 201, 204), up.text
    return p["key"]


async def s3_objects(s3_client: Any, bucket: str) -> list[str]:
    listed = await s3_client.list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listed.get("Contents", []) if not is_marker(o["Key"])]


@pytest.mark.parametrize(("field", "extra"), [
    ("record_type", {**SLOT, "record_type": "x" * (MAX_RECORD_TYPE + 1)}),
    ("record_id", {**SLOT, "record_id": secrets.token_urlsafe(2250)}),
    ("record_name", {**SLOT, "record_name": "x" * (MAX_RECORD_NAME + 1)}),
    ("filename", {"filename": "a\x00b"}),
    ("record_id", {**SLOT, "record_id": "4\x002"}),
    ("metadata", {"metadata": {"a": "\x00"}}),
    ("metadata", {"metadata": {"a": [{"b\x00": 1}]}}),
    ("metadata", {"metadata": nested(MAX_METADATA_DEPTH + 1)}),
])
async def test_json_registration_refuses_bad_options(s3_env, s3_client, field, extra):
    res, client, tenant, cache_bucket, _ = s3_env
    key = await presigned_object(client, tenant)
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": key, **extra})
    assert_refused(r, field)
    assert await rows(res, "attachments") == 0
    # the client's object is untouched: registering it with good options still works
    assert await s3_objects(s3_client, cache_bucket) == [key]
    r = await client.post("/v1/attachments", headers=tenant.headers, json={"cached_key": key})
    assert r.status_code == 201, r.text


async def test_presign_refuses_a_nul_in_the_filename(s3_env, s3_client):
    res, client, tenant, cache_bucket, _ = s3_env
    r = await client.post("/v1/presigned-uploads", headers=tenant.headers,
                          json={"filename": "a\x00.png", "size": 10})
    assert_refused(r, "filename")
    assert await rows(res, "presigned_uploads") == 0
    assert await s3_objects(s3_client, cache_bucket) == []


@pytest.mark.parametrize("body", [
    '{"cached_key": "k", "metadata": {"a": NaN}}',
    '{"cached_key": "k", "metadata": {"a": 1e999}}',
    '{"cached_key": "k", "metadata": {"a": "\\u0000"}}',
    '{"cached_key": "k", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"cached_key": "k", "metadata": ' + '{"a":' * 100 + "1" + "}" * 100 + "}",
])
async def test_json_registration_metadata_parsing_is_safe(s3_env, body):
    res, client, tenant, _, _ = s3_env
    key = await presigned_object(client, tenant)
    r = await client.post("/v1/attachments", content=body.replace('"k"', json.dumps(key)),
                          headers={**tenant.headers, "Content-Type": "application/json"})
    assert_refused(r, "metadata")
    assert await rows(res, "attachments") == 0


@pytest.mark.parametrize("cached_key", [
    "", "../x", "..", "/abs/upload", "a//b", "a\\b", "x\x00y", "made/up/key",
    "00000000-0000-0000-0000-000000000000/00000000-0000-0000-0000-000000000000/upload",
    "x" * 100_000,
])
async def test_json_registration_refuses_invalid_cached_keys(s3_env, s3_client, cached_key):
    res, client, tenant, cache_bucket, _ = s3_env
    key = await presigned_object(client, tenant)
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": cached_key})
    assert_refused(r, "cached_key")
    assert await rows(res, "attachments") == 0
    assert await s3_objects(s3_client, cache_bucket) == [key]


async def test_json_registration_refuses_another_apps_key(s3_env, s3_client):
    from app.auth import service as auth
    from tests.conftest import AppKey

    res, client, tenant, cache_bucket, _ = s3_env
    key = await presigned_object(client, tenant)
    new = await auth.create_app(res.pool, "other")
    other = AppKey(new.app_id, new.api_key)
    r = await client.post("/v1/attachments", headers=other.headers, json={"cached_key": key})
    assert_refused(r, "cached_key")
    # a refusal for the wrong app leaves the owner's upload alone
    assert await s3_objects(s3_client, cache_bucket) == [key]
    r = await client.post("/v1/attachments", headers=tenant.headers, json={"cached_key": key})
    assert r.status_code == 201, r.text


async def test_json_registration_body_is_capped(s3_env):
    _, client, tenant, _, _ = s3_env
    # valid JSON, small options: only its size is wrong
    body = '{"cached_key": "k"' + " " * (1024 * 1024) + "}"
    r = await client.post("/v1/attachments", content=body,
                          headers={**tenant.headers, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"


# --- the OpenAPI document says the same --------------------------------------------------------

async def test_openapi_documents_the_limits(client):
    spec = (await client.get("/openapi.json")).json()
    form = spec["paths"]["/v1/attachments"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
    raw = {p["name"]: p.get("schema") for p in spec["paths"]["/v1/attachments/raw"]["post"][
        "parameters"]}
    register = spec["components"]["schemas"]["RegisterRequest"]["properties"]
    for field, limit in [("record_type", MAX_RECORD_TYPE), ("record_id", MAX_RECORD_ID),
                         ("record_name", MAX_RECORD_NAME)]:
        assert form[field]["maxLength"] == limit
        assert raw[field]["maxLength"] == limit
        assert register[field]["maxLength"] == limit
    # metadata is the ClientMetadata object everywhere, its limits in its description
    client_metadata = spec["components"]["schemas"]["ClientMetadata"]
    assert str(MAX_METADATA_BYTES) in client_metadata["description"]
    assert "16 levels" in client_metadata["description"]
    for where in (form["metadata"], register["metadata"]):
        assert where == {"$ref": "#/components/schemas/ClientMetadata"}
