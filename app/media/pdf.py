"""The first page of a PDF as a picture, with PDFium (pypdfium2: Apache-2.0/BSD, the wheel
bundles the library; PyMuPDF is AGPL).

The page is rasterised once, at the scale the largest derivative needs (a 200x200 thumbnail
of a Letter page renders 155x200 pixels, not a 300 dpi page scaled down), and the render is
progressive so the deadline is checked while PDFium draws. PDFium is not thread-safe: every
call into it holds one lock, so a worker renders one PDF at a time (other previews go on in
the other threads).
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from app.media.derivatives import DerivativeSpec
from app.media.errors import MediaLimits, PreviewError

_LOCK = threading.Lock()
# A render's bitmap never exceeds this (a cover box on a page 1 pt wide and 14,400 pt tall
# would otherwise ask for a bitmap of billions of pixels): the scale is lowered to fit.
MAX_RENDER_PIXELS = 40_000_000


def first_page(path: str | Path, specs: Iterable[DerivativeSpec], limits: MediaLimits
               ) -> tuple[Image.Image | None, dict[str, Any]]:
    """(page 1 as an RGB image sized for ``specs``, or None without specs; metadata with
    ``pages`` and page 1's ``width``/``height`` in points). Raises PreviewError.

    ``limits.timeout`` counts from when this file has PDFium to itself: time spent waiting
    for another thread's PDF is not this file's fault."""
    import pypdfium2 as pdfium

    specs = list(specs)
    with _LOCK:
        deadline = time.monotonic() + limits.timeout
        try:
            doc = pdfium.PdfDocument(str(path))
        except pdfium.PdfiumError as e:
            raise _load_failure(path, e) from None
        try:
            pages = len(doc)
            if pages <= 0:
                raise PreviewError(PreviewError.EMPTY_PDF, "the PDF has no pages")
            if pages > limits.max_pages:
                raise PreviewError(PreviewError.TOO_MANY_PAGES,
                                   f"the PDF has {pages} pages; the limit is {limits.max_pages}")
            try:
                page = doc[0]
            except pdfium.PdfiumError as e:
                raise PreviewError(PreviewError.CORRUPT_PDF,
                                   f"the first page cannot be read: {e}") from None
            try:
                width, height = page.get_size()
                if not (math.isfinite(width) and math.isfinite(height)
                        and width > 0 and height > 0):
                    raise PreviewError(PreviewError.CORRUPT_PDF,
                                       f"the first page has no area ({width}x{height} pt)")
                meta = {"pages": pages, "width": round(width, 2), "height": round(height, 2)}
                if not specs:
                    return None, meta
                scale = _scale(specs, width, height)
                return _render(page, width, height, scale, deadline), meta
            finally:
                page.close()
        finally:
            doc.close()


def _load_failure(path: str | Path, error: Exception) -> PreviewError:
    """Why PDFium would not open the file. Its error code is not enough: it is PDFium's last
    error, which a failure that sets none (a document without pages) leaves as the previous
    file's, so the file is asked too: an /Encrypt entry in the trailer (plain text, at the end,
    or at the start of a linearized file), a page tree counting no page."""
    with open(path, "rb") as f:
        head = f.read(_PEEK)
        f.seek(0, 2)
        f.seek(max(len(head), f.tell() - _PEEK))
        text = head + f.read(_PEEK)
    if b"/Encrypt" in text:
        return PreviewError(PreviewError.ENCRYPTED_PDF, "the PDF is encrypted with a password")
    if re.search(rb"/Count\s*0(?![0-9])", text) and not re.search(rb"/Count\s*[1-9]", text):
        return PreviewError(PreviewError.EMPTY_PDF, "the PDF has no pages")
    # (not PDFium's message: it names its last error, which may be another file's)
    return PreviewError(PreviewError.CORRUPT_PDF, "the PDF cannot be read: PDFium cannot parse"
                        " its structure")


_PEEK = 1024 * 1024


def _scale(specs: list[DerivativeSpec], width: float, height: float) -> float:
    """Pixels per point that give the largest derivative its size: ``contain`` fits the box,
    ``cover`` covers it (a page is vector data, so a page smaller than the box is drawn
    larger, not upscaled afterwards)."""
    scale = 0.0
    for spec in specs:
        sx, sy = spec.width / width, spec.height / height
        scale = max(scale, max(sx, sy) if spec.fit == "cover" else min(sx, sy))
    pixels = width * height * scale * scale
    if pixels > MAX_RENDER_PIXELS:
        scale *= math.sqrt(MAX_RENDER_PIXELS / pixels)
    return scale


def _render(page: Any, width: float, height: float, scale: float,
            deadline: float) -> Image.Image:
    import pypdfium2 as pdfium
    import pypdfium2.raw as c

    w = max(1, math.ceil(width * scale))
    h = max(1, math.ceil(height * scale))
    bitmap = pdfium.PdfBitmap.new_native(w, h, c.FPDFBitmap_BGR, rev_byteorder=True)
    bitmap.fill_rect((255, 255, 255, 255), 0, 0, w, h)

    # Progressive rendering: PDFium asks NeedToPauseNow between page objects; pausing lets
    # the deadline be checked while a hostile page (millions of paths) is drawn.
    pause = c.IFSDK_PAUSE(version=1)
    pause.NeedToPauseNow = type(pause.NeedToPauseNow)(lambda _self: True)
    flags = c.FPDF_ANNOT | c.FPDF_REVERSE_BYTE_ORDER
    status = c.FPDF_RenderPageBitmap_Start(bitmap, page, 0, 0, w, h, 0, flags,
                                           ctypes.byref(pause))
    try:
        while status == c.FPDF_RENDER_TOBECONTINUED:
            if time.monotonic() > deadline:
                raise PreviewError(PreviewError.TIMEOUT,
                                   "rendering the first page took too long")
            status = c.FPDF_RenderPage_Continue(page, ctypes.byref(pause))
    finally:
        c.FPDF_RenderPage_Close(page)
    if status == c.FPDF_RENDER_FAILED:
        raise PreviewError(PreviewError.CORRUPT_PDF, "the first page cannot be rendered")
    im = bitmap.to_pil()
    return im.convert("RGB") if im.mode != "RGB" else im.copy()
