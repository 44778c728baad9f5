"""Real Postgres, Redis and (for S3 cases) a moto server: no mocks.

Each test run (each pytest-xdist worker too) gets its own database, arq queue name and moto
server, so runs never see each other; Redis is shared, so only this run's keys are deleted.

Environments: `env_factory(storage="file"|"s3"|"s3-cache", profiles=TOML, **settings
overrides)` gives a test an Environment (`res`, `settings`, `cache_root`/`store_root` or
`cache_bucket`/`store_bucket`). Its Services is built once per session for the same storage
kind and overrides and reset before each test: apps and everything of theirs truncated, the
storages emptied but for their identity markers and recorded again, the queue emptied, parts
swapped with `rewire` restored (after the test too). `res`, `client`, `tenant`, `s3_env`,
`settings` and `storage_files` run on the plain file Environment (`environment`, which honours
@pytest.mark.settings). Look at a storage's folder with `storage_root(res, role)`, never at
tmp_path; give a process next to it `settings_with(res.settings, **overrides)`. Waits the
sweep or a TTL would need: tests/factories.py (`age`, `age_webhooks`, `Clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
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
from app.bootstrap import PARTS, Services, build_services
from app.config import Settings, load_settings
from app.main import create_app
from app.migrate import migrate
from app.storage import is_reserved, open_s3_client
from app.storage_identity.service import Target
from app.storage_identity.service import verify as verify_storages
from app.uploads.running_digests import RunningDigests
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
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Settings:
    """The settings of this test's `environment` when it has one (res, client, tenant, …):
    its storages are the shared ones, see `storage_root` and `storage_files`. Otherwise new
    settings with empty storages under tmp_path, for tests of processes and first starts."""
    if "environment" in request.fixturenames:
        return request.getfixturevalue("environment").settings
    return make_settings(tmp_path, database_url)


def settings_with(settings: Settings, **overrides: Any) -> Settings:
    """These settings (same database, queue and storages) with some values changed: for a
    process or a second Services next to a test's environment."""
    return load_settings(**{**settings.model_dump(), **overrides})


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
    """Services over an empty database (no storages recorded) and an empty queue, built for
    this caller alone. Most tests want `env_factory` (shared, reset per test) instead."""
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


# --- environments: Services built once, reset per test ---------------------------------------

def _empty_folder(root: Path) -> None:
    """Every file and folder below root but the storage's identity marker."""
    if not root.exists():
        return
    for child in root.iterdir():
        if is_marker(child.relative_to(root)):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, onerror=_writable_and_retry)
        else:
            child.unlink()


def _writable_and_retry(function: Any, path: str, exc: Any) -> None:
    os.chmod(os.path.dirname(path), 0o700)
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, 0o700)
    function(path)


async def empty_bucket(s3: Any, bucket: str) -> None:
    """Every object and unfinished multipart upload in the bucket but identity markers."""
    uploads = await s3.list_multipart_uploads(Bucket=bucket)
    for u in uploads.get("Uploads", []):
        await s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", []) if not is_marker(o["Key"])]
        if keys:
            await s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


@dataclasses.dataclass(eq=False)
class Environment:
    """One `Services` (and its storages) shared by the tests that ask for the same storage
    kind and settings: built once, reset before each test (see reset)."""

    res: Services
    storage: str  # "file", "s3" (both storages) or "s3-cache" (the store on files)
    stack: contextlib.AsyncExitStack
    cache_root: Path | None = None  # file storages: the folders
    store_root: Path | None = None
    cache_bucket: str | None = None  # s3 storages: the buckets (the store under "files/")
    store_bucket: str | None = None
    s3: Any = None
    parts: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.res.settings

    def restore(self) -> None:
        """The parts a test swapped with rewire back, and a fresh running-digest table."""
        self.res.rewire(**{**self.parts, "tus_digests": RunningDigests()})

    async def reset(self, *, database: bool = True) -> None:
        """What a test starts from: no apps or attachments (nor anything of theirs) unless
        not `database` (a test's second environment must not lose what its first made),
        this environment's storages recorded and empty but for their markers, an empty
        queue, the parts as built."""
        self.restore()
        async with self.res.pool.acquire() as conn:
            await conn.execute(("TRUNCATE apps CASCADE; " if database else "")
                               + "DELETE FROM storage_identities")
        for bucket in (self.cache_bucket, self.store_bucket):
            if bucket is not None:
                await empty_bucket(self.s3, bucket)
        if self.cache_root is not None:
            _empty_folder(self.cache_root)
        if self.store_root is not None:
            _empty_folder(self.store_root)
        await lose_queued_jobs(self.res.redis, self.settings.queue_name)
        await verify_storages(self.res.pool, [
            Target("cache", self.res.cache, self.settings.cache_url),
            Target("store", self.res.store, self.settings.store_url)])

    async def files(self) -> tuple[list[str], list[str]]:
        """The files in the cache and the store (file storages), markers left out."""
        assert self.cache_root is not None and self.store_root is not None
        return files_under(self.cache_root), files_under(self.store_root)


class Environments:
    """The session's environments, by storage kind and settings overrides; the least
    recently used is closed when there are more than MAX."""

    MAX = 4

    def __init__(self, root: Path, database_url: str, moto_endpoint: str, s3: Any) -> None:
        self.root, self.database_url, self.moto_endpoint, self.s3 = (
            root, database_url, moto_endpoint, s3)
        self.built: dict[Any, Environment] = {}

    async def get(self, storage: str = "file", **overrides: Any) -> Environment:
        key = (storage, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        env = self.built.pop(key, None)
        if env is None:
            env = await self._build(storage, overrides)
            while len(self.built) >= self.MAX:
                oldest = next(iter(self.built))
                await self.built.pop(oldest).stack.aclose()
        self.built[key] = env  # last: the most recently used
        return env

    async def _build(self, storage: str, overrides: dict[str, Any]) -> Environment:
        folder = self.root / f"env-{secrets.token_hex(4)}"
        folder.mkdir()
        env_fields: dict[str, Any] = {}
        values: dict[str, Any] = {}
        if storage == "s3":
            cache_bucket, store_bucket = (f"cache-{secrets.token_hex(4)}",
                                          f"store-{secrets.token_hex(4)}")
            for b in (cache_bucket, store_bucket):
                await self.s3.create_bucket(Bucket=b)
            values.update(cache_url=f"s3://{cache_bucket}", store_url=f"s3://{store_bucket}/files",
                          s3_endpoint_url=self.moto_endpoint, s3_region="us-east-1",
                          max_upload_size=20 * 1024 * 1024)
            env_fields.update(cache_bucket=cache_bucket, store_bucket=store_bucket)
        elif storage == "s3-cache":
            cache_bucket = f"cache-{secrets.token_hex(4)}"
            await self.s3.create_bucket(Bucket=cache_bucket)
            values.update(cache_url=f"s3://{cache_bucket}", s3_endpoint_url=self.moto_endpoint,
                          s3_region="us-east-1")
            env_fields.update(cache_bucket=cache_bucket, store_root=folder / "store")
        elif storage == "file":
            env_fields.update(cache_root=folder / "cache", store_root=folder / "store")
        else:
            raise ValueError(f"storage is 'file', 's3' or 's3-cache', not {storage!r}")
        profiles = overrides.pop("profiles", None)
        if profiles is not None:
            path = folder / "profiles.toml"
            path.write_text(profiles)
            values["profiles_file"] = str(path)
        settings = make_settings(folder, self.database_url, **{**values, **overrides})
        stack = contextlib.AsyncExitStack()
        await forget_storage_identities(self.database_url, and_apps=True)
        res = await stack.enter_async_context(build_services(settings))
        return Environment(res=res, storage=storage, stack=stack, s3=self.s3,
                           parts={name: getattr(res, name) for name in PARTS}, **env_fields)

    async def aclose(self) -> None:
        while self.built:
            await self.built.popitem()[1].stack.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def environments(tmp_path_factory: pytest.TempPathFactory, database_url: str,
                       moto_endpoint: str, s3_client: Any) -> AsyncIterator[Environments]:
    envs = Environments(tmp_path_factory.mktemp("environments"), database_url, moto_endpoint,
                        s3_client)
    try:
        yield envs
    finally:
        await envs.aclose()


@pytest.fixture
async def env_factory(environments: Environments) -> AsyncIterator[Any]:
    """`await env_factory(storage="file"|"s3"|"s3-cache", profiles=TOML text, **settings
    overrides)`: an
    Environment (its `res`, `settings`, storage roots or buckets), shared with every test that
    asks for the same, reset for this test, its parts restored after it."""
    used: list[Environment] = []

    async def make(storage: str = "file", **overrides: Any) -> Environment:
        env = await environments.get(storage, **overrides)
        await env.reset(database=not used)
        used.append(env)
        return env

    make.used = used  # type: ignore[attr-defined]
    yield make
    for env in used:
        env.restore()


@pytest.fixture
async def environment(env_factory: Any, request: pytest.FixtureRequest) -> Environment:
    """The file-storage Environment, with this test's @pytest.mark.settings overrides."""
    marker = request.node.get_closest_marker("settings")
    return await env_factory("file", **(marker.kwargs if marker else {}))


@pytest.fixture
async def res(environment: Environment) -> Services:
    return environment.res


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


def storage_root(res: Services, role: str) -> Path:
    """The folder of a file storage ("cache" or "store") of these services."""
    url = getattr(res.settings, f"{role}_url")
    assert url.startswith("file://"), url
    return Path(url.removeprefix("file://"))


@pytest.fixture
def storage_files(env_factory: Any, settings: Settings):
    """`await storage_files()`: (cache files, store files) of the last environment this test
    asked for, or of `settings`' storages when it asked for none."""

    async def _files() -> tuple[list[str], list[str]]:
        if env_factory.used:
            return await env_factory.used[-1].files()
        return (files_under(Path(settings.cache_url.removeprefix("file://"))),
                files_under(Path(settings.store_url.removeprefix("file://"))))

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
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(f"{REDIS_BASE}/{REDIS_DB}")
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
async def s3_env(env_factory):
    """Both storages on S3 (moto): (res, client, tenant, cache_bucket, store_bucket)."""
    env = await env_factory("s3")
    async with api_client(env.res) as client:
        new = await auth.create_app(env.res.pool, "s3")
        yield env.res, client, AppKey(new.app_id, new.api_key), env.cache_bucket, env.store_bucket


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
