"""HTTP adapter for upload tokens: POST /v1/upload-tokens (with an API key of scope upload)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api_common import AUTH_ERRORS, PROBLEM, timestamp
from app.deps import principal_of, provided, requires
from app.uploads.options import MAX_RECORD_ID, MAX_RECORD_NAME, MAX_RECORD_TYPE
from app.uploads.tokens import DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN, MAX_USES, UploadTokens

router = APIRouter(prefix="/v1", tags=["upload tokens"])

UploadTokensDep = Annotated[UploadTokens, Depends(provided("upload_tokens"))]


class UploadTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(None, description="the profile every upload with the token"
                                " uses; left out: `default`")
    record_type: str | None = Field(None, max_length=MAX_RECORD_TYPE)
    record_id: str | None = Field(None, max_length=MAX_RECORD_ID)
    record_name: str | None = Field(None, max_length=MAX_RECORD_NAME)
    max_size: int | None = Field(None, ge=0, le=2**53,
                                 description="bytes; the profile's limit applies as well")
    uses: int = Field(1, ge=1, le=MAX_USES, description="how many uploads the token makes")
    expires_in: int = Field(DEFAULT_EXPIRES_IN, ge=1, le=MAX_EXPIRES_IN,
                            description="seconds")
    metadata: dict[str, Any] | None = Field(None, description="the client metadata of every"
                                            " upload made with the token")


class UploadTokenOut(BaseModel):
    token: str = Field(description="`sut_…`: a Bearer credential for the upload endpoints"
                       " and for reading what it uploaded")
    expires_at: str


@router.post(
    "/upload-tokens",
    status_code=201,
    response_model=UploadTokenOut,
    responses={**AUTH_ERRORS,
               403: {"description": "The API key lacks the scope `upload`", **PROBLEM}},
    summary="Mint an upload token for a browser",
    description="A short-lived credential for one upload (or `uses` uploads) that a back-end"
    " hands to a front-end, which then never holds an API key. It is accepted by `POST"
    " /v1/attachments` (multipart), `POST /v1/attachments/raw`, `POST /v1/tus/` and that"
    " upload's `PATCH`/`HEAD`, and by `GET /v1/attachments/{id}` for what it uploaded. It fixes"
    " the profile, the record slot (none if not given), the metadata and the largest size: an"
    " upload that asks for another of these is refused (422). Expired, used up, or its API key"
    " revoked: 401.",
)
async def create_upload_token(tokens: UploadTokensDep, body: UploadTokenRequest,
                              request: Request,
                              app_id: UUID = Depends(requires("upload"))) -> JSONResponse:
    token, expires_at = await tokens.mint(
        app_id, principal_of(request).key_id, profile=body.profile,
        record_type=body.record_type, record_id=body.record_id, record_name=body.record_name,
        metadata=body.metadata, max_size=body.max_size, uses=body.uses,
        expires_in=body.expires_in)
    return JSONResponse({"token": token, "expires_at": timestamp(expires_at)}, status_code=201,
                        headers={"Cache-Control": "no-store"})
