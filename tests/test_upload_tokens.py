"""Upload tokens (issue 24): minted with an API key, used by a browser for one upload (or a
few), fixing what the upload may be; accepted by the upload endpoints only and for reading
what they made."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest

from app.auth import service as auth
from tests.conftest import AppKey, api_client

PROFILES = """
[profiles.avatar]
max_size = 1000
[profiles.doc]
"""
TUS = {"Tus-Resumable": "1.0.0"}


class Env:
    def __init__(self, res: Any, client: httpx.AsyncClient, tenant: AppKey) -> None:
        self.res, self.client, self.tenant = res, client, tenant

    async def mint(self, status: int = 201, key: AppKey | None = None, **body: Any) -> Any:
        r = await self.client.post("/v1/upload-tokens", json=body,
                                   headers=(key or self.tenant).headers)
        assert r.status_code == status, r.text
        return r.json()

    async def token(self, **body: Any) -> dict[str, str]:
        made = await self.mint(**body)
        assert made["token"].startswith("sut_") and made["expires_at"].endswith("Z")
        return {"Authorization": f"Bearer {made['token']}"}

    async def multipart(self, headers: dict[str, str], data: bytes = b"hello",
                        **fields: Any) -> httpx.Response:
        return await self.client.post("/v1/attachments", headers=headers, data=fields,
                                      files={"file": ("f.txt", data)})

    async def raw(self, headers: dict[str, str], data: bytes = b"hello",
                  **params: Any) -> httpx.Response:
        return await self.client.post("/v1/attachments/raw", headers=headers, params=params,
                                      content=data)

    async def tus_create(self, headers: dict[str, str], length: int,
                         **meta: str) -> httpx.Response:
        h = {**TUS, **headers, "Upload-Length": str(length)}
        if meta:
            h["Upload-Metadata"] = ",".join(
                f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
        return await self.client.post("/v1/tus/", headers=h)


@pytest.fixture
async def env(env_factory: Any) -> Any:
    environment = await env_factory("file", profiles=PROFILES)
    res = environment.res
    new = await auth.create_app(res.pool, "browser-app")
    async with api_client(res) as client:
        yield Env(res, client, AppKey(new.app_id, new.api_key))


async def test_a_token_uploads_once_with_what_it_fixes(env: Env) -> None:
    headers = await env.token(profile="doc", record_type="user", record_id="42",
                              record_name="cv", metadata={"source": "signup"})
    r = await env.multipart(headers, b"my cv", filename="cv.txt")
    assert r.status_code == 201, r.text
    att = r.json()
    assert att["profile"] == "doc"
    assert att["record"] == {"type": "user", "id": "42", "name": "cv"}
    assert att["client_metadata"] == {"source": "signup"}
    # it reads what it made
    r = await env.client.get(f"/v1/attachments/{att['id']}", headers=headers)
    assert r.status_code == 200 and r.json()["id"] == att["id"]
    # and is used up
    r = await env.multipart(headers)
    assert r.status_code == 401 and "used up" in r.json()["detail"]
    # stored hashed: the token itself is nowhere in the table
    async with env.res.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM upload_tokens")
    token = headers["Authorization"].split()[1]
    assert len(rows) == 1 and token not in repr(dict(rows[0]))


@pytest.mark.parametrize("field,value", [
    ("profile", "avatar"),
    ("record_type", "team"),
    ("metadata", '{"source": "evil"}'),
])
async def test_what_a_token_fixes_cannot_be_overridden(env: Env, field: str, value: str
                                                        ) -> None:
    headers = await env.token(profile="doc", record_type="user", record_id="42",
                              record_name="cv", metadata={"source": "signup"})
    slot = {"record_type": "user", "record_id": "42", "record_name": "cv"}
    fields = {**slot, field: value} if field.startswith("record") else {field: value}
    r = await env.multipart(headers, **fields)
    assert r.status_code == 422, r.text
    r = await env.raw(headers, **fields)
    assert r.status_code == 422, r.text
    meta = {"filename": "x.txt", **fields}
    r = await env.tus_create(headers, 5, **meta)
    assert r.status_code == 422, r.text
    # nothing was made, and the refused uploads gave their use back
    async with env.res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachments") == 0
        assert await conn.fetchval("SELECT count(*) FROM tus_uploads") == 0
    # the same values as the token's are no override
    r = await env.raw(headers, profile="doc", **slot)
    assert r.status_code == 201, r.text


async def test_a_token_without_a_slot_or_metadata_fixes_them_empty(env: Env) -> None:
    headers = await env.token(uses=3)
    r = await env.multipart(headers, record_type="a", record_id="b", record_name="c")
    assert r.status_code == 422
    r = await env.raw(headers, metadata='{"x": 1}')
    assert r.status_code == 422
    r = await env.raw(headers, profile="avatar")
    assert r.status_code == 422
    r = await env.raw(headers, filename="ok.txt", promote="false")
    assert r.status_code == 201 and r.json()["profile"] == "default"
    assert r.json()["filename"] == "ok.txt"


async def test_max_size(env: Env) -> None:
    headers = await env.token(max_size=10, uses=5)
    assert (await env.raw(headers, b"x" * 11)).status_code == 413
    assert (await env.multipart(headers, b"x" * 11)).status_code == 413
    assert (await env.tus_create(headers, 11)).status_code == 413
    assert (await env.raw(headers, b"x" * 10)).status_code == 201
    # the profile's own limit still holds under a larger max_size
    headers = await env.token(profile="avatar", max_size=5000)
    assert (await env.raw(headers, b"x" * 1001)).status_code == 413


async def test_uses_are_exact_under_concurrency(env: Env) -> None:
    headers = await env.token(uses=3)
    answers = await asyncio.gather(*(env.raw(headers, f"file {i}".encode())
                                     for i in range(12)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * 3 + [401] * 9, codes


async def test_expired_and_revoked_tokens_are_refused(env: Env) -> None:
    headers = await env.token(uses=5)
    assert (await env.raw(headers)).status_code == 201
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE upload_tokens SET expires_at = now() - interval '1 second'")
    r = await env.raw(headers)
    assert r.status_code == 401 and r.json()["type"].endswith("unauthorized")
    # a key revoked: its tokens die with it
    key = await auth.create_key(env.res.pool, env.tenant.app_id, ("upload",))
    minter = AppKey(env.tenant.app_id, key.api_key)
    made = await env.mint(key=minter, uses=5)
    headers = {"Authorization": f"Bearer {made['token']}"}
    assert (await env.raw(headers)).status_code == 201
    await auth.revoke_key(env.res.pool, key.key_id)
    assert (await env.raw(headers)).status_code == 401
    # a token that never was
    bogus = {"Authorization": "Bearer sut_" + "A" * 43}
    assert (await env.raw(bogus)).status_code == 401


async def test_a_token_cannot_list_delete_or_read_others(env: Env) -> None:
    headers = await env.token(uses=2)
    mine = (await env.raw(headers)).json()
    other = (await env.raw(env.tenant.headers)).json()
    other_token = (await env.raw(await env.token())).json()
    assert (await env.client.get(f"/v1/attachments/{mine['id']}", headers=headers)
            ).status_code == 200
    for att in (other, other_token):
        r = await env.client.get(f"/v1/attachments/{att['id']}", headers=headers)
        assert r.status_code == 404
    for method, url in (("GET", "/v1/attachments"),
                        ("DELETE", f"/v1/attachments/{mine['id']}"),
                        ("GET", f"/v1/attachments/{mine['id']}/content"),
                        ("POST", f"/v1/attachments/{mine['id']}/promote"),
                        ("GET", "/v1/webhook-endpoints"),
                        ("POST", "/v1/presigned-uploads")):
        r = await env.client.request(method, url, headers=headers)
        assert r.status_code == 403, (method, url, r.text)
        assert r.json()["type"].endswith("insufficient-scope")
    # nor mint tokens of its own
    r = await env.client.post("/v1/upload-tokens", json={}, headers=headers)
    assert r.status_code == 403
    # the attachment is intact
    r = await env.client.get(f"/v1/attachments/{mine['id']}", headers=env.tenant.headers)
    assert r.json()["state"] in ("cached", "stored")


async def test_tus_with_a_token_reaches_its_own_upload_only(env: Env) -> None:
    headers = await env.token(profile="doc", metadata={"k": "v"})
    r = await env.tus_create(headers, 10, filename="t.txt")
    assert r.status_code == 201, r.text
    url = r.headers["Location"].replace(str(env.res.settings.public_url).rstrip("/"), "")
    # the use was taken at creation: another upload is refused
    assert (await env.tus_create(headers, 3)).status_code == 401
    # an upload made with the API key is out of the token's reach
    theirs = await env.tus_create(env.tenant.headers, 4)
    their_url = theirs.headers["Location"].replace(
        str(env.res.settings.public_url).rstrip("/"), "")
    for method in ("HEAD", "PATCH"):
        r = await env.client.request(method, their_url, headers={
            **TUS, **headers, "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream"}, content=b"abcd")
        assert r.status_code == 404
    # nor may it terminate its own
    r = await env.client.delete(url, headers={**TUS, **headers})
    assert r.status_code == 403
    r = await env.client.post(url, headers={**TUS, **headers,
                                            "X-HTTP-Method-Override": "DELETE"})
    assert r.status_code == 403
    r = await env.client.head(url, headers={**TUS, **headers})
    assert r.status_code == 200 and r.headers["Upload-Offset"] == "0"
    r = await env.client.patch(url, headers={
        **TUS, **headers, "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream"}, content=b"0123456789")
    assert r.status_code == 204, r.text
    att_id = r.headers["Stowage-Attachment-Id"]
    r = await env.client.get(f"/v1/attachments/{att_id}", headers=headers)
    assert r.status_code == 200
    assert r.json()["profile"] == "doc" and r.json()["client_metadata"] == {"k": "v"}


@pytest.mark.parametrize("body", [
    {"expires_in": 3601}, {"expires_in": 0}, {"uses": 0}, {"max_size": -1},
    {"profile": "nope"}, {"record_type": "a"}, {"metadata": {"a": "\u0000"}},
    {"unknown": 1}, {"uses": "many"},
])
async def test_minting_refuses_bad_values(env: Env, body: dict[str, Any]) -> None:
    r = await env.client.post("/v1/upload-tokens", json=body, headers=env.tenant.headers)
    assert r.status_code == 422, r.text
    async with env.res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM upload_tokens") == 0


async def test_minting_needs_the_upload_scope(env: Env) -> None:
    reader = await auth.create_key(env.res.pool, env.tenant.app_id, ("read", "delete"))
    r = await env.client.post("/v1/upload-tokens", json={},
                              headers={"Authorization": f"Bearer {reader.api_key}"})
    assert r.status_code == 403 and r.json()["scope"] == "upload"
    made = await env.mint(expires_in=3600, uses=2)
    assert set(made) == {"token", "expires_at"}
