"""Nothing leaked, nothing stuck, no 500s: pixel limits for any image size, downloads racing a
promotion, a full or read-only disk, presigned uploads larger than they said.

Real Postgres, Redis, filesystems (a small tmpfs for "disk full") and moto; no mocks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import httpx
import pytest

from app.attachments import work
from app.auth import service as auth
from tests.conftest import (
    AppKey,
    api_client,
    env_for,
    files_under,
    free_port,
    fresh_resources,
    is_marker,
    make_settings,
    process,
    run_worker,
    storage_root,
    wait_http,
)
from tests.factories import age

# --- max_pixels holds for images of any size (Pillow's own bomb guard must not hide them) ---

PIXEL_PROFILES = """
[profiles.photos]
types = ["image/png", "image/jpeg"]
max_pixels = 40_000_000

[profiles.anything]
types = ["image/*"]
"""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height (1-bit grey) and a token IDAT: a few dozen
    bytes that decode to hundreds of megapixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def huge_jpeg(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 claiming width x height, SOS and a few bytes of scan: enough for
    any header parser."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 16 + b"\xff\xd9"


def jpeg_with_metadata_first(width: int, height: int, metadata: int) -> bytes:
    """``huge_jpeg``, its SOF behind ``metadata`` bytes of APP2 segments (an ICC profile
    or XMP that large is ordinary in photos): the size is not in the first 64 KiB."""
    segment = b"\xff\xe2" + struct.pack(">H", 65535) + b"\0" * 65533
    body = huge_jpeg(width, height)
    return body[:2] + segment * (metadata // len(segment) + 1) + body[2:]


@pytest.fixture
async def pixel_env(env_factory):
    res = (await env_factory("file", profiles=PIXEL_PROFILES)).res
    async with api_client(res) as client:
        new = await auth.create_app(res.pool, "pixels")
        yield res, client, AppKey(new.app_id, new.api_key)


async def _rows_and_files(res) -> tuple[int, list[str]]:
    async with res.pool.acquire() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM attachments")
    return rows, files_under(storage_root(res, "cache")) + files_under(storage_root(res, "store"))


@pytest.mark.parametrize("make", [huge_png, huge_jpeg], ids=["png", "jpeg"])
@pytest.mark.parametrize("size", [(20000, 20000), (60000, 5000)], ids=["400MP", "300MP"])
async def test_max_pixels_refuses_images_beyond_pillows_bomb_limit(pixel_env, make, size):
    res, client, tenant = pixel_env
    data = make(*size)
    assert len(data) < 1000
    for how in ("multipart", "raw"):
        if how == "multipart":
            r = await client.post("/v1/attachments", headers=tenant.headers,
                                  data={"profile": "photos"},
                                  files={"file": ("bomb", data, "application/octet-stream")})
        else:
            r = await client.post("/v1/attachments/raw", params={"profile": "photos"},
                                  headers=tenant.headers, content=data)
        assert r.status_code == 422, (how, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert f"{size[0] * size[1]} pixels" in r.json()["detail"]
        assert await _rows_and_files(res) == (0, [])


async def test_max_pixels_holds_when_the_size_is_past_the_first_bytes(pixel_env):
    res, client, tenant = pixel_env

    async def network(data: bytes):  # as a socket delivers it, not in one piece
        for i in range(0, len(data), 16384):
            yield data[i:i + 16384]

    data = jpeg_with_metadata_first(20000, 20000, metadata=300_000)
    r = await client.post("/v1/attachments/raw", params={"profile": "photos"},
                          headers=tenant.headers, content=network(data))
    assert r.status_code == 422, r.text
    assert "400000000 pixels" in r.json()["detail"]
    assert await _rows_and_files(res) == (0, [])
    # and the size of an allowed one is read from as far in
    r = await client.post("/v1/attachments/raw", params={"profile": "photos"},
                          headers=tenant.headers,
                          content=network(jpeg_with_metadata_first(640, 480, 300_000)))
    assert r.status_code == 201, r.text
    # (the APP2 segments in front are no ICC profile: photos strips metadata, so they went)
    assert r.json()["metadata"] == {"width": 640, "height": 480, "orientation": 1,
                                    "stripped": ["app2"]}


async def test_max_pixels_holds_for_a_tus_upload_too(pixel_env):
    """tus checks the file where it lies once complete (ingest.inspect), as far in."""
    res, client, tenant = pixel_env
    data = jpeg_with_metadata_first(20000, 20000, metadata=300_000)
    tus = {"Tus-Resumable": "1.0.0", **tenant.headers}
    r = await client.post("/v1/tus/", headers={
        **tus, "Upload-Length": str(len(data)),
        "Upload-Metadata": "profile " + base64.b64encode(b"photos").decode()})
    assert r.status_code == 201, r.text
    r = await client.patch(r.headers["location"], content=data, headers={
        **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 422, r.text
    assert "400000000 pixels" in r.json()["detail"]
    async with res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachments") == 0


async def test_huge_image_dimensions_are_reported_without_a_pixel_limit(pixel_env):
    _, client, tenant = pixel_env
    r = await client.post("/v1/attachments", headers=tenant.headers, data={"profile": "anything"},
                          files={"file": ("big.png", huge_png(20000, 20000))})
    assert r.status_code == 201, r.text
    assert r.json()["metadata"] == {"width": 20000, "height": 20000, "orientation": 1}


# --- a presigned upload holds to the size it declared ---

async def test_presigned_upload_larger_than_declared_is_refused(s3_env, s3_client):
    res, client, tenant, cache_bucket, _ = s3_env
    r = await client.post("/v1/presigned-uploads", headers=tenant.headers,
                          json={"filename": "f.bin", "size": 500_000})
    assert r.status_code == 201, r.text
    p = r.json()
    policy = json.loads(base64.b64decode(p["fields"]["policy"]))
    assert ["content-length-range", 0, 500_000] in policy["conditions"]
    data = b"x" * 900_000
    async with httpx.AsyncClient() as plain:
        posted = await plain.post(p["url"], data=p["fields"], files={"file": ("f", data)})
    if posted.status_code >= 300:
        # S3 enforced the policy. Not every S3-compatible store does (moto does not):
        # registration must refuse on its own, so put the object there regardless.
        await s3_client.put_object(Bucket=cache_bucket, Key=p["key"], Body=data)
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": p["key"]})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "900000" in r.json()["detail"] and "500000" in r.json()["detail"]
    listed = await s3_client.list_objects_v2(Bucket=cache_bucket)
    assert [o for o in listed.get("Contents", []) if not is_marker(o["Key"])] == []
    async with res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachments") == 0
        assert await conn.fetchval("SELECT count(*) FROM presigned_uploads") == 0
    # what was declared still registers
    p = (await client.post("/v1/presigned-uploads", headers=tenant.headers,
                           json={"filename": "f.bin", "size": 500_000})).json()
    async with httpx.AsyncClient() as plain:
        posted = await plain.post(p["url"], data=p["fields"],
                                  files={"file": ("f", data[:500_000])})
    assert posted.status_code < 300
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": p["key"]})
    assert r.status_code == 201 and r.json()["size"] == 500_000


# --- a download racing the promotion gets the whole file ---

async def test_download_racing_the_cache_purge_gets_the_whole_file(settings, tmp_path, client,
                                                                   tenant, res, storage_files):
    """The API reads the row (file in the cache), the worker promotes and purges the cached
    copy, then the API opens the file: it must serve the stored copy, not a 200 that breaks
    off. The failpoint holds the request between the row read and the open."""
    data = bytes(range(256)) * 8192  # 2 MiB: more than one read chunk
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          files={"file": ("race.bin", data)})
    assert r.status_code == 201, r.text
    att_id = r.json()["id"]
    port = free_port()
    env = {**env_for(settings), "STOWAGE_FAILPOINTS": "download.before_open=sleep:4"}
    with process(["serve", "--port", str(port)], env, tmp_path / "api.log"):
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        async with httpx.AsyncClient(timeout=30) as http:
            download = asyncio.create_task(http.get(
                f"http://127.0.0.1:{port}/v1/attachments/{att_id}/content",
                headers=tenant.headers))
            await asyncio.sleep(1)  # the row is read (storage: cache); now at the failpoint
            await run_worker(res)  # promotes, then removes the cached copy
            cache, store = await storage_files()
            assert cache == [] and len(store) == 1
            assert not download.done(), "the download was not held between row and file"
            got = await download
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_derivative_download_racing_a_reprocess_gets_the_new_one(tmp_path, database_url):
    """Likewise for a derivative whose file a reprocess replaced (and removed) meanwhile."""
    from PIL import Image

    from tests.helpers import png_bytes

    path = tmp_path / "profiles.toml"
    path.write_text('[profiles.pics]\ntypes = ["image/png"]\n'
                    '[profiles.pics.derivatives.thumb]\nwidth = 50\nheight = 50\n'
                    'format = "png"\n')
    settings = make_settings(tmp_path, database_url, profiles_file=str(path))
    async with fresh_resources(settings) as res, api_client(res) as client:
        new = await auth.create_app(res.pool, "derivatives")
        tenant = AppKey(new.app_id, new.api_key)
        r = await client.post("/v1/attachments", headers=tenant.headers, data={"profile": "pics"},
                              files={"file": ("p.png", png_bytes(400, 200))})
        att_id = r.json()["id"]
        await run_worker(res)
        before = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
        assert before["state"] == "stored"
        port = free_port()
        env = {**env_for(settings), "STOWAGE_PROFILES_FILE": str(path),
               "STOWAGE_FAILPOINTS": "download.before_open=sleep:4"}
        with process(["serve", "--port", str(port)], env, tmp_path / "api.log"):
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
            async with httpx.AsyncClient(timeout=30) as http:
                download = asyncio.create_task(http.get(
                    f"http://127.0.0.1:{port}/v1/attachments/{att_id}/derivatives/thumb",
                    headers=tenant.headers))
                await asyncio.sleep(1)
                r = await client.post(f"/v1/attachments/{att_id}/reprocess",
                                      headers=tenant.headers)
                assert r.status_code == 202
                await run_worker(res)  # new derivatives swapped in, the old files removed
                after = (await client.get(f"/v1/attachments/{att_id}",
                                          headers=tenant.headers)).json()
                assert after["generation"] > before["generation"]
                assert not download.done(), "the download was not held between row and file"
                got = await download
    assert got.status_code == 200
    assert len(got.content) == after["derivatives"]["thumb"]["size"]
    assert Image.open(io.BytesIO(got.content)).size == (50, 25)


# --- a full disk is not an outage, nor is a folder that may not be written ---

@pytest.fixture
def tiny_disk(tmp_path):
    """A real filesystem that fills up: a 1 MiB tmpfs (mounting needs root; skipped without)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Take every byte left on ``disk``."""
    filler = disk / "filler"
    # unbuffered: a buffer left holding the bytes that did not fit would fail its close
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def grow(disk: Path) -> None:
    """The operator makes room: the tmpfs grows to 8 MiB."""
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)


@contextlib.contextmanager
def immutable(path: Path):
    """``chattr +i``: not even root may create anything in ``path`` (EPERM)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@contextlib.asynccontextmanager
async def service_on(tmp_path, database_url, **storage_urls):
    settings = make_settings(tmp_path, database_url, **storage_urls)
    async with fresh_resources(settings) as res, api_client(res) as client:
        new = await auth.create_app(res.pool, "disks")
        yield res, client, AppKey(new.app_id, new.api_key)


async def test_upload_into_a_full_cache_is_507_and_leaves_nothing(tmp_path, database_url,
                                                                   tiny_disk):
    async with service_on(tmp_path, database_url,
                          cache_url=f"file://{tiny_disk}/cache") as (res, client, tenant):
        data = os.urandom(3 * 1024 * 1024)  # three times the disk
        for how in ("multipart", "raw"):
            if how == "multipart":
                r = await client.post("/v1/attachments", headers=tenant.headers,
                                      files={"file": ("big.bin", data)})
            else:
                r = await client.post("/v1/attachments/raw", headers=tenant.headers,
                                      content=data)
            assert r.status_code == 507, (how, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert "retry-after" not in r.headers
            problem = r.json()
            assert problem["type"].endswith("/insufficient-storage")
            assert "ENOSPC" in problem["detail"] and str(tiny_disk) not in problem["detail"]
            async with res.pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM attachments") == 0
            assert [p for p in tiny_disk.rglob("*") if p.is_file() and not is_marker(p)] == []
        # what fits still goes in
        r = await client.post("/v1/attachments", headers=tenant.headers,
                              files={"file": ("small.txt", b"fits")})
        assert r.status_code == 201, r.text


async def test_readyz_names_the_full_storage_and_the_errno(tmp_path, database_url, tiny_disk):
    async with service_on(tmp_path, database_url,
                          store_url=f"file://{tiny_disk}/store") as (_, client, _tenant):
        assert (await client.get("/readyz")).status_code == 200
        filler = fill(tiny_disk)
        r = await client.get("/readyz")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert checks["cache"] == "ok" and checks["postgres"] == "ok"
        assert "ENOSPC" in checks["store"] and str(tiny_disk) in checks["store"]
        filler.unlink()
        assert (await client.get("/readyz")).status_code == 200


async def test_upload_into_an_unwritable_cache_is_a_configuration_error(tmp_path, database_url):
    # started first: a storage that cannot take its identity marker does not start at all
    async with service_on(tmp_path, database_url) as (res, client, tenant):
        with immutable(tmp_path / "cache"):
            r = await client.post("/v1/attachments", headers=tenant.headers,
                                  files={"file": ("a.txt", b"hello")})
            assert r.status_code == 500, r.text  # not 503: waiting does not fix it
            assert "retry-after" not in r.headers
            assert r.json()["type"].endswith("/storage-misconfigured")
            assert "EPERM" in r.json()["detail"]
            async with res.pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM attachments") == 0
            r = await client.get("/readyz")
            assert r.status_code == 503 and "EPERM" in r.json()["checks"]["cache"]


def test_doctor_names_the_unwritable_storage_path_and_operation(settings, res):
    store = storage_root(res, "store")
    with immutable(store):
        done = subprocess.run([sys.executable, "-m", "app.cli", "doctor"],
                              env=env_for(settings), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = [x for x in done.stdout.splitlines() if "store storage" in x]
    assert line.startswith("FAIL")
    assert "EPERM" in line and "write into" in line and str(store) in line
    assert "ok    cache storage" in done.stdout


async def _activity(res, att_id) -> list:
    async with res.pool.acquire() as conn:
        return await conn.fetch("SELECT kind, detail FROM attachment_activity"
                                " WHERE attachment_id = $1 ORDER BY id", att_id)


@pytest.mark.parametrize("trouble", ["full", "unwritable"])
async def test_promotion_into_a_store_that_cannot_take_it_waits_and_says_why(
        tmp_path, database_url, tiny_disk, trouble):
    store = tiny_disk / "store"
    async with service_on(tmp_path, database_url,
                          store_url=f"file://{store}") as (res, client, tenant):
        data = os.urandom(2 * 1024 * 1024)  # twice the store's disk
        r = await client.post("/v1/attachments", headers=tenant.headers,
                              files={"file": ("big.bin", data)})
        assert r.status_code == 201, r.text
        att_id = uuid.UUID(r.json()["id"])
        with contextlib.ExitStack() as undo:
            if trouble == "unwritable":
                grow(tiny_disk)
                undo.enter_context(immutable(store))
            # one try, then the job ends: no quick retries (arq's would take minutes here)
            await asyncio.wait_for(run_worker(res), 30)
            assert await res.redis.zcard(res.settings.queue_name) == 0
            att = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
            assert att["state"] == "cached" and att["error"] is None  # the upload is fine
            blocked = [a["detail"] for a in await _activity(res, att_id)
                       if a["kind"] == "promotion.blocked"]
            code, errno_name = {"full": ("storage_full", "ENOSPC"),
                                "unwritable": ("storage_access_denied", "EPERM")}[trouble]
            assert [(b["code"], b["errno"]) for b in blocked] == [(code, errno_name)]
            assert str(tmp_path) not in blocked[0]["detail"]  # paths are for the operators
            # nothing half-written
            assert [p for p in store.rglob("*") if p.is_file() and not is_marker(p)] == []
            # the work keeps the whole story for the operator, and its attempts: waiting
            # for room must not use them up and fail a good upload
            async with res.pool.acquire() as conn:
                w = await conn.fetchrow(
                    "SELECT attempts, last_error, next_attempt_at - now() AS wait"
                    " FROM attachment_work WHERE attachment_id = $1 AND kind = 'promote'",
                    att_id)
            assert w["attempts"] == 0
            assert errno_name in w["last_error"] and str(store) in w["last_error"]
            assert 50 < w["wait"].total_seconds() <= work.BLOCKED_RETRY
            await age(res, res.settings.stale_job_after + 0.2)
            assert att_id not in (await res.sweep.run()).promotions  # not in a tight loop
        # the operator makes room (or fixes the folder); BLOCKED_RETRY later the sweep offers
        # the promotion again
        if trouble == "full":
            grow(tiny_disk)
        async with res.pool.acquire() as conn:
            await conn.execute("UPDATE attachment_work SET next_attempt_at = now()")
        report = await res.sweep.run()
        assert report is not None and att_id in report.promotions
        await asyncio.wait_for(run_worker(res), 30)
        att = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
        assert att["state"] == "stored"
        got = await client.get(f"/v1/attachments/{att_id}/content", headers=tenant.headers)
        assert got.content == data
