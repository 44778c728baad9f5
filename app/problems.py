"""Errors as HTTP answers, in one place: RFC 9457 problem documents, 503 with Retry-After
for an unreachable dependency, never an exception's text.

The app's exception handlers answer with ``error_response``. A router whose answers need more
(tus: its headers on every answer, errors included; the dashboard: pages instead of problem
documents for its own exceptions, and its security headers) uses a ``ProblemRoute`` with its
hooks, instead of a mapping of its own."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import botocore.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app import errors
from app.db import CONNECTION_ERRORS
from app.transient import is_transient

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = "5"
# Postgres, Redis or the network down: a client should come back, not give up
UNAVAILABLE: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
STORAGE_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


def problem_response(error: errors.StowageError, request: Request,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    headers.update(getattr(error, "headers", None) or {})  # e.g. a 429's Retry-After
    if isinstance(error, errors.ServiceUnavailable):
        headers.setdefault("Retry-After", RETRY_AFTER_S)
    if isinstance(error, errors.IdempotencyConflict):
        headers.setdefault("Retry-After", "1")
    if isinstance(error, errors.RangeNotSatisfiable) and "size" in error.extra:
        headers["Content-Range"] = f"bytes */{error.extra['size']}"
    return JSONResponse(error.problem(instance=request.url.path), status_code=error.status,
                        media_type=PROBLEM_JSON, headers=headers)


def error_response(request: Request, exc: Exception) -> Response:
    """The answer to ``exc`` escaping a route."""
    if isinstance(exc, errors.StowageError):
        if exc.status >= 500:  # the operator's to fix (a full disk...): str() says where
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__,
                      exc)
        return problem_response(exc, request)
    if isinstance(exc, RequestValidationError):
        problems = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
        return problem_response(errors.InvalidInput(detail, errors=problems), request)
    if isinstance(exc, StarletteHTTPException):
        body = errors.StowageError(str(exc.detail)).problem(instance=request.url.path)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        body.update(type=errors.PROBLEM_BASE + slug, title=str(exc.detail),
                    status=exc.status_code)
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON,
                            headers=getattr(exc, "headers", None))
    if isinstance(exc, ClientDisconnect):
        # nobody is listening; the upload's cleanup already ran as the exception unwound
        return Response(status_code=499)
    # S3 down or throttling after botocore's own retries; anything else from it is a bug or
    # a misconfiguration (a missing bucket, denied access): logged as unexpected
    # (an OSError that is no outage, a full disk or a permission, is the operator's to fix)
    unavailable = isinstance(exc, UNAVAILABLE) and not (
        isinstance(exc, OSError) and not is_transient(exc))
    if unavailable or (isinstance(exc, STORAGE_ERRORS) and is_transient(exc)):
        log.warning("dependency unavailable: %s: %s", type(exc).__name__, exc)
        return problem_response(errors.ServiceUnavailable(
            "a dependency (Postgres, Redis or storage) is unreachable; retry"), request)
    # still a problem document, and never the exception's text (it may hold internals)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(errors.StowageError("an unexpected error happened; it is logged"
                                                " with this request's id"), request)


def install(app: FastAPI) -> None:
    """Answer every error with ``error_response``."""

    async def handler(request: Request, exc: Exception) -> Response:
        return error_response(request, exc)

    handled: tuple[type[BaseException], ...] = (
        errors.StowageError, RequestValidationError, StarletteHTTPException, ClientDisconnect,
        *STORAGE_ERRORS, *UNAVAILABLE, Exception)
    for exc_type in handled:
        app.add_exception_handler(exc_type, handler)



class ProblemRoute(APIRoute):
    """A route whose errors are answered right here, by ``error_response``, so the router's
    hooks see every answer: ``answer_error`` may answer an error its own way first (None: the
    problem document), ``finish`` adjusts every response (headers)."""

    def answer_error(self, request: Request, exc: Exception) -> Response | None:
        return None

    def finish(self, request: Request, response: Response, exc: Exception | None) -> None:
        return None

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            exc: Exception | None = None
            try:
                response = await handler(request)
            except Exception as e:
                exc = e
                response = self.answer_error(request, e) or error_response(request, e)
            self.finish(request, response, exc)
            return response

        return route
