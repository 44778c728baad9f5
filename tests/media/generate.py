"""Real media files made in the tests: PDFs written by PDFium (pypdfium2) or by hand, videos
and audio encoded with PyAV (FFmpeg). Nothing is checked in; every file is what a real
encoder writes."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

Colour = tuple[int, int, int]


def pdf(path: Path, pages: int = 1, size: tuple[float, float] = (612, 792),
        fill: Colour | None = None, left: Colour | None = None, rotate: int = 0) -> Path:
    """A PDF of ``pages`` pages of ``size`` points; with ``fill`` page 1 is painted that
    colour edge to edge (a vector rectangle), with ``left`` its left half; ``rotate``: page
    1's /Rotate (clockwise degrees, as viewers show it)."""
    doc = pdfium.PdfDocument.new()
    try:
        for i in range(pages):
            page = doc.new_page(*size)
            if fill is not None and i == 0:
                rect = pdfium_c.FPDFPageObj_CreateNewRect(0, 0, size[0], size[1])
                pdfium_c.FPDFPageObj_SetFillColor(rect, *fill, 255)
                pdfium_c.FPDFPath_SetDrawMode(rect, pdfium_c.FPDF_FILLMODE_ALTERNATE, False)
                pdfium_c.FPDFPage_InsertObject(page, rect)
                pdfium_c.FPDFPage_GenerateContent(page)
            if left is not None and i == 0:
                rect = pdfium_c.FPDFPageObj_CreateNewRect(0, 0, size[0] / 2, size[1])
                pdfium_c.FPDFPageObj_SetFillColor(rect, *left, 255)
                pdfium_c.FPDFPath_SetDrawMode(rect, pdfium_c.FPDF_FILLMODE_ALTERNATE, False)
                pdfium_c.FPDFPage_InsertObject(page, rect)
                pdfium_c.FPDFPage_GenerateContent(page)
            if rotate and i == 0:
                page.set_rotation(rotate)
            page.close()
        doc.save(str(path))
    finally:
        doc.close()
    return path


def busy_pdf(path: Path, shapes: int = 30_000) -> Path:
    """One page drawn with ``shapes`` small translucent squares: slow to render."""
    doc = pdfium.PdfDocument.new()
    try:
        page = doc.new_page(612, 792)
        for i in range(shapes):
            rect = pdfium_c.FPDFPageObj_CreateNewRect((i * 7) % 600, (i * 13) % 780, 10, 10)
            pdfium_c.FPDFPageObj_SetFillColor(rect, i % 256, 0, 0, 128)
            pdfium_c.FPDFPath_SetDrawMode(rect, pdfium_c.FPDF_FILLMODE_ALTERNATE, True)
            pdfium_c.FPDFPage_InsertObject(page, rect)
        pdfium_c.FPDFPage_GenerateContent(page)
        page.close()
        doc.save(str(path))
    finally:
        doc.close()
    return path


def image_bomb_pdf(path: Path, side: int = 12_000) -> Path:
    """A page showing one black ``side`` x ``side`` RGB image (12,000: 432 MB of pixels) held
    in about a megabyte of Flate data."""
    deflate = zlib.compressobj(9)
    row = bytes(side * 3)
    data = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    content = b"q 612 0 0 792 0 0 cm /Im1 Do Q"
    return _write_pdf(path, [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /XObject << /Im1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB"
        b" /BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n"
        % (side, side, len(data)) + data + b"\nendstream",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ])


def _write_pdf(path: Path, objects: Sequence[bytes], trailer_extra: bytes = b"") -> Path:
    """A PDF file of these objects (1-based), with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += (b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer_extra
            + b">>\nstartxref\n%d\n%%%%EOF\n" % xref)
    path.write_bytes(bytes(out))
    return path


def encrypted_pdf(path: Path) -> Path:
    """A PDF encrypted with the standard handler (RC4, revision 2) and a user password
    that is not empty: it cannot be opened without it."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        b"<< /Filter /Standard /V 1 /R 2 /P -4"
        b" /O <" + b"a1" * 32 + b"> /U <" + b"b2" * 32 + b"> >>",
    ]
    return _write_pdf(path, objects,
                      b"/Encrypt 4 0 R /ID [<" + b"c3" * 16 + b"> <" + b"c3" * 16 + b">] ")


def empty_pdf(path: Path) -> Path:
    """A well-formed PDF whose page tree has no pages."""
    return _write_pdf(path, [b"<< /Type /Catalog /Pages 2 0 R >>",
                             b"<< /Type /Pages /Kids [] /Count 0 >>"])


def page_tree_bomb(path: Path, depth: int = 20) -> Path:
    """A few hundred bytes claiming 2**depth pages: each level of the page tree lists the
    next one twice (the same object), so a reader that walks it walks 2**depth leaves."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    for level in range(depth):
        number = 2 + level
        objects.append(b"<< /Type /Pages /Kids [%d 0 R %d 0 R] /Count %d >>"
                       % (number + 1, number + 1, 2 ** (depth - level)))
    objects.append(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] >>"
                   % (1 + depth))
    return _write_pdf(path, objects)


def video(path: Path, *, fmt: str = "mp4", codec: str = "libx264",
          size: tuple[int, int] = (320, 240),
          seconds: float = 2.0, fps: int = 25, gop: int | None = None,
          colours: tuple[Colour, Colour] = ((0, 0, 255), (255, 0, 0)),
          change_at: float = 1.0, audio: bool = False, rotation: int = 0,
          left: Colour | None = None, sample_aspect: Fraction | None = None) -> Path:
    """A video of solid frames: ``colours[0]`` before ``change_at`` seconds, ``colours[1]``
    from then on; a keyframe every ``gop`` frames (default: one a second, so one falls at
    exactly 1 s). With ``audio``, a silent AAC (MP4/MOV/MKV) or Opus (WebM) track; with
    ``rotation``, a display matrix turning it that many degrees counter-clockwise (what
    phones write); with ``left``, the left half of every frame painted that colour."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop or fps
        if rotation:
            stream.set_display_rotation(rotation)
        if sample_aspect is not None:  # anamorphic: pixels shown wider (>1) or narrower
            stream.codec_context.sample_aspect_ratio = sample_aspect
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "sc_threshold": "0"}
        elif codec == "libvpx":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        sound = None
        if audio:
            sound = out.add_stream("libopus" if fmt == "webm" else "aac", rate=48000)
        pictures = [Image.new("RGB", size, c) for c in colours]
        if left is not None:
            for picture in pictures:
                picture.paste(left, (0, 0, size[0] // 2, size[1]))
        frames = [av.VideoFrame.from_image(picture) for picture in pictures]
        for i in range(round(seconds * fps)):
            frame = frames[0] if i / fps < change_at else frames[1]
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if sound is not None:
            _silence(out, sound, seconds)
    return path


def _silence(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate or 48000
    frame_size = stream.codec_context.frame_size or 1024
    layout = "mono"
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    total = int(seconds * rate)
    done = 0
    while done < total:
        n = min(frame_size, total - done)
        frame = av.AudioFrame(format=fmt, layout=layout, samples=frame_size)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = rate
        frame.pts = done
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
        done += n
    for packet in stream.encode():
        out.mux(packet)


def audio(path: Path, *, fmt: str, codec: str, seconds: float = 1.5, rate: int = 48000) -> Path:
    """A tone (440 Hz) of ``seconds`` in ``fmt`` ("mp3", "ogg", "wav") encoded with ``codec``."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame_size = stream.codec_context.frame_size or 1024
        total = int(seconds * rate)
        done = 0
        while done < total:
            n = min(frame_size, total - done)
            samples = b"".join(
                int(8000 * math.sin(2 * math.pi * 440 * (done + i) / rate)).to_bytes(
                    2, "little", signed=True) for i in range(n))
            frame = av.AudioFrame(format="s16", layout="mono", samples=n)
            frame.planes[0].update(samples + bytes(frame.planes[0].buffer_size - len(samples)))
            frame.sample_rate = rate
            frame.pts = done
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
            done += n
        for packet in stream.encode():
            out.mux(packet)
    return path
