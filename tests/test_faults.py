"""Faults with real parts: a worker SIGKILLed mid-promotion, a client that disconnects
mid-upload, Postgres and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from app.auth import service as auth
from app.bootstrap import build_services
from app.main import create_app
from tests.conftest import (
    AppKey,
    env_for,
    files_under,
    forget_storage_identities,
    free_port,
    make_settings,
    process,
    run_worker,
    settings_with,
    wait_for,
    wait_http,
)
from tests.factories import age
from tests.proxy import TCPProxy


async def test_worker_sigkilled_mid_promotion_is_finished_by_the_next(
        client, tenant, res, settings, tmp_path, storage_files):
    settings = settings_with(res.settings, job_timeout=3)
    env = env_for(settings)
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("a.txt", b"abc" * 10000)})
    att_id = r.json()["id"]

    async def copied_but_not_stored():
        _, store = await storage_files()
        row = await res.attachments.get(tenant.app_id, uuid.UUID(att_id))
        return store and row["state"] == "cached"

    with process(["worker"], {**env, "STOWAGE_FAILPOINTS": "promote.after_copy=sleep:120"},
                 tmp_path / "worker1.log") as first:
        await wait_for(copied_but_not_stored, within=20)
        os.killpg(first.pid, signal.SIGKILL)  # mid-promotion: copied, row not yet updated
        first.wait(5)

    async def stored():
        return (await res.attachments.get(tenant.app_id, uuid.UUID(att_id)))["state"] == "stored"

    with process(["worker"], env, tmp_path / "worker2.log"):
        # arq re-runs the job once its in-progress key expires: job_timeout + 10 s
        await wait_for(stored, within=60, interval=0.25)
        await wait_for(lambda: _no_cache_files(storage_files), within=10)
    cache, store = await storage_files()
    assert cache == [] and len(store) == 1


async def _no_cache_files(storage_files) -> bool:
    return (await storage_files())[0] == []


@pytest.fixture
def live_api(settings, tmp_path, res):
    # `res` first: the database is clean and knows these storages before the API starts
    port = free_port()
    with process(["serve", "--port", str(port)], env_for(settings), tmp_path / "api.log") as p:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}", p


def _send_partial(port: int, head: bytes, body_part: bytes) -> None:
    """Send the head and part of the body, then vanish mid-stream."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body_part)


@pytest.mark.parametrize("mode", ["raw", "multipart"])
async def test_client_disconnect_mid_upload_leaves_nothing(live_api, tenant, res, storage_files,
                                                           mode):
    base, _ = live_api
    port = urlsplit(base).port
    chunk = os.urandom(2 * 1024 * 1024)
    if mode == "raw":
        head = (f"POST /v1/attachments/raw?filename=x HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {tenant.api_key}\r\n"
                f"Content-Length: {50 * 1024 * 1024}\r\n\r\n").encode()
        body = chunk
    else:
        head = (f"POST /v1/attachments HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {tenant.api_key}\r\n"
                "Content-Type: multipart/form-data; boundary=BB\r\n"
                f"Content-Length: {50 * 1024 * 1024}\r\n\r\n").encode()
        body = (b'--BB\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
                + chunk)
    await asyncio.to_thread(_send_partial, port, head, body)

    async def clean():
        async with res.pool.acquire() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM attachments")
        return rows == 0 and await storage_files() == ([], [])

    # give the server time to notice, then require a clean state that stays clean
    await asyncio.sleep(0.5)
    await wait_for(clean, within=10)
    # and the server still works
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{base}/v1/attachments/raw", headers=tenant.headers, content=b"ok")
    assert r.status_code == 201


@pytest.fixture
async def proxied(tmp_path, database_url):
    """Services that reach Postgres and Redis through proxies the test can cut."""
    pg = TCPProxy("127.0.0.1", 5432)
    rd = TCPProxy("127.0.0.1", 6379)
    await pg.start()
    await rd.start()
    dbname = urlsplit(database_url).path
    settings = make_settings(tmp_path, f"postgresql://127.0.0.1:{pg.port}{dbname}",
                             redis_url=f"redis://127.0.0.1:{rd.port}/7")
    await forget_storage_identities(database_url, and_apps=True)
    async with build_services(settings) as res:
        new = await auth.create_app(res.pool, "faults")
        app = create_app(settings, res)
        app.state.services = res
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as client:
            yield res, client, AppKey(new.app_id, new.api_key), pg, rd
    await pg.cut()
    await rd.cut()


async def test_postgres_unreachable_is_503_then_recovers(proxied):
    res, client, tenant, pg, _ = proxied
    assert (await client.get("/v1/attachments", headers=tenant.headers)).status_code == 200
    await pg.cut()
    r = await client.get("/v1/attachments", headers=tenant.headers)
    assert r.status_code == 503
    assert r.headers["retry-after"].isdigit()
    assert r.headers["content-type"] == "application/problem+json"
    r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=b"during outage")
    assert r.status_code == 503
    assert (await client.get("/readyz")).status_code == 503
    await pg.start()  # same port: the pool reconnects by itself
    r = await client.get("/v1/attachments", headers=tenant.headers)
    assert r.status_code == 200
    assert r.json()["items"] == []  # the upload during the outage left no row
    assert files_under(Path(res.settings.cache_url.removeprefix("file://"))) == []


async def test_redis_unreachable_upload_still_lands_and_sweep_enqueues(proxied):
    res, client, tenant, _, rd = proxied
    await rd.cut()
    r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=b"kept")
    # Postgres holds the truth; the lost enqueue is the sweep's to redo
    assert r.status_code == 201
    att_id = uuid.UUID(r.json()["id"])
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] != "ok"
    await rd.start()
    await age(res, res.settings.stale_job_after + 0.1)
    report = await res.sweep.run()
    assert att_id in report.promotions
    await run_worker(res)
    assert (await res.attachments.get(tenant.app_id, att_id))["state"] == "stored"
