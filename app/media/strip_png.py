"""PNG: drop metadata chunks, in one pass. See app.media.strip."""

from __future__ import annotations

import struct
import zlib

from app.media.strip_base import (
    MAX_EXIF,
    Report,
    is_minimal_exif,
    kept_orientation,
    minimal_exif,
    note_exif,
    read_exif,
)

# --- PNG -----------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DROP = {b"eXIf": "exif", b"tEXt": "text", b"zTXt": "text", b"iTXt": "text"}
_MAX_CHUNK = (1 << 31) - 1


class PngStripper:
    """Drops the eXIf and text (tEXt, zTXt, iTXt: XMP lives there too) chunks; keeps every other
    chunk, colour (iCCP, sRGB, gAMA, cHRM) and density (pHYs) included. Chunks stream through:
    only 8-byte chunk headers are held back (and an eXIf chunk's first 64 KiB, for its
    orientation)."""

    def __init__(self) -> None:
        self.report = Report()
        self._head = bytearray()  # the signature, then each chunk header, as it arrives
        self._started = False
        self._passing = False
        self._copy = 0  # bytes of the current chunk still to pass through
        self._skip = 0  # bytes of the current chunk still to drop
        self._exif: bytearray | None = None  # an eXIf chunk's data while it is dropped
        self._exif_seen = False
        self._exif_len = 0
        self._offset = 0

    @property
    def settled(self) -> bool:
        return self._passing

    def feed(self, data: bytes) -> bytes:
        if self._passing:
            return data
        out, p, n = bytearray(), 0, len(data)
        while p < n and not self._passing:
            if self._copy:
                take = min(self._copy, n - p)
                out += data[p:p + take]
                self._copy -= take
                p += take
            elif self._skip:
                take = min(self._skip, n - p)
                if self._exif is not None and len(self._exif) < MAX_EXIF:
                    self._exif += data[p:p + min(take, MAX_EXIF - len(self._exif))]
                self._skip -= take
                p += take
                if not self._skip and self._exif is not None:
                    out += self._end_exif()
            else:
                need = (8 if self._started else len(PNG_SIGNATURE)) - len(self._head)
                take = min(need, n - p)
                self._head += data[p:p + take]
                p += take
                if take == need:
                    out += self._header()
        if self._passing and p < n:
            out += data[p:]
        return bytes(out)

    def finish(self) -> bytes:
        if self._passing:
            return b""
        # no IEND: cut short. A cut eXIf chunk's orientation is not to be trusted: dropped.
        self.report.note = "the file ends before its IEND chunk"
        self._exif = None
        self._passing = True
        return bytes(self._head)

    def _header(self) -> bytes:
        head = bytes(self._head)
        self._head.clear()
        if not self._started:
            if head != PNG_SIGNATURE:
                return self._give_up(head, "no PNG signature")
            self._started = True
            self._offset = len(head)
            return head
        length, ctype = struct.unpack(">I4s", head)
        at = self._offset
        if length > _MAX_CHUNK or not ctype.isalpha():
            return self._give_up(head, f"a chunk header that does not parse at byte {at}")
        self._offset += 12 + length
        kind = _PNG_DROP.get(ctype)
        if kind is None:
            self._copy = length + 4  # data and CRC
            if ctype == b"IEND":
                self._passing = True  # what follows IEND is no part of the image: left alone
            return head
        if kind == "exif":
            self._exif = bytearray()  # noted as removed unless it is a minimal one
            self._exif_len = length  # what is collected ends with the CRC
        else:
            self.report.removed.add(kind)
        self._skip = length + 4
        return b""

    def _end_exif(self) -> bytes:
        data, self._exif = self._exif, None
        assert data is not None
        del data[self._exif_len:]
        first, self._exif_seen = not self._exif_seen, True  # viewers read the first only
        if first and is_minimal_exif(data):
            self.report.orientation = kept_orientation(read_exif(data)[0])
            return _png_chunk(b"eXIf", bytes(data))  # kept: the same bytes again
        orientation = note_exif(self.report, data)
        if not first:
            return b""
        if orientation is None:
            return b""
        self.report.orientation = orientation
        return _png_chunk(b"eXIf", minimal_exif(orientation))

    def _give_up(self, head: bytes, why: str) -> bytes:
        self.report.note = f"{why}; the rest was kept as it is"
        self._passing = True
        return head


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(
        ">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)
