"""Originals of image profiles are stored without their metadata (EXIF and its GPS, XMP, IPTC,
comments, PNG text chunks), losslessly: the image data stays byte for byte, the colour profile
and the orientation stay. The filters themselves (app/media/strip.py), then every upload mode
through the HTTP API. Images are made here, with Pillow and hand-built segments."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import random
import struct
from typing import Any

import httpx
import pytest
from PIL import Image, ImageCms

from app.auth import service as auth
from app.media import strip
from app.media.image import image_dimensions
from app.profiles import ProfileError, load_profiles
from app.storage.filesystem import FilesystemStorage
from app.uploads.ingest import receive
from tests.conftest import (
    AppKey,
    api_client,
    files_under,
    run_worker,
    storage_root,
)
from tests.helpers import multipart_body

GPS = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP_JPEG = (b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta xmlns:x='adobe:ns:meta/'>"
            b"<exif:GPSLatitude>52,31.2N</exif:GPSLatitude></x:xmpmeta>")
IPTC = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0c\x1c\x02\x5a\x00\x06Berlin\x00\x00"
SMALL, LARGE = (40, 30), (400, 300)  # under and over the 64 KiB head: both code paths


def noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """Incompressible pixels: a file of a known, useful size."""
    w, h = size
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(w * h * 3))


def exif_block(orientation: int | None = 6, gps: bool = True) -> bytes:
    ex = Image.Exif()
    if orientation is not None:
        ex[0x0112] = orientation
    ex[0x010F], ex[0x0110] = "PhoneMaker", "PhoneModel"
    if gps:
        ex[0x8825] = GPS
    return ex.tobytes()


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """([(marker, payload)] before the first scan, offset of the SOS marker): an independent
    walk, so the tests do not trust the code they test."""
    assert data[:2] == b"\xff\xd8"
    out, i = [], 2
    while data[i + 1] != 0xDA:
        assert data[i] == 0xFF
        (length,) = struct.unpack_from(">H", data, i + 2)
        out.append((data[i + 1], data[i + 4:i + 2 + length]))
        i += 2 + length
    return out, i


def scan_data(jpeg: bytes) -> bytes:
    """From the first SOS marker to the end (EOI included)."""
    return jpeg[jpeg_segments(jpeg)[1]:]


def with_segments(jpeg: bytes, *segments: tuple[int, bytes]) -> bytes:
    """`jpeg` with segments inserted after its first one (JFIF stays first)."""
    first_end = 4 + struct.unpack_from(">H", jpeg, 4)[0]
    extra = b"".join(bytes((0xFF, m)) + struct.pack(">H", len(p) + 2) + p for m, p in segments)
    return jpeg[:first_end] + extra + jpeg[first_end:]


def photo_jpeg(size: tuple[int, int] = LARGE, orientation: int | None = 6) -> bytes:
    """What a phone makes: EXIF with GPS, XMP, IPTC, a comment, an ICC profile."""
    buf = io.BytesIO()
    noise(size).save(buf, "JPEG", quality=95, exif=exif_block(orientation), comment=b"at home",
                     icc_profile=ICC)
    return with_segments(buf.getvalue(), (0xE1, XMP_JPEG), (0xED, IPTC))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == strip.PNG_SIGNATURE
    out, i = [], 8
    while i < len(data):
        length, ctype = struct.unpack_from(">I4s", data, i)
        out.append((ctype, data[i + 8:i + 8 + length]))
        i += 12 + length
    return out


def photo_png(size: tuple[int, int] = LARGE) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "at home")
    info.add_text("Location", "52.52N 13.41E", zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>GPS</x:xmpmeta>")
    buf = io.BytesIO()
    noise(size).save(buf, "PNG", pnginfo=info, exif=exif_block(), icc_profile=ICC, dpi=(72, 72))
    return buf.getvalue()


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    out, i = [], 12
    while i < len(data):
        fourcc, (size,) = data[i:i + 4], struct.unpack_from("<I", data, i + 4)
        out.append((fourcc, data[i + 8:i + 8 + size]))
        i += 8 + size + (size & 1)
    return out


def photo_webp(size: tuple[int, int] = LARGE) -> bytes:
    buf = io.BytesIO()
    noise(size).save(buf, "WEBP", quality=90, exif=exif_block(),
                     xmp=b"<x:xmpmeta>GPS</x:xmpmeta>", icc_profile=ICC)
    return buf.getvalue()


def no_gps(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        return not im.getexif().get_ifd(0x8825) and b"52,31" not in data and b"GPS" not in data


def orientation_of(data: bytes) -> int | None:
    with Image.open(io.BytesIO(data)) as im:
        return im.getexif().get(0x0112)


def in_pieces(filt: strip.Filter, data: bytes, size: int) -> bytes:
    out = b"".join(filt.feed(data[i:i + size]) for i in range(0, len(data), size))
    return out + filt.finish()


def webp_in_pieces(data: bytes, size: int) -> tuple[bytes, strip.Report]:
    scanner = strip.WebpScanner()
    for i in range(0, len(data), size):
        scanner.feed(data[i:i + size])
    plan = scanner.finish()
    filt = plan.filter()
    return in_pieces(filt, data, size), filt.report


# --- the filters ---------------------------------------------------------------------------------

def test_jpeg_loses_its_metadata_and_keeps_scan_colour_and_orientation():
    original = photo_jpeg()
    out, report = strip.strip_bytes(strip.JPEG, original)
    assert scan_data(out) == scan_data(original)  # the pixels were not re-encoded
    segments, _ = jpeg_segments(out)
    markers = [m for m, _ in segments]
    assert 0xFE not in markers and 0xED not in markers  # no comment, no IPTC
    app1 = [p for m, p in segments if m == 0xE1]
    assert app1 == [b"Exif\0\0" + strip.minimal_exif(6)]  # just the orientation
    assert any(m == 0xE0 and p.startswith(b"JFIF\0") for m, p in segments)
    assert any(m == 0xE2 and p.startswith(b"ICC_PROFILE\0") for m, p in segments)
    assert no_gps(out) and b"Berlin" not in out and b"at home" not in out
    with Image.open(io.BytesIO(out)) as im:
        assert dict(im.getexif()) == {0x0112: 6}
        assert im.info["icc_profile"] == ICC
        im.load()  # still decodes
    assert report.removed == {"exif", "gps", "xmp", "iptc", "comment"}
    assert report.orientation == 6 and report.note is None
    # what a browser shows: the same way up
    assert image_dimensions(out) == image_dimensions(original) == {
        "width": 300, "height": 400, "orientation": 6}


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 4096, 1 << 20])
def test_jpeg_filter_streams(piece):
    original = photo_jpeg()
    whole, _ = strip.strip_bytes(strip.JPEG, original)
    assert in_pieces(strip.JpegStripper(), original, piece) == whole


def test_jpeg_without_orientation_keeps_no_exif_at_all():
    out, report = strip.strip_bytes(strip.JPEG, photo_jpeg(SMALL, orientation=None))
    assert all(m != 0xE1 for m, _ in jpeg_segments(out)[0])
    assert report.orientation is None and orientation_of(out) is None


def test_jpeg_without_metadata_and_a_stripped_one_are_left_as_they_are():
    buf = io.BytesIO()
    noise(SMALL).save(buf, "JPEG")
    plain = buf.getvalue()
    assert strip.strip_bytes(strip.JPEG, plain) == (plain, strip.Report())
    once, _ = strip.strip_bytes(strip.JPEG, photo_jpeg())
    twice, report = strip.strip_bytes(strip.JPEG, once)
    assert twice == once and not report.changed and report.orientation == 6


def test_jfif_thumbnail_goes():
    buf = io.BytesIO()
    noise(SMALL).save(buf, "JPEG")
    plain = buf.getvalue()
    thumb = b"JFIF\0\x01\x01\x00\x00\x01\x00\x01" + b"\x02\x01" + b"\x10\x20\x30" * 2
    data = plain[:2] + bytes((0xFF, 0xE0)) + struct.pack(">H", len(thumb) + 2) + thumb + plain[2:]
    out, report = strip.strip_bytes(strip.JPEG, data)
    assert report.removed == {"thumbnail"}
    assert jpeg_segments(out)[0][0] == (0xE0, thumb[:12] + b"\0\0")


def test_nothing_after_an_mpf_index_moves():
    """A multi-picture file's index counts offsets from itself: what follows it stays put."""
    buf = io.BytesIO()
    noise(SMALL).save(buf, "JPEG")
    mpf = b"MPF\0II*\0\x08\0\0\0\0\0"
    data = with_segments(buf.getvalue(), (0xE1, XMP_JPEG), (0xE2, mpf), (0xFE, b"after"))
    out, report = strip.strip_bytes(strip.JPEG, data)
    assert report.removed == {"xmp"}
    assert [m for m, _ in jpeg_segments(out)[0]][1:3] == [0xE2, 0xFE]


@pytest.mark.parametrize("cut", ["in_exif", "garbage_after_comment", "no_soi", "bad_length"])
def test_odd_jpeg_passes_through_from_where_it_stops_parsing(cut):
    good = photo_jpeg(SMALL)
    segments, _ = jpeg_segments(good)
    first_end = 4 + len(segments[0][1]) + 2  # SOI + JFIF
    if cut == "in_exif":  # a truncated upload: ends inside the EXIF segment
        data, expected = good[:first_end + 40], good[:first_end + 40]
    elif cut == "garbage_after_comment":
        com = b"\xff\xfe\x00\x05abc"
        data = good[:first_end] + com + b"\x00junk" + good[first_end:]
        expected = good[:first_end] + b"\x00junk" + good[first_end:]  # the comment went
    elif cut == "no_soi":
        data = expected = b"\x00" + good
    else:
        data = expected = good[:2] + b"\xff\xe1\x00\x01" + good[2:]
    for piece in (1, len(data)):
        filt = strip.JpegStripper()
        assert in_pieces(filt, data, piece) == expected
        assert filt.report.note and "kept as it is" in filt.report.note


def test_png_loses_text_and_exif_and_keeps_colour_density_and_pixels():
    original = photo_png()
    out, report = strip.strip_bytes(strip.PNG, original)
    before, after = png_chunks(original), png_chunks(out)
    assert {b"tEXt", b"zTXt", b"iTXt"} <= {t for t, _ in before}
    kept = [(t, d) for t, d in before if t not in (b"tEXt", b"zTXt", b"iTXt", b"eXIf")]
    assert [(t, d) for t, d in after if t != b"eXIf"] == kept  # iCCP, pHYs, IDAT... as they were
    assert (b"eXIf", strip.minimal_exif(6)) in after
    assert no_gps(out) and b"at home" not in out
    with Image.open(io.BytesIO(out)) as im:
        im.load()  # CRCs checked
        assert im.info["icc_profile"] == ICC and im.info["dpi"] == pytest.approx((72, 72), abs=0.01)
        assert dict(im.getexif()) == {0x0112: 6}
    assert report.removed == {"exif", "gps", "text"} and report.orientation == 6
    assert strip.strip_bytes(strip.PNG, out) == (out, strip.Report(orientation=6))


@pytest.mark.parametrize("piece", [1, 5, 8, 13, 1 << 16])
def test_png_filter_streams(piece):
    original = photo_png(SMALL)
    whole, _ = strip.strip_bytes(strip.PNG, original)
    assert whole != original
    assert in_pieces(strip.PngStripper(), original, piece) == whole


def test_truncated_png_passes_through():
    original = photo_png(SMALL)
    cut = original[:len(original) // 2]
    for piece in (1, len(cut)):
        filt = strip.PngStripper()
        out = in_pieces(filt, cut, piece)
        assert filt.report.note and out == strip.strip_bytes(strip.PNG, original)[0][:len(out)]


def test_webp_loses_exif_and_xmp_and_fixes_flags_and_size():
    original = photo_webp()
    out, report = strip.strip_bytes(strip.WEBP, original)
    before, after = webp_chunks(original), webp_chunks(out)  # RIFF size checked there
    assert [t for t, _ in before] == [b"VP8X", b"ICCP", b"VP8 ", b"EXIF", b"XMP "]
    assert after[1:] == [before[1], before[2], (b"EXIF", strip.minimal_exif(6))]
    flags = after[0][1][0]
    assert flags & 0x08 and not flags & 0x04 and flags & 0x20  # EXIF, no XMP, ICC
    assert after[0][1][1:] == before[0][1][1:]  # the canvas size untouched
    assert no_gps(out)
    with Image.open(io.BytesIO(out)) as im:
        im.load()
        assert im.info["icc_profile"] == ICC and dict(im.getexif()) == {0x0112: 6}
    assert report.removed == {"exif", "gps", "xmp"}
    assert strip.strip_bytes(strip.WEBP, out) == (out, strip.Report(orientation=6))


@pytest.mark.parametrize("piece", [1, 3, 8, 1 << 16])
def test_webp_passes_stream(piece):
    original = photo_webp(SMALL)
    whole, _ = strip.strip_bytes(strip.WEBP, original)
    assert whole != original and webp_in_pieces(original, piece)[0] == whole


def test_webp_without_orientation_loses_the_exif_flag():
    buf = io.BytesIO()
    noise(SMALL).save(buf, "WEBP", exif=exif_block(orientation=None))
    out, _ = strip.strip_bytes(strip.WEBP, buf.getvalue())
    chunks = webp_chunks(out)
    assert [t for t, _ in chunks] == [b"VP8X", b"VP8 "] and not chunks[0][1][0] & 0x08


def test_broken_webp_is_kept_as_it_is():
    original = photo_webp(SMALL)
    cut = original[:len(original) - 10]
    out, report = strip.strip_bytes(strip.WEBP, cut)
    assert out == cut and report.note and not report.changed


# --- the profile option --------------------------------------------------------------------------

PROFILES = """
[profiles.photos]
types = ["image/jpeg", "image/png", "image/webp"]

[profiles.photos.derivatives.thumb]
width = 64
height = 64
format = "png"

[profiles.originals]
types = ["image/*"]
strip_metadata = false

[profiles.files]
max_size = 10_000_000

[profiles.tiny]
types = ["image/jpeg"]
max_size = 100_000
"""


def test_strip_metadata_defaults_to_image_profiles(tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES + """
[profiles.pdfs]
types = ["application/pdf"]
[profiles.pictures]
types = ["image/*"]
[profiles.thumbs]
[profiles.thumbs.derivatives.t]
width = 10
height = 10
""")
    profiles = load_profiles(path)
    assert not profiles.get("default").strips_metadata  # any file: kept byte for byte
    assert not profiles.get("files").strips_metadata
    assert not profiles.get("pdfs").strips_metadata
    assert not profiles.get("originals").strips_metadata  # said so
    for name in ("photos", "pictures", "thumbs"):
        assert profiles.get(name).strips_metadata, name
    assert profiles.get("photos").strips("image/jpeg")
    assert not profiles.get("photos").strips("image/gif")  # other types are never touched
    path.write_text("[profiles.a]\nstrip_metadata = 'yes'\n")
    with pytest.raises(ProfileError, match="'strip_metadata'"):
        load_profiles(path)


# --- through the API -----------------------------------------------------------------------------

MODES = ["multipart", "raw", "tus"]


@pytest.fixture
async def env_factory(env_factory):
    """(res, client, tenant) on the filesystem, or with an S3 (moto) cache."""
    async with contextlib.AsyncExitStack() as stack:
        async def make(profiles: str = PROFILES, s3: bool = False) -> tuple[Any, Any, AppKey]:
            res = (await env_factory("s3-cache" if s3 else "file", profiles=profiles)).res
            client = await stack.enter_async_context(api_client(res))
            new = await auth.create_app(res.pool, "strip")
            return res, client, AppKey(new.app_id, new.api_key)

        yield make


@pytest.fixture
async def env(env_factory):
    return await env_factory()


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


async def _chunked(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def upload(client: httpx.AsyncClient, tenant: AppKey, mode: str, data: bytes,
                 profile: str, filename: str = "photo") -> dict[str, Any]:
    """The attachment the upload made (201)."""
    if mode == "multipart":
        r = await client.post("/v1/attachments", headers=tenant.headers, data={
            "profile": profile}, files={"file": (filename, data, "application/octet-stream")})
    elif mode == "raw":  # streamed in small chunks: the filters see them one at a time
        r = await client.post(f"/v1/attachments/raw?filename={filename}&profile={profile}",
                              headers=tenant.headers, content=_chunked(data, 1000))
    else:
        tus = {"Tus-Resumable": "1.0.0", **tenant.headers}
        r = await client.post("/v1/tus/", headers={
            **tus, "Upload-Length": str(len(data)),
            "Upload-Metadata": f"filename {_b64(filename)},profile {_b64(profile)}"})
        assert r.status_code == 201, r.text
        url, half = r.headers["location"], len(data) // 2
        for offset, part in ((0, data[:half]), (half, data[half:])):  # two PATCHes
            r = await client.patch(url, headers={
                **tus, "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream"}, content=part)
            assert r.status_code == 204, r.text
        att_id = r.headers["stowage-attachment-id"]
        r = await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)
        assert r.status_code == 200
        return r.json()
    assert r.status_code == 201, r.text
    return r.json()


async def stored_content(res: Any, client: httpx.AsyncClient, tenant: AppKey,
                         att: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Promote, then (the attachment, the bytes /content serves)."""
    await run_worker(res)
    att = (await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)).json()
    assert att["state"] == "stored", att
    r = await client.get(f"/v1/attachments/{att['id']}/content", headers=tenant.headers)
    if r.status_code == 307:
        async with httpx.AsyncClient() as plain:
            r = await plain.get(r.headers["location"])
    assert r.status_code == 200
    return att, r.content


def describes(att: dict[str, Any], data: bytes) -> bool:
    return att["size"] == len(data) and att["sha256"] == hashlib.sha256(data).hexdigest()


async def no_leftovers(res: Any) -> None:
    """Only the attachments' own files remain in the cache: no copy kept for a rewrite."""
    assert all(p.endswith("/upload") for p in files_under(storage_root(res, "cache")))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("mode", MODES)
async def test_jpeg_upload_is_stored_without_metadata(env, mode, size):
    res, client, tenant = env
    original = photo_jpeg(size)
    att = await upload(client, tenant, mode, original, "photos")
    assert att["metadata"] == {"width": size[1], "height": size[0], "orientation": 6,
                               "stripped": ["comment", "exif", "gps", "iptc", "xmp"]}
    await no_leftovers(res)
    att, stored = await stored_content(res, client, tenant, att)
    assert describes(att, stored) and len(stored) < len(original)
    assert scan_data(stored) == scan_data(original)
    assert no_gps(stored) and b"Berlin" not in stored and b"at home" not in stored
    assert orientation_of(stored) == 6
    # the thumbnail is made from the stored file: still the right way up (portrait)
    assert att["derivatives"]["thumb"]["width"] < att["derivatives"]["thumb"]["height"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_profile_that_keeps_metadata_keeps_the_file_byte_for_byte(env, mode):
    res, client, tenant = env
    original = photo_jpeg()
    for profile in ("originals", "files"):  # said so; any file (the default for no types)
        att = await upload(client, tenant, mode, original, profile)
        assert "stripped" not in att["metadata"]
        att, stored = await stored_content(res, client, tenant, att)
        assert stored == original and describes(att, original)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["png", "webp"])
async def test_png_and_webp_uploads_are_stored_without_metadata(env, mode, size, kind):
    res, client, tenant = env
    original = photo_png(size) if kind == "png" else photo_webp(size)
    att = await upload(client, tenant, mode, original, "photos")
    assert "gps" in att["metadata"]["stripped"] and att["metadata"]["orientation"] == 6
    await no_leftovers(res)
    att, stored = await stored_content(res, client, tenant, att)
    assert describes(att, stored) and stored == strip.strip_bytes(att["mime_type"], original)[0]
    assert no_gps(stored) and orientation_of(stored) == 6
    if kind == "png":
        assert not {b"tEXt", b"zTXt", b"iTXt"} & {t for t, _ in png_chunks(stored)}
    else:
        assert b"XMP " not in {t for t, _ in webp_chunks(stored)}


@pytest.mark.parametrize("mode", MODES)
async def test_an_odd_jpeg_is_stored_not_refused(env, mode):
    _, client, tenant = env
    good = photo_jpeg(SMALL)
    first_end = 6 + len(jpeg_segments(good)[0][0][1])  # SOI + JFIF
    truncated = good[:first_end + 40]  # ends inside its EXIF segment
    odd = good[:first_end] + b"\xff\xfe\x00\x05abc\x00junk" + good[first_end:]
    odd_stored = good[:first_end] + b"\x00junk" + good[first_end:]  # the comment went
    for data, expected in ((truncated, truncated), (odd, odd_stored)):
        att = await upload(client, tenant, mode, data, "photos")
        assert att["mime_type"] == "image/jpeg" and describes(att, expected)


async def test_profile_field_after_the_file_part(env_factory):
    res, client, tenant = await env_factory()
    original = photo_jpeg()

    async def multipart(parts):
        body = multipart_body("XyZ", parts)
        return await client.post("/v1/attachments", content=body, headers={
            **tenant.headers, "Content-Type": "multipart/form-data; boundary=XyZ"})

    # received under the default profile (kept as it is), recorded under one that strips
    r = await multipart([("file", "p.jpg", original), ("profile", None, b"photos")])
    assert r.status_code == 201, r.text
    att, stored = await stored_content(res, client, tenant, r.json())
    assert att["profile"] == "photos" and describes(att, stored)
    assert no_gps(stored) and scan_data(stored) == scan_data(original)
    # the other way round: what was removed cannot be put back
    res, client, tenant = await env_factory(
        PROFILES + "[profiles.default]\nstrip_metadata = true\n")
    r = await multipart([("file", "p.jpg", original), ("profile", None, b"originals")])
    assert r.status_code == 422 and "before the file part" in r.json()["detail"]
    r = await multipart([("profile", None, b"originals"), ("file", "p.jpg", original)])
    assert r.status_code == 201 and describes(r.json(), original)


@pytest.mark.parametrize("kind", ["jpeg", "webp"])
async def test_presigned_upload_is_stripped_in_place(env_factory, s3_client, kind):
    res, client, tenant = await env_factory(s3=True)
    original = photo_jpeg() if kind == "jpeg" else photo_webp()
    r = await client.post("/v1/presigned-uploads", headers=tenant.headers, json={
        "filename": "p", "size": len(original), "profile": "photos"})
    assert r.status_code == 201, r.text
    p = r.json()
    async with httpx.AsyncClient() as plain:
        r = await plain.post(p["url"], data=p["fields"], files={"file": ("f", original)})
        assert r.status_code in (200, 201, 204)
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": p["key"]})
    assert r.status_code == 201, r.text
    att = r.json()
    assert "gps" in att["metadata"]["stripped"] and att["metadata"]["orientation"] == 6
    bucket = res.settings.cache_url.removeprefix("s3://")
    listed = await s3_client.list_objects_v2(Bucket=bucket)
    keys = [o["Key"] for o in listed["Contents"] if not o["Key"].startswith("_stowage/")]
    assert keys == [p["key"]]  # no copy left behind (the storage identity marker aside)
    att, stored = await stored_content(res, client, tenant, att)
    assert describes(att, stored) and no_gps(stored)
    assert stored == strip.strip_bytes(att["mime_type"], original)[0]


async def test_tus_upload_on_s3_is_stripped(env_factory):
    res, client, tenant = await env_factory(s3=True)
    original = photo_png()
    att = await upload(client, tenant, "tus", original, "photos")
    att, stored = await stored_content(res, client, tenant, att)
    assert describes(att, stored) and stored == strip.strip_bytes(strip.PNG, original)[0]


@pytest.mark.parametrize("kind", ["jpeg", "webp"])
async def test_receive_filters_a_large_stream_chunk_by_chunk(tmp_path, kind):
    """Over a MiB (several blocks), fed as a network would: the filter in front of the hash and
    the write, and for a WebP the rewrite afterwards."""
    buf = io.BytesIO()
    image = noise((1400, 1000))
    if kind == "jpeg":
        image.save(buf, "JPEG", quality=95, exif=exif_block(), comment=b"at home")
    else:
        image.save(buf, "WEBP", quality=95, exif=exif_block())
    original = buf.getvalue()
    assert len(original) > 1 << 20
    storage = FilesystemStorage(tmp_path / "cache")
    profile = load_profiles(None).get(None)
    profile = profile.model_copy(update={"strip_metadata": True})
    got = await receive(_chunked(original, 1000), storage=storage, key="a/b/upload",
                        profile=profile, max_upload_size=1 << 30)
    stored = b"".join([c async for c in storage.read("a/b/upload")])
    expected, _ = strip.strip_bytes(got.mime_type, original)
    assert stored == expected and len(stored) < len(original)
    assert (got.size, got.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    assert got.metadata["stripped"] == ["comment", "exif", "gps"][kind == "webp":]
    assert files_under(tmp_path / "cache") == ["a/b/upload"]


async def test_a_stream_over_the_limit_is_refused_while_filtered(env):
    res, client, tenant = env
    r = await client.post("/v1/attachments/raw?profile=tiny", headers=tenant.headers,
                          content=_chunked(photo_jpeg(), 1000))
    assert r.status_code == 413
    assert files_under(storage_root(res, "cache")) == []


@pytest.mark.parametrize("kind", ["jpeg", "webp"])
async def test_a_large_image_without_metadata_is_linked_not_rewritten(env, kind):
    """tus: the JPEG's head, or a first pass over the WebP, shows nothing to remove."""
    res, client, tenant = env
    buf = io.BytesIO()
    noise(LARGE).save(buf, "JPEG" if kind == "jpeg" else "WEBP", quality=95)
    original = buf.getvalue()
    assert len(original) > 64 * 1024
    att = await upload(client, tenant, "tus", original, "photos")
    assert "stripped" not in att["metadata"]
    att, stored = await stored_content(res, client, tenant, att)
    assert stored == original and describes(att, original)


async def test_openapi_says_what_size_sha256_and_metadata_describe(env):
    _, client, _ = env
    spec = (await client.get("/openapi.json")).json()
    fields = spec["components"]["schemas"]["AttachmentOut"]["properties"]
    assert "bytes stored" in fields["sha256"]["description"]
    assert "`stripped`" in fields["metadata"]["description"]
    assert "`orientation`" in fields["metadata"]["description"]


def test_fsck_counts_a_rewrite_leftover_as_the_caches():
    """Cache and store in one place: a copy a crash left behind during a rewrite is judged as
    a cache object (an orphan once old), not as a store file of a cached attachment."""
    from app.ops.fsck import _area_for, parse_key
    from app.uploads.ingest import side_key

    key = parse_key(side_key(f"{'1' * 8}-1111-7111-8111-{'1' * 12}/"
                             f"{'2' * 8}-2222-7222-8222-{'2' * 12}/upload"))
    assert key is not None and _area_for(("cache", "store"), key) == "cache"
