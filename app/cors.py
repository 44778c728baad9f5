"""CORS for the /v1 API, from STOWAGE_CORS_ORIGINS: Starlette's CORSMiddleware, applied to
/v1 paths only (the dashboard is same-origin and stays out of it).

One mechanism for every /v1 route, tus included: tus used to answer any origin on its own,
whatever the configuration; it now follows the same setting as the rest of the API (set
``STOWAGE_CORS_ORIGINS=*`` for the old behaviour).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

ALLOW_METHODS = ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"]
# What browsers may send. The tus ones are those the server implements: Upload-Defer-Length
# and Upload-Concat are refused by the server, so a preflight refuses them too (a client
# configured for them fails at once rather than after sending bytes).
ALLOW_HEADERS = [
    "Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID",
    # downloads: ranges and revalidation
    "Range", "If-Range", "If-None-Match",
    # tus 1.0 (core, creation, checksum) and the override for proxies that allow GET/POST only
    "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata", "Upload-Checksum",
    "X-HTTP-Method-Override", "X-Requested-With",
]
# What browser code may read: a browser hides every response header not listed here (or
# CORS-safelisted), and tus clients and the upload flow need these.
EXPOSE_HEADERS = [
    "Location", "Stowage-Attachment-Id", "X-Request-ID", "Idempotent-Replayed",
    "Upload-Offset", "Upload-Length", "Upload-Expires", "Upload-Metadata",
    "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
    "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After",
    "ETag", "Content-Range", "Content-Disposition",
]
# Browsers cap it (Chromium: 2 hours); one preflight per URL and that time is plenty.
MAX_AGE = 86400
# Refused origins are logged once each, at most this many (a bounded set, not a leak).
_MAX_LOGGED_ORIGINS = 100


def parse_origins(value: str) -> list[str]:
    return [o.strip() for o in value.split(",") if o.strip()]


def _vary_origin(send: Send) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).add_vary_header("Origin")
        await send(message)

    return sender


def _is_v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


class V1Cors:
    """Pure ASGI (upload streams are not buffered). Sits outside the app's whole stack,
    error middleware included, so that every /v1 answer carries the CORS headers, a 500
    too: a browser then sees the 401/422/503 it got, not an opaque "Failed to fetch"."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.origins = origins
        self.cors: ASGIApp | None = None
        if origins:
            self.cors = CORSMiddleware(
                app, allow_origins=origins, allow_methods=ALLOW_METHODS,
                allow_headers=ALLOW_HEADERS, expose_headers=EXPOSE_HEADERS,
                # API keys and upload tokens travel in Authorization, never in cookies
                allow_credentials=False, max_age=MAX_AGE)
        self._logged: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_v1(scope["path"]):
            await self.app(scope, receive, send)
            return
        self._note_refused(scope)
        if self.cors is None:
            await self.app(scope, receive, send)
            return
        if not any(k == b"origin" for k, _ in scope["headers"]):
            # CORSMiddleware marks only answers to requests with an Origin; a cache (a CDN
            # keeping a public link) must also know that an answer fetched without one is
            # not the one to give a browser that sends one
            send = _vary_origin(send)
        await self.cors(scope, receive, send)

    def _note_refused(self, scope: Scope) -> None:
        """Log a preflight from an origin that is not allowed, once per origin: the browser
        only says "Failed to fetch", so the operator's log is where the reason shows (e.g.
        tus clients that relied on tus answering any origin before it followed this
        setting)."""
        headers: dict[bytes, Any] = dict(scope["headers"])
        if scope["method"] != "OPTIONS" or b"access-control-request-method" not in headers:
            return
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin or "*" in self.origins or origin in self.origins:
            return
        if origin in self._logged or len(self._logged) >= _MAX_LOGGED_ORIGINS:
            return
        self._logged.add(origin)
        log.warning("refused a CORS preflight from %s for %s: it is not in STOWAGE_CORS_ORIGINS"
                    " (%s)", origin, scope["path"], ",".join(self.origins) or "empty: CORS off")
