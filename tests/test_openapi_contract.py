"""The OpenAPI document is the truth: one focused test per place where the document and the
server used to disagree (issue 16, item 5). tests/test_openapi_fuzz.py fuzzes the whole
document; these pin each fix down so that it cannot come undone unnoticed."""

from __future__ import annotations

import asyncio
import json
import re
from uuid import UUID

import pytest

from tests.conftest import wait_for


async def waiting_on_a_lock(res) -> bool:
    """Some statement of this test's database waits on a lock (a row another holds)."""
    async with res.pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'") > 0


async def _spec(client) -> dict:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _schema(spec: dict, name: str) -> dict:
    return spec["components"]["schemas"][name]


# --- webhook endpoints ----------------------------------------------------------------------

async def test_webhook_events_must_not_be_empty_in_schema_and_server(client, tenant):
    spec = await _spec(client)
    for model in ("EndpointCreate", "EndpointPatch"):
        events = _schema(spec, model)["properties"]["events"]
        array = next(s for s in events["anyOf"] if s.get("type") == "array")
        assert array["minItems"] == 1, model
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": "https://example.com/h", "events": []})
    assert r.status_code == 422


URLS = [
    # (url, accepted): the schema's pattern and the server must agree on every one
    ("https://example.com/hooks?x=1#f", True),
    ("http://0", True),
    ("http://user:pa%20ss@example.com:8080/h", True),
    ("http://[::ffff:8.8.8.8]/h", True),
    ("https://[2001:db8::1]:443/", True),
    ("http://xn--bcher-kva.example/", True),
    # these three were admitted by the old pattern and answered 500 or were unusable
    ("http://\u00ed\U0001f3fb0\u00e7;\u00a5Y\u0000", False),
    ("http://h\u0000/x", False),
    ("http://bücher.example/", False),
    ("http://[::1/x", False),
    ("http://[:::]/", False),
    ("http://example.com:65536/", False),
    ("http://exa mple.com/", False),
    ("http://example.com/a b", False),
    ("ftp://example.com/", False),
    ("http:///nohost", False),
]


@pytest.mark.parametrize(("url", "accepted"), URLS)
async def test_webhook_url_rule_is_one_rule(client, tenant, url, accepted):
    spec = await _spec(client)
    pattern = _schema(spec, "EndpointCreate")["properties"]["url"]["pattern"]
    assert bool(re.search(pattern, url)) is accepted
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers, json={"url": url})
    assert r.status_code == (201 if accepted else 422), r.text
    assert r.headers["content-type"] == ("application/json" if accepted
                                         else "application/problem+json")


@pytest.mark.parametrize("description", ["a\u0000b", "\ud800"])
async def test_webhook_description_postgres_cannot_hold_is_422(client, tenant, description):
    body = json.dumps({"url": "https://example.com/h", "description": description})
    r = await client.post("/v1/webhook-endpoints", content=body,
                          headers={**tenant.headers, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    listed = await client.get("/v1/webhook-endpoints", headers=tenant.headers)
    assert listed.json()["items"] == []


# --- cursors --------------------------------------------------------------------------------

async def test_cursor_pattern_is_stated_and_enforced(client, tenant):
    spec = await _spec(client)
    for path in ("/v1/attachments", "/v1/webhook-endpoints",
                 "/v1/webhook-endpoints/{endpoint_id}/deliveries"):
        cursor = next(p for p in spec["paths"][path]["get"]["parameters"]
                      if p["name"] == "cursor")
        pattern = next(s for s in cursor["schema"]["anyOf"] if s.get("type") == "string"
                       )["pattern"]
        assert pattern == "^[A-Za-z0-9_-]{22}$", path
    # what the schema admits is a position, answered 200 ...
    r = await client.get("/v1/attachments", params={"cursor": "A" * 22}, headers=tenant.headers)
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    # ... what it refuses, the server refuses too
    for bad in ("Ü", "A" * 21, "A" * 23, "A" * 21 + "="):
        r = await client.get("/v1/webhook-endpoints", params={"cursor": bad},
                             headers=tenant.headers)
        assert r.status_code == 422, bad


# --- found by the fuzzer: a 500 ---------------------------------------------------------------

async def test_deleting_an_attachment_while_an_endpoint_is_deleted_is_no_500(res, client,
                                                                             tenant):
    """The attachment.deleted event fans out to the app's endpoints; one being deleted at the
    same moment used to fail the foreign key check of its delivery (500)."""
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": "https://example.com/h"})
    endpoint_id = r.json()["id"]
    r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=b"x",
                          params={"promote": "false"})
    att_id = r.json()["id"]
    async with res.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", UUID(endpoint_id))
        deleting = asyncio.create_task(
            client.delete(f"/v1/attachments/{att_id}", headers=tenant.headers))
        # the DELETE of the attachment waits on the endpoint's row
        await wait_for(lambda: waiting_on_a_lock(res), within=10, interval=0.02)
        await tx.commit()
    r = await deleting
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "deleted"


# --- uploads --------------------------------------------------------------------------------

@pytest.mark.parametrize("promote", ["1", "yes", "True", ""])
async def test_promote_is_only_true_or_false(client, tenant, promote):
    spec = await _spec(client)
    raw = _operation(spec, "/v1/attachments/raw", "post")
    schema = next(p for p in raw["parameters"] if p["name"] == "promote")["schema"]
    assert schema["enum"] == ["true", "false"]
    r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=b"x",
                          params={"promote": promote})
    assert r.status_code == 422, r.text
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("a.txt", b"x")}, data={"promote": promote})
    assert r.status_code == 422, r.text
    assert (await client.get("/v1/attachments", headers=tenant.headers)).json()["items"] == []


async def test_metadata_is_the_client_metadata_object(client, tenant):
    spec = await _spec(client)
    form = spec["paths"]["/v1/attachments"]["post"]["requestBody"]["content"][
        "multipart/form-data"]
    assert form["schema"]["properties"]["metadata"] == {
        "$ref": "#/components/schemas/ClientMetadata"}
    assert form["encoding"]["metadata"]["contentType"] == "application/json"
    for bad in ["", "[]", "0", '{"a": "\\u0000"}']:
        r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=b"x",
                              params={"metadata": bad})
        assert r.status_code == 422, bad
    r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=b"x",
                          params={"metadata": '{"a": [1, {"b": null}]}'})
    assert r.status_code == 201 and r.json()["client_metadata"] == {"a": [1, {"b": None}]}


async def test_multipart_slot_parts_may_follow_the_file_part(client, tenant):
    """The slot used to be judged whole when the file part began: a record_type before the
    file and record_id/record_name after it was refused as an incomplete slot."""
    boundary = "b0undary"
    parts = [("record_type", None, b"user"), ("file", "a.txt", b"hello"),
             ("record_id", None, b"42"), ("record_name", None, b"avatar")]
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"'
                                                      if filename else "")
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                 + value + b"\r\n")
    body += f"--{boundary}--\r\n".encode()
    r = await client.post("/v1/attachments", content=body, headers={
        **tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 201, r.text
    assert r.json()["record"] == {"type": "user", "id": "42", "name": "avatar"}


async def test_slot_all_or_none_is_in_the_schemas(client):
    spec = await _spec(client)
    form = spec["paths"]["/v1/attachments"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]
    for schema in (form, _schema(spec, "RegisterRequest")):
        whole = next(b for b in schema["anyOf"] if "required" in b)
        assert whole["required"] == ["record_type", "record_id", "record_name"]


async def test_raw_body_is_optional_an_empty_body_is_an_empty_file(client, tenant):
    spec = await _spec(client)
    assert _operation(spec, "/v1/attachments/raw", "post")["requestBody"]["required"] is False
    r = await client.post("/v1/attachments/raw", headers=tenant.headers)
    assert r.status_code == 201 and r.json()["size"] == 0


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
async def test_raw_has_only_post(client, tenant, method):
    r = await client.request(method, "/v1/attachments/raw", headers=tenant.headers)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.headers["content-type"] == "application/problem+json"


async def test_presign_size_is_an_integer_as_json_schema_has_it(client, tenant):
    for size, status in [(10.0, 409), ("10", 422), (True, 422), (10.5, 422)]:
        r = await client.post("/v1/presigned-uploads", headers=tenant.headers,
                              json={"filename": "a", "size": size})
        assert r.status_code == status, (size, r.text)  # 409: the tests' cache is no S3


@pytest.mark.parametrize("value", ["true", 1])
async def test_webhook_booleans_are_booleans(client, tenant, value):
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": "https://example.com/h"})
    r = await client.patch(f"/v1/webhook-endpoints/{r.json()['id']}", headers=tenant.headers,
                           json={"rotate_secret": value})
    assert r.status_code == 422


# --- settings and security ------------------------------------------------------------------

async def test_wait_states_its_maximum_and_the_setting(tmp_path, database_url):
    from app.main import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path, database_url, long_poll_max=7))
    wait = _parameter(_operation(app.openapi(), "/v1/attachments/{attachment_id}", "get"),
                      "wait")
    assert wait["schema"]["maximum"] == 60
    assert "STOWAGE_LONG_POLL_MAX" in wait["description"] and "(7 here)" in wait["description"]


async def test_downloads_declare_the_signed_link_as_an_alternative(client, tenant):
    spec = await _spec(client)
    scheme = spec["components"]["securitySchemes"]["signedLink"]
    assert scheme == {**scheme, "type": "apiKey", "in": "query", "name": "token"}
    for path in ("/v1/attachments/{attachment_id}/content",
                 "/v1/attachments/{attachment_id}/derivatives/{name}"):
        op = _operation(spec, path, "get")
        assert op["security"] == [{"HTTPBearer": []}, {"signedLink": []}]
        assert "token" not in [p["name"] for p in op["parameters"]]
    r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=b"x")
    url = r.json()["url"]
    r = await client.get(url.replace("http://127.0.0.1:8000", ""))
    assert r.status_code == 200 and r.content == b"x"


async def test_tus_post_to_an_upload_without_override_is_405(client, tenant):
    r = await client.post("/v1/tus/0", headers={**tenant.headers, "Tus-Resumable": "1.0.0"})
    assert r.status_code == 405
    assert r.headers["allow"] == "HEAD, PATCH, DELETE, OPTIONS"


async def test_tus_checksum_header_pattern_is_what_the_server_parses(client):
    spec = await _spec(client)
    header = next(p for p in _operation(spec, "/v1/tus/", "post")["parameters"]
                  if p["name"] == "Upload-Checksum")
    pattern = header["schema"]["pattern"]
    assert re.search(pattern, "sha1 " + "A" * 27 + "=")
    assert not re.search(pattern, ",")
    assert not re.search(pattern, "sha1 " + "A" * 28)


def _operation(spec: dict, path: str, method: str) -> dict:
    return spec["paths"][path][method]


def _parameter(operation: dict, name: str) -> dict:
    return next(p for p in operation["parameters"] if p["name"] == name)
