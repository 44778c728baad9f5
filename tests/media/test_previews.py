"""Previews of PDFs, videos and audio files (app.media.previews), on real files made here
(tests/media/generate.py): PDFium writes the PDFs, FFmpeg (PyAV) encodes the videos."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from app.media import thumbhash
from app.media.derivatives import DerivativeSpec, ImageProcessingError
from app.media.previews import MediaLimits, PreviewError, build_preview, kind_of
from app.media.sniff import known_types, sniff_mime
from tests.media import generate

THUMB = DerivativeSpec(width=200, height=200)
SQUARE = DerivativeSpec(width=64, height=64, fit="cover", format="png")
BLUE, RED, GREEN = (0, 0, 255), (255, 0, 0), (0, 128, 0)


def centre(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
        return rgb.getpixel((rgb.width // 2, rgb.height // 2))


def near(colour: tuple[int, ...], want: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, want, strict=True))


def preview(path: Path, specs: dict | None = None, **kw):
    mime = sniff_mime(path.read_bytes()[:65536])
    return build_preview(path, mime, {"thumb": THUMB} if specs is None else specs,
                         max_pixels=kw.pop("max_pixels", None), **kw)


# -- PDF -----------------------------------------------------------------------------------------


def test_pdf_first_page_pages_and_size_in_points(tmp_path: Path) -> None:
    path = generate.pdf(tmp_path / "a.pdf", pages=3, size=(612, 792), fill=GREEN)
    made = preview(path, {"thumb": THUMB, "square": SQUARE})
    assert made.metadata["pages"] == 3
    assert (made.metadata["width"], made.metadata["height"]) == (612, 792)
    thumb = made.derivatives["thumb"]
    assert (thumb.width, thumb.height) == (155, 200)  # contain: 612x792 into 200x200
    assert thumb.mime_type == "image/webp"
    assert near(centre(thumb.data), GREEN)
    square = made.derivatives["square"]
    assert (square.width, square.height) == (64, 64) and square.mime_type == "image/png"
    assert near(centre(square.data), GREEN, 2)


def test_pdf_is_rendered_at_the_scale_the_derivative_needs(tmp_path: Path, monkeypatch) -> None:
    """Not a 300 dpi page scaled down: the bitmap PDFium fills is the derivative's size."""
    from app.media import pdf

    sizes = []
    real = pdf._render

    def spy(page, width, height, scale, deadline):
        im = real(page, width, height, scale, deadline)
        sizes.append(im.size)
        return im

    monkeypatch.setattr(pdf, "_render", spy)
    path = generate.pdf(tmp_path / "a.pdf", size=(1224, 1584))  # a page twice Letter
    preview(path)
    assert sizes == [(155, 200)]
    # a small page is drawn larger (vector data), not rendered small and upscaled
    sizes.clear()
    preview(generate.pdf(tmp_path / "b.pdf", size=(100, 50)))
    assert sizes == [(200, 100)]


def test_a_rotated_page_is_shown_as_viewers_show_it(tmp_path: Path) -> None:
    """/Rotate 90 (clockwise): the left half (red) of a 600x300 page is at the top."""
    path = generate.pdf(tmp_path / "r.pdf", size=(600, 300), left=RED, rotate=90)
    made = preview(path, {"t": DerivativeSpec(width=200, height=200, format="png")})
    assert (made.metadata["width"], made.metadata["height"]) == (300, 600)
    t = made.derivatives["t"]
    assert (t.width, t.height) == (100, 200)
    with Image.open(io.BytesIO(t.data)) as im:
        rgb = im.convert("RGB")
        assert near(rgb.getpixel((50, 10)), RED, 2)
        assert near(rgb.getpixel((50, 190)), (255, 255, 255), 2)


def test_pdf_without_derivatives_gets_its_facts_and_a_thumbhash(tmp_path: Path) -> None:
    path = generate.pdf(tmp_path / "a.pdf", pages=2, fill=RED)
    made = preview(path, {})
    assert made.derivatives == {}
    assert made.metadata["pages"] == 2
    r, g, b, _ = thumbhash.average_rgba(thumbhash_bytes(made.metadata["thumbhash"]))
    assert near((round(r * 255), round(g * 255), round(b * 255)), RED, 20)
    assert made.metadata["dominant_color"] == "#ff0000"


@pytest.mark.parametrize(("make", "code"), [
    (generate.encrypted_pdf, "encrypted_pdf"),
    (generate.empty_pdf, "empty_pdf"),
    (lambda p: p.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog") and p, "corrupt_pdf"),
    (generate.page_tree_bomb, "corrupt_pdf"),
])
def test_bad_pdfs_fail_with_a_clear_code(tmp_path: Path, make, code: str) -> None:
    path = make(tmp_path / "bad.pdf")
    started = time.monotonic()
    with pytest.raises(PreviewError) as e:
        preview(path)
    assert e.value.code == code
    assert isinstance(e.value, ImageProcessingError)  # handled wherever a bad image is
    assert time.monotonic() - started < 5
    # without derivatives there is nothing to promise: stored, without facts
    assert preview(path, {}).metadata == {}


def test_encrypted_is_told_apart_after_other_failures(tmp_path: Path) -> None:
    """PDFium's error code is its last error, whatever file it was: not trusted alone."""
    enc = generate.encrypted_pdf(tmp_path / "enc.pdf")
    empty = generate.empty_pdf(tmp_path / "empty.pdf")
    codes = []
    for path in (enc, empty, enc, empty):
        with pytest.raises(PreviewError) as e:
            preview(path)
        codes.append(e.value.code)
    assert codes == ["encrypted_pdf", "empty_pdf", "encrypted_pdf", "empty_pdf"]


def test_waiting_for_another_pdf_does_not_count_against_the_deadline(tmp_path: Path) -> None:
    """PDFium takes one PDF at a time: a PDF queued behind a slow one keeps its own time."""
    import threading

    from app.media import pdf

    path = generate.busy_pdf(tmp_path / "a.pdf", shapes=3000)  # paused while drawn
    result: dict = {}

    def run() -> None:
        try:
            result["made"] = preview(path, limits=MediaLimits(timeout=0.5))
        except PreviewError as e:
            result["error"] = e

    with pdf._LOCK:  # another thread's PDF, 1 s long
        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(1.0)
    worker.join(10)
    assert "error" not in result, result
    assert result["made"].metadata["pages"] == 1


def test_pdf_with_thousands_of_pages_is_refused_quickly(tmp_path: Path) -> None:
    path = generate.pdf(tmp_path / "many.pdf", pages=3000)
    started = time.monotonic()
    with pytest.raises(PreviewError) as e:
        preview(path, limits=MediaLimits(max_pages=2000))
    assert e.value.code == "too_many_pages" and "3000" in e.value.detail
    assert time.monotonic() - started < 5
    made = preview(path, limits=MediaLimits(max_pages=3000))
    assert made.metadata["pages"] == 3000
    # the default limit
    path = generate.pdf(tmp_path / "more.pdf", pages=MediaLimits().max_pages + 1)
    with pytest.raises(PreviewError) as e:
        preview(path)
    assert e.value.code == "too_many_pages"


def test_a_slow_page_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    """PDFium renders progressively and is asked between page objects whether to go on."""
    path = generate.busy_pdf(tmp_path / "busy.pdf")
    big = {"t": DerivativeSpec(width=2000, height=2000)}
    started = time.monotonic()
    made = preview(path, big, limits=MediaLimits(timeout=30))
    full = time.monotonic() - started
    assert made.derivatives["t"].height == 2000
    started = time.monotonic()
    with pytest.raises(PreviewError) as e:
        preview(path, big, limits=MediaLimits(timeout=full / 20))
    assert e.value.code == "preview_timeout"
    assert time.monotonic() - started < full / 2
    # the lock and the document were released: the next PDF renders
    assert preview(generate.pdf(tmp_path / "a.pdf")).metadata["pages"] == 1


def test_a_huge_embedded_image_renders_in_bounded_memory(tmp_path: Path) -> None:
    """PDFium decodes an image while it downsamples it to the page's bitmap: 432 MB of pixels
    behind a 1 MB file do not become 432 MB of memory."""
    path = generate.image_bomb_pdf(tmp_path / "bomb.pdf")
    code = (
        "import json, sys\n"
        "from app.media.previews import build_preview\n"
        "from app.media.derivatives import DerivativeSpec\n"
        "made = build_preview(sys.argv[1], 'application/pdf', {'t': DerivativeSpec(width=200,"
        " height=200)}, max_pixels=None)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(json.dumps([int(hwm.split()[1]), made.metadata['dominant_color']]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120, check=True)
    peak_kib, colour = json.loads(out.stdout)
    assert colour == "#000000"
    assert peak_kib / 1024 < 150  # measured: ~50 MiB


# -- video ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "codec", "mime", "vcodec", "acodec"), [
    ("mp4", "libx264", "video/mp4", "h264", "aac"),
    ("mov", "libx264", "video/quicktime", "h264", "aac"),
    ("webm", "libvpx", "video/webm", "vp8", "opus"),
    ("matroska", "libx264", "video/x-matroska", "h264", "aac"),
])
def test_video_poster_is_the_frame_at_one_second(tmp_path: Path, fmt: str, codec: str,
                                                 mime: str, vcodec: str, acodec: str) -> None:
    path = generate.video(tmp_path / "v", fmt=fmt, codec=codec, size=(320, 240), seconds=2.0,
                          fps=25, colours=(BLUE, RED), change_at=1.0, audio=True)
    assert sniff_mime(path.read_bytes()[:65536]) == mime
    made = preview(path, {"thumb": THUMB, "square": SQUARE})
    meta = made.metadata
    assert (meta["width"], meta["height"]) == (320, 240)
    assert meta["video_codec"] == vcodec and meta["audio_codec"] == acodec
    assert abs(meta["duration"] - 2.0) <= 1 / 25 + 0.03  # a frame (and the audio's padding)
    thumb = made.derivatives["thumb"]
    assert (thumb.width, thumb.height) == (200, 150)
    assert near(centre(thumb.data), RED, 16)  # painted from 1 s on; blue before
    square = made.derivatives["square"]
    assert (square.width, square.height) == (64, 64)
    assert near(centre(square.data), RED, 16)
    r, g, b, _ = thumbhash.average_rgba(thumbhash_bytes(meta["thumbhash"]))
    assert near((round(r * 255), round(g * 255), round(b * 255)), RED, 24)


def test_duration_is_exact_to_a_frame(tmp_path: Path) -> None:
    path = generate.video(tmp_path / "v.mkv", fmt="matroska", seconds=3.0, fps=30)
    assert abs(preview(path).metadata["duration"] - 3.0) <= 1 / 30


def test_keyframe_after_one_second_when_none_is_at_it(tmp_path: Path) -> None:
    """Keyframes every 1.6 s: the poster is the one at 1.6 s (green), not the frame at 1 s."""
    path = generate.video(tmp_path / "v.mp4", seconds=3.0, fps=10, gop=16,
                          colours=(BLUE, GREEN), change_at=1.5)
    assert near(centre(preview(path).derivatives["thumb"].data), GREEN, 16)


def test_short_video_gets_its_first_frame(tmp_path: Path) -> None:
    path = generate.video(tmp_path / "v.mp4", seconds=0.5, colours=(BLUE, RED), change_at=1.0)
    made = preview(path)
    assert made.metadata["duration"] < 1
    assert near(centre(made.derivatives["thumb"].data), BLUE, 16)


def test_video_with_one_keyframe_falls_back_to_it(tmp_path: Path) -> None:
    path = generate.video(tmp_path / "v.mp4", seconds=2.0, fps=10, gop=1000,
                          colours=(BLUE, RED), change_at=1.0)
    assert near(centre(preview(path).derivatives["thumb"].data), BLUE, 16)


@pytest.mark.parametrize(("rotation", "top", "bottom"), [
    (90, BLUE, RED),     # counter-clockwise: the left (red) half ends at the bottom
    (-90, RED, BLUE),
])
def test_a_phone_video_is_shown_upright(tmp_path: Path, rotation: int, top, bottom) -> None:
    path = generate.video(tmp_path / "v.mp4", size=(320, 240), colours=(BLUE, BLUE),
                          left=RED, rotation=rotation)
    made = preview(path)
    assert (made.metadata["width"], made.metadata["height"]) == (240, 320)
    thumb = made.derivatives["thumb"]
    assert (thumb.width, thumb.height) == (150, 200)
    with Image.open(io.BytesIO(thumb.data)) as im:
        rgb = im.convert("RGB")
        assert near(rgb.getpixel((75, 30)), top, 24)
        assert near(rgb.getpixel((75, 170)), bottom, 24)


def test_an_anamorphic_video_is_shown_with_square_pixels(tmp_path: Path) -> None:
    """720x576 coded with 16:15 pixels (PAL 4:3) is shown 768x576."""
    from fractions import Fraction

    path = generate.video(tmp_path / "v.mp4", size=(720, 576), sample_aspect=Fraction(16, 15))
    made = preview(path)
    assert (made.metadata["width"], made.metadata["height"]) == (768, 576)
    thumb = made.derivatives["thumb"]
    assert (thumb.width, thumb.height) == (200, 150)


def test_truncated_and_garbage_videos_fail(tmp_path: Path) -> None:
    data = generate.video(tmp_path / "v.mp4", seconds=2.0).read_bytes()
    for name, body in [("half.mp4", data[: len(data) // 2]),
                       ("head.mp4", data[:64]),
                       ("noise.mp4", data[:32] + bytes(range(256)) * 40)]:
        path = tmp_path / name
        path.write_bytes(body)
        with pytest.raises(PreviewError) as e:
            build_preview(path, "video/mp4", {"thumb": THUMB}, max_pixels=None)
        assert e.value.code == "corrupt_video", name
        assert build_preview(path, "video/mp4", {}, max_pixels=None).metadata == {}


def test_video_limits(tmp_path: Path) -> None:
    path = generate.video(tmp_path / "v.mp4", size=(320, 240), seconds=2.0)
    with pytest.raises(PreviewError) as e:
        preview(path, max_pixels=320 * 240 - 1)
    assert e.value.code == "too_many_pixels"
    with pytest.raises(PreviewError) as e:
        preview(path, limits=MediaLimits(max_duration=1.5))
    assert e.value.code == "too_long"
    with pytest.raises(PreviewError) as e:
        preview(path, limits=MediaLimits(timeout=0))
    assert e.value.code == "preview_timeout"


def test_a_4k_video_is_previewed_in_bounded_memory(tmp_path: Path) -> None:
    """The poster of a 3840x2160 video: one frame decoded (the decoder's YUV picture), scaled
    to the thumbnail by swscale; no full-size RGB copy. Peak RSS measured in a fresh process
    against the same process previewing a 320x240 video."""
    big = generate.video(tmp_path / "4k.mp4", size=(3840, 2160), seconds=2.0, fps=5, gop=5)
    small = generate.video(tmp_path / "small.mp4", size=(320, 240), seconds=2.0, fps=5, gop=5)
    code = (
        "import json, sys\n"
        "from app.media.previews import build_preview\n"
        "from app.media.derivatives import DerivativeSpec\n"
        "made = build_preview(sys.argv[1], 'video/mp4', {'t': DerivativeSpec(width=200,"
        " height=200)}, max_pixels=None)\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(json.dumps([int(hwm.split()[1]), made.derivatives['t'].width]))\n"
    )
    peaks = {}
    for name, path in (("small", small), ("big", big)):
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=120, check=True)
        rss_kib, width = json.loads(out.stdout)
        assert width == 200
        peaks[name] = rss_kib / 1024
    # one 4K YUV 4:2:0 picture is 12 MiB, an RGB one 24 MiB; a decoder keeping a frame per
    # thread, or frames converted at full size, would be well past this
    assert peaks["big"] - peaks["small"] < 50, peaks  # measured: ~20 MiB


# -- audio ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "codec", "mime", "name"), [
    ("mp3", "libmp3lame", "audio/mpeg", "mp3"),
    ("ogg", "libopus", "audio/ogg", "opus"),
    ("wav", "pcm_s16le", "audio/wave", "pcm_s16le"),
])
def test_audio_files_get_duration_and_codec(tmp_path: Path, fmt: str, codec: str, mime: str,
                                            name: str) -> None:
    path = generate.audio(tmp_path / f"a.{fmt}", fmt=fmt, codec=codec, seconds=1.5)
    assert sniff_mime(path.read_bytes()[:65536]) == mime
    assert mime in known_types()  # a profile can name it
    made = preview(path)  # derivatives asked for: sound has no picture, and does not fail
    assert made.derivatives == {}
    assert made.metadata["audio_codec"] == name
    assert abs(made.metadata["duration"] - 1.5) < 0.06


def test_broken_audio_is_stored_without_facts(tmp_path: Path) -> None:
    path = tmp_path / "a.mp3"
    path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 100)
    assert preview(path).metadata == {}


@pytest.mark.parametrize(("head", "mime"), [
    (b"\x00\x00\x00\x18ftypiso5\x00\x00\x02\x00iso5iso6", "video/mp4"),
    (b"\x00\x00\x00\x18ftypdash\x00\x00\x00\x00iso6avc1", "video/mp4"),
    (b"\x00\x00\x00\x18ftypmp41\x00\x00\x00\x00mp41isom", "video/mp4"),
    (b"\x00\x00\x00\x18ftypzzzz\x00\x00\x00\x00zzzzzzzz", "application/octet-stream"),
    (b"OggS\x00\x02" + bytes(22) + b"\x01\x1e\x01vorbis" + bytes(30), "audio/ogg"),
    (b"OggS\x00\x02" + bytes(22) + b"\x01\x2a\x80theora" + bytes(30), "video/ogg"),
])
def test_sniffer_names_more_containers(head: bytes, mime: str) -> None:
    assert sniff_mime(head + bytes(200)) == mime


def test_kinds() -> None:
    assert kind_of("image/png") == "image"
    assert kind_of("application/pdf") == "pdf"
    assert kind_of("video/quicktime") == "video"
    assert kind_of("audio/ogg") == "audio" and kind_of("application/ogg") == "audio"
    assert kind_of("text/plain") == "other"
    for mime in ("video/mp4", "video/webm", "video/quicktime", "video/x-matroska",
                 "audio/mpeg", "audio/ogg", "audio/wave", "application/pdf"):
        assert mime in known_types(), mime


# -- images: thumbhash during promotion ----------------------------------------------------------


def test_image_thumbhash_and_dominant_colour(tmp_path: Path) -> None:
    im = Image.new("RGB", (400, 300), (30, 160, 90))
    im.paste((200, 40, 40), (0, 0, 100, 300))  # a quarter red
    path = tmp_path / "a.jpg"
    im.save(path, "JPEG", quality=95)
    for specs in ({}, {"thumb": THUMB}):
        made = preview(path, specs)
        r, g, b, a = thumbhash.average_rgba(thumbhash_bytes(made.metadata["thumbhash"]))
        want = [0.75 * c1 + 0.25 * c2 for c1, c2 in zip((30, 160, 90), (200, 40, 40),
                                                        strict=True)]
        assert near((round(r * 255), round(g * 255), round(b * 255)),
                    tuple(round(v) for v in want), 12)
        assert a == 1.0
        assert near(tuple(int(made.metadata["dominant_color"][i:i + 2], 16)
                          for i in (1, 3, 5)), (30, 160, 90), 8)
        assert abs(thumbhash.approximate_aspect_ratio(
            thumbhash_bytes(made.metadata["thumbhash"])) - 4 / 3) < 0.2


def test_a_broken_image_in_a_profile_without_derivatives_is_stored_without_facts(
        tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    assert preview(path, {}).metadata == {}
    with pytest.raises(ImageProcessingError):
        preview(path)


def thumbhash_bytes(value: str) -> bytes:
    import base64

    return base64.b64decode(value)


async def test_previews_run_in_the_bounded_pool_off_the_event_loop(tmp_path: Path,
                                                                   monkeypatch) -> None:
    import asyncio
    import threading

    from app.media import previews, render
    from app.storage import one_chunk, storage_from_url

    storage = storage_from_url(f"file://{tmp_path}/store")
    data = generate.pdf(tmp_path / "a.pdf").read_bytes()
    await storage.write("a.pdf", one_chunk(data), content_type="application/pdf")
    threads = []
    real = previews.build_preview

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "build_preview", spy)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    try:
        made = await render.preview(storage, "a.pdf", "application/pdf", {"thumb": THUMB},
                                    None, MediaLimits())
    finally:
        ticker.cancel()
    assert made.metadata["pages"] == 1
    assert threads and threads[0].startswith("derivatives")
    assert ticks > 1  # the loop went on while the page was drawn
