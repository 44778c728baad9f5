"""FastAPI dependencies shared by the routers: the services built at start, and the
authenticated app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.scopes import (
    READ,
    SCOPES,
    UPLOAD,
    InsufficientScope,
    check_scope,
    is_upload_token,
)
from app.auth.service import ApiKeys, Principal
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


# what an upload token may do: upload, and read what it made (routes that allow it say so)
TOKEN_SCOPES = (UPLOAD, READ)


async def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None,
                       scope: str, *, tokens: bool = False, counted: bool = False
                       ) -> Principal:
    """The request's API key (or upload token, where ``tokens``), which must have ``scope``:
    401 when missing, unknown or revoked, 403 insufficient-scope when outside its scopes.
    Looked up on every request (a revocation holds at once). ``counted``: a new upload,
    counted against the app's rate limit (429 when over)."""
    if credentials is None:
        raise Unauthorized("Authorization: Bearer <api key> is required")
    credential = credentials.credentials
    if is_upload_token(credential):
        token = await service_of(request, "upload_tokens").authenticate(credential)
        principal = Principal(app_id=token.app_id, key_id=None, scopes=TOKEN_SCOPES,
                              token=token, quota_bytes=token.quota_bytes,
                              rate_limit=token.rate_limit)
        if not tokens:
            raise InsufficientScope("an upload token may only upload, and read what it"
                                    f" uploaded; this needs an API key with scope {scope!r}",
                                    scope=scope)
    else:
        keys: ApiKeys = service_of(request, "api_keys")
        principal = await keys.principal(f"Bearer {credential}")
    request.state.app_id = principal.app_id
    request.state.principal = principal
    check_scope(principal.scopes, scope)
    if principal.rate_limit:  # app.uploads.rate_limits; the headers on every answer
        decision = await service_of(request, "rate_limits").check(
            principal.app_id, principal.rate_limit, hit=counted)
        request.state.rate_limit_headers = decision.headers()
    return principal


_REQUIREMENTS: dict[tuple[str, bool, bool], Callable[..., Awaitable[UUID]]] = {}


def requires(scope: str, *, tokens: bool = False, counted: bool = False
             ) -> Callable[..., Awaitable[UUID]]:
    """The dependency of a /v1 route: the authenticated app's id, for a key with ``scope``
    (``tokens``: an upload token too). Declared on every /v1 route; the scope is shown in the
    OpenAPI document (``x-stowage-scope``), and a test holds every operation to having one.
    ``counted``: the route starts a new upload, counted against the app's rate limit.
    One function per requirement, so FastAPI runs it once per request."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    found = _REQUIREMENTS.get((scope, tokens, counted))
    if found is not None:
        return found

    async def dependency(request: Request,
                         credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                         ) -> UUID:
        return (await authenticate(request, credentials, scope, tokens=tokens,
                                   counted=counted)).app_id

    dependency.__name__ = (f"requires_{scope}" + ("_or_upload_token" if tokens else "")
                           + ("_counted" if counted else ""))
    dependency.stowage_scope = scope  # type: ignore[attr-defined]
    dependency.stowage_tokens = tokens  # type: ignore[attr-defined]
    dependency.stowage_counted = counted  # type: ignore[attr-defined]
    _REQUIREMENTS[(scope, tokens, counted)] = dependency
    return dependency


def declares(scope: str, *, tokens: bool = False) -> Callable[[], Awaitable[None]]:
    """For a route that authenticates in its body (downloads: a signed link, a public file,
    or the API key): declares the scope its API key needs, checking nothing itself."""

    async def declared() -> None:
        return None

    declared.__name__ = f"declares_{scope}"
    declared.stowage_scope = scope  # type: ignore[attr-defined]
    declared.stowage_tokens = tokens  # type: ignore[attr-defined]
    return declared


def principal_of(request: Request) -> Principal:
    """Who the request is, once a ``requires`` dependency has run."""
    return request.state.principal


def scope_of_route(dependant: Any) -> tuple[str, bool, bool] | None:
    """What a route's dependencies declare (``requires`` or ``declares``), if anything: its
    scope, whether it takes an upload token, whether it counts against the rate limit."""
    todo = [dependant]
    while todo:
        d = todo.pop()
        scope = getattr(d.call, "stowage_scope", None)
        if scope is not None:
            return (scope, bool(getattr(d.call, "stowage_tokens", False)),
                    bool(getattr(d.call, "stowage_counted", False)))
        todo.extend(d.dependencies)
    return None
