"""Image transforms on request (issue 21): GET /v1/attachments/{id}/image renders a stored
image once (per normalised parameters, on any number of API instances), keeps it in the
store under the attachment, serves it again from there; signed links need no key; bad input
is a 422 problem that changes nothing; the variants go with the attachment."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from app.attachments.links import Links
from app.auth import service as auth
from app.bootstrap import Services, build_services
from app.media.render_queue import RenderQueue
from tests.conftest import AppKey, api_client, fresh_resources, make_settings, run_worker
from tests.helpers import jpeg_bytes

PROFILES = """
[profiles.pics]
types = ["image/*"]
[profiles.pics.transforms]
max_width = 1000
max_height = 1000
formats = ["webp", "jpeg", "png"]

[profiles.plain]
types = ["image/*"]
"""


@dataclass
class Env:
    res: Services
    client: httpx.AsyncClient
    tenant: AppKey
    root: Path

    async def stored(self, data: bytes, profile: str = "pics") -> dict:
        r = await self.client.post("/v1/attachments/raw", params={"profile": profile},
                                   content=data, headers=self.tenant.headers)
        assert r.status_code == 201, r.text
        await run_worker(self.res)
        got = await self.client.get(f"/v1/attachments/{r.json()['id']}",
                                    headers=self.tenant.headers)
        assert got.json()["state"] == "stored"
        return got.json()

    def image(self, att_id: str, headers: dict | None = None, **params) -> httpx.Response:
        return self.client.get(f"/v1/attachments/{att_id}/image", params=params,
                               headers=self.tenant.headers if headers is None else headers)

    def variant_files(self) -> list[Path]:
        return [p for p in (self.root / "store").rglob("*")
                if p.is_file() and "variants" in p.parts]


def settings_for(tmp_path: Path, database_url: str, **more):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    return make_settings(tmp_path, database_url, profiles_file=profiles, **more)


@pytest.fixture
async def env(tmp_path, database_url):
    async with fresh_resources(settings_for(tmp_path, database_url)) as res, \
            api_client(res) as client:
        made = await auth.create_app(res.pool, "variants")
        yield Env(res, client, AppKey(made.app_id, made.api_key), tmp_path)


def size_of(body: bytes) -> tuple[str, tuple[int, int]]:
    im = Image.open(io.BytesIO(body))
    return im.format, im.size


async def test_a_variant_is_rendered_once_and_served_again(env):
    att = await env.stored(jpeg_bytes(400, 300))
    r = await env.image(att["id"], w=100)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    assert size_of(r.content) == ("WEBP", (100, 75))
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    etag = r.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    # the same variant, its parameters in another order and spelling: served, not rendered
    again = await env.image(att["id"], fit="contain", w="100", format="webp")
    assert again.status_code == 200 and again.content == r.content
    assert again.headers["etag"] == etag and env.res.variants.renders == 1
    assert (await env.image(att["id"], headers={**env.tenant.headers,
                                                "If-None-Match": etag}, w=100)).status_code \
        == 304
    assert len(env.variant_files()) == 1


async def test_sizes_fits_and_formats(env):
    att = await env.stored(jpeg_bytes(400, 300))
    cover = await env.image(att["id"], w=100, h=100, fit="cover", format="png")
    assert size_of(cover.content) == ("PNG", (100, 100))
    jpeg = await env.image(att["id"], h=60, format="jpeg", q=50)
    assert size_of(jpeg.content) == ("JPEG", (80, 60))
    # never larger than the original unless asked
    big = await env.image(att["id"], w=800)
    assert size_of(big.content)[1] == (400, 300)
    enlarged = await env.image(att["id"], w=800, enlarge="true")
    assert size_of(enlarged.content)[1] == (800, 600)


@pytest.mark.parametrize("params, field", [
    ({"w": "0"}, "w"), ({"w": "abc"}, "w"), ({"w": "-5"}, "w"), ({}, "w"),
    ({"w": "1001"}, "w"), ({"h": "5000"}, "h"), ({"w": "10", "fit": "zoom"}, "fit"),
    ({"w": "10", "format": "gif"}, "format"), ({"w": "10", "format": "avif"}, "format"),
    ({"w": "10", "q": "101"}, "q"), ({"w": "10", "q": "0"}, "q"),
    ({"w": "10", "fit": "cover"}, "h"),
])
async def test_bad_parameters_are_422_problems_that_render_nothing(env, params, field):
    att = await env.stored(jpeg_bytes(40, 30))
    r = await env.image(att["id"], **params)
    assert r.status_code == 422, (params, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert field in r.json()["detail"]
    assert env.res.variants.renders == 0 and env.variant_files() == []


async def test_profiles_without_transforms_and_unstored_files_are_refused(env):
    plain = await env.stored(jpeg_bytes(40, 30), profile="plain")
    r = await env.image(plain["id"], w=10)
    assert r.status_code == 422 and "transforms" in r.json()["detail"]
    r = await env.client.post("/v1/attachments/raw", params={"profile": "pics",
                                                             "promote": "false"},
                              content=jpeg_bytes(40, 30), headers=env.tenant.headers)
    assert (await env.image(r.json()["id"], w=10)).status_code == 409
    other = await auth.create_app(env.res.pool, "someone-else")
    att = await env.stored(jpeg_bytes(40, 30))
    r = await env.image(att["id"], headers={"Authorization": f"Bearer {other.api_key}"}, w=10)
    assert r.status_code == 404
    assert env.variant_files() == []


async def test_signed_links_need_no_key_and_are_checked(env):
    att = await env.stored(jpeg_bytes(400, 300))
    other = await env.stored(jpeg_bytes(300, 200))
    r = await env.client.post(f"/v1/attachments/{att['id']}/image-urls",
                              headers=env.tenant.headers,
                              json={"variants": [{"w": 50}, {"w": 80, "h": 80, "fit": "cover",
                                                             "format": "png"}]})
    assert r.status_code == 200, r.text
    first, second = r.json()["urls"]
    path = urlsplit(first).path + "?" + urlsplit(first).query
    got = await env.client.get(path)  # no Authorization
    assert got.status_code == 200 and size_of(got.content)[1] == (50, 38)
    assert got.headers["cache-control"] == "public, max-age=31536000, immutable"
    got = await env.client.get(urlsplit(second).path + "?" + urlsplit(second).query)
    assert size_of(got.content) == ("PNG", (80, 80))
    query = parse_qs(urlsplit(first).query)
    token = query["token"][0]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert (await env.client.get(f"/v1/attachments/{att['id']}/image",
                                 params={**query, "token": tampered})).status_code == 403
    # another size with this link's token, or this token on another attachment
    assert (await env.client.get(f"/v1/attachments/{att['id']}/image",
                                 params={"w": "51", "token": token})).status_code == 403
    assert (await env.client.get(f"/v1/attachments/{other['id']}/image",
                                 params={"w": "50", "token": token})).status_code == 403
    # expired: the service's clock moved on past the link's expiry
    s = env.res.settings
    env.res.rewire(links=Links(s.public_url, s.signing_key, s.download_url_ttl,
                               clock=lambda: time.time() + 10 * s.download_url_ttl))
    r = await env.client.get(f"/v1/attachments/{att['id']}/image", params=query)
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    # out of the profile's limits: refused when asked for a link
    r = await env.client.post(f"/v1/attachments/{att['id']}/image-urls",
                              headers=env.tenant.headers, json={"variants": [{"w": 5000}]})
    assert r.status_code == 422


async def test_twenty_identical_requests_render_once(env):
    att = await env.stored(jpeg_bytes(1200, 900))
    answers = await asyncio.gather(*(env.image(att["id"], w=300) for _ in range(20)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    assert env.res.variants.renders == 1 and len(env.variant_files()) == 1


async def test_two_api_instances_render_once(env):
    att = await env.stored(jpeg_bytes(1200, 900))
    async with build_services(env.res.settings) as second, api_client(second) as other:
        async def ask(client):
            return await client.get(f"/v1/attachments/{att['id']}/image", params={"w": 250},
                                    headers=env.tenant.headers)
        answers = await asyncio.gather(*(ask(c) for c in [env.client, other] * 5))
        assert {r.status_code for r in answers} == {200}
        assert env.res.variants.renders + second.variants.renders == 1
    assert len(env.variant_files()) == 1


async def test_overload_is_503_with_retry_after(env):
    att = await env.stored(jpeg_bytes(2000, 1500))
    env.res.rewire(render_queue=RenderQueue(workers=1, waiting=0))
    answers = await asyncio.gather(*(env.image(att["id"], w=100 + i) for i in range(6)))
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 503 in codes, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] and busy.json()["type"].endswith("renders-busy")


async def test_deleting_the_attachment_removes_its_variants(env):
    att = await env.stored(jpeg_bytes(400, 300))
    for w in (50, 60, 70):
        assert (await env.image(att["id"], w=w)).status_code == 200
    assert len(env.variant_files()) == 3
    assert (await env.client.delete(f"/v1/attachments/{att['id']}",
                                    headers=env.tenant.headers)).status_code == 202
    await run_worker(env.res)
    assert env.variant_files() == []
    async with env.res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachment_variants") == 0


async def test_the_attachment_counts_its_variants_until_a_reprocess_forgets_them(env):
    att = await env.stored(jpeg_bytes(400, 300))
    assert att["variants"] == {"count": 0, "bytes": 0}
    sizes = [len((await env.image(att["id"], w=w)).content) for w in (50, 90)]
    await env.image(att["id"], w=50)  # served again: not counted twice
    got = (await env.client.get(f"/v1/attachments/{att['id']}",
                                headers=env.tenant.headers)).json()
    assert got["variants"] == {"count": 2, "bytes": sum(sizes)}
    listed = (await env.client.get("/v1/attachments", headers=env.tenant.headers)).json()
    assert listed["items"][0]["variants"] == got["variants"]
    r = await env.client.post(f"/v1/attachments/{att['id']}/reprocess",
                              headers=env.tenant.headers)
    assert r.status_code == 202, r.text
    await run_worker(env.res)
    got = (await env.client.get(f"/v1/attachments/{att['id']}",
                                headers=env.tenant.headers)).json()
    assert got["generation"] == att["generation"] + 1
    assert got["variants"] == {"count": 0, "bytes": 0} and env.variant_files() == []


async def test_a_variant_on_s3(s3_variants_env):
    res, client, tenant = s3_variants_env
    r = await client.post("/v1/attachments/raw", params={"profile": "pics"},
                          content=jpeg_bytes(400, 300), headers=tenant.headers)
    att = r.json()
    await run_worker(res)
    got = await client.get(f"/v1/attachments/{att['id']}/image", params={"w": 40},
                           headers=tenant.headers)
    assert got.status_code in (200, 302, 307), got.text
    keys = [k async for k in res.store.list_keys() if "/variants/" in k]
    assert len(keys) == 1


@pytest.fixture
async def s3_variants_env(tmp_path, database_url, moto_endpoint, s3_client):
    import secrets

    cache, store = f"cache-{secrets.token_hex(4)}", f"store-{secrets.token_hex(4)}"
    for b in (cache, store):
        await s3_client.create_bucket(Bucket=b)
    settings = settings_for(tmp_path, database_url, cache_url=f"s3://{cache}",
                            store_url=f"s3://{store}/files", s3_endpoint_url=moto_endpoint,
                            s3_region="us-east-1")
    async with fresh_resources(settings) as res, api_client(res) as client:
        made = await auth.create_app(res.pool, "s3variants")
        yield res, client, AppKey(made.app_id, made.api_key)


async def test_a_render_for_a_generation_that_moved_on_leaves_nothing(env):
    """A reprocess (a new generation) while a variant was rendered: the render's file belongs
    to nobody and is removed, and the caller is told to ask again."""
    from app.attachments import repository as attachments_repo
    from app.errors import InvalidState
    from app.media import transform

    att = await env.stored(jpeg_bytes(400, 300))
    async with env.res.pool.acquire() as conn:
        seen = await attachments_repo.get(conn, att["id"])
        await conn.execute("UPDATE attachments SET generation = generation + 1 WHERE id = $1",
                           att["id"])
    spec = transform.TransformSpec.parse({"w": "64"}, transform.TransformLimits())
    with pytest.raises(InvalidState):
        await env.res.variants.variant(seen, spec)
    assert env.variant_files() == []
    async with env.res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachment_variants") == 0
