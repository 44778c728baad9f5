"""HTTP as RFC 9110 has it: HEAD wherever GET is, Allow listing every method of a resource,
conditional downloads (ETag, Last-Modified, If-None-Match, If-Modified-Since, If-Range) and an
inline allowlist. Real clients (curl, wget) against a real uvicorn server where they exist."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn

from app.attachments.downloads import serves_inline
from app.attachments.links import Links
from app.bootstrap import Services
from app.main import create_app
from app.profiles import load_profiles
from tests.conftest import free_port, run_worker
from tests.factories import stored, upload
from tests.helpers import jpeg_bytes, png_bytes

PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="1" height="1">'
       b"<script>alert(1)</script></svg>")
ZIP = b"PK\x05\x06" + b"\x00" * 18  # an empty zip archive


def local(res, url):
    return url.removeprefix(res.settings.public_url)


def without_date(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("date", "x-request-id")}


def same_but_age(a: httpx.Headers, b: httpx.Headers) -> bool:
    def split(headers: httpx.Headers) -> tuple[dict[str, str], int | None]:
        rest = without_date(headers)
        cache = rest.pop("cache-control", "")
        age = re.search(r"max-age=(\d+)", cache)
        rest["cache-control"] = re.sub(r"max-age=\d+", "max-age=N", cache)
        return rest, int(age.group(1)) if age else None

    (rest_a, age_a), (rest_b, age_b) = split(a), split(b)
    if rest_a != rest_b or (age_a is None) != (age_b is None):
        return False
    return age_a is None or abs(age_a - age_b) <= 1


@pytest.fixture
def profiles(tmp_path, res):
    path = tmp_path / "profiles.toml"
    path.write_text('[profiles.pub]\npublic = true\ntypes = ["image/*"]\n'
                    '[profiles.pub.derivatives.thumb]\nwidth = 20\nheight = 20\n'
                    '[profiles.pics]\ntypes = ["image/*"]\n'
                    '[profiles.pics.derivatives.thumb]\nwidth = 20\nheight = 20\n')
    before = res.profiles, res.links
    res.rewire(profiles=load_profiles(path))
    res.rewire(links=Links(res.settings.public_url, res.settings.signing_key,
                      res.settings.download_url_ttl, public_profiles=res.profiles.public_names()))
    yield path
    res.rewire(profiles=before[0], links=before[1])


# --- Allow and OPTIONS ----------------------------------------------------------------------------

def allow(r: httpx.Response) -> set[str]:
    return {m.strip() for m in r.headers["allow"].split(",")}


async def test_options_lists_the_methods_of_the_resource(client):
    r = await client.options("/v1/attachments")
    assert r.status_code == 204 and r.content == b""
    assert allow(r) == {"GET", "HEAD", "POST"}


@pytest.mark.parametrize("path, methods", [
    ("/v1/attachments/{id}", {"GET", "HEAD", "DELETE"}),
    ("/v1/webhook-endpoints/{id}", {"GET", "HEAD", "PATCH", "DELETE"}),
    ("/v1/attachments", {"GET", "HEAD", "POST"}),
    ("/v1/attachments/{id}/content", {"GET", "HEAD"}),
])
async def test_405_allow_lists_every_method_of_the_resource(client, tenant, path, methods):
    r = await client.put(path.format(id="0193a5a0-0000-7000-8000-000000000000"),
                         headers=tenant.headers)
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 405 and r.json()["type"].endswith("method-not-allowed")
    assert allow(r) == methods


async def test_tus_keeps_its_own_options_and_head(client, tenant):
    r = await client.options("/v1/tus/", headers={"Origin": "https://app.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204
    assert r.headers["tus-version"]  # CORS follows STOWAGE_CORS_ORIGINS (tests/test_cors.py)
    r = await client.post("/v1/tus/", headers={**tenant.headers, "Tus-Resumable": "1.0.0",
                                               "Upload-Length": "3"})
    assert r.status_code == 201, r.text
    r = await client.head(r.headers["location"], headers={**tenant.headers,
                                                          "Tus-Resumable": "1.0.0"})
    assert r.status_code == 200 and r.headers["upload-offset"] == "0"


# --- HEAD -----------------------------------------------------------------------------------------

async def test_head_of_a_json_route_is_its_get_without_the_body(client, tenant):
    att = await upload(client, tenant, b"hello")
    url = f"/v1/attachments/{att['id']}"
    get = await client.get(url, headers=tenant.headers)
    head = await client.head(url, headers=tenant.headers)
    assert head.status_code == 200 and head.content == b""
    assert without_date(head.headers) == without_date(get.headers)
    assert int(head.headers["content-length"]) == len(get.content)
    # errors too: the same status and headers
    r = await client.head("/v1/attachments")
    assert r.status_code == 401 and r.content == b""
    assert (await client.head("/healthz")).status_code == 200


async def test_head_of_downloads_by_key_link_and_public_profile(client, tenant, res, profiles):
    pics = await stored(client, tenant, res, jpeg_bytes(60, 40), "cat.jpg", profile="pics")
    pub = await stored(client, tenant, res, jpeg_bytes(60, 40), "pub.jpg", profile="pub")
    key = f"/v1/attachments/{pics['id']}"
    for url, headers in [
        (f"{key}/content", tenant.headers),
        (f"{key}/derivatives/thumb", tenant.headers),
        (local(res, pics["url"]), {}),                                   # signed link
        (local(res, pics["derivatives"]["thumb"]["url"]), {}),
        (local(res, pub["url"]), {}),                                    # public profile
        (local(res, pub["derivatives"]["thumb"]["url"]), {}),
    ]:
        get = await client.get(url, headers=headers)
        head = await client.head(url, headers=headers)
        assert get.status_code == 200, (url, get.text)
        assert head.status_code == 200 and head.content == b"", url
        # a signed link's max-age counts down to its expiry: the two requests may straddle
        # a second, the rest is the same
        assert same_but_age(head.headers, get.headers), (url, head.headers, get.headers)
        assert int(head.headers["content-length"]) == len(get.content)
    # a Range is for GET only: HEAD describes the whole file
    r = await client.head(f"{key}/content", headers={**tenant.headers, "Range": "bytes=0-1"})
    assert r.status_code == 200 and r.headers["content-length"] == str(pics["size"])
    # and what GET refuses, HEAD refuses alike
    r = await client.head(f"{key}/content")
    assert r.status_code == 401
    r = await client.head(f"{key}/content?token=forged")
    assert r.status_code == 403


# --- conditional requests -------------------------------------------------------------------------

async def test_validators_and_if_none_match(client, tenant, res):
    att = await stored(client, tenant, res, b"x" * 1000)
    url = f"/v1/attachments/{att['id']}/content"
    r = await client.get(url, headers=tenant.headers)
    etag = f'"{att["sha256"]}"'
    assert r.headers["etag"] == etag
    stored_at = datetime.fromisoformat(att["stored_at"].replace("Z", "+00:00"))
    assert email.utils.parsedate_to_datetime(r.headers["last-modified"]) == \
        stored_at.replace(microsecond=0)
    for value in [etag, f"W/{etag}", f'"other", {etag}', '"a", "b" , W/' + etag, "*"]:
        for method in ("GET", "HEAD"):
            r = await client.request(method, url, headers={**tenant.headers,
                                                           "If-None-Match": value})
            assert r.status_code == 304, (method, value)
            assert r.content == b""
            assert r.headers["etag"] == etag
            assert r.headers["cache-control"].startswith("private")
            assert r.headers["last-modified"]
            assert "content-length" not in r.headers or r.headers["content-length"] == "0"
    for value in ['"other"', 'W/"other", "x"', "garbage"]:
        r = await client.get(url, headers={**tenant.headers, "If-None-Match": value})
        assert r.status_code == 200 and len(r.content) == 1000, value
    # several If-None-Match fields are one list
    r = await client.get(url, headers=[*tenant.headers.items(), ("If-None-Match", '"other"'),
                                       ("If-None-Match", etag)])
    assert r.status_code == 304


async def test_if_modified_since(client, tenant, res):
    att = await stored(client, tenant, res, b"y" * 100)
    url = f"/v1/attachments/{att['id']}/content"
    last = (await client.get(url, headers=tenant.headers)).headers["last-modified"]
    moment = email.utils.parsedate_to_datetime(last)
    later = email.utils.format_datetime(moment + timedelta(hours=1), usegmt=True)
    earlier = email.utils.format_datetime(moment - timedelta(seconds=1), usegmt=True)
    rfc850 = (moment.strftime("%A, %d-%b-%y %H:%M:%S GMT"))
    asctime = moment.strftime("%a %b %e %H:%M:%S %Y")
    for value, status in [(last, 304), (later, 304), (rfc850, 304), (asctime, 304),
                          (earlier, 200), ("not a date", 200)]:
        r = await client.get(url, headers={**tenant.headers, "If-Modified-Since": value})
        assert r.status_code == status, value
        if status == 304:
            assert r.headers["etag"] and r.headers["last-modified"] == last
            assert r.content == b""
    # If-None-Match wins: a mismatching tag sends the file, however recent the date
    r = await client.get(url, headers={**tenant.headers, "If-Modified-Since": later,
                                       "If-None-Match": '"other"'})
    assert r.status_code == 200 and r.content == b"y" * 100


async def test_if_range(client, tenant, res):
    data = bytes(range(256)) * 4
    att = await stored(client, tenant, res, data)
    url = f"/v1/attachments/{att['id']}/content"
    last = (await client.get(url, headers=tenant.headers)).headers["last-modified"]
    etag = f'"{att["sha256"]}"'
    for if_range, status in [(etag, 206), (last, 206), ('"stale"', 200), (f"W/{etag}", 200),
                             ("Mon, 01 Jan 2001 00:00:00 GMT", 200), ("nonsense", 200)]:
        r = await client.get(url, headers={**tenant.headers, "Range": "bytes=10-19",
                                           "If-Range": if_range})
        assert r.status_code == status, if_range
        if status == 206:
            assert r.content == data[10:20]
            assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
        else:
            assert r.content == data and "content-range" not in r.headers
    # a range past the end: 416 naming the size, unless If-Range says the file changed
    r = await client.get(url, headers={**tenant.headers, "Range": "bytes=5000-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    assert r.headers["content-type"] == "application/problem+json"
    r = await client.get(url, headers={**tenant.headers, "Range": "bytes=5000-",
                                       "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == data


async def test_a_derivative_is_validated_by_its_generation(client, tenant, res, profiles):
    att = await stored(client, tenant, res, jpeg_bytes(60, 40), "cat.jpg", profile="pics")
    url = f"/v1/attachments/{att['id']}/derivatives/thumb"
    r = await client.get(url, headers=tenant.headers)
    etag, last = r.headers["etag"], r.headers["last-modified"]
    updated = datetime.fromisoformat(att["updated_at"].replace("Z", "+00:00"))
    assert email.utils.parsedate_to_datetime(last) == updated.replace(microsecond=0)
    r = await client.get(url, headers={**tenant.headers, "If-None-Match": etag})
    assert r.status_code == 304
    await client.post(f"/v1/attachments/{att['id']}/reprocess", headers=tenant.headers)
    await run_worker(res)
    r = await client.get(url, headers={**tenant.headers, "If-None-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag


# --- inline allowlist -----------------------------------------------------------------------------

@pytest.mark.parametrize("mime, inline", [
    ("image/jpeg", True), ("image/png", True), ("image/webp", True), ("image/avif", True),
    ("video/mp4", True), ("audio/mpeg", True), ("application/pdf", True),
    ("text/plain", True), ("text/plain; charset=utf-8", True), ("IMAGE/PNG", True),
    ("image/svg+xml", False), ("text/html", False), ("application/xhtml+xml", False),
    ("text/xml", False), ("application/xml", False), ("text/css", False),
    ("text/javascript", False), ("application/zip", False), ("application/octet-stream", False),
    ("text/csv", False), ("application/json", False), ("image/x.foo+xml", False),
    ("application/x-shockwave-flash", False), ("text/markdown", False),
])
def test_inline_is_an_allowlist(mime, inline):
    assert serves_inline(mime) is inline


@pytest.mark.parametrize("data, name, inline", [
    (b"plain words\n", "a.txt", True), (png_bytes(), "a.png", True), (PDF, "a.pdf", True),
    (HTML, "a.html", False), (SVG, "a.svg", False), (ZIP, "a.zip", False),
    (b'{"a": 1}', "a.json", False),
])
async def test_downloads_are_inline_only_when_allowed(client, tenant, data, name, inline):
    att = await upload(client, tenant, data, name)
    r = await client.get(f"/v1/attachments/{att['id']}/content", headers=tenant.headers)
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("inline" if inline else "attachment"), (att["mime_type"],
                                                                         disposition)
    assert r.headers["x-content-type-options"] == "nosniff"


# --- S3: the redirect -----------------------------------------------------------------------------

async def test_s3_redirect_disposition_and_head(s3_env):
    _, client, tenant, _, _ = s3_env
    for data, name, disposition in [(png_bytes(), "p.png", "inline"),
                                    (HTML, "h.html", "attachment"), (ZIP, "z.zip", "attachment")]:
        att = await upload(client, tenant, data, name)
        url = f"/v1/attachments/{att['id']}/content"
        get = await client.get(url, headers=tenant.headers)
        assert get.status_code == 307
        query = parse_qs(urlsplit(get.headers["location"]).query)
        assert query["response-content-disposition"][0].startswith(disposition), name
        head = await client.head(url, headers=tenant.headers)
        assert head.status_code == 307 and head.content == b""
        assert head.headers["cache-control"] == get.headers["cache-control"]
        # the HEAD's Location is signed for HEAD: a client that follows it gets the headers
        async with httpx.AsyncClient() as s3:
            r = await s3.head(head.headers["location"])
            assert r.status_code == 200, r.text
            assert int(r.headers["content-length"]) == len(data)
            r = await s3.get(get.headers["location"])
            assert r.status_code == 200 and r.content == data
            assert r.headers["content-disposition"].startswith(disposition)


# --- real clients ---------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def live_server(res: Services) -> AsyncIterator[str]:
    """A real uvicorn serving the app on this event loop, sharing the test's resources."""
    app = create_app(res.settings, res)
    app.state.services = res
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await task


async def run(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, list(args), cwd=cwd, capture_output=True,
                                   text=True, timeout=60)


def header(output: str, name: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in output.splitlines()
            if line.lower().startswith(name.lower() + ":")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_curl_head(client, tenant, res):
    data = os.urandom(5000)
    att = await stored(client, tenant, res, data, "report.bin")
    async with live_server(res) as base:
        url = f"{base}/v1/attachments/{att['id']}/content"
        r = await run("curl", "-sS", "-I", "-H", f"Authorization: Bearer {tenant.api_key}", url)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("HTTP/1.1 200"), r.stdout
        assert header(r.stdout, "content-length") == ["5000"]
        assert header(r.stdout, "etag") == [f'"{att["sha256"]}"']
        assert header(r.stdout, "content-disposition") == ['attachment; filename="report.bin"']
        assert header(r.stdout, "last-modified")
        r = await run("curl", "-sS", "-I", f"{base}{local(res, att['url'])}")
        assert r.stdout.startswith("HTTP/1.1 200"), r.stdout
        r = await run("curl", "-sS", "-i", "-X", "OPTIONS", f"{base}/v1/attachments")
        assert r.stdout.startswith("HTTP/1.1 204"), r.stdout
        assert header(r.stdout, "allow") == ["GET, HEAD, POST"]


@pytest.mark.skipif(shutil.which("wget") is None, reason="needs wget")
async def test_wget_continue_with_content_disposition(client, tenant, res, tmp_path):
    data = os.urandom(300_000)
    att = await stored(client, tenant, res, data, "Größe report.bin")
    async with live_server(res) as base:
        url = f"{base}{local(res, att['url'])}"
        first = tmp_path / "first"
        first.mkdir()
        r = await run("wget", "-c", "--content-disposition", "-S", url, cwd=str(first))
        assert r.returncode == 0, r.stderr
        # wget asks with HEAD first for the name, then downloads under it
        assert [p.name for p in first.iterdir()] == ["Größe report.bin"], r.stderr
        assert (first / "Größe report.bin").read_bytes() == data
        # an interrupted download is continued with a Range
        second = tmp_path / "second"
        second.mkdir()
        (second / "Größe report.bin").write_bytes(data[:100_000])
        r = await run("wget", "-c", "--content-disposition", "-S", url, cwd=str(second))
        assert r.returncode == 0, r.stderr
        assert "206" in r.stderr and f"bytes 100000-{len(data) - 1}/{len(data)}" in r.stderr
        assert [p.name for p in second.iterdir()] == ["Größe report.bin"]
        assert (second / "Größe report.bin").read_bytes() == data


async def test_a_lost_file_is_a_problem_before_any_byte(client, tenant, res):
    # A stored attachment whose file was lost (not moved): the answer is a problem document,
    # found before the status line, not a 200 with a Content-Length cut short (issue 25).
    att = await stored(client, tenant, res, b"y" * 5000)
    key = await res.pool.fetchval("SELECT key FROM attachments WHERE id = $1",
                                  uuid.UUID(att["id"]))
    await res.store.delete(key)
    url = f"/v1/attachments/{att['id']}/content"
    for method, extra in (("GET", {"Range": "bytes=0-9"}), ("GET", {}), ("HEAD", {})):
        r = await client.request(method, url, headers={**tenant.headers, **extra})
        assert r.status_code == 500, (method, extra, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
        if method == "GET":  # HEAD: the same headers, no body
            assert r.json()["type"].endswith("/file-missing"), r.text
