"""FastAPI dependencies shared by the routers: resources and the authenticated app."""

from __future__ import annotations

from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.service import authenticate
from app.errors import Unauthorized
from app.resources import Resources

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer stw_…`")


def resources_of(request: Request) -> Resources:
    return request.app.state.resources


async def resources(request: Request) -> Resources:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
    # hop on every request for an attribute lookup
    return resources_of(request)


async def current_app_id(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> UUID:
    if credentials is None:
        raise Unauthorized("Authorization: Bearer <api key> is required")
    app_id = await authenticate(resources_of(request).pool, f"Bearer {credentials.credentials}")
    request.state.app_id = app_id
    return app_id
