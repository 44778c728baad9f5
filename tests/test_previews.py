"""Previews through the API and the worker (issue 22): one profile gives every image, PDF and
video a `thumb`; the attachment's metadata gains pages, duration, sizes, codecs, thumbhash;
a file that cannot be previewed fails with a clear error.code where derivatives are promised,
and is stored without a preview where they are not."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.auth import service as auth
from tests.conftest import AppKey, api_client, files_under, run_worker, storage_root
from tests.media import generate

PROFILES = """
[profiles.media]
types = ["image/*", "application/pdf", "video/mp4", "video/webm", "video/quicktime"]
[profiles.media.derivatives.thumb]
width = 160
height = 160
format = "jpeg"
quality = 85

[profiles.files]
"""
RED, GREEN = (255, 0, 0), (0, 128, 0)


@pytest.fixture
async def env(env_factory: Any) -> Any:
    async with contextlib.AsyncExitStack() as stack:
        async def make(storage: str = "file", **overrides: Any) -> tuple[Any, Any, AppKey]:
            res = (await env_factory(storage, profiles=PROFILES, **overrides)).res
            client = await stack.enter_async_context(api_client(res))
            new = await auth.create_app(res.pool, "previews")
            return res, client, AppKey(new.app_id, new.api_key)

        yield make


async def promoted(res: Any, client: Any, tenant: AppKey, data: bytes, profile: str
                   ) -> dict[str, Any]:
    r = await client.post("/v1/attachments/raw", params={"profile": profile}, content=data,
                          headers=tenant.headers)
    assert r.status_code == 201, r.text
    await run_worker(res)
    got = await client.get(f"/v1/attachments/{r.json()['id']}", headers=tenant.headers)
    return got.json()


async def thumb_pixel(client: Any, att: dict[str, Any]) -> tuple[int, int, int]:
    r = await client.get(att["derivatives"]["thumb"]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as im:
        assert max(im.size) == 160
        return im.convert("RGB").getpixel((im.width // 2, im.height // 2))


def near(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 16) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


async def test_one_profile_gives_every_image_pdf_and_video_a_thumb(env: Any,
                                                                    tmp_path: Path) -> None:
    res, client, tenant = await env()
    jpeg = io.BytesIO()
    Image.new("RGB", (300, 200), GREEN).save(jpeg, "JPEG")
    files = {
        "jpeg": jpeg.getvalue(),
        "pdf": generate.pdf(tmp_path / "a.pdf", pages=4, fill=GREEN).read_bytes(),
        "mp4": generate.video(tmp_path / "a.mp4", colours=((0, 0, 255), GREEN),
                              audio=True).read_bytes(),
        "webm": generate.video(tmp_path / "a.webm", fmt="webm", codec="libvpx",
                               colours=((0, 0, 255), GREEN)).read_bytes(),
        "mov": generate.video(tmp_path / "a.mov", fmt="mov",
                              colours=((0, 0, 255), GREEN)).read_bytes(),
    }
    for name, data in files.items():
        att = await promoted(res, client, tenant, data, "media")
        assert att["state"] == "stored", (name, att.get("error"))
        assert near(await thumb_pixel(client, att), GREEN), name
        meta = att["metadata"]
        assert meta["thumbhash"] and meta["dominant_color"].startswith("#"), name
        if name == "pdf":
            assert meta["pages"] == 4 and (meta["width"], meta["height"]) == (612, 792)
            assert att["derivatives"]["thumb"]["width"] == 124  # 612x792 into 160x160
        elif name != "jpeg":
            assert (meta["width"], meta["height"]) == (320, 240), name
            assert abs(meta["duration"] - 2.0) < 0.05, name
            assert meta["video_codec"] in ("h264", "vp8"), name
        if name == "mp4":
            assert meta["audio_codec"] == "aac"


async def test_a_pdf_that_cannot_be_previewed_fails_or_is_stored_without(env: Any,
                                                                          tmp_path: Path) -> None:
    res, client, tenant = await env()
    data = generate.encrypted_pdf(tmp_path / "e.pdf").read_bytes()
    att = await promoted(res, client, tenant, data, "media")
    assert att["state"] == "failed"
    assert att["error"]["code"] == "encrypted_pdf" and "password" in att["error"]["detail"]
    assert att["derivatives"] in ({}, None)
    # a profile without derivatives promised nothing: stored as it is, without facts
    att = await promoted(res, client, tenant, data, "files")
    assert att["state"] == "stored"
    assert "pages" not in att["metadata"] and "thumbhash" not in att["metadata"]
    r = await client.get(f"/v1/attachments/{att['id']}/content", headers=tenant.headers)
    assert r.content == data


async def test_files_without_derivatives_get_facts_and_a_thumbhash(env: Any,
                                                                   tmp_path: Path) -> None:
    res, client, tenant = await env()
    pdf = await promoted(res, client, tenant,
                         generate.pdf(tmp_path / "a.pdf", pages=2).read_bytes(), "files")
    assert pdf["state"] == "stored" and pdf["derivatives"] in ({}, None)
    assert pdf["metadata"]["pages"] == 2 and pdf["metadata"]["thumbhash"]
    mp3 = await promoted(res, client, tenant, generate.audio(
        tmp_path / "a.mp3", fmt="mp3", codec="libmp3lame", seconds=2.0).read_bytes(), "files")
    assert mp3["mime_type"] == "audio/mpeg"
    assert mp3["metadata"]["audio_codec"] == "mp3"
    assert abs(mp3["metadata"]["duration"] - 2.0) < 0.06
    jpeg = io.BytesIO()
    Image.new("RGB", (120, 80), (200, 30, 30)).save(jpeg, "JPEG")
    image = await promoted(res, client, tenant, jpeg.getvalue(), "files")
    assert image["metadata"]["width"] == 120 and image["metadata"]["thumbhash"]
    assert image["metadata"]["dominant_color"].startswith("#c")
    text = await promoted(res, client, tenant, b"just text", "files")
    assert text["state"] == "stored" and "thumbhash" not in (text["metadata"] or {})


async def test_limits_from_the_settings_fail_with_their_reason(env: Any, tmp_path: Path) -> None:
    res, client, tenant = await env(preview_max_pages=3, preview_max_duration=1.5)
    pdf = await promoted(res, client, tenant,
                         generate.pdf(tmp_path / "a.pdf", pages=4).read_bytes(), "media")
    assert pdf["state"] == "failed" and pdf["error"]["code"] == "too_many_pages"
    video = await promoted(res, client, tenant,
                           generate.video(tmp_path / "a.mp4", seconds=2.0).read_bytes(), "media")
    assert video["state"] == "failed" and video["error"]["code"] == "too_long"
    # the failed attachments left no derivative behind
    store = storage_root(res, "store")
    ok = await promoted(res, client, tenant,
                        generate.pdf(tmp_path / "b.pdf", pages=3).read_bytes(), "media")
    assert ok["state"] == "stored"
    # only the stored one's original and thumb: the failed ones left nothing behind
    assert len(files_under(store)) == 2, files_under(store)


async def test_a_truncated_video_fails(env: Any, tmp_path: Path) -> None:
    res, client, tenant = await env()
    data = generate.video(tmp_path / "a.mp4", seconds=2.0).read_bytes()
    att = await promoted(res, client, tenant, data[: len(data) // 2], "media")
    assert att["state"] == "failed" and att["error"]["code"] == "corrupt_video"


@pytest.mark.parametrize(("types", "valid"), [
    ('["application/pdf"]', True),
    ('["video/quicktime"]', True),
    ('["video/*"]', True),
    ('["application/*"]', True),
    ('["audio/mpeg", "text/plain"]', False),
])
def test_profiles_with_derivatives_may_accept_pdfs_and_videos(tmp_path: Path, types: str,
                                                              valid: bool) -> None:
    from app.profiles import ProfileError, load_profiles

    path = tmp_path / "profiles.toml"
    path.write_text(f"[profiles.p]\ntypes = {types}\n"
                    "[profiles.p.derivatives.thumb]\nwidth = 10\nheight = 10\n")
    if valid:
        assert load_profiles(path).get("p").derivatives
    else:
        with pytest.raises(ProfileError, match="images, PDFs and videos"):
            load_profiles(path)


async def test_reprocess_records_the_facts_of_files_stored_before(env: Any, tmp_path: Path
                                                                  ) -> None:
    """Attachments stored before previews existed get them from a reprocess: the facts are
    merged into the metadata with the new derivatives."""
    res, client, tenant = await env()
    att = await promoted(res, client, tenant,
                         generate.pdf(tmp_path / "a.pdf", pages=5).read_bytes(), "media")
    assert att["state"] == "stored"
    async with res.pool.acquire() as conn:  # as an attachment stored before issue 22 is
        await conn.execute("UPDATE attachments SET metadata = '{\"k\": 1}'::jsonb WHERE id = $1",
                           att["id"])
    r = await client.post(f"/v1/attachments/{att['id']}/reprocess", headers=tenant.headers)
    assert r.status_code == 202, r.text
    await run_worker(res)
    got = (await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)).json()
    assert got["metadata"]["pages"] == 5 and got["metadata"]["thumbhash"]
    assert got["metadata"]["k"] == 1
    assert got["generation"] > att["generation"]


async def test_previews_from_an_s3_cache(env: Any, tmp_path: Path) -> None:
    """The worker previews a local copy of a remote cached file (Storage.local_path)."""
    res, client, tenant = await env("s3-cache")
    for data in (generate.pdf(tmp_path / "a.pdf", pages=2, fill=GREEN).read_bytes(),
                 generate.video(tmp_path / "a.webm", fmt="webm", codec="libvpx",
                                colours=((0, 0, 255), GREEN)).read_bytes()):
        att = await promoted(res, client, tenant, data, "media")
        assert att["state"] == "stored", att.get("error")
        assert near(await thumb_pixel(client, att), GREEN)
        assert att["metadata"]["thumbhash"]
