"""Image facts read from the header only: never decodes the pixels."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

# EXIF orientations 5-8 rotate by 90 degrees: width and height swap as displayed.
_ROTATED = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112


def image_dimensions(head: bytes) -> dict[str, int] | None:
    """{"width", "height"} as displayed, from the first bytes of an image; None if unreadable."""
    try:
        with Image.open(io.BytesIO(head)) as im:
            width, height = im.size
            try:
                orientation = im.getexif().get(_ORIENTATION_TAG, 1)
            except Exception:  # broken EXIF must not fail the upload
                orientation = 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if orientation in _ROTATED:
        width, height = height, width
    return {"width": width, "height": height}
