"""HTTP methods as RFC 9110 has them, for every route alike.

- HEAD wherever GET is (§9.3.2): the GET route answers, with the same headers and no body.
- A method the resource does not have: 405 whose ``Allow`` lists every method of the
  resource (§15.5.6), and OPTIONS answers 204 with that list (§9.3.7).

Starlette's router answers 405 from the first route whose path matches, so ``Allow`` named
only that route's methods (``PUT /v1/attachments/{id}`` said ``GET`` though DELETE is
there too). This middleware looks at every route whose path matches before the router does.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import error_response

# Set in the scope of a HEAD request that a GET route answers: the route sees "GET" (so its
# dependencies and FastAPI's routing treat it as the GET it stands for) and may use this to
# skip producing a body nobody receives (see ``is_head``).
HEAD_AS_GET = "stowage.head_as_get"
# The order methods are listed in, for answers that read the same every time
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def is_head(request: Request) -> bool:
    """Whether the client asked with HEAD: only headers are sent back."""
    return request.method == "HEAD" or bool(request.scope.get(HEAD_AS_GET))


def allow_header(methods: set[str]) -> str:
    known = [m for m in _ORDER if m in methods]
    return ", ".join(known + sorted(methods - set(_ORDER)))


class MethodsMiddleware:
    """Pure ASGI, in front of the router: it only reads the route table."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # the app's own list: routers included later are seen too
        self._table: list[tuple[re.Pattern[str], frozenset[str], bool]] | None = None
        self._table_size = -1

    def _resources(self) -> list[tuple[re.Pattern[str], frozenset[str], bool]]:
        # built on the first request (the routers are all included by then), again if the
        # route list grew (a test including one more router)
        if self._table is None or self._table_size != len(self.routes):
            table = []
            for context in iter_route_contexts(self.routes):
                regex: Any = getattr(context, "path_regex", None)
                methods = context.methods
                if regex is not None and methods:
                    static = "{" not in getattr(context, "path", "{")
                    table.append((regex, frozenset(methods), static))
            self._table, self._table_size = table, len(self.routes)
        return self._table

    def methods_of(self, scope: Scope) -> tuple[set[str], set[str]]:
        """(every method of the resource the path names, those its routes declare)."""
        path = get_route_path(scope)
        declared: set[str] = set()
        fixed: set[str] = set()
        for regex, methods, static in self._resources():
            if regex.match(path):
                declared |= methods
                if static:
                    fixed |= methods
        # A path spelled out by a route is that resource, not also a value of another's
        # parameter: GET /v1/attachments/raw is 405 (Allow: POST), not a lookup of an
        # attachment whose id is "raw"
        if fixed:
            declared = fixed
        allowed = set(declared)
        if "GET" in allowed:
            allowed.add("HEAD")
        return allowed, declared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed, declared = self.methods_of(scope)
        method = scope["method"]
        if not allowed:  # no such resource: the router's 404 (or its trailing-slash redirect)
            await self.app(scope, receive, send)
            return
        if method in allowed:
            if method == "HEAD":
                send = _without_body(send)
                if "HEAD" not in declared:
                    scope = {**scope, "method": "GET", HEAD_AS_GET: True}
            await self.app(scope, receive, send)
            return
        allow = allow_header(allowed)
        if method == "OPTIONS":
            # no route of its own (tus has one, for CORS preflights): what the resource takes
            response: Response = Response(status_code=204, headers={"Allow": allow})
        else:
            response = error_response(Request(scope), StarletteHTTPException(
                405, headers={"Allow": allow}))
        await response(scope, receive, send)


def _without_body(send: Send) -> Send:
    """HEAD: every header of the GET answer (Content-Length included), none of its body."""

    async def send_headers_only(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return  # the rest is coming; only the last (empty) message goes out
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return send_headers_only
