"""Profiles end to end: checks while streaming, derivatives in the worker, failures,
derivative downloads and reprocessing. Images are made in the tests."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from app.auth import service as auth
from app.profiles import ProfileError, load_profiles
from tests.conftest import (
    AppKey,
    api_client,
    files_under,
    is_marker,
    run_worker,
    storage_root,
)
from tests.helpers import jpeg_bytes, png_bytes
from tests.test_lifecycle import _promote_paused

PROFILES = """
[profiles.avatar]
max_size = 2_000_000
types = ["image/jpeg", "image/png", "image/webp"]
max_pixels = 4_000_000

[profiles.avatar.derivatives.thumb]
width = 200
height = 200
fit = "contain"
format = "webp"
quality = 80

[profiles.avatar.derivatives.square]
width = 64
height = 64
fit = "cover"
format = "jpeg"

[profiles.pictures]
types = ["image/*"]
"""


@pytest.fixture
async def env(env_factory):
    """(res, client, tenant, the profiles file) with PROFILES."""
    res = (await env_factory("file", profiles=PROFILES)).res
    async with api_client(res) as client:
        new = await auth.create_app(res.pool, "profiles")
        yield res, client, AppKey(new.app_id, new.api_key), Path(res.settings.profiles_file)


async def post(client, tenant, data, profile="avatar", **fields):
    return await client.post("/v1/attachments", headers=tenant.headers,
                             data={"profile": profile, **fields},
                             files={"file": ("x.jpg", data, "image/jpeg")})


async def nothing_left(res) -> bool:
    async with res.pool.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM attachments")
    files = files_under(storage_root(res, "cache")) + files_under(storage_root(res, "store"))
    return rows == 0 and files == []


async def test_derivatives_are_built_and_served(env):
    res, client, tenant, _ = env
    r = await post(client, tenant, jpeg_bytes(800, 600))
    assert r.status_code == 201, r.text
    att_id = r.json()["id"]
    await run_worker(res)
    att = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
    assert att["state"] == "stored"
    thumb, square = att["derivatives"]["thumb"], att["derivatives"]["square"]
    assert (thumb["mime_type"], thumb["width"], thumb["height"]) == ("image/webp", 200, 150)
    assert (square["mime_type"], square["width"], square["height"]) == ("image/jpeg", 64, 64)
    assert "key" not in thumb
    r = await client.get(thumb["url"])  # signed: no key needed
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert len(r.content) == thumb["size"]
    assert Image.open(io.BytesIO(r.content)).size == (200, 150)
    r = await client.get(f"/v1/attachments/{att_id}/derivatives/square", headers=tenant.headers)
    assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff"
    r = await client.get(f"/v1/attachments/{att_id}/derivatives/nope", headers=tenant.headers)
    assert r.status_code == 404 and r.json()["type"].endswith("derivative-not-found")
    # a link for one derivative does not open another
    r = await client.get(thumb["url"].replace("/thumb?", "/square?"))
    assert r.status_code == 403


@pytest.mark.parametrize("data,status", [
    (b"<!DOCTYPE html><html><body>not an image</body></html>", 415),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 415),
    (b"%PDF-1.4\n" + b"0" * 100, 415),
    (b"\x89PNG" + b"\x00" * 3_000_000, 413),  # over the profile's max_size
])
async def test_refused_uploads_leave_nothing(env, data, status):
    res, client, tenant, _ = env
    r = await post(client, tenant, data)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert await nothing_left(res)


async def test_svg_is_not_an_image_wildcard_match(env):
    _, client, tenant, _ = env
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'
    r = await post(client, tenant, svg, profile="pictures")
    assert r.status_code == 415
    r = await post(client, tenant, png_bytes(), profile="pictures")
    assert r.status_code == 201


def bomb_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG")
    return buf.getvalue()


async def test_decompression_bomb_is_refused_from_its_header(env):
    res, client, tenant, _ = env
    bomb = bomb_png(4000, 2000)  # 8 MP in a few KB; the profile allows 4 MP
    assert len(bomb) < 100_000
    r = await post(client, tenant, bomb)
    assert r.status_code in (413, 422) and "pixels" in r.json()["detail"]
    assert await nothing_left(res)


async def test_truncated_jpeg_fails_for_good_with_its_files_removed(env):
    res, client, tenant, _ = env
    broken = jpeg_bytes(800, 600)[:1500]
    r = await post(client, tenant, broken)
    assert r.status_code == 201  # the header is fine; only decoding finds out
    att_id = r.json()["id"]
    await run_worker(res)
    att = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
    assert att["state"] == "failed"
    assert att["error"]["code"] == "corrupt_image" and att["error"]["detail"]
    assert files_under(storage_root(res, "cache")) + files_under(storage_root(res, "store")) == []


async def test_exif_rotated_and_cmyk_and_alpha_sources(env):
    res, client, tenant, _ = env
    cmyk = io.BytesIO()
    Image.new("CMYK", (300, 100), (0, 255, 255, 0)).save(cmyk, "JPEG")
    sources = {
        "rotated": jpeg_bytes(400, 200, orientation=6),
        "cmyk": cmyk.getvalue(),
        "alpha": png_bytes(300, 300),
    }
    ids = {}
    for name, data in sources.items():
        r = await post(client, tenant, data)
        assert r.status_code == 201, (name, r.text)
        ids[name] = r.json()["id"]
    assert (await client.get(f"/v1/attachments/{ids['rotated']}",
                             headers=tenant.headers)).json()["metadata"] == {
        "width": 200, "height": 400, "orientation": 6}
    await run_worker(res)
    for name, att_id in ids.items():
        att = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
        assert att["state"] == "stored", name
    rotated = (await client.get(f"/v1/attachments/{ids['rotated']}",
                                headers=tenant.headers)).json()
    assert (rotated["derivatives"]["thumb"]["width"],
            rotated["derivatives"]["thumb"]["height"]) == (100, 200)


async def test_reprocess_swaps_the_set_and_removes_old_files(env):
    res, client, tenant, path = env
    r = await post(client, tenant, jpeg_bytes(800, 600))
    att_id = r.json()["id"]
    await run_worker(res)
    before = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
    store = storage_root(res, "store")
    old_files = sorted(p.name for p in store.rglob("*") if p.is_file() and not is_marker(p))
    assert len(old_files) == 3  # original + 2 derivatives
    res.rewire(profiles=load_profiles_text(path, PROFILES.replace("width = 200\nheight = 200",
                                                             "width = 100\nheight = 100")))
    r = await client.post(f"/v1/attachments/{att_id}/reprocess", headers=tenant.headers)
    assert r.status_code == 202
    await run_worker(res)
    after = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
    assert after["derivatives"]["thumb"]["width"] == 100
    assert after["generation"] > before["generation"]
    files = [p for p in store.rglob("*") if p.is_file() and not is_marker(p)]
    assert len(files) == 3  # the old set is gone, the new one is there
    r = await client.get(after["derivatives"]["thumb"]["url"])
    assert Image.open(io.BytesIO(r.content)).size == (100, 75)
    r = await client.post(f"/v1/attachments/{uuid.uuid4()}/reprocess", headers=tenant.headers)
    assert r.status_code == 404


def load_profiles_text(path, text):
    path.write_text(text)
    return load_profiles(path)


@pytest.mark.parametrize("text,needle", [
    ("[profiles.a]\nmax_size = -1\n", "'max_size'"),
    ("[profiles.a]\ntypes = 'image/png'\n", "'types'"),
    ("[profiles.a]\ncolour = 1\n", "'colour'"),
    ("[profiles.a.derivatives.t]\nwidth = 10\n", "derivatives.t"),
    ("[profiles.a.derivatives.t]\nwidth = 10\nheight = 10\nfit = 'stretch'\n", "fit"),
    ("[profiles.a.derivatives.t]\nwidth = 10\nheight = 10\nformat = 'gif'\n", "format"),
    ("[profiles.a.derivatives.'../etc']\nwidth = 10\nheight = 10\n", "derivative name"),
    ("[profiles.a.derivatives.'thumb.webp']\nwidth = 10\nheight = 10\n", "'thumb.webp'"),
    ("[profiles.a]\ntypes = ['image/jpg']\n", "did you mean 'image/jpeg'"),
    ("[profiles.a]\ntypes = ['text/plain']\n[profiles.a.derivatives.t]\nwidth = 1\n"
     "height = 1\n", "'derivatives'"),
    ("[profile.a]\nmax_size = 1\n", "[profiles.NAME]"),
    ("not toml [", "profiles.toml"),
])
def test_profile_file_errors_name_file_profile_and_key(tmp_path, text, needle):
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as e:
        load_profiles(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_every_error_of_the_file_is_listed_at_once(tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text("[profiles.a]\nmax_size = 0\ncolour = 1\n[profiles.b]\npublic = 'yes'\n"
                    "[profiles.b.derivatives.t]\nwidth = 10\nfit = 'stretch'\n")
    with pytest.raises(ProfileError) as e:
        load_profiles(path)
    assert str(e.value).splitlines() == [
        f"{path}: profile 'a', key 'max_size': Input should be greater than 0",
        f"{path}: profile 'a', key 'colour': unknown key (expected one of cache_ttl,"
        " derivatives, max_pixels, max_size, public, scan, strip_metadata, transforms,"
        " types)",
        f"{path}: profile 'b', key 'derivatives.t.height': Field required",
        f"{path}: profile 'b', key 'derivatives.t.fit': Input should be 'contain' or 'cover'",
        f"{path}: profile 'b', key 'public': Input should be a valid boolean",
    ]


def test_profiles_know_their_names(tmp_path):
    profiles = load_profiles_text(tmp_path / "profiles.toml", PROFILES)
    assert profiles.get("avatar").name == "avatar"
    assert profiles.get(None).name == "default"
    assert list(profiles.get("avatar").derivatives) == ["thumb", "square"]


async def test_aborted_promotion_removes_its_derivatives_too(env):
    res, client, tenant, _ = env
    r = await post(client, tenant, jpeg_bytes(800, 600), promote="false")
    att_id = r.json()["id"]
    await client.post(f"/v1/attachments/{att_id}/promote", headers=tenant.headers)
    await res.redis.delete(res.settings.queue_name, res.jobs.delivery_queue_name)
    task, pausing, real = await _promote_paused(res, uuid.UUID(att_id))
    await client.delete(f"/v1/attachments/{att_id}", headers=tenant.headers)
    pausing.release.set()
    assert await task == "aborted"
    res.rewire(store=real)
    store_files = [p for p in storage_root(res, "store").rglob("*")
                   if p.is_file() and not is_marker(p)]
    assert store_files == []
