"""HTTP adapter of the operator's dashboard: server-rendered pages under /dashboard.

Off (404, like any unknown path) unless STOWAGE_ADMIN_TOKEN is set. Every page needs the
session cookie (else: to the login form); every POST also needs the session's CSRF token in a
hidden field (else 403, nothing done). Pages are sent with a strict Content-Security-Policy
(no inline script), no caching and no framing.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.dashboard import service
from app.dashboard.session import (
    COOKIE,
    COOKIE_PATH,
    FLASH_COOKIE,
    FLASH_TTL_S,
    SESSION_TTL_S,
    Session,
    Sessions,
    is_secure,
)
from app.deps import provided, service_of
from app.errors import NotFound, StowageError
from app.ids import parse_uuid
from app.pagination import Page
from app.problems import ProblemRoute

# Templates and static files are package data (pyproject.toml), read through the package, not
# a path next to this file: what a wheel carries is what the dashboard serves.
STATIC_FILES = resources.files("app.dashboard") / "static"
# Slows down guessing the admin token from one connection; constant so it tells nothing.
FAILED_LOGIN_DELAY_S = 0.5
# The dashboard's forms are a few short fields. Read them ourselves, bounded: Starlette's
# request.form() would spool a multipart file of any size to disk, and the login form is open
# to anyone who can reach the service.
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 20
STATIC = {
    "dashboard.css": ("text/css; charset=utf-8", (STATIC_FILES / "dashboard.css").read_bytes()),
    "dashboard.js": ("text/javascript; charset=utf-8",
                     (STATIC_FILES / "dashboard.js").read_bytes()),
}


# --- control flow the route class turns into responses ---------------------------------------

class LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class CsrfRejected(Exception):
    pass


class BadForm(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class DashboardRoute(ProblemRoute):
    """The dashboard's own exceptions as pages, and its security headers on every response, so
    handlers stay plain. Any other error is the app's problem document (app.problems)."""

    def answer_error(self, request: Request, exc: Exception) -> Response | None:
        if isinstance(exc, LoginRequired):
            query = urlencode({"next": exc.next_url})
            return RedirectResponse(f"{_root(request)}/dashboard/login?{query}", 303)
        if isinstance(exc, BadForm):
            return _page(request, "error.html", status=exc.status, title="Bad request",
                         message=exc.message)
        if isinstance(exc, CsrfRejected):
            return _page(request, "error.html", status=403, title="Forbidden",
                         message="The form's security token is missing or stale. Go back,"
                                 " reload the page and try again.")
        if isinstance(exc, NotFound):
            return _page(request, "error.html", status=404, title="Not found",
                         message=exc.detail)
        return None

    def finish(self, request: Request, response: Response, exc: Exception | None) -> None:
        _harden(request, response)


def _harden(request: Request, response: Response) -> None:
    # signed download links point at public_url, which may be another origin than this one
    img = "'self' data:"
    public = urlsplit(service_of(request, "settings").public_url)
    if public.scheme and public.netloc:
        img += f" {public.scheme}://{public.netloc}"
    response.headers.setdefault(
        "Content-Security-Policy",
        f"default-src 'none'; script-src 'self'; style-src 'self'; img-src {img};"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-store")


router = APIRouter(prefix="/dashboard", route_class=DashboardRoute, include_in_schema=False)

DashboardDep = Annotated[service.Dashboard, Depends(provided("dashboard"))]


# --- dependencies ----------------------------------------------------------------------------

# Dependencies are `async def` although they never await: FastAPI runs a plain `def` one in
# a worker thread.
async def sessions(request: Request) -> Sessions:
    """Sessions for the configured token; 404 when there is none (the dashboard is off)."""
    settings = service_of(request, "settings")
    cached = getattr(request.app.state, "dashboard_sessions", None)
    if cached is None or cached[0] is not settings:
        cached = (settings, Sessions(settings))
        request.app.state.dashboard_sessions = cached
    if not cached[1].enabled:
        raise StarletteHTTPException(404, "Not Found")
    return cached[1]


async def session(request: Request, sessions: Sessions = Depends(sessions)) -> Session:
    found = sessions.load(request.cookies.get(COOKIE))
    if found is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target if request.method == "GET" else f"{_root(request)}/dashboard")
    request.state.dashboard_session = found
    return found


async def read_form(request: Request) -> dict[str, str]:
    """A small url-encoded form (what the dashboard's pages post), read with a size bound."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadForm(413, "That form is larger than any of the dashboard's.")
    if not body:
        return {}
    if content_type != "application/x-www-form-urlencoded":
        raise BadForm(415, "The dashboard's forms are sent url-encoded.")
    try:
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True,
                              max_num_fields=MAX_FORM_FIELDS))
    except ValueError:
        raise BadForm(400, "That form has more fields than any of the dashboard's.") from None


async def checked_form(request: Request, session: Session = Depends(session)
                       ) -> dict[str, str]:
    """The POSTed form, once its CSRF token is the session's."""
    form = await read_form(request)
    if not Sessions.csrf_matches(session, form.get("csrf_token")):
        raise CsrfRejected()
    return form


# --- rendering -------------------------------------------------------------------------------

def _fmt_dt(value: datetime | None, seconds: bool = True) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


_env = Environment(
    loader=PackageLoader("app.dashboard", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(dt=_fmt_dt, size=_fmt_size, seconds=_fmt_seconds)
_env.globals.update(STATES=service.STATES, DELIVERY_STATUSES=service.DELIVERY_STATUSES)


def template_names() -> list[str]:
    return _env.list_templates(extensions=["html"])


def compile_template(name: str) -> None:
    """Load and compile one template (``stowage check``): a missing or broken one raises."""
    _env.get_template(name)


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _cookie_path(request: Request) -> str:
    # the cookies go to the dashboard only, never to the API beside it
    return _root(request) + COOKIE_PATH


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session = getattr(request.state, "dashboard_session", None)
    flash = None
    cached = getattr(request.app.state, "dashboard_sessions", None)
    if cached is not None and session is not None:
        flash = cached[1].read_flash(request.cookies.get(FLASH_COOKIE))
    html = _env.get_template(template).render(
        root=_root(request) + "/dashboard", csrf=session.csrf if session else None,
        flash=flash, path=request.url.path, **context,
    )
    response = HTMLResponse(html, status_code=status)
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path=_cookie_path(request))
    return response


def _redirect(request: Request, sessions: Sessions, url: str, level: str | None = None,
              message: str | None = None) -> RedirectResponse:
    """303 to a page (POST/redirect/GET), with a one-shot message for it."""
    response = RedirectResponse(url, status_code=303)
    if level and message:
        response.set_cookie(FLASH_COOKIE, sessions.flash(level, message), max_age=FLASH_TTL_S,
                            path=_cookie_path(request), httponly=True, samesite="lax",
                            secure=is_secure(service_of(request, "settings")))
    return response


def _safe_next(value: str | None, root: str) -> str:
    """Only a path inside the dashboard: never an open redirect to another site."""
    if not value:
        return root
    parts = urlsplit(value)
    if (parts.scheme or parts.netloc or not value.startswith(root)
            or value.startswith("//") or "\\" in value):
        return root
    return value


# --- static, login, logout -------------------------------------------------------------------

@router.get("/static/{name}")
async def static(name: str, _: Sessions = Depends(sessions)) -> Response:
    if name not in STATIC:
        raise NotFound(f"no such file {name}")
    media_type, body = STATIC[name]
    return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=300"})


@router.get("/login")
async def login_form(request: Request, sessions: Sessions = Depends(sessions),
                     next: str | None = None) -> Response:
    root = _root(request) + "/dashboard"
    if sessions.load(request.cookies.get(COOKIE)) is not None:
        return RedirectResponse(_safe_next(next, root), status_code=303)
    return _page(request, "login.html", next=_safe_next(next, root), error=None)


@router.post("/login")
async def login(request: Request, sessions: Sessions = Depends(sessions)) -> Response:
    form = await read_form(request)
    root = _root(request) + "/dashboard"
    target = _safe_next(form.get("next"), root)
    if not sessions.token_matches(form.get("token", "")):
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)
        return _page(request, "login.html", status=401, next=target,
                     error="That is not the admin token.")
    cookie, _ = sessions.issue()
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, cookie, max_age=SESSION_TTL_S, path=_cookie_path(request),
                        httponly=True, samesite="lax",
                        secure=is_secure(service_of(request, "settings")))
    return response


@router.post("/logout")
async def logout(request: Request, _: dict[str, str] = Depends(checked_form)) -> Response:
    response = RedirectResponse(_root(request) + "/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path=_cookie_path(request))
    return response


# --- overview --------------------------------------------------------------------------------

@router.get("", name="dashboard_overview")
async def overview(dashboard: DashboardDep,
                   request: Request, _: Session = Depends(session)) -> Response:
    data = await dashboard.overview()
    return _page(request, "overview.html", title="Overview", o=data,
                 lag_window_min=service.LAG_WINDOW_S // 60)


# --- attachments -----------------------------------------------------------------------------

def _parse_when(value: str | None, end: bool) -> datetime | None:
    """A date (a whole day, UTC) or a date and time (UTC); `end`: the bound is exclusive, so
    a date means the end of that day."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if end and len(value) == 10:
        parsed += timedelta(days=1)
    return parsed


def _filters(request: Request) -> tuple[service.AttachmentFilters, dict[str, str], list[str]]:
    q = {k: v.strip() for k, v in request.query_params.items() if v.strip()}
    problems: list[str] = []
    f = service.AttachmentFilters(
        state=q.get("state"), profile=q.get("profile"), record_type=q.get("record_type"),
        record_id=q.get("record_id"), record_name=q.get("record_name"),
    )
    if "app" in q:
        f.app_id = parse_uuid(q["app"])
        if f.app_id is None:
            problems.append("app: not an app id")
    if f.state is not None and f.state not in service.STATES:
        problems.append(f"state: one of {', '.join(service.STATES)}")
        f.state = None
    for key, attr, end in (("from", "created_from", False), ("to", "created_to", True)):
        try:
            setattr(f, attr, _parse_when(q.get(key), end))
        except ValueError:
            problems.append(f"{key}: a date (YYYY-MM-DD) or date and time, in UTC")
    return f, q, problems


@router.get("/attachments")
async def attachments_page(dashboard: DashboardDep,
                           request: Request, _: Session = Depends(session)) -> Response:
    filters, query, problems = _filters(request)
    before = parse_uuid(query.get("before", "")) if query.get("before") else None
    if problems or ("app" in query and filters.app_id is None):
        page = Page([])
    else:
        page = await dashboard.list_attachments(filters, before)
    next_query = None
    if page.next_before:
        next_query = urlencode({**{k: v for k, v in query.items() if k != "before"},
                                "before": str(page.next_before)})
    return _page(request, "attachments.html", title="Attachments", page=page, q=query,
                 problems=problems, apps=await dashboard.apps(),
                 profiles=await dashboard.profile_names(), next_query=next_query)


def _id(value: str, what: str) -> UUID:
    parsed = parse_uuid(value)
    if parsed is None:
        raise NotFound(f"no such {what} {value}")
    return parsed


@router.get("/attachments/{att_id}")
async def attachment_page(dashboard: DashboardDep,
                          att_id: str, request: Request, _: Session = Depends(session)
                          ) -> Response:
    detail = await dashboard.attachment_detail(_id(att_id, "attachment"))
    return _page(request, "attachment.html", title=f"Attachment {detail.row['id']}", d=detail)


ACTIONS = {
    "promote": (service.Dashboard.promote, "Promotion requested."),
    "reprocess": (service.Dashboard.reprocess, "Reprocessing queued: the derivatives are rebuilt."),
    "delete": (service.Dashboard.delete, "Deleted; its files are being removed."),
}


@router.post("/attachments/{att_id}/{action}")
async def attachment_action(dashboard: DashboardDep, att_id: str, action: str, request: Request,
                            _: dict[str, str] = Depends(checked_form),
                            sessions: Sessions = Depends(sessions)) -> Response:
    if action not in ACTIONS:
        raise NotFound(f"no action {action}")
    attachment_id = _id(att_id, "attachment")
    run, done = ACTIONS[action]
    url = f"{_root(request)}/dashboard/attachments/{attachment_id}"
    try:
        await run(dashboard, attachment_id)
    except NotFound:
        raise
    except StowageError as e:  # e.g. promoting a deleted one: say so on the page
        return _redirect(request, sessions, url, "error", e.detail)
    return _redirect(request, sessions, url, "ok", done)


# --- webhooks --------------------------------------------------------------------------------

@router.get("/webhooks")
async def webhooks_page(dashboard: DashboardDep, request: Request, _: Session = Depends(session),
                        app: str | None = None) -> Response:
    app_id = parse_uuid(app) if app else None
    endpoints = [] if app and app_id is None else await dashboard.endpoints(app_id)
    return _page(request, "webhooks.html", title="Webhooks", endpoints=endpoints,
                 apps=await dashboard.apps(), app=app or "",
                 window=service.HEALTH_WINDOW)


@router.get("/webhooks/{endpoint_id}")
async def endpoint_page(dashboard: DashboardDep,
                        endpoint_id: str, request: Request, _: Session = Depends(session),
                        status: str | None = None, before: str | None = None) -> Response:
    status = status if status in service.DELIVERY_STATUSES else None
    detail = await dashboard.endpoint_detail(
        _id(endpoint_id, "webhook endpoint"), status,
        parse_uuid(before) if before else None,
    )
    next_query = None
    if detail.next_before:
        next_query = urlencode({**({"status": status} if status else {}),
                                "before": str(detail.next_before)})
    since = service.default_retry_since().strftime("%Y-%m-%dT%H:%M")
    return _page(request, "endpoint.html", title="Webhook endpoint", d=detail, shown=status,
                 next_query=next_query, since=since, window=service.HEALTH_WINDOW)


@router.post("/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry")
async def retry_delivery(dashboard: DashboardDep,
                         endpoint_id: str, delivery_id: str, request: Request,
                         _: dict[str, str] = Depends(checked_form),
                         sessions: Sessions = Depends(sessions)) -> Response:
    ep = _id(endpoint_id, "webhook endpoint")
    await dashboard.retry_delivery(ep, _id(delivery_id, "delivery"))
    return _redirect(request, sessions, f"{_root(request)}/dashboard/webhooks/{ep}", "ok",
                     "Delivery queued again.")


@router.post("/webhooks/{endpoint_id}/retry-failed")
async def retry_failed(dashboard: DashboardDep, endpoint_id: str, request: Request,
                       form: dict[str, str] = Depends(checked_form),
                       sessions: Sessions = Depends(sessions)) -> Response:
    ep = _id(endpoint_id, "webhook endpoint")
    url = f"{_root(request)}/dashboard/webhooks/{ep}"
    try:
        since = _parse_when(form.get("since"), end=False)
    except ValueError:
        since = None
    if since is None:
        return _redirect(request, sessions, url, "error",
                         "Since when? Give a date and time (UTC).")
    count = await dashboard.retry_failed_since(ep, since)
    return _redirect(request, sessions, url, "ok",
                     f"{count} failed deliver{'y' if count == 1 else 'ies'} since"
                     f" {_fmt_dt(since, seconds=False)} UTC queued again.")


@router.post("/webhooks/{endpoint_id}/enable")
async def enable_endpoint(dashboard: DashboardDep, endpoint_id: str, request: Request,
                          _: dict[str, str] = Depends(checked_form),
                          sessions: Sessions = Depends(sessions)) -> Response:
    ep = _id(endpoint_id, "webhook endpoint")
    await dashboard.reenable(ep)
    return _redirect(request, sessions, f"{_root(request)}/dashboard/webhooks/{ep}", "ok",
                     "Endpoint enabled again.")
