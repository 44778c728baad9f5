"""FastAPI dependencies shared by the routers: the services built at start, and the
authenticated app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.service import ApiKeys
from app.config import Settings
from app.errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer stw_…`")


def service_of(request: Request, name: str) -> Any:
    """The service `name` of the services built at start, where no dependency can be
    declared (a route class's hooks)."""
    return getattr(request.app.state.services, name)


def provided(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that hands a route the service `name` of the services built at start
    (app.bootstrap.Services): routes say which services they use, with
    ``Annotated[Attachments, Depends(provided("attachments"))]``."""

    async def provide(request: Request) -> Any:
        # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a
        # thread hop on every request for an attribute lookup
        return getattr(request.app.state.services, name)

    provide.__name__ = f"provide_{name}"
    return provide


SettingsDep = Annotated[Settings, Depends(provided("settings"))]


async def current_app_id(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> UUID:
    if credentials is None:
        raise Unauthorized("Authorization: Bearer <api key> is required")
    keys: ApiKeys = service_of(request, "api_keys")
    app_id = await keys.authenticate(f"Bearer {credentials.credentials}")
    request.state.app_id = app_id
    return app_id
