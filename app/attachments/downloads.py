"""HTTP range requests (RFC 9110 §14), conditional requests (§13) and safe download
headers."""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime

from app.errors import RangeNotSatisfiable

# What a browser may show in our origin: pictures, sound, video, PDF and plain text, none of
# which runs script (with X-Content-Type-Options: nosniff, the browser keeps to the type).
# Everything else is downloaded: an allowlist, so a type nobody thought of (HTML, SVG, XML,
# a new +xml flavour...) is never rendered as a document of ours.
INLINE_PREFIXES = ("image/", "video/", "audio/")
INLINE_TYPES = {"application/pdf", "text/plain"}
# images that are documents (SVG runs script)
NOT_INLINE = {"image/svg+xml"}


def serves_inline(mime_type: str) -> bool:
    essence = mime_type.partition(";")[0].strip().lower()
    if essence in NOT_INLINE or essence.endswith("+xml"):
        return False
    return essence in INLINE_TYPES or essence.startswith(INLINE_PREFIXES)


def is_active(mime_type: str) -> bool:
    """Whether a download of this type is sent as an attachment (never shown inline)."""
    return not serves_inline(mime_type)


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


# --- conditional requests (RFC 9110 §13) -------------------------------------------------------

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; found wherever they are in a list (an etagc may
# be a comma, so the list is not split on commas)
_ENTITY_TAG = re.compile(r'(W/)?"([^"]*)"')


def _entity_tags(value: str) -> list[tuple[bool, str]]:
    """(weak, opaque tag) of each entity-tag in a list header."""
    return [(bool(weak), tag) for weak, tag in _ENTITY_TAG.findall(value)]


def http_date(moment: datetime) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7), in GMT."""
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)


def parse_http_date(value: str | None) -> datetime | None:
    """Any of the three HTTP-date formats; None when it is not one (then the header is
    ignored, as RFC 9110 §13.1.3 says)."""
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _seconds(moment: datetime) -> int:
    # HTTP dates have whole seconds: compare at that resolution
    return int(moment.timestamp())


def not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str,
                 modified: datetime | None) -> bool:
    """Whether a GET or HEAD gets 304 (RFC 9110 §13.2.2, steps 3 and 4).

    If-None-Match compares weakly (a W/ tag matches its strong twin), takes a list, and "*"
    matches any current representation. If-Modified-Since counts only without If-None-Match
    (which is the more precise of the two)."""
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        return any(tag == etag for _, tag in _entity_tags(if_none_match))
    since = parse_http_date(if_modified_since)
    if since is None or modified is None:
        return False
    return _seconds(modified) <= _seconds(since)


def range_applies(if_range: str | None, etag: str, modified: datetime | None) -> bool:
    """Whether the Range of a GET counts (RFC 9110 §13.1.5): with no If-Range, or one that
    names the current representation. An entity-tag compares strongly (a weak one never
    matches); a date must equal Last-Modified. A content that never changes under its link
    (the original is named by its sha256, a derivative by its generation) makes that date a
    strong validator. Otherwise the whole, current file is sent (200)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        tags = _entity_tags(value)
        return len(tags) == 1 and not tags[0][0] and tags[0][1] == etag
    date = parse_http_date(value)
    return date is not None and modified is not None and _seconds(date) == _seconds(modified)
