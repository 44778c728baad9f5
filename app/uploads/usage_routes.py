"""HTTP adapter for GET /v1/usage: what the app holds, against its quota and rate limit."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api_common import AUTH_ERRORS
from app.deps import requires, service_of
from app.uploads.quotas import usage_of

router = APIRouter(prefix="/v1", tags=["usage"])


class UsageOut(BaseModel):
    bytes: int = Field(description="bytes of the app's live files: originals, derivatives and"
                       " variants of attachments whose files are not removed yet")
    attachments: int = Field(description="attachments `cached` or `stored`")
    quota_bytes: int | None = Field(description="its storage quota; null: none")
    rate_limit: int | None = Field(description="uploads a minute it may start; null: none")


@router.get("/usage", response_model=UsageOut, responses=AUTH_ERRORS,
            summary="The app's usage, quota and rate limit")
async def get_usage(request: Request, app_id: UUID = Depends(requires("read"))
                    ) -> dict[str, Any]:
    return (await usage_of(service_of(request, "pool"), app_id)).as_json()
