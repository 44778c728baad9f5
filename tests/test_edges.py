"""Edges of "nothing leaked, nothing stuck, no 500s": Range parsing to RFC 9110's grammar,
signed links honoured across instances with other settings, and tus answers when S3 fails."""

from __future__ import annotations

import dataclasses
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from itsdangerous import TimestampSigner

from app.attachments.downloads import parse_range
from app.attachments.links import Links
from app.auth import service as auth
from app.errors import RangeNotSatisfiable
from app.main import create_app
from tests.conftest import AppKey, api_client, fresh_resources, make_settings
from tests.factories import Clock, on_clock
from tests.s3_fault_proxy import S3FaultProxy

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
    settings, clock = res.settings, Clock()
    res.rewire(links=on_clock(res.links, clock))
    short_lived = dataclasses.replace(res, links=Links(settings.public_url,
                                                       settings.signing_key, ttl=1,
                                                       clock=clock))
    async with api_client(res) as long_api, api_client(short_lived) as short_api:
        long_att = await raw_upload(long_api, tenant, BODY)  # an hour
        short_att = await raw_upload(short_api, tenant, BODY)  # a second (or two: windows)
        clock.advance(3.1)
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


# --- tus: S3 failing answers 503 + Retry-After, with the tus and CORS headers ------------------

ORIGIN = "https://app.example"
TUS = {"Tus-Resumable": "1.0.0", "Origin": ORIGIN}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


@pytest.fixture
async def tus_s3(tmp_path, database_url, moto_endpoint, s3_client, fast_botocore_backoff):
    """The tus routes over an S3 cache behind a fault proxy: (client, tenant, proxy)."""
    bucket = f"tus-{secrets.token_hex(4)}"
    await s3_client.create_bucket(Bucket=bucket)
    with S3FaultProxy(moto_endpoint) as proxy:
        settings = make_settings(tmp_path, database_url, cache_url=f"s3://{bucket}",
                                 s3_endpoint_url=proxy.url, s3_region="us-east-1",
                                 cors_origins=ORIGIN)
        async with fresh_resources(settings) as res:
            app = create_app(settings, res)
            app.state.services = res  # ASGITransport does not run the lifespan
            # what escapes the app must come back as the response a browser would get
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                new = await auth.create_app(res.pool, "tus-s3")
                yield client, AppKey(new.app_id, new.api_key), proxy
            proxy.clear()


def assert_retryable_for_browsers(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"].isdigit()
    assert r.headers["tus-resumable"] == "1.0.0"
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "Upload-Offset" in r.headers["access-control-expose-headers"]
    if r.request.method != "HEAD":
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 503


async def test_tus_answers_an_s3_outage_with_503_and_its_headers(tus_s3):
    client, tenant, proxy = tus_s3
    headers = {**TUS, **tenant.headers}
    r = await client.post("/v1/tus/", headers={**headers, "Upload-Length": "10"})
    assert r.status_code == 201
    url = urlsplit(r.headers["location"]).path

    proxy.fail_always(503)
    r = await client.patch(url, content=b"0123", headers={**headers, **OCTETS,
                                                          "Upload-Offset": "0"})
    assert_retryable_for_browsers(r)
    # creation-with-upload: the upload exists, and the answer says where
    r = await client.post("/v1/tus/", content=b"0123", headers={**headers, **OCTETS,
                                                                "Upload-Length": "10"})
    assert_retryable_for_browsers(r)
    assert "/v1/tus/" in r.headers["location"]
    proxy.clear()

    r = await client.head(url, headers=headers)
    assert r.status_code == 200 and r.headers["upload-offset"] == "0"
    # every byte arrives, but S3 fails while the upload becomes an attachment
    proxy.fail_always(503, method="GET")
    r = await client.patch(url, content=b"0123456789", headers={**headers, **OCTETS,
                                                                "Upload-Offset": "0"})
    assert_retryable_for_browsers(r)
    r = await client.head(url, headers=headers)  # HEAD finishes the completion: S3 still down
    assert_retryable_for_browsers(r)
    proxy.clear()
    r = await client.head(url, headers=headers)
    assert r.status_code == 200 and r.headers["upload-offset"] == "10"
    assert r.headers["stowage-attachment-id"]
    assert r.headers["access-control-allow-origin"] == ORIGIN
