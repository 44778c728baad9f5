"""`stowage fsck`: orphans and broken attachments, on real Postgres, the filesystem and S3
(moto). The checks run through app.ops.fsck directly; one test runs the CLI verb once it is
wired into app/cli.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest

from app.attachments import keys
from app.auth import service as auth
from app.cli import build_parser
from app.ops import fsck as fsck_mod
from app.ops.fsck import nested_prefix, parse_key
from app.storage import FilesystemStorage, S3Storage
from app.uploads import tus
from tests.conftest import AppKey, api_client, env_for, fresh_resources, make_settings, run_worker
from tests.factories import put, row, upload
from tests.helpers import jpeg_bytes


async def once(data: bytes):
    yield data


async def exists(storage, key: str) -> bool:
    return await storage.stat(key) is not None


def backdate(storage: FilesystemStorage, key: str, seconds: float) -> None:
    path = storage.path_for(key)
    t = time.time() - seconds
    os.utime(path, (t, t))


def orphan_reasons(report) -> dict[str, str]:
    return {o.key: o.reason for o in report.orphan_examples}


# --- a clean system --------------------------------------------------------------------------

async def test_clean_system_reports_nothing(res, client, tenant):
    stored = await upload(client, tenant, b"kept")
    await upload(client, tenant, b"waiting", promote="false")  # stays cached, owns its file
    doomed = await upload(client, tenant, b"doomed")
    await run_worker(res)
    await client.delete(f"/v1/attachments/{doomed['id']}", headers=tenant.headers)
    await run_worker(res)
    # a tus upload in progress owns {app}/{upload_id}/tus
    st = await res.tus.create(tenant.app_id, length=100, metadata_header=None)
    await res.tus.append(tenant.app_id, st.id, offset=0, chunks=once(b"x" * 10),
                     content_length=10, checksum=None)
    assert await exists(res.cache, tus.storage_key(tenant.app_id, st.id))

    for repair in (False, True):
        report = await res.fsck.check(grace=0, repair=repair)
        assert report.clean, report.to_text()
        assert (report.orphans, report.broken, report.unrecognized, report.recent) == (0, 0, 0, 0)
        assert report.exit_code == 0
        assert report.scanned == {"cache": 2, "store": 1}
    assert (await row(res, stored["id"]))["state"] == "stored"
    assert await exists(res.cache, tus.storage_key(tenant.app_id, st.id))
    assert "clean" in report.to_text()
    assert json.loads(report.to_json())["exit_code"] == 0


# --- orphans ---------------------------------------------------------------------------------

async def test_orphans_are_reported_and_removed_only_after_the_grace(res, client, tenant):
    app = tenant.app_id
    kept = await upload(client, tenant, b"kept")
    gone = await upload(client, tenant, b"gone")
    await run_worker(res)
    await client.delete(f"/v1/attachments/{gone['id']}", headers=tenant.headers)
    await run_worker(res)
    gone_row = await row(res, gone["id"])
    assert gone_row["purged_at"] is not None
    kept_id, gone_id = uuid.UUID(kept["id"]), uuid.UUID(gone["id"])
    planted = [
        (res.store, f"{app}/{uuid.uuid4()}/original.bin", "no_owner"),
        (res.cache, f"{app}/{uuid.uuid4()}/upload", "no_owner"),
        (res.store, keys.store_key(app, gone_id, "text/plain"), "deleted"),
        (res.cache, keys.cache_key(app, gone_id), "deleted"),
        (res.cache, keys.cache_key(app, kept_id), "cache_purged"),
        (res.store, f"{app}/{kept_id}/derivatives/g1/thumb.webp", "unreferenced"),
        (res.store, f"{uuid.uuid4()}/{kept_id}/original.txt", "wrong_app"),
        (res.cache, f"{app}/{uuid.uuid4()}/tus-tail-10", "no_owner"),  # a tus upload gone
        (res.cache, f"{app}/{kept_id}/tus", "unexpected_key"),
        (res.cache, "_doctor/probe-0123", "doctor_probe"),
    ]
    for storage, key, _ in planted:
        await put(storage, key)
    expected = {key: reason for _, key, reason in planted}
    storage_of = {key: storage for storage, key, _ in planted}

    # young: neither reported nor touched, even when repairing
    report = await res.fsck.check(repair=True, grace=3600, batch_size=3)
    assert (report.orphans, report.orphans_removed, report.recent) == (0, 0, len(expected))
    assert report.exit_code == 0
    for k in expected:
        assert await exists(storage_of[k], k), k

    # an old one is reported under the default grace, the young ones still are not
    old_key = f"{app}/{uuid.uuid4()}/original.bin"
    await put(res.store, old_key)
    backdate(res.store, old_key, 7200)
    report = await res.fsck.check()
    assert report.orphans == 1 and report.recent == len(expected)
    assert orphan_reasons(report) == {old_key: "no_owner"}
    assert report.orphan_examples[0].age_s >= 7199
    expected[old_key] = "no_owner"
    storage_of[old_key] = res.store

    # grace 0, no repair: every one reported with its reason, nothing removed
    report = await res.fsck.check(grace=0, batch_size=3)
    assert report.orphans == len(expected)
    assert orphan_reasons(report) == expected
    assert report.exit_code == 1 and not report.clean
    for k in expected:
        assert await exists(storage_of[k], k), k
    text = report.to_text()
    assert "run with --repair" in text and "cache_purged" in text

    # nearly every object an orphan: refused without force (see test_storage_identity)
    report = await res.fsck.check(grace=0, repair=True, batch_size=3)
    assert report.refused and report.orphans_removed == 0 and report.exit_code == 1
    report = await res.fsck.check(grace=0, repair=True, batch_size=3, force=True)
    assert (report.orphans, report.orphans_removed) == (len(expected), len(expected))
    assert all(o.removed for o in report.orphan_examples)
    assert report.exit_code == 0
    for k in expected:
        assert not await exists(storage_of[k], k), k
    # what is owned survived
    assert await exists(res.store, keys.store_key(app, kept_id, "text/plain"))
    assert (await res.fsck.check(grace=0)).clean


async def test_examples_are_capped_and_json_is_complete(res, tenant):
    for _ in range(5):
        await put(res.store, f"{tenant.app_id}/{uuid.uuid4()}/original.bin")
    report = await res.fsck.check(grace=0, examples=2)
    assert report.orphans == 5 and len(report.orphan_examples) == 2
    data = json.loads(report.to_json())
    assert data["orphans"] == 5 and len(data["orphan_examples"]) == 2
    assert set(data["orphan_examples"][0]) == {"storage", "key", "reason", "owner_id", "age_s",
                                               "removed"}
    assert data["exit_code"] == 1 and data["clean"] is False


async def test_unrecognized_keys_are_reported_and_never_removed(res):
    await put(res.store, "notes/readme.txt")
    await put(res.cache, "not-a-uuid/also-not/upload")
    report = await res.fsck.check(grace=0, repair=True)
    assert report.unrecognized == 2 and report.orphans == 0
    assert sorted(report.unrecognized_examples) == ["cache:not-a-uuid/also-not/upload",
                                                    "store:notes/readme.txt"]
    assert report.exit_code == 1
    assert await exists(res.store, "notes/readme.txt")


async def test_an_attachment_a_job_holds_is_not_repaired(res, client, tenant):
    att = await upload(client, tenant)
    await run_worker(res)
    att_id = uuid.UUID(att["id"])
    stray = await put(res.cache, keys.cache_key(tenant.app_id, att_id))  # cache purged
    async with res.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended('attachment:' || $1, 0))",
                           str(att_id))
        try:
            report = await res.fsck.check(grace=0, repair=True)
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended('attachment:' || $1, 0))",
                str(att_id))
    assert (report.orphans, report.orphans_removed, report.skipped_busy) == (1, 0, 1)
    assert report.exit_code == 1
    assert await exists(res.cache, stray)
    report = await res.fsck.check(grace=0, repair=True)
    assert report.orphans_removed == 1 and not await exists(res.cache, stray)


# --- broken attachments ----------------------------------------------------------------------

async def test_stored_attachment_without_its_original_becomes_failed(res, client, tenant):
    att = await upload(client, tenant, b"precious")
    await run_worker(res)
    # subscribed after the upload, so the worker has no retries of earlier events to wait for
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers,
                          json={"url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 201, r.text
    att_id = uuid.UUID(att["id"])
    original = keys.store_key(tenant.app_id, att_id, "text/plain")
    await res.store.delete(original)  # behind Stowage's back

    report = await res.fsck.check(grace=0)
    assert report.broken == 1 and report.orphans == 0
    b = report.broken_examples[0]
    assert (b.attachment_id, b.state, b.missing) == (att["id"], "stored", [f"store:{original}"])
    assert report.exit_code == 1
    assert (await row(res, att["id"]))["state"] == "stored"  # reporting changes nothing

    report = await res.fsck.check(grace=0, repair=True)
    assert (report.broken, report.broken_repaired) == (1, 1)
    assert report.broken_examples[0].marked_failed and report.exit_code == 0
    failed = await row(res, att["id"])
    assert failed["state"] == "failed" and failed["generation"] > att["generation"]
    assert failed["error"]["code"] == "file_missing"
    assert "original.txt" in failed["error"]["detail"]
    async with res.pool.acquire() as conn:
        events = await conn.fetch("SELECT id, body FROM events WHERE attachment_id = $1"
                                  " AND type = 'attachment.failed'", att_id)
        assert len(events) == 1
        assert events[0]["body"]["data"]["state"] == "failed"
        assert events[0]["body"]["data"]["error"]["code"] == "file_missing"
        deliveries = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", events[0]["id"])
    assert deliveries == 1
    r = await client.get(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    assert r.json()["state"] == "failed" and r.json()["error"]["code"] == "file_missing"
    # once failed it owns nothing and is no longer broken
    assert (await res.fsck.check(grace=0)).clean


async def test_cached_attachment_without_its_cache_object_becomes_failed(res, client, tenant):
    att = await upload(client, tenant, promote="false")
    await res.cache.delete(keys.cache_key(tenant.app_id, uuid.UUID(att["id"])))
    report = await res.fsck.check(grace=0, repair=True)
    assert (report.broken, report.broken_repaired) == (1, 1)
    failed = await row(res, att["id"])
    assert failed["state"] == "failed" and failed["error"]["code"] == "file_missing"
    assert "no longer in the cache" in failed["error"]["detail"]
    # promoting it now is refused like any failed attachment
    r = await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    assert r.status_code == 409


async def test_many_broken_attachments_are_paged(res, client, tenant):
    atts = [await upload(client, tenant, promote="false") for _ in range(5)]
    for att in atts:
        await res.cache.delete(keys.cache_key(tenant.app_id, uuid.UUID(att["id"])))
    report = await res.fsck.check(grace=0, repair=True, batch_size=2, examples=3)
    assert (report.broken, report.broken_repaired, len(report.broken_examples)) == (5, 5, 3)
    for att in atts:
        assert (await row(res, att["id"]))["state"] == "failed"


async def test_a_row_changed_during_the_scan_is_not_called_broken(res, client, tenant):
    att = await upload(client, tenant, promote="false")
    await res.cache.delete(keys.cache_key(tenant.app_id, uuid.UUID(att["id"])))
    original = fsck_mod.repo.collect_missing

    async def touch_then_collect(conn, scan_started):
        await conn.execute("UPDATE attachments SET updated_at = now() WHERE id = $1",
                           uuid.UUID(att["id"]))
        return await original(conn, scan_started)

    fsck_mod.repo.collect_missing = touch_then_collect
    try:
        report = await res.fsck.check(grace=0, repair=True)
    finally:
        fsck_mod.repo.collect_missing = original
    assert report.broken == 0
    assert (await row(res, att["id"]))["state"] == "cached"


PROFILES = """
[profiles.avatar]
types = ["image/jpeg", "image/png"]

[profiles.avatar.derivatives.thumb]
width = 32
height = 32
format = "webp"
"""


async def test_derivatives_old_generation_is_orphan_missing_one_is_broken(env_factory):
    res = (await env_factory("file", profiles=PROFILES)).res
    async with api_client(res) as client:
        new = await auth.create_app(res.pool, "fsck")
        tenant = AppKey(new.app_id, new.api_key)
        r = await client.post("/v1/attachments", headers=tenant.headers,
                              data={"profile": "avatar"},
                              files={"file": ("a.jpg", jpeg_bytes(100, 80), "image/jpeg")})
        assert r.status_code == 201, r.text
        att_id = uuid.UUID(r.json()["id"])
        await run_worker(res)
        stored = await row(res, str(att_id))
        assert stored["state"] == "stored"
        thumb_key = stored["derivatives"]["thumb"]["key"]
        assert "/derivatives/g" in thumb_key
        assert (await res.fsck.check(grace=0)).clean

        old_gen = f"{tenant.app_id}/{att_id}/derivatives/g0/thumb.webp"
        await put(res.store, old_gen)
        report = await res.fsck.check(grace=0)
        assert orphan_reasons(report) == {old_gen: "unreferenced"} and report.broken == 0

        await res.store.delete(thumb_key)
        report = await res.fsck.check(grace=0, repair=True)
        assert report.orphans_removed == 1 and not await exists(res.store, old_gen)
        assert report.broken_repaired == 1
        assert report.broken_examples[0].missing == [f"store:{thumb_key}"]
        failed = await row(res, str(att_id))
        assert failed["state"] == "failed" and failed["error"]["code"] == "file_missing"
        assert "derivatives/" in failed["error"]["detail"]
        # like a failed promotion, the failed attachment keeps no store files
        assert not await exists(res.store, stored["key"])
        assert (await res.fsck.check(grace=0)).clean


# --- where the storages are ------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["same", "store_inside_cache", "cache_inside_store"])
async def test_overlapping_storages_are_told_apart(tmp_path, database_url, layout):
    root = tmp_path / "files"
    cache_url, store_url = {
        "same": (f"file://{root}", f"file://{root}"),
        "store_inside_cache": (f"file://{root}", f"file://{root}/store"),
        "cache_inside_store": (f"file://{root}/cache", f"file://{root}"),
    }[layout]
    settings = make_settings(tmp_path, database_url, cache_url=cache_url, store_url=store_url)
    async with fresh_resources(settings) as res, api_client(res) as client:
        new = await auth.create_app(res.pool, "fsck")
        tenant = AppKey(new.app_id, new.api_key)
        await upload(client, tenant, b"stored")
        cached = await upload(client, tenant, b"cached", promote="false")
        await run_worker(res)
        report = await res.fsck.check(grace=0, repair=True)
        assert report.clean, report.to_text()
        assert sum(report.scanned.values()) == 2
        # and a missing file is still found
        await res.cache.delete(keys.cache_key(tenant.app_id, uuid.UUID(cached["id"])))
        report = await res.fsck.check(grace=0)
        assert report.broken == 1 and report.orphans == 0


@pytest.mark.parametrize("store_prefix", ["", "/store"])
async def test_s3_cache_and_store_in_one_bucket(tmp_path, database_url, moto_endpoint,
                                                s3_client, store_prefix):
    bucket = f"both-{uuid.uuid4().hex[:8]}"
    await s3_client.create_bucket(Bucket=bucket)
    settings = make_settings(tmp_path, database_url, cache_url=f"s3://{bucket}",
                             store_url=f"s3://{bucket}{store_prefix}",
                             s3_endpoint_url=moto_endpoint, s3_region="us-east-1")
    async with fresh_resources(settings) as res, api_client(res) as client:
        new = await auth.create_app(res.pool, "fsck")
        tenant = AppKey(new.app_id, new.api_key)
        await upload(client, tenant, b"stored")
        await upload(client, tenant, b"cached", promote="false")
        await run_worker(res)
        report = await res.fsck.check(grace=0, repair=True)
        assert report.clean, report.to_text()
        assert sum(report.scanned.values()) == 2


def test_nested_prefix_and_parse_key(tmp_path):
    a, b = FilesystemStorage(tmp_path), FilesystemStorage(tmp_path / "x" / "y")
    assert nested_prefix(a, a) == ""
    assert nested_prefix(a, b) == "x/y/"
    assert nested_prefix(b, a) is None
    client = SimpleNamespace(meta=SimpleNamespace(endpoint_url="http://s3"))
    other = SimpleNamespace(meta=SimpleNamespace(endpoint_url="http://elsewhere"))
    root, files, cache = (S3Storage(client, "b"), S3Storage(client, "b", "files"),
                          S3Storage(client, "b", "files/cache"))
    assert nested_prefix(root, files) == "files/"
    assert nested_prefix(files, cache) == "cache/"
    assert nested_prefix(files, S3Storage(client, "b", "files")) == ""
    assert nested_prefix(cache, files) is None
    assert nested_prefix(S3Storage(client, "b", "filesx"), cache) is None
    assert nested_prefix(root, S3Storage(client, "c")) is None
    assert nested_prefix(root, S3Storage(other, "b")) is None
    assert nested_prefix(root, a) is None
    app, att = uuid.uuid4(), uuid.uuid4()
    p = parse_key(f"{app}/{att}/derivatives/g2/thumb.webp")
    assert p is not None and (p.app_id, p.owner_id, p.rest) == (app, att,
                                                                "derivatives/g2/thumb.webp")
    assert parse_key(f"{app}/{att}") is None
    assert parse_key(f"{str(app).upper()}/{att}/upload") is None
    assert parse_key("_doctor/probe-1") is None


# --- S3: presigned and tus uploads own their objects -----------------------------------------

async def test_s3_presigns_and_tus_uploads_are_not_orphans(s3_env):
    res, client, tenant, _, _ = s3_env
    app = tenant.app_id
    att = await upload(client, tenant, b"on s3")
    await run_worker(res)
    assert (await row(res, att["id"]))["state"] == "stored"

    # an unregistered presigned upload: the object is in the bucket, the row in presigned_uploads
    r = await client.post("/v1/presigned-uploads", headers=tenant.headers,
                          json={"filename": "a.txt", "size": 5})
    assert r.status_code == 201, r.text
    p = r.json()
    async with httpx.AsyncClient() as plain:
        r = await plain.post(p["url"], data=p["fields"], files={"file": ("f", b"hello")})
    assert r.status_code in (200, 201, 204)
    # a tus upload in progress on S3: its bytes wait in a tail object
    st = await res.tus.create(app, length=100, metadata_header=None)
    await res.tus.append(app, st.id, offset=0, chunks=once(b"y" * 10), content_length=10,
                     checksum=None)
    tus_keys = [k async for k in res.cache.list_keys(f"{app}/{st.id}/")]
    assert tus_keys and all(k.split("/")[2].startswith("tus") for k in tus_keys)

    store_orphan = await put(res.store, f"{app}/{uuid.uuid4()}/original.bin")
    cache_orphan = await put(res.cache, f"{app}/{uuid.uuid4()}/upload")
    report = await res.fsck.check(grace=0)
    assert orphan_reasons(report) == {store_orphan: "no_owner", cache_orphan: "no_owner"}
    assert report.broken == 0 and report.recent == 0
    assert report.orphan_examples[0].age_s is not None  # S3 LastModified

    report = await res.fsck.check(grace=3600, repair=True)  # young: left alone
    assert report.orphans == 0 and report.recent == 2
    assert await exists(res.store, store_orphan) and await exists(res.cache, cache_orphan)

    report = await res.fsck.check(grace=0, repair=True)
    assert report.orphans_removed == 2 and report.exit_code == 0
    assert not await exists(res.store, store_orphan)
    assert not await exists(res.cache, cache_orphan)
    assert await exists(res.cache, p["key"])
    assert all([await exists(res.cache, k) for k in tus_keys])

    # a presign being registered has no row left, but its id is young: not an orphan yet
    async with res.pool.acquire() as conn:
        await conn.execute("DELETE FROM presigned_uploads WHERE key = $1", p["key"])
    report = await res.fsck.check(grace=0, repair=True)
    assert report.orphans == 0 and report.recent == 1
    assert await exists(res.cache, p["key"])

    # broken on S3 too
    await res.store.delete(keys.store_key(app, uuid.UUID(att["id"]), "text/plain"))
    report = await res.fsck.check(grace=0, repair=True)
    assert report.broken_repaired == 1
    assert (await row(res, att["id"]))["error"]["code"] == "file_missing"


# --- the CLI ---------------------------------------------------------------------------------

def _has_fsck_verb() -> bool:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return "fsck" in sub.choices


@pytest.mark.skipif(not _has_fsck_verb(),
                    reason="`stowage fsck` is not wired into app/cli.py (build_parser) yet")
async def test_cli_fsck(res, tenant, settings):
    env = env_for(settings)

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "fsck", *args, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli("--json", "--grace", "0")
    assert code == 0, err
    assert json.loads(out)["clean"] is True
    orphan = await put(res.store, f"{tenant.app_id}/{uuid.uuid4()}/original.bin")
    code, out, err = await cli("--json", "--grace", "0")
    assert code == 1, err
    assert json.loads(out)["orphan_examples"][0]["key"] == orphan
    code, out, _ = await cli("--repair", "--grace", "3600")  # too young: kept
    assert code == 0 and "recent unowned objects" in out
    assert await exists(res.store, orphan)
    code, out, err = await cli("--repair", "--grace", "0")
    assert code == 0, err
    assert "removed 1" in out and not await exists(res.store, orphan)
    code, _, err = await cli("--grace", "-1")
    assert code == 2 and "grace" in err


def test_grace_seconds():
    assert fsck_mod.grace_seconds("0") == 0 and fsck_mod.grace_seconds("1.5") == 1.5
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(ValueError):
            fsck_mod.grace_seconds(bad)

