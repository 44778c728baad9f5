"""Domain errors, each with the HTTP status and problem type (RFC 9457) it answers as;
app/problems.py is the one place they become HTTP answers.

    StowageError                      500 internal
    ├── Unauthorized                  401 unauthorized
    ├── NotFound                      404 not-found
    │   ├── AttachmentNotFound        404 attachment-not-found
    │   ├── DerivativeNotFound        404 derivative-not-found
    │   ├── WebhookEndpointNotFound   404 webhook-endpoint-not-found
    │   ├── EventNotFound             404 event-not-found
    │   └── AppNotFound               404 app-not-found
    ├── Forbidden                     403 forbidden (bad or expired signed URL)
    ├── InvalidInput                  422 invalid-input
    │   ├── UnknownProfile            422 unknown-profile
    │   └── InvalidRecordSlot         422 invalid-record-slot
    ├── MalformedRequest              400 malformed-request (e.g. broken multipart)
    ├── UploadTooLarge                413 upload-too-large
    ├── UnsupportedMediaType          415 unsupported-media-type
    ├── InvalidState                  409 invalid-state
    ├── EventGone                     410 event-gone (an event feed cursor past retention)
    ├── IdempotencyConflict           409 idempotency-conflict (the first is still running)
    ├── IdempotencyMismatch           422 idempotency-key-reused (another request's key)
    ├── RangeNotSatisfiable           416 range-not-satisfiable
    ├── ServiceUnavailable            503 service-unavailable
    ├── InsufficientStorage           507 insufficient-storage (a storage is full)
    ├── StorageMisconfigured          500 storage-misconfigured (permissions, read-only)
    └── FileMissing                   500 file-missing (a file the database has, lost: fsck)
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://stowage.dev/problems/"


class StowageError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class Unauthorized(StowageError):
    status, slug, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(StowageError):
    status, slug, title = 403, "forbidden", "Invalid or expired signature"


class NotFound(StowageError):
    status, slug, title = 404, "not-found", "Not found"


class AttachmentNotFound(NotFound):
    slug, title = "attachment-not-found", "Attachment not found"


class DerivativeNotFound(NotFound):
    slug, title = "derivative-not-found", "Derivative not found"


class WebhookEndpointNotFound(NotFound):
    slug, title = "webhook-endpoint-not-found", "Webhook endpoint not found"


class EventNotFound(NotFound):
    slug, title = "event-not-found", "Event not found"


class EventGone(StowageError):
    status, slug, title = 410, "event-gone", "Event no longer in the feed"


class IdempotencyConflict(StowageError):
    status, slug, title = (409, "idempotency-conflict",
                           "A request with this Idempotency-Key is still running")


class IdempotencyMismatch(StowageError):
    status, slug, title = (422, "idempotency-key-reused",
                           "This Idempotency-Key was used for a different request")


class AppNotFound(NotFound):
    slug, title = "app-not-found", "App not found"


class InvalidInput(StowageError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class UnknownProfile(InvalidInput):
    slug, title = "unknown-profile", "Unknown profile"


class InvalidRecordSlot(InvalidInput):
    slug, title = "invalid-record-slot", "Invalid record slot"


class MalformedRequest(StowageError):
    status, slug, title = 400, "malformed-request", "Malformed request"


class UploadTooLarge(StowageError):
    status, slug, title = 413, "upload-too-large", "Upload too large"


class UnsupportedMediaType(StowageError):
    status, slug, title = 415, "unsupported-media-type", "File type not allowed"


class InvalidState(StowageError):
    status, slug, title = 409, "invalid-state", "Not possible in the current state"


class RangeNotSatisfiable(StowageError):
    status, slug, title = 416, "range-not-satisfiable", "Range not satisfiable"


class ServiceUnavailable(StowageError):
    status, slug, title = 503, "service-unavailable", "Service temporarily unavailable"


class RendersBusy(ServiceUnavailable):
    """Every image render slot is taken, and as many wait: come back shortly."""

    slug, title = "renders-busy", "Too many image renders at once"


class InsufficientStorage(StowageError):
    """A storage has no room (disk full, quota): not the request's fault, and retrying at once
    does not help; an operator has to make room."""

    status, slug, title = 507, "insufficient-storage", "Insufficient storage"


class StorageMisconfigured(StowageError):
    """A storage refuses the operation (permissions, read-only filesystem): a configuration
    error for an operator (`stowage doctor` names the path), never worth a quick retry."""

    status, slug, title = 500, "storage-misconfigured", "Storage misconfigured"


class ScannerUnavailable(StowageError):
    """The malware scanner (clamd) cannot answer: not the file's fault. A file that must be
    scanned waits (it is never stored unscanned) and is tried again."""

    status, slug, title = 503, "scanner-unavailable", "Scanner unavailable"


def problem_slugs() -> set[str]:
    """Every problem type, including those defined next to their domain (tus): derived from
    the class tree, so a new error cannot be left out of the OpenAPI document."""
    slugs, todo = set(), [StowageError]
    while todo:
        cls = todo.pop()
        slugs.add(cls.slug)
        todo.extend(cls.__subclasses__())
    return slugs



class FileMissing(StowageError):
    """A file Postgres says is there is not in its storage, and did not move (a promotion or
    a reprocess would have): lost, a case for `stowage fsck`. Found before a download sends
    its status line, so it is this answer, never a 200 cut short."""

    status = 500
    slug = "file-missing"
    title = "The attachment's file is missing from storage"
