"""An attachment's timeline: everything that happened to it, oldest first.

Pieced together from what is recorded anyway — the attachment's own timestamps, the events
outbox, the webhook deliveries and their attempts — plus the activity log for the steps
nothing else records (a promotion started or aborted, a reprocess, an operator's action).
Shared by the dashboard and GET /v1/attachments/{id}/events (timeline_routes.py); free of
FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from app import activity
from app.api_common import timestamp
from app.attachments import timeline_repository as repo

if TYPE_CHECKING:
    from app.attachments.service import Attachments

# Bounds on what one attachment's timeline reads: manual retries can grow the attempts.
MAX_EVENTS = 200
MAX_ATTEMPT_ROWS = 1000
# Enough of a receiver's answer to see what it complained about.
RESPONSE_SNIPPET = 500

# At one instant (created_at, promote_requested_at and the cached event share the upload's
# transaction time) the story reads cause before effect.
_RANK = {
    "uploaded": 0,
    "promotion.requested": 1,
    "stored": 2,
    "failed": 2,
    "deleted": 2,
    "event": 3,
    "webhook.attempt": 4,
    "webhook.scheduled": 5,
}


@dataclass
class Entry:
    at: datetime
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)
    # for people only (the dashboard shows it; the API leaves it out): the body sent
    body: Any = None
    seq: int = 0

    def sort_key(self) -> tuple[datetime, int, int]:
        return (self.at, _RANK.get(self.kind, 3), self.seq)

    def as_json(self) -> dict[str, Any]:
        return {"at": timestamp(self.at), "kind": self.kind, "detail": _jsonable(self.detail)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def build(att: Any, events: list[Any], attempts: list[Any], activities: list[Any]
          ) -> list[Entry]:
    """The timeline from rows already read: pure, so it is easy to reason about and test."""
    out: list[Entry] = []
    stored_event = next((e for e in events if e["type"] == "attachment.stored"), None)
    failed_event = next((e for e in events if e["type"] == "attachment.failed"), None)

    record = None
    if att["record_type"] is not None:
        record = {"type": att["record_type"], "id": att["record_id"], "name": att["record_name"]}
    out.append(Entry(att["created_at"], "uploaded", {
        "filename": att["filename"], "mime_type": att["mime_type"], "size": att["size"],
        "profile": att["profile"], "record": record,
    }))
    if att["promote_requested_at"] is not None:
        out.append(Entry(att["promote_requested_at"], "promotion.requested", {
            "with_upload": att["promote_requested_at"] == att["created_at"],
        }))
    if att["stored_at"] is not None:
        # the set made by the promotion itself; a later reprocess shows as its own entry
        if stored_event is not None:
            derivatives = stored_event["body"].get("data", {}).get("derivatives", {})
        else:
            derivatives = att["derivatives"] or {}
        out.append(Entry(att["stored_at"], "stored", {
            "derivatives": {name: {k: d.get(k) for k in ("mime_type", "size", "width",
                                                         "height")}
                            for name, d in derivatives.items()},
        }))
    if failed_event is not None or (att["state"] == "failed" and att["error"]):
        at = failed_event["created_at"] if failed_event is not None else att["updated_at"]
        error = (failed_event["body"].get("data", {}).get("error") if failed_event is not None
                 else att["error"])
        out.append(Entry(at, "failed", {"error": error}))
    replaced = next((a for a in activities if a["kind"] == "replaced"), None)
    if att["deleted_at"] is None:
        replaced = None
    if att["deleted_at"] is not None:
        error = att["error"] or {}
        detail: dict[str, Any] = {"reason": error.get("code")}
        if replaced is not None:  # said once, with the deletion it caused
            detail = {"reason": "replaced", **(replaced["detail"] or {})}
        out.append(Entry(att["deleted_at"], "deleted", detail))
    if att["purged_at"] is not None:
        out.append(Entry(att["purged_at"], "files.removed", {}))
    if att["cache_purged_at"] is not None:
        out.append(Entry(att["cache_purged_at"], "cached_copy.removed", {}))

    for e in events:
        out.append(Entry(e["created_at"], "event", {
            "event_id": e["id"], "type": e["type"], "deliveries": e["deliveries"],
        }, body=e["body"]))

    last_row = {a["delivery_id"]: i for i, a in enumerate(attempts)}
    for i, a in enumerate(attempts):
        common = {"delivery_id": a["delivery_id"], "event_id": a["event_id"],
                  "event_type": a["event_type"], "endpoint_id": a["endpoint_id"],
                  "url": a["url"], "delivery_status": a["status"]}
        if a["attempt_id"] is not None:
            code = a["status_code"]
            out.append(Entry(a["attempted_at"], "webhook.attempt", {
                **common, "attempt": a["attempt_no"], "status_code": code,
                "ok": code is not None and 200 <= code < 300,
                "error": a["error"], "duration_ms": a["duration_ms"],
                "response": a["response_body"],
            }))
        # a delivery still to be tried: when (once, after its last attempt)
        if a["status"] == "pending" and last_row[a["delivery_id"]] == i:
            out.append(Entry(a["next_attempt_at"], "webhook.scheduled", common))

    for act in activities:
        if act is replaced:
            continue
        out.append(Entry(act["at"], act["kind"], dict(act["detail"] or {})))

    for i, entry in enumerate(out):
        entry.seq = i
    out.sort(key=Entry.sort_key)
    return out


async def load(pool: asyncpg.Pool, att: asyncpg.Record) -> list[Entry]:
    """Read what the timeline of `att` (an attachments row) is made of, and build it."""
    async with pool.acquire() as conn:
        events = await repo.attachment_events(conn, att["id"], MAX_EVENTS)
        attempts = await repo.attachment_deliveries(conn, att["id"], RESPONSE_SNIPPET,
                                                    MAX_ATTEMPT_ROWS)
        activities = await activity.list_for(conn, att["id"])
    return build(att, events, attempts, activities)


async def for_client(attachments: Attachments, app_id: UUID, att_id: UUID) -> list[Entry]:
    """A client's view of its own attachment's timeline (another app's: not found)."""
    return await load(attachments.pool, await attachments.get(app_id, att_id))
