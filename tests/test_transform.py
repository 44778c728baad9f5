"""Transforms on request (app/media/transform.py): the spec's parsing and normalisation, and the
libvips render. Every image is made here, with Pillow; every output is decoded back with Pillow."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from app.media.derivatives import ImageProcessingError
from app.media.transform import (
    DEFAULT_MAX_PIXELS,
    MAX_DIMENSION,
    TransformError,
    TransformLimits,
    TransformSpec,
    render,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
LIMITS = TransformLimits(max_width=2000, max_height=1500,
                         formats=("webp", "jpeg", "png", "avif"))
MAX = 40_000_000
PIL_FORMATS = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG", "avif": "AVIF"}


def encode(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def spec(**params: Any) -> TransformSpec:
    return TransformSpec.parse(params, LIMITS)


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def quadrants(size: tuple[int, int], top_left: tuple[int, ...], rest: tuple[int, ...],
              mode: str = "RGB") -> Image.Image:
    im = Image.new(mode, size, rest)
    ImageDraw.Draw(im).rectangle((0, 0, size[0] // 2 - 1, size[1] // 2 - 1), fill=top_left)
    return im


def near(pixel: Any, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


# -- parameters ---------------------------------------------------------------------------------


def test_defaults_are_filled() -> None:
    s = spec(w="512")
    assert (s.w, s.h, s.fit, s.format, s.q, s.enlarge) == (512, None, "contain", "webp", 80,
                                                           False)
    assert s.mime_type == "image/webp" and s.ext == ".webp"
    assert spec(w=10, format="jpeg").q == 80
    assert spec(w=10, format="avif").q == 60


def test_one_variant_one_key_whatever_the_order_and_spelling() -> None:
    a = TransformSpec.parse({"w": "512", "h": "384", "fit": "cover", "format": "webp"}, LIMITS)
    b = TransformSpec.parse({"format": "WEBP", "fit": "Cover", "h": " 384", "w": 512,
                             "q": "80", "enlarge": "false", "sig": "ignored"}, LIMITS)
    assert a == b
    assert a.key_part() == b.key_part() == "w512-h384-cover-q80.webp"
    assert spec(w=5, enlarge="1").key_part() == "w5-h_-contain-q80-up.webp"
    assert spec(w=5, q=81).key_part() != spec(w=5).key_part()
    assert spec(h=5, format="png").key_part() == "w_-h5-contain.png"


def test_query_round_trips() -> None:
    for s in (spec(w=5), spec(w=3, h=4, fit="cover", format="avif", q=30, enlarge=True),
              spec(h=9, format="png")):
        assert TransformSpec.parse(s.query(), LIMITS) == s


def test_png_drops_q_after_checking_it() -> None:
    assert spec(w=10, format="png", q="30") == spec(w=10, format="png")
    with pytest.raises(TransformError) as e:
        spec(w=10, format="png", q="0")
    assert e.value.field == "q"


@pytest.mark.parametrize(("field", "value"), [
    ("w", "0"), ("w", "-1"), ("w", "abc"), ("w", "1.5"), ("w", "2001"), ("w", 2001),
    ("w", True), ("w", 1.5), ("w", "1e3"), ("w", "99999999999999999999"), ("w", "٣"),
    ("h", "0"), ("h", "-5"), ("h", "1501"), ("h", "x"),
    ("fit", "fill"), ("fit", "scale-down"), ("fit", 3),
    ("format", "gif"), ("format", "jpg"), ("format", "tiff"),
    ("q", "0"), ("q", "101"), ("q", "-1"), ("q", "high"), ("q", "50.5"),
    ("enlarge", "maybe"), ("enlarge", "2"), ("enlarge", 1.0),
])
def test_bad_values_name_their_field(field: str, value: Any) -> None:
    params = {"w": "100", "h": "100"} | {field: value}
    with pytest.raises(TransformError) as e:
        TransformSpec.parse(params, LIMITS)
    assert e.value.field == field
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith(f"{field}: ")


def test_a_size_is_required_and_cover_needs_both() -> None:
    with pytest.raises(TransformError, match="w or h is required"):
        spec(fit="contain")
    with pytest.raises(TransformError, match="w or h is required"):
        spec(w="", h=None)
    with pytest.raises(TransformError) as e:
        spec(w=10, fit="cover")
    assert e.value.field == "h"
    with pytest.raises(TransformError) as e:
        spec(h=10, fit="cover")
    assert e.value.field == "w"


def test_limits_come_from_the_profile() -> None:
    small = TransformLimits(max_width=300, max_height=200, formats=("jpeg", "png"))
    assert TransformSpec.parse({"w": "300", "h": "200"}, small).format == "jpeg"  # no webp
    with pytest.raises(TransformError, match="w: must be at most 300"):
        TransformSpec.parse({"w": "301"}, small)
    with pytest.raises(TransformError, match="h: must be at most 200"):
        TransformSpec.parse({"w": "3", "h": "201"}, small)
    with pytest.raises(TransformError, match="webp is not allowed"):
        TransformSpec.parse({"w": "3", "format": "webp"}, small)
    only_png = TransformLimits(formats=("png",))
    assert TransformSpec.parse({"w": "3"}, only_png).format == "png"
    with pytest.raises(TransformError) as e:
        TransformSpec.parse({"w": "3"}, TransformLimits(formats=()))
    assert e.value.field == "format"


# -- sizes --------------------------------------------------------------------------------------


@pytest.fixture
def landscape(tmp_path: Path) -> Path:
    """300x200 JPEG."""
    path = tmp_path / "landscape.jpg"
    path.write_bytes(encode(quadrants((300, 200), RED, BLUE), "JPEG", quality=95))
    return path


@pytest.mark.parametrize(("params", "size"), [
    ({"w": 150, "h": 150}, (150, 100)),
    ({"w": 150}, (150, 100)),
    ({"h": 50}, (75, 50)),
    ({"w": 150, "h": 150, "fit": "cover"}, (150, 150)),
    ({"w": 100, "h": 40, "fit": "cover"}, (100, 40)),
    # never upscaled by default
    ({"w": 600, "h": 600}, (300, 200)),
    ({"w": 600}, (300, 200)),
    ({"w": 512, "h": 512, "fit": "cover"}, (200, 200)),  # the box's shape, the original's scale
    ({"w": 600, "h": 100, "fit": "cover"}, (300, 50)),
    # unless asked
    ({"w": 600, "h": 600, "enlarge": "true"}, (600, 400)),
    ({"w": 512, "h": 512, "fit": "cover", "enlarge": "true"}, (512, 512)),
])
def test_contain_cover_and_enlarge(landscape: Path, params: dict[str, Any],
                                   size: tuple[int, int]) -> None:
    out = render(landscape, spec(**params), max_pixels=MAX)
    assert (out.width, out.height) == size
    assert decoded(out.data).size == size


def test_cover_crops_the_centre(tmp_path: Path) -> None:
    im = Image.new("RGB", (300, 100), RED)
    ImageDraw.Draw(im).rectangle((100, 0, 199, 99), fill=BLUE)  # the middle third
    out = render(encode(im, "PNG"), spec(w=50, h=50, fit="cover", format="png"), max_pixels=MAX)
    got = decoded(out.data).convert("RGB")
    assert got.size == (50, 50)
    assert near(got.getpixel((2, 25)), BLUE) and near(got.getpixel((47, 25)), BLUE)


@pytest.mark.parametrize("fmt", ["webp", "jpeg", "png", "avif"])
def test_every_format_decodes_back(landscape: Path, fmt: str) -> None:
    s = spec(w=120, format=fmt)
    out = render(landscape, s, max_pixels=MAX)
    im = decoded(out.data)
    assert im.format == PIL_FORMATS[fmt]
    assert Image.MIME[im.format] == out.mime_type == s.mime_type
    assert im.size == (out.width, out.height) == (120, 80)
    assert out.ext == s.ext
    assert near(im.convert("RGB").getpixel((10, 10)), RED, 60)
    assert near(im.convert("RGB").getpixel((110, 70)), BLUE, 60)


def test_quality_changes_the_output(landscape: Path) -> None:
    noise = Image.merge("RGB", [Image.effect_noise((300, 200), 80) for _ in range(3)])
    data = encode(noise, "PNG")
    low = render(data, spec(w=300, format="jpeg", q=10), max_pixels=MAX)
    high = render(data, spec(w=300, format="jpeg", q=95), max_pixels=MAX)
    assert len(low.data) * 2 < len(high.data)


# -- what the source carries ---------------------------------------------------------------------


def test_exif_orientation_is_applied_then_stripped(tmp_path: Path) -> None:
    # stored 400x200 with red top-left; orientation 6 shows it turned 90 degrees clockwise:
    # 200x400 with red top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera maker"
    data = encode(quadrants((400, 200), RED, BLUE), "JPEG", quality=95, exif=exif.tobytes())
    out = render(data, spec(w=100, h=400, format="jpeg"), max_pixels=MAX)
    assert (out.width, out.height) == (100, 200)
    im = decoded(out.data)
    assert im.size == (100, 200)
    assert near(im.getpixel((75, 25)), RED) and near(im.getpixel((25, 25)), BLUE)
    assert "exif" not in im.info and not im.getexif()
    assert "icc_profile" not in im.info


def test_orientation_is_honoured_when_sizing_cover(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(Image.new("RGB", (400, 200), RED), "JPEG", exif=exif.tobytes())
    # shown 200x400: a 300x300 cover box without enlarge is the largest square: 200x200
    out = render(data, spec(w=300, h=300, fit="cover"), max_pixels=MAX)
    assert (out.width, out.height) == (200, 200)
    out = render(data, spec(w=300, h=1000), max_pixels=MAX)
    assert (out.width, out.height) == (200, 400)


@pytest.mark.parametrize("fmt", ["webp", "png", "jpeg"])
def test_metadata_never_reaches_the_output(fmt: str) -> None:
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x8825] = {1: "N"}  # GPS
    exif[0x010F] = "maker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(Image.new("RGB", (64, 64), RED), "JPEG", exif=exif.tobytes(),
                  icc_profile=icc, comment=b"secret")
    out = render(data, spec(w=32, format=fmt), max_pixels=MAX)
    assert b"maker" not in out.data and b"secret" not in out.data
    im = decoded(out.data)
    assert not im.getexif() and "icc_profile" not in im.info and "xmp" not in im.info


def test_cmyk_jpeg_becomes_srgb() -> None:
    data = encode(Image.new("CMYK", (80, 60), (0, 255, 255, 0)), "JPEG", quality=95)
    for fmt in ("jpeg", "webp", "png"):
        im = decoded(render(data, spec(w=40, format=fmt), max_pixels=MAX).data)
        assert im.mode == "RGB", fmt
        r, g, b = im.getpixel((20, 15))
        assert r > 180 and g < 90 and b < 90, (fmt, (r, g, b))


def test_alpha_is_flattened_on_white_for_jpeg_and_kept_otherwise() -> None:
    im = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle((0, 0, 39, 79), fill=(255, 0, 0, 255))
    data = encode(im, "PNG")
    jpeg = decoded(render(data, spec(w=40, format="jpeg"), max_pixels=MAX).data)
    assert jpeg.mode == "RGB"
    assert near(jpeg.getpixel((35, 20)), WHITE, 12)  # was transparent black
    assert near(jpeg.getpixel((5, 20)), RED)
    for fmt in ("webp", "png", "avif"):
        out = decoded(render(data, spec(w=40, format=fmt), max_pixels=MAX).data)
        assert out.mode == "RGBA", fmt
        assert out.getpixel((35, 20))[3] < 10 and out.getpixel((5, 20))[3] > 245, fmt


def test_grey_with_alpha_to_jpeg() -> None:
    im = Image.new("LA", (40, 40), (0, 0))
    out = decoded(render(encode(im, "PNG"), spec(w=20, format="jpeg"), max_pixels=MAX).data)
    assert out.getpixel((10, 10)) in (255, (255, 255, 255))


def test_palette_gif_and_png() -> None:
    pal = quadrants((60, 60), RED, BLUE).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    for source in (encode(pal, "GIF"), encode(pal, "PNG")):
        im = decoded(render(source, spec(w=30, format="png"), max_pixels=MAX).data)
        rgb = im.convert("RGB")
        assert near(rgb.getpixel((3, 3)), RED) and near(rgb.getpixel((27, 27)), BLUE)


def test_palette_png_with_transparency_keeps_it() -> None:
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    ImageDraw.Draw(pal).rectangle((20, 0, 39, 39), fill=1)
    data = encode(pal, "PNG", transparency=1)
    im = decoded(render(data, spec(w=40, format="webp"), max_pixels=MAX).data)
    assert im.mode == "RGBA"
    assert im.getpixel((30, 20))[3] == 0 and near(im.getpixel((5, 20)), (*RED, 255))


def test_sixteen_bit_png() -> None:
    im = Image.linear_gradient("L").resize((64, 64)).convert("I")
    im = im.point(lambda v: v * 257).convert("I;16")
    out = render(encode(im, "PNG"), spec(w=32, format="webp"), max_pixels=MAX)
    got = decoded(out.data).convert("L")
    assert got.size == (32, 32)
    assert got.getpixel((16, 1)) < 30 and got.getpixel((16, 30)) > 220


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_gives_its_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (60, 40), c) for c in (RED, BLUE, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = render(buf.getvalue(), spec(w=30, format="webp"), max_pixels=MAX)
    im = Image.open(io.BytesIO(out.data))
    assert getattr(im, "n_frames", 1) == 1
    assert (out.width, out.height) == (30, 20) == im.size  # one frame, not a strip
    assert near(im.convert("RGB").getpixel((15, 10)), RED)


# -- limits and broken files -------------------------------------------------------------------


def test_max_pixels() -> None:
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    assert render(data, spec(w=50), max_pixels=10_000).width == 50
    with pytest.raises(ImageProcessingError) as e:
        render(data, spec(w=50), max_pixels=9_999)
    assert e.value.code == ImageProcessingError.TOO_MANY_PIXELS
    assert "100x100" in e.value.detail and "9999" in e.value.detail


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size and has a few bytes of pixel data: refusing it must not
    decode (decoding 10^10 pixels would take minutes and gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + png_chunk(b"IEND", b""))


@pytest.mark.parametrize("as_path", [False, True])
def test_the_pixel_limit_is_checked_from_the_header(tmp_path: Path, as_path: bool) -> None:
    data = png_header_only(100_000, 100_000)
    source: Any = data
    if as_path:
        source = tmp_path / "bomb.png"
        source.write_bytes(data)
    with pytest.raises(ImageProcessingError) as e:
        render(source, spec(w=50), max_pixels=MAX)
    assert e.value.code == ImageProcessingError.TOO_MANY_PIXELS
    with pytest.raises(ImageProcessingError) as e:  # no profile limit is not no limit
        render(source, spec(w=50), max_pixels=None)
    assert e.value.code == ImageProcessingError.TOO_MANY_PIXELS
    assert str(DEFAULT_MAX_PIXELS) in e.value.detail


def noisy_jpeg() -> bytes:
    noise = Image.merge("RGB", [Image.effect_noise((400, 300), 80) for _ in range(3)])
    return encode(noise, "JPEG", quality=90)


@pytest.mark.parametrize(("data", "code"), [
    (b"", ImageProcessingError.NOT_AN_IMAGE),
    (b"hello, world\n" * 50, ImageProcessingError.NOT_AN_IMAGE),
    (b"1,2,3\n4,5,6\n", ImageProcessingError.NOT_AN_IMAGE),  # libvips would read CSV
    (b"P3\n2 2\n255\n" + b"0 0 0 " * 4, ImageProcessingError.NOT_AN_IMAGE),  # PPM
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, ImageProcessingError.CORRUPT_IMAGE),
    (b"\xff\xd8\xff" + b"\x00" * 100, ImageProcessingError.CORRUPT_IMAGE),
    (b"GIF89a" + b"\xff" * 30, ImageProcessingError.CORRUPT_IMAGE),
    (png_header_only(50, 50), ImageProcessingError.CORRUPT_IMAGE),  # header, no pixels
])
def test_broken_and_foreign_files(tmp_path: Path, data: bytes, code: str) -> None:
    path = tmp_path / "file"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(ImageProcessingError) as e:
            render(source, spec(w=50), max_pixels=MAX)
        assert e.value.code == code, (source, e.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "AVIF"])
def test_source_formats(tmp_path: Path, fmt: str) -> None:
    data = encode(quadrants((64, 48), RED, BLUE), fmt)
    path = tmp_path / "source"
    path.write_bytes(data)
    for source in (data, path):
        out = render(source, spec(w=32, format="png"), max_pixels=MAX)
        im = decoded(out.data).convert("RGB")
        assert im.size == (32, 24)
        assert near(im.getpixel((3, 3)), RED, 60) and near(im.getpixel((30, 20)), BLUE, 60)


@pytest.mark.parametrize("fmt", ["BMP", "PSD", "ICO"])
def test_images_we_do_not_decode_are_unsupported(fmt: str) -> None:
    if fmt == "PSD":  # Pillow reads PSD but does not write it: a header is enough here
        data = b"8BPS\x00\x01" + b"\x00" * 40
    else:
        data = encode(Image.new("RGB", (16, 16), RED), fmt)
    with pytest.raises(ImageProcessingError) as e:
        render(data, spec(w=8), max_pixels=MAX)
    assert e.value.code == ImageProcessingError.UNSUPPORTED_IMAGE
    assert fmt in e.value.detail


def test_wide_gamut_is_converted_to_srgb() -> None:
    """A Display P3 JPEG: its numbers are not sRGB's. Stripping the profile without converting
    would shift every colour; sRGB red in P3 is about (234, 51, 35)."""
    import pyvips

    red = pyvips.Image.black(40, 40).new_from_image([255, 0, 0]).copy(interpretation="srgb")
    p3 = red.icc_transform("p3", input_profile="srgb")
    data = p3.jpegsave_buffer(Q=95)
    assert "icc_profile" in Image.open(io.BytesIO(data)).info  # the source carries P3
    for fmt in ("png", "jpeg", "webp"):
        im = decoded(render(data, spec(w=20, format=fmt), max_pixels=MAX).data)
        assert "icc_profile" not in im.info
        assert near(im.convert("RGB").getpixel((10, 10)), RED, 20), fmt


def test_truncated_jpeg_is_corrupt_not_grey() -> None:
    data = noisy_jpeg()
    with pytest.raises(ImageProcessingError) as e:
        render(data[: len(data) // 2], spec(w=50), max_pixels=MAX)
    assert e.value.code == ImageProcessingError.CORRUPT_IMAGE


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        render(tmp_path / "nope.jpg", spec(w=50), max_pixels=MAX)


def test_a_path_that_looks_like_vips_options(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg[shrink=8]"
    path.write_bytes(encode(Image.new("RGB", (80, 80), RED), "JPEG"))
    assert render(path, spec(w=40), max_pixels=MAX).width == 40


def test_threads_render_independently(landscape: Path) -> None:
    specs = [spec(w=w, format=f) for w in (50, 100, 150) for f in ("webp", "jpeg", "png")] * 4
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda s: render(landscape, s, max_pixels=MAX), specs))
    for s, out in zip(specs, outs, strict=True):
        im = decoded(out.data)
        assert im.size == (s.w, round(s.w * 2 / 3)) and out.mime_type == s.mime_type


def test_a_free_side_is_bounded_by_the_box_not_left_open():
    # a 1x1000 image asked for w=10, enlarged: without a bound on h, 10x10000
    tall = encode(Image.new("RGB", (1, 1000), RED), "PNG")
    spec = TransformSpec.parse({"w": "10", "enlarge": "true", "format": "png"},
                               TransformLimits())
    out = render(tall, spec, max_pixels=None, box=TransformLimits(max_width=50, max_height=400))
    assert (out.width, out.height) == (1, 400)
    out = render(tall, spec, max_pixels=None)  # no box: the absolute ceiling
    assert out.height == MAX_DIMENSION
