"""Malware scanning in the lifecycle (issue 20), against a real clamd (tests/clamd_server.py)
with the tests' own signatures: a file of a `scan = true` profile is stored only after a clean
scan; an infected one fails (`infected`, the signature), is quarantined, and never reaches the
store, whatever way it was uploaded; clamd down means the file waits; a file clamd cannot take
fails clearly; a rescan with a new signature finds what the first scan could not."""

from __future__ import annotations

import base64
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import service as auth
from app.bootstrap import Services, build_services
from app.config import ConfigError
from tests.clamd_server import EICAR, EICAR_SIGNATURE, MARKER, MARKER_SIGNATURE, ClamdServer
from tests.conftest import (
    AppKey,
    api_client,
    fresh_resources,
    lose_queued_jobs,
    make_settings,
    run_worker,
)

PROFILES = """
[profiles.scanned]
scan = true

[profiles.pics]
scan = true
types = ["image/*"]
[profiles.pics.derivatives.thumb]
width = 20
height = 20
[profiles.pics.transforms]
max_width = 100
max_height = 100

[profiles.plain]
"""
TUS = {"Tus-Resumable": "1.0.0"}


@dataclass
class Env:
    res: Services
    client: httpx.AsyncClient
    tenant: AppKey
    root: Path
    clamd: ClamdServer

    def files(self, area: str) -> list[Path]:
        top = self.root / area
        return sorted(p for p in top.rglob("*")
                      if p.is_file() and not p.name.startswith(("_", ".")) and
                      "_stowage" not in p.parts) if top.exists() else []

    async def upload(self, data: bytes, profile: str = "scanned", **query: str) -> dict:
        r = await self.client.post("/v1/attachments/raw", params={"profile": profile, **query},
                                   content=data, headers=self.tenant.headers)
        assert r.status_code == 201, r.text
        return r.json()

    async def get(self, att_id: str) -> dict:
        r = await self.client.get(f"/v1/attachments/{att_id}", headers=self.tenant.headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def events(self, att_id: str) -> list[str]:
        async with self.res.pool.acquire() as conn:
            return [r["type"] for r in await conn.fetch(
                "SELECT type FROM events WHERE attachment_id = $1 ORDER BY created_at", att_id)]


def env_settings(tmp_path: Path, database_url: str, clamd: ClamdServer, **more: Any):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    values = {"clamd_url": clamd.unix_url, "quarantine_url": f"file://{tmp_path}/quarantine",
              "profiles_file": profiles, **more}
    return make_settings(tmp_path, database_url, **values)


@pytest.fixture
async def env(tmp_path, database_url, clamd):
    settings = env_settings(tmp_path, database_url, clamd)
    async with fresh_resources(settings) as res, api_client(res) as client:
        made = await auth.create_app(res.pool, "scanning")
        yield Env(res, client, AppKey(made.app_id, made.api_key), tmp_path, clamd)


def infected_as(att: dict, signature: str) -> bool:
    return (att["state"] == "failed" and att["error"]["code"] == "infected"
            and att["error"]["detail"].startswith(signature))


async def test_a_clean_file_is_stored_with_its_scan(env):
    att = await env.upload(b"nothing to see here\n" * 100)
    await run_worker(env.res)
    got = await env.get(att["id"])
    assert got["state"] == "stored"
    scan = got["metadata"]["scan"]
    assert scan["result"] == "clean" and scan["engine"].startswith("ClamAV ")
    assert scan["database"] and re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", scan["scanned_at"])
    assert len(env.files("store")) == 1 and env.files("quarantine") == []


async def test_eicar_by_raw_multipart_and_tus_never_reaches_the_store(env):
    ids = [(await env.upload(EICAR))["id"]]
    r = await env.client.post("/v1/attachments", headers=env.tenant.headers,
                              data={"profile": "scanned"}, files={"file": ("e.com", EICAR)})
    assert r.status_code == 201, r.text
    ids.append(r.json()["id"])
    r = await env.client.post("/v1/tus/", content=EICAR, headers={
        **TUS, **env.tenant.headers, "Upload-Length": str(len(EICAR)),
        "Content-Type": "application/offset+octet-stream",
        "Upload-Metadata": "profile " + base64.b64encode(b"scanned").decode()})
    assert r.status_code == 201, r.text
    ids.append(r.headers["stowage-attachment-id"])
    await run_worker(env.res)
    for att_id in ids:
        att = await env.get(att_id)
        assert infected_as(att, EICAR_SIGNATURE), att
        assert att["metadata"]["scan"]["result"] == "infected"
        assert att["derivatives"] == {}
        assert "attachment.failed" in await env.events(att_id)
    assert env.files("store") == []
    quarantined = env.files("quarantine")
    assert len(quarantined) == 3 and all(p.read_bytes() == EICAR for p in quarantined)
    assert env.files("cache") == []  # removed from the cache once failed
    metrics = (await env.client.get("/metrics")).text
    assert re.search(r'stowage_scans_total\{result="infected"\} [3-9]', metrics)


async def test_a_signature_across_chunk_boundaries_is_found(env):
    data = os.urandom(300_000) + MARKER + os.urandom(400_000)  # clamd gets it in chunks
    att = await env.upload(data)
    await run_worker(env.res)
    assert infected_as(await env.get(att["id"]), MARKER_SIGNATURE)
    assert env.files("store") == []
    assert [p.read_bytes() for p in env.files("quarantine")] == [data]


async def test_without_a_quarantine_an_infected_file_is_removed(tmp_path, database_url, clamd):
    settings = env_settings(tmp_path, database_url, clamd, quarantine_url="")
    async with fresh_resources(settings) as res, api_client(res) as client:
        made = await auth.create_app(res.pool, "noq")
        env = Env(res, client, AppKey(made.app_id, made.api_key), tmp_path, clamd)
        att = await env.upload(EICAR)
        await run_worker(res)
        assert infected_as(await env.get(att["id"]), EICAR_SIGNATURE)
        assert env.files("store") == env.files("cache") == env.files("quarantine") == []


async def test_a_file_larger_than_clamd_takes_fails_and_is_not_stored(env):
    att = await env.upload(os.urandom(1536 * 1024))  # clamd's StreamMaxLength here: 1 MiB
    await run_worker(env.res)
    got = await env.get(att["id"])
    assert got["state"] == "failed" and got["error"]["code"] == "scan_too_large", got
    assert env.files("store") == []


async def test_profiles_without_scan_are_not_scanned(env):
    att = await env.upload(EICAR, profile="plain")
    await run_worker(env.res)
    got = await env.get(att["id"])
    assert got["state"] == "stored" and "scan" not in (got["metadata"] or {})


async def test_a_clean_image_gets_its_derivatives_and_its_scan(env):
    from tests.helpers import jpeg_bytes

    att = await env.upload(jpeg_bytes(80, 60), profile="pics")
    await run_worker(env.res)
    got = await env.get(att["id"])
    assert got["state"] == "stored" and "thumb" in got["derivatives"]
    assert got["metadata"]["scan"]["result"] == "clean"


async def test_with_clamd_down_files_wait_unstored_then_complete(env):
    att = await env.upload(b"clean and patient\n" * 50)
    readyz = (await env.client.get("/readyz")).json()
    assert readyz["checks"]["clamd"] == "ok"
    env.clamd.stop()
    try:
        await run_worker(env.res)
        got = await env.get(att["id"])
        assert got["state"] == "cached" and env.files("store") == []
        r = await env.client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["clamd"].startswith("error")
        async with env.res.pool.acquire() as conn:
            kinds = [r["kind"] for r in await conn.fetch(
                "SELECT kind FROM attachment_activity WHERE attachment_id = $1", att["id"])]
            attempts = await conn.fetchval(
                "SELECT attempts FROM attachment_work WHERE attachment_id = $1", att["id"])
        assert "promotion.blocked" in kinds
        assert attempts == 0  # waiting for clamd uses up none of the file's attempts
    finally:
        env.clamd.start()
    # the sweep offers it again once its wait is over
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE attachment_work SET next_attempt_at = now()"
                           " WHERE attachment_id = $1", att["id"])
        await conn.execute("UPDATE attachments SET updated_at = now() - interval '1 minute'"
                           " WHERE id = $1", att["id"])
    report = await env.res.sweep.run()
    assert report is not None and att["id"] in map(str, report.promotions)
    await run_worker(env.res)
    got = await env.get(att["id"])
    assert got["state"] == "stored" and got["metadata"]["scan"]["result"] == "clean"


async def test_a_rescan_with_a_new_signature_quarantines_a_stored_file(env):
    from tests.helpers import jpeg_bytes

    payload = b"NEW-THREAT-" + secrets.token_hex(8).encode()
    image = jpeg_bytes(80, 60) + payload  # a JPEG with something appended
    att = await env.upload(image, profile="pics")
    ok = await env.upload(b"fine\n")
    await run_worker(env.res)
    assert (await env.get(att["id"]))["state"] == "stored"
    assert len(env.files("store")) == 3  # two originals and a thumbnail
    r = await env.client.get(f"/v1/attachments/{att['id']}/image", params={"w": 40},
                             headers=env.tenant.headers)
    assert r.status_code == 200 and (await env.get(att["id"]))["variants"]["count"] == 1
    env.clamd.add_body_signature("Stowage.Test.NewThreat", payload)
    for a in (att, ok):
        r = await env.client.post(f"/v1/attachments/{a['id']}/rescan",
                                  headers=env.tenant.headers)
        assert r.status_code == 202, r.text
    await run_worker(env.res)
    got = await env.get(att["id"])
    assert infected_as(got, "Stowage.Test.NewThreat"), got
    assert "attachment.failed" in await env.events(att["id"])
    # its image variant went with its files: no row, nothing counted
    assert got["variants"] == {"count": 0, "bytes": 0}
    async with env.res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachment_variants") == 0
    assert len(env.files("store")) == 1  # only the clean one is left
    assert len(env.files("quarantine")) == 2  # the original and its thumbnail
    clean = await env.get(ok["id"])
    assert clean["state"] == "stored" and clean["metadata"]["scan"]["result"] == "clean"
    async with env.res.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachments"
                                   " WHERE rescan_requested_at IS NOT NULL") == 0
    # a failed attachment is not rescanned
    r = await env.client.post(f"/v1/attachments/{att['id']}/rescan",
                              headers=env.tenant.headers)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"


async def test_a_rescan_redis_lost_is_found_by_the_sweep(env):
    att = await env.upload(b"hello\n")
    await run_worker(env.res)
    r = await env.client.post(f"/v1/attachments/{att['id']}/rescan", headers=env.tenant.headers)
    assert r.status_code == 202
    assert await lose_queued_jobs(env.res.redis, env.res.settings.queue_name)
    async with env.res.pool.acquire() as conn:
        await conn.execute("UPDATE attachments SET rescan_requested_at = now() - interval"
                           " '1 minute' WHERE id = $1", att["id"])
    report = await env.res.sweep.run()
    assert report is not None and [str(i) for i in report.rescans] == [att["id"]]
    before = (await env.get(att["id"]))["metadata"]["scan"]["scanned_at"]
    await run_worker(env.res)
    assert (await env.get(att["id"]))["metadata"]["scan"]["scanned_at"] > before


async def test_rescan_without_a_scanner_is_refused(client, tenant):
    r = await client.post("/v1/attachments/raw", content=b"x", headers=tenant.headers)
    r = await client.post(f"/v1/attachments/{r.json()['id']}/rescan", headers=tenant.headers)
    assert r.status_code == 409 and "STOWAGE_CLAMD_URL" in r.json()["detail"]


async def test_a_scanning_profile_without_clamd_is_a_configuration_error(tmp_path,
                                                                        database_url, clamd):
    settings = env_settings(tmp_path, database_url, clamd, clamd_url="")
    with pytest.raises(ConfigError, match="'pics'"):
        async with build_services(settings):
            pass


async def test_clamd_unreachable_at_start_is_a_warning(tmp_path, database_url, clamd, caplog):
    settings = env_settings(tmp_path, database_url, clamd,
                            clamd_url=f"unix://{tmp_path}/no-clamd.sock")
    async with fresh_resources(settings) as res:
        assert res.scanner.configured
    assert "does not answer" in caplog.text


async def test_an_eicar_uploaded_straight_to_s3_is_quarantined(s3_env_scanning):
    res, client, tenant, qroot = s3_env_scanning
    r = await client.post("/v1/presigned-uploads", headers=tenant.headers,
                          json={"filename": "e.com", "size": len(EICAR), "profile": "scanned"})
    assert r.status_code == 201, r.text
    p = r.json()
    async with httpx.AsyncClient() as plain:
        up = await plain.post(p["url"], data=p["fields"], files={"file": ("f", EICAR)})
    assert up.status_code in (200, 201, 204)
    r = await client.post("/v1/attachments", headers=tenant.headers,
                          json={"cached_key": p["key"]})
    assert r.status_code == 201, r.text
    await run_worker(res)
    got = (await client.get(f"/v1/attachments/{r.json()['id']}", headers=tenant.headers)).json()
    assert infected_as(got, EICAR_SIGNATURE)
    assert [f.read_bytes() for f in qroot.rglob("*") if f.is_file()
            and "_stowage" not in f.parts] == [EICAR]
    assert [k async for k in res.store.list_keys() if not k.startswith("_")] == []


@pytest.fixture
async def s3_env_scanning(tmp_path, database_url, moto_endpoint, s3_client, clamd):
    cache, store = f"cache-{secrets.token_hex(4)}", f"store-{secrets.token_hex(4)}"
    for b in (cache, store):
        await s3_client.create_bucket(Bucket=b)
    settings = env_settings(tmp_path, database_url, clamd, cache_url=f"s3://{cache}",
                            store_url=f"s3://{store}/files", s3_endpoint_url=moto_endpoint,
                            s3_region="us-east-1")
    async with fresh_resources(settings) as res, api_client(res) as client:
        made = await auth.create_app(res.pool, "s3scan")
        yield res, client, AppKey(made.app_id, made.api_key), tmp_path / "quarantine"


def test_doctor_names_clamd(env):
    import subprocess
    import sys

    from tests.conftest import env_for, free_port

    base = {**env_for(env.res.settings),
            "STOWAGE_PROFILES_FILE": str(env.res.settings.profiles_file)}

    def doctor(**extra: str) -> tuple[int, str]:
        p = subprocess.run([sys.executable, "-m", "app.cli", "doctor"], env={**base, **extra},
                           capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout

    code, out = doctor(STOWAGE_CLAMD_URL=env.clamd.unix_url)
    assert code == 0, out
    assert re.search(r"ok +clamd: .*ClamAV 1\.\d.*scanning profiles: pics, scanned", out), out
    code, out = doctor(STOWAGE_CLAMD_URL=f"tcp://127.0.0.1:{free_port()}")
    assert code == 1 and re.search(r"FAIL +clamd: ", out), out
    code, out = doctor(STOWAGE_CLAMD_URL="")
    assert code == 1 and re.search(r"FAIL +clamd: profiles pics, scanned have scan = true", out)


async def test_the_dashboard_shows_scans_and_what_waits_for_clamd(tmp_path, database_url,
                                                                 clamd):
    token = "dashboard-token-" + secrets.token_hex(8)
    settings = env_settings(tmp_path, database_url, clamd, admin_token=token)
    async with fresh_resources(settings) as res, api_client(res) as client:
        made = await auth.create_app(res.pool, "dash")
        env = Env(res, client, AppKey(made.app_id, made.api_key), tmp_path, clamd)
        r = await client.post("/dashboard/login", data={"token": token, "next": "/dashboard"})
        assert r.status_code == 303
        bad = await env.upload(EICAR)
        await run_worker(res)
        page = (await client.get(f"/dashboard/attachments/{bad['id']}")).text
        scan = re.search(r'<dd id="scan">(.*?)</dd>', page, re.S)
        assert scan and "infected" in scan.group(1) and EICAR_SIGNATURE in scan.group(1)
        assert re.search(r"signatures \d+ ", scan.group(1))  # the version clamd reported

        waiting = await env.upload(b"patient\n")
        env.clamd.stop()
        try:
            await run_worker(res)
        finally:
            env.clamd.start()
        overview = (await client.get("/dashboard")).text
        count = re.search(r'id="waiting-for-scan">(\d+)<', overview)
        assert count and count.group(1) == "1", overview[:3000]
        assert (await env.get(waiting["id"]))["state"] == "cached"


async def test_a_rescan_of_a_file_clamd_cannot_take_keeps_it_stored(env):
    big = await env.upload(os.urandom(1536 * 1024), profile="plain")  # over the 1 MiB limit
    await run_worker(env.res)
    assert (await env.get(big["id"]))["state"] == "stored"
    r = await env.client.post(f"/v1/attachments/{big['id']}/rescan", headers=env.tenant.headers)
    assert r.status_code == 202
    await run_worker(env.res)
    got = await env.get(big["id"])
    assert got["state"] == "stored" and len(env.files("store")) == 1
    async with env.res.pool.acquire() as conn:
        kinds = [r["kind"] for r in await conn.fetch(
            "SELECT kind FROM attachment_activity WHERE attachment_id = $1", big["id"])]
        asked = await conn.fetchval("SELECT rescan_requested_at FROM attachments WHERE id = $1",
                                    big["id"])
    assert "rescan.failed" in kinds and asked is None
