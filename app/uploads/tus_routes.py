"""HTTP adapter for tus 1.0 at /v1/tus/: headers in, service calls, headers out.

Every response of these routes (errors included) carries Tus-Resumable; OPTIONS answers
without an API key (tus discovery). CORS is the app's, for all of /v1 (app/cors.py): a browser
preflight is answered there, before these routes, when STOWAGE_CORS_ORIGINS allows the origin.
"""

from __future__ import annotations

import email.utils
from datetime import UTC
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api_common import PROBLEM, path_id
from app.auth.scopes import InsufficientScope
from app.deps import principal_of, provided, requires
from app.errors import MalformedRequest
from app.http_methods import allow_header
from app.idempotency.http import (
    EMPTY_SHA256,
    Digesting,
    IdempotencyDep,
    IdempotencyKey,
    digest,
    idempotent,
)
from app.idempotency.http import responses as with_idempotency
from app.idempotency.service import fingerprint
from app.problems import ProblemRoute
from app.uploads.options import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_RECORD_ID,
    MAX_RECORD_NAME,
    MAX_RECORD_TYPE,
)
from app.uploads.routes import admitted
from app.uploads.tus import TusUploads, UploadStatus
from app.uploads.tus_protocol import (
    CHECKSUM_ALGORITHMS,
    MAX_LENGTH_HEADER,
    OFFSET_CONTENT_TYPE,
    TUS_EXTENSIONS,
    TUS_VERSION,
    TusUploadNotFound,
    TusVersionUnsupported,
    TusWrongContentType,
    parse_checksum,
    parse_length,
)


class TusRoute(ProblemRoute):
    """The tus headers on every response, errors included: a tus client needs Tus-Resumable,
    and Location on a failed creation-with-upload, to resume."""

    def finish(self, request: Request, response: Response, exc: Exception | None) -> None:
        if exc is not None:
            response.headers.update(getattr(request.state, "tus_error_headers", {}))
            if response.status_code == 412:
                response.headers["Tus-Version"] = TUS_VERSION
        if request.method != "OPTIONS":
            response.headers["Tus-Resumable"] = TUS_VERSION


async def require_tus_resumable(request: Request) -> None:
    """412 unless ``Tus-Resumable: 1.0.0`` (every request but OPTIONS)."""
    if request.method == "OPTIONS":
        return
    if request.headers.get("tus-resumable", "").strip() != TUS_VERSION:
        raise TusVersionUnsupported(f"send the header Tus-Resumable: {TUS_VERSION}")


router = APIRouter(prefix="/v1/tus", tags=["tus"], route_class=TusRoute,
                   dependencies=[Depends(require_tus_resumable)])

TusDep = Annotated[TusUploads, Depends(provided("tus"))]

TUS_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed tus header", **PROBLEM},
    401: {"description": "Missing or invalid API key", **PROBLEM},
    404: {"description": "No such upload for this app", **PROBLEM},
    412: {"description": "Tus-Resumable 1.0.0 missing (see Tus-Version)", **PROBLEM},
    422: {"description": "Invalid input", **PROBLEM},
    423: {"description": "Another request is writing this upload; retry", **PROBLEM},
    503: {"description": "Postgres, Redis or storage unreachable; retry after Retry-After",
          **PROBLEM},
}
COMPLETION_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "Over Upload-Length, or larger than the profile allows", **PROBLEM},
    415: {"description": "PATCH Content-Type is not application/offset+octet-stream, or the"
                         " completed file's type is not allowed by the profile", **PROBLEM},
    422: {"description": "Invalid Upload-Metadata, or the completed file is refused by the"
                         " profile", **PROBLEM},
}


def _header(name: str, schema: dict[str, Any], description: str,
            required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema,
            "description": description}


TUS_RESUMABLE = _header("Tus-Resumable", {"type": "string", "enum": [TUS_VERSION]},
                        "the protocol version", required=True)


def _checksum_pattern() -> str:
    """`<algorithm> <base64 digest>`, the digest exactly as long as the algorithm's: what
    tus.parse_checksum accepts (400 otherwise)."""
    forms = []
    for name, algorithm in sorted(CHECKSUM_ALGORITHMS.items()):
        size = algorithm().digest_size
        chars = (size * 8 + 5) // 6  # base64 characters carrying the digest's bits
        forms.append(f"{name} [A-Za-z0-9+/]{{{chars}}}{'=' * (-chars % 4)}")
    return "^(" + "|".join(forms) + ")$"


UPLOAD_CHECKSUM = _header("Upload-Checksum", {"type": "string", "pattern": _checksum_pattern()},
                          "`<sha1|sha256|md5> <base64 digest>` of this request's body")
BODY: dict[str, Any] = {
    "content": {OFFSET_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}
CREATE_DOC: dict[str, Any] = {
    "parameters": [
        TUS_RESUMABLE,
        _header("Upload-Length", {"type": "integer", "minimum": 0,
                                  "maximum": MAX_LENGTH_HEADER},
                "the size of the whole file in bytes", required=True),
        _header("Upload-Metadata", {"type": "string"},
                "comma-separated `key base64(value)` pairs"),
        UPLOAD_CHECKSUM,
    ],
    "requestBody": {"required": False, **BODY},
}
PATCH_DOC: dict[str, Any] = {
    "parameters": [
        TUS_RESUMABLE,
        _header("Upload-Offset", {"type": "integer", "minimum": 0,
                                  "maximum": MAX_LENGTH_HEADER},
                "where these bytes go: must equal the upload's offset", required=True),
        UPLOAD_CHECKSUM,
    ],
    "requestBody": {"required": True, **BODY},
}
TUS_ONLY_DOC: dict[str, Any] = {"parameters": [TUS_RESUMABLE]}


def _headers_doc(*names: str) -> dict[str, Any]:
    return {n: {"schema": {"type": "string"}} for n in names}


# the methods of /v1/tus/{upload_id} (POST only stands in for one of them, by its override)
UPLOAD_METHODS = {"HEAD", "PATCH", "DELETE", "OPTIONS"}


def _upload_id(value: str) -> UUID:
    return path_id(value, TusUploadNotFound)


def _http_date(status: UploadStatus) -> str:
    return email.utils.format_datetime(status.expires_at.astimezone(UTC), usegmt=True)


def _status_headers(status: UploadStatus) -> dict[str, str]:
    headers = {"Upload-Offset": str(status.offset), "Upload-Expires": _http_date(status)}
    if status.attachment_id is not None:
        headers["Stowage-Attachment-Id"] = str(status.attachment_id)
    return headers


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return parse_length("Content-Length", value) if value is not None else None


def _is_offset_stream(request: Request) -> bool:
    ctype = request.headers.get("content-type", "")
    return ctype.split(";", 1)[0].strip().lower() == OFFSET_CONTENT_TYPE


def _location(tus: TusUploads, upload_id: UUID) -> str:
    return f"{tus.settings.public_url.rstrip('/')}/v1/tus/{upload_id}"


async def _token_reaches(request: Request, tus: TusUploads, app_id: UUID,
                         upload_id: str) -> None:
    """An upload token reaches the upload it created, no other (404)."""
    token = principal_of(request).token
    if token is not None:
        await tus.check_token(app_id, _upload_id(upload_id), token)


# --- discovery ---------------------------------------------------------------------------------

@router.options(
    "/", status_code=204, response_class=Response,
    summary="tus discovery (no API key)",
    responses={204: {"description": "What this server supports", "headers": _headers_doc(
        "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size",
        "Tus-Checksum-Algorithm")}},
)
@router.options("", status_code=204, response_class=Response, include_in_schema=False)
@router.options("/{upload_id}", status_code=204, response_class=Response,
                include_in_schema=False)
async def discover(tus: TusDep) -> Response:
    return Response(status_code=204, headers={
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(TUS_EXTENSIONS),
        "Tus-Max-Size": str(tus.max_size()),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    })


# --- creation ----------------------------------------------------------------------------------

@router.post(
    "/", status_code=201, response_class=Response, openapi_extra=CREATE_DOC,
    summary="Create an upload (tus creation, creation-with-upload)",
    description="Headers: `Upload-Length`, `Upload-Metadata` (keys `filename`, `profile`,"
                " `record_type`, `record_id`, `record_name`, `promote`, `metadata`, values"
                " base64). With `Content-Type: application/offset+octet-stream` the body is the"
                " first bytes. 201 with `Location`, `Upload-Offset`, `Upload-Expires`, and"
                " `Stowage-Attachment-Id` once the last byte is in. The options are checked"
                " at creation as in the other upload modes (422 naming the field):"
                f" `record_type` and `record_name` at most {MAX_RECORD_TYPE} and"
                f" {MAX_RECORD_NAME} characters, `record_id` at most {MAX_RECORD_ID}, no NUL"
                f" characters, `metadata` a JSON object of at most {MAX_METADATA_BYTES} bytes"
                f" nested at most {MAX_METADATA_DEPTH} levels deep.",
    responses=with_idempotency({
        **TUS_ERRORS, **COMPLETION_ERRORS,
        201: {"description": "Created", "headers": _headers_doc(
            "Location", "Upload-Offset", "Upload-Expires", "Stowage-Attachment-Id")},
        460: {"description": "Upload-Checksum mismatch; bytes discarded", **PROBLEM}}),
)
@router.post("", status_code=201, response_class=Response, include_in_schema=False)
async def create_upload(
    tus: TusDep,
    idem: IdempotencyDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
    app_id: UUID = Depends(requires("upload", tokens=True, counted=True)),
) -> Response:
    if request.headers.get("upload-concat"):
        raise MalformedRequest("the concatenation extension is not supported")
    if request.headers.get("upload-length") is None and request.headers.get("upload-defer-length"):
        raise MalformedRequest("Upload-Defer-Length is not supported; send Upload-Length")
    length = parse_length("Upload-Length", request.headers.get("upload-length"))
    with_body = _is_offset_stream(request)
    checksum = parse_checksum(request.headers.get("upload-checksum")) if with_body else None
    content_length = _content_length(request) if with_body else None
    metadata = request.headers.get("upload-metadata")

    def made(size: int, sha256: str) -> str:
        # the upload's length and options, and the bytes sent with the creation, if any
        return fingerprint("tus", length, metadata, size, sha256)

    async def run() -> tuple[Response, str]:
        principal = principal_of(request)
        # the upload token's use here; the quota's bytes by tus.create, under the upload's id
        async with admitted(request, None, quota=False):
            status = await tus.create(app_id, length=length, metadata_header=metadata,
                                      token=principal.token,
                                      quota=principal.quota_bytes is not None)
        location = _location(tus, status.id)
        # hashed again only when a key will keep the fingerprint: not on every creation
        body = Digesting(request.stream()) if idempotency_key is not None else None
        if with_body and content_length != 0 and status.offset < status.length:
            # the upload exists: should the bytes fail, the error tells the client where it
            # is, so it can resume
            request.state.tus_error_headers = {"Location": location}
            status = await tus.append(app_id, status.id, offset=0,
                                      chunks=body if body is not None else request.stream(),
                                      content_length=content_length, checksum=checksum)
        return (Response(status_code=201,
                         headers={"Location": location, **_status_headers(status)}),
                made(body.size, body.sha256) if body is not None else "")

    async def repeat() -> str:
        # the same upload URL again; bytes sent along are compared, then dropped
        return made(*await digest(request.stream())) if with_body else made(0, EMPTY_SHA256)

    return await idempotent(idem, app_id, idempotency_key, "POST /v1/tus/", None, run, repeat)


# --- one upload --------------------------------------------------------------------------------

@router.head(
    "/{upload_id}", status_code=200, response_class=Response, openapi_extra=TUS_ONLY_DOC,
    summary="The upload's offset (tus HEAD)",
    description="`Upload-Offset`, `Upload-Length`, `Upload-Metadata`, `Upload-Expires`; once"
                " complete also `Stowage-Attachment-Id`.",
    responses={**TUS_ERRORS, **COMPLETION_ERRORS, 410: {"description": "Expired", **PROBLEM},
               200: {"description": "The upload", "headers": _headers_doc(
                   "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Expires",
                   "Stowage-Attachment-Id")}},
)
async def head_upload(
    tus: TusDep,
    upload_id: str,
    request: Request,
    app_id: UUID = Depends(requires("upload", tokens=True)),
) -> Response:
    await _token_reaches(request, tus, app_id, upload_id)
    status = await tus.status(app_id, _upload_id(upload_id))
    headers = {**_status_headers(status), "Upload-Length": str(status.length),
               "Cache-Control": "no-store"}
    if status.metadata_header:
        headers["Upload-Metadata"] = status.metadata_header
    return Response(status_code=200, headers=headers)


@router.patch(
    "/{upload_id}", status_code=204, response_class=Response, openapi_extra=PATCH_DOC,
    summary="Append bytes (tus PATCH)",
    description="Headers: `Upload-Offset` (must equal the upload's), `Content-Type:"
                " application/offset+octet-stream`, optional `Upload-Checksum: <sha1|sha256|md5>"
                " <base64>`. 204 with the new `Upload-Offset`; with the last byte the attachment"
                " is made and `Stowage-Attachment-Id` names it.",
    responses={**TUS_ERRORS, **COMPLETION_ERRORS,
               204: {"description": "Appended", "headers": _headers_doc(
                   "Upload-Offset", "Upload-Expires", "Stowage-Attachment-Id")},
               409: {"description": "Upload-Offset does not match the upload's", **PROBLEM},
               410: {"description": "Expired", **PROBLEM},
               460: {"description": "Upload-Checksum mismatch; bytes discarded", **PROBLEM}},
)
async def patch_upload(
    tus: TusDep,
    upload_id: str,
    request: Request,
    app_id: UUID = Depends(requires("upload", tokens=True)),
) -> Response:
    await _token_reaches(request, tus, app_id, upload_id)
    if not _is_offset_stream(request):
        raise TusWrongContentType(f"send the bytes as Content-Type: {OFFSET_CONTENT_TYPE}")
    upload = _upload_id(upload_id)
    offset = parse_length("Upload-Offset", request.headers.get("upload-offset"))
    checksum = parse_checksum(request.headers.get("upload-checksum"))
    status = await tus.append(app_id, upload, offset=offset, chunks=request.stream(),
                              content_length=_content_length(request), checksum=checksum)
    return Response(status_code=204, headers=_status_headers(status))


@router.delete(
    "/{upload_id}", status_code=204, response_class=Response, openapi_extra=TUS_ONLY_DOC,
    summary="Terminate an upload (tus termination)",
    description="Removes the upload and its bytes. An attachment already made from it stays.",
    responses=TUS_ERRORS,
)
async def delete_upload(
    tus: TusDep,
    upload_id: str,
    app_id: UUID = Depends(requires("upload")),
) -> Response:
    await tus.terminate(app_id, _upload_id(upload_id))
    return Response(status_code=204)


@router.post("/{upload_id}", response_class=Response, include_in_schema=False)
async def method_override(
    tus: TusDep,
    upload_id: str,
    request: Request,
    app_id: UUID = Depends(requires("upload", tokens=True)),
) -> Response:
    """``X-HTTP-Method-Override``: for clients behind proxies that allow only GET and POST."""
    method = request.headers.get("x-http-method-override", "").strip().upper()
    if method == "PATCH":
        return await patch_upload(tus, upload_id, request, app_id)
    if method == "DELETE":
        if principal_of(request).token is not None:
            raise InsufficientScope("an upload token cannot terminate uploads",
                                    scope="upload")
        return await delete_upload(tus, upload_id, app_id)
    if method == "HEAD":
        return await head_upload(tus, upload_id, request, app_id)
    # without an override, POST is no method of an upload: 405 naming those it has
    raise StarletteHTTPException(405, "POST to an upload needs X-HTTP-Method-Override:"
                                 " PATCH, DELETE or HEAD",
                                 headers={"Allow": allow_header(UPLOAD_METHODS)})
