"""Remove metadata (EXIF with its GPS, XMP, IPTC, comments, text chunks) from JPEG, PNG and
WebP files without re-encoding them: whole segments or chunks are dropped, the image data is
never touched (a JPEG's scan data, from SOS on, stays byte-identical).

Colour data stays (a JPEG's ICC profile and Adobe colour-transform segment, PNG's iCCP, sRGB,
gAMA, cHRM, pHYs, WebP's ICCP): without it the picture would look different. The EXIF
orientation stays too, as a minimal EXIF block holding nothing but that one tag, so browsers
(which honour it) and the derivative pipeline still show the image the right way up.

Pure and synchronous, fed as the bytes stream, in bounded memory:

- :class:`JpegStripper` and :class:`PngStripper` are filters: ``feed`` returns the bytes
  that may go on, ``finish`` the rest. Everything a JPEG carries as metadata comes before
  its first scan, and PNG chunks carry their own lengths, so neither needs to see the whole
  file; a JPEG segment (at most 64 KiB) is the most either holds back.
- WebP cannot be filtered in one pass: its metadata chunks come last, after the image data,
  and dropping them changes the RIFF size written in the first bytes. :class:`WebpScanner`
  reads the layout in a first pass and plans the edits; :meth:`WebpPlan.filter` applies them
  in a second.

A file whose structure is not what it should be is never refused here: from the first thing
that does not parse, the rest passes through untouched, and ``report.note`` says why.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
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


def new_filter(mime_type: str) -> Filter:
    """A one-pass filter for JPEG or PNG (WebP needs two passes: see :class:`WebpScanner`)."""
    if mime_type == JPEG:
        return JpegStripper()
    if mime_type == PNG:
        return PngStripper()
    raise ValueError(f"no one-pass metadata filter for {mime_type}")


def strip_bytes(mime_type: str, data: bytes) -> tuple[bytes, Report]:
    """The whole file at once (small files, tests)."""
    if mime_type == WEBP:
        scanner = WebpScanner()
        scanner.feed(data)
        plan = scanner.finish()
        if not plan.report.changed:
            return data, plan.report
        filt: Filter = plan.filter()
    else:
        filt = new_filter(mime_type)
    out = filt.feed(data) + filt.finish()
    return out, filt.report


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


def _kept_orientation(orientation: int | None) -> int | None:
    # 1 is what no tag means; anything outside 1-8 is ignored by every viewer
    return orientation if orientation is not None and 2 <= orientation <= 8 else None


def _note_exif(report: Report, tiff: bytes | bytearray) -> int | None:
    orientation, gps = read_exif(tiff)
    report.removed.add("exif")
    if gps:
        report.removed.add("gps")
    return _kept_orientation(orientation)


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
                self.report.orientation = _kept_orientation(read_exif(payload[6:])[0])
                return None
            orientation = _note_exif(self.report, payload[6:])
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
            self.report.orientation = _kept_orientation(read_exif(data)[0])
            return _png_chunk(b"eXIf", bytes(data))  # kept: the same bytes again
        orientation = _note_exif(self.report, data)
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


# --- WebP ----------------------------------------------------------------------------------------

_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


@dataclass
class Edit:
    """Replace input bytes [start, end) with ``data``."""

    start: int
    end: int
    data: bytes


@dataclass
class WebpPlan:
    report: Report
    edits: list[Edit]

    def filter(self) -> Splice:
        return Splice(self.edits, self.report)


class WebpScanner:
    """First pass over a WebP file: reads the RIFF chunk layout (headers only, plus the first
    64 KiB of an EXIF chunk for its orientation) and plans the edits that drop the EXIF and XMP
    chunks, clear their VP8X flags and fix the RIFF size. Any structure that does not parse
    plans no edit at all (the file is kept as it is)."""

    def __init__(self) -> None:
        self.report = Report()
        self._pos = 0  # input bytes seen
        self._need = 12  # bytes of the next header still to collect
        self._head = bytearray()
        self._skip = 0  # payload bytes still to pass over
        self._riff_end: int | None = None
        self._flags_at: int | None = None
        self._flags = 0
        self._drops: list[tuple[int, int]] = []
        self._grab: bytearray | None = None  # the start of a payload read: VP8X, EXIF
        self._grab_kind = b""
        self._grab_len = 0
        self._orientation: int | None = None
        self._exif_at: int | None = None  # the first EXIF chunk: where a minimal one goes
        self._exif_end = 0
        self._exif_kept = False  # it is a minimal one already
        self._broken: str | None = None
        self._last = False  # the current chunk ends the RIFF
        self._done = False

    def feed(self, data: bytes) -> None:
        p, n = 0, len(data)
        while p < n and not self._done:
            if self._skip:
                take = min(self._skip, n - p)
                if self._grab is not None and len(self._grab) < MAX_EXIF:
                    self._grab += data[p:p + min(take, MAX_EXIF - len(self._grab))]
                self._skip -= take
                p += take
                if not self._skip:
                    self._end_grab()
            else:
                take = min(self._need, n - p)
                self._head += data[p:p + take]
                self._need -= take
                p += take
                if not self._need:
                    self._header(self._pos + p)
        self._pos += n

    def _header(self, at_end: int) -> None:
        head = bytes(self._head)
        self._head.clear()
        start = at_end - len(head)
        if self._riff_end is None:
            if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
                return self._fail("no RIFF/WEBP header")
            (size,) = struct.unpack_from("<I", head, 4)
            self._riff_end = 8 + size
            self._need = 8
            return None
        fourcc, (size,) = head[:4], struct.unpack_from("<I", head, 4)
        end = start + 8 + size + (size & 1)
        if end > self._riff_end:
            return self._fail(f"chunk {fourcc!r} at byte {start} runs past the RIFF size")
        if fourcc == b"VP8X" and start == 12 and size >= 10:
            self._flags_at = start + 8  # the flags: the payload's first byte
            self._grab, self._grab_kind = bytearray(), fourcc
            self._grab_len = size
        if fourcc in (b"EXIF", b"XMP "):
            self._drops.append((start, end))
            if fourcc == b"XMP ":
                self.report.removed.add("xmp")
            elif self._exif_at is None:
                self._exif_at, self._exif_end = start, end
                self._grab, self._grab_kind = bytearray(), fourcc
                self._grab_len = size  # what is collected may end with a pad byte
            else:
                self.report.removed.add("exif")
        self._skip = end - start - 8
        self._need = 8
        self._last = end == self._riff_end
        if not self._skip:
            self._end_grab()
        return None

    def _end_grab(self) -> None:
        """The current chunk is over."""
        # what follows the RIFF is no part of the image: left alone
        self._done = self._last
        data, self._grab = self._grab, None
        if data is None:
            return
        del data[self._grab_len:]
        if self._grab_kind == b"VP8X":
            self._flags = data[0]
        elif is_minimal_exif(data):  # the first EXIF chunk (viewers read that one only)
            self._drops.remove((self._exif_at, self._exif_end))
            self._exif_kept = True
            self.report.orientation = _kept_orientation(read_exif(data)[0])
        else:
            self._orientation = _note_exif(self.report, data)

    def _fail(self, why: str) -> None:
        self._broken = why
        self._done = True

    def finish(self) -> WebpPlan:
        """The edits; none when nothing is to be removed or the structure did not parse."""
        if self._broken is None and not self._done and self._pos > 0:
            self._broken = "the file ends inside a chunk"
        if self._broken is not None:
            return WebpPlan(Report(note=f"{self._broken}; kept as it is"), [])
        if not self._drops:
            return WebpPlan(self.report, [])
        report = self.report
        minimal = b""
        if self._orientation is not None:
            report.orientation = self._orientation
            exif = minimal_exif(self._orientation)
            minimal = b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\0" * (len(exif) & 1)
        edits = [Edit(s, e, minimal if s == self._exif_at else b"") for s, e in self._drops]
        removed = sum(e - s for s, e in self._drops) - len(minimal)
        assert self._riff_end is not None
        edits.append(Edit(4, 8, struct.pack("<I", self._riff_end - 8 - removed)))
        if self._flags_at is not None:
            # the flags say which metadata chunks there are: the VP8X chunk's first byte
            flags = self._flags & ~(_VP8X_EXIF | _VP8X_XMP)
            if minimal or self._exif_kept:
                flags |= _VP8X_EXIF
            edits.append(Edit(self._flags_at, self._flags_at + 1, bytes((flags,))))
        edits.sort(key=lambda e: e.start)
        return WebpPlan(report, edits)


class Splice:
    """Applies sorted, non-overlapping edits to a stream (the second pass of a WebP)."""

    def __init__(self, edits: list[Edit], report: Report) -> None:
        self.report = report
        self._edits = deque(edits)
        self._pos = 0
        self._emitted = False  # the current edit's replacement is out

    def feed(self, data: bytes) -> bytes:
        if not self._edits:
            return data
        out, p, n = bytearray(), 0, len(data)
        while p < n:
            at = self._pos + p
            if not self._edits:
                out += data[p:]
                break
            edit = self._edits[0]
            if at < edit.start:
                take = min(n - p, edit.start - at)
                out += data[p:p + take]
                p += take
                continue
            if not self._emitted:
                out += edit.data
                self._emitted = True
            p += min(n - p, edit.end - at)
            if self._pos + p >= edit.end:
                self._edits.popleft()
                self._emitted = False
        self._pos += n
        return bytes(out)

    def finish(self) -> bytes:
        if self._edits:  # the input is shorter than the plan: not the bytes it was made from
            raise ValueError("the file changed between the two passes")
        return b""
