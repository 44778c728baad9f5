"""JPEG: drop metadata segments before the first scan. See app.media.strip."""

from __future__ import annotations

import struct

from app.media.strip_base import (
    Report,
    is_minimal_exif,
    kept_orientation,
    minimal_exif,
    note_exif,
    read_exif,
)

# --- JPEG ----------------------------------------------------------------------------------------

_SOS, _COM = 0xDA, 0xFE
# markers without a length: TEM, RST0-7, SOI, EOI. None belongs before the first scan.
_STANDALONE = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})
# a run of fill bytes (0xFF before a marker) longer than this is not a JPEG header
_MAX_FILL = 64 * 1024
_XMP_IDS = (b"http://ns.adobe.com/xap/1.0/\0", b"http://ns.adobe.com/xmp/extension/\0")


class JpegStripper:
    """Drops the APPn segments that hold metadata (EXIF, XMP, IPTC/Photoshop, maker data, FPXR,
    JFIF thumbnails) and comments, before the first scan; keeps JFIF, the ICC profile (APP2
    ICC_PROFILE), the Adobe segment (APP14: how to read the colours) and MPF (APP2, the index
    of a multi-picture file: its offsets count from it, so nothing after it is dropped either).
    From the first SOS marker on, every byte passes through as it came."""

    def __init__(self) -> None:
        self.report = Report()
        self._buf = bytearray()
        self._started = False  # SOI seen
        self._passing = False  # everything from here on passes through
        self._exif_seen = False
        self._mpf = False
        self._offset = 0  # of _buf[0] in the input, for notes

    @property
    def settled(self) -> bool:
        """True once nothing more can change: the rest passes through as it comes."""
        return self._passing

    def feed(self, data: bytes) -> bytes:
        if self._passing:
            return data
        self._buf += data
        return self._walk()

    def finish(self) -> bytes:
        if self._passing:
            return b""
        return self._walk() + self._give_up("the file ends before its first scan")

    def _give_up(self, why: str) -> bytes:
        self.report.note = f"{why} (at byte {self._offset}); the rest was kept as it is"
        return self._pass_rest(0)

    def _pass_rest(self, i: int) -> bytes:
        rest = bytes(self._buf[i:])
        self._buf.clear()
        self._passing = True
        return rest

    def _walk(self) -> bytes:
        buf, out, i = self._buf, bytearray(), 0
        if not self._started:
            if len(buf) < 2:
                return b""
            if buf[:2] != b"\xff\xd8":
                return self._give_up("no JPEG start-of-image marker")
            out += buf[:2]
            i, self._started = 2, True
        while True:
            j = i
            while j < len(buf) and buf[j] == 0xFF:
                j += 1
            if j == i and i < len(buf):
                self._consume(i)
                return bytes(out) + self._give_up("expected a marker")
            if j - i > _MAX_FILL:
                self._consume(i)
                return bytes(out) + self._give_up("too many fill bytes")
            if j + 1 > len(buf):
                break  # the marker's second byte is not here yet
            marker = buf[j]
            if marker == _SOS:
                self._consume(i)
                return bytes(out) + self._pass_rest(0)
            if marker in _STANDALONE:
                self._consume(i)
                return bytes(out) + self._give_up(f"unexpected marker 0xFF{marker:02X}"
                                                  " before the first scan")
            if j + 3 > len(buf):
                break
            length = (buf[j + 1] << 8) | buf[j + 2]
            if length < 2:
                self._consume(i)
                return bytes(out) + self._give_up("a segment length below 2")
            end = j + 1 + length
            if end > len(buf):
                break  # at most 64 KiB held back
            kept = self._decide(marker, bytes(buf[j + 3:end]))
            out += buf[i:end] if kept is None else kept
            i = end
        self._consume(i)
        return bytes(out)

    def _consume(self, i: int) -> None:
        del self._buf[:i]
        self._offset += i

    def _decide(self, marker: int, payload: bytes) -> bytes | None:
        """None: keep the segment as it is; else what replaces it (b"": nothing)."""
        if self._mpf or not (0xE0 <= marker <= 0xEF or marker == _COM):
            return None
        removed = self.report.removed
        if marker == 0xE0 and payload.startswith(b"JFIF\0"):
            if len(payload) > 14 and (payload[12] or payload[13]):
                removed.add("thumbnail")  # a JFIF thumbnail: the picture before any edit
                return _segment(0xE0, payload[:12] + b"\0\0")
            return None
        if marker == 0xE1 and payload.startswith(b"Exif\0"):
            first, self._exif_seen = not self._exif_seen, True  # viewers read the first only
            if first and is_minimal_exif(payload[6:]):
                self.report.orientation = kept_orientation(read_exif(payload[6:])[0])
                return None
            orientation = note_exif(self.report, payload[6:])
            if not first:
                return b""
            if orientation is None:
                return b""
            self.report.orientation = orientation
            return _segment(0xE1, b"Exif\0\0" + minimal_exif(orientation))
        if marker == 0xE2 and payload.startswith(b"ICC_PROFILE\0"):
            return None
        if marker == 0xE2 and payload.startswith(b"MPF\0"):
            self._mpf = True
            return None
        if marker == 0xEE and payload.startswith(b"Adobe"):
            return None
        if marker == _COM:
            removed.add("comment")
        elif marker == 0xE1 and payload.startswith(_XMP_IDS):
            removed.add("xmp")
        elif marker == 0xED:
            removed.add("iptc")
        elif marker == 0xE0 and payload.startswith(b"JFXX\0"):
            removed.add("thumbnail")
        else:
            removed.add(f"app{marker - 0xE0}")
        return b""


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload
