"""The operator's dashboard over plain HTTP (ASGI): login and sessions, CSRF, every action's
effect on Postgres and the queue, the overview's figures, filters, the timeline page and
GET /v1/attachments/{id}/events."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from arq.connections import ArqRedis
from starlette.routing import NoMatchFound

from app import activity
from app.attachments import repository as attachments_repo
from app.attachments.timeline import build as timeline_build
from app.attachments.timeline_routes import router as events_router
from app.auth import service as auth
from app.bootstrap import Services
from app.config import Settings
from app.dashboard import service
from app.dashboard.routes import router as dashboard_router
from app.dashboard.session import COOKIE, Sessions
from app.main import create_app
from app.webhooks import repository as webhooks_repo
from tests import factories
from tests.conftest import AppKey, make_settings, run_worker
from tests.helpers import jpeg_bytes
from tests.receiver import Receiver, Reply

TOKEN = "op-" + secrets.token_hex(16)
BASE = "http://stowage.test"

PROFILES = """
[profiles.avatar]
types = ["image/*"]

[profiles.avatar.derivatives.thumb]
width = 32
height = 32
fit = "contain"
format = "webp"
quality = 80
"""


def with_token(settings: Settings, token: str) -> Settings:
    """Works before and after Settings has its admin_token field."""
    return settings.model_copy(update={"admin_token": token})


def dashboard_settings(tmp_path: Path, database_url: str, token: str = TOKEN,
                       **overrides: Any) -> Settings:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    values = {"webhook_retry_delays": "0", "webhook_timeout": 0.5,
              "profiles_file": str(profiles), **overrides}
    return with_token(make_settings(tmp_path, database_url, **values), token)


def build_app(res: Services):
    """The API with the dashboard's routers (until app/main.py includes them itself)."""
    app = create_app(res.settings, res)
    app.state.services = res  # ASGITransport does not run the lifespan
    for name, params, router in (("dashboard_overview", {}, dashboard_router),
                                 ("attachment_events", {"attachment_id": "x"}, events_router)):
        try:
            app.url_path_for(name, **params)
        except NoMatchFound:
            app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def client_for(res: Services, base_url: str = BASE) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(res))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as c:
        yield c


@dataclasses.dataclass
class Env:
    res: Services
    client: httpx.AsyncClient
    tenant: AppKey


DASHBOARD = {"profiles": PROFILES, "webhook_retry_delays": "0", "webhook_timeout": 0.5}


@pytest.fixture
async def env(env_factory) -> AsyncIterator[Env]:
    res = (await env_factory("file", admin_token=TOKEN, **DASHBOARD)).res
    async with client_for(res) as client:
        new = await auth.create_app(res.pool, "acme")
        yield Env(res, client, AppKey(new.app_id, new.api_key))


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


async def login(client: httpx.AsyncClient, token: str = TOKEN) -> str:
    """Log in; returns the session's CSRF token (read off a page, as a browser would)."""
    r = await client.post("/dashboard/login", data={"token": token, "next": "/dashboard"})
    assert r.status_code == 303, r.text
    page = await client.get("/dashboard")
    assert page.status_code == 200, page.text
    return CSRF_RE.search(page.text).group(1)


async def upload(client, tenant, data=b"hello", filename="a.txt", **fields) -> dict:
    return await factories.upload(client, tenant, data, filename, **fields)


async def row(res: Services, att_id: str):
    async with res.pool.acquire() as conn:
        return await attachments_repo.get(conn, UUID(att_id))


async def queued(res: Services, job_id: str) -> bool:
    return bool(await res.redis.exists(f"arq:job:{job_id}"))


async def subscribe(client, tenant, url) -> dict:
    r = await client.post("/v1/webhook-endpoints", headers=tenant.headers, json={"url": url})
    assert r.status_code == 201, r.text
    return r.json()


# --- on/off, login, sessions -----------------------------------------------------------------

@pytest.mark.parametrize("token", ["", "   "])
async def test_off_without_token(env_factory, token):
    res = (await env_factory("file", admin_token=token, **DASHBOARD)).res
    async with client_for(res) as client:
        for method, path in [("GET", "/dashboard"), ("GET", "/dashboard/login"),
                             ("POST", "/dashboard/login"), ("GET", "/dashboard/attachments"),
                             ("GET", "/dashboard/static/dashboard.css"),
                             ("POST", f"/dashboard/attachments/{UUID(int=1)}/delete")]:
            r = await client.request(method, path, data={"token": token})
            assert r.status_code == 404, (method, path, r.status_code)
            assert COOKIE not in r.headers.get("set-cookie", "")
        # exactly what any unknown path answers: nothing tells that a dashboard exists
        assert (await client.get("/dashboard")).json()["title"] == \
            (await client.get("/no-such-page")).json()["title"]


async def test_login_wrong_token_and_redirects(env):
    c = env.client
    r = await c.get("/dashboard/attachments?state=stored")
    assert r.status_code == 303
    assert r.headers["location"] == \
        "/dashboard/login?next=%2Fdashboard%2Fattachments%3Fstate%3Dstored"
    r = await c.get("/dashboard/login")
    assert r.status_code == 200 and 'name="token"' in r.text

    r = await c.post("/dashboard/login", data={"token": TOKEN + "x", "next": "/dashboard"})
    assert r.status_code == 401 and "not the admin token" in r.text
    assert "set-cookie" not in r.headers
    assert (await c.get("/dashboard")).status_code == 303
    r = await c.post("/dashboard/login", data={})
    assert r.status_code == 401

    r = await c.post("/dashboard/login",
                     data={"token": TOKEN, "next": "/dashboard/attachments?state=stored"})
    assert r.status_code == 303
    assert r.headers["location"] == "/dashboard/attachments?state=stored"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/dashboard" in cookie
    assert "secure" not in cookie  # public_url is http here
    r = await c.get("/dashboard")
    assert r.status_code == 200 and "Overview" in r.text
    # the login form of a logged-in operator goes straight on
    assert (await c.get("/dashboard/login")).status_code == 303


@pytest.mark.parametrize("target", ["https://evil.example/x", "//evil.example/x",
                                    "/v1/attachments", "/dashboard\\@evil.example"])
async def test_login_never_redirects_off_the_dashboard(env, target):
    r = await env.client.post("/dashboard/login", data={"token": TOKEN, "next": target})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"


async def test_tampered_expired_or_rotated_sessions_are_refused(env, tmp_path, database_url):
    c = env.client
    await login(c)
    good = c.cookies[COOKIE]
    c.cookies.set(COOKIE, good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
                  domain="stowage.test", path="/dashboard")
    assert (await c.get("/dashboard")).status_code == 303
    # a session signed for another admin token (the token was rotated) is no session
    other = Sessions(with_token(env.res.settings, "an-older-token"))
    c.cookies.set(COOKIE, other.issue()[0], domain="stowage.test", path="/dashboard")
    assert (await c.get("/dashboard")).status_code == 303
    # an empty or garbage cookie
    c.cookies.set(COOKIE, "garbage", domain="stowage.test", path="/dashboard")
    assert (await c.get("/dashboard")).status_code == 303


async def test_forms_are_small_and_url_encoded(env):
    c = env.client
    # the login form is open to anyone: no file upload, no large body is ever read into it
    r = await c.post("/dashboard/login", files={"token": ("t", b"x" * 100_000)})
    assert r.status_code in (413, 415) and "set-cookie" not in r.headers
    r = await c.post("/dashboard/login", content=b"token=" + b"x" * 100_000,
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    r = await c.post("/dashboard/login", data={"token": TOKEN},
                     files={"f": ("f", b"small")})
    assert r.status_code == 415
    r = await c.post("/dashboard/login", data={f"f{i}": "x" for i in range(50)})
    assert r.status_code == 400


async def test_logout(env):
    csrf = await login(env.client)
    r = await env.client.post("/dashboard/logout", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert (await env.client.get("/dashboard")).status_code == 303


async def test_secure_cookie_when_served_over_https(env_factory):
    res = (await env_factory("file", admin_token=TOKEN, public_url="https://files.example",
                             **DASHBOARD)).res
    async with client_for(res, base_url="https://files.example") as client:
        r = await client.post("/dashboard/login", data={"token": TOKEN})
        assert r.status_code == 303
        assert "secure" in r.headers["set-cookie"].lower()
        r = await client.get("/dashboard")
        assert r.status_code == 200
        assert "img-src 'self' data: https://files.example" in \
            r.headers["content-security-policy"]


async def test_pages_are_hardened(env):
    await login(env.client)
    for path in ["/dashboard", "/dashboard/attachments", "/dashboard/webhooks"]:
        r = await env.client.get(path)
        assert r.status_code == 200, path
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
        assert "<script>" not in r.text and "onsubmit" not in r.text  # the CSP allows neither
    r = await env.client.get("/dashboard/static/dashboard.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert (await env.client.get("/dashboard/static/../../app/config.py")).status_code == 404
    assert (await env.client.get("/dashboard/static/other.js")).status_code == 404


# --- CSRF ------------------------------------------------------------------------------------

async def test_csrf_is_required_for_every_action(env, receiver):
    res, c, tenant = env.res, env.client, env.tenant
    cached = await upload(c, tenant, promote="false")
    doomed = await upload(c, tenant)
    ep = await subscribe(c, tenant, receiver.url)
    await webhooks_repo_disable(res, ep["id"])
    csrf = await login(c)
    gen_before = (await row(res, cached["id"]))["generation"]
    depth_before = await res.redis.zcard(res.settings.queue_name)

    posts = [f"/dashboard/attachments/{cached['id']}/promote",
             f"/dashboard/attachments/{doomed['id']}/delete",
             f"/dashboard/attachments/{doomed['id']}/reprocess",
             f"/dashboard/webhooks/{ep['id']}/enable",
             f"/dashboard/webhooks/{ep['id']}/retry-failed",
             "/dashboard/logout"]
    for path in posts:
        for data in [{}, {"csrf_token": ""}, {"csrf_token": csrf + "x"},
                     {"csrf_token": secrets.token_urlsafe(32)}]:
            r = await c.post(path, data={**data, "since": "2000-01-01T00:00"})
            assert r.status_code == 403, (path, data, r.status_code)
            assert "security token" in r.text

    # a token from another operator session is not this session's
    async with client_for(res) as other:
        other_csrf = await login(other)
    r = await c.post(f"/dashboard/attachments/{doomed['id']}/delete",
                     data={"csrf_token": other_csrf})
    assert r.status_code == 403

    # without any session: to the login form, nothing done
    async with client_for(res) as anonymous:
        r = await anonymous.post(f"/dashboard/attachments/{doomed['id']}/delete",
                                 data={"csrf_token": csrf})
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")

    # nothing changed
    after = await row(res, cached["id"])
    assert after["state"] == "cached" and after["promote_requested_at"] is None
    assert after["generation"] == gen_before
    assert (await row(res, doomed["id"]))["state"] == "cached"
    assert await res.redis.zcard(res.settings.queue_name) == depth_before
    endpoint = await get_endpoint_row(res, ep["id"])
    assert endpoint["enabled"] is False
    assert (await c.get("/dashboard")).status_code == 200  # still logged in


async def webhooks_repo_disable(res: Services, endpoint_id: str,
                                reason: str = "the receiver answered 410 Gone") -> None:
    async with res.pool.acquire() as conn:
        await webhooks_repo.disable_endpoint(conn, UUID(endpoint_id), reason)


async def get_endpoint_row(res: Services, endpoint_id: str):
    async with res.pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1",
                                   UUID(endpoint_id))


# --- attachment actions ----------------------------------------------------------------------

async def test_promote_enqueues_then_stores(env):
    res, c = env.res, env.client
    att = await upload(c, env.tenant, promote="false")
    csrf = await login(c)
    r = await c.post(f"/dashboard/attachments/{att['id']}/promote", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert r.headers["location"] == f"/dashboard/attachments/{att['id']}"
    after = await row(res, att["id"])
    assert after["promote_requested_at"] is not None and after["expires_at"] is None
    assert await queued(res, f"promote:{att['id']}:{after['generation']}")

    page = await c.get(r.headers["location"])
    assert "Promotion requested." in page.text  # the one-shot message
    assert "Promotion requested." not in (await c.get(r.headers["location"])).text

    await run_worker(res)
    assert (await row(res, att["id"]))["state"] == "stored"
    page = await c.get(f"/dashboard/attachments/{att['id']}")
    assert 'data-kind="operator.promote"' in page.text and 'data-kind="stored"' in page.text
    assert 'id="promote"' not in page.text  # no promote button on a stored attachment


async def test_promote_a_deleted_attachment_says_why(env):
    res, c = env.res, env.client
    att = await upload(c, env.tenant, promote="false")
    await c.delete(f"/v1/attachments/{att['id']}", headers=env.tenant.headers)
    csrf = await login(c)
    r = await c.post(f"/dashboard/attachments/{att['id']}/promote", data={"csrf_token": csrf})
    assert r.status_code == 303
    page = await c.get(r.headers["location"])
    assert "is deleted" in page.text and 'class="flash error"' in page.text
    assert (await row(res, att["id"]))["state"] == "deleted"


async def test_reprocess_rebuilds_the_derivatives(env):
    res, c = env.res, env.client
    att = await upload(c, env.tenant, data=jpeg_bytes(64, 48), filename="p.jpg",
                       profile="avatar")
    await run_worker(res)
    stored = await row(res, att["id"])
    assert stored["state"] == "stored"
    old_key = stored["derivatives"]["thumb"]["key"]
    csrf = await login(c)
    r = await c.post(f"/dashboard/attachments/{att['id']}/reprocess", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert await queued(res, f"reprocess:{att['id']}:{stored['generation']}")
    assert "Reprocessing queued" in (await c.get(r.headers["location"])).text
    await run_worker(res)
    after = await row(res, att["id"])
    assert after["generation"] > stored["generation"]
    assert after["derivatives"]["thumb"]["key"] != old_key
    assert not (Path(res.settings.store_url.removeprefix("file://")) / old_key).exists()


async def test_reprocess_of_a_cached_attachment_is_refused(env):
    att = await upload(env.client, env.tenant, promote="false")
    csrf = await login(env.client)
    r = await env.client.post(f"/dashboard/attachments/{att['id']}/reprocess",
                              data={"csrf_token": csrf})
    page = await env.client.get(r.headers["location"])
    assert "only stored attachments can be reprocessed" in page.text


async def test_delete_marks_deleted_and_removes_the_files(env, storage_files):
    res, c = env.res, env.client
    att = await upload(c, env.tenant)
    await run_worker(res)
    csrf = await login(c)
    r = await c.post(f"/dashboard/attachments/{att['id']}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert (await row(res, att["id"]))["state"] == "deleted"
    assert await queued(res, f"destroy:{att['id']}")
    await run_worker(res)
    assert (await row(res, att["id"]))["purged_at"] is not None
    cache, store = await storage_files()
    assert not [f for f in cache + store if att["id"] in f]
    page = await c.get(f"/dashboard/attachments/{att['id']}")
    for kind in ("deleted", "files.removed", "operator.delete"):
        assert f'data-kind="{kind}"' in page.text
    assert 'id="delete"' not in page.text


async def test_a_replaced_attachment_links_its_successor(env):
    res, c = env.res, env.client
    slot = {"record_type": "user", "record_id": "9", "record_name": "avatar"}
    old = await upload(c, env.tenant, **slot)
    new = await upload(c, env.tenant, **slot)
    await run_worker(res)  # the new one replaces the old one when it is stored
    assert (await row(res, old["id"]))["state"] == "deleted"
    async with res.pool.acquire() as conn:  # recorded by attachments.service once wired
        if not [a for a in await activity.list_for(conn, UUID(old["id"]))
                if a["kind"] == "replaced"]:
            await activity.record(conn, UUID(old["id"]), "replaced", {"by": new["id"]})
    await login(c)
    page = await c.get(f"/dashboard/attachments/{old['id']}")
    assert f'replaced by <a class="mono" href="/dashboard/attachments/{new["id"]}">' in page.text
    r = await c.get(f"/v1/attachments/{old['id']}/events", headers=env.tenant.headers)
    deleted = [i for i in r.json()["items"] if i["kind"] == "deleted"]
    assert deleted[0]["detail"] == {"reason": "replaced", "by": new["id"]}
    assert "replaced" not in [i["kind"] for i in r.json()["items"]]


async def test_unknown_attachment_is_a_404_page(env):
    await login(env.client)
    for path in [f"/dashboard/attachments/{UUID(int=5)}", "/dashboard/attachments/nope"]:
        r = await env.client.get(path)
        assert r.status_code == 404 and "Not found" in r.text
    csrf = await login(env.client)
    r = await env.client.post(f"/dashboard/attachments/{UUID(int=5)}/delete",
                              data={"csrf_token": csrf})
    assert r.status_code == 404
    r = await env.client.post(f"/dashboard/attachments/{UUID(int=5)}/explode",
                              data={"csrf_token": csrf})
    assert r.status_code == 404


# --- webhook actions -------------------------------------------------------------------------

async def failed_deliveries(res: Services, endpoint_id: str) -> list[Any]:
    async with res.pool.acquire() as conn:
        return await conn.fetch(
            "SELECT d.id, d.status, e.type FROM webhook_deliveries d JOIN events e"
            " ON e.id = d.event_id WHERE d.endpoint_id = $1 ORDER BY d.created_at",
            UUID(endpoint_id))


async def test_retry_one_and_retry_all_failed_since(env, receiver):
    res, c, tenant = env.res, env.client, env.tenant
    receiver.default = Reply(500)
    ep = await subscribe(c, tenant, receiver.url)
    await upload(c, tenant)
    await run_worker(res)
    rows = await failed_deliveries(res, ep["id"])
    assert [r["status"] for r in rows] == ["failed", "failed"]  # cached, stored
    csrf = await login(c)
    page = await c.get(f"/dashboard/webhooks/{ep['id']}")
    assert page.status_code == 200
    assert page.text.count('data-status="failed"') == 2
    assert "attachment.cached" in page.text  # the request snippet
    assert '<span class="badge bad">500</span>' in page.text
    listing = await c.get("/dashboard/webhooks")
    assert ">failing<" in listing.text and "0 %" in listing.text

    receiver.default = Reply(200)
    first = rows[0]["id"]
    r = await c.post(f"/dashboard/webhooks/{ep['id']}/deliveries/{first}/retry",
                     data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == f"/dashboard/webhooks/{ep['id']}"
    assert [r["status"] for r in await failed_deliveries(res, ep["id"])] == ["pending",
                                                                          "failed"]
    await run_worker(res)
    assert [r["status"] for r in await failed_deliveries(res, ep["id"])] == ["delivered",
                                                                          "failed"]

    # since a moment in the future: nothing to retry
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    r = await c.post(f"/dashboard/webhooks/{ep['id']}/retry-failed",
                     data={"csrf_token": csrf, "since": later})
    assert "0 failed deliveries" in (await c.get(r.headers["location"])).text
    assert [r["status"] for r in await failed_deliveries(res, ep["id"])] == ["delivered",
                                                                          "failed"]
    # a bad time is refused
    r = await c.post(f"/dashboard/webhooks/{ep['id']}/retry-failed",
                     data={"csrf_token": csrf, "since": "yesterday"})
    assert "Since when?" in (await c.get(r.headers["location"])).text

    earlier = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    r = await c.post(f"/dashboard/webhooks/{ep['id']}/retry-failed",
                     data={"csrf_token": csrf, "since": earlier})
    assert "1 failed delivery since" in (await c.get(r.headers["location"])).text
    await run_worker(res)
    assert [r["status"] for r in await failed_deliveries(res, ep["id"])] == ["delivered",
                                                                          "delivered"]
    listing = await c.get("/dashboard/webhooks")
    assert ">healthy<" in listing.text and "100 %" in listing.text


async def test_retry_of_an_unknown_delivery_is_a_404(env, receiver):
    ep = await subscribe(env.client, env.tenant, receiver.url)
    csrf = await login(env.client)
    r = await env.client.post(f"/dashboard/webhooks/{ep['id']}/deliveries/{UUID(int=9)}/retry",
                              data={"csrf_token": csrf})
    assert r.status_code == 404


async def test_reenable_a_disabled_endpoint(env, receiver):
    res, c = env.res, env.client
    ep = await subscribe(c, env.tenant, receiver.url)
    await webhooks_repo_disable(res, ep["id"])
    csrf = await login(c)
    page = await c.get("/dashboard/webhooks")
    assert ">disabled<" in page.text and "410 Gone" in page.text
    overview = await c.get("/dashboard")
    assert 'id="disabled-endpoints">1<' in overview.text
    r = await c.post(f"/dashboard/webhooks/{ep['id']}/enable", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert "Endpoint enabled again." in (await c.get(r.headers["location"])).text
    endpoint = await get_endpoint_row(res, ep["id"])
    assert endpoint["enabled"] is True and endpoint["disabled_reason"] is None
    # and it is delivered to again
    await upload(c, env.tenant)
    await run_worker(res)
    assert {r.json["type"] for r in receiver.received} == {"attachment.cached",
                                                           "attachment.stored"}


# --- what the pages show ---------------------------------------------------------------------

async def test_overview_figures(env, receiver):
    res, c, tenant = env.res, env.client, env.tenant
    other = await auth.create_app(res.pool, "zeta")
    other_key = AppKey(other.app_id, other.api_key)
    receiver.default = Reply(500)
    await subscribe(c, tenant, receiver.url)
    stored = await upload(c, tenant)
    await run_worker(res)  # stored; its 2 deliveries fail
    await upload(c, other_key, promote="false")
    deleted = await upload(c, other_key)
    await c.delete(f"/v1/attachments/{deleted['id']}", headers=other_key.headers)
    await upload(c, tenant)  # queued, not run: the queue holds its promote job

    o = await res.dashboard.overview()
    by_name = {a.name: a for a in o.apps}
    assert by_name["acme"].states == {"cached": 1, "stored": 1, "failed": 0, "deleted": 0}
    assert by_name["zeta"].states == {"cached": 1, "stored": 0, "failed": 0, "deleted": 1}
    assert o.totals == {"cached": 2, "stored": 1, "failed": 0, "deleted": 1}
    assert by_name["acme"].deliveries_failed == 2 and by_name["acme"].endpoints == 1
    assert o.deliveries_failed == 2 and o.deliveries_pending >= 1
    assert o.lag_count == 1 and o.lag_p50 is not None and 0 <= o.lag_p50 < 60
    assert o.lag_p95 >= o.lag_p50
    # 2 promotions, a destroy, a delivery: none run yet
    assert o.queue.available and o.queue.depth == 4 and o.queue.due == 4
    assert o.queue.deferred == 0 and o.queue.in_progress == 0
    assert o.chart.total_uploads == 4 and o.chart.total_promotions == 1
    assert len(o.chart.uploads) == service.CHART_HOURS
    # (the last two hours: the test may straddle an hour)
    assert sum(b.value for b in o.chart.uploads[-2:]) == 4
    assert max(b.height for b in o.chart.uploads[-2:]) > 0

    await login(c)
    page = await c.get("/dashboard")
    assert page.status_code == 200
    assert 'data-state="cached">2<' in page.text and 'data-state="deleted">1<' in page.text
    assert f'data-app="{tenant.app_id}"' in page.text
    assert page.text.count('<rect class="uploads"') == service.CHART_HOURS
    assert 'id="deliveries-failed">2<' in page.text
    assert stored["id"]  # for the reader: one of each state was made above


async def test_queue_figures(env):
    res = env.res
    queue = res.settings.queue_name
    mine, theirs = f"dash-test:{secrets.token_hex(4)}", f"dash-test:{secrets.token_hex(4)}"
    delivery = uuid4()  # job ids are global to the Redis: never reuse one across runs
    assert await res.jobs.deliver_webhook(delivery, 0, defer_by=3600)  # a retry, due later
    await res.redis.enqueue_job("promote", "x", _job_id=mine, _queue_name=queue)
    try:
        # a running job of this queue, and one of another deployment sharing the Redis
        await res.redis.psetex(f"arq:in-progress:{mine}", 10_000, b"1")
        await res.redis.psetex(f"arq:in-progress:{theirs}", 10_000, b"1")
        q = await res.dashboard.queue_stats()
        assert (q.depth, q.due, q.deferred, q.in_progress) == (2, 0, 1, 1)
    finally:
        await res.redis.delete(f"arq:in-progress:{mine}", f"arq:in-progress:{theirs}",
                               f"arq:job:{mine}", f"arq:job:deliver_webhook:{delivery}:0",
                               queue)


async def test_overview_survives_redis_being_down(env):
    down = ArqRedis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        queue = await dataclasses.replace(env.res, redis=down).dashboard.queue_stats()
    finally:
        await down.aclose()
    assert queue.available is False and queue.error


async def test_attachment_filters(env):
    res, c, tenant = env.res, env.client, env.tenant
    other = await auth.create_app(res.pool, "zeta")
    other_key = AppKey(other.app_id, other.api_key)
    a = await upload(c, tenant, filename="one.txt", record_type="user", record_id="1",
                     record_name="avatar")
    b = await upload(c, tenant, data=jpeg_bytes(), filename="two.jpg", profile="avatar",
                     promote="false")
    z = await upload(c, other_key, filename="three.txt")
    await run_worker(res)
    await login(c)

    async def ids(**params) -> set[str]:
        r = await c.get("/dashboard/attachments", params=params)
        assert r.status_code == 200, r.text
        return set(re.findall(r'<tr data-id="([0-9a-f-]+)"', r.text))

    everything = {a["id"], b["id"], z["id"]}
    assert await ids() == everything
    assert await ids(app=str(tenant.app_id)) == {a["id"], b["id"]}
    assert await ids(state="cached") == {b["id"]}
    assert await ids(state="stored", app=str(other.app_id)) == {z["id"]}
    assert await ids(profile="avatar") == {b["id"]}
    assert await ids(record_type="user", record_id="1", record_name="avatar") == {a["id"]}
    assert await ids(record_type="user") == {a["id"]}
    today = datetime.now(UTC).date()  # margins of a day: the test may straddle midnight
    assert await ids(**{"from": str(today - timedelta(days=1)), "to": str(today)}) == everything
    assert await ids(**{"from": str(today + timedelta(days=1))}) == set()
    assert await ids(to=str(today - timedelta(days=2))) == set()
    now = datetime.now(UTC)
    assert await ids(**{"from": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")}) == \
        everything
    # what cannot be understood is said, and matches nothing rather than everything
    r = await c.get("/dashboard/attachments", params={"app": "nope", "from": "soon"})
    assert "app: not an app id" in r.text and "from: a date" in r.text
    assert await ids(app="nope") == set()
    # paging: newest first, then the older ones
    page = await res.dashboard.list_attachments(service.AttachmentFilters(), limit=2)
    assert [str(r["id"]) for r in page.items] == [z["id"], b["id"]]
    rest = await res.dashboard.list_attachments(service.AttachmentFilters(),
                                          before=page.next_before, limit=2)
    assert [str(r["id"]) for r in rest.items] == [a["id"]] and rest.next_before is None
    r = await c.get("/dashboard/attachments")
    assert "Older" not in r.text


async def test_detail_page_previews_and_timeline(env, receiver):
    res, c, tenant = env.res, env.client, env.tenant
    receiver.script = [Reply(500)]  # the first attempt fails, the retry succeeds
    await subscribe(c, tenant, receiver.url)
    att = await upload(c, tenant, data=jpeg_bytes(64, 48), filename="cat.jpg",
                       profile="avatar", record_type="user", record_id="7",
                       record_name="avatar")
    await run_worker(res)
    await login(c)
    page = await c.get(f"/dashboard/attachments/{att['id']}")
    assert page.status_code == 200
    text = page.text
    assert "cat.jpg" in text and "image/jpeg" in text and "user/7/avatar" in text
    thumb = re.search(r'<img src="([^"]+)" alt="thumb"', text).group(1)
    assert f"/v1/attachments/{att['id']}/derivatives/thumb?v=" in thumb and "token=" in thumb
    # the signed preview URL really serves the image, without any API key
    r = await c.get(thumb.replace("&amp;", "&").removeprefix(res.settings.public_url))
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    kinds = re.findall(r'data-kind="([^"]+)"', text)
    assert kinds[:3] == ["uploaded", "promotion.requested", "event"]
    assert kinds.count("event") == 2 and kinds.count("webhook.attempt") == 3
    assert kinds.index("stored") < len(kinds) - 1
    assert '<span class="badge bad">500</span>' in text
    assert '<span class="badge ok">200</span>' in text


# --- the timeline for API clients ------------------------------------------------------------

async def test_events_api(env, receiver):
    res, c, tenant = env.res, env.client, env.tenant
    other = await auth.create_app(res.pool, "zeta")
    receiver.default = Reply(500)
    await subscribe(c, tenant, receiver.url)
    att = await upload(c, tenant, promote="false")
    r = await c.post(f"/v1/attachments/{att['id']}/promote", headers=tenant.headers)
    assert r.status_code == 202
    await run_worker(res)
    async with res.pool.acquire() as conn:  # what the worker will record (app/activity.py)
        await activity.record(conn, UUID(att["id"]), "promotion.started", {"generation": 2})

    r = await c.get(f"/v1/attachments/{att['id']}/events", headers=tenant.headers)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["at"] for i in items] == sorted(i["at"] for i in items)
    kinds = [i["kind"] for i in items]
    assert kinds[0] == "uploaded" and items[0]["detail"]["filename"] == "a.txt"
    assert {"promotion.requested", "stored", "event", "webhook.attempt",
            "promotion.started"} <= set(kinds)
    requested = next(i for i in items if i["kind"] == "promotion.requested")
    assert requested["detail"]["with_upload"] is False
    events = [i["detail"]["type"] for i in items if i["kind"] == "event"]
    assert events == ["attachment.cached", "attachment.stored"]
    attempts = [i["detail"] for i in items if i["kind"] == "webhook.attempt"]
    assert len(attempts) == 4  # two events, two attempts each ("0": one retry)
    assert all(a["status_code"] == 500 and a["ok"] is False for a in attempts)
    assert {a["attempt"] for a in attempts} == {1, 2}
    assert all(a["delivery_status"] == "failed" and a["response"] == "ok" for a in attempts)
    assert all("body" not in i["detail"] for i in items)
    assert all(i["at"].endswith("Z") for i in items)

    for headers, status in [({"Authorization": f"Bearer {other.api_key}"}, 404), ({}, 401),
                            ({"Authorization": "Bearer nope"}, 401)]:
        r = await c.get(f"/v1/attachments/{att['id']}/events", headers=headers)
        assert r.status_code == status
        assert r.headers["content-type"] == "application/problem+json"
    for bad in ["not-a-uuid", str(UUID(int=3))]:
        r = await c.get(f"/v1/attachments/{bad}/events", headers=tenant.headers)
        assert r.status_code == 404
    schema = (await c.get("/openapi.json")).json()
    assert "/v1/attachments/{attachment_id}/events" in schema["paths"]
    assert not [p for p in schema["paths"] if p.startswith("/dashboard")]


async def test_timeline_of_a_pending_delivery_says_when_next(env, receiver):
    c, tenant = env.client, env.tenant
    await subscribe(c, tenant, receiver.url)
    att = await upload(c, tenant, promote="false")  # cached event, delivery not run yet
    r = await c.get(f"/v1/attachments/{att['id']}/events", headers=tenant.headers)
    kinds = [i["kind"] for i in r.json()["items"]]
    assert kinds == ["uploaded", "event", "webhook.scheduled"]


# --- the timeline, pure ----------------------------------------------------------------------

def test_timeline_build_orders_and_merges():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    at = [t0 + timedelta(seconds=s) for s in range(10)]
    att = {"id": UUID(int=1), "filename": "a.txt", "mime_type": "text/plain", "size": 5,
           "profile": "default", "record_type": "user", "record_id": "1",
           "record_name": "avatar", "state": "deleted", "created_at": at[0],
           "promote_requested_at": at[0], "stored_at": at[2], "deleted_at": at[5],
           "purged_at": at[6], "cache_purged_at": at[3], "updated_at": at[6], "error": None,
           "derivatives": {"thumb": {"key": "k", "mime_type": "image/webp", "size": 1,
                                     "width": 2, "height": 3}}}
    events = [{"id": UUID(int=10), "type": "attachment.cached", "created_at": at[0],
               "body": {}, "deliveries": 1},
              {"id": UUID(int=11), "type": "attachment.stored", "created_at": at[2],
               "body": {"data": {"derivatives": {}}}, "deliveries": 0}]
    attempts = [{"delivery_id": UUID(int=20), "event_id": UUID(int=10),
                 "event_type": "attachment.cached", "endpoint_id": UUID(int=30),
                 "url": "http://r/h", "status": "pending", "attempts": 1,
                 "next_attempt_at": at[9], "attempt_id": 1, "attempted_at": at[1],
                 "status_code": 503, "error": "HTTP 503", "duration_ms": 4,
                 "response_body": "busy", "attempt_no": 1}]
    activities = [{"at": at[1], "kind": "promotion.started", "detail": {"generation": 1}},
                  {"at": at[5], "kind": "replaced", "detail": {"by": "x"}}]
    entries = timeline_build(att, events, attempts, activities)
    assert [(e.kind, int((e.at - t0).total_seconds())) for e in entries] == [
        ("uploaded", 0), ("promotion.requested", 0), ("event", 0),
        ("promotion.started", 1), ("webhook.attempt", 1),
        ("stored", 2), ("event", 2), ("cached_copy.removed", 3),
        ("deleted", 5), ("files.removed", 6), ("webhook.scheduled", 9),
    ]
    by_kind = {e.kind: e for e in entries}
    # the derivatives the promotion made (from its event), not the current set
    assert by_kind["stored"].detail == {"derivatives": {}}
    assert by_kind["deleted"].detail == {"reason": "replaced", "by": "x"}
    assert by_kind["webhook.attempt"].as_json()["detail"]["ok"] is False
    assert by_kind["promotion.requested"].detail == {"with_upload": True}
    assert by_kind["uploaded"].as_json() == {
        "at": "2026-01-01T00:00:00Z", "kind": "uploaded",
        "detail": {"filename": "a.txt", "mime_type": "text/plain", "size": 5,
                   "profile": "default", "record": {"type": "user", "id": "1",
                                                    "name": "avatar"}}}


async def test_attachment_page_shows_failing_work(env):
    """A promotion that keeps failing is visible: its attempts, last error, next attempt."""
    from app.attachments import work

    att = await upload(env.client, env.tenant, b"stuck")
    async with env.res.pool.acquire() as conn:
        attempt = await work.begin(conn, env.res.settings, work.PROMOTE, UUID(att["id"]))
        await work.failed(conn, attempt, "ClientError: SlowDown <x>", timed_out=False)
    await login(env.client)
    page = await env.client.get(f"/dashboard/attachments/{att['id']}")
    assert page.status_code == 200
    assert "promote attempts" in page.text and "1 · last error" in page.text
    assert "SlowDown &lt;x&gt;" in page.text  # escaped


async def test_overview_shows_usage_quota_rate_and_key_scopes(env):
    """Issue 24: bytes and attachments per app against its quota, its rate limit, and its
    keys with their scopes."""
    res, c, tenant = env.res, env.client, env.tenant
    await upload(c, tenant, b"x" * 1500)
    await auth.update_limits(res.pool, tenant.app_id, quota_bytes=3000, rate_limit=20)
    await auth.create_key(res.pool, tenant.app_id, ("upload",))
    o = await res.dashboard.overview()
    acme = next(a for a in o.apps if a.name == "acme")
    assert (acme.bytes, acme.quota_bytes, acme.rate_limit) == (1500, 3000, 20)
    assert [k.split(" ")[1] for k in acme.keys] == ["upload,read,delete,webhooks", "upload"]
    await login(c)
    page = (await c.get("/dashboard")).text
    row_html = page[page.index(f'data-app="{tenant.app_id}"'):]
    row_html = row_html[:row_html.index("</tr>")]
    assert 'data-bytes="1500"' in row_html and "1.5 KiB of 2.9 KiB" in row_html
    assert "(50%)" in row_html and "20/min" in row_html
    assert "</code> upload,read,delete,webhooks<br>" in row_html
    assert "</code> upload</td>" in row_html
    assert row_html.count("<code>stw_") == 2
