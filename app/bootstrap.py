"""The one builder of long-lived resources, shared by the API, the worker and the CLI. It sits
above every package: it wires them together, none of them imports it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from arq import create_pool

from app.attachments.links import Links
from app.attachments.watch import StateWatcher
from app.config import Settings
from app.db import create_pool as create_db_pool
from app.jobs import JobQueue
from app.media.render import allow_pixels
from app.profiles import load_profiles
from app.resources import Resources, redis_settings
from app.storage import open_s3_client, storage_from_url
from app.storage_identity.service import Target
from app.storage_identity.service import verify as verify_storages
from app.uploads.running_digests import RunningDigests
from app.webhooks.schedule import delivery_horizon


def event_link_ttl(settings: Settings) -> int:
    """How long the links in a webhook event work: the usual TTL, counted from the end of the
    event's last automatic attempt."""
    return (delivery_horizon(settings.retry_delays, settings.webhook_timeout)
            + settings.download_url_ttl)


@contextlib.asynccontextmanager
async def build_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with contextlib.AsyncExitStack() as stack:
        profiles = load_profiles(settings.profiles_file)
        if profiles.max_pixels():
            allow_pixels(profiles.max_pixels())
        pool = await create_db_pool(settings.database_url, max_size=settings.db_pool_size)
        stack.push_async_callback(pool.close)
        redis = await create_pool(redis_settings(settings), default_queue_name=settings.queue_name)
        stack.push_async_callback(redis.aclose)
        s3 = presign = None
        cache_url, store_url = settings.storage_url("cache"), settings.storage_url("store")
        if cache_url.needs_s3_client or store_url.needs_s3_client:
            s3 = await open_s3_client(
                stack, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
            )
            if settings.s3_public_endpoint_url:
                presign = await open_s3_client(
                    stack, endpoint_url=settings.s3_public_endpoint_url,
                    region=settings.s3_region,
                )
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
        watcher = StateWatcher(settings.database_url)
        stack.push_async_callback(watcher.close)
        yield Resources(
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
        )
