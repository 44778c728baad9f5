"""GET /v1/attachments/{id}/events: an attachment's timeline for API clients — the same one
the operator's dashboard shows, without the bodies sent to webhook receivers."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api_common import not_found_response, path_id
from app.attachments import timeline
from app.attachments.routes import AttachmentsDep
from app.deps import requires
from app.errors import AttachmentNotFound

router = APIRouter(prefix="/v1", tags=["attachments"])


class TimelineEntryOut(BaseModel):
    at: datetime
    kind: str = Field(description=(
        "uploaded | promotion.requested | stored | failed | deleted | files.removed |"
        " cached_copy.removed | event | webhook.attempt | webhook.scheduled | promotion.started"
        " | promotion.aborted | reprocess.requested | reprocessed | reprocess.failed |"
        " replaced | operator.promote | operator.reprocess | operator.delete"))
    detail: dict[str, Any]


class TimelineOut(BaseModel):
    items: list[TimelineEntryOut] = Field(description="oldest first")


@router.get(
    "/attachments/{attachment_id}/events",
    response_model=TimelineOut,
    responses=not_found_response("attachment"),
    summary="Everything that happened to an attachment, oldest first",
    description=(
        "The lifecycle (uploaded, promotion requested, stored/failed/deleted, files removed),"
        " each webhook event emitted and each delivery attempt with its outcome, and the steps"
        " of the worker and of operators. Not paginated: an attachment's history is short."
    ),
)
async def attachment_events(
    attachments: AttachmentsDep,
    attachment_id: str,
    app_id: UUID = Depends(requires("read")),
) -> JSONResponse:
    entries = await timeline.for_client(attachments, app_id,
                                        path_id(attachment_id, AttachmentNotFound))
    return JSONResponse({"items": [e.as_json() for e in entries]})
