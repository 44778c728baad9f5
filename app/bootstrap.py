"""The composition root: the one builder of the long-lived parts (pool, Redis, storages, …)
and of the services over them, shared by the API, the worker and the CLI. It sits above every
package: it wires them together, none of them imports it. Each service takes what it uses in
its constructor; routes get theirs through `Annotated` dependencies (app.deps.provided), jobs
through the worker's context."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from typing import Any

import asyncpg
import httpx
from arq import create_pool
from arq.connections import ArqRedis

from app.attachments.links import Links
from app.attachments.scanning import Scanner
from app.attachments.service import Attachments
from app.attachments.variants import Variants
from app.attachments.watch import StateWatcher
from app.auth.service import ApiKeys
from app.config import ConfigError, Settings
from app.dashboard.service import Dashboard
from app.db import create_pool as create_db_pool
from app.idempotency.service import Idempotency
from app.jobs import JobQueue, redis_settings
from app.media.previews import MediaLimits
from app.media.render import allow_pixels
from app.media.render_queue import RenderQueue
from app.ops.fsck import Fsck
from app.ops.gauges import Gauges
from app.ops.leftovers import Leftovers
from app.ops.readiness import Readiness
from app.profiles import Profiles, load_profiles
from app.scan import Clamd
from app.storage import Storage, open_s3_client, storage_from_url
from app.storage_identity.service import Target
from app.storage_identity.service import verify as verify_storages
from app.sweep import Sweep
from app.uploads.intake import Intake
from app.uploads.presigned import PresignedUploads
from app.uploads.quotas import Quotas
from app.uploads.rate_limits import RateLimits
from app.uploads.running_digests import RunningDigests
from app.uploads.tokens import UploadTokens
from app.uploads.tus import TusUploads
from app.webhooks.feed import CHANNEL as FEED_CHANNEL
from app.webhooks.feed import EventFeed
from app.webhooks.schedule import delivery_horizon
from app.webhooks.service import Webhooks


def event_link_ttl(settings: Settings) -> int:
    """How long the links in a webhook event work: the usual TTL, counted from the end of the
    event's last automatic attempt."""
    return (delivery_horizon(settings.retry_delays, settings.webhook_timeout)
            + settings.download_url_ttl)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Services:
    """Everything a process holds for its lifetime: the parts, then the services wired
    over them (wire). Tests swap a part with rewire."""

    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    jobs: JobQueue
    cache: Storage
    store: Storage
    profiles: Profiles
    http: httpx.AsyncClient
    watcher: StateWatcher
    links: Links
    tus_digests: RunningDigests
    scanner: Scanner
    quarantine: Storage | None
    render_queue: RenderQueue
    rate_limits: RateLimits
    api_keys: ApiKeys = field(init=False)
    variants: Variants = field(init=False)
    webhooks: Webhooks = field(init=False)
    attachments: Attachments = field(init=False)
    intake: Intake = field(init=False)
    presigned: PresignedUploads = field(init=False)
    tus: TusUploads = field(init=False)
    dashboard: Dashboard = field(init=False)
    leftovers: Leftovers = field(init=False)
    fsck: Fsck = field(init=False)
    readiness: Readiness = field(init=False)
    gauges: Gauges = field(init=False)
    sweep: Sweep = field(init=False)
    event_feed: EventFeed = field(init=False)
    idempotency: Idempotency = field(init=False)
    upload_tokens: UploadTokens = field(init=False)
    quotas: Quotas = field(init=False)

    def __post_init__(self) -> None:
        self.wire()

    def wire(self) -> None:
        """(Re)build every service from the parts, bottom up."""
        self.api_keys = ApiKeys(pool=self.pool)
        self.quotas = Quotas(pool=self.pool,
                             reservation_ttl=self.settings.quota_reservation_ttl)
        self.upload_tokens = UploadTokens(pool=self.pool, profiles=self.profiles,
                                          settings=self.settings)
        self.webhooks = Webhooks(pool=self.pool, jobs=self.jobs, redis=self.redis,
                                 http=self.http, settings=self.settings)
        self.attachments = Attachments(
            pool=self.pool, cache=self.cache, store=self.store, jobs=self.jobs,
            profiles=self.profiles, links=self.links, watcher=self.watcher,
            webhooks=self.webhooks, stale_job_after=self.settings.stale_job_after,
            scanner=self.scanner, quarantine=self.quarantine,
            preview_limits=MediaLimits(max_pages=self.settings.preview_max_pages,
                                       max_duration=self.settings.preview_max_duration,
                                       timeout=self.settings.preview_timeout))
        self.variants = Variants(pool=self.pool, store=self.store, profiles=self.profiles,
                                 links=self.links, queue=self.render_queue)
        self.intake = Intake(pool=self.pool, cache=self.cache, jobs=self.jobs,
                             profiles=self.profiles, links=self.links, webhooks=self.webhooks,
                             settings=self.settings, quotas=self.quotas)
        self.presigned = PresignedUploads(pool=self.pool, cache=self.cache,
                                          profiles=self.profiles, intake=self.intake,
                                          settings=self.settings)
        self.tus = TusUploads(pool=self.pool, cache=self.cache, profiles=self.profiles,
                              intake=self.intake, digests=self.tus_digests,
                              settings=self.settings)
        self.dashboard = Dashboard(pool=self.pool, redis=self.redis, jobs=self.jobs,
                                   profiles=self.profiles, links=self.links,
                                   attachments=self.attachments, webhooks=self.webhooks)
        self.leftovers = Leftovers(pool=self.pool, cache=self.cache, store=self.store)
        self.fsck = Fsck(pool=self.pool, cache=self.cache, store=self.store, links=self.links,
                         jobs=self.jobs, webhooks=self.webhooks, leftovers=self.leftovers)
        self.readiness = Readiness(pool=self.pool, redis=self.redis, cache=self.cache,
                                   store=self.store, clamd=self.scanner.clamd)
        self.gauges = Gauges(pool=self.pool, redis=self.redis, jobs=self.jobs,
                             max_apps=self.settings.metrics_max_apps)
        self.idempotency = Idempotency(pool=self.pool, ttl_s=self.settings.idempotency_ttl,
                                       lease_s=self.settings.idempotency_lease)
        self.event_feed = EventFeed(pool=self.pool, notifications=self.watcher,
                                    retention_s=self.settings.event_retention)
        self.sweep = Sweep(pool=self.pool, attachments=self.attachments,
                           webhooks=self.webhooks, presigned=self.presigned, tus=self.tus,
                           event_feed=self.event_feed, idempotency=self.idempotency,
                           quotas=self.quotas, upload_tokens=self.upload_tokens)

    def rewire(self, **parts: Any) -> None:
        """Swap parts (a profiles file, a storage, the links, the settings) and rebuild the
        services over them, in place: the API and the worker look services up here on each
        request and job, so both use the new ones at once. For tests and `stowage dev`."""
        for name, value in parts.items():
            if name not in PARTS:
                raise TypeError(f"{name} is not a part of Services")
            setattr(self, name, value)
        self.wire()


PARTS = frozenset(f.name for f in fields(Services) if f.init)


@contextlib.asynccontextmanager
async def build_services(settings: Settings) -> AsyncIterator[Services]:
    async with contextlib.AsyncExitStack() as stack:
        profiles = load_profiles(settings.profiles_file)
        scanning = profiles.scanning_names()
        if scanning and not settings.clamd_url:
            raise ConfigError(f"profile {scanning[0]!r} has scan = true, and STOWAGE_CLAMD_URL"
                              " is not set: its files could never be stored")
        scanner = Scanner(Clamd(settings.clamd_url) if settings.clamd_url else None)
        if scanner.clamd is not None:
            await _warn_if_unreachable(scanner.clamd)
        if profiles.max_pixels():
            allow_pixels(profiles.max_pixels())
        pool = await create_db_pool(settings.database_url, max_size=settings.db_pool_size)
        stack.push_async_callback(pool.close)
        redis = await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)
        stack.push_async_callback(redis.aclose)
        s3 = presign = None
        cache_url, store_url = settings.storage_url("cache"), settings.storage_url("store")
        quarantine_url = settings.storage_url("quarantine") if settings.quarantine_url else None
        if (cache_url.needs_s3_client or store_url.needs_s3_client
                or (quarantine_url is not None and quarantine_url.needs_s3_client)):
            s3 = await open_s3_client(
                stack, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
            )
            if settings.s3_public_endpoint_url:
                presign = await open_s3_client(
                    stack, endpoint_url=settings.s3_public_endpoint_url,
                    region=settings.s3_region,
                )
        quarantine = None
        if settings.quarantine_url:
            quarantine = storage_from_url(quarantine_url, s3_client=s3,
                                          s3_presign_client=presign)
            stack.push_async_callback(quarantine.aclose)
        cache = storage_from_url(cache_url, s3_client=s3, s3_presign_client=presign)
        store = storage_from_url(store_url, s3_client=s3, s3_presign_client=presign)
        stack.push_async_callback(cache.aclose)
        stack.push_async_callback(store.aclose)
        # before anything reads or writes a file: a process pointed at another folder or
        # bucket than the database describes must not start (it would take every file for
        # missing); one small read per storage
        await verify_storages(pool, [Target("cache", cache, settings.cache_url),
                                     Target("store", store, settings.store_url)])
        # Webhooks must not follow redirects (SSRF); timeouts keep a slow receiver from
        # holding a worker slot.
        http = httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(10.0, connect=5.0))
        stack.push_async_callback(http.aclose)
        watcher = StateWatcher(settings.database_url, extra_channels=(FEED_CHANNEL,))
        stack.push_async_callback(watcher.close)
        render_queue = RenderQueue()
        stack.callback(render_queue.close)
        rate_limits = RateLimits(redis_url=settings.redis_url, window=settings.rate_limit_window)
        stack.push_async_callback(rate_limits.aclose)
        yield Services(
            settings=settings,
            pool=pool,
            redis=redis,
            jobs=JobQueue(redis, settings.queue_name),
            cache=cache,
            store=store,
            profiles=profiles,
            http=http,
            watcher=watcher,
            links=Links(settings.public_url, settings.signing_key, settings.download_url_ttl,
                        event_ttl=event_link_ttl(settings),
                        public_profiles=profiles.public_names()),
            tus_digests=RunningDigests(),
            scanner=scanner,
            quarantine=quarantine,
            render_queue=render_queue,
            rate_limits=rate_limits,
        )


async def _warn_if_unreachable(clamd: Clamd) -> None:
    """clamd unreachable at start is not a reason not to start (it may come up after us):
    scanning files wait for it, and /readyz names it."""
    try:
        await clamd.ping()
    except Exception as e:
        log.warning("clamd (%s) does not answer now: %s; files of scanning profiles wait"
                    " until it does", clamd, e)
