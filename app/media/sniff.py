"""MIME type from the bytes themselves; what the client claims is never trusted."""

from __future__ import annotations

import puremagic

OCTET_STREAM = "application/octet-stream"
# Enough for every signature puremagic knows and for an image header with a modest EXIF block.
SNIFF_BYTES = 64 * 1024


def sniff_mime(head: bytes) -> str:
    if not head:
        return OCTET_STREAM
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        matches = []
    for match in matches:
        if match.mime_type:
            return match.mime_type
    return "text/plain" if _looks_like_text(head) else OCTET_STREAM


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
}
