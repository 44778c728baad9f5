"""Request and response bodies of the webhook endpoints API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.api_common import timestamp

EventType = Literal["attachment.cached", "attachment.stored", "attachment.updated",
                    "attachment.failed", "attachment.deleted"]




def _ipv6() -> str:
    """RFC 3986's IPv6address, as a regular expression without lookarounds (the schema's
    readers, Python's re and pydantic's Rust regex, all read it alike)."""
    h16 = "[0-9A-Fa-f]{1,4}"
    octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    ls32 = f"(?:{h16}:{h16}|{octet}(?:\\.{octet}){{3}})"
    forms = [f"(?:{h16}:){{6}}{ls32}", f"::(?:{h16}:){{5}}{ls32}"]
    for before, after in ((0, 4), (1, 3), (2, 2), (3, 1), (4, 0)):
        head = f"(?:(?:{h16}:){{0,{before}}}{h16})?" if before else f"(?:{h16})?"
        forms.append(f"{head}::(?:{h16}:){{{after}}}{ls32}")
    forms.append(f"(?:(?:{h16}:){{0,5}}{h16})?::{h16}")
    forms.append(f"(?:(?:{h16}:){{0,6}}{h16})?::")
    return "(?:" + "|".join(forms) + ")"


# The one rule for a webhook URL, the schema's pattern and the server's check alike
# (app/webhooks/service.validate_url): http(s), an optional user:password, a DNS name of
# letters, digits and hyphens (IDNs in their xn-- form), an IPv4 address or a bracketed IPv6
# address, a port of at most 65535, then visible ASCII only. Whatever it admits, Postgres
# can store and httpx can send to; an address deliveries may not reach is refused by the
# server besides (422), as the settings say.
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_USERINFO = "(?:[A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{2})*@"
URL_PATTERN = (f"^https?://(?:{_USERINFO})?(?:{_LABEL}(?:\\.{_LABEL})*\\.?|\\[{_ipv6()}\\])"
               f"(?::{_PORT})?(?:[/?#][\\x21-\\x7e]*)?$")
MAX_URL_LENGTH = 2048
URL_DOC = ("an absolute http:// or https:// URL: a DNS name (IDNs as xn--), an IPv4 address or"
           " a bracketed IPv6 address, and visible ASCII only; an address that is not globally"
           " routable is refused (422) unless STOWAGE_WEBHOOK_ALLOW_PRIVATE is set")
# Postgres text cannot hold a NUL
DESCRIPTION_PATTERN = "^[^\\x00]*$"




def _url(default: Any = ...) -> Any:
    """The URL field: the schema states the rule, app/webhooks/service.validate_url enforces
    it with a message a person can read (pydantic would quote the whole pattern)."""
    return Field(default, description=URL_DOC,
                 json_schema_extra={"pattern": URL_PATTERN, "maxLength": MAX_URL_LENGTH})


# strict: the schema says boolean, so "true" or 1 is refused as the document says (422),
# not coerced
class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    url: str = _url()
    # an empty list would subscribe to nothing: leave it out for every event instead
    events: list[EventType] | None = Field(None, min_length=1)
    description: str | None = Field(None, max_length=500, pattern=DESCRIPTION_PATTERN)


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    url: str | None = _url(None)
    events: list[EventType] | None = Field(None, min_length=1)
    description: str | None = Field(None, max_length=500, pattern=DESCRIPTION_PATTERN)
    enabled: bool | None = None
    rotate_secret: bool = Field(False, description="issue a new secret; the one it replaces"
                                " keeps signing beside it (a second signature) for"
                                " STOWAGE_WEBHOOK_SECRET_OVERLAP seconds, until"
                                " previous_secret_expires_at")


class EndpointOut(BaseModel):
    id: UUID
    url: str
    events: list[str] | None
    description: str | None
    secret: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    last_success_at: datetime | None
    previous_secret_expires_at: datetime | None = Field(
        None, description="after a rotation: until when the replaced secret signs too")
    created_at: datetime
    updated_at: datetime


class EndpointList(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    id: UUID
    event_id: UUID
    event_type: str
    attachment_id: UUID | None
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


def present_endpoint(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "url": row["url"],
        "events": row["events"],
        "description": row["description"],
        "secret": row["secret"],
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "failing_since": timestamp(row["failing_since"]),
        "last_success_at": timestamp(row["last_success_at"]),
        "previous_secret_expires_at": timestamp(row["previous_secret_expires_at"]),
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
    }


def present_delivery(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "event_id": str(row["event_id"]),
        "event_type": row["event_type"],
        "attachment_id": str(row["attachment_id"]) if row["attachment_id"] else None,
        "status": row["status"],
        "attempts": row["attempts"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        # a pending delivery's next attempt; none once it is final
        "next_attempt_at": timestamp(row["next_attempt_at"]) if row["status"] == "pending"
        else None,
        "delivered_at": timestamp(row["delivered_at"]),
        "created_at": timestamp(row["created_at"]),
    }
