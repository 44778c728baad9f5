"""HTTP range requests (RFC 9110 §14) and safe download headers."""

from __future__ import annotations

import re

from app.errors import RangeNotSatisfiable

# Types a browser would execute or render as a document in our origin: always downloaded.
ACTIVE_TYPES = {
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/javascript", "application/javascript", "application/x-javascript", "text/css",
    "application/pdf",
}


def is_active(mime_type: str) -> bool:
    return mime_type in ACTIVE_TYPES or mime_type.endswith("+xml")


# RFC 9110 §14.1.1, with DIGIT as RFC 5234 has it: ASCII only. int() alone would also take
# "1_0", "+1", " 1" and non-ASCII digits, reading a header the RFC calls invalid as a range.
_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")
_LIST_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")
# "recipients MUST anticipate potentially large decimal numerals": a position this long is
# past the end of any file (and int() refuses numerals of over 4300 digits)
_MAX_DIGITS = 18
_BEYOND_ANY_FILE = 10**_MAX_DIGITS


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _MAX_DIGITS else _BEYOND_ANY_FILE


def _less(a: str, b: str) -> bool:
    """a < b for numerals of any length (exact, also where _position caps both)."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) < (len(b), b)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as inclusive (start, end); None to send everything.

    An invalid header, or another unit than bytes, is ignored (the whole file), as RFC 9110
    says; a valid one that no range of can be served raises RangeNotSatisfiable (416). Several
    ranges get the whole file, which RFC 9110 allows.
    """
    if not header:
        return None
    unit, eq, range_set = header.partition("=")
    if not eq or not unit.isascii() or unit.lower() != "bytes":
        return None
    # a list (RFC 9110 §5.6.1): OWS around its commas, empty elements count for nothing
    specs = [spec for spec in _LIST_SEPARATOR.split(range_set) if spec]
    if not specs:
        return None
    satisfiable: list[tuple[int, int]] = []
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last, suffix = match.groups()
        if suffix is not None:
            length = _position(suffix)
            if length > 0:  # a suffix of an empty file is satisfiable: the empty file
                satisfiable.append((max(size - length, 0), size - 1))
            continue
        if last and _less(last, first):
            return None  # invalid, which makes the whole header invalid
        start = _position(first)
        end = _position(last) if last else size - 1
        if start < size:
            satisfiable.append((start, min(end, size - 1)))
    if not satisfiable:
        raise RangeNotSatisfiable(f"the file has {size} bytes", size=size)
    if len(specs) > 1 or size == 0:
        return None
    return satisfiable[0]
