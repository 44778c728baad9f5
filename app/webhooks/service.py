"""Webhook endpoints, and delivering the outbox: attempts, backoff, disabling, redelivery."""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg

from app.errors import InvalidInput, InvalidState, NotFound, WebhookEndpointNotFound
from app.failpoints import failpoint
from app.ids import uuid7
from app.observability import metrics
from app.pagination import Page, page_of
from app.text import check_text
from app.webhooks import delivery as http_delivery
from app.webhooks import repository as repo
from app.webhooks.endpoint_slots import endpoint_slot
from app.webhooks.feed import public_id
from app.webhooks.outbox import EVENT_TYPES, TEST_EVENT, emit
from app.webhooks.schedule import attempt_lease, next_delay
from app.webhooks.schemas import MAX_URL_LENGTH, URL_DOC, URL_PATTERN

if TYPE_CHECKING:
    import httpx
    from arq.connections import ArqRedis

    from app.config import Settings
    from app.jobs import JobQueue

log = logging.getLogger(__name__)



def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


_URL = re.compile(URL_PATTERN)


def validate_url(url: str, allow_private: bool) -> str:
    """The URL rule the OpenAPI document states (URL_PATTERN), then the addresses the
    settings forbid."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"url is longer than {MAX_URL_LENGTH} characters", field="url")
    if not _URL.match(url):
        raise InvalidInput(f"url is not a valid URL: it must be {URL_DOC}", field="url")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as e:  # e.g. a broken IPv6 literal
        raise InvalidInput(f"url is not a valid URL: {e}", field="url") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise InvalidInput("url must be an absolute http:// or https:// URL", field="url")
    try:
        literal = ipaddress.ip_address(hostname)
    except ValueError:
        literal = None  # a name: checked when resolved, at every delivery
    if literal is not None and not allow_private and http_delivery.is_forbidden_address(literal):
        raise InvalidInput("url points to an address that is not globally routable (private,"
                           " loopback, link-local, shared, multicast…); set"
                           " STOWAGE_WEBHOOK_ALLOW_PRIVATE=true to allow it", field="url")
    return url


def validate_events(events: list[str] | None) -> list[str] | None:
    if events is None:
        return None
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput(f"unknown event types {unknown}; known: {list(EVENT_TYPES)}",
                           field="events")
    if not events:
        raise InvalidInput("events must name at least one type, or be left out for all",
                           field="events")
    return sorted(set(events))


def validate_description(description: str | None) -> str | None:
    """What Postgres text can hold (app.text; the schema's pattern says no NUL)."""
    return check_text("description", description)


class Webhooks:
    """Webhook endpoints of the API, and the delivery of the outbox for the worker."""

    def __init__(self, *, pool: asyncpg.Pool, jobs: JobQueue, redis: ArqRedis,
                 http: httpx.AsyncClient, settings: Settings) -> None:
        self.pool = pool
        self.jobs = jobs
        self.redis = redis  # the endpoints' concurrency slots
        self.http = http
        self.settings = settings

    async def check_destination(self, url: str) -> None:
        """Refuse at registration a name that resolves to an address deliveries may not reach
        (it would only fail every attempt). A name that does not resolve now is accepted: DNS may
        not be set up yet, and deliveries retry."""
        if self.settings.webhook_allow_private:
            return
        parts = urlsplit(url)
        try:
            ipaddress.ip_address(parts.hostname or "")
            return  # a literal: validate_url judged it
        except ValueError:
            pass
        try:
            await http_delivery.resolve_public(
                parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80),
                False, self.settings.webhook_dns_timeout)
        except http_delivery.BlockedDestination as e:
            if e.permanent:
                raise InvalidInput(f"url: {e}", field="url") from None

    async def create_endpoint(self, app_id: UUID, url: str, events: list[str] | None,
                              description: str | None) -> asyncpg.Record:
        url = validate_url(url, self.settings.webhook_allow_private)
        await self.check_destination(url)
        async with self.pool.acquire() as conn:
            return await repo.insert_endpoint(conn, id=uuid7(), app_id=app_id, url=url,
                                              secret=new_secret(), events=validate_events(events),
                                              description=validate_description(description))

    async def get_endpoint(self, app_id: UUID, endpoint_id: UUID) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            row = await repo.get_endpoint(conn, app_id, endpoint_id)
        if row is None:
            raise WebhookEndpointNotFound(f"no webhook endpoint {endpoint_id}")
        return row

    async def list_endpoints(self, app_id: UUID, before: UUID | None, limit: int
                             ) -> Page:
        async with self.pool.acquire() as conn:
            return page_of(await repo.list_endpoints(conn, app_id, before, limit + 1), limit)

    async def update_endpoint(self, app_id: UUID, endpoint_id: UUID,
                              patch: dict[str, Any]) -> asyncpg.Record:
        """Apply a PATCH: url, events, description, enabled, rotate_secret."""
        changes: dict[str, Any] = {}
        if "url" in patch:
            changes["url"] = validate_url(patch["url"], self.settings.webhook_allow_private)
            await self.check_destination(changes["url"])
        if "events" in patch:
            changes["events"] = validate_events(patch["events"])
        if "description" in patch:
            changes["description"] = validate_description(patch["description"])
        if "enabled" in patch:
            changes["enabled"] = bool(patch["enabled"])
            if patch["enabled"]:  # a fresh start: the failure clock restarts too
                changes["disabled_reason"] = None
                changes["failing_since"] = None
        if patch.get("rotate_secret"):
            changes["secret"] = new_secret()
        if not changes:
            return await self.get_endpoint(app_id, endpoint_id)
        async with self.pool.acquire() as conn:
            row = await repo.update_endpoint(conn, app_id, endpoint_id, changes,
                                             secret_overlap_s=self.settings.webhook_secret_overlap)
        if row is None:
            raise WebhookEndpointNotFound(f"no webhook endpoint {endpoint_id}")
        return row

    async def delete_endpoint(self, app_id: UUID, endpoint_id: UUID) -> None:
        async with self.pool.acquire() as conn:
            if not await repo.delete_endpoint(conn, app_id, endpoint_id):
                raise WebhookEndpointNotFound(f"no webhook endpoint {endpoint_id}")

    async def list_deliveries(self, app_id: UUID, endpoint_id: UUID, status: str | None,
                              before: UUID | None, limit: int) -> Page:
        await self.get_endpoint(app_id, endpoint_id)
        async with self.pool.acquire() as conn:
            rows = await repo.list_deliveries(conn, endpoint_id, status, before, limit + 1)
        return page_of(rows, limit)

    async def retry_delivery(self, app_id: UUID, endpoint_id: UUID, delivery_id: UUID
                             ) -> asyncpg.Record:
        await self.get_endpoint(app_id, endpoint_id)
        async with self.pool.acquire() as conn:
            row = await repo.reset_delivery(conn, endpoint_id, delivery_id)
            if row is None:
                raise NotFound(f"no delivery {delivery_id} for endpoint {endpoint_id}")
            await self.jobs.deliver_webhook(row["id"], row["attempts"])
            return await repo.get_delivery(conn, endpoint_id, delivery_id)

    async def send_test(self, app_id: UUID, endpoint_id: UUID) -> asyncpg.Record:
        endpoint = await self.get_endpoint(app_id, endpoint_id)
        async with self.pool.acquire() as conn, conn.transaction():
            ids = await emit(conn, app_id, TEST_EVENT,
                             {"endpoint_id": str(endpoint_id), "message": "Hello from Stowage"},
                             only_endpoint=endpoint["id"])
        if not ids:  # a disabled endpoint gets nothing, not even a ping
            raise InvalidState(f"webhook endpoint {endpoint_id} is disabled")
        await self.dispatch(ids)
        async with self.pool.acquire() as conn:
            return await repo.get_delivery(conn, endpoint_id, ids[0])

    async def dispatch(self, delivery_ids: list[UUID]) -> None:
        """Enqueue the first attempt of fresh deliveries (after their transaction committed)."""
        for delivery_id in delivery_ids:
            await self.jobs.deliver_webhook(delivery_id, 0)

    async def deliver(self, delivery_id: UUID) -> str:
        """Make one attempt of a due delivery. Idempotent: not due or taken → "skipped"."""
        settings = self.settings
        lease = attempt_lease(settings.webhook_timeout)
        async with self.pool.acquire() as conn:
            endpoint_id = await repo.endpoint_of_delivery(conn, delivery_id)
        if endpoint_id is None:
            return "skipped"
        async with endpoint_slot(self.redis, endpoint_id,
                                 slots=settings.webhook_endpoint_concurrency, ttl=lease):
            return await self._attempt(delivery_id, lease)

    async def _attempt(self, delivery_id: UUID, lease: int) -> str:
        settings = self.settings
        async with self.pool.acquire() as conn:
            claimed = await repo.claim_delivery(conn, delivery_id, lease)
        if claimed is None:
            return "skipped"
        if not claimed["enabled"]:
            async with self.pool.acquire() as conn:
                await repo.finish_delivery(conn, delivery_id, status="failed", status_code=None,
                                           error="endpoint disabled", next_attempt_in_s=None)
            return "failed"
        await failpoint("deliver.before_send")
        result = await http_delivery.attempt(
            self.http, url=claimed["url"], secret=claimed["secret"],
            previous_secret=claimed["previous_secret"],
            msg_id=public_id(claimed["event_id"]), body=claimed["body"],
            allow_private=settings.webhook_allow_private, timeout_s=settings.webhook_timeout,
            dns_timeout_s=settings.webhook_dns_timeout,
        )
        metrics.WEBHOOK_SECONDS.observe(result.duration_ms / 1000)
        metrics.WEBHOOK_DELIVERIES.labels(
            "ok" if result.ok else str(result.status_code or "no_answer")).inc()
        async with self.pool.acquire() as conn, conn.transaction():
            await repo.insert_attempt(conn, delivery_id, result.status_code, result.error,
                                      result.duration_ms, result.response_body)
            if result.ok:
                await repo.finish_delivery(conn, delivery_id, status="delivered",
                                           status_code=result.status_code, error=None,
                                           next_attempt_in_s=None)
                await repo.record_success(conn, claimed["endpoint_id"])
                return "delivered"
            if result.status_code == 410:  # the receiver asks us to stop, for good
                await repo.disable_endpoint(conn, claimed["endpoint_id"],
                                            "the receiver answered 410 Gone")
                await repo.finish_delivery(conn, delivery_id, status="failed", status_code=410,
                                           error=result.error, next_attempt_in_s=None)
                return "failed"
            await repo.record_failure(conn, claimed["endpoint_id"], settings.webhook_disable_after)
            delay = None if result.permanent else next_delay(settings.retry_delays,
                                                             claimed["attempts"],
                                                             result.retry_after_s)
            await repo.finish_delivery(conn, delivery_id,
                                       status="pending" if delay is not None else "failed",
                                       status_code=result.status_code, error=result.error,
                                       next_attempt_in_s=delay)
        if delay is None:
            return "failed"
        await self.jobs.deliver_webhook(delivery_id, claimed["attempts"], defer_by=delay)
        return "retrying"

    async def sweep_due(self) -> list[UUID]:
        """Re-enqueue deliveries that are due but whose job Redis may have lost."""
        async with self.pool.acquire() as conn:
            due = await repo.due_deliveries(conn, grace_s=2)
        enqueued = []
        for row in due:
            if await self.jobs.deliver_webhook(row["id"], row["attempts"]):
                enqueued.append(row["id"])
        return enqueued
