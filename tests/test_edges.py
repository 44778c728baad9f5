"""Edges of "nothing leaked, nothing stuck, no 500s": Range parsing to RFC 9110's grammar,
signed links honoured across instances with other settings, and tus answers when S3 fails."""

from __future__ import annotations

import asyncio
import dataclasses
from urllib.parse import parse_qs, urlsplit

import pytest
from itsdangerous import TimestampSigner

from app.attachments.downloads import parse_range
from app.attachments.links import Links
from app.errors import RangeNotSatisfiable
from tests.conftest import api_client

# --- Range (RFC 9110 §14.1.1): only ASCII digits; invalid is ignored, unsatisfiable is 416 -------

BODY = b"0123456789abcdefghij"  # 20 bytes


async def raw_upload(client, tenant, data: bytes) -> dict:
    r = await client.post("/v1/attachments/raw", headers=tenant.headers, content=data,
                          params={"filename": "digits.txt", "promote": "false"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.parametrize("header", [
    "bytes=1_0-15", "bytes=10-1_5", "bytes=-1_0", "bytes=+10-15", "bytes=10-+15",
    "bytes= 10-15", "bytes=10 -15", "bytes=10- 15", "bytes =10-15",
    "bytes=0x1-2", "bytes=1e1-15", "bytes=10.0-15", "bytes=--5", "bytes=-", "bytes=",
    "bytes=15-10", "bytes=5", "bits=0-5", "0-5", "bytes=10-15;x", "bytes=10-15-",
    "bytes=1" + "0" * 30 + "-" + "9" * 30,  # last-pos < first-pos, however long
    "bytes=\xb9-2".encode("latin-1"),  # a superscript one: isdigit(), not a DIGIT
])
async def test_an_invalid_range_is_ignored(client, tenant, header):
    att = await raw_upload(client, tenant, BODY)
    r = await client.get(att["url"], headers={"Range": header})
    assert r.status_code == 200, r.headers.get("content-range")
    assert r.content == BODY and "content-range" not in r.headers


@pytest.mark.parametrize("header, status, content", [
    ("bytes=10-15", 206, BODY[10:16]),
    ("BYTES=10-", 206, BODY[10:]),
    ("bytes=-5", 206, BODY[-5:]),
    ("bytes=-50", 206, BODY),
    ("bytes=5-" + "9" * 5000, 206, BODY[5:]),  # huge numerals are numbers, not errors
    ("bytes=" + "0" * 40 + "10-0015", 206, BODY[10:16]),  # leading zeros are zeros
    ("bytes=,10-15 ,", 206, BODY[10:16]),  # empty list elements count for nothing
    ("bytes=0-1,4-5", 200, BODY),  # several ranges: the whole file, as RFC 9110 allows
])
async def test_a_valid_range_is_served(client, tenant, header, status, content):
    att = await raw_upload(client, tenant, BODY)
    r = await client.get(att["url"], headers={"Range": header})
    assert r.status_code == status and r.content == content


@pytest.mark.parametrize("header", ["bytes=20-", "bytes=20-30", "bytes=-0", "bytes=30-40,50-",
                                    "bytes=" + "1" * 5000 + "-"])
async def test_an_unsatisfiable_range_is_416_with_the_length(client, tenant, header):
    att = await raw_upload(client, tenant, BODY)
    r = await client.get(att["url"], headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(BODY)}"
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("header", ["bytes=\u0661\u0660-15", "bytes=10-\uff11\uff15",
                                    "bytes=\u2460-2", "bytes=10-15\u00a0"])
def test_only_ascii_digits_are_digits(header):
    # Starlette hands headers over as Latin-1, so these cannot come off the wire, but the
    # parser must not depend on that
    assert parse_range(header, 20) is None


def test_an_empty_file_has_no_satisfiable_range_but_a_suffix():
    for header in ("bytes=0-", "bytes=0-0", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 0)
    assert parse_range("bytes=-5", 0) is None  # satisfiable: the whole (empty) file


# --- signed links: the expiry is the issuing instance's promise --------------------------------

async def test_a_link_lasts_what_the_issuing_instance_promised(res, tenant):
    """Two API instances with different STOWAGE_DOWNLOAD_URL_TTL: each honours the other's
    links for as long as the other promised, no longer and no shorter."""
    settings = res.settings
    short_lived = dataclasses.replace(res, links=Links(settings.public_url,
                                                       settings.signing_key, ttl=1))
    async with api_client(res) as long_api, api_client(short_lived) as short_api:
        long_att = await raw_upload(long_api, tenant, BODY)  # an hour
        short_att = await raw_upload(short_api, tenant, BODY)  # a second
        await asyncio.sleep(2.1)
        r = await short_api.get(long_att["url"])
        assert r.status_code == 200 and r.content == BODY
        r = await long_api.get(short_att["url"])
        assert r.status_code == 403 and "expired" in r.json()["detail"]


async def test_old_and_malformed_tokens_are_403_not_500(client, tenant, res):
    att = await raw_upload(client, tenant, BODY)
    subject = f"{att['id']}/"
    # the former format: the signing time, checked against the receiver's TTL
    former = TimestampSigner(res.settings.signing_key, salt="stowage.download", sep=".")
    old = former.sign(subject).decode()[len(subject) + 1:]
    token = parse_qs(urlsplit(att["url"]).query)["token"][0]
    expires, _, signature = token.partition(".")
    for bad in [old, "", ".", "..", "a.b.c", expires, f".{signature}", f"{expires}..{signature}",
                f"{signature}.{expires}", f"AAAAAAAAAAAAAAAAAAAAAAAAAAAAA.{signature}",
                "\u00e9.\u00e9", "%ff.%00"]:
        r = await client.get(f"/v1/attachments/{att['id']}/content", params={"token": bad})
        assert r.status_code == 403, bad
        assert r.headers["content-type"] == "application/problem+json"
