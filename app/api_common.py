"""Pieces every router shares: opaque cursors, path ids, OpenAPI problem responses."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import Query

from app.errors import InvalidInput, NotFound
from app.ids import parse_uuid

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {
    "schema": {"$ref": "#/components/schemas/Problem"}}}}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request body", **PROBLEM},
    401: {"description": "Missing or invalid API key", **PROBLEM},
    422: {"description": "Invalid input", **PROBLEM},
    503: {"description": "Postgres unreachable; retry after Retry-After", **PROBLEM},
}


def not_found_response(what: str) -> dict[int | str, dict[str, Any]]:
    return {**AUTH_ERRORS, 404: {"description": f"No such {what} for this app", **PROBLEM}}


# A cursor is the id of a page's last item, URL-safe base64 without padding: always 22
# characters. The schema states that exactly, so a cursor that could never have been handed
# out is refused by the schema as by the server (422); any 22 such characters decode to an id,
# which is only a position in the list (the next page starts below it).
CURSOR_PATTERN = "^[A-Za-z0-9_-]{22}$"


def cursor_query() -> Any:
    return Query(None, pattern=CURSOR_PATTERN,
                 description="`next_cursor` of the previous page (22 characters); leave it out"
                 " for the first page")


def encode_cursor(last_id: UUID | None) -> str | None:
    return base64.urlsafe_b64encode(last_id.bytes).decode().rstrip("=") if last_id else None


def decode_cursor(cursor: str | None) -> UUID | None:
    if not cursor:
        return None
    if len(cursor) != 22:  # what encode_cursor makes; the route's pattern says so as well
        raise InvalidInput("cursor is not one this API handed out", field="cursor")
    try:
        return UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise InvalidInput("cursor is not one this API handed out", field="cursor") from None


def path_id(value: str, error: type[NotFound]) -> UUID:
    """A UUID from the path; anything else is simply not found (404, not 422)."""
    parsed = parse_uuid(value)
    if parsed is None:
        raise error(f"no such id {value}")
    return parsed


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, the same in every response and event."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
