"""Operations: metrics (API and worker), request ids into jobs, JSON logs, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid

import httpx
from arq.jobs import Job
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    env_for,
    free_port,
    process,
    run_worker,
    settings_with,
    wait_for,
    wait_http,
)


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_metrics_count_uploads_promotions_and_states(client, tenant, res):
    before = (await client.get("/metrics")).text
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("a.txt", b"metrics" * 100)})
    assert r.status_code == 201
    r = await client.post("/v1/attachments/raw?profile=nope", headers=tenant.headers,
                          content=b"x")
    assert r.status_code == 422
    await run_worker(res)
    after = (await client.get("/metrics")).text
    assert r.status_code == 422
    ok = dict(mode="multipart", outcome="ok")
    assert sample(after, "stowage_uploads_total", **ok) == sample(
        before, "stowage_uploads_total", **ok) + 1
    assert sample(after, "stowage_upload_bytes_total", mode="multipart") - sample(
        before, "stowage_upload_bytes_total", mode="multipart") == 700
    assert sample(after, "stowage_promotions_total", outcome="stored") == sample(
        before, "stowage_promotions_total", outcome="stored") + 1
    assert sample(after, "stowage_promotion_lag_seconds_count") > sample(
        before, "stowage_promotion_lag_seconds_count")
    assert sample(after, "stowage_attachments", state="stored") == 1
    assert sample(after, "stowage_queue_depth") == 0


async def test_request_id_is_echoed_and_carried_into_jobs(client, tenant, res):
    r = await client.post("/v1/attachments", headers={**tenant.headers,
                                                      "X-Request-ID": "req-abc.123"},
                          files={"file": ("a.txt", b"trace me")})
    assert r.headers["x-request-id"] == "req-abc.123"
    att_id = r.json()["id"]
    job = Job(f"promote:{att_id}:1", res.redis, _queue_name=res.settings.queue_name)
    info = await job.info()
    assert info is not None and info.kwargs == {"request_id": "req-abc.123"}
    r = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"
    assert len(r.headers["x-request-id"]) == 32


async def test_logs_are_json_with_request_ids_and_an_access_log(settings, tmp_path, tenant):
    port = free_port()
    log = tmp_path / "api.log"
    with process(["serve", "--port", str(port)], env_for(settings), log):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        async with httpx.AsyncClient() as c:
            r = await c.post(f"http://127.0.0.1:{port}/v1/attachments/raw",
                             headers={**tenant.headers, "X-Request-ID": "log-check-1"},
                             content=b"logged")
        assert r.status_code == 201
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    access = [x for x in lines if x.get("logger") == "stowage.access"
              and x.get("request_id") == "log-check-1"]
    assert access and access[0]["status"] == 201 and access[0]["method"] == "POST"
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)


async def test_worker_metrics_endpoint(tmp_path, database_url, client, tenant, res):
    port = free_port()
    settings = settings_with(res.settings, worker_metrics_port=port)
    await client.post("/v1/attachments", headers=tenant.headers,
                      files={"file": ("a.txt", b"worker metrics")})
    with process(["worker"], env_for(settings), tmp_path / "w.log"):
        wait_http(f"http://127.0.0.1:{port}/metrics")

        async def promoted():
            text = (await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics")).text
            return sample(text, "stowage_jobs_total", function="promote", outcome="stored")

        assert await wait_for(promoted, within=15) == 1


async def test_worker_sigterm_finishes_the_running_job(tmp_path, database_url, client, tenant,
                                                        res, storage_files):
    settings = settings_with(res.settings, shutdown_grace=20)
    env = {**env_for(settings), "STOWAGE_FAILPOINTS": "promote.after_copy=sleep:2"}
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("a.txt", b"finish me")})
    att_id = uuid.UUID(r.json()["id"])
    with process(["worker"], env, tmp_path / "w.log") as worker:
        async def mid_job():
            return (await storage_files())[1] != []  # copied, still inside the failpoint
        await wait_for(mid_job, within=15)
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 15)
    row = await _get(res, att_id)
    assert row["state"] == "stored"


async def _get(res, att_id):
    async with res.pool.acquire() as conn:
        return await conn.fetchrow("SELECT state FROM attachments WHERE id = $1", att_id)


def test_api_sigterm_lets_an_inflight_upload_finish(settings, tmp_path, tenant):
    port = free_port()
    result: dict = {}

    def slow_body():
        for _ in range(20):
            yield b"x" * 10_000
            time.sleep(0.1)

    def upload():
        with httpx.Client() as c:
            result["r"] = c.post(f"http://127.0.0.1:{port}/v1/attachments/raw",
                                 headers=tenant.headers, content=slow_body(), timeout=30)

    with process(["serve", "--port", str(port)], env_for(settings),
                 tmp_path / "api.log") as api:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        t = threading.Thread(target=upload)
        t.start()
        time.sleep(0.5)  # the upload is streaming
        os.kill(api.pid, signal.SIGTERM)
        t.join(30)
        api.wait(15)
        assert api.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert result["r"].status_code == 201
    assert result["r"].json()["size"] == 200_000


def _doctor(env: dict[str, str]) -> tuple[int, str]:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "app.cli", "doctor"], env=env,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout


def test_doctor_says_what_is_wrong(settings, res):
    code, out = _doctor(env_for(settings))
    assert code == 0, out
    assert "ok    postgres" in out and "ok    cache storage" in out
    env = {**env_for(settings), "STOWAGE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "STOWAGE_STORE_URL": "s3://no-such-bucket", "STOWAGE_S3_ENDPOINT_URL":
           f"http://127.0.0.1:{free_port()}"}
    code, out = _doctor(env)
    assert code == 1
    assert "FAIL  redis" in out and "FAIL  store storage" in out
    assert "ok    postgres" in out
