"""Derivatives: every image here is made by the test itself, with Pillow (or by hand)."""

from __future__ import annotations

import io
import pickle
import struct
import time
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageCms, ImageDraw, JpegImagePlugin
from pydantic import ValidationError

from app.media.derivatives import (
    DerivativeSpec,
    ImageProcessingError,
    Rendered,
    build_all,
    build_derivative,
)
from app.media.image import image_dimensions

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
MAX = 40_000_000
THUMB = DerivativeSpec(width=200, height=200)


# -- builders ----------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def noisy(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Hard to compress, so truncating the encoded file cuts real image data."""
    bands = [Image.effect_noise(size, 80) for _ in mode]
    return Image.merge(mode, bands)


def quadrants(
    size: tuple[int, int], top_left: tuple[int, ...], rest: tuple[int, ...]
) -> Image.Image:
    im = Image.new("RGB", size, rest)
    ImageDraw.Draw(im).rectangle((0, 0, size[0] // 2 - 1, size[1] // 2 - 1), fill=top_left)
    return im


def render(source: Any, width: int, height: int, **spec: Any) -> Rendered:
    spec_ = DerivativeSpec(width=width, height=height, **spec)
    return build_derivative(source, spec_, max_pixels=MAX)


def open_rendered(r: Rendered) -> Image.Image:
    im = Image.open(io.BytesIO(r.data))
    im.load()
    return im


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=False))


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A genuine 1-bit greyscale PNG of width x height: all zeros, so it compresses to a few KB.

    Streamed row by row, so the test never holds the decoded image in memory.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    rows_per_block = max(1, (1 << 20) // len(row))
    idat = bytearray()
    for start in range(0, height, rows_per_block):
        idat += compressor.compress(row * min(rows_per_block, height - start))
    idat += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(idat))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    return {
        # 64 MP: above the profile's 40 MP, below Pillow's own 89.5 MP warning threshold
        "64mp": png_bomb(d / "64mp.png", 8000, 8000),
        # 100 MP: above Pillow's warning threshold, below its hard error (2x)
        "100mp": png_bomb(d / "100mp.png", 10_000, 10_000),
        # 900 MP: above Pillow's hard error; the file is ~100 KB
        "900mp": png_bomb(d / "900mp.png", 30_000, 30_000),
    }


def fails(code: str, source: Any, spec: DerivativeSpec = THUMB, **kw: Any) -> ImageProcessingError:
    with pytest.raises(ImageProcessingError) as info:
        build_derivative(source, spec, max_pixels=kw.pop("max_pixels", MAX), **kw)
    assert info.value.code == code, info.value
    return info.value


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fit", "box", "expected"),
    [
        ((800, 600), "contain", (200, 200), (200, 150)),
        ((800, 600), "cover", (200, 200), (200, 200)),
        ((600, 800), "contain", (200, 200), (150, 200)),
        ((800, 600), "cover", (300, 100), (300, 100)),
        ((1000, 333), "contain", (200, 200), (200, 67)),
        ((4000, 3000), "contain", (200, 200), (200, 150)),
        ((4000, 3000), "cover", (256, 128), (256, 128)),
        # contain never upscales; cover always fills its box, upscaling if it must
        ((100, 80), "contain", (200, 200), (100, 80)),
        ((100, 80), "cover", (200, 200), (200, 200)),
        ((3, 1000), "contain", (200, 200), (1, 200)),
    ],
)
def test_output_dimensions(
    source: tuple[int, int], fit: Any, box: tuple[int, int], expected: tuple[int, int]
) -> None:
    data = encode(Image.new("RGB", source, (10, 120, 200)), "JPEG")
    spec = DerivativeSpec(width=box[0], height=box[1], fit=fit)
    r = build_derivative(data, spec, max_pixels=MAX)
    assert (r.width, r.height) == expected
    assert open_rendered(r).size == expected


def test_cover_crops_the_centre() -> None:
    # 300x100: red | green | blue thirds; a square cover keeps the green middle only
    im = Image.new("RGB", (300, 100), RED)
    ImageDraw.Draw(im).rectangle((100, 0, 199, 99), fill=GREEN)
    ImageDraw.Draw(im).rectangle((200, 0, 299, 99), fill=BLUE)
    out = open_rendered(render(encode(im, "PNG"), 50, 50, fit="cover", format="png"))
    assert out.size == (50, 50)
    for x in (2, 25, 47):
        assert close_to(out.getpixel((x, 25)), GREEN)


# -- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "ext", "magic"),
    [
        ("webp", "image/webp", ".webp", b"RIFF"),
        ("jpeg", "image/jpeg", ".jpg", b"\xff\xd8\xff"),
        ("png", "image/png", ".png", b"\x89PNG\r\n\x1a\n"),
    ],
)
def test_formats(fmt: Any, mime: str, ext: str, magic: bytes) -> None:
    source = encode(noisy((640, 480)), "JPEG", quality=90)
    r = render(source, 160, 160, format=fmt)
    assert (r.mime_type, r.ext) == (mime, ext)
    assert r.data.startswith(magic)
    if fmt == "webp":
        assert r.data[8:12] == b"WEBP"
    assert r.size == len(r.data)
    assert open_rendered(r).format == {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG"}[fmt]


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_quality_is_applied(fmt: Any) -> None:
    source = encode(noisy((640, 480)), "PNG")
    low = render(source, 320, 320, format=fmt, quality=10)
    high = render(source, 320, 320, format=fmt, quality=95)
    assert len(low.data) * 2 < len(high.data)


def test_path_str_and_bytes_give_the_same_result(tmp_path: Path) -> None:
    data = encode(noisy((300, 200)), "JPEG")
    path = tmp_path / "in.jpg"
    path.write_bytes(data)
    results = [build_derivative(s, THUMB, max_pixels=MAX) for s in (data, path, str(path))]
    assert results[0] == results[1] == results[2]


# -- alpha, modes, colour ------------------------------------------------------------------------


def transparent_with_red_centre() -> bytes:
    im = Image.new("RGBA", (400, 400), (0, 0, 0, 0))  # transparent *black*: must not show
    ImageDraw.Draw(im).rectangle((100, 100, 299, 299), fill=(*RED, 255))
    return encode(im, "PNG")


def test_alpha_flattened_on_white_for_jpeg() -> None:
    out = open_rendered(render(transparent_with_red_centre(), 100, 100, format="jpeg"))
    assert out.mode == "RGB"
    assert close_to(out.getpixel((0, 0)), WHITE, 8)
    assert close_to(out.getpixel((99, 99)), WHITE, 8)
    assert close_to(out.getpixel((50, 50)), RED)


@pytest.mark.parametrize("fmt", ["webp", "png"])
def test_alpha_preserved_for_webp_and_png(fmt: Any) -> None:
    out = open_rendered(render(transparent_with_red_centre(), 100, 100, format=fmt))
    assert out.mode == "RGBA"
    assert out.getpixel((0, 0))[3] == 0
    centre = out.getpixel((50, 50))
    assert centre[3] == 255 and close_to(centre[:3], RED)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (300, 200), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    for fmt in ("webp", "jpeg", "png"):
        out = open_rendered(render(data, 60, 60, format=fmt))
        assert out.mode == "RGB"
        assert close_to(out.getpixel((30, 20)), RED, 50)


@pytest.mark.parametrize(
    ("im", "fmt"),
    [
        (Image.new("L", (120, 90), 128), "PNG"),
        (Image.new("LA", (120, 90), (128, 0)), "PNG"),
        (Image.new("1", (120, 90), 1), "PNG"),
        (Image.new("I;16", (120, 90), 65535), "PNG"),
        (Image.new("RGB", (120, 90), BLUE).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        (Image.new("RGB", (120, 90), BLUE), "BMP"),
        (Image.new("RGB", (120, 90), BLUE), "TIFF"),
    ],
    ids=["L", "LA", "1", "I16", "P", "bmp", "tiff"],
)
@pytest.mark.parametrize("fmt_out", ["webp", "jpeg", "png"])
def test_source_modes(im: Image.Image, fmt: Any, fmt_out: Any) -> None:
    data = encode(im, fmt)
    r = render(data, 60, 60, format=fmt_out)
    out = open_rendered(r)
    assert out.size == (60, 45)
    assert out.mode in ("L", "LA", "RGB", "RGBA")
    if im.mode == "LA" and fmt_out == "jpeg":  # fully transparent grey: white once flattened
        assert out.convert("L").getpixel((0, 0)) >= 250
    if im.mode in ("1", "I;16") and fmt_out != "jpeg":  # white stays white
        assert out.convert("L").getpixel((0, 0)) == 255


def test_palette_with_transparency() -> None:
    im = Image.new("P", (100, 100), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(im).rectangle((25, 25, 74, 74), fill=1)
    data = encode(im, "PNG", transparency=0)
    webp = open_rendered(render(data, 50, 50))
    assert webp.getpixel((0, 0))[3] == 0 and webp.getpixel((25, 25))[3] == 255
    jpeg = open_rendered(render(data, 50, 50, format="jpeg"))
    assert close_to(jpeg.getpixel((0, 0)), WHITE, 20)  # JPEG ringing near the red edge
    assert close_to(jpeg.getpixel((25, 25)), RED)


def test_icc_profile_converted_to_srgb_and_not_embedded() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(Image.new("RGB", (200, 100), (30, 140, 220)), "JPEG", icc_profile=srgb)
    for fmt in ("webp", "jpeg", "png"):
        out = open_rendered(render(data, 100, 100, format=fmt))
        assert not out.info.get("icc_profile")
        assert close_to(out.getpixel((50, 25)), (30, 140, 220), 12)


# -- orientation, animation ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["webp", "jpeg", "png"])
def test_exif_orientation_6_rotates_the_content(fmt: Any) -> None:
    # Stored 400x200 with a red top-left quadrant. Orientation 6 = displayed rotated 90° clockwise:
    # 200x400, and the stored top-left corner is now the top-right one.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(quadrants((400, 200), RED, GREEN), "JPEG", exif=exif, quality=95)
    assert image_dimensions(data)["width"] == 200
    r = render(data, 100, 100, format=fmt)
    assert (r.width, r.height) == (50, 100)
    out = open_rendered(r).convert("RGB")
    assert close_to(out.getpixel((37, 12)), RED)  # top right
    assert close_to(out.getpixel((12, 12)), GREEN)  # top left
    assert close_to(out.getpixel((37, 87)), GREEN)  # bottom right
    assert close_to(out.getpixel((12, 87)), GREEN)  # bottom left
    assert not out.getexif()


def test_exif_orientation_with_cover_and_draft() -> None:
    # big enough for JPEG draft mode to kick in, rotated, cover-cropped
    exif = Image.Exif()
    exif[0x0112] = 8  # rotated 90° counter-clockwise: stored top-left -> displayed bottom-left
    data = encode(quadrants((2400, 1600), RED, BLUE), "JPEG", exif=exif)
    r = render(data, 160, 240, fit="cover")
    out = open_rendered(r).convert("RGB")
    assert out.size == (160, 240)
    assert close_to(out.getpixel((20, 220)), RED)
    assert close_to(out.getpixel((140, 20)), BLUE)


def gif_frames(colours: list[tuple[int, int, int]]) -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in colours]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def test_animated_gif_uses_the_first_frame() -> None:
    data = gif_frames([RED, GREEN, BLUE])
    assert image_dimensions(data) == {"width": 64, "height": 48, "orientation": 1}
    out = open_rendered(render(data, 32, 32))
    assert out.size == (32, 24)
    assert not getattr(out, "is_animated", False)
    assert close_to(out.convert("RGB").getpixel((16, 12)), RED)


def test_animated_webp_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (64, 48), c) for c in (BLUE, RED)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert image_dimensions(data) == {"width": 64, "height": 48, "orientation": 1}
    out = open_rendered(render(data, 64, 64, format="png"))
    assert close_to(out.convert("RGB").getpixel((10, 10)), BLUE)


# -- metadata ------------------------------------------------------------------------------------


def test_exif_gps_xmp_and_comments_are_stripped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0110] = "Model X"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 29.0)
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.0)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>SecretXMP</rdf:RDF></x:xmpmeta>'
    data = encode(noisy((600, 400)), "JPEG", exif=exif, xmp=xmp, comment=b"SecretComment")
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the source has GPS
    for fmt in ("webp", "jpeg", "png"):
        r = render(data, 100, 100, format=fmt)
        for secret in (b"Exif", b"SecretCam", b"Model X", b"SecretXMP", b"xmpmeta",
                       b"SecretComment", b"eXIf", b"EXIF", b"XMP "):
            assert secret not in r.data, (fmt, secret)
        out = open_rendered(r)
        assert not out.getexif()
        assert not {"exif", "xmp", "comment", "XML:com.adobe.xmp"} & set(out.info)


# -- refusals ------------------------------------------------------------------------------------


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    data = encode(noisy((800, 600)), "JPEG", quality=95)
    cut = data[: len(data) // 2]
    fails("corrupt_image", cut)
    (tmp_path / "cut.jpg").write_bytes(cut)
    fails("corrupt_image", tmp_path / "cut.jpg")
    fails("corrupt_image", data[:200])  # cut inside the headers


def test_truncated_png_is_corrupt() -> None:
    data = encode(noisy((400, 300)), "PNG")
    fails("corrupt_image", data[: len(data) // 2])
    fails("corrupt_image", data[:40])


def test_garbage_after_a_jpeg_signature_is_corrupt() -> None:
    fails("corrupt_image", b"\xff\xd8\xff\xe0" + b"\x13\x37" * 500)


@pytest.mark.parametrize(
    "content",
    [
        b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10" fill="red"/></svg>',
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        b"%PDF-1.7\n",
        b"just some text",
        b"BMW: not a bitmap",
        b"",
    ],
    ids=["html", "svg-xml", "svg", "pdf", "text", "bm-text", "empty"],
)
def test_not_an_image_even_with_a_jpg_name(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    fails("not_an_image", path)
    fails("not_an_image", content)
    assert image_dimensions(content) is None


def test_other_image_formats_are_unsupported() -> None:
    err = fails("unsupported_image", encode(Image.new("RGB", (20, 20), RED), "PPM"))
    assert "PPM" in err.detail


def test_decompression_bomb_is_refused_before_decoding(bombs: dict[str, Path]) -> None:
    assert bombs["64mp"].stat().st_size < 100_000
    started = time.perf_counter()
    err = fails("too_many_pixels", bombs["64mp"], max_pixels=40_000_000)
    fails("too_many_pixels", bombs["64mp"].read_bytes(), max_pixels=40_000_000)
    assert time.perf_counter() - started < 1.0
    assert "8000x8000" in err.detail and "40000000" in err.detail
    # the header is still probed fine, without decoding
    assert image_dimensions(bombs["64mp"].read_bytes()) == {
        "width": 8000, "height": 8000, "orientation": 1}


def test_no_max_pixels_falls_back_to_pillows_limit(bombs: dict[str, Path]) -> None:
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        err = fails("too_many_pixels", bombs["100mp"], max_pixels=None)
    assert time.perf_counter() - started < 1.0
    assert str(Image.MAX_IMAGE_PIXELS) in err.detail


def test_pillows_own_hard_limit_reports_too_many_pixels(bombs: dict[str, Path]) -> None:
    started = time.perf_counter()
    err = fails("too_many_pixels", bombs["900mp"], max_pixels=2_000_000_000)
    assert time.perf_counter() - started < 1.0
    assert "MAX_IMAGE_PIXELS" in err.detail


def test_profile_limit_above_pillows_warning_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scaled down: Pillow warns above 1000 pixels and refuses above 2000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = build_derivative(encode(Image.new("RGB", (40, 40), RED), "PNG"),
                             DerivativeSpec(width=20, height=20), max_pixels=1_000_000)
    assert (r.width, r.height) == (20, 20)
    fails("too_many_pixels", encode(Image.new("RGB", (50, 50), RED), "PNG"),
          max_pixels=1_000_000)
    fails("too_many_pixels", encode(Image.new("RGB", (40, 40), RED), "PNG"), max_pixels=1500)


def test_missing_file_is_not_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_derivative(tmp_path / "nope.jpg", THUMB, max_pixels=MAX)


def test_error_pickles_for_process_pools() -> None:
    err = pickle.loads(pickle.dumps(ImageProcessingError("corrupt_image", "cut short")))
    assert (err.code, err.detail) == ("corrupt_image", "cut short")
    assert str(err) == "corrupt_image: cut short"


# -- build_all -----------------------------------------------------------------------------------


def test_build_all_decodes_once_with_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(noisy((4000, 3000)), "JPEG", quality=85)
    opened: list[int] = []
    drafted: list[tuple[int, int]] = []
    real_open, real_draft = Image.open, JpegImagePlugin.JpegImageFile.draft

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return real_open(*args, **kwargs)

    def spying_draft(self: Any, mode: Any, size: Any) -> Any:
        result = real_draft(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spying_draft)
    specs = {
        "small": DerivativeSpec(width=100, height=100),
        "card": DerivativeSpec(width=400, height=200, fit="cover", format="jpeg"),
        "medium": DerivativeSpec(width=500, height=500, format="png"),
    }
    out = build_all(data, specs, max_pixels=MAX)
    assert opened == [1]
    # the largest need is medium's 500x375 (card covers 400x300): x2 headroom -> 1/4 scale
    assert drafted == [(1000, 750)]
    assert {k: (v.width, v.height, v.mime_type) for k, v in out.items()} == {
        "small": (100, 75, "image/webp"),
        "card": (400, 200, "image/jpeg"),
        "medium": (500, 375, "image/png"),
    }
    assert build_all(data, {}, max_pixels=MAX) == {}


def test_cover_keeps_enough_resolution_under_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    drafted: list[tuple[int, int]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spying_draft(self: Any, mode: Any, size: Any) -> Any:
        result = real_draft(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spying_draft)
    # 4000x1000 into a 200x200 cover needs 800x200 before cropping: contain would need 200x50
    data = encode(Image.new("RGB", (4000, 1000), RED), "JPEG")
    r = render(data, 200, 200, fit="cover")
    assert (r.width, r.height) == (200, 200)
    width, height = drafted[0]
    assert width >= 1600 and height >= 400


def test_runs_in_thread_and_process_pools() -> None:
    sources = [encode(noisy((900, 600)), "JPEG") for _ in range(4)]
    sources.append(b"<html></html>")
    expected = [build_derivative(s, THUMB, max_pixels=MAX) for s in sources[:4]]

    def run(pool: Any) -> list[Any]:
        futures = [pool.submit(build_derivative, s, THUMB, max_pixels=MAX) for s in sources * 2]
        return [f.exception() or f.result() for f in futures]

    with ThreadPoolExecutor(4) as threads:
        in_threads = run(threads)
    with ProcessPoolExecutor(2) as processes:
        in_processes = run(processes)
    for results in (in_threads, in_processes):
        assert results[:4] == results[5:9] == expected
        assert isinstance(results[4], ImageProcessingError) and results[4].code == "not_an_image"


# -- specs ---------------------------------------------------------------------------------------


def test_spec_defaults() -> None:
    spec = DerivativeSpec.model_validate({"width": 200, "height": 100})
    assert spec == DerivativeSpec(width=200, height=100, fit="contain", format="webp",
                                  quality=80)
    assert (spec.mime_type, spec.ext) == ("image/webp", ".webp")
    full = DerivativeSpec.model_validate(
        {"width": 1, "height": 8192, "fit": "cover", "format": "jpeg", "quality": 100}
    )
    assert (full.fit, full.format, full.quality, full.ext) == ("cover", "jpeg", 100, ".jpg")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"height": 10}, "width"),
        ({"width": 10}, "height"),
        ({"width": 0, "height": 10}, "width"),
        ({"width": -5, "height": 10}, "width"),
        ({"width": 10, "height": 10.5}, "height"),
        ({"width": True, "height": 10}, "width"),
        ({"width": "200", "height": 10}, "width"),
        ({"width": 10, "height": 100_000}, "height"),
        ({"width": 10, "height": 10, "fit": "stretch"}, "fit"),
        ({"width": 10, "height": 10, "format": "gif"}, "format"),
        ({"width": 10, "height": 10, "quality": 0}, "quality"),
        ({"width": 10, "height": 10, "quality": 101}, "quality"),
        ({"width": 10, "height": 10, "quality": "high"}, "quality"),
        ({"width": 10, "height": 10, "crop": True}, "crop"),
    ],
)
def test_spec_validation_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as info:
        DerivativeSpec.model_validate(raw)
    assert [e["loc"] for e in info.value.errors()] == [(key,)]


def test_spec_table_must_be_a_table() -> None:
    with pytest.raises(ValidationError):
        DerivativeSpec.model_validate([200, 200])
