"""Leftovers of writers that died (temp files, unfinished S3 multipart uploads) are found by
fsck and removed by the worker's sweep after a grace period, and by `fsck --repair`; what a
live tus upload still needs is kept."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import time
import uuid
from pathlib import Path

from app.storage.base import is_temp_name
from tests.conftest import (
    env_for,
    free_port,
    process,
    settings_with,
    wait_for,
    wait_http,
)

MiB = 1024 * 1024


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and is_temp_name(p.name)]


async def test_api_killed_mid_upload_leaves_temp_files_that_fsck_and_sweep_find(
        tmp_path, database_url, tenant, res):
    settings = res.settings
    cache_root = Path(settings.cache_url.removeprefix("file://"))
    port = free_port()
    socks = []
    with process(["serve", "--port", str(port)], env_for(settings), tmp_path / "api.log") as api:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        for _ in range(2):  # two uploads in flight, 3 of their 20 MiB sent
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall((f"POST /v1/attachments/raw?filename=big.bin HTTP/1.1\r\n"
                       f"Host: x\r\nAuthorization: Bearer {tenant.api_key}\r\n"
                       f"Content-Length: {20 * MiB}\r\n\r\n").encode() + b"x" * (3 * MiB))
            socks.append(s)

        async def writing() -> bool:
            return len(temp_files(cache_root)) == 2
        await wait_for(writing, within=15)
        os.killpg(api.pid, signal.SIGKILL)  # the API's every process: a crash of the host
        api.wait(10)
    for s in socks:
        s.close()
    left = temp_files(cache_root)
    assert len(left) == 2 and all(p.stat().st_size > 0 for p in left)

    report = await res.fsck.check(grace=0)
    assert report.leftovers == 2 and report.leftover_bytes >= 2 * MiB
    assert not report.clean and report.exit_code == 1
    assert "leftovers of interrupted writes: 2" in report.to_text()
    young = await res.fsck.check(grace=3600)
    assert young.leftovers == 0  # within the grace: a live writer's, maybe
    assert await res.leftovers.sweep(3600) == [] and len(temp_files(cache_root)) == 2

    # a worker whose leftover grace is short removes them by itself
    worker_settings = settings_with(res.settings, leftover_grace=2)
    with process(["worker"], env_for(worker_settings), tmp_path / "worker.log"):
        async def gone() -> bool:
            return temp_files(cache_root) == []
        await wait_for(gone, within=20, interval=0.5)
    assert (await res.fsck.check(grace=0)).clean


async def test_s3_unfinished_multipart_uploads_are_aborted_but_not_a_live_tus_upload(s3_env):
    res, client, tenant, cache_bucket, _ = s3_env
    s3 = res.cache.client
    # what a writer killed mid-upload leaves: a multipart upload with a part, never completed
    dead_key = f"{tenant.app_id}/{uuid.uuid4()}/upload"
    dead = await s3.create_multipart_upload(Bucket=cache_bucket, Key=dead_key)
    await s3.upload_part(Bucket=cache_bucket, Key=dead_key, UploadId=dead["UploadId"],
                         PartNumber=1, Body=b"d" * (5 * MiB))
    # a tus upload in progress: 6 of its 12 MiB sent, a multipart upload open for hours
    body = bytes(range(256)) * (12 * MiB // 256)
    tus_headers = {**tenant.headers, "Tus-Resumable": "1.0.0"}
    r = await client.post("/v1/tus/", headers={**tus_headers, "Upload-Length": str(len(body))})
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    r = await client.patch(location, content=body[:6 * MiB], headers={
        **tus_headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 204, r.text
    uploads = (await s3.list_multipart_uploads(Bucket=cache_bucket)).get("Uploads", [])
    assert len(uploads) == 2

    report = await res.fsck.check(grace=0, repair=True)
    assert report.leftovers == 1 and report.leftovers_removed == 1, report.to_text()
    assert report.exit_code == 0
    left = (await s3.list_multipart_uploads(Bucket=cache_bucket)).get("Uploads", [])
    assert [u["Key"] for u in left] != [dead_key] and len(left) == 1

    # the tus upload still completes, whole
    r = await client.patch(location, content=body[6 * MiB:], headers={
        **tus_headers, "Upload-Offset": str(6 * MiB),
        "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 204, r.text
    att_id = r.headers["stowage-attachment-id"]
    got = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
    assert got["sha256"] == hashlib.sha256(body).hexdigest()
    assert (await res.fsck.check(grace=0)).leftovers == 0


async def test_a_long_s3_upload_still_sending_parts_is_not_a_leftover(s3_env):
    """Started long ago is not dead: the age that counts is its newest part's."""
    res, _, tenant, cache_bucket, _ = s3_env
    s3 = res.cache.client
    key = f"{tenant.app_id}/{uuid.uuid4()}/upload"
    up = await s3.create_multipart_upload(Bucket=cache_bucket, Key=key)
    await asyncio.sleep(2.2)
    await s3.upload_part(Bucket=cache_bucket, Key=key, UploadId=up["UploadId"], PartNumber=1,
                         Body=b"p" * (5 * MiB))
    started = time.monotonic()
    assert [x async for x in res.cache.list_leftovers(2.0)] == []
    await asyncio.sleep(max(0.0, 2.2 - (time.monotonic() - started)))
    assert [x.ref.split("\n")[1] async for x in res.cache.list_leftovers(2.0)] == [
        up["UploadId"]]
    await s3.abort_multipart_upload(Bucket=cache_bucket, Key=key, UploadId=up["UploadId"])


def test_remove_leftover_refuses_what_is_not_a_temp_file(tmp_path):
    from app.storage import FilesystemStorage, Leftover

    storage = FilesystemStorage(tmp_path / "root")
    (tmp_path / "root").mkdir()
    keep = tmp_path / "root" / "object"
    keep.write_bytes(b"x")
    outside = tmp_path / ".x.0.part"
    outside.write_bytes(b"x")
    for path in (keep, outside):
        try:
            asyncio.run(storage.remove_leftover(Leftover("x", 1, 9e9, str(path))))
        except ValueError:
            pass
        else:
            raise AssertionError(f"removed {path}")
    assert keep.exists() and outside.exists()



async def test_worker_killed_while_writing_a_derivative_leaves_nothing_for_good(
        tmp_path, database_url, tenant, client, res):
    """SIGKILL during a promotion's derivative write: the temp file it leaves in the store is
    reported by fsck and removed by the next worker, which also finishes the promotion."""
    from app.profiles import load_profiles
    from tests.helpers import jpeg_bytes

    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[profiles.pics]\ntypes = ["image/*"]\n'
                        '[profiles.pics.derivatives.thumb]\nwidth = 20\nheight = 20\n')
    res.rewire(profiles=load_profiles(profiles))
    store_root = Path(res.settings.store_url.removeprefix("file://"))
    r = await client.post("/v1/attachments", headers=tenant.headers, data={"profile": "pics"},
                          files={"file": ("a.jpg", jpeg_bytes(80, 60))})
    assert r.status_code == 201
    att_id = r.json()["id"]
    # a short job timeout: the killed job's in-progress mark in Redis expires 10 s after it
    settings = settings_with(res.settings, profiles_file=str(profiles),
                             leftover_grace=2, job_timeout=5)
    env = {**env_for(settings), "STOWAGE_PROFILES_FILE": str(profiles)}
    with process(["worker"], {**env, "STOWAGE_FAILPOINTS": "storage.before_commit=sleep:60"},
                 tmp_path / "w1.log") as worker:
        async def mid_write() -> bool:
            return len(temp_files(store_root)) == 1
        await wait_for(mid_write, within=20)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    [left] = temp_files(store_root)
    assert left.name.startswith(".thumb.")
    report = await res.fsck.check(grace=0)
    assert report.leftovers == 1
    with process(["worker"], env, tmp_path / "w2.log"):
        async def done() -> bool:
            r = await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)
            return r.json()["state"] == "stored" and temp_files(store_root) == []
        await wait_for(done, within=40, interval=0.5)
    assert (await res.fsck.check(grace=0)).leftovers == 0
