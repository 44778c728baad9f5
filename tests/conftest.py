"""Real Postgres, Redis and (for S3 cases) a moto server: no mocks.

Each test run gets its own database and its own arq queue name, so runs never see each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from botocore.retries.standard import ExponentialBackoff
from moto.server import ThreadedMotoServer

from app.auth import service as auth
from app.bootstrap import Services, build_services
from app.config import Settings, load_settings
from app.main import create_app
from app.migrate import migrate
from app.storage import is_reserved, open_s3_client
from worker.settings import build_worker

PG_BASE = os.environ.get("STOWAGE_TEST_PG", "postgresql://127.0.0.1:5432")
REDIS_BASE = os.environ.get("STOWAGE_TEST_REDIS", "redis://127.0.0.1:6379")
RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"

# moto accepts any credentials, but botocore refuses to sign without some.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
TEST_DB = f"stowage_test_{RUN_ID}"
REDIS_DB = 7
# the `clamd` fixture: a real clamd with the tests' own signatures
pytest_plugins = ["tests.clamd_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(f"{PG_BASE}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def throwaway_database(prefix: str, *, migrated: bool = True) -> AsyncIterator[str]:
    """The DSN of a database of the caller's own (migrated, unless not asked to), dropped
    at the end: for tests that fill a database in a shape the shared one must not get."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    dsn = f"{PG_BASE}/{name}"
    try:
        if migrated:
            await migrate(dsn)
        yield dsn
    finally:
        await drop_database(name)


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    dsn = f"{PG_BASE}/{TEST_DB}"
    await migrate(dsn)
    yield dsn
    await drop_database(TEST_DB)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of an in-process moto S3 server (a real S3 HTTP API) on a free port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def s3_client(moto_endpoint: str) -> AsyncIterator[Any]:
    async with contextlib.AsyncExitStack() as stack:
        yield await open_s3_client(stack, endpoint_url=moto_endpoint, region="us-east-1")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": f"{REDIS_BASE}/{REDIS_DB}",
        "cache_url": f"file://{tmp_path}/cache",
        "store_url": f"file://{tmp_path}/store",
        "queue_name": f"stowage:test:{RUN_ID}",
        "secret_key": "test-secret-key-32-bytes-at-least!",
        "sweep_interval": 1,
        "stale_job_after": 1,
        "webhook_allow_private": True,
        "worker_metrics_port": 0,
        "log_format": "json",
    }
    values.update(overrides)
    return load_settings(**values)


async def forget_storage_identities(database_url: str, *, and_apps: bool = False) -> None:
    """Tests share one database but each has storages of its own (tmp_path, new buckets):
    the database must forget the storages the previous test recorded, or it would rightly
    refuse this test's as the wrong ones. `and_apps`: forget every app and attachment too,
    whose files a new storage cannot have (an empty storage for a database whose attachments
    have files is refused as well)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(("TRUNCATE apps CASCADE; " if and_apps else "")
                           + "DELETE FROM storage_identities")
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
async def _storages_of_this_test(request: pytest.FixtureRequest) -> None:
    """Every test that uses the database starts without recorded storages (see
    forget_storage_identities), also those that only start processes."""
    if "database_url" in request.fixturenames:
        await forget_storage_identities(request.getfixturevalue("database_url"))


@contextlib.asynccontextmanager
async def fresh_resources(settings: Settings) -> AsyncIterator[Services]:
    """Services over an empty database (no storages recorded) and an empty queue."""
    await forget_storage_identities(settings.database_url, and_apps=True)
    async with build_services(settings) as resources:
        await resources.redis.delete(settings.queue_name, resources.jobs.delivery_queue_name)
        yield resources


@contextlib.asynccontextmanager
async def api_client(res: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(res.settings, res)
    app.state.services = res  # ASGITransport does not run the lifespan
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stowage.test") as c:
        yield c


@pytest.fixture
async def res(settings: Settings) -> AsyncIterator[Services]:
    async with fresh_resources(settings) as resources:
        yield resources


@pytest.fixture
async def client(res: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(res) as c:
        yield c


class AppKey:
    def __init__(self, app_id: Any, api_key: str) -> None:
        self.app_id = app_id
        self.api_key = api_key
        self.headers = {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
async def tenant(res: Services) -> AppKey:
    new = await auth.create_app(res.pool, "tenant")
    return AppKey(new.app_id, new.api_key)


@pytest.fixture
async def other_tenant(res: Services) -> AppKey:
    new = await auth.create_app(res.pool, "other")
    return AppKey(new.app_id, new.api_key)


async def run_worker(res: Services) -> None:
    """Run every queued job to completion (arq burst mode), with the test's resources."""
    worker = build_worker(res.settings, services=res, burst=True, handle_signals=False,
                          sweep=False)
    try:
        await worker.main()
    finally:
        await worker.close()


@pytest.fixture
async def drain(res: Services):
    async def _drain() -> None:
        await run_worker(res)

    return _drain


def is_marker(path_or_key: Path | str) -> bool:
    """A storage's identity marker (app.storage.identity), in a listing of files or keys:
    every storage has one once in use, and it belongs to no attachment."""
    return "_stowage" in Path(path_or_key).parts


def files_under(root: Path) -> list[str]:
    """Every file below root, temp files included: what a leak would leave. Not the
    storage's identity marker, which is no file of any attachment."""
    if not root.exists():
        return []
    return sorted(rel for p in root.rglob("*")
                  if p.is_file() and not is_reserved(rel := p.relative_to(root).as_posix()))


@pytest.fixture
def storage_files(settings: Settings):
    cache = Path(settings.cache_url.removeprefix("file://"))
    store = Path(settings.store_url.removeprefix("file://"))

    async def _files() -> tuple[list[str], list[str]]:
        return files_under(cache), files_under(store)

    return _files


async def lose_queued_jobs(redis: Any, queue_name: str) -> list[str]:
    """What Redis losing its data does to this run: the queue and every job in it gone, and
    nothing of anyone else's (the Redis database is shared: never FLUSHDB it)."""
    from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

    from app.jobs import delivery_queue

    queues = [queue_name, delivery_queue(queue_name)]
    ids = [i.decode() for q in queues for i in await redis.zrange(q, 0, -1)]
    keys = queues + [prefix + i for i in ids
                     for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix)]
    await redis.delete(*keys)
    return ids


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(settings.redis_url)
    yield r
    await r.aclose()


# --- real processes -------------------------------------------------------------------------------

def env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("database_url", "redis_url", "cache_url", "store_url", "queue_name",
                 "secret_key", "sweep_interval", "stale_job_after", "job_timeout",
                 "webhook_allow_private", "public_url", "webhook_timeout",
                 "webhook_retry_delays", "webhook_disable_after", "max_upload_size",
                 "shutdown_grace", "worker_metrics_port", "log_format", "leftover_grace",
                 "job_max_attempts"):
        env[f"STOWAGE_{name.upper()}"] = str(getattr(settings, name))
    return env


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with contextlib.suppress(ProcessLookupError):  # what it started (serve's processes)
                os.killpg(proc.pid, signal.SIGKILL)


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


async def wait_for(predicate, within: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


@pytest.fixture
def fast_botocore_backoff(monkeypatch):
    """botocore's standard mode sleeps up to 1+2+4+8 s between its 5 attempts; a hundredth of
    that keeps these tests fast without changing what is retried or how often."""
    original = ExponentialBackoff.delay_amount
    monkeypatch.setattr(ExponentialBackoff, "delay_amount",
                        lambda self, context: original(self, context) / 100)


@pytest.fixture
async def s3_env(tmp_path, database_url, moto_endpoint, s3_client):
    """Both storages on S3 (moto): (res, client, tenant, cache_bucket, store_bucket)."""
    cache_bucket, store_bucket = f"cache-{secrets.token_hex(4)}", f"store-{secrets.token_hex(4)}"
    for b in (cache_bucket, store_bucket):
        await s3_client.create_bucket(Bucket=b)
    settings = make_settings(tmp_path, database_url, cache_url=f"s3://{cache_bucket}",
                             store_url=f"s3://{store_bucket}/files", s3_endpoint_url=moto_endpoint,
                             s3_region="us-east-1", max_upload_size=20 * 1024 * 1024)
    await forget_storage_identities(database_url, and_apps=True)
    async with build_services(settings) as res:
        await res.redis.delete(settings.queue_name)
        app = create_app(settings, res)
        app.state.services = res
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as client:
            new = await auth.create_app(res.pool, "s3")
            yield res, client, AppKey(new.app_id, new.api_key), cache_bucket, store_bucket




# Modules whose tests start many processes, browsers, fuzzers or outages: marked slow, so
# `pytest -m "not slow"` is the quick loop while changing code (CI runs everything).
SLOW_MODULES = frozenset({
    "test_soak", "test_artifact", "test_dashboard_browser", "test_cors_browser",
    "test_dev_e2e", "test_worker_outages", "test_s3_faults", "test_openapi_fuzz",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
