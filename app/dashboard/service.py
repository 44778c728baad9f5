"""What the operator's dashboard shows and does, across every app. Free of FastAPI.

Actions call the same services the API calls (taking the app from the attachment's or the
endpoint's row), so an operator's promote, reprocess, delete, retry or re-enable behaves exactly
like a client's, events and jobs included; each is also written to the attachment's activity
log as the operator's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
import redis.exceptions
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms

from app import activity
from app.attachments import repository as attachments_repo
from app.attachments import timeline, work
from app.attachments.schemas import present
from app.auth import repository as auth_repo
from app.dashboard import repository as repo
from app.errors import AttachmentNotFound, WebhookEndpointNotFound
from app.pagination import Page, page_of

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from app.attachments.links import Links
    from app.attachments.service import Attachments
    from app.jobs import JobQueue
    from app.profiles import Profiles
    from app.webhooks.service import Webhooks

log = logging.getLogger(__name__)

LAG_WINDOW_S = 3600
CHART_HOURS = 24
FAILED_WINDOW_S = 24 * 3600
HEALTH_WINDOW = 100  # finished deliveries an endpoint's success rate is computed over
PAGE_SIZE = 50
RETRY_ALL_CAP = 1000
BODY_PREVIEW_CHARS = 4000
RESPONSE_PREVIEW_CHARS = 2000
IN_PROGRESS_SCAN_CAP = 10_000

STATES = attachments_repo.STATES
DELIVERY_STATUSES = ("pending", "delivered", "failed")


# --- overview --------------------------------------------------------------------------------

@dataclass
class AppRow:
    app_id: UUID
    name: str
    states: dict[str, int]
    total: int
    endpoints: int = 0
    disabled_endpoints: int = 0
    deliveries_pending: int = 0
    deliveries_failed: int = 0
    # tenancy (issue 24): bytes of its live files against its quota, its rate limit, and its
    # live keys ("stw_abcd upload,read")
    bytes: int = 0
    quota_bytes: int | None = None
    rate_limit: int | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def quota_share(self) -> float | None:
        return self.bytes / self.quota_bytes if self.quota_bytes else None


@dataclass
class Queue:
    available: bool
    depth: int | None = None  # every job in the queue: running, due, deferred
    due: int | None = None  # waiting and due now: a backlog when it stays high
    deferred: int | None = None  # retries and delayed jobs, due later
    in_progress: int | None = None
    in_progress_capped: bool = False
    error: str | None = None


@dataclass
class Bar:
    x: float
    width: float
    height: float
    y: float
    value: int


@dataclass
class Chart:
    """A bar chart of the last hours, laid out here so the template only draws."""

    width: int
    height: int
    plot_top: int
    plot_bottom: int
    max_value: int
    hours: list[datetime]
    uploads: list[Bar]
    promotions: list[Bar]
    labels: list[tuple[float, str]]
    total_uploads: int
    total_promotions: int


@dataclass
class Overview:
    apps: list[AppRow]
    totals: dict[str, int]
    lag_count: int
    lag_p50: float | None
    lag_p95: float | None
    queue: Queue
    deliveries_pending: int
    deliveries_failed: int
    disabled: list[asyncpg.Record]
    chart: Chart
    # uploads of scanning profiles held back while clamd does not answer
    waiting_for_scan: int = 0
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def chart(hourly: list[Any], width: int = 720, height: int = 180) -> Chart:
    """Two bars per hour (uploads, promotions) on one scale, labels every 6 hours."""
    left, right, top, bottom = 36, 8, 10, height - 22
    n = max(len(hourly), 1)
    slot = (width - left - right) / n
    bar_w = max(slot / 2 - 1.5, 1.0)
    max_value = max([1, *(r["uploads"] for r in hourly), *(r["promotions"] for r in hourly)])
    plot_h = bottom - top

    def bar(i: int, offset: float, value: int) -> Bar:
        h = plot_h * value / max_value
        return Bar(x=round(left + i * slot + offset, 1), width=round(bar_w, 1),
                   height=round(h, 1), y=round(bottom - h, 1), value=value)

    uploads = [bar(i, 1.0, r["uploads"]) for i, r in enumerate(hourly)]
    promotions = [bar(i, 1.0 + bar_w + 1.0, r["promotions"]) for i, r in enumerate(hourly)]
    hours = [r["hour"] for r in hourly]
    labels = [(round(left + i * slot, 1), h.astimezone(UTC).strftime("%H:00"))
              for i, h in enumerate(hours) if i % 6 == 0 or i == n - 1]
    return Chart(width=width, height=height, plot_top=top, plot_bottom=bottom,
                 max_value=max_value, hours=hours, uploads=uploads, promotions=promotions,
                 labels=labels, total_uploads=sum(r["uploads"] for r in hourly),
                 total_promotions=sum(r["promotions"] for r in hourly))



@dataclass
class AttachmentFilters:
    app_id: UUID | None = None
    state: str | None = None
    profile: str | None = None
    record_type: str | None = None
    record_id: str | None = None
    record_name: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None  # exclusive



@dataclass
class AttachmentDetail:
    row: asyncpg.Record
    app_name: str
    view: dict[str, Any]  # the attachment object, with fresh signed URLs
    timeline: list[timeline.Entry]
    work: list[asyncpg.Record] = field(default_factory=list)  # retrying or failing jobs



@dataclass
class EndpointHealth:
    row: asyncpg.Record
    finished: int
    delivered: int
    pending: int
    last_delivery_at: datetime | None

    @property
    def success_rate(self) -> float | None:
        return self.delivered / self.finished if self.finished else None

    @property
    def status(self) -> str:
        """One word for the list: disabled, failing, healthy, or idle (nothing to judge)."""
        if not self.row["enabled"]:
            return "disabled"
        if self.row["failing_since"] is not None:
            return "failing"
        return "healthy" if self.finished else "idle"



@dataclass
class Attempt:
    row: asyncpg.Record

    @property
    def ok(self) -> bool:
        code = self.row["status_code"]
        return code is not None and 200 <= code < 300



@dataclass
class DeliveryView:
    row: asyncpg.Record
    request_body: str  # what was sent, pretty-printed and cut to a preview
    attempts: list[Attempt]



@dataclass
class EndpointDetail:
    health: EndpointHealth
    deliveries: list[DeliveryView]
    next_before: UUID | None



def preview_json(value: Any, limit: int) -> str:
    if isinstance(value, dict):  # jsonb keeps no key order: put what a reader wants first
        value = {**{k: value[k] for k in ("type", "timestamp") if k in value}, **value}
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "\n… (cut)"



def default_retry_since(now: datetime | None = None) -> datetime:
    """What the "retry failed since" form proposes: the last 24 hours."""
    return (now or datetime.now(UTC)) - timedelta(hours=24)


class Dashboard:
    """What the operator's dashboard shows and does, over every app."""

    def __init__(self, *, pool: asyncpg.Pool, redis: ArqRedis, jobs: JobQueue,
                 profiles: Profiles, links: Links, attachments: Attachments,
                 webhooks: Webhooks) -> None:
        self.pool = pool
        self.redis = redis  # the queues' depth
        self.jobs = jobs
        self.profiles = profiles
        self.links = links
        self.attachments = attachments
        self.webhooks = webhooks

    async def overview(self) -> Overview:
        async with self.pool.acquire() as conn:
            counts = await repo.state_counts(conn)
            lag = await repo.promotion_lag(conn, LAG_WINDOW_S)
            hourly = await repo.hourly_activity(conn, CHART_HOURS)
            hooks = {r["app_id"]: r for r in await repo.webhook_counts(conn, FAILED_WINDOW_S)}
            disabled = await repo.disabled_endpoints(conn, 20)
            waiting_for_scan = await repo.waiting_for_scanner(conn)
            tenancy = {r["app_id"]: r for r in await repo.tenancy(conn)}
        apps = []
        for r in counts:
            h = hooks.get(r["app_id"])
            t = tenancy.get(r["app_id"])
            apps.append(AppRow(
                app_id=r["app_id"], name=r["name"], states={s: r[s] for s in STATES},
                total=r["total"],
                endpoints=h["endpoints"] if h else 0, disabled_endpoints=h["disabled"] if h else 0,
                deliveries_pending=h["pending"] if h else 0,
                deliveries_failed=h["failed"] if h else 0,
                bytes=t["bytes"] if t else 0, quota_bytes=t["quota_bytes"] if t else None,
                rate_limit=t["rate_limit"] if t else None, keys=list(t["keys"]) if t else [],
            ))
        return Overview(
            apps=apps,
            totals={s: sum(a.states[s] for a in apps) for s in STATES},
            lag_count=lag["n"], lag_p50=lag["p50"], lag_p95=lag["p95"],
            queue=await self.queue_stats(),
            deliveries_pending=sum(a.deliveries_pending for a in apps),
            deliveries_failed=sum(a.deliveries_failed for a in apps),
            disabled=disabled,
            chart=chart(hourly),
            waiting_for_scan=waiting_for_scan,
        )

    async def queue_stats(self) -> Queue:
        """The arq queues (file work and webhook deliveries, together): how many jobs wait, are
        due, are deferred, run now. Redis being down is shown, not raised (the overview is what
        an operator opens during that very incident)."""
        queues = (self.jobs.queue_name, self.jobs.delivery_queue_name)
        try:
            depth = due_or_running = 0
            for queue in queues:
                depth += await self.redis.zcard(queue)
                # arq scores a job by the time it is due (its own ms clock, rounded); deferred
                # retries wait in the same set
                due_or_running += await self.redis.zcount(queue, "-inf", timestamp_ms())
            in_progress, capped = await self._in_progress(queues)
        except (redis.exceptions.RedisError, OSError) as e:
            log.warning("dashboard: Redis unavailable: %s", e)
            return Queue(False, error=f"{type(e).__name__}: {e}")
        return Queue(True, depth=depth, due=max(due_or_running - in_progress, 0),
                     deferred=depth - due_or_running, in_progress=in_progress,
                     in_progress_capped=capped)

    async def _in_progress(self, queues: tuple[str, ...]) -> tuple[int, bool]:
        """Jobs of these queues running now. arq marks a running job with an in-progress key named
        after the job id alone (not the queue), and leaves the job in its queue until it ends: so
        a key counts when its job is in one of these queues, which keeps other deployments sharing
        the Redis out of the count."""
        job_ids: list[str] = []
        # SCAN, never KEYS (which blocks Redis); and stop at some point
        async for key in self.redis.scan_iter(match=in_progress_key_prefix + "*", count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            job_ids.append(name[len(in_progress_key_prefix):])
            if len(job_ids) >= IN_PROGRESS_SCAN_CAP:
                break
        if not job_ids:
            return 0, False
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                for queue in queues:
                    pipe.zscore(queue, job_id)
            scores = await pipe.execute()
        return sum(1 for s in scores if s is not None), len(job_ids) >= IN_PROGRESS_SCAN_CAP

    async def list_attachments(self, filters: AttachmentFilters,
                               before: UUID | None = None, limit: int = PAGE_SIZE
                               ) -> Page:
        async with self.pool.acquire() as conn:
            rows = await repo.list_attachments(
                conn, app_id=filters.app_id, state=filters.state, profile=filters.profile,
                record_type=filters.record_type, record_id=filters.record_id,
                record_name=filters.record_name, created_from=filters.created_from,
                created_to=filters.created_to, before=before, limit=limit + 1,
            )
        return page_of(rows, limit)

    async def apps(self) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return await repo.apps(conn)

    async def profile_names(self) -> list[str]:
        """Profiles of the file and those still found on attachments."""
        async with self.pool.acquire() as conn:
            used = await repo.profiles_in_use(conn)
        return sorted(set(self.profiles.names()) | set(used))

    async def get_attachment(self, att_id: UUID) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            row = await attachments_repo.get(conn, att_id)
        if row is None:
            raise AttachmentNotFound(f"no attachment {att_id}")
        return row

    async def attachment_detail(self, att_id: UUID) -> AttachmentDetail:
        row = await self.get_attachment(att_id)
        async with self.pool.acquire() as conn:
            app = await auth_repo.get_app(conn, row["app_id"])
            pending = await work.of_attachment(conn, att_id)
        return AttachmentDetail(row=row, app_name=app["name"] if app else str(row["app_id"]),
                                view=present(row, self.links),
                                timeline=await timeline.load(self.pool, row), work=pending)

    async def _audit(self, att_id: UUID, action: str, **detail: Any) -> None:
        async with self.pool.acquire() as conn:
            await activity.record(conn, att_id, f"operator.{action}", {"via": "dashboard",
                                                                       **detail})

    async def promote(self, att_id: UUID) -> asyncpg.Record:
        row = await self.get_attachment(att_id)
        out = await self.attachments.request_promotion(row["app_id"], att_id)
        await self._audit(att_id, "promote")
        return out

    async def reprocess(self, att_id: UUID) -> asyncpg.Record:
        row = await self.get_attachment(att_id)
        out = await self.attachments.request_reprocess(row["app_id"], att_id)
        await self._audit(att_id, "reprocess")
        return out

    async def delete(self, att_id: UUID) -> asyncpg.Record:
        row = await self.get_attachment(att_id)
        out = await self.attachments.delete(row["app_id"], att_id)
        await self._audit(att_id, "delete")
        return out

    async def endpoints(self, app_id: UUID | None = None) -> list[EndpointHealth]:
        async with self.pool.acquire() as conn:
            rows = await repo.endpoints_with_health(conn, app_id, HEALTH_WINDOW)
        return [EndpointHealth(row=r, finished=r["finished"], delivered=r["delivered"],
                               pending=r["pending"], last_delivery_at=r["last_delivery_at"])
                for r in rows]

    async def get_endpoint(self, endpoint_id: UUID) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            row = await repo.get_endpoint(conn, endpoint_id)
        if row is None:
            raise WebhookEndpointNotFound(f"no webhook endpoint {endpoint_id}")
        return row

    async def endpoint_detail(self, endpoint_id: UUID, status: str | None = None,
                              before: UUID | None = None, limit: int = PAGE_SIZE
                              ) -> EndpointDetail:
        endpoint = await self.get_endpoint(endpoint_id)
        health = next((h for h in await self.endpoints(endpoint["app_id"])
                       if h.row["id"] == endpoint_id), None)
        if health is None:  # deleted in between
            raise WebhookEndpointNotFound(f"no webhook endpoint {endpoint_id}")
        async with self.pool.acquire() as conn:
            rows = await repo.endpoint_deliveries(conn, endpoint_id, status, before, limit + 1)
            page = page_of(rows, limit)
            attempts = await repo.attempts_of(conn, [r["id"] for r in page.items],
                                              RESPONSE_PREVIEW_CHARS)
        by_delivery: dict[UUID, list[Attempt]] = {}
        for a in attempts:
            by_delivery.setdefault(a["delivery_id"], []).append(Attempt(a))
        views = [DeliveryView(row=r, request_body=preview_json(r["body"], BODY_PREVIEW_CHARS),
                              attempts=by_delivery.get(r["id"], [])) for r in page.items]
        return EndpointDetail(health=health, deliveries=views, next_before=page.next_before)

    async def retry_delivery(self, endpoint_id: UUID, delivery_id: UUID
                             ) -> asyncpg.Record:
        endpoint = await self.get_endpoint(endpoint_id)
        return await self.webhooks.retry_delivery(endpoint["app_id"], endpoint_id, delivery_id)

    async def retry_failed_since(self, endpoint_id: UUID, since: datetime) -> int:
        """Redeliver every delivery of the endpoint that failed at or after `since` (at most
        RETRY_ALL_CAP at once: the next press takes the rest). Returns how many."""
        endpoint = await self.get_endpoint(endpoint_id)
        async with self.pool.acquire() as conn:
            rows = await repo.failed_deliveries_since(conn, endpoint_id, since, RETRY_ALL_CAP)
        for r in rows:
            await self.webhooks.retry_delivery(endpoint["app_id"], endpoint_id, r["id"])
        return len(rows)

    async def reenable(self, endpoint_id: UUID) -> asyncpg.Record:
        endpoint = await self.get_endpoint(endpoint_id)
        return await self.webhooks.update_endpoint(endpoint["app_id"], endpoint_id,
                                              {"enabled": True})
