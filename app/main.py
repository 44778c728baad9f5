"""The app factory: routers, problem+json errors, and a lifespan that owns every resource."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import botocore.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app import errors
from app.attachments.routes import router as attachments_router
from app.config import Settings, load_settings
from app.dashboard.events_routes import router as attachment_events_router
from app.dashboard.routes import router as dashboard_router
from app.db import CONNECTION_ERRORS
from app.ops.logs import RequestIdMiddleware
from app.ops.routes import router as ops_router
from app.resources import Resources, build_resources
from app.transient import is_transient
from app.uploads.presigned_routes import router as presigned_router
from app.uploads.tus_routes import router as tus_router
from app.webhooks.routes import router as webhooks_router

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = "5"


def problem_response(error: errors.StowageError, request: Request,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.problem(instance=request.url.path), status_code=error.status,
                        media_type=PROBLEM_JSON, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.StowageError)
    async def _domain(request: Request, exc: errors.StowageError) -> JSONResponse:
        if exc.status >= 500:  # the operator's to fix (a full disk...): str() says where
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__,
                      exc)
        headers = None
        if isinstance(exc, errors.RangeNotSatisfiable) and "size" in exc.extra:
            headers = {"Content-Range": f"bytes */{exc.extra['size']}"}
        return problem_response(exc, request, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
        return problem_response(errors.InvalidInput(detail, errors=problems), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = errors.StowageError(str(exc.detail))
        body = err.problem(instance=request.url.path)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        body.update(type=errors.PROBLEM_BASE + slug, title=str(exc.detail),
                    status=exc.status_code)
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(request: Request, exc: ClientDisconnect) -> Response:
        # nobody is listening; the upload's cleanup already ran as the exception unwound
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # still a problem document, and never the exception's text (it may hold internals)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(errors.StowageError("an unexpected error happened; it is"
                                                    " logged with this request's id"), request)

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, OSError) and not is_transient(exc):
            return await _unexpected(request, exc)  # a full disk or a permission: no outage
        log.warning("dependency unavailable: %s: %s", type(exc).__name__, exc)
        err = errors.ServiceUnavailable("a dependency (Postgres, Redis or storage) is"
                                        " unreachable; retry")
        return problem_response(err, request, {"Retry-After": RETRY_AFTER_S})

    async def _storage(request: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):  # S3 down or throttling after botocore's own retries
            return await _unavailable(request, exc)
        return await _unexpected(request, exc)

    for exc_type in (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
        app.add_exception_handler(exc_type, _storage)

    for exc_type in (*CONNECTION_ERRORS, redis.exceptions.ConnectionError,
                     redis.exceptions.TimeoutError):
        app.add_exception_handler(exc_type, _unavailable)


def _install_openapi(app: FastAPI) -> None:
    """Add the RFC 9457 Problem schema every error response refers to, with the list of
    problem types, to the generated document."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, summary=app.summary,
                           routes=app.routes)
        types = sorted(errors.problem_slugs() | {"method-not-allowed", "http-error"})
        spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = {
            "type": "object",
            "description": "RFC 9457 problem details. `type` is "
            f"{errors.PROBLEM_BASE}<name>, one of: {', '.join(types)}.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
            },
            "additionalProperties": True,
        }
        from app.uploads.presigned_routes import RegisterRequest

        spec["components"]["schemas"]["RegisterRequest"] = RegisterRequest.model_json_schema(
            ref_template="#/components/schemas/{model}")
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, resources: Resources | None = None) -> FastAPI:
    """Build the API. Pass ``resources`` to share them (``stowage dev``, tests)."""
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            app.state.resources = resources
            yield
            return
        async with build_resources(settings) as res:
            app.state.resources = res
            yield

    app = FastAPI(
        title="Stowage",
        version="0.1.0",
        summary="Upload files into a cache, promote them to permanent storage, get told when.",
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    _install_openapi(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(attachments_router)
    app.include_router(presigned_router)
    app.include_router(tus_router)
    app.include_router(webhooks_router)
    app.include_router(attachment_events_router)
    app.include_router(dashboard_router)
    app.include_router(ops_router)
    return app
