"""MIME type from the bytes themselves; what the client claims is never trusted."""

from __future__ import annotations

import functools
from typing import Any

import puremagic

OCTET_STREAM = "application/octet-stream"
# Enough for every signature puremagic knows and for an image header with a modest EXIF block.
SNIFF_BYTES = 64 * 1024


def sniff_mime(head: bytes) -> str:
    if not head:
        return OCTET_STREAM
    try:
        matches = _identify(head) if _INDEX is not None else puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        matches = []
    for match in matches:
        if match.mime_type:
            return _refined(head, match.mime_type)
    refined = _refined(head, OCTET_STREAM)
    if refined != OCTET_STREAM:
        return refined
    return "text/plain" if _looks_like_text(head) else OCTET_STREAM


# ISO base media files (MP4) whose major brand puremagic does not list: DASH segments, files
# from cameras and encoders that write iso2..iso9, avc1, mp41 (a brand names a specification,
# not a codec: all of these are MP4 files a video decoder reads).
_MP4_BRANDS = frozenset({
    b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9", b"avc1",
    b"mp41", b"dash", b"mmp4", b"f4v ", b"XAVC", b"MSNV",
})
# Ogg carries sound (Opus, Vorbis, FLAC, Speex) or pictures (Theora); the first page's packet
# says which.
_OGG_AUDIO = (b"OpusHead", b"\x01vorbis", b"\x7fFLAC", b"Speex   ")
_OGG_VIDEO = (b"\x80theora",)
# types this module answers beside puremagic's own
REFINED_TYPES = frozenset({"audio/ogg", "video/ogg"})


def _refined(head: bytes, mime_type: str) -> str:
    """Containers puremagic leaves vague: Ogg by what it carries, MP4 by more brands."""
    if mime_type == "application/ogg":
        first_page = head[:512]
        if any(sig in first_page for sig in _OGG_VIDEO):
            return "video/ogg"
        if any(sig in first_page for sig in _OGG_AUDIO):
            return "audio/ogg"
    elif mime_type == OCTET_STREAM and head[4:8] == b"ftyp" and head[8:12] in _MP4_BRANDS:
        return "video/mp4"
    return mime_type


# puremagic compares the head with each of its ~1,400 header signatures in turn: ~0.23 ms per
# upload here, a tenth of a small upload's CPU. The same signatures grouped by (offset,
# length) need one slice and one dict lookup per group (~140), with the same matches in the
# same order. This reads puremagic's tables; if a release renames them, the plain call is used
# (tests/media/test_sniff.py compares both on every signature). Kept for bench/sniff.py's gain.
def _build_index(rows: list[Any]) -> list[tuple[int, int, dict[bytes, list[int]]]]:
    groups: dict[tuple[int, int], dict[bytes, list[int]]] = {}
    for i, row in enumerate(rows):
        key = (row.offset, row.offset + len(row.byte_match))
        groups.setdefault(key, {}).setdefault(row.byte_match, []).append(i)
    return [(start, end, table) for (start, end), table in groups.items()]


try:
    _PM = puremagic.main
    _HEADERS: list[Any] = _PM.magic_header_array
    _INDEX: list[tuple[int, int, dict[bytes, list[int]]]] | None = _build_index(_HEADERS)
    _FOOTERS, _MULTI_PART = _PM.magic_footer_array, _PM.multi_part_dict
    _MAX_HEAD, _MAX_FOOT = _PM.max_head, _PM.max_foot
    _confidence, _PureMagic = _PM._confidence, _PM.PureMagic
except AttributeError:  # pragma: no cover - a puremagic without these tables
    _INDEX = None


def _identify(data: bytes) -> list[Any]:
    """What ``puremagic.magic_string(data)`` returns, best match first."""
    assert _INDEX is not None
    header, footer = data[:_MAX_HEAD], data[-_MAX_FOOT:]
    hits: list[int] = []
    for start, end, table in _INDEX:
        if end <= len(header):
            found = table.get(header[start:end])
            if found:
                hits.extend(found)
    hits.sort()  # puremagic's order: its list's
    matches = [_HEADERS[i] for i in hits]
    matches += [row for row in _FOOTERS if _area(footer, row) == row.byte_match]
    extra = set()
    for matched in matches:
        for row in _MULTI_PART.get(matched.byte_match, ()):
            if row.offset < 0:
                if _area(footer, row) == row.byte_match:
                    extra.add(_PureMagic(
                        byte_match=matched.byte_match + row.byte_match, offset=row.offset,
                        extension=row.extension, mime_type=row.mime_type, name=row.name))
            else:
                end = row.offset + len(row.byte_match)
                if end <= len(header) and header[row.offset:end] == row.byte_match:
                    extra.add(_PureMagic(
                        byte_match=header[matched.offset:end], offset=row.offset,
                        extension=row.extension, mime_type=row.mime_type, name=row.name))
    matches.extend(list(extra))
    result: list[Any] = _confidence(matches)
    result.sort(key=lambda x: x.confidence, reverse=True)
    return result


def _area(footer: bytes, row: Any) -> bytes:
    end = row.offset + len(row.byte_match)
    return footer[row.offset:end] if end != 0 else footer[row.offset:]


@functools.cache  # puremagic's tables do not change while the process runs
def known_types() -> frozenset[str]:
    """Every MIME type sniff_mime can answer: what a profile's `types` may name."""
    rows = list(puremagic.main.magic_header_array) + list(puremagic.main.magic_footer_array)
    rows += [r for parts in puremagic.main.multi_part_dict.values() for r in parts]
    found = {r.mime_type for r in rows if getattr(r, "mime_type", None)}
    return frozenset(found | REFINED_TYPES | {"text/plain", OCTET_STREAM})


def _looks_like_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the end of the sniffed window is still text
        return e.start >= len(head) - 3
    return True


def extension_for(mime_type: str) -> str:
    """A conventional extension for store keys (``.bin`` when unknown)."""
    return _EXTENSIONS.get(mime_type, ".bin")


_EXTENSIONS = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
    "image/avif": ".avif", "image/heic": ".heic", "image/tiff": ".tif", "image/bmp": ".bmp",
    "image/svg+xml": ".svg", "application/pdf": ".pdf", "text/plain": ".txt",
    "text/html": ".html", "application/zip": ".zip", "video/mp4": ".mp4",
    "audio/mpeg": ".mp3", "application/json": ".json", "application/xml": ".xml",
    "video/quicktime": ".mov", "video/webm": ".webm", "video/x-matroska": ".mkv",
    "audio/ogg": ".ogg", "video/ogg": ".ogv", "application/ogg": ".ogg", "audio/wave": ".wav",
    "audio/mp4": ".m4a",
}
