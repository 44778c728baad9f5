"""The app factory: routers, problem+json errors, and a lifespan that owns the services."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp

from app import cors, openapi, problems
from app.attachments.routes import router as attachments_router
from app.attachments.timeline_routes import router as attachment_events_router
from app.attachments.variant_routes import router as variants_router
from app.bootstrap import Services, build_services
from app.config import ConfigError, Settings, load_settings
from app.dashboard.routes import router as dashboard_router
from app.http_methods import MethodsMiddleware
from app.observability.logs import RequestIdMiddleware
from app.ops.routes import router as ops_router
from app.uploads.presigned_routes import router as presigned_router
from app.uploads.rate_limits import RateLimitHeaders
from app.uploads.routes import router as uploads_router
from app.uploads.token_routes import router as upload_tokens_router
from app.uploads.tus_routes import router as tus_router
from app.uploads.usage_routes import router as usage_router
from app.webhooks.feed_routes import router as events_feed_router
from app.webhooks.routes import router as webhooks_router


class StowageAPI(FastAPI):
    """FastAPI with CORS for /v1 wrapped around the whole middleware stack: outside the error
    middleware, so that an unexpected 500 carries the CORS headers too (a user middleware
    sits inside it, and the 500 it answers would reach a browser as an opaque failure)."""

    cors_origins: tuple[str, ...] = ()

    def build_middleware_stack(self) -> ASGIApp:
        return cors.V1Cors(super().build_middleware_stack(), list(self.cors_origins))


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """Build the API. Pass ``services`` to share them (``stowage dev``, tests)."""
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            app.state.services = services
            yield
            return
        try:
            async with build_services(settings) as built:
                app.state.services = built
                yield
        except ConfigError as e:
            app.state.startup_error = e  # for app.server.StartupErrors
            raise

    app = StowageAPI(
        title="Stowage",
        version="0.1.0",
        summary="Upload files into a cache, promote them to permanent storage, get told when.",
        lifespan=lifespan,
    )
    app.cors_origins = tuple(cors.parse_origins(settings.cors_origins))
    problems.install(app)
    openapi.install(app, settings)
    # inside the request id's middleware, so its 405s and HEADs are logged and carry the id
    app.add_middleware(MethodsMiddleware, routes=app.router.routes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(RateLimitHeaders)
    # uploads first: POST /v1/attachments/raw is that resource, not an attachment id
    app.include_router(uploads_router)
    app.include_router(attachments_router)
    app.include_router(variants_router)
    app.include_router(presigned_router)
    app.include_router(tus_router)
    app.include_router(upload_tokens_router)
    app.include_router(usage_router)
    app.include_router(webhooks_router)
    app.include_router(attachment_events_router)
    app.include_router(events_feed_router)
    app.include_router(dashboard_router)
    app.include_router(ops_router)
    return app
