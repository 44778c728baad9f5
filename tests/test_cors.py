"""CORS for /v1 (STOWAGE_CORS_ORIGINS), over ASGI against the real app: preflights for every
kind of route, the exposed headers, errors (401, 404, 422, 503 from a Postgres really cut,
an unexpected 500) that a browser can read, `*`, and CORS off by default.

The same in a real browser: tests/test_cors_browser.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.auth import service as auth
from app.bootstrap import build_services
from app.config import ConfigError
from app.main import create_app
from tests.conftest import AppKey, make_settings
from tests.proxy import TCPProxy

ORIGIN = "https://app.example"
OTHER = "https://evil.example"
# what the contract names; a browser hides any other response header from the page
EXPOSED = {"location", "stowage-attachment-id", "upload-offset", "upload-length",
           "upload-expires", "tus-resumable", "tus-version", "tus-extension", "tus-max-size",
           "tus-checksum-algorithm", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset",
           "retry-after", "etag", "content-range", "content-disposition"}
# a route of every kind: uploads, reads, webhooks, tus creation and an upload of it
ROUTES = [("POST", "/v1/attachments"), ("POST", "/v1/attachments/raw"),
          ("GET", "/v1/attachments/0193aaaa-0000-7000-8000-000000000000"),
          ("DELETE", "/v1/attachments/0193aaaa-0000-7000-8000-000000000000"),
          ("GET", "/v1/attachments/0193aaaa-0000-7000-8000-000000000000/content"),
          ("POST", "/v1/presigned-uploads"), ("PATCH", "/v1/webhook-endpoints/x"),
          ("POST", "/v1/tus/"), ("PATCH", "/v1/tus/0193aaaa-0000-7000-8000-000000000000"),
          ("HEAD", "/v1/tus/0193aaaa-0000-7000-8000-000000000000")]


def exposed(r: httpx.Response) -> set[str]:
    return {h.strip().lower() for h in r.headers.get("access-control-expose-headers", "")
            .split(",") if h.strip()}


@contextlib.asynccontextmanager
async def cors_client(env_factory, origins: str, **overrides: Any
                      ) -> AsyncIterator[tuple[httpx.AsyncClient, AppKey]]:
    res = (await env_factory("file", cors_origins=origins, **overrides)).res
    app = create_app(res.settings, res)
    app.state.services = res  # ASGITransport does not run the lifespan
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://stowage.test") as c:
        new = await auth.create_app(res.pool, "cors")
        yield c, AppKey(new.app_id, new.api_key)


@pytest.fixture
async def api(env_factory):
    async with cors_client(env_factory, f"{ORIGIN}, http://localhost:5173") as pair:
        yield pair


def preflight(method: str, headers: str, origin: str = ORIGIN) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers}


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_preflight_is_answered_for_every_v1_route(api, method, path):
    client, _ = api
    asked = ("authorization, content-type, idempotency-key, tus-resumable, upload-length,"
             " upload-offset, upload-metadata, upload-checksum, x-http-method-override")
    r = await client.options(path, headers=preflight(method, asked))
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "origin" in r.headers["vary"].lower()
    assert method in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {h.strip() for h in asked.split(",")} <= allowed
    assert int(r.headers["access-control-max-age"]) > 0
    # no cookies: a credentialed request is never allowed
    assert "access-control-allow-credentials" not in r.headers


async def test_preflight_refuses_what_tus_does_not_support_and_other_origins(api):
    client, _ = api
    # the server refuses deferred length and concatenation: so does the preflight
    for header in ("upload-defer-length", "upload-concat"):
        r = await client.options("/v1/tus/", headers=preflight("POST", f"tus-resumable, {header}"))
        assert r.status_code == 400 and "headers" in r.text
        assert header not in r.headers["access-control-allow-headers"].lower()
    r = await client.options("/v1/attachments", headers=preflight("POST", "authorization",
                                                                    origin=OTHER))
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    # the second configured origin is allowed too
    r = await client.options("/v1/attachments", headers=preflight(
        "POST", "authorization", origin="http://localhost:5173"))
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://localhost:5173"


async def test_answers_expose_the_headers_a_browser_needs(api):
    client, tenant = api
    h = {**tenant.headers, "Origin": ORIGIN}
    r = await client.post("/v1/attachments", headers=h, files={"file": ("a.txt", b"hello")})
    assert r.status_code == 201, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert exposed(r) >= EXPOSED
    # a simple request from another origin gets no grant: the browser keeps it from the page
    r = await client.get(urlsplit(r.headers["location"]).path,
                         headers={**tenant.headers, "Origin": OTHER})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # tus: creation's headers, and its discovery still answers (no preflight headers)
    r = await client.post("/v1/tus/", headers={**h, "Tus-Resumable": "1.0.0",
                                               "Upload-Length": "3"})
    assert r.status_code == 201, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert {"location", "upload-offset", "upload-expires", "tus-resumable"} <= exposed(r)
    # an answer without Origin says it depends on it, so a cache keeps them apart
    r = await client.get("/v1/attachments", headers=tenant.headers)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert "origin" in r.headers["vary"].lower()
    r = await client.options("/v1/tus/", headers={"Origin": ORIGIN})
    assert r.status_code == 204 and r.headers["tus-version"] == "1.0.0"
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "tus-checksum-algorithm" in exposed(r)


async def test_errors_carry_the_cors_headers(api):
    client, tenant = api
    o = {"Origin": ORIGIN}
    answers = [
        await client.get("/v1/attachments", headers=o),  # 401: no key
        await client.get("/v1/attachments/not-a-uuid", headers={**tenant.headers, **o}),  # 404
        await client.post("/v1/webhook-endpoints", headers={**tenant.headers, **o},
                          json={"url": "ftp://x"}),  # 422
        await client.post("/v1/tus/", headers={**tenant.headers, **o}),  # 412: no Tus-Resumable
        await client.request("PUT", "/v1/attachments", headers=o),  # 405
    ]
    assert [r.status_code for r in answers] == [401, 404, 422, 412, 405]
    for r in answers:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["access-control-allow-origin"] == ORIGIN, r.request.url
        assert "retry-after" in exposed(r)


async def test_an_unexpected_500_carries_the_cors_headers_too(env_factory):
    """The app's catch-all answers outside every user middleware: CORS must sit outside it."""
    async with cors_client(env_factory, ORIGIN) as (client, _):
        app = client._transport.app  # type: ignore[attr-defined]

        async def broken() -> None:
            raise RuntimeError("a bug")

        app.add_api_route("/v1/broken", broken)
        r = await client.get("/v1/broken", headers={"Origin": ORIGIN})
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["access-control-allow-origin"] == ORIGIN


async def test_postgres_unreachable_503_carries_the_cors_headers(tmp_path, database_url):
    pg = TCPProxy("127.0.0.1", 5432)
    await pg.start()
    dbname = urlsplit(database_url).path
    settings = make_settings(tmp_path, f"postgresql://127.0.0.1:{pg.port}{dbname}",
                             cors_origins=ORIGIN)
    try:
        async with build_services(settings) as res:
            new = await auth.create_app(res.pool, "cors-503")
            app = create_app(settings, res)
            app.state.services = res
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://t") as client:
                await pg.cut()
                r = await client.get("/v1/attachments", headers={
                    "Authorization": f"Bearer {new.api_key}", "Origin": ORIGIN})
        assert r.status_code == 503
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in exposed(r) and r.headers["retry-after"].isdigit()
    finally:
        await pg.cut()


async def test_star_allows_any_origin(env_factory):
    async with cors_client(env_factory, "*") as (client, tenant):
        r = await client.options("/v1/attachments/raw", headers=preflight(
            "POST", "authorization, content-type", origin="https://anything.example"))
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        r = await client.get("/v1/attachments", headers={**tenant.headers, "Origin": OTHER})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert exposed(r) >= EXPOSED
        r = await client.get("/v1/attachments", headers={"Origin": OTHER})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "*"


async def test_off_by_default_for_all_of_v1_tus_included(env_factory, caplog):
    async with cors_client(env_factory, "") as (client, tenant):
        for method, path in (("POST", "/v1/attachments"), ("POST", "/v1/tus/"),
                             ("PATCH", "/v1/tus/0193aaaa-0000-7000-8000-000000000000")):
            r = await client.options(path, headers=preflight(method, "authorization"))
            assert "access-control-allow-origin" not in r.headers, path
        r = await client.post("/v1/tus/", headers={"Origin": ORIGIN, "Tus-Resumable": "1.0.0"})
        assert r.status_code == 401 and "access-control-allow-origin" not in r.headers
        r = await client.get("/v1/attachments", headers={**tenant.headers, "Origin": ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # the browser only says "Failed to fetch": the log says why, once per origin
    refused = [m for m in caplog.messages if "STOWAGE_CORS_ORIGINS" in m]
    assert len(refused) == 1 and ORIGIN in refused[0]


async def test_the_dashboard_and_probes_are_not_cors(env_factory):
    async with cors_client(env_factory, "*", admin_token="t" * 32) as (client, _):
        for path in ("/dashboard", "/dashboard/", "/healthz", "/v1x"):
            r = await client.get(path, headers={"Origin": ORIGIN})
            assert "access-control-allow-origin" not in r.headers, path
            r = await client.options(path, headers=preflight("GET", "authorization"))
            assert "access-control-allow-origin" not in r.headers, path


@pytest.mark.parametrize("bad", ["https://app.example/", "app.example", "https://a.example/x",
                                 "ftp://a.example", "https://a.example:99999"])
def test_an_origin_that_could_never_match_is_a_configuration_error(bad, tmp_path,
                                                                   database_url):
    with pytest.raises(ConfigError, match="STOWAGE_CORS_ORIGINS"):
        make_settings(tmp_path, database_url, cors_origins=f"https://ok.example,{bad}")
    make_settings(tmp_path, database_url, cors_origins=" https://ok.example , * ,")
