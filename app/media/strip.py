"""Remove metadata (EXIF with its GPS, XMP, IPTC, comments, text chunks) from JPEG, PNG and
WebP files without re-encoding them: whole segments or chunks are dropped, the image data is
never touched (a JPEG's scan data, from SOS on, stays byte-identical).

Colour data stays (a JPEG's ICC profile and Adobe colour-transform segment, PNG's iCCP, sRGB,
gAMA, cHRM, pHYs, WebP's ICCP): without it the picture would look different. The EXIF
orientation stays too, as a minimal EXIF block holding nothing but that one tag, so browsers
(which honour it) and the derivative pipeline still show the image the right way up.

Pure and synchronous, fed as the bytes stream, in bounded memory (one module per format:
strip_jpeg, strip_png, strip_webp; what they share in strip_base):

- :class:`JpegStripper` and :class:`PngStripper` are filters: ``feed`` returns the bytes
  that may go on, ``finish`` the rest. Everything a JPEG carries as metadata comes before
  its first scan, and PNG chunks carry their own lengths, so neither needs to see the whole
  file; a JPEG segment (at most 64 KiB) is the most either holds back.
- WebP cannot be filtered in one pass: its metadata chunks come last, after the image data,
  and dropping them changes the RIFF size written in the first bytes. :class:`WebpScanner`
  reads the layout in a first pass and plans the edits; :meth:`WebpPlan.filter` applies them
  in a second.

A file whose structure is not what it should be is never refused here: from the first thing
that does not parse, the rest passes through untouched, and ``report.note`` says why.
"""

from __future__ import annotations

from app.media.strip_base import (  # noqa: F401  (the public names of the package)
    GPS_IFD_TAG,
    JPEG,
    MAX_EXIF,
    ORIENTATION_TAG,
    PNG,
    STRIPPABLE,
    WEBP,
    Filter,
    Report,
    is_minimal_exif,
    minimal_exif,
    read_exif,
)
from app.media.strip_jpeg import JpegStripper
from app.media.strip_png import PNG_SIGNATURE, PngStripper  # noqa: F401
from app.media.strip_webp import WebpScanner


def new_filter(mime_type: str) -> Filter:
    """A one-pass filter for JPEG or PNG (WebP needs two passes: see :class:`WebpScanner`)."""
    if mime_type == JPEG:
        return JpegStripper()
    if mime_type == PNG:
        return PngStripper()
    raise ValueError(f"no one-pass metadata filter for {mime_type}")


def strip_bytes(mime_type: str, data: bytes) -> tuple[bytes, Report]:
    """The whole file at once (small files, tests)."""
    if mime_type == WEBP:
        scanner = WebpScanner()
        scanner.feed(data)
        plan = scanner.finish()
        if not plan.report.changed:
            return data, plan.report
        filt: Filter = plan.filter()
    else:
        filt = new_filter(mime_type)
    out = filt.feed(data) + filt.finish()
    return out, filt.report
