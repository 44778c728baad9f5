"""HTTP adapter for attachments: translate requests to service calls and back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from app.api_common import (
    PROBLEM,
    cursor_query,
    decode_cursor,
    encode_cursor,
    not_found_response,
    path_id,
)
from app.attachments.downloads import (
    http_date,
    is_active,
    not_modified,
    parse_range,
    range_applies,
)
from app.attachments.schemas import AttachmentList, AttachmentOut, State, present
from app.attachments.service import Attachments
from app.deps import SettingsDep, authenticate, bearer, declares, principal_of, provided, requires
from app.errors import (
    AttachmentNotFound,
    DerivativeNotFound,
    FileMissing,
    InvalidState,
)
from app.failpoints import failpoint
from app.http_methods import is_head
from app.storage import Storage, StorageObjectNotFound, content_disposition, open_read
from app.text import check_text

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["attachments"])

AttachmentsDep = Annotated[Attachments, Depends(provided("attachments"))]

COMMON_ERRORS = not_found_response("attachment")


def download_responses(what: str, media_type: str) -> dict[int | str, dict[str, Any]]:
    """What a download answers: the bytes, a range, a redirect to storage, or a problem."""
    return {
        **COMMON_ERRORS,
        200: {"description": what,
              "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}},
        206: {"description": "The requested byte range"},
        304: {"description": "Not modified (If-None-Match, If-Modified-Since): no body"},
        307: {"description": "Redirect to a short-lived storage URL"},
        403: {"description": "Bad or expired signed link", **PROBLEM},
        409: {"description": "The attachment has no file (deleted or failed)", **PROBLEM},
        416: {"description": "Range not satisfiable", **PROBLEM},
    }


def attachment_id_of(value: str) -> UUID:
    return path_id(value, AttachmentNotFound)


@router.get(
    "/attachments/{attachment_id}",
    response_model=AttachmentOut,
    responses=COMMON_ERRORS,
    summary="Get an attachment",
)
async def get_attachment(
    attachments: AttachmentsDep,
    settings: SettingsDep,
    attachment_id: str,
    request: Request,
    wait: float = Query(0, ge=0, le=60, description="long-poll: answer as soon as the state"
                        " is no longer `cached`, or after this many seconds"),
    app_id: UUID = Depends(requires("read", tokens=True)),
) -> dict[str, Any]:
    wait = min(wait, settings.long_poll_max)
    att_id = attachment_id_of(attachment_id)
    token = principal_of(request).token
    if token is not None:  # an upload token reads what it uploaded, and nothing else
        row = await attachments.get(app_id, att_id)
        if row["upload_token_id"] != token.id:
            raise AttachmentNotFound(f"no attachment {att_id}")
    row = await attachments.wait_for_change(app_id, att_id, wait)
    return present(row, attachments.links)


@router.get(
    "/attachments",
    response_model=AttachmentList,
    responses=COMMON_ERRORS,
    summary="List attachments, newest first",
)
async def list_attachments(
    attachments: AttachmentsDep,
    state: State | None = Query(None),
    record_type: str | None = Query(None),
    record_id: str | None = Query(None),
    record_name: str | None = Query(None),
    cursor: str | None = cursor_query(),
    limit: int = Query(50, ge=1, le=200),
    app_id: UUID = Depends(requires("read")),
) -> dict[str, Any]:
    for name, value in (("record_type", record_type), ("record_id", record_id),
                        ("record_name", record_name)):
        check_text(name, value)  # a NUL would reach Postgres, which refuses it (500)
    page = await attachments.list_attachments(
        app_id, state=state, record_type=record_type, record_id=record_id,
        record_name=record_name, before=decode_cursor(cursor), limit=limit,
    )
    return {
        "items": [present(r, attachments.links) for r in page.items],
        "next_cursor": encode_cursor(page.next_before),
    }


@router.post(
    "/attachments/{attachment_id}/promote",
    status_code=202,
    response_model=AttachmentOut,
    responses={**COMMON_ERRORS, 409: {"description": "failed or deleted", **PROBLEM}},
    summary="Promote a two-phase (promote=false) upload",
)
async def promote_attachment(
    attachments: AttachmentsDep,
    attachment_id: str,
    app_id: UUID = Depends(requires("upload")),
) -> JSONResponse:
    row = await attachments.request_promotion(app_id, attachment_id_of(attachment_id))
    return JSONResponse(present(row, attachments.links), status_code=202)


@router.delete(
    "/attachments/{attachment_id}",
    status_code=202,
    response_model=AttachmentOut,
    responses=COMMON_ERRORS,
    summary="Delete an attachment; its files are removed in the background",
)
async def delete_attachment(
    attachments: AttachmentsDep,
    attachment_id: str,
    app_id: UUID = Depends(requires("delete")),
) -> JSONResponse:
    row = await attachments.delete(app_id, attachment_id_of(attachment_id))
    return JSONResponse(present(row, attachments.links), status_code=202)


@router.get(
    "/attachments/{attachment_id}/content",
    response_class=Response,
    responses=download_responses("The file, with its sniffed Content-Type", "*/*"),
    dependencies=[Depends(declares("read"))],
    summary="Download the file",
)
async def download(
    attachments: AttachmentsDep,
    attachment_id: str,
    request: Request,
    token: str | None = Query(None, description="the signed token of the attachment's `url`"),
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Response:
    row, cache = await readable(request, attachments, attachment_id_of(attachment_id), token,
                                 credentials)
    return await serve_file(request, attachments, row, cache_control=cache)


# Cache-Control of a download, by how it was asked for. A public profile's original never
# changes under its link; a derivative's link names its generation, so it is immutable too
# when that is the current one. A signed link may be kept by any cache until it expires. The
# API key's answers are the key holder's alone.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, no-cache"
PRIVATE = "private, max-age=3600"


async def readable(request: Request, attachments: Attachments, att_id: UUID, token: str | None,
                    credentials: HTTPAuthorizationCredentials | None,
                    derivative: str | None = None, version: int | None = None
                    ) -> tuple[Any, str]:
    """Downloads take a signed link (for browsers), the API key, or nothing at all for a
    public profile's files: (the row, the Cache-Control to answer with)."""
    if token is not None:
        row = await attachments.get_by_link(att_id, token, derivative, version)
        expires = attachments.links.expires_at(token) or 0
        max_age = max(0, expires - int(time.time()))
        return row, f"public, max-age={max_age}"
    if credentials is None:
        row = await attachments.get_public(att_id)
        if row is not None:
            current = derivative is None or version == row["generation"]
            return row, IMMUTABLE if current else REVALIDATE
    app_id = (await authenticate(request, credentials, "read")).app_id
    return await attachments.get(app_id, att_id), PRIVATE


@dataclass(frozen=True)
class _File:
    """One object a download serves, and how."""

    storage: Storage
    key: str
    mime: str
    size: int
    etag: str
    filename: str | None
    # Last-Modified: when this content came to be served under the link
    modified: datetime | None = None


# How often a download follows its file when it moved under it: a promotion moves it once,
# a reprocess once more; beyond that something else is wrong.
_MOVES = 3


def _original(attachments: Attachments, row: Any) -> _File:
    if row["state"] not in ("cached", "stored"):
        raise InvalidState(f"attachment {row['id']} is {row['state']}; it has no file")
    storage = attachments.store if row["storage"] == "store" else attachments.cache
    return _File(storage, row["key"], row["mime_type"], row["size"], row["sha256"],
                 row["filename"], row["stored_at"] or row["created_at"])


def _derivative(name: str) -> Callable[[Attachments, Any], _File]:
    def pick(attachments: Attachments, row: Any) -> _File:
        derivative = (row["derivatives"] or {}).get(name)
        if derivative is None:
            raise DerivativeNotFound(f"attachment {row['id']} has no derivative {name!r}")
        if row["state"] != "stored":
            raise InvalidState(f"attachment {row['id']} is {row['state']}")
        return _File(attachments.store, derivative["key"], derivative["mime_type"],
                     derivative["size"], f"{row['sha256'][:16]}-{row['generation']}-{name}", None,
                     row["updated_at"])

    return pick


async def serve_file(request: Request, attachments: Attachments, row: Any,
                     pick: Callable[[Attachments, Any], _File] = _original, *,
                     cache_control: str = PRIVATE) -> Response:
    """Serve what ``pick`` chooses from the row. When the file is gone by the time it is
    opened, the row is read again: if the attachment changed meanwhile (a promotion purged
    the cached copy, a reprocess replaced the derivatives), the file is served from where it
    is now, or the new state answers (deleted: 409)."""
    for _ in range(_MOVES):
        try:
            return await serve_object(request, **vars(pick(attachments, row)),
                                      cache_control=cache_control)
        except StorageObjectNotFound:
            fresh = await attachments.moved(row)
            if fresh is None:  # not moved but lost: a case for `stowage fsck`
                log.error("attachment %s: its file %s is missing from storage; run"
                          " `stowage fsck`", row["id"], pick(attachments, row).key)
                raise FileMissing(f"attachment {row['id']}: its file is missing from storage;"
                                  " the operator is told to run `stowage fsck`") from None
            row = fresh
    return await serve_object(request, **vars(pick(attachments, row)), cache_control=cache_control)


async def serve_object(request: Request, storage: Storage, *, key: str, mime: str, size: int,
                       etag: str, filename: str | None, modified: datetime | None = None,
                       cache_control: str = PRIVATE) -> Response:
    """Redirect to the storage (S3) or stream it ourselves (filesystem), with the conditional
    requests and ranges of RFC 9110 §13-14. HEAD answers the headers GET would.

    Raises StorageObjectNotFound before anything is sent when the object is not there."""
    as_attachment = is_active(mime)
    head = is_head(request)
    # a HEAD that follows the redirect must find a URL signed for HEAD (S3 signs the method)
    url = await storage.presigned_get_url(
        key, expires_in=300, filename=filename, content_type=mime, as_attachment=as_attachment,
        method="HEAD" if head else "GET",
    )
    if url is not None:
        # S3 answers the conditionals and ranges itself, on the URL it is sent to
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    await failpoint("download.before_open")
    validators = {"ETag": f'"{etag}"', "Cache-Control": cache_control}
    if modified is not None:
        validators["Last-Modified"] = http_date(modified)
    if not_modified(_joined(request, "if-none-match"), request.headers.get("if-modified-since"),
                    etag, modified):
        # §15.4.5: what a cache needs to refresh its copy, and no body
        return Response(status_code=304, headers=validators)
    headers = {
        **validators,
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(filename, as_attachment),
        "X-Content-Type-Options": "nosniff",
    }
    # Range is defined for GET only (§14.2): HEAD describes the whole file
    byte_range = None
    if not head and range_applies(request.headers.get("if-range"), etag, modified):
        byte_range = parse_range(request.headers.get("range"), size)
    if head:
        if await storage.stat(key) is None:  # as GET would find it: moved, or lost
            raise StorageObjectNotFound(key)
        headers["Content-Length"] = str(size)
        return Response(status_code=200, media_type=mime, headers=headers)
    if byte_range is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(await open_read(storage, key), media_type=mime,
                                 headers=headers)
    start, end = byte_range
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(await open_read(storage, key, start, end), status_code=206,
                             media_type=mime, headers=headers)


def _joined(request: Request, name: str) -> str | None:
    """A list header sent as several fields is one list (RFC 9110 §5.3)."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


@router.get(
    "/attachments/{attachment_id}/derivatives/{name}",
    response_class=Response,
    responses=download_responses("The derivative", "image/*"),
    dependencies=[Depends(declares("read"))],
    summary="Download a derivative (thumbnail…)",
)
async def download_derivative(
    attachments: AttachmentsDep,
    attachment_id: str,
    name: str,
    request: Request,
    token: str | None = Query(None, description="the signed token of the derivative's `url`"),
    v: int | None = Query(None, description="the derivative's generation, as its `url` has it"),
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Response:
    row, cache = await readable(request, attachments, attachment_id_of(attachment_id), token,
                                 credentials, derivative=name, version=v)
    return await serve_file(request, attachments, row, _derivative(name), cache_control=cache)


@router.post(
    "/attachments/{attachment_id}/reprocess",
    status_code=202,
    response_model=AttachmentOut,
    responses={**COMMON_ERRORS, 409: {"description": "Not stored", **PROBLEM}},
    summary="Rebuild the derivatives from the profile as it is now",
)
async def reprocess_attachment(
    attachments: AttachmentsDep,
    attachment_id: str,
    app_id: UUID = Depends(requires("upload")),
) -> JSONResponse:
    row = await attachments.request_reprocess(app_id, attachment_id_of(attachment_id))
    return JSONResponse(present(row, attachments.links), status_code=202)


@router.post(
    "/attachments/{attachment_id}/rescan",
    status_code=202,
    response_model=AttachmentOut,
    responses={**COMMON_ERRORS,
               409: {"description": "Not stored, or no malware scanner is set up", **PROBLEM}},
    summary="Scan the stored file for malware again (after new signatures)",
    description="The worker scans the stored original with ClamAV: clean → `metadata.scan`"
    " renewed; infected → the attachment becomes `failed` (`error.code` `infected`), its files"
    " are quarantined and removed, and `attachment.failed` is sent.",
)
async def rescan_attachment(
    attachments: AttachmentsDep,
    attachment_id: str,
    app_id: UUID = Depends(requires("upload")),
) -> JSONResponse:
    row = await attachments.request_rescan(app_id, attachment_id_of(attachment_id))
    return JSONResponse(present(row, attachments.links), status_code=202)
