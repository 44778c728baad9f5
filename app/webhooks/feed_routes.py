"""GET /v1/events: the event feed (app.webhooks.feed)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app.api_common import PROBLEM, not_found_response
from app.deps import SettingsDep, provided, requires
from app.errors import InvalidInput
from app.webhooks.feed import EventFeed, parse_public_id
from app.webhooks.outbox import EVENT_TYPES

router = APIRouter(prefix="/v1", tags=["events"])

FeedDep = Annotated[EventFeed, Depends(provided("event_feed"))]

# comma-separated event types, each one of EVENT_TYPES
TYPES_PATTERN = "^(" + "|".join(t.replace(".", "\\.") for t in EVENT_TYPES) + ")(,(" + "|".join(
    t.replace(".", "\\.") for t in EVENT_TYPES) + "))*$"


ID_PATTERN = "^msg_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class EventOut(BaseModel):
    id: str = Field(pattern=ID_PATTERN,
                    description="the event's id: the `webhook-id` of each of its deliveries")
    type: Literal["attachment.cached", "attachment.stored", "attachment.updated",
                  "attachment.failed", "attachment.deleted"]
    timestamp: str
    data: dict[str, Any] = Field(description="the attachment object, as the webhook carries it")


class EventPage(BaseModel):
    items: list[EventOut] = Field(description="oldest first, in commit order")
    next_cursor: str | None = Field(
        pattern=ID_PATTERN,
        description="the id of the last item: pass it as `after` for the next page; null when"
        " the page is empty (keep the `after` you sent)")


@router.get(
    "/events",
    response_model=EventPage,
    responses={**not_found_response("event (the `after` given)"),
               410: {"description": "`after` is older than the feed keeps"
                     " (STOWAGE_EVENT_RETENTION): read from the start", **PROBLEM}},
    summary="Every event of the app, exactly once, in commit order",
    description=(
        "The events webhooks carry (the same bodies, plus `id`, the deliveries' `webhook-id`),"
        " oldest first. Start without `after`, then pass the last id you have seen: you get"
        " every event of your app exactly once, in commit order, also while many transactions"
        " commit at once. `wait` long-polls until at least one event exists after `after`."
    ),
)
async def events_feed(
    feed: FeedDep,
    settings: SettingsDep,
    after: str | None = Query(None, pattern=ID_PATTERN,
                              description="the id of the last event you have seen"),
    types: str | None = Query(None, pattern=TYPES_PATTERN, max_length=1000,
                              description="comma-separated event types to return"),
    limit: int = Query(100, ge=1, le=1000),
    wait: float = Query(0, ge=0, le=60, description="long-poll: answer as soon as an event"
                        " exists after `after`, or after this many seconds with none"),
    app_id: UUID = Depends(requires("read")),
) -> Response:
    wanted = sorted(set(types.split(","))) if types else None
    if wanted and not set(wanted) <= set(EVENT_TYPES):  # the pattern says so too
        raise InvalidInput(f"unknown event type in {types!r}", field="types")
    after_id = parse_public_id(after) if after else None
    if after and after_id is None:  # the pattern says so too
        raise InvalidInput("after is not an event id", field="after")
    page = await feed.read(app_id, after=after_id, types=wanted, limit=limit,
                           wait=min(wait, settings.long_poll_max))
    return Response(page.json(), media_type="application/json")
