"""A tus PATCH that lost its lease may still hold the upload's file open. Whatever it does
to that file afterwards (the same pwrite, another one, an ftruncate on error) must never reach
the attachment the upload became: the file is then published by copy, not by hard link."""

from __future__ import annotations

import hashlib
import os
import secrets

from app.uploads import tus_repository

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


async def _tus_row(res, upload_id: str):
    async with res.pool.acquire() as conn:
        return await conn.fetchrow(
            f"SELECT {tus_repository.COLUMNS} FROM tus_uploads WHERE id = $1::uuid", upload_id)


async def test_a_writer_that_lost_its_lease_cannot_change_the_attachment(client, tenant, res):
    body = secrets.token_bytes(300_000)
    headers = {**tenant.headers, **TUS}
    r = await client.post("/v1/tus/", headers={**headers, "Upload-Length": str(len(body))})
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    r = await client.patch(location, content=body[:100_000],
                           headers={**headers, **OCTETS, "Upload-Offset": "0"})
    assert r.status_code == 204, r.text

    # a PATCH that stalled past its lease: its file is still open, its lease ran out
    row = await _tus_row(res, upload_id)
    stale = os.open(res.cache.path_for(row["storage_key"]), os.O_WRONLY)
    async with res.pool.acquire() as conn:
        await conn.execute("UPDATE tus_uploads SET lock_owner = gen_random_uuid(),"
                           " lock_until = now() - interval '1 second' WHERE id = $1::uuid",
                           upload_id)
    try:
        r = await client.patch(location, content=body[100_000:],
                               headers={**headers, **OCTETS, "Upload-Offset": "100000"})
        assert r.status_code == 204, r.text
        assert (await _tus_row(res, upload_id))["taken_over"] is True
        att_id = r.headers["stowage-attachment-id"]
        # the stale writer wakes up
        os.pwrite(stale, b"X" * 4096, 0)
        os.ftruncate(stale, 10)
    finally:
        os.close(stale)

    att = (await client.get(f"/v1/attachments/{att_id}", headers=tenant.headers)).json()
    assert att["sha256"] == hashlib.sha256(body).hexdigest() and att["size"] == len(body)
    r = await client.get(f"/v1/attachments/{att_id}/content", headers=tenant.headers)
    assert r.status_code == 200 and r.content == body


async def test_an_upload_never_taken_over_is_not_marked(client, tenant, res):
    headers = {**tenant.headers, **TUS}
    r = await client.post("/v1/tus/", headers={**headers, "Upload-Length": "5"})
    location = r.headers["location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    for offset, part in ((0, b"ab"), (2, b"cde")):
        r = await client.patch(location, content=part,
                               headers={**headers, **OCTETS, "Upload-Offset": str(offset)})
        assert r.status_code == 204, r.text
    assert (await _tus_row(res, upload_id))["taken_over"] is False


async def test_head_of_an_upload_still_completing_says_so_and_then_names_the_attachment(
        client, tenant, res):
    """The final PATCH's request died while its upload became an attachment (the lease it held
    still running): HEAD must not report a complete upload without Stowage-Attachment-Id."""
    headers = {**tenant.headers, **TUS}
    body = b"complete me"
    r = await client.post("/v1/tus/", headers={**headers, "Upload-Length": str(len(body))})
    location = r.headers["location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    r = await client.patch(location, content=body[:5],
                           headers={**headers, **OCTETS, "Upload-Offset": "0"})
    assert r.status_code == 204
    row = await _tus_row(res, upload_id)
    fd = os.open(res.cache.path_for(row["storage_key"]), os.O_WRONLY)  # the last bytes landed
    try:
        os.pwrite(fd, body[5:], 5)
    finally:
        os.close(fd)
    async with res.pool.acquire() as conn:  # ...and the request died right after saving them
        await conn.execute(
            "UPDATE tus_uploads SET upload_offset = length, state = 'completing',"
            " attachment_id = gen_random_uuid(), lock_owner = gen_random_uuid(),"
            " lock_until = now() + interval '30 seconds' WHERE id = $1::uuid", upload_id)
    r = await client.head(location, headers=headers)
    assert r.status_code == 423, r.status_code
    assert "stowage-attachment-id" not in r.headers
    async with res.pool.acquire() as conn:  # its lease runs out
        await conn.execute("UPDATE tus_uploads SET lock_until = now() - interval '1 second'"
                           " WHERE id = $1::uuid", upload_id)
    r = await client.head(location, headers=headers)
    assert r.status_code == 200 and r.headers["upload-offset"] == str(len(body))
    att_id = r.headers["stowage-attachment-id"]
    got = await client.get(f"/v1/attachments/{att_id}/content", headers=tenant.headers)
    assert got.content == body
