"""What every metadata stripper shares: the media types, the report of what was removed, the
filter protocol, and the EXIF block they read the orientation from and write back."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

JPEG, PNG, WEBP = "image/jpeg", "image/png", "image/webp"
STRIPPABLE = frozenset({JPEG, PNG, WEBP})

ORIENTATION_TAG = 0x0112
GPS_IFD_TAG = 0x8825
# EXIF blocks parsed for their orientation are read up to this size (a JPEG APP1 segment is
# at most 64 KiB anyway; the first IFD, which holds the orientation, comes first).
MAX_EXIF = 64 * 1024


@dataclass
class Report:
    """What a stripper did: the kinds of metadata removed, the orientation it kept, and why it
    stopped early, if it did."""

    removed: set[str] = field(default_factory=set)
    orientation: int | None = None  # kept in a minimal EXIF block (2-8), else None
    note: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.removed)


class Filter(Protocol):
    report: Report

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


# --- EXIF ----------------------------------------------------------------------------------------

def read_exif(tiff: bytes | bytearray) -> tuple[int | None, bool]:
    """(Orientation, whether a GPS IFD is there) from the first IFD of a TIFF-structured EXIF
    block; (None, False) where it does not parse."""
    if tiff[:6] == b"Exif\0\0":
        tiff = tiff[6:]
    if len(tiff) < 8 or tiff[:4] not in (b"II*\0", b"MM\0*"):
        return None, False
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(end + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return None, False
    (count,) = struct.unpack_from(end + "H", tiff, ifd)
    orientation, gps = None, False
    for k in range(min(count, (len(tiff) - ifd - 2) // 12)):
        tag, typ = struct.unpack_from(end + "HH", tiff, ifd + 2 + 12 * k)
        if tag == ORIENTATION_TAG and orientation is None:
            value_at = ifd + 2 + 12 * k + 8
            if typ == 3:  # SHORT, as the standard says
                (orientation,) = struct.unpack_from(end + "H", tiff, value_at)
            elif typ == 4:  # LONG, as some writers do
                (orientation,) = struct.unpack_from(end + "I", tiff, value_at)
        elif tag == GPS_IFD_TAG:
            gps = True
    return orientation, gps


def minimal_exif(orientation: int) -> bytes:
    """A TIFF-structured EXIF block with one tag: Orientation."""
    #                      IFD at 8, 1 entry: tag, SHORT, count 1, value (padded), no next IFD
    return b"II*\0" + struct.pack("<IHHHIHHI", 8, 1, ORIENTATION_TAG, 3, 1, orientation, 0, 0)


def is_minimal_exif(tiff: bytes | bytearray) -> bool:
    """Whether an EXIF block holds nothing but an Orientation tag (what :func:`minimal_exif`
    writes, and what Pillow writes for an image whose only tag that is): such a block is kept
    as it is, so stripping a stripped file changes nothing."""
    if tiff[:6] == b"Exif\0\0":
        tiff = tiff[6:]
    if len(tiff) != 26 or tiff[:4] not in (b"II*\0", b"MM\0*"):
        return False
    end = "<" if tiff[:2] == b"II" else ">"
    ifd, count, tag, typ, n = struct.unpack_from(end + "IHHHI", tiff, 4)
    (next_ifd,) = struct.unpack_from(end + "I", tiff, 22)
    return (ifd, count, tag, typ, n, next_ifd) == (8, 1, ORIENTATION_TAG, 3, 1, 0)


def kept_orientation(orientation: int | None) -> int | None:
    # 1 is what no tag means; anything outside 1-8 is ignored by every viewer
    return orientation if orientation is not None and 2 <= orientation <= 8 else None


def note_exif(report: Report, tiff: bytes | bytearray) -> int | None:
    orientation, gps = read_exif(tiff)
    report.removed.add("exif")
    if gps:
        report.removed.add("gps")
    return kept_orientation(orientation)
