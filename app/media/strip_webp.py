"""WebP: scan the RIFF layout, then splice out metadata chunks and fix the sizes.
See app.media.strip."""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from app.media.strip_base import (
    MAX_EXIF,
    Report,
    is_minimal_exif,
    kept_orientation,
    minimal_exif,
    note_exif,
    read_exif,
)

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
            self.report.orientation = kept_orientation(read_exif(data)[0])
        else:
            self._orientation = note_exif(self.report, data)

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
