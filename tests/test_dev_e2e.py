"""`stowage dev` as an operator runs it: one process, a new database, storage under ./var."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from arq.constants import health_check_key_suffix

from app.config import Settings
from app.migrate import migration_files
from tests.conftest import PG_BASE, drop_database, env_for, files_under, free_port
from tests.test_cli import STOWAGE, only_json, run_cli


@pytest.fixture
async def dev_database() -> AsyncIterator[str]:
    name = f"stowage_devtest_{secrets.token_hex(4)}"
    yield f"{PG_BASE}/{name}"
    await drop_database(name)


def tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n--- dev log (tail)\n" + "\n".join(text.splitlines()[-lines:])


async def poll(predicate, within: float, what: str, log: Path, interval: float = 0.1):
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s" + tail(log))
        await asyncio.sleep(interval)


async def test_dev_runs_the_whole_lifecycle(
    settings: Settings, dev_database: str, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    log = tmp_path / "dev.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    env = env_for(settings)
    # the defaults: file://./var/cache and file://./var/store, relative to the working dir
    env.pop("STOWAGE_CACHE_URL")
    env.pop("STOWAGE_STORE_URL")
    env["STOWAGE_DATABASE_URL"] = dev_database  # does not exist yet: dev's migrate creates it
    env["STOWAGE_PUBLIC_URL"] = base
    env["STOWAGE_QUEUE_NAME"] = f"{settings.queue_name}:dev:{secrets.token_hex(3)}"
    store_dir = workdir / "var" / "store"
    cache_dir = workdir / "var" / "cache"

    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            STOWAGE, "dev", "--port", str(port), cwd=workdir, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            async def healthy() -> bool:
                assert proc.returncode is None, "stowage dev exited early" + tail(log)
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/healthz", timeout=1)).status_code == 200
                return False

            await poll(healthy, 60, "/healthz", log)

            # dev migrated the brand-new database
            conn = await asyncpg.connect(dev_database)
            try:
                versions = [r["version"] for r in await conn.fetch(
                    "SELECT version FROM schema_migrations ORDER BY 1")]
            finally:
                await conn.close()
            assert versions == sorted(p.name for p in migration_files())

            created = await run_cli("apps", "create", "dev-e2e", "--json", env=env, cwd=workdir)
            http.headers["Authorization"] = f"Bearer {only_json(created)['api_key']}"

            data = os.urandom(200_000) + b"the end\n"
            r = await http.post("/v1/attachments",
                                files={"file": ("blob.bin", data, "application/octet-stream")})
            assert r.status_code == 201, r.text
            att = r.json()
            att_id = att["id"]
            assert att["state"] == "cached"
            assert att["size"] == len(data)
            assert att["sha256"] == hashlib.sha256(data).hexdigest()
            assert r.headers["location"].endswith(f"/v1/attachments/{att_id}")

            # long-poll until the dev worker has promoted it
            deadline = time.monotonic() + 15
            while att["state"] == "cached" and time.monotonic() < deadline:
                r = await http.get(f"/v1/attachments/{att_id}",
                                   params={"wait": max(1, int(deadline - time.monotonic()))})
                assert r.status_code == 200, r.text
                att = r.json()
                if att["state"] == "cached":
                    await asyncio.sleep(0.1)  # in case the server answered before `wait`
            assert att["state"] == "stored", f"{att}" + tail(log)
            assert att["stored_at"]

            r = await http.get(f"/v1/attachments/{att_id}/content", follow_redirects=True)
            assert r.status_code == 200, r.text
            assert r.content == data

            # the file is in ./var/store of the working directory, and nowhere in the cache
            stored = files_under(store_dir)
            assert len(stored) == 1, stored
            assert (store_dir / stored[0]).read_bytes() == data

            async def cache_empty() -> bool:
                return files_under(cache_dir) == []

            await poll(cache_empty, 10, f"cache copy removed {files_under(cache_dir)}", log)

            r = await http.delete(f"/v1/attachments/{att_id}")
            assert r.status_code == 202, r.text
            r = await http.get(f"/v1/attachments/{att_id}")
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "deleted"

            async def store_empty() -> bool:
                return files_under(store_dir) == []

            await poll(store_empty, 15, f"store file removed {files_under(store_dir)}", log)
            assert files_under(cache_dir) == []

        # arq keeps this key while the worker runs and deletes it when the worker is closed
        health_key = env["STOWAGE_QUEUE_NAME"] + health_check_key_suffix
        assert await redis_client.exists(health_key), "the dev worker is not running" + tail(log)

        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            raise AssertionError("stowage dev did not stop within 10 s of SIGTERM"
                                 + tail(log)) from None
        assert proc.returncode in (0, -signal.SIGTERM), f"exit {proc.returncode}" + tail(log)
        assert not await redis_client.exists(health_key), (
            f"exit {proc.returncode}: the dev worker was not closed on SIGTERM" + tail(log))
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
