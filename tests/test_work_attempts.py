"""Attempts at attachment work live in Postgres: a promotion that keeps running out of time
gives up after STOWAGE_JOB_MAX_ATTEMPTS (failed, `timeout`, event emitted, nothing left in the
store) instead of copying the file forever; deadlines grow with the file; work Redis lost is
enqueued again by the next sweep, not a minute later."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

from app import failpoints
from app.attachments import work
from app.config import load_settings
from tests.conftest import (
    env_for,
    lose_queued_jobs,
    process,
    run_worker,
    settings_with,
    wait_for,
)
from tests.factories import age
from tests.test_lifecycle import state_of, upload


def test_deadlines_grow_with_the_file() -> None:
    s = load_settings(job_timeout=60, job_min_throughput=1_000_000, job_timeout_max=3600)
    assert work.deadline_for(s, 0) == 60
    assert work.deadline_for(s, 100_000_000) == 160
    assert work.deadline_for(s, 10**12) == 3600  # capped


async def test_a_promotion_that_keeps_timing_out_gives_up(client, tenant, res, storage_files,
                                                          monkeypatch):
    monkeypatch.setattr(res.settings, "job_timeout", 1)
    monkeypatch.setattr(res.settings, "job_max_attempts", 2)
    # every attempt stalls past its 1 s deadline after copying to the store
    monkeypatch.setitem(failpoints._POINTS, "promote.after_copy", 3)
    att = await upload(client, tenant, b"too slow" * 100)
    started = time.monotonic()
    await run_worker(res)  # attempt 1, retry, attempt 2, retry, attempt 3 gives up
    assert time.monotonic() - started < 30
    got = await state_of(client, tenant, att["id"])
    assert got["state"] == "failed", got
    assert got["error"]["code"] == "timeout", got["error"]
    assert "2 attempts" in got["error"]["detail"]
    async with res.pool.acquire() as conn:
        types = [r["type"] for r in await conn.fetch(
            "SELECT type FROM events WHERE attachment_id = $1 ORDER BY created_at",
            uuid.UUID(att["id"]))]
        left = await conn.fetchval("SELECT count(*) FROM attachment_work")
    assert types == ["attachment.cached", "attachment.failed"]
    assert left == 0
    await run_worker(res)  # the purge of the cached copy
    assert await storage_files() == ([], [])


async def test_a_failed_attempt_is_recorded_and_waits_its_backoff(client, tenant, res,
                                                                  monkeypatch):
    """An attempt that fails keeps its error and next attempt time in Postgres, and the
    sweep does not enqueue it again before then."""

    monkeypatch.setattr(res.settings, "job_timeout", 1)
    monkeypatch.setitem(failpoints._POINTS, "promote.after_copy", 3)
    att = await upload(client, tenant, b"retry me")
    att_id = uuid.UUID(att["id"])
    async with res.pool.acquire() as conn:
        attempt = await work.begin(conn, res.settings, work.PROMOTE, att_id)
        assert attempt is not None and attempt.number == 1 and not attempt.exhausted
        delay = await work.failed(conn, attempt, "boom", timed_out=False)
        row = await conn.fetchrow("SELECT * FROM attachment_work WHERE attachment_id = $1",
                                  att_id)
    assert delay == work.BACKOFF[0]
    assert row["last_error"] == "boom" and row["attempts"] == 1 and row["next_attempt_at"]
    await lose_queued_jobs(res.redis, res.settings.queue_name)
    await age(res, res.settings.stale_job_after + 0.2)
    report = await res.sweep.run()
    assert att_id not in report.promotions  # still waiting out its backoff
    await age(res, delay, backoffs=True)  # its backoff is over
    report = await res.sweep.run()
    assert att_id in report.promotions


async def test_work_redis_lost_resumes_within_one_sweep(tmp_path, database_url, client, tenant,
                                                        res, redis_client):
    """Redis loses every queued job while the worker is stopped: the default settings (but
    a 2 s sweep interval) promote them again within the interval plus the short grace."""
    settings = settings_with(res.settings, sweep_interval=2, stale_job_after=5)
    with process(["worker"], env_for(settings), tmp_path / "w.log") as worker:
        await asyncio.sleep(0.5)
        worker.send_signal(signal.SIGSTOP)
        try:
            ids = [(await upload(client, tenant, f"lost {i}".encode()))["id"] for i in range(3)]
            assert len(await lose_queued_jobs(redis_client, settings.queue_name)) == 3
        finally:
            worker.send_signal(signal.SIGCONT)
        lost_at = time.monotonic()

        async def all_stored():
            states = {(await state_of(client, tenant, i))["state"] for i in ids}
            return states == {"stored"}
        await wait_for(all_stored, within=settings.sweep_interval + settings.stale_job_after + 5)
    assert time.monotonic() - lost_at < settings.sweep_interval + settings.stale_job_after + 5
