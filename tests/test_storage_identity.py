"""Storages carry an identity that the database records: commands run from the wrong folder,
or against an empty bucket, refuse instead of "repairing" the data; `fsck --repair` refuses
to change more than a small share of it without --force.

Through the real `stowage` command where the issue says so, against real Postgres, the
filesystem and moto S3."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.attachments import keys
from app.auth import service as auth
from app.db import create_pool
from app.ops.fsck import repair_limit
from app.storage import MARKER_KEY, FilesystemStorage, read_marker, write_marker
from app.storage_identity.service import Target, verify
from tests.conftest import (
    AppKey,
    api_client,
    env_for,
    files_under,
    forget_storage_identities,
    free_port,
    fresh_resources,
    make_settings,
    run_worker,
)
from tests.factories import put, upload
from tests.test_cli import Result, run_cli

RELATIVE = {"STOWAGE_CACHE_URL": "file://./var/cache", "STOWAGE_STORE_URL": "file://./var/store"}


async def recorded(database_url: str) -> dict[str, uuid.UUID]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT role, storage_id FROM storage_identities")
    finally:
        await conn.close()
    return {r["role"]: r["storage_id"] for r in rows}


async def states(res: Any) -> dict[uuid.UUID, tuple[str, int]]:
    async with res.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, state, generation FROM attachments")
    return {r["id"]: (r["state"], r["generation"]) for r in rows}


@contextlib.asynccontextmanager
async def fresh_pool(settings: Any) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, max_size=5)
    try:
        yield pool
    finally:
        await pool.close()


@dataclass
class Deployment:
    """An operator's setup: `home/var/{cache,store}`, run as `file://./var/...` from home."""

    res: Any
    client: httpx.AsyncClient
    tenant: AppKey
    home: Path
    env: dict[str, str]  # relative storage URLs, as the default settings have them
    ids: dict[str, uuid.UUID]  # the storages the database recorded

    def files(self) -> tuple[list[str], list[str]]:
        var = self.home / "var"
        return files_under(var / "cache"), files_under(var / "store")

    async def snapshot(self) -> tuple[Any, ...]:
        return await states(self.res), self.files()


@pytest.fixture
async def deployment(tmp_path, database_url):
    home = tmp_path / "home"
    home.mkdir()
    # the test process runs elsewhere: in it, the same folders by absolute path
    settings = make_settings(tmp_path, database_url, cache_url=f"file://{home}/var/cache",
                             store_url=f"file://{home}/var/store")
    async with fresh_resources(settings) as res, api_client(res) as client:
        new = await auth.create_app(res.pool, "owner")
        tenant = AppKey(new.app_id, new.api_key)
        for i in range(3):
            await upload(client, tenant, f"stored {i}".encode())
        await upload(client, tenant, b"waits for its promotion", promote="false")
        await run_worker(res)
        yield Deployment(res, client, tenant, home, {**env_for(settings), **RELATIVE},
                         await recorded(database_url))


def wrong_folder(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def assert_refused(result: Result, *names: object) -> None:
    assert result.returncode == 2, str(result)
    assert "Traceback" not in result.stderr, str(result)
    for name in names:
        assert str(name) in result.stderr, f"{name} not named\n{result}"
    assert "Nothing was changed" in result.stderr, str(result)


# --- the wrong folder --------------------------------------------------------------------------

async def test_fsck_repair_from_another_folder_is_refused_and_changes_nothing(deployment,
                                                                               tmp_path):
    d = deployment
    before = await d.snapshot()
    assert len(before[1][1]) == 3 and len(before[1][0]) == 1
    elsewhere = wrong_folder(tmp_path)

    result = await run_cli("fsck", "--repair", "--grace", "0", env=d.env, cwd=elsewhere)
    assert_refused(result, d.ids["cache"], d.ids["store"], elsewhere / "var" / "store",
                   d.home / "var" / "store", "file://./var/store is relative")
    assert await d.snapshot() == before  # no attachment failed, no file removed
    assert not (elsewhere / "var").exists()

    # another installation's storage there: both ids are named
    other = await write_marker(FilesystemStorage(elsewhere / "var" / "store"), "store")
    result = await run_cli("fsck", "--repair", "--grace", "0", env=d.env, cwd=elsewhere)
    assert_refused(result, other.id, d.ids["store"])
    assert await d.snapshot() == before

    # from its own folder all is well
    result = await run_cli("fsck", "--repair", "--grace", "0", env=d.env, cwd=d.home)
    assert result.returncode == 0 and "clean" in result.stdout, str(result)
    assert await d.snapshot() == before


async def test_doctor_from_another_folder_fails_and_creates_nothing(deployment, tmp_path):
    d = deployment
    elsewhere = wrong_folder(tmp_path)
    result = await run_cli("doctor", env=d.env, cwd=elsewhere)
    assert result.returncode == 1, str(result)
    assert "all good" not in result.stdout
    for role in ("cache", "store"):
        (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(f"FAIL  {role}")]
        assert str(elsewhere / "var" / role) in line and str(d.ids[role]) in line, line
        assert str(d.home / "var" / role) in line, line
    assert "stowage storage adopt" in result.stdout
    assert not (elsewhere / "var").exists()  # neither the folders nor a probe were made

    result = await run_cli("doctor", env=d.env, cwd=d.home)
    assert result.returncode == 0 and "all good" in result.stdout, str(result)
    for role in ("cache", "store"):
        (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(f"ok    {role}")]
        # the absolute path the relative URL means, and the identity
        assert f"file://./var/{role} ({d.home / 'var' / role})" in line, line
        assert f"storage {d.ids[role]}, as recorded" in line, line


@pytest.mark.parametrize("command", ["serve", "worker", "dev"])
async def test_serve_worker_and_dev_refuse_to_start_in_another_folder(deployment, tmp_path,
                                                                       command):
    d = deployment
    before = await d.snapshot()
    elsewhere = wrong_folder(tmp_path)
    args = [command] if command == "worker" else [command, "--port", str(free_port())]
    result = await run_cli(*args, env=d.env, cwd=elsewhere)
    assert_refused(result, d.ids["cache"], d.ids["store"], elsewhere / "var" / "cache")
    assert not (elsewhere / "var").exists()
    assert await d.snapshot() == before


async def test_fsck_against_an_empty_bucket_is_refused(s3_env, s3_client, moto_endpoint):
    res, client, tenant, _, store_bucket = s3_env
    att = await upload(client, tenant, b"on s3")
    await run_worker(res)
    ids = await recorded(res.settings.database_url)
    empty = f"empty-{secrets.token_hex(4)}"
    await s3_client.create_bucket(Bucket=empty)
    env = {**env_for(res.settings), "STOWAGE_S3_ENDPOINT_URL": moto_endpoint,
           "STOWAGE_S3_REGION": "us-east-1", "STOWAGE_STORE_URL": f"s3://{empty}/files"}

    result = await run_cli("fsck", "--repair", "--grace", "0", env=env)
    assert_refused(result, ids["store"], f"s3://{empty}/files", f"s3://{store_bucket}/files",
                   "it is empty")
    assert (await s3_client.list_objects_v2(Bucket=empty)).get("KeyCount") == 0  # no marker
    assert (await states(res))[uuid.UUID(att["id"])][0] == "stored"
    assert await recorded(res.settings.database_url) == ids


# --- first use, upgrades and the operator's word -----------------------------------------------

async def test_a_new_setup_records_its_storages_once_also_when_started_together(settings):
    await forget_storage_identities(settings.database_url, and_apps=True)
    roots = {role: Path(getattr(settings, f"{role}_url").removeprefix("file://"))
             for role in ("cache", "store")}
    async with fresh_pool(settings) as pool:
        # five processes starting at once, each with storages of its own making
        results = await asyncio.gather(*(
            verify(pool, [Target(role, FilesystemStorage(root), f"file://{root}")
                          for role, root in roots.items()])
            for _ in range(5)))
    ids = await recorded(settings.database_url)
    assert set(ids) == {"cache", "store"} and ids["cache"] != ids["store"]
    for role, root in roots.items():
        marker = await read_marker(FilesystemStorage(root))
        assert marker is not None and marker.id == ids[role] and marker.role == role
    assert sorted({v.action.value for r in results for v in r}) == ["new", "ok"]


async def test_an_upgrade_adopts_its_storages_and_says_so(deployment):
    d = deployment
    before = await d.snapshot()
    # as a database and storages from before identities are
    await forget_storage_identities(d.res.settings.database_url)
    for role in ("cache", "store"):
        shutil.rmtree(d.home / "var" / role / "_stowage")

    result = await run_cli("fsck", "--grace", "0", env=d.env, cwd=d.home)
    assert result.returncode == 0 and "clean" in result.stdout, str(result)
    assert result.stderr.count("adopted existing files without an identity marker") == 2, result
    ids = await recorded(d.res.settings.database_url)
    for role in ("cache", "store"):
        marker = await read_marker(FilesystemStorage(d.home / "var" / role))
        assert marker is not None and ids[role] == marker.id
        assert str(marker.id) in result.stderr
    assert await d.snapshot() == before
    again = await run_cli("fsck", "--grace", "0", env=d.env, cwd=d.home)
    assert again.returncode == 0 and "adopted" not in again.stderr, str(again)


async def test_an_upgrade_run_from_another_folder_is_refused(deployment, tmp_path):
    """Before identities, nothing is recorded: an empty folder must still not be taken for the
    storage of a database whose attachments have files."""
    d = deployment
    await forget_storage_identities(d.res.settings.database_url)
    for role in ("cache", "store"):
        shutil.rmtree(d.home / "var" / role / "_stowage")
    before = await d.snapshot()
    elsewhere = wrong_folder(tmp_path)

    result = await run_cli("fsck", "--repair", "--grace", "0", env=d.env, cwd=elsewhere)
    assert_refused(result, elsewhere / "var" / "store", "database has attachments whose files")
    assert await recorded(d.res.settings.database_url) == {}
    assert not (elsewhere / "var").exists()
    assert await d.snapshot() == before


async def test_a_storage_restored_without_its_marker_is_refused_until_adopted(deployment):
    d = deployment
    before = await d.snapshot()
    (d.home / "var" / "store" / MARKER_KEY).unlink()

    result = await run_cli("fsck", "--grace", "0", env=d.env, cwd=d.home)
    assert_refused(result, d.ids["store"], "holds files but no identity marker")
    assert (await d.snapshot())[1] == before[1]

    adopted = await run_cli("storage", "adopt", "store", env=d.env, cwd=d.home)
    assert adopted.returncode == 0, str(adopted)
    marker = await read_marker(FilesystemStorage(d.home / "var" / "store"))
    assert marker is not None and marker.id != d.ids["store"]
    assert str(marker.id) in adopted.stdout and str(d.ids["store"]) in adopted.stdout
    assert await recorded(d.res.settings.database_url) == {**d.ids, "store": marker.id}
    result = await run_cli("fsck", "--grace", "0", env=d.env, cwd=d.home)
    assert result.returncode == 0 and "clean" in result.stdout, str(result)


async def test_a_storage_moved_with_its_marker_is_still_itself(deployment, tmp_path):
    d = deployment
    moved = tmp_path / "new-disk"
    shutil.move(d.home / "var", moved)
    env = {**d.env, "STOWAGE_CACHE_URL": f"file://{moved}/cache",
           "STOWAGE_STORE_URL": f"file://{moved}/store"}
    result = await run_cli("fsck", "--grace", "0", env=env)
    assert result.returncode == 0 and "clean" in result.stdout, str(result)
    assert f"moved: from {d.home / 'var' / 'store'} to {moved / 'store'}" in result.stderr
    conn = await asyncpg.connect(d.res.settings.database_url)
    try:
        where = await conn.fetchval(
            "SELECT location FROM storage_identities WHERE role = 'store'")
    finally:
        await conn.close()
    assert where == str(moved / "store")


# --- fsck --repair changes a small share at most without --force --------------------------------

async def test_fsck_repair_refuses_to_fail_most_attachments_without_force(res, client, tenant,
                                                                          settings):
    atts = [await upload(client, tenant, f"file {i}".encode()) for i in range(8)]
    await run_worker(res)
    for att in atts:  # gone behind Stowage's back, the markers still there
        await res.store.delete(keys.store_key(tenant.app_id, uuid.UUID(att["id"]),
                                              "text/plain"))
    before = await states(res)
    env = env_for(settings)

    result = await run_cli("fsck", "--repair", "--grace", "0", env=env)
    assert result.returncode == 1, str(result)
    assert "REFUSED TO REPAIR: 8 of 8 attachments (100%) would be marked failed" \
        in result.stdout, str(result)
    assert "--force" in result.stdout and "nothing changed" in result.stdout
    assert await states(res) == before

    as_json = await run_cli("fsck", "--repair", "--grace", "0", "--json", env=env)
    data = json.loads(as_json.stdout)
    assert data["refused"] and data["exit_code"] == 1 and data["broken_repaired"] == 0
    assert await states(res) == before

    forced = await run_cli("fsck", "--repair", "--force", "--grace", "0", env=env)
    assert forced.returncode == 0, str(forced)
    assert {state for state, _ in (await states(res)).values()} == {"failed"}


async def test_fsck_repair_refuses_to_remove_most_files_without_force(res, client, tenant,
                                                                      settings):
    kept = [await upload(client, tenant, f"kept {i}".encode()) for i in range(2)]
    await run_worker(res)
    strays = [await put(res.store, f"{tenant.app_id}/{uuid.uuid4()}/original.bin")
              for _ in range(6)]
    env = env_for(settings)

    result = await run_cli("fsck", "--repair", "--grace", "0", env=env)
    assert result.returncode == 1, str(result)
    assert re.search(r"6 of \d+ objects \(\d+%\) would be removed", result.stdout), str(result)
    assert all([await res.store.stat(k) is not None for k in strays])

    forced = await run_cli("fsck", "--repair", "--force", "--grace", "0", env=env)
    assert forced.returncode == 0 and "removed 6" in forced.stdout, str(forced)
    assert not any([await res.store.stat(k) is not None for k in strays])
    assert {state for state, _ in (await states(res)).values()} == {"stored"}
    assert len(kept) == 2


async def test_fsck_repair_under_the_limit_needs_no_force(res, client, tenant, settings):
    atts = [await upload(client, tenant, f"file {i}".encode()) for i in range(8)]
    await run_worker(res)
    broken = atts[0]
    await res.store.delete(keys.store_key(tenant.app_id, uuid.UUID(broken["id"]), "text/plain"))
    result = await run_cli("fsck", "--repair", "--grace", "0", env=env_for(settings))
    assert result.returncode == 0 and "all repaired" in result.stdout, str(result)
    assert (await states(res))[uuid.UUID(broken["id"])][0] == "failed"

    usage = await run_cli("fsck", "--force", env=env_for(settings))
    assert usage.returncode == 2 and "--force goes with --repair" in usage.stderr, str(usage)


def test_repair_limit_is_the_larger_of_five_and_a_tenth():
    assert [repair_limit(n) for n in (0, 5, 28, 59, 60, 61, 1000)] == [5, 5, 5, 5, 6, 6, 100]
