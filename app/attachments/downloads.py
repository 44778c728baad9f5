"""HTTP range requests (RFC 9110 §14) and safe download headers."""

from __future__ import annotations

from app.errors import RangeNotSatisfiable

# Types a browser would execute or render as a document in our origin: always downloaded.
ACTIVE_TYPES = {
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/javascript", "application/javascript", "application/x-javascript", "text/css",
    "application/pdf",
}


def is_active(mime_type: str) -> bool:
    return mime_type in ACTIVE_TYPES or mime_type.endswith("+xml")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as inclusive (start, end); None to send everything.

    Multi-range requests get the whole file, which RFC 9110 allows.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            length = int(last)
            if length <= 0:
                raise RangeNotSatisfiable(f"bytes */{size}", size=size)
            start, end = max(size - length, 0), size - 1
        else:
            start = int(first)
            end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        raise RangeNotSatisfiable(f"the file has {size} bytes", size=size)
    if start > end:
        return None  # syntactically invalid: ignored, as RFC 9110 says
    return start, min(end, size - 1)
