"""HTTP adapter for uploads into POST /v1/attachments: multipart (with a file, or a JSON
registration of a presigned upload) and the raw body. Each streams into the intake
(app/uploads/intake.py); tus and presigned uploads have routes of their own."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from app.api_common import PROBLEM, not_found_response
from app.attachments.schemas import AttachmentOut, present
from app.auth.scopes import InsufficientScope
from app.deps import principal_of, provided, requires, service_of
from app.errors import InvalidInput, UnsupportedMediaType, UploadTooLarge
from app.idempotency.http import IdempotencyDep, IdempotencyKey, digest, idempotent
from app.idempotency.http import responses as with_idempotency
from app.idempotency.service import fingerprint
from app.observability.metrics import track_upload
from app.uploads.intake import Intake
from app.uploads.multipart import (
    Field,
    FileData,
    FileStart,
    boundary_of,
    file_bytes,
    iter_multipart,
)
from app.uploads.options import (
    MAX_METADATA_DEPTH,
    MAX_RECORD_ID,
    MAX_RECORD_NAME,
    MAX_RECORD_TYPE,
    RECORD_LIMITS,
    UploadOptions,
    check_early_options,
    json_nests_deeper,
    make_options,
    parse_options,
)
from app.uploads.presigned import PresignedUploads
from app.uploads.presigned_routes import PresignedDep, RegisterRequest
from app.uploads.quotas import Quotas
from app.uploads.tokens import UploadToken, UploadTokens

router = APIRouter(prefix="/v1", tags=["attachments"])

IntakeDep = Annotated[Intake, Depends(provided("intake"))]

COMMON_ERRORS = not_found_response("attachment")
# The JSON registration body is read whole before it is parsed, so it is capped: the options
# it carries fit with ample room for whitespace and escapes.
MAX_REGISTER_BODY = 256 * 1024

UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = with_idempotency({
    **COMMON_ERRORS,
    409: {"description": "JSON registration, but the cache is not on S3", **PROBLEM},
    413: {"description": "Larger than the profile or service allows (a JSON registration:"
                         f" a body over {MAX_REGISTER_BODY // 1024} KiB)", **PROBLEM},
    415: {"description": "File type not allowed by the profile", **PROBLEM},
    507: {"description": "The storage is full: nothing was kept; try again later", **PROBLEM},
})

# promote as text (a form field, a query parameter): exactly these two words
PROMOTE_TEXT = {"type": "string", "enum": ["true", "false"], "default": "true",
                "description": "`false`: wait for POST /v1/attachments/{id}/promote"}
MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/RegisterRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "profile": {"type": "string"},
                        "record_type": {"type": "string", "maxLength": MAX_RECORD_TYPE},
                        "record_id": {"type": "string", "maxLength": MAX_RECORD_ID},
                        "record_name": {"type": "string", "maxLength": MAX_RECORD_NAME},
                        "promote": PROMOTE_TEXT,
                        "metadata": {"$ref": "#/components/schemas/ClientMetadata"},
                    },
                    # the record slot's parts may come before or after the file part;
                    # app/openapi.py adds that it is all three parts or none
                },
                # metadata is a JSON object in a part of its own
                "encoding": {"file": {"contentType": "application/octet-stream"},
                             "metadata": {"contentType": "application/json"}},
            }
        },
    }
}
RAW_BODY = {
    "requestBody": {
        # the body is the file, and a file may be empty: no body is a file of 0 bytes
        "required": False,
        "description": "The file; an empty body is an empty file.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def upload_fingerprint(mode: str, options: UploadOptions, size: int, sha256: str) -> str:
    """What makes two uploads "the same request" (API.md): the endpoint, profile, filename,
    record slot and content."""
    slot = options.record
    return fingerprint(mode, options.profile, options.filename,
                       (slot.type, slot.id, slot.name) if slot else None, size, sha256)


def _created(intake: Intake, row: Any) -> JSONResponse:
    body = present(row, intake.links)
    return JSONResponse(body, status_code=201, headers={"Location": f"/v1/attachments/{row['id']}"})


@router.post(
    "/attachments",
    status_code=201,
    response_model=AttachmentOut,
    responses=UPLOAD_ERRORS,
    openapi_extra=MULTIPART_BODY,
    summary="Upload a file (multipart/form-data, streamed), or register a presigned upload",
)
async def upload_multipart(
    intake: IntakeDep,
    presigned: PresignedDep,
    idem: IdempotencyDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
    app_id: UUID = Depends(requires("upload", tokens=True, counted=True)),
) -> Response:
    content_type = request.headers.get("content-type", "")
    token = principal_of(request).token
    if content_type.startswith("application/json"):
        if token is not None:
            raise InsufficientScope("an upload token uploads files; registering a presigned"
                                    " upload needs an API key", scope="upload")
        return await _register_presigned(request, app_id, presigned, idem, idempotency_key)
    if not content_type.startswith("multipart/"):
        raise UnsupportedMediaType("send the file as multipart/form-data (part 'file'), or"
                                   " JSON {\"cached_key\"} after a presigned upload")

    async def run() -> tuple[Response, str]:
        async with admitted(request, declared_length(request)) as reservation:
            with track_upload("multipart") as accepted:
                row, options = await _upload_multipart(request, content_type, app_id, intake,
                                                       token, reservation)
                accepted.append(row["size"])
        return (_created(intake, row),
                upload_fingerprint("multipart", options, row["size"], row["sha256"]))

    async def repeat() -> str:
        return await _multipart_fingerprint(request, content_type,
                                            intake.settings.max_upload_size)

    return await idempotent(idem, app_id, idempotency_key, "POST /v1/attachments multipart",
                            None, run, repeat)


async def _multipart_fingerprint(request: Request, content_type: str, limit: int) -> str:
    """A repeated multipart upload's fingerprint: its fields and its file's size and sha256,
    the bytes read and dropped."""
    fields: dict[str, str] = {}
    files = 0
    size, sha = 0, hashlib.sha256()
    async for event in iter_multipart(request.stream(), boundary_of(content_type)):
        if isinstance(event, Field):
            fields[event.name] = event.value
        elif isinstance(event, FileStart):
            files += 1
            fields.setdefault("filename", event.filename or "")
        elif isinstance(event, FileData):
            size += len(event.data)
            sha.update(event.data)
            if size > limit:
                raise UploadTooLarge(f"the file is over the limit of {limit} bytes")
    if files != 1:
        raise InvalidInput("send exactly one part 'file'", field="file")
    return upload_fingerprint("multipart", parse_options(fields), size, sha.hexdigest())


def declared_length(request: Request) -> int | None:
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


@contextlib.asynccontextmanager
async def admitted(request: Request, size: int | None, *,
                   quota: bool = True) -> AsyncIterator[UUID | None]:
    """What a new upload takes before its first byte, and gives back when it is refused:
    with an upload token, one of its uses (401 when none is left); for an app with a quota,
    ``size`` bytes of it (403 quota-exceeded; yields the reservation: the attachment's id,
    which the INSERT recording it drops)."""
    principal = principal_of(request)
    token = principal.token
    tokens: UploadTokens = service_of(request, "upload_tokens")
    quotas: Quotas = service_of(request, "quotas")
    if token is not None:
        await tokens.take_use(token)
    reservation = None
    try:
        if quota and principal.quota_bytes is not None:
            reservation = await quotas.reserve(principal.app_id, size)
        yield reservation
    except BaseException:
        await quotas.release(reservation)
        if token is not None:
            await asyncio.shield(tokens.give_back(token))
        raise


async def _upload_multipart(request: Request, content_type: str, app_id: UUID,
                            intake: Intake, token: UploadToken | None = None,
                            reservation: UUID | None = None) -> tuple[Any, UploadOptions]:
    events = iter_multipart(request.stream(), boundary_of(content_type))
    fields: dict[str, str] = {}
    staged = None
    try:
        async for event in events:
            if isinstance(event, Field):
                fields[event.name] = event.value
            elif isinstance(event, FileStart):
                if event.name != "file":
                    raise InvalidInput(f"unexpected file part {event.name!r}; send it as 'file'")
                if staged is not None:
                    raise InvalidInput("only one 'file' part per upload")
                fields.setdefault("filename", event.filename or "")
                # fields before the file (and its filename) are validated now, so a bad one
                # costs no bytes; the slot's parts each alone, as the others may follow
                check_early_options(fields)
                profile, max_size = fields.get("profile"), None
                if token is not None:  # what the token fixes is refused before any byte
                    token.fix(parse_options({k: v for k, v in fields.items()
                                             if k not in RECORD_LIMITS}))
                    profile, max_size = token.profile, token.max_size
                staged = await intake.stage(
                    app_id, profile, file_bytes(events), max_size, att_id=reservation)
        if staged is None:
            raise InvalidInput("the part 'file' is missing", field="file")
        options = parse_options(fields)
        if token is not None:
            options = token.fix(options)
    except BaseException:
        if staged is not None:
            await intake.discard(staged)
        raise
    return await intake.record(staged, options), options


async def _register_presigned(request: Request, app_id: UUID, presigned: PresignedUploads,
                              idem: Any, idempotency_key: str | None) -> Response:
    raw = await _capped_body(request, MAX_REGISTER_BODY)
    # only metadata may nest (the body is one level more); checked before the parser sees it
    if json_nests_deeper(raw.decode("utf-8", "replace"), MAX_METADATA_DEPTH + 1):
        raise InvalidInput(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels",
                           field="metadata")
    try:
        body = RegisterRequest.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    options = make_options(
        profile=body.profile, filename=body.filename, record_type=body.record_type,
        record_id=body.record_id, record_name=body.record_name, promote=body.promote,
        client_metadata=body.metadata,
    )
    made = fingerprint("register", body.model_dump(mode="json"))

    async def run() -> tuple[Response, str]:
        with track_upload("presigned") as accepted:
            row = await presigned.register(app_id, body.cached_key, options)
            accepted.append(row["size"])
        return _created(presigned.intake, row), made

    return await idempotent(idem, app_id, idempotency_key, "POST /v1/attachments json", made,
                            run)


async def _capped_body(request: Request, limit: int) -> bytes:
    """The whole request body, refused (413) as soon as it is over ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise UploadTooLarge(f"the JSON body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise UploadTooLarge(f"the JSON body is over {limit} bytes")
    return bytes(body)


def _limited(limit: int, description: str | None = None) -> Any:
    """An upload option in the query: its limit is documented here and enforced, for every
    upload mode alike, by app/uploads/options.py."""
    return Query(None, description=description, json_schema_extra={"maxLength": limit})


@router.post(
    "/attachments/raw",
    status_code=201,
    response_model=AttachmentOut,
    responses=UPLOAD_ERRORS,
    openapi_extra=RAW_BODY,
    summary="Upload a file as the raw request body (streamed)",
    description="`record_type`, `record_id` and `record_name`: all three or none (422).",
)
async def upload_raw(
    intake: IntakeDep,
    idem: IdempotencyDep,
    request: Request,
    filename: str | None = Query(None),
    profile: str | None = Query(None),
    record_type: str | None = _limited(MAX_RECORD_TYPE),
    record_id: str | None = _limited(MAX_RECORD_ID),
    record_name: str | None = _limited(MAX_RECORD_NAME),
    promote: str | None = Query(None, description=PROMOTE_TEXT["description"],
                                json_schema_extra={"enum": PROMOTE_TEXT["enum"]}),
    # JSON text; app/openapi.py documents it as the ClientMetadata it must be
    metadata: str | None = Query(None),
    idempotency_key: IdempotencyKey = None,
    app_id: UUID = Depends(requires("upload", tokens=True, counted=True)),
) -> Response:
    options = parse_options({
        "filename": filename, "profile": profile, "record_type": record_type,
        "record_id": record_id, "record_name": record_name, "promote": promote,
        "metadata": metadata,
    })
    token = principal_of(request).token
    if token is not None:
        options = token.fix(options)
    # an unknown profile, or a declared length over the limit, is refused before the body
    limit = intake.profiles.get(options.profile).size_limit(intake.settings.max_upload_size)
    if token is not None:
        limit = token.size_limit(limit)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) > limit:
            raise UploadTooLarge(f"Content-Length {length} is over the limit of {limit} bytes")

    async def run() -> tuple[Response, str]:
        async with admitted(request, declared_length(request)) as reservation:
            with track_upload("raw") as accepted:
                row = await intake.upload(app_id, request.stream(), options,
                                          token.max_size if token is not None else None,
                                          att_id=reservation)
                accepted.append(row["size"])
        return _created(intake, row), upload_fingerprint("raw", options, row["size"],
                                                         row["sha256"])

    async def repeat() -> str:
        size, sha256 = await digest(_capped(request.stream(), limit))
        return upload_fingerprint("raw", options, size, sha256)

    return await idempotent(idem, app_id, idempotency_key, "POST /v1/attachments/raw", None,
                            run, repeat)


async def _capped(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(f"the body is over the limit of {limit} bytes")
        yield chunk
