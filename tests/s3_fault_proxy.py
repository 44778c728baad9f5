"""A small fault-injecting HTTP reverse proxy for S3 (in front of the moto server).

Point the S3 client at ``proxy.url``; every request is forwarded to the target, bodies
streamed both ways, unless a rule matches it:

    proxy.fail(2, 503, method="PUT", contains="partNumber=")   # two UploadPart calls: SlowDown
    proxy.fail(6, 500, header="x-amz-copy-source")             # six CopyObject calls: InternalError
    proxy.fail_always(500)                                     # S3 is down, every request
    proxy.slow(1.0)                                            # every response one second late
    proxy.clear()

Rules are tried in the order they were added; the first one that matches (and has requests
left) applies. Runs in its own threads, so it neither blocks nor depends on the test's event
loop. ``proxy.requests`` logs what went through, and how it was answered.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

CHUNK = 64 * 1024
# Not forwarded: they describe one hop, not the request (RFC 9110 §7.6.1), and Expect was
# already answered by this proxy (the body is read here before it goes on).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "expect"})
ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


@dataclass
class Rule:
    status: int | None = None  # answer with this S3 error instead of forwarding
    delay: float = 0.0  # seconds the response is held back
    remaining: int | None = None  # requests left to hit; None: every matching request
    method: str | None = None
    contains: str | None = None  # a substring of the path and query
    header: str | None = None  # a request header that must be present (lowercase)
    hits: int = 0

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        return ((self.remaining is None or self.remaining > 0)
                and (self.method is None or self.method == method)
                and (self.contains is None or self.contains in path)
                and (self.header is None or self.header in headers))


@dataclass
class Seen:
    method: str
    path: str
    status: int
    injected: bool  # answered by a fault rule, not by S3
    delayed: float


class S3FaultProxy:
    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self.target_host = target.hostname or "127.0.0.1"
        self.target_port = target.port or 80
        self.rules: list[Rule] = []
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
        self.server.shutdown()
        self.server.server_close()

    # -- scripting ------------------------------------------------------------------------

    def fail(self, count: int | None, status: int = 503, *, method: str | None = None,
             contains: str | None = None, header: str | None = None) -> Rule:
        """Answer the next `count` matching requests (None: all of them) with an S3 error."""
        if status not in ERRORS:
            raise ValueError(f"status must be one of {sorted(ERRORS)}")
        return self._add(Rule(status=status, remaining=count, method=method, contains=contains,
                              header=header and header.lower()))

    def fail_always(self, status: int = 500, **match: Any) -> Rule:
        return self.fail(None, status, **match)

    def slow(self, seconds: float, count: int | None = None, *, method: str | None = None,
             contains: str | None = None, header: str | None = None) -> Rule:
        """Forward, but hold the response back `seconds`."""
        return self._add(Rule(delay=seconds, remaining=count, method=method, contains=contains,
                              header=header and header.lower()))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def injected(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests if s.injected]

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def _take_rule(self, method: str, path: str, headers: dict[str, str]) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, headers):
                    rule.hits += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule
        return None

    # -- serving --------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        method, path = h.command, h.path
        headers = {k.lower(): v for k, v in h.headers.items()}
        rule = self._take_rule(method, path, headers)
        delay = rule.delay if rule else 0.0
        try:
            if rule is not None and rule.status is not None:
                for _ in _body(h, headers):  # drained: the connection stays usable
                    pass
                time.sleep(delay)
                self._send_error(h, rule.status, path)
                status, injected = rule.status, True
            else:
                status, injected = self._forward(h, method, path, headers, delay), False
        except OSError:  # the client gave up (e.g. a timeout while we were delaying)
            h.close_connection = True
            return
        with self._lock:
            self.requests.append(Seen(method, path, status, injected, delay))

    def _send_error(self, h: BaseHTTPRequestHandler, status: int, path: str) -> None:
        code, message = ERRORS[status]
        request_id = uuid.uuid4().hex[:16].upper()
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Resource>{_xml_escape(path.split('?')[0])}</Resource>"
                f"<RequestId>{request_id}</RequestId></Error>").encode()
        h.send_response_only(status)
        h.send_header("Content-Type", "application/xml")
        h.send_header("x-amz-request-id", request_id)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _forward(self, h: BaseHTTPRequestHandler, method: str, path: str,
                 headers: dict[str, str], delay: float) -> int:
        upstream = http.client.HTTPConnection(self.target_host, self.target_port, timeout=120)
        try:
            upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            for name, value in h.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            if chunked:
                upstream.putheader("Transfer-Encoding", "chunked")
            upstream.endheaders()
            for data in _body(h, headers):
                upstream.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if chunked:
                upstream.send(b"0\r\n\r\n")
            resp = upstream.getresponse()
            length = resp.getheader("Content-Length")
            body = None if length is not None or method == "HEAD" else resp.read()
            time.sleep(delay)
            h.send_response_only(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in HOP_BY_HOP and not (
                        body is not None and name.lower() == "content-length"):
                    h.send_header(name, value)
            if body is not None:
                h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if body is not None:
                h.wfile.write(body)
            elif method != "HEAD":
                while data := resp.read(CHUNK):
                    h.wfile.write(data)
            return resp.status
        finally:
            upstream.close()


def _body(h: BaseHTTPRequestHandler, headers: dict[str, str]) -> Iterator[bytes]:
    """The request body, as it arrives (Content-Length or chunked)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            yield h.rfile.read(size)
            h.rfile.readline()
    left = int(headers.get("content-length", 0) or 0)
    while left > 0:
        data = h.rfile.read(min(CHUNK, left))
        if not data:
            raise ConnectionResetError("request body cut short")
        left -= len(data)
        yield data


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
