"""HTTP adapter for direct-to-S3 uploads."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.api_common import AUTH_ERRORS, PROBLEM
from app.deps import principal_of, provided, requires
from app.idempotency.http import IdempotencyDep, IdempotencyKey, idempotent
from app.idempotency.http import responses as with_idempotency
from app.idempotency.service import fingerprint
from app.uploads.options import (
    MAX_FILENAME,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_RECORD_ID,
    MAX_RECORD_NAME,
    MAX_RECORD_TYPE,
)
from app.uploads.presigned import PresignedUploads
from app.uploads.quotas import Quotas

router = APIRouter(prefix="/v1", tags=["uploads"])

PresignedDep = Annotated[PresignedUploads, Depends(provided("presigned"))]
QuotasDep = Annotated[Quotas, Depends(provided("quotas"))]


def _limited(limit: int) -> Any:
    """An option whose limit is enforced, for every upload mode alike, by
    app/uploads/options.py (422 naming the field); the schema only says so."""
    return Field(None, json_schema_extra={"maxLength": limit})


# strict: what the schema calls an integer or a boolean is one ("5" and 5.0 are refused,
# 422, as the document says, rather than coerced)
def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema has it: 670.0 is one (strict mode alone would refuse it),
    "670" and true are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class PresignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    filename: str | None = Field(None, max_length=MAX_FILENAME)
    size: Annotated[int, BeforeValidator(_json_integer)] = Field(
        ge=0, description="bytes the client will upload")
    profile: str | None = None


class PresignOut(BaseModel):
    key: str = Field(description="pass it as `cached_key` to POST /v1/attachments afterwards")
    method: str
    url: str
    fields: dict[str, str]
    headers: dict[str, str]
    expires_at: datetime


class RegisterRequest(BaseModel):
    """Body of POST /v1/attachments (application/json) after a presigned upload."""

    model_config = ConfigDict(extra="forbid", strict=True)
    cached_key: str = Field(description="the `key` POST /v1/presigned-uploads answered")
    filename: str | None = Field(None, max_length=MAX_FILENAME)
    profile: str | None = None
    record_type: str | None = _limited(MAX_RECORD_TYPE)
    record_id: str | None = _limited(MAX_RECORD_ID)
    record_name: str | None = _limited(MAX_RECORD_NAME)
    promote: bool = True
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=f"a JSON object: at most {MAX_METADATA_BYTES} bytes as compact JSON, nested"
                    f" at most {MAX_METADATA_DEPTH} levels deep (the object itself is level 1)")


@router.post(
    "/presigned-uploads",
    status_code=201,
    response_model=PresignOut,
    responses=with_idempotency({
        **AUTH_ERRORS,
        409: {"description": "The cache is not on S3", **PROBLEM},
        413: {"description": "Larger than the profile allows", **PROBLEM}}),
    summary="A POST policy for uploading straight to the S3 cache",
)
async def create_presigned_upload(presigned: PresignedDep, idem: IdempotencyDep,
                                  body: PresignRequest, request: Request, quotas: QuotasDep,
                                  idempotency_key: IdempotencyKey = None,
                                  app_id: UUID = Depends(requires("upload"))) -> Response:
    made = fingerprint("presign", body.model_dump(mode="json"))

    async def run() -> tuple[Response, str]:
        if principal_of(request).quota_bytes is not None:  # checked again when registered
            await quotas.check(app_id, body.size)
        out = await presigned.create(app_id, filename=body.filename, size=body.size,
                                     profile=body.profile)
        return JSONResponse(jsonable_encoder(PresignOut(**out)), status_code=201), made

    return await idempotent(idem, app_id, idempotency_key, "POST /v1/presigned-uploads", made,
                            run)
