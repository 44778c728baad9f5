"""The lifecycle through the worker: promotion, two-phase uploads, slots, deletion, expiry,
the sweep, and the promotion races of DESIGN.md (replace/delete during promotion, twice at once)."""

from __future__ import annotations

import asyncio
import uuid

from app.attachments import keys
from app.storage import Storage
from tests.conftest import lose_queued_jobs, run_worker
from tests.factories import age, upload


async def state_of(client, tenant, att_id):
    r = await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)
    return r.json()


async def test_promotion_moves_file_to_store_and_clears_cache(client, tenant, res, storage_files):
    att = await upload(client, tenant, b"x" * 1000)
    await run_worker(res)
    got = await state_of(client, tenant, att["id"])
    assert got["state"] == "stored" and got["stored_at"]
    assert got["generation"] > att["generation"]
    cache, store = await storage_files()
    assert cache == []
    assert store == [keys.store_key(tenant.app_id, uuid.UUID(att["id"]), "text/plain")]
    r = await client.get(f"/v1/attachments/{att['id']}/content", headers=tenant.headers)
    assert r.content == b"x" * 1000


async def test_two_phase_upload_waits_for_promote(client, tenant, res):
    att = await upload(client, tenant, promote="false")
    await run_worker(res)
    assert (await state_of(client, tenant, att["id"]))["state"] == "cached"
    r = await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    assert r.status_code == 202
    await run_worker(res)
    assert (await state_of(client, tenant, att["id"]))["state"] == "stored"
    # promoting again is harmless
    r = await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    assert r.status_code == 202 and r.json()["state"] == "stored"


async def test_promote_deleted_is_409(client, tenant, res):
    att = await upload(client, tenant, promote="false")
    await client.delete(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    r = await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    assert r.status_code == 409
    assert r.json()["type"].endswith("invalid-state")


async def test_delete_marks_at_once_and_removes_every_file(client, tenant, res, storage_files):
    att = await upload(client, tenant)
    await run_worker(res)
    r = await client.delete(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    assert r.status_code == 202 and r.json()["state"] == "deleted"
    assert (await state_of(client, tenant, att["id"]))["state"] == "deleted"
    assert (await client.get(f"/v1/attachments/{att['id']}/content",
                             headers=tenant.headers)).status_code == 409
    await run_worker(res)
    assert await storage_files() == ([], [])
    async with res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT purged_at FROM attachments WHERE id = $1",
                                   uuid.UUID(att["id"]))
    # deleting again is fine
    assert (await client.delete(f"/v1/attachments/{att['id']}",
                                headers=tenant.headers)).status_code == 202


async def test_slot_replacement_deletes_the_old_one_when_the_new_is_stored(
        client, tenant, res, storage_files):
    slot = {"record_type": "user", "record_id": "1", "record_name": "avatar"}
    first = await upload(client, tenant, b"first", **slot)
    await run_worker(res)
    second = await upload(client, tenant, b"second", **slot)
    # until the new one is stored, the old one stays current and served
    assert (await state_of(client, tenant, first["id"]))["state"] == "stored"
    r = await client.get(f"/v1/attachments/{first['id']}/content", headers=tenant.headers)
    assert r.content == b"first"
    await run_worker(res)
    assert (await state_of(client, tenant, second["id"]))["state"] == "stored"
    old = await state_of(client, tenant, first["id"])
    assert old["state"] == "deleted"
    assert old["error"] == {"code": "replaced", "detail": f"replaced by {second['id']}"}
    await run_worker(res)  # the old one's destroy
    cache, store = await storage_files()
    assert cache == [] and len(store) == 1 and second["id"] in store[0]
    r = await client.get("/v1/attachments?record_type=user&record_id=1&record_name=avatar"
                         "&state=stored", headers=tenant.headers)
    assert [a["id"] for a in r.json()["items"]] == [second["id"]]


async def test_a_failed_replacement_leaves_the_current_one(client, tenant, res, tmp_path):
    """A corrupt image replacing a stored avatar: the new one fails, the old one stays."""
    from tests.helpers import jpeg_bytes

    slot = {"record_type": "user", "record_id": "100", "record_name": "avatar"}
    prof = res.profiles
    # a profile with derivatives, so that an image that does not decode fails
    from app.profiles import load_profiles
    profiles_file = tmp_path / "profiles.toml"
    profiles_file.write_text(
        '[profiles.avatar]\ntypes = ["image/*"]\n'
        '[profiles.avatar.derivatives.thumb]\nwidth = 20\nheight = 20\n')
    res.rewire(profiles=load_profiles(profiles_file))
    try:
        cat = await upload(client, tenant, jpeg_bytes(), profile="avatar", **slot)
        await run_worker(res)
        assert (await state_of(client, tenant, cat["id"]))["state"] == "stored"
        corrupt = jpeg_bytes()[:200]  # sniffs as JPEG, does not decode
        bad = await upload(client, tenant, corrupt, profile="avatar", **slot)
        await run_worker(res)
        assert (await state_of(client, tenant, bad["id"]))["state"] == "failed"
        assert (await state_of(client, tenant, cat["id"]))["state"] == "stored"
        # promote=false: the old one stays until the new one is promoted and stored
        later = await upload(client, tenant, jpeg_bytes(30, 30), profile="avatar",
                             promote="false", **slot)
        await run_worker(res)
        assert (await state_of(client, tenant, cat["id"]))["state"] == "stored"
        await client.post(f"/v1/attachments/{later['id']}/promote", headers=tenant.headers)
        await run_worker(res)
        assert (await state_of(client, tenant, later["id"]))["state"] == "stored"
        assert (await state_of(client, tenant, cat["id"]))["error"]["code"] == "replaced"
    finally:
        res.rewire(profiles=prof)


async def test_concurrent_uploads_into_one_slot_leave_the_last_one(client, tenant, res):
    """Six uploads at once, then their promotions at once, in any order: the one uploaded
    last is stored, every other one is deleted (replaced)."""
    slot = {"record_type": "doc", "record_id": "5", "record_name": "scan"}
    results = await asyncio.gather(*[upload(client, tenant, f"v{i}".encode(), promote="false",
                                            **slot) for i in range(6)])
    ids = [uuid.UUID(r["id"]) for r in results]
    async with res.pool.acquire() as conn:
        last = await conn.fetchval("SELECT id FROM attachments WHERE record_id = '5'"
                                   " ORDER BY created_at DESC, id DESC LIMIT 1")
    for att_id in reversed(ids):
        await client.post(f"/v1/attachments/{att_id}/promote", headers=tenant.headers)
    outcomes = await asyncio.gather(*[res.attachments.promote(att_id) for att_id in ids])
    assert outcomes.count("stored") >= 1
    async with res.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, state, error FROM attachments WHERE record_id = '5'")
    states = {r["id"]: r["state"] for r in rows}
    assert states[last] == "stored"
    assert [s for i, s in states.items() if i != last] == ["deleted"] * 5
    assert all(r["error"]["code"] == "replaced" for r in rows if r["id"] != last)


async def test_unpromoted_upload_expires_after_ttl(client, tenant, res, storage_files):
    att = await upload(client, tenant, promote="false")
    async with res.pool.acquire() as conn:
        await conn.execute("UPDATE attachments SET expires_at = now() - interval '1 second'")
    report = await res.sweep.run()
    assert report.expired == [uuid.UUID(att["id"])]
    got = await state_of(client, tenant, att["id"])
    assert got["state"] == "deleted" and got["error"]["code"] == "expired"
    await run_worker(res)
    assert await storage_files() == ([], [])


async def test_sweep_recovers_jobs_redis_lost(client, tenant, res, redis_client, storage_files):
    kept = await upload(client, tenant, b"keep")
    gone = await upload(client, tenant, b"gone")
    await client.delete(f"/v1/attachments/{gone['id']}", headers=tenant.headers)
    assert len(await lose_queued_jobs(redis_client, res.settings.queue_name)) == 3
    await run_worker(res)
    assert (await state_of(client, tenant, kept["id"]))["state"] == "cached"
    await age(res, res.settings.stale_job_after + 0.2)
    report = await res.sweep.run()
    assert uuid.UUID(kept["id"]) in report.promotions
    assert uuid.UUID(gone["id"]) in report.destroys
    await run_worker(res)
    assert (await state_of(client, tenant, kept["id"]))["state"] == "stored"
    cache, store = await storage_files()
    assert cache == [] and len(store) == 1 and kept["id"] in store[0]


async def test_sweep_purges_a_leftover_cached_copy(client, tenant, res, storage_files):
    att = await upload(client, tenant, promote="false")
    await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    # as if the worker died right after committing `stored`, before deleting the cached file
    row = await res.attachments.get(tenant.app_id, uuid.UUID(att["id"]))
    store_key = keys.store_key(tenant.app_id, row["id"], row["mime_type"])
    await res.store.copy_from(res.cache, row["key"], store_key)
    async with res.pool.acquire() as conn:
        await conn.execute("UPDATE attachments SET state='stored', storage='store', key=$2,"
                           " updated_at = now() - interval '1 hour' WHERE id=$1", row["id"],
                           store_key)
    await res.redis.delete(res.settings.queue_name)
    report = await res.sweep.run()
    assert report.cache_purges == [row["id"]]
    await run_worker(res)
    assert (await storage_files())[0] == []


async def test_promotion_of_a_vanished_cache_file_fails_cleanly(client, tenant, res):
    att = await upload(client, tenant)
    row = await res.attachments.get(tenant.app_id, uuid.UUID(att["id"]))
    await res.cache.delete(row["key"])
    assert await res.attachments.promote(row["id"]) == "failed"
    got = await state_of(client, tenant, att["id"])
    assert got["state"] == "failed" and got["error"]["code"] == "file_missing"


class PausingStore:
    """Wraps the store: copy_from finishes, then waits until the test lets it go on."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.copied = asyncio.Event()
        self.release = asyncio.Event()

    async def copy_from(self, *args, **kwargs):
        await self.inner.copy_from(*args, **kwargs)
        self.copied.set()
        await self.release.wait()

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def _promote_paused(res, att_id):
    pausing = PausingStore(res.store)
    real = res.store
    res.rewire(store=pausing)
    task = asyncio.create_task(res.attachments.promote(att_id))
    await asyncio.wait_for(pausing.copied.wait(), 5)
    return task, pausing, real


async def test_delete_during_promotion_aborts_and_cleans_up(client, tenant, res, storage_files):
    att = await upload(client, tenant, promote="false")
    await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    task, pausing, real = await _promote_paused(res, uuid.UUID(att["id"]))
    assert len((await storage_files())[1]) == 1  # the copy is in the store
    r = await client.delete(f"/v1/attachments/{att['id']}", headers=tenant.headers)
    assert r.status_code == 202
    pausing.release.set()
    assert await task == "aborted"
    res.rewire(store=real)
    await run_worker(res)  # the destroy job
    assert (await state_of(client, tenant, att["id"]))["state"] == "deleted"
    assert await storage_files() == ([], [])


async def test_replace_during_promotion_keeps_the_old_until_the_new_is_stored(
        client, tenant, res, storage_files):
    slot = {"record_type": "user", "record_id": "3", "record_name": "avatar"}
    old = await upload(client, tenant, b"old", promote="false", **slot)
    await client.post(f"/v1/attachments/{old['id']}/promote", headers=tenant.headers)
    task, pausing, real = await _promote_paused(res, uuid.UUID(old["id"]))
    new = await upload(client, tenant, b"new", **slot)
    pausing.release.set()
    assert await task == "stored"  # the new one is not stored yet: the old one is current
    res.rewire(store=real)
    await run_worker(res)
    assert (await state_of(client, tenant, old["id"]))["state"] == "deleted"
    assert (await state_of(client, tenant, new["id"]))["state"] == "stored"
    await run_worker(res)
    cache, store = await storage_files()
    assert cache == [] and len(store) == 1 and new["id"] in store[0]


async def test_an_older_upload_stored_after_a_newer_one_is_replaced_at_once(
        client, tenant, res, storage_files):
    slot = {"record_type": "user", "record_id": "4", "record_name": "avatar"}
    older = await upload(client, tenant, b"older", promote="false", **slot)
    newer = await upload(client, tenant, b"newer", **slot)
    await run_worker(res)
    assert (await state_of(client, tenant, newer["id"]))["state"] == "stored"
    await client.post(f"/v1/attachments/{older['id']}/promote", headers=tenant.headers)
    await run_worker(res)
    got = await state_of(client, tenant, older["id"])
    assert got["state"] == "deleted" and got["error"]["code"] == "replaced"
    assert (await state_of(client, tenant, newer["id"]))["state"] == "stored"
    await run_worker(res)
    cache, store = await storage_files()
    assert cache == [] and len(store) == 1 and newer["id"] in store[0]


async def test_same_promotion_twice_at_once_stores_exactly_one_file(client, tenant, res,
                                                                   storage_files):
    att = await upload(client, tenant, b"z" * 5000, promote="false")
    await client.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    outcomes = await asyncio.gather(*[res.attachments.promote(uuid.UUID(att["id"]))
                                      for _ in range(4)])
    assert sorted(outcomes) == ["skipped", "skipped", "skipped", "stored"]
    cache, store = await storage_files()
    assert cache == [] and len(store) == 1
    r = await client.get(f"/v1/attachments/{att['id']}/content", headers=tenant.headers)
    assert r.content == b"z" * 5000
