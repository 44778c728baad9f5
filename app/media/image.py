"""Image facts read from the header only: never decodes the pixels."""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, ImageFile, UnidentifiedImageError

# EXIF orientations 5-8 rotate by 90 degrees: width and height swap as displayed.
ROTATED = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112


def image_dimensions(head: bytes) -> dict[str, int] | None:
    """{"width", "height"} as displayed and the EXIF "orientation" (1-8; 1 without one), from
    the first bytes of an image; None if unreadable.

    Any size is reported, however many pixels it claims: refusing too large an image is the
    profile's ``max_pixels``, which needs the size of exactly those images.
    """
    try:
        with _open_header(head) as im:
            width, height = im.size
            turn = orientation(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        return None
    if turn in ROTATED:
        width, height = height, width
    return {"width": width, "height": height, "orientation": turn}


def orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1-8: 1 without one, or with a broken one or
    a value the standard does not define (what viewers do). Derivatives read it here too.

    A PNG's EXIF may follow the pixel data, so Pillow decodes the image to find it: at upload
    that is the first bytes only, and a PNG larger than those with EXIF after its pixels is
    measured unrotated (its derivatives, made from the whole file, are rotated).
    """
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # broken EXIF must not fail the upload
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _open_header(head: bytes) -> ImageFile.ImageFile:
    """``Image.open`` (which parses the header and decodes nothing), without Pillow's
    decompression-bomb refusal.

    Pillow raises DecompressionBombError at open for anything above twice
    ``Image.MAX_IMAGE_PIXELS`` (~179 MP by default), before the size can be asked: the very
    images a pixel limit exists to refuse would come back without a size, and pass. Reading
    their header is harmless, so on that error the format's own parser is run again as
    ``Image.open`` runs it, minus the check. (Raising ``MAX_IMAGE_PIXELS`` instead would
    change a process-wide setting under the derivative threads that rely on it.)
    """
    with warnings.catch_warnings():
        # above MAX_IMAGE_PIXELS but below twice that: the limit is the profile's, not Pillow's
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(head))
        except Image.DecompressionBombError:
            pass
    prefix = head[:16]
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        accepted = not accept or accept(prefix)
        if not accepted or isinstance(accepted, str):  # a str is Pillow's "not quite" warning
            continue
        try:
            return factory(io.BytesIO(head), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise UnidentifiedImageError("no format reads this header")
