"""multipart/form-data parsed as it streams, with python-multipart's push parser.

Starlette's ``request.form()`` spools a whole file to a temporary file before the handler sees
it; here each chunk of the body is fed to the parser and file bytes flow on at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import MalformedRequest

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32
# RFC 2046 allows 70 characters; python-multipart accepts up to 256 (and refuses more with an
# error of its own), so this is as lenient as the parser is
MAX_BOUNDARY_LENGTH = 256


@dataclass(frozen=True)
class Field:
    name: str
    value: str


@dataclass(frozen=True)
class FileStart:
    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True)
class FileData:
    data: bytes | memoryview


@dataclass(frozen=True)
class FileEnd:
    pass


Event = Field | FileStart | FileData | FileEnd


def boundary_of(content_type: str | None) -> bytes:
    ctype, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise MalformedRequest("expected multipart/form-data with a boundary")
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise MalformedRequest(f"the multipart boundary is {len(boundary)} characters long;"
                               f" at most {MAX_BOUNDARY_LENGTH} are accepted (RFC 2046: 70)",
                               header="Content-Type")
    return boundary


class _Collector:
    """Turns the parser's callbacks into a list of events, drained after each chunk."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ended = False
        self.parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._hname = bytearray()
        self._hvalue = bytearray()
        self._field: tuple[str, bytearray] | None = None
        self._in_file = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._hname.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._hvalue.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MalformedRequest(f"more than {MAX_PARTS} parts")
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[bytes(self._hname).lower()] = bytes(self._hvalue)
        self._hname.clear()
        self._hvalue.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise MalformedRequest("a part has no Content-Disposition: form-data; name=…")
        name = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:
            ctype = self._headers.get(b"content-type")
            self.events.append(FileStart(
                name=name,
                filename=params[b"filename"].decode("utf-8", "replace") or None,
                content_type=ctype.decode("latin-1") if ctype else None,
            ))
            self._in_file = True
        else:
            self._field = (name, bytearray())

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            # a view, not a copy: the chunk is immutable bytes, and the consumer copies once
            # anyway when it coalesces blocks
            self.events.append(FileData(memoryview(data)[start:end]))
        elif self._field is not None:
            value = self._field[1]
            value.extend(data[start:end])
            if len(value) > MAX_FIELD_BYTES:
                raise MalformedRequest(f"field {self._field[0]!r} is over {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._in_file:
            self.events.append(FileEnd())
            self._in_file = False
        elif self._field is not None:
            name, value = self._field
            try:
                self.events.append(Field(name, value.decode("utf-8")))
            except UnicodeDecodeError:
                raise MalformedRequest(f"field {name!r} is not UTF-8") from None
            self._field = None

    def _end(self) -> None:
        self.ended = True


async def iter_multipart(chunks: AsyncIterable[bytes], boundary: bytes) -> AsyncIterator[Event]:
    """Events in body order; raises MalformedRequest on a broken or truncated body."""
    collector = _Collector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in chunks:
            parser.write(chunk)
            for event in collector.events:
                yield event
            collector.events.clear()
        parser.finalize()
    except FormParserError as e:  # the parser's errors, the constructor's included
        raise MalformedRequest(f"malformed multipart body: {e}") from None
    for event in collector.events:
        yield event
    if not collector.ended:
        raise MalformedRequest("the multipart body ended before its closing boundary")


async def file_bytes(events: AsyncIterator[Event]) -> AsyncIterator[bytes | memoryview]:
    """The data of the file part just started, pulled from the shared event stream."""
    async for event in events:
        if isinstance(event, FileData):
            if event.data:
                yield event.data
        elif isinstance(event, FileEnd):
            return
    raise MalformedRequest("the file part ended early")
