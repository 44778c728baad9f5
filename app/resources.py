"""What a process holds for its lifetime (pool, Redis, storages, ...), built once by
app.bootstrap. Every layer takes it, so this module imports no package above the bottom
layers at run time: the types of the parts above are named for type checkers only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from arq.connections import RedisSettings

if TYPE_CHECKING:
    import asyncpg
    import httpx
    from arq.connections import ArqRedis

    from app.attachments.links import Links
    from app.attachments.watch import StateWatcher
    from app.config import Settings
    from app.jobs import JobQueue
    from app.profiles import Profiles
    from app.storage import Storage
    from app.uploads.running_digests import RunningDigests


@dataclass
class Resources:
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


def redis_settings(settings: Settings) -> RedisSettings:
    rs = RedisSettings.from_dsn(settings.redis_url)
    # fail fast instead of arq's default 5 retries x 1 s on every command while Redis is down
    rs.conn_timeout = 2
    rs.conn_retries = 0
    rs.retry_on_timeout = True
    return rs
